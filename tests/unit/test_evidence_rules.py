"""Evidence in the domain: what a file's first bytes say, what is accepted, who may attach
and read, and how evidence is corrected (never replaced)."""

from __future__ import annotations

import functools
from datetime import UTC
from uuid import UUID

import pytest

from services.common.errors import (
    IllegalTransition,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
)
from services.ledger.domain.evidence import (
    FILE_NAME_FIELD,
    EvidencePolicy,
    check_declared_size,
    check_file_name,
    sniff_media_type,
)
from services.ledger.domain.incident import EvidenceFile, Incident, Status
from tests.unit.incident_builders import (
    AUDITOR,
    COORDINATOR,
    LEAD,
    OUTSIDER,
    REF,
    REPORTER,
    actor,
    envelope_for,
    incident_in,
)

POLICY = EvidencePolicy(
    ("image/jpeg", "image/png", "application/pdf", "video/mp4", "audio/mp4", "audio/aac"),
    1000,
)
PHOTO = EvidenceFile("ab" * 32, 900, "image/jpeg")


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "image/jpeg"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image/png"),
        (b"%PDF-1.7\n", "application/pdf"),
        (b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00", "video/mp4"),
        (b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00", "audio/mp4"),
        (b"\xff\xf1\x50\x80\x02\x1f\xfc", "audio/aac"),
        (b"RIFF\x24\x08\x00\x00WAVEfmt ", "audio/wav"),
        (b"MZ\x90\x00\x03\x00\x00\x00", "application/x-msdownload"),
        (b"\x7fELF\x02\x01\x01\x00", "application/x-executable"),
        (b"#!/bin/sh\n", "text/x-shellscript"),
        (b"hello", "application/octet-stream"),
        (b"", "application/octet-stream"),
    ],
)
def test_the_first_bytes_name_the_type(head: bytes, kind: str) -> None:
    assert sniff_media_type(head) == kind


def test_an_executable_is_refused_whatever_it_is_called() -> None:
    with pytest.raises(InvalidArgument) as refused:
        POLICY.check_type(sniff_media_type(b"MZ\x90\x00"), "image/jpeg")
    assert refused.value.reason == "MEDIA_TYPE_NOT_ALLOWED"
    assert refused.value.metadata["media_type"] == "application/x-msdownload"  # in the message
    assert "application/x-msdownload" in refused.value.message


def test_a_declared_type_must_be_the_content_s() -> None:
    assert POLICY.check_type("image/png", "") == "image/png"
    assert POLICY.check_type("image/png", "IMAGE/PNG") == "image/png"
    assert POLICY.check_type("image/png", "image/png; charset=binary") == "image/png"  # file -bi
    with pytest.raises(InvalidArgument) as refused:
        POLICY.check_type("image/png", "image/jpeg")
    assert refused.value.reason == "MEDIA_TYPE_MISMATCH"
    with pytest.raises(InvalidArgument):  # allowed by default, not by this policy
        POLICY.check_type("audio/wav", "")


def test_a_file_over_the_limit_is_resource_exhausted() -> None:
    POLICY.check_size(1000)
    with pytest.raises(ResourceExhausted) as refused:
        POLICY.check_size(1001)
    assert refused.value.reason == "EVIDENCE_TOO_LARGE"


def test_an_upload_must_bring_exactly_the_size_it_declared() -> None:
    check_declared_size(0, 123, ended=True)  # none declared: nothing to check
    check_declared_size(100, 60, ended=False)  # still coming
    check_declared_size(100, 100, ended=True)
    with pytest.raises(InvalidArgument, match="ended after 60 of the 100 bytes"):
        check_declared_size(100, 60, ended=True)
    with pytest.raises(InvalidArgument, match="more than the 100 bytes"):
        check_declared_size(100, 101, ended=False)
    with pytest.raises(InvalidArgument, match="negative"):
        check_declared_size(-1, 0, ended=False)


@pytest.mark.parametrize(
    "name", ["amplop.jpg", "foto amplop (2).JPG", "Ipuh TPS 3 (é).pdf", ".hidden.jpg", "a..b.jpg"]
)
def test_a_file_name_is_kept_as_the_uploader_gave_it(name: str) -> None:
    assert check_file_name(name) == name


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("../../etc/passwd", "without a directory"),
        ("foto/amplop.jpg", "without a directory"),
        ("C:\\Users\\polres\\amplop.jpg", "without a directory"),
        ("..", "not '.' or '..'"),
        (".", "not '.' or '..'"),
        ("bad\nname.jpg", "control characters"),
        ("amplop\r.jpg", "control characters"),
        ("\x1b[2Jamplop.jpg", "control characters"),
        ("amplop\x00.jpg", "control characters"),
        ("amplop\x85.jpg", "control characters"),  # C1: NEL
        # Shown as "aexe.jpg", saved as an .exe; an invisible name; a line separator.
        ("a\u202egpj.exe", "invisible formatting characters"),
        ("\u200b", "invisible formatting characters"),
        ("a\u200b\u200b.jpg", "invisible formatting characters"),
        ("foto\u2028.jpg", "invisible formatting characters"),
        ("\u2066foto.jpg\u2069", "invisible formatting characters"),
        ("", "is required"),
        ("   ", "is required"),
    ],
)
def test_a_file_name_that_is_a_path_or_has_control_characters_is_refused(
    name: str, says: str
) -> None:
    """The name is kept for good in the event and offered to whoever downloads the file:
    a path there, or a line break or terminal escape, is refused at the upload."""
    with pytest.raises(InvalidArgument) as refused:
        check_file_name(name)
    assert refused.value.reason == "INVALID_FIELD"
    assert refused.value.field == FILE_NAME_FIELD == "header.file_name"
    assert says in str(refused.value)


def test_a_file_name_too_long_is_field_too_long() -> None:
    with pytest.raises(InvalidArgument) as refused:
        check_file_name("a" * 252 + ".jpg")
    assert (refused.value.reason, refused.value.field) == ("FIELD_TOO_LONG", FILE_NAME_FIELD)
    # Counted in bytes, as file systems count: 204 characters of two bytes each were taken,
    # and no one could write the file under its name.
    assert check_file_name("é" * 125 + ".jpg") == "é" * 125 + ".jpg"  # 254 bytes
    with pytest.raises(InvalidArgument) as refused:
        check_file_name("é" * 204 + ".jpg")
    assert refused.value.reason == "FIELD_TOO_LONG" and "bytes" in refused.value.message


@pytest.mark.parametrize("agency", [COORDINATOR, LEAD, REPORTER])
def test_the_involved_agencies_attach_evidence(agency: str) -> None:
    incident = incident_in(Status.RESPONDING)
    incident.attach_evidence(envelope_for(agency), PHOTO, "amplop.jpg", "amplop di Ipuh")
    (evidence,) = incident.evidence.values()
    assert (evidence.file, evidence.agency, evidence.file_name) == (PHOTO, agency, "amplop.jpg")


@pytest.mark.parametrize(
    ("agency", "reason"), [(OUTSIDER, "NOT_INVOLVED"), (AUDITOR, "READ_ONLY_ROLE")]
)
def test_others_may_not_attach(agency: str, reason: str) -> None:
    incident = incident_in(Status.RESPONDING)
    with pytest.raises(PermissionDenied) as refused:
        incident.attach_evidence(envelope_for(agency), PHOTO, "amplop.jpg", "")
    assert refused.value.reason == reason
    assert incident.evidence == {}


def test_no_evidence_is_attached_to_a_closed_incident() -> None:
    incident = incident_in(Status.CLOSED)
    with pytest.raises(IllegalTransition):
        incident.attach_evidence(envelope_for(COORDINATOR), PHOTO, "amplop.jpg", "")


def test_auditors_and_involved_agencies_read_evidence_others_do_not() -> None:
    incident = incident_in(Status.ASSIGNED)
    for agency in (AUDITOR, COORDINATOR, LEAD, REPORTER):
        incident.check_evidence_reader(actor(agency), "ListEvidence")
    with pytest.raises(PermissionDenied):
        incident.check_evidence_reader(actor(OUTSIDER), "ListEvidence")
    incident.check_download_auditor(actor(AUDITOR))
    with pytest.raises(PermissionDenied) as refused:
        incident.check_download_auditor(actor(LEAD))
    assert refused.value.reason == "AUDITOR_OR_COORDINATOR_ONLY"


def _attached(incident: Incident, name: str) -> UUID:
    incident.attach_evidence(envelope_for(LEAD), PHOTO, name, "")
    return next(e.event_id for e in incident.evidence.values() if e.file_name == name)


def test_evidence_is_corrected_by_a_new_attachment_never_replaced() -> None:
    incident = incident_in(Status.RESPONDING)
    wrong, right = _attached(incident, "wrong.jpg"), _attached(incident, "right.jpg")
    correct = functools.partial(incident.correct, zone=UTC, desa_of=REF.desa_of)
    with pytest.raises(InvalidArgument):  # not other evidence of this incident
        correct(
            envelope_for(LEAD),
            event_id=wrong,
            field="superseded_by",
            old_value="",
            new_value=str(wrong),
            reason="the wrong photo",
        )
    correct(
        envelope_for(LEAD),
        event_id=wrong,
        field="superseded_by",
        old_value="",
        new_value=str(right),
        reason="the wrong photo",
    )
    assert incident.event_values[wrong]["superseded_by"] == str(right)
    assert len(incident.evidence) == 2  # both files stay
    with pytest.raises(InvalidArgument):  # the file itself is not a correctable field
        correct(
            envelope_for(LEAD),
            event_id=wrong,
            field="sha256",
            old_value="ab" * 32,
            new_value="cd" * 32,
            reason="swap",
        )

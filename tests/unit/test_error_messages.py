"""AIP-193 LocalizedMessage: every reason of docs/api.md has a message for people in English
and in Bahasa Indonesia, added to the status only when the call asks (accept-language)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from uuid import uuid4

import pytest
from google.rpc import error_details_pb2, status_pb2

from services.common import error_messages
from services.common.errors import InvalidArgument, LedgerError, NotFound
from services.common.grpc_errors import to_grpc_status
from services.common.vocabulary import STATUSES
from services.ledger.application import Ledger
from services.ledger.domain import commands
from services.ledger.domain.refcodes import code_for
from tests.unit.incident_builders import REF

API = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def documented_reasons() -> list[tuple[str, str, str]]:
    """(reason, status code, metadata named in the table) of every row of the error table."""
    row = r"^\| `([A-Z_]+)` \| `([A-Z_]+)` \| [a-z, ]+ \| (.*) \|$"
    rows = re.findall(row, API.read_text(), re.M)
    return [(reason, code, meaning) for reason, code, meaning in rows]


def _status_details(error: LedgerError, accept: str) -> list[object]:
    status = to_grpc_status(error, "ledger.incidentledger", accept)
    # The google.rpc.Status travels in the trailing metadata.
    ((key, value),) = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    decoded = status_pb2.Status.FromString(value)
    found: list[object] = []
    for detail in decoded.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.LocalizedMessage):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found.append(message)
    return found


def _error(reason: str, code: str) -> LedgerError:
    error = LedgerError(
        "english message",
        reason=reason,
        metadata={
            "field": "title",
            "incident": "incidents/0b6f12",
            "command": "VerifyIncident",
            "status": "CLOSED",
            "caller_agency": "bpbd",
        },
    )
    error.code = code
    return error


def test_the_table_is_read() -> None:
    assert len(documented_reasons()) >= 40


@pytest.mark.parametrize(("reason", "code", "meaning"), documented_reasons())
def test_every_reason_has_a_message_in_both_languages(reason: str, code: str, meaning: str) -> None:
    english = error_messages.localized(reason, {}, "en")
    indonesian = error_messages.localized(reason, {}, "id")
    assert english and indonesian and english != indonesian, reason
    # Placeholders name metadata the table documents for the reason.
    for name in re.findall(r"\{(\w+)\}", error_messages.TEMPLATES[reason]):
        assert f"`{name}`" in meaning, (reason, name)
    details = _status_details(_error(reason, code), "id-ID,en;q=0.5")
    info, localized = details
    assert isinstance(info, error_details_pb2.ErrorInfo) and info.reason == reason
    assert isinstance(localized, error_details_pb2.LocalizedMessage)
    assert localized.locale == "id"
    assert localized.message == error_messages.localized(reason, info.metadata, "id")


def test_without_accept_language_no_localized_message_and_the_english_message_stays() -> None:
    error = _error("ILLEGAL_TRANSITION", "FAILED_PRECONDITION")
    details = _status_details(error, "")
    assert [type(d) for d in details] == [error_details_pb2.ErrorInfo]
    status = to_grpc_status(error, "ledger.incidentledger", "id")
    assert status.details == "english message"
    _, localized = _status_details(error, "id")
    assert isinstance(localized, error_details_pb2.LocalizedMessage)
    # The status in the officer's words (docs/glossary-id.md), its code only in the metadata.
    assert localized.message == (
        "Langkah ini (memverifikasi kejadian) tidak diizinkan selama kejadian berada pada "
        "tahap ditutup."
    )
    assert error_messages.localized(
        "ILLEGAL_TRANSITION", {"command": "X", "status": "MERGED"}, "en"
    ) == ("This step (X) is not allowed while the incident is merged.")


def test_every_command_is_said_in_words_not_by_its_method_name() -> None:
    """An officer read "Hanya koordinator yang boleh melakukan ini (VerifyIncident)"."""
    named = {
        name
        for name, value in vars(commands).items()
        if inspect.isclass(value)
        and issubclass(value, commands.Command)
        and value is not commands.Command
        and not inspect.isabstract(value)
    }
    assert named and named <= set(error_messages.COMMAND_WORDS), named - set(
        error_messages.COMMAND_WORDS
    )
    said = error_messages.localized("COORDINATOR_ONLY", {"command": "VerifyIncident"}, "id")
    assert said == "Hanya koordinator yang boleh melakukan ini (memverifikasi kejadian)."


def test_every_status_has_its_words() -> None:
    assert tuple(error_messages.STATUS_WORDS) == STATUSES


def test_a_role_refusal_says_what_was_asked_in_the_callers_language() -> None:
    """ROLE_REQUIRED's ``action`` is written in English by the services; in Indonesian the
    refusal said "polres tidak memiliki peran yang dibutuhkan (verify the ledger)."."""
    services = Path(error_messages.__file__).parents[1]
    asked = {
        found
        for path in services.rglob("*.py")
        for found in re.findall(r'require_role\([^"]*"([^"]+)"\s*\)', path.read_text())
    }
    assert asked and asked <= set(error_messages.ACTION_WORDS), asked
    metadata = {"caller_agency": "polres", "action": "verify the ledger"}
    assert error_messages.localized("ROLE_REQUIRED", metadata, "id") == (
        "polres tidak memiliki peran yang dibutuhkan (memeriksa buku besar)."
    )
    assert error_messages.localized("ROLE_REQUIRED", metadata, "en") == (
        "polres does not have the role this needs (verify the ledger)."
    )


@pytest.mark.parametrize(
    ("header", "language"),
    [
        ("id", "id"),
        ("id-ID", "id"),
        ("in", "id"),
        ("en-US,id;q=0.9", "en"),
        ("fr;q=1, id;q=0.5", "id"),
        ("fr, de", "en"),
        ("id;q=0, en", "en"),
        # A header that refuses every language it names still asks for a message: English.
        ("id;q=0", "en"),
        ("", None),
        (" ; ", None),
    ],
)
def test_the_language_from_accept_language(header: str, language: str | None) -> None:
    assert error_messages.preferred(header) == language


def test_an_incident_not_found_is_named_in_its_localized_message() -> None:
    """Every way a ledger finds no incident gives the metadata its message names: the
    reference code as typed and read, an id (before, the code's message said "No incident
    is named ." in both languages)."""
    ledger = Ledger(REF, env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    try:
        code = code_for(REF.reference_prefix, uuid4())
        missing = uuid4()
        for lookup in (
            lambda: ledger.incident_by_reference(code),
            lambda: ledger.incident_events(missing, after_version=0, limit=10),
        ):
            with pytest.raises(NotFound) as found:
                lookup()
            for language in error_messages.LANGUAGES:
                message = error_messages.localized(
                    found.value.reason, found.value.metadata, language
                )
                assert message is not None
                named = code if "reference" in found.value.metadata else str(missing)
                assert named in message, message
    finally:
        ledger.close()


def test_a_refused_time_is_said_with_its_times_in_both_languages() -> None:
    """The general "The value of valid_until is not acceptable." left out the times the
    ledger compared: an Indonesian terminal saw them only in the English text after it."""
    window = {
        "field": "valid_until",
        "check": "window",
        "valid_from": "2026-12-08T18:00:00+07:00",
        "valid_until": "2026-12-07T18:00:00+07:00",
    }
    ahead = {
        "field": "valid_until",
        "check": "ahead",
        "value": "2028-12-08T18:00:00+07:00",
        "latest": "2027-12-06T20:00:00+07:00",
        "days": "366",
    }
    era = {
        "field": "new_value",
        "check": "era",
        "value": "1999-01-01T07:00:00+07:00",
        "earliest": "2000-01-01T07:00:00+07:00",
    }
    future = {
        "field": "occur_time",
        "check": "future",
        "value": "2026-12-05T21:00:00+07:00",
        "now": "2026-12-05T20:00:00+07:00",
        "skew_seconds": "300",
    }
    for metadata in (window, ahead, era, future):
        for language in error_messages.LANGUAGES:
            message = error_messages.localized("INVALID_FIELD", metadata, language)
            assert message is not None
            times = [v for v in metadata.values() if v.endswith("+07:00")]
            assert times and all(t in message for t in times), (language, message)
        english = error_messages.localized("INVALID_FIELD", metadata, "en")
        assert english != error_messages.localized("INVALID_FIELD", metadata, "id")
    # Without a check (or one without a message of its own), the reason's general sentence.
    assert error_messages.localized("INVALID_FIELD", {"field": "title"}, "en") == (
        "The value of title is not acceptable."
    )
    assert error_messages.localized(
        "INVALID_FIELD", {"field": "title", "check": "unheard"}, "en"
    ) == ("The value of title is not acceptable.")


@pytest.mark.parametrize(
    ("expected", "current", "english", "indonesian"),
    [
        ("2", "5", "The incident changed: version 5, not 2.", "Kejadian sudah berubah"),
        # A version ahead of the incident's was mistyped: nothing changed.
        ("5", "2", "version 5 does not exist yet", "versi 5 belum ada"),
    ],
)
def test_a_version_conflict_says_whether_the_incident_changed_or_the_version_is_ahead(
    expected: str, current: str, english: str, indonesian: str
) -> None:
    metadata = {"expected_version": expected, "current_version": current}
    assert english in (error_messages.localized("VERSION_CONFLICT", metadata, "en") or "")
    assert indonesian in (error_messages.localized("VERSION_CONFLICT", metadata, "id") or "")


def test_no_personal_data_says_read_or_erase_as_the_call_was() -> None:
    read = error_messages.localized("NO_PERSONAL_DATA", {"check": "read"}, "id") or ""
    erase = error_messages.localized("NO_PERSONAL_DATA", {"check": "erase"}, "id") or ""
    assert "baca" in read and "hapus" not in read, read
    assert "dihapus" in erase and "baca" not in erase, erase


def test_an_unknown_code_is_named_with_what_it_was_meant_to_be_in_the_callers_language() -> None:
    """An IngestReports report's refusal carries only its Status: in Indonesian it said "The
    value of location.kecamatan is not acceptable", without the value refused."""
    reference = REF
    with pytest.raises(InvalidArgument) as caught:
        reference.check_location("atlantis", "")
    metadata = {"field": caught.value.field or "", **caught.value.metadata}
    assert metadata["check"] == "unknown"
    assert error_messages.localized("INVALID_FIELD", metadata, "id") == (
        "location.kecamatan: 'atlantis' bukan kecamatan yang dikenal data referensi "
        "(GetReferenceData mendaftarnya)."
    )
    for check, what in (
        (reference.check_category, "kategori"),
        (reference.check_severity, "tingkat keparahan"),
        (lambda code: reference.agency(code, "lead_agency"), "instansi"),
    ):
        with pytest.raises(InvalidArgument) as caught:
            check("zzz")
        metadata = {"field": caught.value.field or "", **caught.value.metadata}
        said = error_messages.localized("INVALID_FIELD", metadata, "id") or ""
        assert f"'zzz' bukan {what} yang dikenal" in said, said
    assert set(error_messages.WHAT_WORDS) >= {"agency", "category", "severity", "desa"}

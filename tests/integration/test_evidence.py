"""Evidence end to end: a real ledger on SQLite with a real nats-server's object store."""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import grpc
import nats
import pytest
from nats.js.api import DiscardPolicy
from structlog.testing import capture_logs

from incidentledger.v1 import evidence_service_pb2 as ev
from incidentledger.v1 import evidence_service_pb2_grpc as ev_grpc
from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger_client import LedgerClient
from services.common.config import PROJECT_ROOT, RelaySettings
from services.common.grpc_errors import error_info
from services.common.natsserver import NatsServer
from services.ledger.audit.evidence_check import sweep_orphans, verify_evidence
from services.ledger.domain.evidence import object_name
from services.ledger.evidence_store import (
    PENDING_PREFIX,
    READ_STALL_SECONDS,
    EvidenceObjects,
    HashingSink,
)
from tests.evidence_support import change_one_byte
from tests.fanout_support import wait_until
from tests.ledgerctl_support import Ctl
from tests.support import (
    REFERENCE_FILE,
    Client,
    rid,
    running_ledger,
    settings_for,
    store_environment,
)

CHUNK = 1 << 20  # the largest chunk of a download
# An upload's messages must also fit LEDGER_MAX_MESSAGE_BYTES (1 MiB by default), framing
# included: half a MiB, as the Python client sends them.
UPLOAD_CHUNK = 1 << 19
JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01"


def fails(call: object, code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    error = caught.value
    assert error.code() == code, error.details()
    info = error_info(error)  # type: ignore[arg-type]
    assert info is not None
    assert info.reason == reason, (info.reason, error.details())


@pytest.fixture(params=["sqlite"])
def ledger(
    request: pytest.FixtureRequest, tmp_path: Path, nats_server: NatsServer
) -> Iterator[Client]:
    """A ledger with NATS on SQLite; on PostgreSQL too for the tests that ask for it
    (``@pytest.mark.parametrize("ledger", STORES_TOO, indirect=True)``)."""
    relay = RelaySettings(nats_url=nats_server.url)
    with (
        store_environment(request.param, tmp_path) as store_env,
        running_ledger(settings_for(tmp_path, store_env, relay=relay)) as client,
    ):
        yield client


def evidence_stub(ledger: Client) -> ev_grpc.EvidenceServiceStub:
    return ev_grpc.EvidenceServiceStub(ledger.channel)


def assigned_incident(ledger: Client) -> str:
    """An incident reported by kesbangpol, verified, led by polres."""
    name = ledger.report("kesbangpol").incident
    coordinator = ledger.md("desk_pilkada")
    ledger.stub.VerifyIncident(
        api.VerifyIncidentRequest(request_id=rid(), name=name), metadata=coordinator
    )
    ledger.stub.AssignLeadAgency(
        api.AssignLeadAgencyRequest(request_id=rid(), name=name, agency="polres"),
        metadata=coordinator,
    )
    return name


def write_file(path: Path, size: int, head: bytes = JPEG_HEAD) -> str:
    """A file of ``size`` bytes starting with ``head``, written in pieces; its SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        piece = head + os.urandom(min(size, CHUNK) - len(head))
        written = 0
        while written < size:
            part = piece[: size - written]
            out.write(part)
            digest.update(part)
            written += len(part)
            piece = os.urandom(min(size - written, CHUNK)) if written < size else b""
    return digest.hexdigest()


def upload_messages(
    name: str, path: Path, request_id: str, *, file_name: str = "photo.jpg", media_type: str = ""
) -> Iterator[ev.UploadEvidenceRequest]:
    yield ev.UploadEvidenceRequest(
        header=ev.EvidenceHeader(
            request_id=request_id,
            name=name,
            file_name=file_name,
            media_type=media_type,
            description="Envelopes handed out in Ipuh",
        )
    )
    with path.open("rb") as source:
        while chunk := source.read(UPLOAD_CHUNK):
            yield ev.UploadEvidenceRequest(chunk=chunk)


def attached_events(ledger: Client, name: str) -> list[pb.IncidentEvent]:
    events = ledger.stub.ListIncidentEvents(
        api.ListIncidentEventsRequest(parent=name, page_size=1000),
        metadata=ledger.md("inspektorat"),
    ).events
    return [e for e in events if e.type == "EvidenceAttached"]


def test_a_20_mb_file_comes_back_byte_for_byte_and_is_stored_once(
    ledger: Client, tmp_path: Path
) -> None:
    name = assigned_incident(ledger)
    source = tmp_path / "envelopes.jpg"
    digest = write_file(source, 20 * 1000 * 1000)
    stub = evidence_stub(ledger)
    uploaded = stub.UploadEvidence(
        upload_messages(name, source, rid(), media_type="image/jpeg"),
        metadata=ledger.md("kesbangpol"),
    )
    evidence = uploaded.evidence
    assert (evidence.sha256, evidence.size_bytes) == (digest, 20 * 1000 * 1000)
    assert evidence.media_type == "image/jpeg"
    assert evidence.uploader.agency == "kesbangpol"
    assert evidence.name == f"{name}/evidence/{uploaded.result.event_id}"
    # The same bytes again, as another attachment: a second event, one object.
    again = stub.UploadEvidence(upload_messages(name, source, rid()), metadata=ledger.md("polres"))
    assert again.evidence.sha256 == digest
    assert len(attached_events(ledger, name)) == 2
    objects = ledger.server.evidence_objects
    assert objects is not None
    stored = objects.stat(object_name(digest))
    assert stored is not None and stored.sha256 == digest

    target = tmp_path / "downloaded.jpg"
    responses = stub.DownloadEvidence(
        ev.DownloadEvidenceRequest(name=evidence.name), metadata=ledger.md("polres")
    )
    first = next(iter(responses))
    assert first.evidence == evidence
    copied = hashlib.sha256()
    with target.open("wb") as out:
        for response in responses:
            assert len(response.chunk) <= CHUNK
            out.write(response.chunk)
            copied.update(response.chunk)
    assert copied.hexdigest() == digest
    assert target.stat().st_size == source.stat().st_size

    listed = stub.ListEvidence(ev.ListEvidenceRequest(parent=name), metadata=ledger.md("polres"))
    assert [e.sha256 for e in listed.evidence] == [digest, digest]
    downloads = stub.ListEvidenceDownloads(
        ev.ListEvidenceDownloadsRequest(parent=name), metadata=ledger.md("inspektorat")
    ).downloads
    assert [(d.evidence, d.actor.agency) for d in downloads] == [(evidence.name, "polres")]
    fails(
        lambda: stub.ListEvidenceDownloads(
            ev.ListEvidenceDownloadsRequest(parent=name), metadata=ledger.md("polres")
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "AUDITOR_OR_COORDINATOR_ONLY",
    )


#: The log lines of an upload's outcome.
UPLOAD_LINES = ("evidence.stored", "evidence.attached", "evidence.upload_replayed")

#: Both stores the ledger runs on in production: the table of downloads is on each.
STORES_TOO = ["sqlite", "postgres"]


def test_a_request_id_reused_for_other_bytes_leaves_them_out_of_the_object_store(
    ledger: Client, tmp_path: Path
) -> None:
    """Other bytes under a request id recorded before are refused (ALREADY_EXISTS): they
    were stored first, an object no event names, left until the sweep an hour later."""
    name = assigned_incident(ledger)
    first, other = tmp_path / "first.jpg", tmp_path / "other.jpg"
    write_file(first, 3 * UPLOAD_CHUNK)
    other_digest = write_file(other, 2 * UPLOAD_CHUNK)
    stub, request_id = evidence_stub(ledger), rid()
    kept = stub.UploadEvidence(
        upload_messages(name, first, request_id), metadata=ledger.md("polres")
    ).evidence
    fails(
        lambda: stub.UploadEvidence(
            upload_messages(name, other, request_id), metadata=ledger.md("polres")
        ),
        grpc.StatusCode.ALREADY_EXISTS,
        "REQUEST_ID_REUSED",
    )
    objects = ledger.server.evidence_objects
    assert objects is not None
    assert [o.name for o in objects.list_objects()] == [object_name(kept.sha256)]
    assert objects.stat(object_name(other_digest)) is None
    assert len(attached_events(ledger, name)) == 1


def test_two_uploads_at_once_under_one_request_id_store_one_file(
    ledger: Client, tmp_path: Path
) -> None:
    """Two uploads under one request id, both under way before either is recorded: the
    same bytes are recorded once and both answered with that result; other bytes are
    refused (ALREADY_EXISTS, REQUEST_ID_REUSED) and their object deleted at once. Before,
    the loser's object stayed in the bucket, no event naming it, until the sweep."""
    name = assigned_incident(ledger)
    first, same = tmp_path / "first.jpg", tmp_path / "same.jpg"
    other, third = tmp_path / "other.jpg", tmp_path / "third.jpg"
    write_file(first, 4 * UPLOAD_CHUNK)
    same.write_bytes(first.read_bytes())
    other_digest = write_file(other, 4 * UPLOAD_CHUNK)
    third_digest = write_file(third, 4 * UPLOAD_CHUNK)
    objects = ledger.server.evidence_objects
    assert objects is not None
    stub = evidence_stub(ledger)

    def at_once(files: tuple[Path, Path]) -> list[ev.UploadEvidenceResponse | grpc.RpcError]:
        """Both uploads sent up to their second chunk before either sends the rest."""
        request_id, both_begun = rid(), threading.Barrier(2)

        def messages(path: Path) -> Iterator[ev.UploadEvidenceRequest]:
            for n, message in enumerate(upload_messages(name, path, request_id)):
                if n == 2:  # the header and a chunk sent, by both
                    both_begun.wait(30)
                yield message

        calls = [
            stub.UploadEvidence.future(messages(path), metadata=ledger.md("polres"))
            for path in files
        ]
        answers: list[ev.UploadEvidenceResponse | grpc.RpcError] = []
        for call in calls:
            try:
                answers.append(call.result(timeout=60))
            except grpc.RpcError as error:
                answers.append(error)
        return answers

    one, two = at_once((first, same))
    assert isinstance(one, ev.UploadEvidenceResponse), one
    assert isinstance(two, ev.UploadEvidenceResponse), two
    assert one.result == two.result
    kept = one.evidence
    assert [o.name for o in objects.list_objects()] == [object_name(kept.sha256)]

    answers = at_once((other, third))
    recorded = [a for a in answers if isinstance(a, ev.UploadEvidenceResponse)]
    refused = [a for a in answers if isinstance(a, grpc.RpcError)]
    assert len(recorded) == 1 and len(refused) == 1, answers
    assert refused[0].code() == grpc.StatusCode.ALREADY_EXISTS, refused[0].details()
    info = error_info(refused[0])  # type: ignore[arg-type]
    assert info is not None and info.reason == "REQUEST_ID_REUSED"
    # The winner's file beside the first, and not the loser's.
    winner = recorded[0].evidence.sha256
    assert winner in (other_digest, third_digest)
    assert sorted(o.name for o in objects.list_objects()) == sorted(
        [object_name(kept.sha256), object_name(winner)]
    )
    assert len(attached_events(ledger, name)) == 2


@pytest.mark.parametrize("ledger", STORES_TOO, indirect=True)
def test_a_retry_with_the_same_request_id_records_one_event(ledger: Client, tmp_path: Path) -> None:
    name = assigned_incident(ledger)
    source = tmp_path / "letter.pdf"
    write_file(source, 300_000, head=b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj")
    stub, request_id = evidence_stub(ledger), rid()
    with capture_logs() as logs:
        first = stub.UploadEvidence(
            upload_messages(name, source, request_id, file_name="letter.pdf"),
            metadata=ledger.md("polres"),
        )
        second = stub.UploadEvidence(
            upload_messages(name, source, request_id, file_name="letter.pdf"),
            metadata=ledger.md("polres"),
        )
    assert first.result == second.result
    # The logs say the file was attached, and stored, once: the retry is said to be one,
    # its bytes checked against the record, not stored again.
    said = [(x["event"], x.get("already_stored")) for x in logs if x["event"] in UPLOAD_LINES]
    assert said == [
        ("evidence.stored", False),
        ("evidence.attached", None),
        ("evidence.upload_replayed", None),
    ]
    assert first.evidence.media_type == "application/pdf"
    assert len(attached_events(ledger, name)) == 1
    fetched = stub.DownloadEvidence(
        ev.DownloadEvidenceRequest(name=first.evidence.name), metadata=ledger.md("polres")
    )
    assert sum(len(r.chunk) for r in fetched) == 300_000
    downloads = stub.ListEvidenceDownloads(
        ev.ListEvidenceDownloadsRequest(parent=name), metadata=ledger.md("desk_pilkada")
    ).downloads
    assert [(d.evidence, d.actor.agency) for d in downloads] == [(first.evidence.name, "polres")]


def test_an_executable_named_as_an_image_is_refused(ledger: Client, tmp_path: Path) -> None:
    name = assigned_incident(ledger)
    source = tmp_path / "photo.jpg"
    digest = write_file(source, 200_000, head=b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff")
    version = attached_version(ledger, name)
    fails(
        lambda: evidence_stub(ledger).UploadEvidence(
            upload_messages(name, source, rid(), media_type="image/jpeg"),
            metadata=ledger.md("polres"),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MEDIA_TYPE_NOT_ALLOWED",
    )
    assert attached_version(ledger, name) == version
    objects = ledger.server.evidence_objects
    assert objects is not None and objects.stat(object_name(digest)) is None


def test_a_responder_not_involved_is_permission_denied(ledger: Client, tmp_path: Path) -> None:
    name = assigned_incident(ledger)
    source = tmp_path / "photo.jpg"
    write_file(source, 10_000)
    stub = evidence_stub(ledger)
    fails(
        lambda: stub.UploadEvidence(
            upload_messages(name, source, rid()), metadata=ledger.md("kodim")
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "NOT_INVOLVED",
    )
    uploaded = stub.UploadEvidence(
        upload_messages(name, source, rid()), metadata=ledger.md("polres")
    )
    for call in (
        lambda: stub.ListEvidence(ev.ListEvidenceRequest(parent=name), metadata=ledger.md("kodim")),
        lambda: list(
            stub.DownloadEvidence(
                ev.DownloadEvidenceRequest(name=uploaded.evidence.name),
                metadata=ledger.md("kodim"),
            )
        ),
    ):
        fails(call, grpc.StatusCode.PERMISSION_DENIED, "NOT_INVOLVED")


@pytest.mark.parametrize(
    "file_name", ["../../etc/passwd", "bad\nname.jpg", "\x1b[2Jphoto.jpg", ".."]
)
def test_a_file_name_that_is_a_path_or_has_control_characters_is_refused_before_its_bytes(
    ledger: Client, tmp_path: Path, file_name: str
) -> None:
    """The uploader's file name is kept for good and offered to whoever downloads the file:
    a path, a line break or a terminal escape in it is ``INVALID_ARGUMENT``
    (``INVALID_FIELD``, field ``header.file_name``), before any byte is stored."""
    name = assigned_incident(ledger)
    source = tmp_path / "photo.jpg"
    write_file(source, 3 * UPLOAD_CHUNK)
    with pytest.raises(grpc.RpcError) as caught:
        evidence_stub(ledger).UploadEvidence(
            upload_messages(name, source, rid(), file_name=file_name),
            metadata=ledger.md("polres"),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    info = error_info(caught.value)  # type: ignore[arg-type]
    assert info is not None
    assert (info.reason, info.metadata["field"]) == ("INVALID_FIELD", "header.file_name")
    assert attached_events(ledger, name) == []
    objects = ledger.server.evidence_objects
    assert objects is not None and objects.list_objects() == []


def test_a_file_over_the_limit_is_resource_exhausted(
    ledger: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = assigned_incident(ledger)
    source = tmp_path / "video.jpg"
    write_file(source, 26 * 1000 * 1000)
    fails(
        lambda: evidence_stub(ledger).UploadEvidence(
            upload_messages(name, source, rid()), metadata=ledger.md("polres")
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "EVIDENCE_TOO_LARGE",
    )
    # ledgerctl: a file no wait will make smaller is the caller's to change (exit 2), not
    # "the server failing" (6), which a script would try again forever.
    code, _out, err = Ctl(ledger, capsys).run("polres", "--json", "attach", name, str(source))
    error = json.loads(err)["error"]
    assert (code, error["reason"], error["exit_code"]) == (2, "EVIDENCE_TOO_LARGE", 2), err
    assert attached_events(ledger, name) == []


def attached_version(ledger: Client, name: str) -> int:
    return ledger.stub.GetIncident(
        api.GetIncidentRequest(name=name), metadata=ledger.md("inspektorat")
    ).incident.version


def test_an_upload_cut_half_way_leaves_no_event_and_no_object(
    ledger: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    name = assigned_incident(ledger)
    source = tmp_path / "recording.jpg"
    digest = write_file(source, 8 * CHUNK)
    version = attached_version(ledger, name)
    objects = ledger.server.evidence_objects
    assert objects is not None
    half_sent = threading.Event()
    never = threading.Event()

    def cut_short() -> Iterator[ev.UploadEvidenceRequest]:
        for n, message in enumerate(upload_messages(name, source, rid())):
            if n == 4:
                half_sent.set()
                never.wait(30)  # the client goes away here
                return
            yield message

    call = evidence_stub(ledger).UploadEvidence.future(cut_short(), metadata=ledger.md("polres"))
    assert half_sent.wait(10)
    wait_until(
        lambda: [o.name[:7] for o in objects.list_objects()] == ["upload-"],
        what="the upload's pending entry",
    )
    call.cancel()  # type: ignore[no-untyped-call]
    never.set()
    wait_until(lambda: not objects.list_objects(), what="the pending upload removed")
    assert attached_version(ledger, name) == version
    assert objects.stat(object_name(digest)) is None
    # Its chunks went with it: the bucket's stream holds nothing.
    assert asyncio.run(_stream_messages(nats_server.url, "evidence")) == 0


#: An uploader in a process of its own, the Python client: once half the file is sent it
#: says so and waits to be killed (a phone whose app is closed, a laptop losing power).
_DYING_UPLOADER = """
import sys
from incidentledger_client import LedgerClient
address, token, name, path = sys.argv[1:5]

def progress(sent, size):
    if sent * 2 >= size:
        print("half", flush=True)
        sys.stdin.read()  # killed here

LedgerClient(address, token=token).attach_evidence(name, path, progress=progress)
"""


def test_an_uploader_killed_half_way_records_nothing(ledger: Client, tmp_path: Path) -> None:
    """A client process that dies mid-upload may close its connection as if its stream
    had ended, without cancelling the call: what it sent must not be recorded as the file."""
    name = assigned_incident(ledger)
    source = tmp_path / "recording.jpg"
    write_file(source, 8 * CHUNK)
    version = attached_version(ledger, name)
    objects = ledger.server.evidence_objects
    assert objects is not None
    argv = [ledger.address, ledger.tokens["polres"], name, str(source)]
    uploader = subprocess.Popen(
        [sys.executable, "-c", _DYING_UPLOADER, *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert uploader.stdout is not None
        assert uploader.stdout.readline() == b"half\n"
        wait_until(
            lambda: [o.name[:7] for o in objects.list_objects()] == ["upload-"],
            what="the upload's pending entry",
        )
    finally:
        uploader.kill()
        uploader.wait()
    # Dropped (nothing left), or, the defect, recorded cut short.
    wait_until(
        lambda: not objects.list_objects() or attached_version(ledger, name) != version,
        what="the upload dropped or recorded",
    )
    assert attached_events(ledger, name) == []
    assert attached_version(ledger, name) == version
    assert objects.list_objects() == []


def test_an_upload_that_ends_before_its_declared_size_is_refused(
    ledger: Client, tmp_path: Path
) -> None:
    """A stream that ends normally before the declared size, as a dead client's may: the
    bytes are not the file, nothing is stored or recorded."""
    name = assigned_incident(ledger)
    source = tmp_path / "recording.jpg"
    write_file(source, 8 * CHUNK)
    version = attached_version(ledger, name)

    def first_half() -> Iterator[ev.UploadEvidenceRequest]:
        for n, message in enumerate(upload_messages(name, source, rid())):
            if message.HasField("header"):
                message.header.size_bytes = 8 * CHUNK
            if n > 8:  # the header and 8 chunks of half a MiB: 4 MiB of the 8
                return
            yield message

    with pytest.raises(grpc.RpcError) as caught:
        evidence_stub(ledger).UploadEvidence(first_half(), metadata=ledger.md("polres"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "4194304 of the 8388608 bytes declared" in str(caught.value.details())
    assert attached_version(ledger, name) == version
    objects = ledger.server.evidence_objects
    assert objects is not None
    wait_until(lambda: not objects.list_objects(), what="the refused upload's chunks purged")
    # More than declared is refused too.
    with pytest.raises(grpc.RpcError) as caught:
        evidence_stub(ledger).UploadEvidence(
            (
                m
                if not m.HasField("header")
                else ev.UploadEvidenceRequest(
                    header=ev.EvidenceHeader(
                        request_id=m.header.request_id,
                        name=name,
                        file_name="recording.jpg",
                        size_bytes=CHUNK,
                    )
                )
                for m in upload_messages(name, source, rid())
            ),
            metadata=ledger.md("polres"),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert attached_version(ledger, name) == version


@pytest.mark.parametrize("declared", [True, False], ids=["size_declared", "size_undeclared"])
def test_an_upload_the_ledger_s_stop_cuts_short_is_unavailable_and_leaves_nothing(
    ledger: Client, nats_server: NatsServer, tmp_path: Path, declared: bool
) -> None:
    """The ledger stopped with an upload under way, its sender pausing past the grace
    period: the upload is answered UNAVAILABLE with the ledger's reason, to be sent again,
    and nothing of it is stored or recorded. Before, gRPC's cancellation came first: the
    caller got a bare 'Cancelling all calls', and the handler took the stream's end for the
    file's (INVALID_FIELD, header.size_bytes; or, with no declared size, the bytes so far
    stored as a file, at times)."""
    name = assigned_incident(ledger)
    source = tmp_path / "recording.jpg"
    write_file(source, 8 * UPLOAD_CHUNK)
    objects = ledger.server.evidence_objects
    assert objects is not None
    half_sent, never = threading.Event(), threading.Event()

    def pausing() -> Iterator[ev.UploadEvidenceRequest]:
        for n, message in enumerate(upload_messages(name, source, rid())):
            if message.HasField("header") and declared:
                message.header.size_bytes = 8 * UPLOAD_CHUNK
            if n == 4:  # the header and three chunks sent; the rest after the stop
                half_sent.set()
                never.wait(30)
                return
            yield message

    call = evidence_stub(ledger).UploadEvidence.future(pausing(), metadata=ledger.md("polres"))
    try:
        assert half_sent.wait(20)
        wait_until(
            lambda: [o.name[:7] for o in objects.list_objects()] == ["upload-"],
            what="the upload's pending entry",
        )
        with capture_logs() as logs:
            ledger.server.stop(0.2)
    finally:
        never.set()
    fails(lambda: call.result(timeout=20), grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
    assert "send it again" in str(call.exception().details())  # type: ignore[union-attr]
    answered = [x for x in logs if x["event"] == "request"]
    assert [(x["status"], x["reason"]) for x in answered] == [("UNAVAILABLE", "SHUTTING_DOWN")]
    assert not [x for x in logs if x["event"] in UPLOAD_LINES]
    # Its pending entry and chunks purged before the connection to NATS closed.
    assert asyncio.run(_stream_messages(nats_server.url, "evidence")) == 0


async def _stream_messages(nats_url: str, bucket: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(f"OBJ_{bucket}")
        return int(info.state.messages)
    finally:
        await nc.close()


async def _put_directly(nats_url: str, bucket: str, name: str, data: bytes) -> None:
    nc = await nats.connect(nats_url)
    try:
        store = await nc.jetstream().object_store(bucket)
        await store.put(name, data)
    finally:
        await nc.close()


async def _limit_the_store(nats_url: str, bucket: str, room: int) -> None:
    """The evidence's stream allowed only ``room`` bytes more than it holds (a disk's worth
    of quota reached): NATS refuses the next writes beyond it."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(f"OBJ_{bucket}")
        config = info.config
        config.max_bytes = int(info.state.bytes) + room
        config.discard = DiscardPolicy.NEW
        await js.update_stream(config)
    finally:
        await nc.close()


def test_a_full_evidence_store_is_resource_exhausted_not_a_store_away(
    ledger: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    """It was UNAVAILABLE ("not available: ServiceUnavailableError"), which clients retry:
    the file was sent a dozen times, each refused, and NATS's reason was nowhere."""
    name = assigned_incident(ledger)
    small, large = tmp_path / "small.jpg", tmp_path / "large.jpg"
    write_file(small, 10_000)
    write_file(large, 600_000)
    stub = evidence_stub(ledger)
    stub.UploadEvidence(upload_messages(name, small, rid()), metadata=ledger.md("polres"))
    asyncio.run(_limit_the_store(nats_server.url, "evidence", 100_000))
    with pytest.raises(grpc.RpcError) as caught:
        stub.UploadEvidence(upload_messages(name, large, rid()), metadata=ledger.md("polres"))
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    info = error_info(error)  # type: ignore[arg-type]
    assert info is not None and info.reason == "EVIDENCE_STORE_FULL", error.details()
    assert "is full" in str(error.details()) and "make room" in str(error.details())
    assert len(attached_events(ledger, name)) == 1, "nothing recorded of the refused file"


def test_deep_verify_names_a_changed_and_a_missing_object(
    ledger: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    name = assigned_incident(ledger)
    stub = evidence_stub(ledger)
    photo, scan = tmp_path / "photo.png", tmp_path / "letter.pdf"
    write_file(photo, 50_000, head=b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    write_file(scan, 60_000, head=b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 ob")
    changed = stub.UploadEvidence(upload_messages(name, photo, rid()), metadata=ledger.md("polres"))
    missing = stub.UploadEvidence(upload_messages(name, scan, rid()), metadata=ledger.md("polres"))
    objects = ledger.server.evidence_objects
    assert objects is not None
    clean = verify_evidence(ledger.server.ledger, objects.read_into)
    assert (clean.ok, clean.evidence, clean.objects) == (True, 2, 2)

    asyncio.run(change_one_byte(nats_server.url, "evidence", object_name(changed.evidence.sha256)))
    objects.delete(object_name(missing.evidence.sha256))
    report = verify_evidence(ledger.server.ledger, objects.read_into)
    problems = {(p.event_id, p.problem, p.object, p.incident) for p in report.problems}
    assert problems == {
        (
            changed.result.event_id,
            "changed",
            object_name(changed.evidence.sha256),
            name,
        ),
        (
            missing.result.event_id,
            "missing",
            object_name(missing.evidence.sha256),
            name,
        ),
    }
    (found,) = [p for p in report.problems if p.problem == "changed"]
    assert found.found_size == found.expected_size == 50_000
    assert found.found_sha256 != found.expected_sha256
    # A download of the changed file is refused before any byte goes out.
    fails(
        lambda: list(
            stub.DownloadEvidence(
                ev.DownloadEvidenceRequest(name=changed.evidence.name),
                metadata=ledger.md("polres"),
            )
        ),
        grpc.StatusCode.DATA_LOSS,
        "EVIDENCE_CHANGED",
    )


def test_ledgerctl_attaches_lists_gets_and_shows_downloads(
    ledger: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ctl = Ctl(ledger, capsys)
    name = assigned_incident(ledger)
    source = tmp_path / "amplop.jpg"
    digest = write_file(source, 3 * UPLOAD_CHUNK + 17)
    attached = ctl.json("polres", "attach", name, str(source), "-d", "Amplop dibagikan di Ipuh")
    evidence = attached["evidence"]
    assert (evidence["sha256"], evidence["media_type"]) == (digest, "image/jpeg")
    assert attached["result"]["incident"] == name
    short = evidence["name"].rpartition("/")[2][:8]
    table = ctl.ok("polres", "evidence", "list", name)
    assert "amplop.jpg" in table and short in table
    target = tmp_path / "copy.jpg"
    ctl.ok("inspektorat", "evidence", "get", name, short, "-o", str(target))
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*.part"))
    # The whole name attach printed, as one argument, names it too.
    again = tmp_path / "again.jpg"
    ctl.ok("inspektorat", "evidence", "get", evidence["name"], "-o", str(again))
    assert again.read_bytes() == target.read_bytes()
    downloads = ctl.json("inspektorat", "evidence", "downloads", name)
    assert [(d["evidence"], d["actor"]["agency"]) for d in downloads] == [
        (evidence["name"], "inspektorat"),
        (evidence["name"], "inspektorat"),
    ]
    indonesian = ctl.ok("polres", "--lang", "id", "evidence", "list", name)
    assert "Bukti" in indonesian and "pengunggah" in indonesian.lower()
    code, _out, err = ctl.run("kodim", "attach", name, str(source))
    assert code != 0 and "NOT_INVOLVED" in err
    # A file of a refused type: the refusal points at the file, not at the upload's field.
    program = tmp_path / "evil.jpg"
    program.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(4096))
    code, _out, err = ctl.run("polres", "attach", name, str(program))
    assert code != 0 and "application/x-executable" in err
    assert "(in the file's content)" in err and "chunk" not in err
    code, _out, err = ctl.run("polres", "--lang", "id", "attach", name, str(program))
    assert code != 0 and "(pada isi berkas)" in err and "chunk" not in err
    # A correction: the right file attached, the first one recorded as superseded by it.
    right = tmp_path / "right.jpg"
    write_file(right, 20_000)
    code, _out, err = ctl.run("polres", "attach", name, str(right), "--supersedes", short)
    assert code == 2 and "--reason" in err
    corrected = ctl.json(
        "polres", "attach", name, str(right), "--supersedes", short, "--reason", "wrong photo"
    )
    assert corrected["correction"]["incident"] == name
    listed = {e["name"]: e for e in ctl.json("polres", "evidence", "list", name)}
    assert listed[evidence["name"]]["superseded_by"] == corrected["evidence"]["name"]


def test_ledgerctl_evidence_list_shows_each_file_s_sha256(
    ledger: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An investigator compares a file found elsewhere (on a seized phone) with the one the
    ledger recorded by its SHA-256: the table shows its first characters, --json all 64."""
    ctl = Ctl(ledger, capsys)
    name = assigned_incident(ledger)
    source = tmp_path / "amplop.jpg"
    digest = write_file(source, 20_000)
    ctl.ok("polres", "attach", name, str(source))
    table = ctl.ok("polres", "evidence", "list", name)
    assert "sha256" in table
    assert digest[:12] in table
    (listed,) = ctl.json("polres", "evidence", "list", name)
    assert listed["sha256"] == digest
    assert "sha256" in ctl.ok("polres", "--lang", "id", "evidence", "list", name)


def test_ledgerctl_attach_keeps_the_file_under_the_name_given_with_name(
    ledger: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A phone's IMG_0001.jpg kept as what it shows; the name is checked as any file name."""
    ctl = Ctl(ledger, capsys)
    name = assigned_incident(ledger)
    source = tmp_path / "IMG_0001.jpg"
    write_file(source, 20_000)
    attached = ctl.json("polres", "attach", name, str(source), "--name", "amplop-ipuh.jpg")
    assert attached["evidence"]["file_name"] == "amplop-ipuh.jpg"
    (listed,) = ctl.json("polres", "evidence", "list", name)
    assert listed["file_name"] == "amplop-ipuh.jpg"
    code, _out, err = ctl.run("polres", "attach", name, str(source), "--name", "../amplop.jpg")
    assert code != 0 and "header.file_name" in err
    assert len(attached_events(ledger, name)) == 1


def test_ledgerctl_says_an_empty_file_is_empty_in_both_languages(
    ledger: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ctl = Ctl(ledger, capsys)
    name = assigned_incident(ledger)
    empty = tmp_path / "foto.jpg"
    empty.write_bytes(b"")
    code, _out, err = ctl.run("polres", "attach", name, str(empty))
    assert code == 2 and "EVIDENCE_EMPTY" in err and "the file is empty" in err
    code, _out, err = ctl.run("polres", "--lang", "id", "attach", name, str(empty))
    assert code == 2 and "Berkas kosong" in err and "chunk" not in err
    assert attached_events(ledger, name) == []


def test_ledgerctl_get_never_writes_over_a_file_or_where_the_uploader_s_name_says(
    ledger: Client,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default file name of ``evidence get`` is the uploader's, another agency's: it
    must not replace a file of the officer's, nor write a hidden file or outside here."""
    ctl = Ctl(ledger, capsys)
    name = assigned_incident(ledger)
    source = tmp_path / "photo.jpg"
    write_file(source, 5_000)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    (here / "passwd").write_text("the officer's own file")
    written = {}
    # Names the ledger refuses now (a path, a control character), as events recorded before
    # it did keep them: the ledger's check set aside while they are attached.
    monkeypatch.setattr("services.ledger.domain.evidence.check_file_name", lambda value: value)
    for file_name in ("../../etc/passwd", ".bashrc", "..", "bad\nname.jpg"):
        response = evidence_stub(ledger).UploadEvidence(
            upload_messages(name, source, rid(), file_name=file_name),
            metadata=ledger.md("kesbangpol"),
        )
        written[file_name] = response.evidence.name
    monkeypatch.undo()
    monkeypatch.chdir(here)
    code, _out, err = ctl.run("polres", "evidence", "get", written["../../etc/passwd"])
    assert code == 2 and "passwd exists here" in err and "--out" in err
    assert (here / "passwd").read_text() == "the officer's own file"
    ctl.ok("polres", "evidence", "get", written[".bashrc"])
    ctl.ok("polres", "evidence", "get", written[".."])
    ctl.ok("polres", "evidence", "get", written["bad\nname.jpg"])
    event_id = written[".."].rpartition("/")[2]
    assert sorted(p.name for p in here.iterdir()) == sorted(
        ["passwd", "bashrc", event_id, "badname.jpg"]
    )
    assert (here / "bashrc").read_bytes() == source.read_bytes()
    # A place that cannot be written: said in a line, not a traceback.
    code, _out, err = ctl.run(
        "polres", "evidence", "get", written[".bashrc"], "-o", str(tmp_path / "none" / "x.jpg")
    )
    assert code == 1 and "cannot write or read" in err and "Traceback" not in err


def test_ledgerctl_attach_says_the_file_is_attached_when_its_correction_is_refused(
    ledger: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only the uploader's agency or the coordinator may supersede evidence: the lead's
    file is attached all the same, and ledgerctl must say so, lest it be attached again."""
    ctl = Ctl(ledger, capsys)
    name = assigned_incident(ledger)  # reported by kesbangpol, led by polres
    wrong, right = tmp_path / "wrong.jpg", tmp_path / "right.jpg"
    write_file(wrong, 10_000)
    write_file(right, 20_000)
    theirs = ctl.json("kesbangpol", "attach", name, str(wrong))["evidence"]["name"]
    code, out, err = ctl.run(
        "polres", "attach", name, str(right), "--supersedes", theirs[-36:], "--reason", "x"
    )
    assert code == 5 and "NOT_EVENT_AUTHOR" in err
    (mine,) = [e for e in attached_events(ledger, name) if e.actor.agency == "polres"]
    assert f"attached {name}" in out and mine.event_id in out
    assert "is not recorded as superseded by it" in err
    assert f"ledgerctl correct {name} superseded_by '' {mine.event_id} --event" in err
    # Sent again with the same request id, attachment and correction are recorded once.
    args = ("attach", name, str(right), "--supersedes", theirs[-36:], "--reason", "wrong photo")
    first = ctl.json("kesbangpol", *args, "--request-id", "kesbangpol-fix-1")
    again = ctl.json("kesbangpol", *args, "--request-id", "kesbangpol-fix-1")
    assert again["correction"] == first["correction"]
    assert again["evidence"]["name"] == first["evidence"]["name"]


def test_ledgerctl_correct_names_the_evidence_as_the_list_shows_it(
    ledger: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The two-command correction of evidence.md, with the short ids ``evidence list``
    shows (the only ones a table gives)."""
    ctl = Ctl(ledger, capsys)
    name = assigned_incident(ledger)
    wrong, right = tmp_path / "wrong.jpg", tmp_path / "right.jpg"
    write_file(wrong, 10_000)
    write_file(right, 20_000)
    old = ctl.json("polres", "attach", name, str(wrong), "-d", "Amplop")["evidence"]["name"]
    new = ctl.json("polres", "attach", name, str(right))["evidence"]["name"]
    old_short, new_id = old[-36:][:8], new[-36:]
    assert old_short in ctl.ok("polres", "evidence", "list", name)
    ctl.ok(
        "polres",
        "correct",
        name,
        "superseded_by",
        "",
        new_id,
        "--event",
        old_short,
        "--reason",
        "the photo of another envelope",
    )
    ctl.ok(
        "polres",
        "correct",
        name,
        "description",
        "Amplop",
        "Amplop di Pasar Ipuh",
        "--event",
        old_short,
        "--reason",
        "where",
    )
    listed = {e["name"]: e for e in ctl.json("polres", "evidence", "list", name)}
    assert listed[old]["superseded_by"] == new
    assert listed[old]["description"] == "Amplop di Pasar Ipuh"
    code, _out, err = ctl.run(
        "polres", "correct", name, "description", "", "x", "--event", "ffff", "--reason", "x"
    )
    assert code == 2 and "ffff names no single event of" in err


@pytest.mark.parametrize("ledger", STORES_TOO, indirect=True)
def test_evidence_and_its_downloads_are_listed_page_by_page(ledger: Client, tmp_path: Path) -> None:
    name = assigned_incident(ledger)
    stub = evidence_stub(ledger)
    attached = []
    for n in range(3):
        source = tmp_path / f"photo-{n}.jpg"
        write_file(source, 20_000 + n)
        attached.append(
            stub.UploadEvidence(
                upload_messages(name, source, rid()), metadata=ledger.md("polres")
            ).evidence.name
        )
    for evidence in attached:
        for agency in ("inspektorat", "polres"):
            for _ in stub.DownloadEvidence(
                ev.DownloadEvidenceRequest(name=evidence), metadata=ledger.md(agency)
            ):
                pass

    evidence_pages: list[list[str]] = []
    token = ""
    while not evidence_pages or token:
        listed = stub.ListEvidence(
            ev.ListEvidenceRequest(parent=name, page_size=2, page_token=token),
            metadata=ledger.md("polres"),
        )
        evidence_pages.append([e.name for e in listed.evidence])
        token = listed.next_page_token
    assert evidence_pages == [attached[:2], attached[2:]]
    download_pages: list[list[str]] = []
    token = ""
    while not download_pages or token:
        page = stub.ListEvidenceDownloads(
            ev.ListEvidenceDownloadsRequest(parent=name, page_size=4, page_token=token),
            metadata=ledger.md("inspektorat"),
        )
        download_pages.append([f"{d.evidence} {d.actor.agency}" for d in page.downloads])
        token = page.next_page_token
    assert [len(p) for p in download_pages] == [4, 2]
    everything = [d for page in download_pages for d in page]
    assert sorted(everything) == sorted(
        f"{e} {agency}" for e in attached for agency in ("inspektorat", "polres")
    )
    # Oldest first, as the unpaged list was.
    whole = stub.ListEvidenceDownloads(
        ev.ListEvidenceDownloadsRequest(parent=name, page_size=500),
        metadata=ledger.md("inspektorat"),
    )
    assert [f"{d.evidence} {d.actor.agency}" for d in whole.downloads] == everything
    assert not whole.next_page_token

    # A page token belongs to its incident.
    first = stub.ListEvidence(
        ev.ListEvidenceRequest(parent=name, page_size=1), metadata=ledger.md("polres")
    )
    other = assigned_incident(ledger)
    fails(
        lambda: stub.ListEvidence(
            ev.ListEvidenceRequest(parent=other, page_token=first.next_page_token),
            metadata=ledger.md("polres"),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
    )

    # The client follows the pages.
    with LedgerClient(ledger.address, ledger.tokens["inspektorat"]) as client:
        assert [e.name for e in client.list_evidence(name, page_size=1)] == attached
        followed = client.evidence_downloads(name, page_size=1)
        assert [f"{d.evidence} {d.actor.agency}" for d in followed] == everything


def test_the_sweep_deletes_objects_no_event_names_once_past_the_grace(
    ledger: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    """What an upload leaves when the ledger is killed half way (its pending entry and
    chunks) or between storing a file and recording its event (an object no event names):
    swept once older than the grace period."""
    name = assigned_incident(ledger)
    kept, orphan = tmp_path / "kept.jpg", tmp_path / "orphan.jpg"
    write_file(kept, 40_000)
    orphan_digest = write_file(orphan, 30_000)
    uploaded = evidence_stub(ledger).UploadEvidence(
        upload_messages(name, kept, rid()), metadata=ledger.md("polres")
    )
    objects = ledger.server.evidence_objects
    assert objects is not None
    with orphan.open("rb") as source:
        objects.put_chunks(iter([source.read()]))
    killed = "upload-0123456789abcdef0123456789abcdef"
    asyncio.run(_put_directly(nats_server.url, "evidence", killed, b"half a file"))
    now = datetime.now(UTC)
    assert sweep_orphans(ledger.server.ledger, objects, timedelta(minutes=60), now) == []
    swept = sweep_orphans(ledger.server.ledger, objects, timedelta(0), now + timedelta(seconds=1))
    assert sorted(swept) == sorted([object_name(orphan_digest), killed])
    assert objects.stat(object_name(orphan_digest)) is None
    assert objects.stat(killed) is None
    assert objects.stat(object_name(uploaded.evidence.sha256)) is not None


def _audit_cli(ledger: Client, nats_url: str, *args: str) -> tuple[int, list[dict[str, object]]]:
    """``python -m services.ledger.audit`` on the running ledger's store and NATS."""
    result = subprocess.run(
        [sys.executable, "-m", "services.ledger.audit", *args],
        env={
            **os.environ,
            **ledger.server.ledger.env,
            "NATS_URL": nats_url,
            "LEDGER_DATA_DIR": str(ledger.data_dir),
            "LEDGER_REFERENCE_FILE": str(REFERENCE_FILE),
            "LEDGER_LOG_FORMAT": "json",
            "PYTHONPATH": f"{PROJECT_ROOT}:{PROJECT_ROOT / 'gen'}",
        },
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result.returncode, lines


def test_ledger_audit_verify_deep_exits_1_and_names_a_missing_object(
    ledger: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    name = assigned_incident(ledger)
    source = tmp_path / "photo.jpg"
    write_file(source, 20_000)
    uploaded = evidence_stub(ledger).UploadEvidence(
        upload_messages(name, source, rid()), metadata=ledger.md("polres")
    )
    public_key = str(ledger.data_dir / "keys" / "ledger-signing.pub")
    verify = ("verify", "--store", "--public-key", public_key, "--deep")
    code, lines = _audit_cli(ledger, nats_server.url, *verify)
    assert code == 0, lines
    assert any(line["event"] == "audit.verify.evidence_clean" for line in lines)
    objects = ledger.server.evidence_objects
    assert objects is not None
    objects.delete(object_name(uploaded.evidence.sha256))
    code, lines = _audit_cli(ledger, nats_server.url, *verify)
    assert code == 1
    (missing,) = [line for line in lines if line["event"] == "audit.verify.evidence_missing"]
    assert (missing["incident"], missing["event_id"]) == (name, uploaded.result.event_id)


async def _last_event_message(nats_url: str, subject: str) -> bytes:
    nc = await nats.connect(nats_url)
    try:
        message = await nc.jetstream().get_last_msg("LEDGER_EVENTS", subject)
        return message.data or b""
    finally:
        await nc.close()


def test_notifications_carry_the_evidence_s_metadata_never_its_bytes(
    ledger: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    name = assigned_incident(ledger)
    source = tmp_path / "amplop.jpg"
    digest = write_file(source, 200_000)
    uploaded = evidence_stub(ledger).UploadEvidence(
        upload_messages(name, source, rid()), metadata=ledger.md("polres")
    )
    subject = "ledger.v1.events.kota_mukomuko.crowd_gathering.evidence_attached"

    def published() -> bytes:
        try:
            return asyncio.run(_last_event_message(nats_server.url, subject))
        except nats.js.errors.NotFoundError:
            return b""

    wait_until(lambda: bool(published()), what="EvidenceAttached relayed")
    notification = pb.EventNotification.FromString(published())
    event = notification.event
    assert (event.type, event.event_id) == ("EvidenceAttached", uploaded.result.event_id)
    payload = json.loads(event.payload_json)
    assert payload == {
        "sha256": digest,
        "size_bytes": 200_000,
        "media_type": "image/jpeg",
        "file_name": "photo.jpg",
        "description": "Envelopes handed out in Ipuh",
    }
    assert len(published()) < 10_000  # the 200 kB file is not in it


def test_evidence_is_corrected_by_a_new_attachment_and_a_correction(
    ledger: Client, tmp_path: Path
) -> None:
    name = assigned_incident(ledger)
    stub = evidence_stub(ledger)
    wrong, right = tmp_path / "wrong.jpg", tmp_path / "right.jpg"
    write_file(wrong, 20_000)
    write_file(right, 30_000)
    first = stub.UploadEvidence(upload_messages(name, wrong, rid()), metadata=ledger.md("polres"))
    second = stub.UploadEvidence(upload_messages(name, right, rid()), metadata=ledger.md("polres"))
    ledger.stub.RecordCorrection(
        api.RecordCorrectionRequest(
            request_id=rid(),
            name=name,
            corrected_event_id=first.result.event_id,
            field="superseded_by",
            old_value="",
            new_value=second.result.event_id,
            reason="the photo of another envelope",
        ),
        metadata=ledger.md("polres"),
    )
    listed = stub.ListEvidence(ev.ListEvidenceRequest(parent=name), metadata=ledger.md("polres"))
    assert [(e.name, e.superseded_by) for e in listed.evidence] == [
        (first.evidence.name, second.evidence.name),
        (second.evidence.name, ""),
    ]
    # The old file stays, and can still be fetched: nothing is replaced.
    chunks = stub.DownloadEvidence(
        ev.DownloadEvidenceRequest(name=first.evidence.name), metadata=ledger.md("polres")
    )
    assert sum(len(r.chunk) for r in chunks) == 20_000
    fails(
        lambda: ledger.stub.RecordCorrection(
            api.RecordCorrectionRequest(
                request_id=rid(),
                name=name,
                corrected_event_id=second.result.event_id,
                field="sha256",
                old_value=second.evidence.sha256,
                new_value="0" * 64,
                reason="swap the file",
            ),
            metadata=ledger.md("polres"),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
    )


def test_ledgerctl_audit_verify_deep_names_a_changed_file(
    ledger: Client, nats_server: NatsServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ctl = Ctl(ledger, capsys)
    name = assigned_incident(ledger)
    source = tmp_path / "photo.png"
    write_file(source, 50_000, head=b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    uploaded = evidence_stub(ledger).UploadEvidence(
        upload_messages(name, source, rid()), metadata=ledger.md("polres")
    )
    clean = ctl.ok("inspektorat", "audit", "verify", "--deep")
    assert "ledger verified" in clean and "evidence verified" in clean
    code, _out, err = ctl.run("polres", "audit", "verify", "--deep")
    assert code != 0 and "ROLE_REQUIRED" in err
    asyncio.run(change_one_byte(nats_server.url, "evidence", object_name(uploaded.evidence.sha256)))
    code, out, err = ctl.run("inspektorat", "--json", "audit", "verify", "--deep")
    assert code == 1, (code, out[-300:], err)
    verified = json.loads(out)
    assert verified["ledger"]["ok"] is True
    found = verified["evidence"]
    assert found["ok"] is False
    assert [(p["evidence"], p["problem"]) for p in found["problems"]] == [
        (uploaded.evidence.name, "changed")
    ]
    # Its download: data changed in the store (exit 7), which trying again does not cure.
    code, _out, err = ctl.run(
        "inspektorat",
        "--json",
        "evidence",
        "get",
        uploaded.evidence.name,
        "-o",
        str(tmp_path / "c"),
    )
    error = json.loads(err)["error"]
    assert (code, error["reason"], error["exit_code"]) == (7, "EVIDENCE_CHANGED", 7), err
    # The evidence store away: the chain's result is said all the same, then the error
    # (before, only "UNAVAILABLE", a diverging ledger said as "server unavailable").
    nats_server.stop()
    try:
        code, out, err = ctl.run("inspektorat", "audit", "verify", "--deep")
        assert code == 6 and "ledger verified" in out, (code, out, err)
        assert "EVIDENCE_STORE_UNAVAILABLE" in err, err
        code, out, err = ctl.run("inspektorat", "--json", "audit", "verify", "--deep")
        assert code == 6 and json.loads(out) == {
            "ledger": json.loads(out)["ledger"],
            "evidence": None,
        }, (out, err)
        assert json.loads(out)["ledger"]["ok"] is True
    finally:
        nats_server.start()


def test_an_upload_without_credentials_is_unauthenticated(ledger: Client, tmp_path: Path) -> None:
    name = assigned_incident(ledger)
    source = tmp_path / "photo.jpg"
    write_file(source, 10_000)
    fails(
        lambda: evidence_stub(ledger).UploadEvidence(upload_messages(name, source, rid())),
        grpc.StatusCode.UNAUTHENTICATED,
        "CREDENTIALS_MISSING",
    )
    assert attached_events(ledger, name) == []


def test_while_nats_is_down_the_evidence_store_logs_the_outage_once(
    ledger: Client, nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The evidence store's NATS connection, like the notifier's: one line when NATS goes,
    one when it is back; before, the client library's own line at ``error``, with its
    traceback, for every attempt to reconnect (every 2 s)."""
    objects = ledger.server.evidence_objects
    assert objects is not None
    assert objects.stat(object_name(hashlib.sha256(b"").hexdigest())) is None  # connected
    link = objects.nats_link
    assert link.connected
    with capture_logs() as logs, caplog.at_level(logging.ERROR, logger="nats"):
        nats_server.stop()
        try:
            wait_until(lambda: link.failed_attempts >= 3, what="attempts to reconnect")
        finally:
            nats_server.start()
        wait_until(lambda: link.connected, what="the evidence store reconnected")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("nats")] == []
    names = [str(line["event"]) for line in logs if "nats_" in str(line["event"])]
    assert names.count("evidence.nats_disconnected") == 1, names
    assert names.count("evidence.nats_reconnected") == 1, names
    assert "evidence.nats_unreachable" not in names, names  # no reminder within a minute


def test_an_evidence_call_of_a_ledger_started_while_nats_was_away_is_unavailable(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """A ledger started while NATS is away: nats-py's first connect tries again and again,
    and the first evidence call waited out two minutes before the caller heard anything
    (here: its deadline); now UNAVAILABLE ``EVIDENCE_STORE_UNAVAILABLE`` after a few
    attempts, and a call once NATS is back is served."""
    nats_server.stop()
    relay = RelaySettings(nats_url=nats_server.url)
    with (
        store_environment("sqlite", tmp_path) as store_env,
        running_ledger(settings_for(tmp_path, store_env, relay=relay)) as ledger,
    ):
        _evidence_after_nats_was_away(ledger, nats_server, tmp_path)


def _evidence_after_nats_was_away(ledger: Client, nats_server: NatsServer, tmp_path: Path) -> None:
    objects = ledger.server.evidence_objects
    assert objects is not None and not objects.nats_link.connected
    name = assigned_incident(ledger)
    source = tmp_path / "envelopes.jpg"
    write_file(source, 100_000)
    stub = evidence_stub(ledger)
    try:
        fails(
            lambda: stub.UploadEvidence(
                upload_messages(name, source, rid()), metadata=ledger.md("polres"), timeout=60
            ),
            grpc.StatusCode.UNAVAILABLE,
            "EVIDENCE_STORE_UNAVAILABLE",
        )
    finally:
        nats_server.start()
    assert attached_events(ledger, name) == []
    uploaded = stub.UploadEvidence(
        upload_messages(name, source, rid()), metadata=ledger.md("polres"), timeout=60
    ).evidence
    assert uploaded.size_bytes == 100_000


def _downloads(ledger: Client, name: str) -> list[ev.EvidenceDownload]:
    return list(
        evidence_stub(ledger)
        .ListEvidenceDownloads(
            ev.ListEvidenceDownloadsRequest(parent=name), metadata=ledger.md("inspektorat")
        )
        .downloads
    )


def test_a_full_or_unusable_spool_disk_is_unavailable_and_named_not_nats(
    ledger: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A download goes through a spool file in the data directory. When that disk is full
    (``/dev/full`` stands in for it) or the directory cannot take a file (read-only, or
    gone), the answer is ``UNAVAILABLE`` ``EVIDENCE_SPOOL_UNAVAILABLE`` (retried, by the
    client, on another replica), the log names the directory, and nothing is recorded.
    Before, a full disk answered ``EVIDENCE_STORE_UNAVAILABLE`` ("the evidence store (NATS)
    is not available: OSError"), sending the operator to NATS, and a read-only directory
    ``INTERNAL`` with a traceback, which the client does not retry."""
    name, source, stub, uploaded = _uploaded_envelopes(ledger, tmp_path, 300_000)
    request = ev.DownloadEvidenceRequest(name=uploaded.name)

    def download() -> list[ev.DownloadEvidenceResponse]:
        return list(stub.DownloadEvidence(request, metadata=ledger.md("polres")))

    def full_disk(**_: object) -> IO[bytes]:
        return Path("/dev/full").open("w+b")  # every write: ENOSPC

    spool = ledger.data_dir / "evidence-spool"
    with monkeypatch.context() as patched, capture_logs() as logs:
        patched.setattr("services.ledger.evidence.tempfile.NamedTemporaryFile", full_disk)
        fails(download, grpc.StatusCode.UNAVAILABLE, "EVIDENCE_SPOOL_UNAVAILABLE")
    (line,) = [x for x in logs if x["event"] == "evidence.spool_failed"]
    assert line["directory"] == str(spool)
    assert "No space left on device" in str(line["error"])

    shutil.rmtree(spool)  # a file where the directory was: no spool file can be made there
    spool.write_text("not a directory\n")
    fails(download, grpc.StatusCode.UNAVAILABLE, "EVIDENCE_SPOOL_UNAVAILABLE")
    assert _downloads(ledger, name) == []

    spool.unlink()
    spool.mkdir(mode=0o700)
    assert b"".join(r.chunk for r in download()) == source.read_bytes()
    assert len(_downloads(ledger, name)) == 1


def test_a_ledger_whose_spool_cannot_be_made_starts_and_only_downloads_fail(
    tmp_path: Path, nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The data directory read-only (as the compose file's ``read_only: true`` containers
    had it): the ledger starts, warns once, takes commands and uploads, and answers
    downloads ``EVIDENCE_SPOOL_UNAVAILABLE``. Before, it stopped at start on the OSError of
    making the spool directory, with a traceback, and was restarted in a loop: no ledger."""

    def read_only(path: Path) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr("services.ledger.evidence.make_private_dir", read_only)
    relay = RelaySettings(nats_url=nats_server.url)
    with (
        capture_logs() as logs,
        store_environment("sqlite", tmp_path) as store_env,
        running_ledger(settings_for(tmp_path, store_env, relay=relay)) as ledger,
    ):
        (warning,) = [x for x in logs if x["event"] == "evidence.spool_unavailable"]
        assert warning["directory"] == str(ledger.data_dir / "evidence-spool")
        assert "Read-only file system" in str(warning["error"])
        name = assigned_incident(ledger)
        source = tmp_path / "envelopes.jpg"
        write_file(source, 50_000)
        stub = evidence_stub(ledger)
        uploaded = stub.UploadEvidence(
            upload_messages(name, source, rid()), metadata=ledger.md("polres")
        ).evidence
        fails(
            lambda: list(
                stub.DownloadEvidence(
                    ev.DownloadEvidenceRequest(name=uploaded.name), metadata=ledger.md("polres")
                )
            ),
            grpc.StatusCode.UNAVAILABLE,
            "EVIDENCE_SPOOL_UNAVAILABLE",
        )


def test_lists_of_a_missing_incident_name_their_parent_field(ledger: Client) -> None:
    """INCIDENT_NOT_FOUND names the request's field (docs/api.md): a list's is `parent`."""
    stub = evidence_stub(ledger)
    missing = "incidents/00000000-0000-4000-8000-000000000000"
    calls = (
        lambda: stub.ListEvidence(
            ev.ListEvidenceRequest(parent=missing), metadata=ledger.md("polres")
        ),
        lambda: stub.ListEvidenceDownloads(
            ev.ListEvidenceDownloadsRequest(parent=missing), metadata=ledger.md("desk_pilkada")
        ),
    )
    for call in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        info = error_info(caught.value)  # type: ignore[arg-type]
        assert info is not None and info.reason == "INCIDENT_NOT_FOUND"
        assert dict(info.metadata) == {"incident": missing, "field": "parent"}


def _download_in_thread(
    stub: ev_grpc.EvidenceServiceStub, name: str, metadata: object, timeout: float
) -> tuple[threading.Thread, list[object]]:
    """``DownloadEvidence`` in a thread of its own; its outcome (the responses or the
    ``grpc.RpcError``) in the list once the thread ends."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(
                list(
                    stub.DownloadEvidence(
                        ev.DownloadEvidenceRequest(name=name),
                        metadata=metadata,  # type: ignore[arg-type]
                        timeout=timeout,
                    )
                )
            )
        except grpc.RpcError as error:
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def _uploaded_envelopes(
    ledger: Client, tmp_path: Path, size: int
) -> tuple[str, Path, ev_grpc.EvidenceServiceStub, ev.Evidence]:
    """An assigned incident with a file of ``size`` bytes (``envelopes.jpg``) attached by
    Polres: the incident, the file, the evidence stub and the attached evidence."""
    name = assigned_incident(ledger)
    source = tmp_path / "envelopes.jpg"
    write_file(source, size)
    stub = evidence_stub(ledger)
    uploaded = stub.UploadEvidence(
        upload_messages(name, source, rid()), metadata=ledger.md("polres")
    ).evidence
    return name, source, stub, uploaded


def _take_nats_away(
    nats_server: NatsServer,
    away: str,
    reached: threading.Event,
    release: threading.Event,
    what: str,
) -> None:
    """Once the call has ``reached`` the point to test, NATS is stopped, or frozen (its
    connections open, answering nothing: SIGSTOP); then the call is let go on."""
    try:
        wait_until(reached.is_set, what=what)
        if away == "stopped":
            nats_server.stop()
        else:
            assert nats_server.pid is not None
            os.kill(nats_server.pid, signal.SIGSTOP)
    finally:
        release.set()


def _store_unavailable_after(
    nats_server: NatsServer, away: str, thread: threading.Thread, outcome: list[object]
) -> float:
    """The seconds the call running in ``thread`` took to end, once let go, which must be
    UNAVAILABLE ``EVIDENCE_STORE_UNAVAILABLE``; a frozen NATS thawed after."""
    started = time.monotonic()
    try:
        thread.join(60)
    finally:
        if away == "frozen":
            os.kill(nats_server.pid, signal.SIGCONT)  # type: ignore[arg-type]
    took = time.monotonic() - started
    (error,) = outcome
    assert isinstance(error, grpc.RpcError), "the call was served with NATS away"
    assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), error.details())
    info = error_info(error)  # type: ignore[arg-type]
    assert info is not None and info.reason == "EVIDENCE_STORE_UNAVAILABLE", error.details()
    return took


def _nats_back(ledger: Client, nats_server: NatsServer, away: str) -> None:
    if away == "stopped":
        nats_server.start()
    wait_until(lambda: ledger.server.evidence_objects.nats_link.connected, what="reconnected")  # type: ignore[union-attr]


@pytest.mark.parametrize("away", ["stopped", "frozen"])
def test_a_download_whose_nats_goes_away_mid_read_is_unavailable_within_seconds(
    ledger: Client,
    nats_server: NatsServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    away: str,
) -> None:
    """NATS stopped (or frozen: its connections open, answering nothing) while a download
    is being read from the object store: the read made no progress and waited out two
    minutes (the client's deadline, here) before UNAVAILABLE. Now a read that gets nothing
    from NATS for READ_STALL_SECONDS ends the download with UNAVAILABLE
    ``EVIDENCE_STORE_UNAVAILABLE`` within a second or two more (the check that the chunks
    are still there does not wait out a request's 5 s on a frozen NATS): no spool file left,
    no download recorded; once NATS is back the same download is served."""
    name, source, stub, uploaded = _uploaded_envelopes(ledger, tmp_path, 8 * 1000 * 1000)

    # The first bytes read are held until NATS is gone: the rest of the file is still in
    # NATS (flow control keeps a reader that consumes nothing from being sent it all).
    reading, gone = threading.Event(), threading.Event()
    write = HashingSink.write

    def held_write(sink: HashingSink, data: bytes) -> int:
        reading.set()
        gone.wait(30)
        return write(sink, data)

    spool = ledger.data_dir / "evidence-spool"
    monkeypatch.setattr(HashingSink, "write", held_write)
    # Without the bound, the read waits for NATS until this deadline (then DEADLINE_EXCEEDED).
    with capture_logs() as logs:
        thread, outcome = _download_in_thread(stub, uploaded.name, ledger.md("polres"), 40)
        _take_nats_away(nats_server, away, reading, gone, "the download reading the object")
        took = _store_unavailable_after(nats_server, away, thread, outcome)
    monkeypatch.undo()
    assert took < READ_STALL_SECONDS + 3, took
    (stalled,) = [line for line in logs if line["event"] == "evidence.read_stalled"]
    assert stalled["seconds"] == READ_STALL_SECONDS
    assert 0 < int(stalled["read"]) < int(stalled["size"]) == 8 * 1000 * 1000
    assert list(spool.iterdir()) == []
    assert _downloads(ledger, name) == []

    _nats_back(ledger, nats_server, away)
    served = stub.DownloadEvidence(
        ev.DownloadEvidenceRequest(name=uploaded.name), metadata=ledger.md("polres"), timeout=60
    )
    assert b"".join(r.chunk for r in served) == source.read_bytes()
    assert len(_downloads(ledger, name)) == 1


def test_a_slow_download_that_progresses_is_not_cut(
    ledger: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound is on a read that gets nothing, not on a long read: a read whose spool
    disk is slow takes several times READ_STALL_SECONDS and is served whole."""
    _name, source, stub, uploaded = _uploaded_envelopes(ledger, tmp_path, 3 * 1000 * 1000)
    stall = 1.0
    monkeypatch.setattr("services.ledger.evidence_store.READ_STALL_SECONDS", stall)
    write = HashingSink.write

    def slow_write(sink: HashingSink, data: bytes) -> int:
        time.sleep(stall / 5)  # a slow disk (what is simulated, not a wait for a condition)
        return write(sink, data)

    monkeypatch.setattr(HashingSink, "write", slow_write)
    started = time.monotonic()
    served = stub.DownloadEvidence(
        ev.DownloadEvidenceRequest(name=uploaded.name), metadata=ledger.md("polres"), timeout=60
    )
    assert b"".join(r.chunk for r in served) == source.read_bytes()
    assert time.monotonic() - started > 3 * stall  # about 23 chunks of 128 KiB


@pytest.mark.parametrize("away", ["stopped", "frozen"])
def test_an_upload_whose_nats_goes_away_mid_way_is_unavailable_within_seconds(
    ledger: Client, nats_server: NatsServer, tmp_path: Path, away: str
) -> None:
    """NATS stopped (or frozen: connected, answering nothing) while an upload's chunks go
    in: UNAVAILABLE ``EVIDENCE_STORE_UNAVAILABLE`` within seconds, nothing recorded; sent
    again once NATS is back, it is taken. Before, the answer waited besides for two purges
    of what was written (5 s each, for nothing: NATS is away; the sweep removes it)."""
    name = assigned_incident(ledger)
    source = tmp_path / "envelopes.jpg"
    write_file(source, 4 * 1000 * 1000)
    stub = evidence_stub(ledger)
    request_id = rid()
    sent, stopped = threading.Event(), threading.Event()

    def held(messages: Iterator[ev.UploadEvidenceRequest]) -> Iterator[ev.UploadEvidenceRequest]:
        for n, message in enumerate(messages):
            if n == 3:  # the header and two chunks are in: NATS goes
                sent.set()
                stopped.wait(30)
            yield message

    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(
                stub.UploadEvidence(
                    held(upload_messages(name, source, request_id)),
                    metadata=ledger.md("polres"),
                    timeout=40,
                )
            )
        except grpc.RpcError as error:
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    _take_nats_away(nats_server, away, sent, stopped, "the upload's first chunks")
    took = _store_unavailable_after(nats_server, away, thread, outcome)
    # At most one request's timeout (5 s) for the chunk NATS did not take; not two more.
    assert took < 9, took
    _nats_back(ledger, nats_server, away)
    assert attached_events(ledger, name) == []
    taken = stub.UploadEvidence(
        upload_messages(name, source, request_id), metadata=ledger.md("polres"), timeout=60
    )
    assert taken.evidence.size_bytes == 4 * 1000 * 1000


async def _purge_chunks(nats_url: str, bucket: str, name: str) -> None:
    """What someone with write access to NATS could do: purge an object's chunks, leaving
    its entry (and its recorded digest) as it was."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await (await js.object_store(bucket)).get_info(name)
        await js.purge_stream(f"OBJ_{bucket}", subject=f"$O.{bucket}.C.{info.nuid}")
    finally:
        await nc.close()


def test_a_download_of_an_object_whose_chunks_are_gone_is_data_loss(
    ledger: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    """An object whose entry stays but whose chunks were purged: the read gets nothing,
    with NATS there. ``DATA_LOSS`` ``EVIDENCE_MISSING`` (nothing recorded), not the
    ``UNAVAILABLE`` of NATS away, which a retry would not cure."""
    name, _source, stub, uploaded = _uploaded_envelopes(ledger, tmp_path, 300_000)
    asyncio.run(_purge_chunks(nats_server.url, "evidence", object_name(uploaded.sha256)))
    fails(
        lambda: list(
            stub.DownloadEvidence(
                ev.DownloadEvidenceRequest(name=uploaded.name),
                metadata=ledger.md("polres"),
                timeout=40,
            )
        ),
        grpc.StatusCode.DATA_LOSS,
        "EVIDENCE_MISSING",
    )
    assert _downloads(ledger, name) == []
    # The auditor's deep verification says the same: missing, not changed into nothing.
    objects = ledger.server.evidence_objects
    assert objects is not None
    report = verify_evidence(ledger.server.ledger, objects.read_into)
    assert [(p.object, p.problem) for p in report.problems] == [
        (object_name(uploaded.sha256), "missing")
    ]


def test_the_sweep_spares_the_chunks_of_a_stored_file_whose_pending_entry_stayed(
    ledger: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload whose file was stored and recorded, but whose pending entry could not be
    purged at the end (NATS gone at that moment): the entry ``upload-<id>`` stays, pointing
    at the same chunks as the stored file. The sweep deleted that entry once past the grace
    period, and with it those chunks: the recorded file was gone. It now deletes the entry
    only, and the file is still served."""
    name = assigned_incident(ledger)
    source = tmp_path / "envelopes.jpg"
    write_file(source, 300_000)
    objects = ledger.server.evidence_objects
    assert objects is not None
    purge = EvidenceObjects._purge_quietly

    async def no_pending_purge(
        self: EvidenceObjects,
        js: object,
        stream: str,
        subject: str,
        seconds: float | None = None,
    ) -> None:
        entry = base64.urlsafe_b64decode(subject.rpartition(".")[2]) if ".M." in subject else b""
        if entry.startswith(PENDING_PREFIX.encode()):
            return  # the pending entry's purge lost with NATS
        await purge(self, js, stream, subject, seconds)  # type: ignore[arg-type]

    monkeypatch.setattr(EvidenceObjects, "_purge_quietly", no_pending_purge)
    uploaded = (
        evidence_stub(ledger)
        .UploadEvidence(upload_messages(name, source, rid()), metadata=ledger.md("polres"))
        .evidence
    )
    monkeypatch.undo()
    (left,) = [item for item in objects.list_objects() if item.pending]

    later = datetime.now(UTC) + timedelta(hours=2)
    assert sweep_orphans(ledger.server.ledger, objects, timedelta(hours=1), later) == [left.name]
    assert [item for item in objects.list_objects() if item.pending] == []
    served = evidence_stub(ledger).DownloadEvidence(
        ev.DownloadEvidenceRequest(name=uploaded.name), metadata=ledger.md("polres"), timeout=30
    )
    assert b"".join(r.chunk for r in served) == source.read_bytes()

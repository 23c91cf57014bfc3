"""A ledger process stopped while evidence calls are under way: a clean stop (SIGTERM) ends
them and exits 0 with no traceback; what it leaves in the object store is swept."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import nats
import pytest
from nats.js.errors import NotFoundError

from incidentledger.v1 import evidence_service_pb2 as ev
from incidentledger.v1 import evidence_service_pb2_grpc as ev_grpc
from incidentledger_client import LedgerClient
from incidentledger_client.errors import LedgerError
from services.common.config import EvidenceSettings, NatsClientSettings
from services.common.errors import Unavailable
from services.common.natsserver import NatsServer, free_port
from services.ledger.domain.evidence import object_name
from services.ledger.evidence_store import PENDING_PREFIX, EvidenceObjects, StoredObject
from tests.fanout_support import wait_until
from tests.integration.test_evidence import JPEG_HEAD, UPLOAD_CHUNK, upload_messages, write_file
from tests.support import dev_tokens, rid, service_process, store_environment

#: Deep verification reads every object one after another: this many make it last well past
#: the stop (each a small file: the test uploads a few MB in all).
OBJECTS = 150


async def _consumers(nats_url: str, stream: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        return int((await nc.jetstream().stream_info(stream)).state.consumer_count)
    finally:
        await nc.close()


@pytest.mark.nats
def test_closing_the_store_ends_the_call_under_way_and_refuses_later_ones(
    nats_server: NatsServer,
) -> None:
    """close() with an upload under way (its sender silent): the upload ends UNAVAILABLE,
    what it wrote purged; a call after close() is UNAVAILABLE too. Before, the upload's
    thread waited for ever on the stopped loop and a later call failed with RuntimeError
    'Event loop is closed'."""
    settings = (NatsClientSettings(), EvidenceSettings())
    objects = EvidenceObjects(nats_server.url, *settings)
    release = threading.Event()
    sent = threading.Event()
    outcome: list[StoredObject | Exception] = []

    def pieces() -> Iterator[bytes]:
        yield JPEG_HEAD + bytes(100_000)
        sent.set()
        release.wait(60)

    def upload() -> None:
        try:
            outcome.append(objects.put_chunks(pieces()))
        except Exception as error:  # what it is, is the test's
            outcome.append(error)

    uploading = threading.Thread(target=upload, daemon=True)
    closed = False
    try:
        uploading.start()
        assert sent.wait(20)
        wait_until(
            lambda: (
                [o.name[: len(PENDING_PREFIX)] for o in objects.list_objects()] == [PENDING_PREFIX]
            ),
            what="the upload's pending entry",
        )
        objects.close()
        closed = True
        uploading.join(20)
        assert not uploading.is_alive(), "the upload under way waits on the stopped loop"
        assert len(outcome) == 1 and isinstance(outcome[0], Unavailable), outcome
        with pytest.raises(Unavailable):
            objects.list_objects()
    finally:
        release.set()
        if not closed:
            objects.close()
    # What the cut upload wrote went before the connection closed: nothing left to sweep.
    again = EvidenceObjects(nats_server.url, *settings)
    try:
        assert again.list_objects() == []
        assert asyncio.run(_messages(nats_server.url, "OBJ_evidence")) == 0
    finally:
        again.close()


async def _messages(nats_url: str, stream: str) -> int:
    """The stream's messages; 0 while the ledger has not made the bucket yet (the upload's
    first step: a poll that came before it failed the test on a busy machine)."""
    nc = await nats.connect(nats_url)
    try:
        return int((await nc.jetstream().stream_info(stream)).state.messages)
    except NotFoundError:
        return 0
    finally:
        await nc.close()


@pytest.mark.nats
def test_a_stop_during_deep_verification_exits_cleanly(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """SIGTERM while VerifyEvidence reads the objects: the grace period ends the call, but its
    handler went on reading after the evidence store's loop had stopped. The read under way
    then waited for ever (the process forced out at its deadline, exit 1) and one begun after
    the loop was closed failed with 'Event loop is closed'."""
    with ExitStack() as stack:
        store_env = stack.enter_context(store_environment("sqlite", tmp_path))
        env = {
            **store_env,
            "LEDGER_DATA_DIR": str(tmp_path / "data"),
            "NATS_URL": nats_server.url,
            # Calls in flight are cut at once: the verification's handler outlives its call.
            "LEDGER_GRACE_SECONDS": "0.1",
        }
        ledger = stack.enter_context(service_process("services.ledger", env))
        tokens = dev_tokens(tmp_path / "data")
        address = f"127.0.0.1:{ledger.port}"
        client = stack.enter_context(LedgerClient(address, tokens["kesbangpol"]))
        auditor = stack.enter_context(LedgerClient(address, tokens["desk_pilkada"]))
        incident = client.report("Envelopes handed out", "crowd_gathering", "kota_mukomuko")
        source = tmp_path / "photo.jpg"
        names = []
        for _ in range(OBJECTS):
            write_file(source, 20_000)
            names.append(client.attach_evidence(incident.incident, source)[1].name)
        client.download_evidence(names[0], tmp_path / "copy.jpg")

        answered: list[object] = []

        def verify() -> None:
            # Its outcome is the stop's: a report, or the call cut short (a LedgerError).
            try:
                answered.append(auditor.verify_evidence(timeout=60))
            except LedgerError as error:
                answered.append(error)

        verifying = threading.Thread(target=verify, daemon=True)
        verifying.start()
        # Each object is read through a consumer of the bucket's stream.
        wait_until(
            lambda: asyncio.run(_consumers(nats_server.url, "OBJ_evidence")) > 0,
            what="the verification reading the objects",
        )
        ledger.proc.send_signal(signal.SIGTERM)
        try:
            code = ledger.proc.wait(30)
        except subprocess.TimeoutExpired:
            code = None
        verifying.join(30)
        assert len(answered) == 1
        log = ledger.log_path.read_text()
        assert "Traceback" not in log, log[-4000:]
        assert "Event loop is closed" not in log
        assert "ledger.stop_forced" not in log, log[-4000:]
        assert code == 0


@pytest.mark.nats
def test_a_ledger_killed_mid_upload_while_nats_is_away_leaves_only_what_the_sweep_takes(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """NATS gone in the middle of an upload, then the ledger killed (SIGKILL): what the
    upload wrote before NATS went (its pending entry and chunks) stays in the bucket, no
    object of the file and no event; the ledger started again sweeps it once past the grace
    period, with no operator command."""
    address = f"127.0.0.1:{free_port()}"  # the same after the restart: one channel for both
    cut = tmp_path / "cut.jpg"
    cut_digest = write_file(cut, 8 * UPLOAD_CHUNK)
    with ExitStack() as stack:
        store_env = stack.enter_context(store_environment("sqlite", tmp_path))
        env = {
            **store_env,
            "LEDGER_DATA_DIR": str(tmp_path / "data"),
            "LEDGER_LISTEN": address,
            "NATS_URL": nats_server.url,
            "LEDGER_EVIDENCE_SWEEP_SECONDS": "0.2",
            "LEDGER_EVIDENCE_SWEEP_GRACE_SECONDS": "3600",
        }
        first = stack.enter_context(service_process("services.ledger", env))
        channel = stack.enter_context(grpc.insecure_channel(address))
        evidence = ev_grpc.EvidenceServiceStub(channel)
        tokens = dev_tokens(tmp_path / "data")
        metadata = (("authorization", f"Bearer {tokens['kesbangpol']}"),)
        client = stack.enter_context(LedgerClient(address, tokens["kesbangpol"]))
        name = client.report("Envelopes handed out", "crowd_gathering", "kota_mukomuko").incident

        half_sent, never = threading.Event(), threading.Event()
        stack.callback(never.set)

        def cut_short() -> Iterator[ev.UploadEvidenceRequest]:
            for n, message in enumerate(upload_messages(name, cut, rid())):
                if n == 4:  # the header and three chunks sent
                    half_sent.set()
                    never.wait(60)
                    return
                yield message

        call = evidence.UploadEvidence.future(cut_short(), metadata=metadata)
        assert half_sent.wait(20)
        # The pending entry and the three chunks, each 4 of the object store's (128 KiB).
        wait_until(
            lambda: asyncio.run(_messages(nats_server.url, "OBJ_evidence")) >= 1 + 12,
            what="the upload's pending entry and chunks in the bucket",
        )
        nats_server.stop()
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        never.set()
        with pytest.raises(grpc.RpcError):
            call.result(timeout=20)
        nats_server.start()

        bucket = EvidenceObjects(nats_server.url, NatsClientSettings(), EvidenceSettings())
        stack.callback(bucket.close)
        left = bucket.list_objects()
        assert [o.pending for o in left] == [True], left
        assert bucket.stat(object_name(cut_digest)) is None

        env["LEDGER_EVIDENCE_SWEEP_GRACE_SECONDS"] = "1"
        second = stack.enter_context(service_process("services.ledger", env))
        wait_until(
            lambda: (
                bucket.list_objects() == []
                and asyncio.run(_messages(nats_server.url, "OBJ_evidence")) == 0
                # The round's lines come once it is over, a moment after its deletes.
                and any(
                    e.get("event") == "evidence.sweep_done" and e.get("swept")
                    for e in second.log_lines()
                )
            ),
            timeout=30,
            what="the pending entry and its chunks swept",
        )
        swept = [e for e in second.log_lines() if e.get("event") == "evidence.swept"]
        assert [(e["object"], e["kind"]) for e in swept] == [(left[0].name, "pending")]
        assert client.list_evidence(name) == []


@pytest.mark.nats
def test_an_upload_a_stop_cuts_short_is_sent_again_by_the_client_and_recorded_once(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """SIGTERM with the Python client's upload under way, its sender pausing past the grace
    period: the ledger answers UNAVAILABLE (SHUTTING_DOWN, "send it again"),
    stores and records nothing, and exits 0; the client sends the file again, to the ledger
    started again at the same address, which records it once. Before, the ledger took the
    stream's end for the file's and logged the upload INVALID_ARGUMENT (header.size_bytes)
    or UPLOAD_CANCELLED, its caller getting gRPC's bare cancellation."""
    address = f"127.0.0.1:{free_port()}"  # the same after the restart: the client's target
    source = tmp_path / "recording.jpg"
    digest = write_file(source, 8 * UPLOAD_CHUNK)
    with ExitStack() as stack:
        store_env = stack.enter_context(store_environment("sqlite", tmp_path))
        env = {
            **store_env,
            "LEDGER_DATA_DIR": str(tmp_path / "data"),
            "LEDGER_LISTEN": address,
            "NATS_URL": nats_server.url,
            "LEDGER_GRACE_SECONDS": "0.2",
        }
        first = stack.enter_context(service_process("services.ledger", env))
        tokens = dev_tokens(tmp_path / "data")
        client = stack.enter_context(LedgerClient(address, tokens["kesbangpol"]))
        name = client.report("Envelopes handed out", "crowd_gathering", "kota_mukomuko").incident

        paused, go_on = threading.Event(), threading.Event()
        stack.callback(go_on.set)

        def progress(sent: int, size: int) -> None:
            if sent * 2 >= size and not paused.is_set():  # the first attempt only
                paused.set()
                go_on.wait(60)

        outcome: list[object] = []

        def attach() -> None:
            try:
                outcome.append(client.attach_evidence(name, source, progress=progress))
            except LedgerError as error:
                outcome.append(error)

        attaching = threading.Thread(target=attach, daemon=True)
        attaching.start()
        assert paused.wait(20)
        wait_until(
            lambda: asyncio.run(_messages(nats_server.url, "OBJ_evidence")) >= 1 + 8,
            what="the upload's pending entry and chunks in the bucket",
        )
        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(30) == 0
        answered = [
            (e.get("status"), e.get("reason"), e.get("error"))
            for e in first.log_lines()
            if e.get("event") == "request" and "UploadEvidence" in str(e.get("method"))
        ]
        assert len(answered) == 1, answered
        status, reason, error = answered[0]
        assert (status, reason) == ("UNAVAILABLE", "SHUTTING_DOWN"), answered
        assert "send it again" in str(error)
        # Nothing of the cut upload stays: no object, no pending entry, no chunk.
        assert asyncio.run(_messages(nats_server.url, "OBJ_evidence")) == 0

        second = stack.enter_context(service_process("services.ledger", env))
        go_on.set()
        attaching.join(60)
        assert len(outcome) == 1 and isinstance(outcome[0], tuple), outcome
        _, evidence = outcome[0]
        assert evidence.sha256 == digest
        assert [e.sha256 for e in client.list_evidence(name)] == [digest]
        bucket = EvidenceObjects(nats_server.url, NatsClientSettings(), EvidenceSettings())
        stack.callback(bucket.close)
        assert [o.name for o in bucket.list_objects()] == [object_name(digest)]
        assert "Traceback" not in second.log_path.read_text()

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

import nats
import pytest

from incidentledger_client import LedgerClient
from incidentledger_client.errors import LedgerError
from services.common.config import EvidenceSettings, NatsClientSettings
from services.common.errors import Unavailable
from services.common.natsserver import NatsServer
from services.ledger.evidence_store import PENDING_PREFIX, EvidenceObjects, StoredObject
from tests.fanout_support import wait_until
from tests.integration.test_evidence import JPEG_HEAD, write_file
from tests.support import dev_tokens, service_process, store_environment

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
    nc = await nats.connect(nats_url)
    try:
        return int((await nc.jetstream().stream_info(stream)).state.messages)
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

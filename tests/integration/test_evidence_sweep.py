"""The ledger sweeps the evidence bucket itself: a ledger process SIGKILLed half way through
an upload leaves its pending entry and chunks; the ledger started again (with a short grace
period) deletes them without any operator command, and never a finished upload's object."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from incidentledger.v1 import evidence_service_pb2 as ev
from incidentledger.v1 import evidence_service_pb2_grpc as ev_grpc
from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import ledger_service_pb2_grpc as api_grpc
from services.common.config import EvidenceSettings, NatsClientSettings, RelaySettings
from services.common.natsserver import NatsServer
from services.ledger.audit.evidence_check import OrphanSweep
from services.ledger.domain.evidence import object_name
from services.ledger.evidence_store import EvidenceObjects, HashingSink
from tests.fanout_support import wait_until
from tests.integration.test_evidence import (
    UPLOAD_CHUNK,
    _stream_messages,
    upload_messages,
    write_file,
)
from tests.support import (
    Client,
    ServiceProcess,
    dev_tokens,
    rid,
    running_ledger,
    service_process,
    settings_for,
    store_environment,
)

Metadata = tuple[tuple[str, str], ...]
#: The grace period of the tests of two replicas: uploads refresh their pending entry every
#: half second.
GRACE_SECONDS = 2.0


def _md(tokens: dict[str, str], agency: str) -> Metadata:
    return (("authorization", f"Bearer {tokens[agency]}"),)


def _assigned_incident(stub: api_grpc.LedgerServiceStub, tokens: dict[str, str]) -> str:
    """An incident reported by kesbangpol, verified, led by polres."""
    name = stub.ReportIncident(
        api.ReportIncidentRequest(
            request_id=rid(),
            title="Envelopes handed out near the market",
            category="crowd_gathering",
            location=pb.Location(kecamatan="kota_mukomuko"),
        ),
        metadata=_md(tokens, "kesbangpol"),
    ).result.incident
    coordinator = _md(tokens, "desk_pilkada")
    stub.VerifyIncident(
        api.VerifyIncidentRequest(request_id=rid(), name=name), metadata=coordinator
    )
    stub.AssignLeadAgency(
        api.AssignLeadAgencyRequest(request_id=rid(), name=name, agency="polres"),
        metadata=coordinator,
    )
    return name


def _assigned_ledger_incident(ledger: Client) -> str:
    return _assigned_incident(ledger.stub, ledger.tokens)


def _events(process: ServiceProcess, event: str) -> list[dict[str, object]]:
    return [line for line in process.log_lines() if line.get("event") == event]


def _metric(process: ServiceProcess, sample: str) -> float:
    """A sample's value on the process's /metrics (0 when absent)."""
    port = next(int(str(line["metrics_port"])) for line in _events(process, "ledger.started"))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.nats
def test_a_ledger_killed_mid_upload_sweeps_the_leftover_itself_after_a_restart(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    kept, cut = tmp_path / "kept.jpg", tmp_path / "cut.jpg"
    write_file(kept, 300_000)
    cut_digest = write_file(cut, 8 * UPLOAD_CHUNK)
    with ExitStack() as stack:
        store_env = stack.enter_context(store_environment("sqlite", tmp_path))
        env = {
            **store_env,
            "LEDGER_DATA_DIR": str(tmp_path / "data"),
            "LEDGER_METRICS_LISTEN": "127.0.0.1:0",
            "NATS_URL": nats_server.url,
            "LEDGER_EVIDENCE_SWEEP_SECONDS": "0.2",
            # While the first ledger runs nothing is old enough to go: what it leaves after
            # the kill is the upload's, not a sweep's doing.
            "LEDGER_EVIDENCE_SWEEP_GRACE_SECONDS": "3600",
        }
        bucket = EvidenceObjects(nats_server.url, NatsClientSettings(), EvidenceSettings())
        stack.callback(bucket.close)
        first = stack.enter_context(service_process("services.ledger", env))
        # Its own port at the first start, the same after the restart: one channel for both
        # (a port picked free beforehand could be taken before the ledger bound it).
        env["LEDGER_LISTEN"] = address = f"127.0.0.1:{first.port}"
        channel = stack.enter_context(grpc.insecure_channel(address))
        stub = api_grpc.LedgerServiceStub(channel)
        evidence = ev_grpc.EvidenceServiceStub(channel)
        tokens = dev_tokens(tmp_path / "data")
        name = _assigned_incident(stub, tokens)

        finished = evidence.UploadEvidence(
            upload_messages(name, kept, rid()), metadata=_md(tokens, "polres")
        ).evidence
        after_finished = asyncio.run(_stream_messages(nats_server.url, "evidence"))

        half_sent = threading.Event()
        never = threading.Event()
        stack.callback(never.set)

        def cut_short() -> Iterator[ev.UploadEvidenceRequest]:
            for n, message in enumerate(upload_messages(name, cut, rid())):
                if n == 4:  # the header and three chunks sent
                    half_sent.set()
                    never.wait(60)
                    return
                yield message

        call = evidence.UploadEvidence.future(cut_short(), metadata=_md(tokens, "polres"))
        assert half_sent.wait(20)
        # Each chunk of the upload is 4 of the object store's (128 KiB): wait for all 12.
        wait_until(
            lambda: (
                asyncio.run(_stream_messages(nats_server.url, "evidence"))
                >= after_finished + 1 + 12
            ),
            what="the upload's pending entry and its chunks in the bucket",
        )
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        never.set()
        with pytest.raises(grpc.RpcError):
            call.result(timeout=20)

        pending = [o for o in bucket.list_objects() if o.pending]
        assert len(pending) == 1, "the kill left the upload's pending entry"
        assert bucket.stat(object_name(cut_digest)) is None
        assert _events(first, "evidence.swept") == []

        # Started again with a short grace period: no operator command from here on.
        env["LEDGER_EVIDENCE_SWEEP_GRACE_SECONDS"] = "1"
        second = stack.enter_context(service_process("services.ledger", env))
        wait_until(
            lambda: (
                not any(o.pending for o in bucket.list_objects())
                and asyncio.run(_stream_messages(nats_server.url, "evidence")) == after_finished
                # The round's lines come once it is over, a moment after its deletes.
                and any(e.get("swept") for e in _events(second, "evidence.sweep_done"))
            ),
            timeout=30,
            what="the pending entry and its chunks swept",
        )
        swept = _events(second, "evidence.swept")
        assert [(e["object"], e["kind"]) for e in swept] == [(pending[0].name, "pending")]
        assert _metric(second, 'ledger_evidence_swept_total{kind="pending"}') == 1.0
        assert _metric(second, 'ledger_evidence_swept_total{kind="object"}') == 0.0

        # The finished upload's object is older than the pending entry, so the sweep that
        # deleted that entry weighed it too (past the grace period, named by its event);
        # one more sweep, and it is still there with its bytes.
        runs = len(_events(second, "evidence.sweep_done"))
        wait_until(
            lambda: len(_events(second, "evidence.sweep_done")) > runs,
            what="one more sweep",
        )
        sink = HashingSink()
        stored = bucket.read_into(object_name(finished.sha256), sink)
        assert stored is not None
        assert (sink.sha256, sink.size) == (finished.sha256, finished.size_bytes)
        assert sink.sha256 == hashlib.sha256(kept.read_bytes()).hexdigest()


@pytest.fixture
def short_grace_ledger(tmp_path: Path, nats_server: NatsServer) -> Iterator[Client]:
    """A ledger whose uploads refresh their pending entry every half second (a quarter of
    a 2 s grace period)."""
    relay = RelaySettings(nats_url=nats_server.url)
    evidence = EvidenceSettings(sweep_grace_seconds=GRACE_SECONDS)
    with (
        store_environment("sqlite", tmp_path) as store_env,
        running_ledger(settings_for(tmp_path, store_env, relay=relay, evidence=evidence)) as c,
    ):
        yield c


@pytest.fixture
def other_replica(short_grace_ledger: Client, nats_server: NatsServer) -> Iterator[OrphanSweep]:
    """The sweep of another ledger replica on the same bucket (a connection of its own)."""
    objects = EvidenceObjects(nats_server.url, NatsClientSettings(), EvidenceSettings())
    try:
        yield OrphanSweep(
            short_grace_ledger.server.ledger, objects, timedelta(seconds=GRACE_SECONDS)
        )
    finally:
        objects.close()


def _attached_count(ledger: Client, name: str) -> int:
    events = ledger.stub.ListIncidentEvents(
        api.ListIncidentEventsRequest(parent=name, page_size=1000),
        metadata=ledger.md("inspektorat"),
    ).events
    return sum(1 for e in events if e.type == "EvidenceAttached")


@pytest.mark.nats
def test_another_replica_s_sweep_never_takes_a_slow_upload_under_way(
    short_grace_ledger: Client, other_replica: OrphanSweep, tmp_path: Path
) -> None:
    """An upload lasting three grace periods, swept all along by another replica: its
    pending entry stays young (refreshed), so it completes, byte for byte."""
    ledger = short_grace_ledger
    name = _assigned_ledger_incident(ledger)
    source = tmp_path / "slow.jpg"
    digest = write_file(source, 12 * UPLOAD_CHUNK)
    pause = threading.Event()  # never set: the pauses are the slow sender's, on purpose

    def slowly() -> Iterator[ev.UploadEvidenceRequest]:
        for message in upload_messages(name, source, rid()):
            yield message
            pause.wait(3 * GRACE_SECONDS / 12)

    call = ev_grpc.EvidenceServiceStub(ledger.channel).UploadEvidence.future(
        slowly(), metadata=ledger.md("polres")
    )
    swept: list[str] = []
    while not call.done():
        swept.extend(s.name for s in other_replica.run(datetime.now(UTC)))
        pause.wait(0.1)  # sweeping all along, without taking a core from the upload
    assert swept == []
    assert call.result().evidence.sha256 == digest
    assert _attached_count(ledger, name) == 1


@pytest.mark.nats
def test_an_upload_whose_pending_entry_a_sweep_took_fails_and_leaves_nothing(
    short_grace_ledger: Client, other_replica: OrphanSweep, nats_server: NatsServer, tmp_path: Path
) -> None:
    """A sweep that does take an upload's pending entry (a sender silent for longer than
    the grace period) wins cleanly: the upload is UNAVAILABLE, records nothing, and leaves
    no object missing its chunks."""
    ledger = short_grace_ledger
    name = _assigned_ledger_incident(ledger)
    source = tmp_path / "silent.jpg"
    digest = write_file(source, 4 * UPLOAD_CHUNK)
    half_sent, go_on = threading.Event(), threading.Event()

    def with_a_silence() -> Iterator[ev.UploadEvidenceRequest]:
        for n, message in enumerate(upload_messages(name, source, rid())):
            if n == 2:
                half_sent.set()
                go_on.wait(30)
            yield message

    call = ev_grpc.EvidenceServiceStub(ledger.channel).UploadEvidence.future(
        with_a_silence(), metadata=ledger.md("polres")
    )
    assert half_sent.wait(10)
    objects = ledger.server.evidence_objects
    assert objects is not None
    wait_until(lambda: any(o.pending for o in objects.list_objects()), what="the pending entry")
    later = datetime.now(UTC) + timedelta(seconds=GRACE_SECONDS + 1)
    assert [s.pending for s in other_replica.run(later)] == [True]
    go_on.set()
    with pytest.raises(grpc.RpcError) as caught:
        call.result(timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert objects.stat(object_name(digest)) is None
    assert objects.list_objects() == []
    assert asyncio.run(_stream_messages(nats_server.url, "evidence")) == 0
    assert _attached_count(ledger, name) == 0

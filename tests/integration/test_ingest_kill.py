"""The system tier: a ledger process SIGKILLed twice during a field device's long ingest,
started again on the same store and port, while the Python client keeps re-sending each
chunk (its retries, the same ids): exactly N incidents, each report's Reported event on
the NATS stream exactly once, and the whole backlog sent once more records nothing."""

from __future__ import annotations

import signal
import threading
import uuid
from collections import Counter
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from incidentledger_client import (
    DeviceReport,
    IngestOutcome,
    IngestResult,
    LedgerClient,
    Location,
    RetryPolicy,
)
from services.common.natsserver import NatsServer
from tests.fanout_support import ALLOW_LOOPBACK_ENV, wait_until
from tests.integration.test_fanout import stream_messages
from tests.support import dev_tokens, service_process, store_environment

REPORTS = 6000
CHUNK = 100  # 60 calls: room to kill the ledger twice while they go
KILLS_AFTER = (12, 36)  # chunks answered before each SIGKILL


def backlog(device: str) -> list[DeviceReport]:
    saved = datetime.now(UTC) - timedelta(hours=26)
    return [
        DeviceReport(
            report_id=str(uuid.uuid4()),
            device_id=device,
            record_time=saved + timedelta(seconds=n),
            title=f"Laporan lapangan {n}",
            category="logistics_failure",
            location=Location("malin_deman", desa="Lubuk Bento", tps="TPS 05"),
        )
        for n in range(REPORTS)
    ]


@pytest.mark.system
@pytest.mark.nats
@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_ledger_killed_during_a_long_ingest_records_every_report_once(
    tmp_path: Path, nats_server: NatsServer, store: str
) -> None:
    reports = backlog("hp-panwascam-malin-deman-03")
    answered: list[IngestResult] = []
    failure: list[BaseException] = []
    with ExitStack() as stack:
        store_env = stack.enter_context(store_environment(store, tmp_path))
        env = {
            **store_env,
            "LEDGER_DATA_DIR": str(tmp_path / "data"),
            "NATS_URL": nats_server.url,
            **ALLOW_LOOPBACK_ENV,
        }
        ledger = stack.enter_context(service_process("services.ledger", env))
        # Its own port at the first start, the same after each restart: the client
        # reconnects (a port picked free beforehand could be taken before the ledger bound it).
        address = f"127.0.0.1:{ledger.port}"
        env["LEDGER_LISTEN"] = address
        token = dev_tokens(tmp_path / "data")["bawaslu"]
        # Longer than a restart of the ledger under load; each attempt's deadline short
        # enough that a call lost with the process is retried soon.
        retry = RetryPolicy(budget=90.0, max_backoff=0.5)
        client = stack.enter_context(LedgerClient(address, token, timeout=15.0, retry=retry))

        def send() -> None:
            try:
                client.ingest_reports(reports, chunk_size=CHUNK, on_chunk=answered.extend)
            except BaseException as error:  # handed to the test's thread, which raises it
                failure.append(error)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        for after in KILLS_AFTER:
            wait_until(
                lambda after=after: len(answered) >= after * CHUNK or bool(failure),  # type: ignore[misc]
                timeout=120,
                what=f"{after} chunks answered",
            )
            assert not failure, failure
            assert len(answered) < REPORTS, "the ingest was over before the kill"
            ledger.proc.send_signal(signal.SIGKILL)
            ledger.proc.wait(10)
            ledger = stack.enter_context(service_process("services.ledger", env))
        sender.join(timeout=240)
        assert not sender.is_alive(), "the backlog was not handed over in time"
        assert not failure, failure

        assert [r.report_id for r in answered] == [r.report_id for r in reports], "in order"
        outcomes = Counter(r.outcome for r in answered)
        assert set(outcomes) <= {IngestOutcome.CREATED, IngestOutcome.DUPLICATE}, outcomes
        results = [r.result for r in answered if r.result is not None]
        assert len({r.incident for r in results}) == REPORTS

        # Sent once more: every report answered DUPLICATE with its original result.
        again = client.ingest_reports(reports)
        assert {r.outcome for r in again} == {IngestOutcome.DUPLICATE}
        assert [r.result for r in again] == results

        listed = {
            i.name
            for i in client.list_incidents(
                'kecamatan = "malin_deman"', min_position=max(r.position for r in results)
            )
        }
        assert listed == {r.incident for r in results}, "exactly the N incidents"

        positions = {r.position for r in results}
        wait_until(
            lambda: positions <= {p for _, p in stream_messages(nats_server.url)},
            timeout=120,
            what="every report on the stream",
        )
        on_stream = Counter(p for _, p in stream_messages(nats_server.url))
    assert [p for p, n in on_stream.items() if n > 1] == [], "a message on the stream twice"
    assert positions <= set(on_stream), "each report on the stream"
    # Nothing else on the stream: the reports' requests records are not incident events.
    assert len(on_stream) == REPORTS

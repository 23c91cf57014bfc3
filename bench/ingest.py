"""Part 10, field intake: field devices hand over their backlogs (``IngestReports``, 500
reports per call) to ``python -m services.ledger`` (relay off), beside the ceilings
measured in the same run.

- The store's own batched save, in this process: a fresh store, the library's
  ``events.put`` of 500 prepared ``Reported`` events per transaction (the mapper's
  encoding included, no ledger), events/s: what a batch of reports could reach at best.
- The single-command rate: ``ReportIncident`` over gRPC from the bench's client threads
  in a closed loop, one report per call, on the same ledger process.
- Ingest: several devices at once (one client thread each), each call 500 new reports,
  in a closed loop; reports/s and the latency of a call.
- Single commands during ingest: ``ReportIncident`` paced at a low rate, alone and then
  while the devices ingest; their p99 with and without.

Every report of every call is new (ids made before the run): a call of duplicates would
be cheaper and flatter the figure.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from bench import profile
from bench.harness import Channels, Result, Worker, closed_loop, open_loop
from bench.scenarios import (
    CATEGORY,
    KECAMATAN,
    REPORTER,
    TITLE,
    SigningKey,
    actors,
    envelope,
    ledger_process,
    read_tokens,
    store_name,
)
from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import ledger_service_pb2_grpc as api_grpc
from services.common.reference import ReferenceData
from services.ledger.application import Ledger
from services.ledger.domain.incident import Incident

PER_CALL = 500


@dataclass(frozen=True)
class IngestPlan:
    devices: int  # client threads, one device each
    calls: int  # ingest calls in the saturation run (all devices together)
    single_clients: int  # client threads of the single-command rate
    single_seconds: float
    paced_rate: float  # single commands per second, alone and during ingest
    paced_seconds: float
    ceiling_batches: int  # transactions of 500 events for the store's ceiling


@dataclass
class IngestRun:
    store: str
    ceiling: float  # events/s, the store's batched save
    single: Result  # ReportIncident, closed loop: the single-command rate
    ingest: Result  # IngestReports calls (PER_CALL reports each), closed loop
    alone: Result  # ReportIncident paced, nothing else running
    during: Result  # ReportIncident paced while devices ingest
    during_ingest: Result  # the ingest calls running meanwhile
    refused: int  # reports of the ingest not CREATED (should be 0)

    @property
    def reports_rate(self) -> float:
        return self.ingest.calls * PER_CALL / self.ingest.elapsed if self.ingest.elapsed else 0.0


def batched_save_ceiling(
    store_env: dict[str, str], reference: ReferenceData, batches: int
) -> float:
    """events/s of the library's own save (``events.put``, through the ledger's mapper and
    recorder: on PostgreSQL ``ArrayInsertRecorder``), 500 new incidents' Reported events per
    transaction, in this process (the events are made before the clock starts)."""
    ledger = Ledger(reference, env=store_env)
    who = actors(reference)[REPORTER]
    try:
        prepared = []
        for _ in range(batches + 1):
            batch: list[Any] = []
            for _ in range(PER_CALL):
                incident = Incident.report(
                    envelope(who),
                    title=TITLE,
                    description="",
                    category=CATEGORY,
                    severity=reference.default_severity,
                    location={"kecamatan": KECAMATAN, "desa": "", "tps": ""},
                    incident_id=uuid.uuid4(),
                )
                batch.extend(incident.collect_events())
            prepared.append(batch)
        ledger.events.put(prepared[0])  # warm-up: tables, statements, connections
        began = time.perf_counter()
        for batch in prepared[1:]:
            ledger.events.put(batch)
        elapsed = time.perf_counter() - began
    finally:
        ledger.close()
    return batches * PER_CALL / elapsed


def device_requests(device: str, calls: int) -> list[api.IngestReportsRequest]:
    """``calls`` requests of PER_CALL new reports each, as a device that was offline a day
    would send them."""
    saved = datetime.now(UTC) - timedelta(hours=20)
    stamp = Timestamp()
    stamp.FromDatetime(saved)
    requests = []
    for _ in range(calls):
        request = api.IngestReportsRequest()
        for _ in range(PER_CALL):
            request.reports.add(
                device_report_id=str(uuid.uuid4()),
                device_id=device,
                device_record_time=stamp,
                title=TITLE,
                category=CATEGORY,
                location=pb.Location(kecamatan=KECAMATAN),
            )
        requests.append(request)
    return requests


class Devices:
    """One worker per device, each sending its own prepared calls until they run out."""

    def __init__(self, channels: Channels, md: tuple[tuple[str, str], ...], calls: int) -> None:
        count = len(channels.for_thread)
        self.refused = 0
        self._lock = threading.Lock()
        self._md = md
        self._queues = [
            device_requests(f"hp-bench-{n:02d}", -(-calls // count)) for n in range(count)
        ]
        self.workers = [
            self._worker(api_grpc.LedgerServiceStub(c), n)
            for n, c in enumerate(channels.for_thread)
        ]

    def _worker(self, stub: api_grpc.LedgerServiceStub, n: int) -> Worker:
        queue = self._queues[n]

        def once() -> object:
            if not queue:
                raise LookupError("no prepared call left")
            request = queue.pop()
            response = stub.IngestReports(request, metadata=self._md, timeout=60)
            refused = sum(r.outcome != api.INGEST_OUTCOME_CREATED for r in response.results)
            if refused:
                with self._lock:
                    self.refused += refused
            return response

        return once

    @property
    def left(self) -> int:
        return sum(len(q) for q in self._queues)


def report_workers(channels: Channels, md: tuple[tuple[str, str], ...]) -> list[Worker]:
    def worker(channel: grpc.Channel) -> Worker:
        stub = api_grpc.LedgerServiceStub(channel)

        def once() -> object:
            return stub.ReportIncident(
                api.ReportIncidentRequest(
                    request_id=uuid.uuid4().hex,
                    title=TITLE,
                    category=CATEGORY,
                    location=pb.Location(kecamatan=KECAMATAN),
                ),
                metadata=md,
                timeout=30,
            )

        return once

    return [worker(c) for c in channels.for_thread]


def measure_ingest(
    plan: IngestPlan, store_env: dict[str, str], reference: ReferenceData, workdir: Path
) -> IngestRun:
    store = store_name(store_env)
    ceiling = batched_save_ceiling(
        {**store_env, **_ceiling_store(store_env, workdir)}, reference, plan.ceiling_batches
    )
    key = SigningKey.create(workdir / "key")
    data_dir = workdir / "data"
    env = {**store_env, **key.env, "LEDGER_GRACE_SECONDS": "1"}
    with ledger_process(data_dir, env) as (process, target):
        md = read_tokens(data_dir)[REPORTER]
        with Channels(target, plan.single_clients, "per-thread") as channels:
            singles = report_workers(channels, md)
            closed_loop(singles, calls=50)  # warm-up
            single = closed_loop(singles, duration=plan.single_seconds)
            paced_workers = singles[:4]
            alone = open_loop(paced_workers, rate=plan.paced_rate, duration=plan.paced_seconds)
        with Channels(target, plan.devices, "per-thread") as channels:
            devices = Devices(channels, md, plan.calls + plan.devices)
            closed_loop(devices.workers, calls=plan.devices)  # warm-up: one call each
            recording = profile.start(f"ledger-{store}-ingest", process.pid)
            try:
                ingest = closed_loop(devices.workers, calls=plan.calls)
            finally:
                profile.stop(recording)
            # The paced singles run while the devices send again, enough calls to outlast
            # them (at the rate just measured).
            calls = max(plan.devices, math.ceil(ingest.rate * (plan.paced_seconds + 1.5)))
            during_devices = Devices(channels, md, calls)
            with Channels(target, 4, "per-thread") as paced_channels:
                paced = report_workers(paced_channels, md)
                during_ingest, during = _side_by_side(
                    lambda: closed_loop(during_devices.workers, calls=calls),
                    lambda: open_loop(paced, rate=plan.paced_rate, duration=plan.paced_seconds),
                )
    return IngestRun(
        store,
        ceiling,
        single,
        ingest,
        alone,
        during,
        during_ingest,
        devices.refused + during_devices.refused,
    )


def _ceiling_store(store_env: dict[str, str], workdir: Path) -> dict[str, str]:
    """A store of its own for the ceiling (SQLite: another file; PostgreSQL: the same
    schema, fresh ids, before the ledger's run)."""
    if store_env.get("PERSISTENCE_MODULE") == "eventsourcing.sqlite":
        return {"SQLITE_DBNAME": str(workdir / "ceiling.sqlite")}
    return {}


def _side_by_side(
    first: Callable[[], Result], second: Callable[[], Result]
) -> tuple[Result, Result]:
    """Both at once; the second starts once the first is under way."""
    results: list[Result] = []
    thread = threading.Thread(target=lambda: results.append(first()), daemon=True)
    thread.start()
    time.sleep(0.3)  # the first calls are in flight: the second measures during them
    other = second()
    thread.join()
    return results[0], other

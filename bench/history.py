"""Reading a long history: projection rebuild, verify, export, export verify; rate and RSS.

A store is filled with realistic incident histories (``HistoryWriter``): incidents
go through their lifecycle with the real domain (report, verify or reject or merge,
severity assessment, lead assignment, supporting agencies, handovers, actions,
escalations, decisions, corrections, resolution, closure, reopening), made in memory
by ``Incident``'s own commands and saved through the Ledger application in large
batches (no gRPC, no idempotency records), with a signed checkpoint every
``CHECKPOINT_EVERY`` events as the server makes them.

Each operation then runs in a fresh child process (``python -m bench.history OP``),
so that its peak RSS (``VmHWM``, plus any workers') is its own: the library's plain decode of the
store (``select_notifications`` + ``mapper.to_domain_event``, the ceiling), the
projection rebuild, ``verify_store``, ``export_jsonl`` and ``verify_export``. The
same operations run on the first half of the history, then on all of it, to show
that memory does not grow with the history's length.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import psutil
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.report import rate, table
from services.common.config import PROJECT_ROOT, LedgerSettings
from services.common.reference import ReferenceData, Role
from services.ledger.application import Ledger
from services.ledger.audit import (
    Checkpoints,
    RawDecoder,
    export_jsonl,
    public_key_bytes,
    verify_export,
    verify_store,
)
from services.ledger.audit.encoding import favour_reading_thread
from services.ledger.domain.incident import Actor, Envelope, Incident, RejectionReason, Status
from services.ledger.projections import Projections
from services.ledger.seals import Sealer

CHECKPOINT_EVERY = 50_000  # events between signed checkpoints (as a server would make them)
SAVE_BATCH = 200  # incidents per save (about 2,500 events)
# Operations, in the order they run; each in its own child process.
DECODE = "decode"
REBUILD = "rebuild"
VERIFY = "verify"
EXPORT = "export"
EXPORT_VERIFY = "export-verify"
OPERATIONS = (DECODE, REBUILD, VERIFY, EXPORT, EXPORT_VERIFY)
LABELS = {
    DECODE: "library decode (ceiling)",
    REBUILD: "projection rebuild",
    VERIFY: "verify store",
    EXPORT: "export JSON Lines",
    EXPORT_VERIFY: "verify export",
}
TARGETED = (REBUILD, VERIFY, EXPORT, EXPORT_VERIFY)
HISTORY_RATE_TARGET = 40_000.0  # events/s of each targeted operation over the full history
HISTORY_RSS_GROWTH_LIMIT = 0.10  # peak RSS on the full history at most 10 % above the half
#: The rebuild's ratio to the library's decode, on the full history: the two run this many
#: times, alternating, and each keeps its median round. One run each of the quick bench's
#: 24,000 events lasts 0.3-0.5 s, and two passes of the same code a minute apart gave
#: 0.94 and 1.76 of the decode (2026-12-07): the machine's moments, not the code.
RATIO_ROUNDS = 3

TITLES = (
    "Crowd gathering near the polling station",
    "Leaflets accusing a candidate distributed at the market",
    "Envelopes of cash handed out after Friday prayers",
    "Village head campaigning for a candidate",
    "Ballot boxes arrived damaged",
    "Power cut at the vote counting hall",
    "Supporters of two candidates scuffle at the crossroads",
    "Hoax message about moved polling stations on WhatsApp",
    "Threats against a polling officer",
    "River flooding the road to the polling station",
)
ACTIONS = (
    "Two officers posted at the location, crowd calm",
    "Spoke with the village head and the campaign team",
    "Patrol passed by at 21:00, nothing to report",
    "Evidence photographed and leaflets collected",
    "Witness statements taken from three residents",
    "Meeting with both campaign teams arranged for tomorrow",
    "Replacement logistics dispatched from the KPU warehouse",
    "Clarification published on the regency's channels",
)
FORUMS = ("Forkopimda", "Sentra Gakkumdu", "Desk Pilkada coordination meeting")


# ------------------------------------------------------------------ generation


@dataclass
class HistoryWriter:
    """Writes realistic incident histories into one store, batch by batch."""

    ledger: Ledger
    store_env: Mapping[str, str]
    signing_key: Ed25519PrivateKey
    checkpoint_every: int = CHECKPOINT_EVERY
    rng: random.Random = field(default_factory=lambda: random.Random(2024))
    events: int = 0
    incidents: int = 0
    checkpoints: int = 0
    seconds: float = 0.0  # spent writing (checkpoints included)

    def __post_init__(self) -> None:
        reference = self.ledger.reference
        self.coordinator = reference.coordinator
        self.responders = sorted(
            code for code, a in reference.agencies.items() if a.role is Role.RESPONDER
        )
        self.roles = {code: a.role for code, a in reference.agencies.items()}
        self.places = [(code, sorted(k.desa)) for code, k in sorted(reference.kecamatan.items())]
        self.desa_of = reference.desa_of
        self.categories = sorted(reference.categories)
        self.severities = sorted(reference.severities)
        self.t0 = datetime.now(UTC) - timedelta(days=60)
        self._next_checkpoint = self.checkpoint_every
        self._checkpoints = Checkpoints(
            self.ledger.recorder,
            self.store_env,
            self.signing_key,
            decoder=RawDecoder(self.ledger.mapper),
        )

    def close(self) -> None:
        self._checkpoints.close()

    def fill(self, events: int) -> None:
        """Add whole incidents until the store holds at least ``events`` incident events."""
        started = time.perf_counter()
        while self.events < events:
            batch: list[Incident] = []
            for _ in range(SAVE_BATCH):
                self._lifecycle(batch)
            self.ledger.save(*batch)
            self.events += sum(i.version for i in batch)  # all new in this batch
            if self.events >= self._next_checkpoint:
                self._checkpoints.create()
                self.checkpoints += 1
                self._next_checkpoint += self.checkpoint_every
        self.seconds += time.perf_counter() - started

    # -------------------------------------------------------------- one incident

    def _env(self, agency: str, when: datetime | None = None) -> Envelope:
        request_id = uuid4().hex
        officer = f"{agency}-officer-{self.rng.randrange(1, 9)}"
        return Envelope(
            Actor(agency, officer, self.roles[agency]), request_id, request_id, request_id, when
        )

    def _lifecycle(self, batch: list[Incident]) -> None:
        rng, coord = self.rng, self.coordinator
        kecamatan, desa = rng.choice(self.places)
        occurred = self.t0 + timedelta(minutes=rng.randrange(0, 60 * 24 * 60))
        reporter = rng.choice(self.responders)
        incident = Incident.report(
            self._env(reporter, occurred),
            title=rng.choice(TITLES),
            description="Reported by phone to the duty officer; details to follow.",
            category=rng.choice(self.categories),
            severity=rng.choices(self.severities, weights=(1, 3, 4, 2))[0],
            location={"kecamatan": kecamatan, "desa": rng.choice(desa), "tps": ""},
            incident_id=uuid4(),
        )
        self.incidents += 1
        batch.append(incident)
        draw = rng.random()
        if draw < 0.06:
            incident.reject(self._env(coord), RejectionReason.HOAX, "confirmed hoax")
            return
        if draw < 0.10:
            live = [i for i in batch[:-1] if i.status not in {Status.REJECTED, Status.MERGED}]
            if live:
                incident.merge_into(self._env(coord), rng.choice(live), "same gathering")
                return
        if rng.random() < 0.3:
            incident.escalate(self._env(reporter), "the crowd is growing")
        incident.verify(self._env(coord), "confirmed by the kecamatan desk")
        if rng.random() < 0.3:
            others = [s for s in self.severities if s != incident.severity]
            incident.assess_severity(self._env(coord), rng.choice(others), "re-assessed")
        lead = rng.choice(self.responders)
        incident.assign_lead(self._env(coord), lead, "")
        supporting = [a for a in self.responders if a != lead]
        for agency in rng.sample(supporting, rng.choice((0, 0, 1, 1, 2))):
            incident.add_supporting_agency(self._env(coord), agency, "")
        self._act(incident, rng.randrange(1, 7))
        if rng.random() < 0.1:
            to = rng.choice([a for a in self.responders if a != incident.lead_agency])
            incident.propose_handover(self._env(incident.lead_agency), to, "their jurisdiction")
            incident.accept_handover(self._env(to), "taken over")
            self._act(incident, rng.randrange(1, 3))
        if rng.random() < 0.15:
            incident.escalate(self._env(incident.lead_agency), "tension rising")
        if rng.random() < 0.15:
            start = occurred + timedelta(hours=rng.randrange(1, 48))
            incident.record_decision(
                self._env(coord),
                deciding_agencies=rng.sample(self.responders, 2),
                forum=rng.choice(FORUMS),
                summary="Gatherings restricted near polling stations",
                rationale="Two clashes in the same week",
                scope={"kecamatan": kecamatan, "desa": "", "tps": ""},
                valid_from=start,
                valid_until=start + timedelta(hours=rng.randrange(6, 96)),
                zone=UTC,
            )
        if rng.random() < 0.12:
            self._correct(incident)
        if rng.random() < 0.15:
            return  # still open
        incident.resolve(self._env(incident.lead_agency), "calm again")
        if rng.random() < 0.8:
            incident.request_closure(self._env(incident.lead_agency), "")
            incident.approve_closure(self._env(coord), "ok")
            if rng.random() < 0.05:
                incident.reopen(self._env(coord), "new reports from the same desa")
                incident.assign_lead(self._env(coord), incident.lead_agency, "")
                self._act(incident, 2)
                incident.resolve(self._env(incident.lead_agency), "calm again")

    def _act(self, incident: Incident, count: int) -> None:
        for _ in range(count):
            agency = incident.lead_agency
            if incident.supporting_agencies and self.rng.random() < 0.3:
                agency = self.rng.choice(incident.supporting_agencies)
            incident.log_action(
                self._env(agency), self.rng.choice(ACTIONS), dict(incident.location)
            )

    def _correct(self, incident: Incident) -> None:
        reported = next(k for k, v in incident.event_types.items() if v == "Reported")
        values = incident.event_values[reported]
        if self.rng.random() < 0.5:
            new_title = values["title"] + " (corrected)"
            field_name, old, new = "title", values["title"], new_title
        else:
            # The events share the incident's location dict, which the correction changes
            # in place: the events made so far are stored first (as the ledger would have).
            self.ledger.save(incident)
            # A misheard desa: another of the same kecamatan (a corrected place stays one
            # of the reference data).
            desa = dict(self.places)[values["location.kecamatan"]]
            others = [d for d in desa if d != values["location.desa"]] or [""]
            field_name, old, new = "location.desa", values["location.desa"], self.rng.choice(others)
        incident.correct(
            self._env(self.coordinator),
            event_id=reported,
            field=field_name,
            old_value=old,
            new_value=new,
            reason="typo in the first report",
            zone=UTC,
            desa_of=self.desa_of,
        )


# ------------------------------------------------------------------ child processes


@dataclass(frozen=True)
class Measured:
    operation: str
    events: int
    seconds: float
    peak_mb: float  # peak RSS of the child process (and of any workers it ran)
    base_mb: float  # RSS of the child just before the operation (imports, ledger open)
    detail: str = ""

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("nan")


def run_child(
    operation: str, store_env: Mapping[str, str], public_key: bytes, export_file: Path
) -> Measured:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "gen")]),
    }
    for key in list(env):
        if key.startswith(("PERSISTENCE_MODULE", "SQLITE_", "POSTGRES_", "CREATE_TABLE")):
            del env[key]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.history",
            operation,
            "--store-env",
            json.dumps(dict(store_env)),
            "--public-key",
            public_key.hex(),
            "--file",
            str(export_file),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"bench.history {operation} failed ({done.returncode}): {done.stderr.strip()[-2000:]}"
        )
    values = json.loads(lines[-1])
    return Measured(operation, **values)


def _own_peak() -> int:
    """This process's peak RSS in bytes since it started its program (``VmHWM``).

    Not ``ru_maxrss``: on Linux that keeps the parent's RSS at the fork before exec.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class TreePeak:
    """The peak RSS of this process plus its child processes (an export's workers),
    sampled every ``interval`` seconds (the children looked up once a second, as that
    scans /proc); at least this process's own peak (``VmHWM``).
    """

    def __init__(self, interval: float = 0.1) -> None:
        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        children: list[psutil.Process] = []
        for tick in itertools.count():
            if self._stop.wait(self._interval):
                return
            if tick % round(1 / self._interval) == 0:
                children = self._process.children(recursive=True)
            total = self._process.memory_info().rss
            for child in children:
                with contextlib.suppress(psutil.Error):  # ended meanwhile
                    total += child.memory_info().rss
            self.peak = max(self.peak, total)

    def stop_mb(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _own_peak()) / 2**20


def _child(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.history")
    parser.add_argument("operation", choices=OPERATIONS)
    parser.add_argument("--store-env", required=True)
    parser.add_argument("--public-key", required=True)
    parser.add_argument("--file", type=Path, required=True)
    args = parser.parse_args(argv)
    store_env: dict[str, str] = json.loads(args.store_env)
    public_key = bytes.fromhex(args.public_key)
    reference = ReferenceData.load(LedgerSettings(log_level="WARNING").reference_file)
    detail = ""
    if args.operation in {VERIFY, EXPORT, EXPORT_VERIFY}:
        favour_reading_thread()  # as the audit commands these stand for do
    global _tree  # the workers of verify, export and verify export are sampled too
    _tree = TreePeak() if args.operation in {VERIFY, EXPORT, EXPORT_VERIFY} else None
    if args.operation == EXPORT_VERIFY:
        base = psutil.Process().memory_info().rss / 2**20
        started = time.perf_counter()
        report = verify_export(args.file, public_key)
        seconds = time.perf_counter() - started
        events, detail = report.events, _verdict(report.ok, report.checkpoints_checked)
        return _emit(args.operation, events, seconds, base, detail)
    ledger = Ledger(reference, env=store_env)
    try:
        if args.operation == DECODE:
            base = psutil.Process().memory_info().rss / 2**20
            started = time.perf_counter()
            events = library_decode(ledger)
            seconds = time.perf_counter() - started
        elif args.operation == REBUILD:
            projections = Projections(ledger, store_env, reference, create=True)
            try:
                base = psutil.Process().memory_info().rss / 2**20
                stats = projections.rebuild()
            finally:
                projections.close()
            events, seconds = stats.events, stats.seconds
        elif args.operation == VERIFY:
            base = psutil.Process().memory_info().rss / 2**20
            started = time.perf_counter()
            report = verify_store(ledger, public_key)
            seconds = time.perf_counter() - started
            events, detail = report.events, _verdict(report.ok, report.checkpoints_checked)
        else:
            base = psutil.Process().memory_info().rss / 2**20
            started = time.perf_counter()
            stats_export = export_jsonl(ledger, args.file)
            seconds = time.perf_counter() - started
            events = stats_export.events
            detail = f"{stats_export.bytes / 2**20:,.0f} MB, {stats_export.checkpoints} checkpoints"
    finally:
        ledger.close()
    return _emit(args.operation, events, seconds, base, detail)


_tree: TreePeak | None = None


def _verdict(ok: bool, checkpoints: int) -> str:
    return f"{'clean' if ok else 'DIVERGENCE'}, {checkpoints} checkpoints checked"


def _emit(operation: str, events: int, seconds: float, base: float, detail: str) -> int:
    values = {
        "events": events,
        "seconds": seconds,
        "peak_mb": _tree.stop_mb() if _tree is not None else _own_peak() / 2**20,
        "base_mb": base,
        "detail": detail,
    }
    print(json.dumps(values), flush=True)
    return 0


def library_decode(ledger: Ledger, batch: int = 5000) -> int:
    """Every incident event read and decoded by the library alone (no hashing, nothing kept)."""
    topics = RawDecoder(ledger.mapper).topics
    recorder, to_event = ledger.recorder, ledger.mapper.to_domain_event
    position = events = 0
    while True:
        notifications = recorder.select_notifications(
            position, batch, topics=topics, inclusive_of_start=False
        )
        if not notifications:
            return events
        for notification in notifications:
            to_event(notification)
        events += len(notifications)
        position = notifications[-1].id


# ------------------------------------------------------------------ the bench section


@dataclass
class HistoryRun:
    store: str
    events: int  # of the full history
    incidents: int
    checkpoints: int
    fill_seconds: float
    half: dict[str, Measured] = field(default_factory=dict)
    full: dict[str, Measured] = field(default_factory=dict)

    def growth(self, operation: str) -> float:
        half, full = self.half[operation].peak_mb, self.full[operation].peak_mb
        return (full - half) / half


def measure_history(
    store_env: Mapping[str, str], reference: ReferenceData, workdir: Path, events: int, store: str
) -> HistoryRun:
    """Fill a fresh store to half of ``events``, measure, fill to ``events``, measure again."""
    workdir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    public_key = public_key_bytes(key)
    export_file = workdir / "export.jsonl"
    ledger = Ledger(reference, env=store_env, sealer=Sealer(key))
    writer = HistoryWriter(ledger, store_env, key, checkpoint_every=max(1000, events // 4))
    run = HistoryRun(store, 0, 0, 0, 0.0)
    try:
        for target, into in ((events // 2, run.half), (events, run.full)):
            writer.fill(target)
            for operation in OPERATIONS:
                into[operation] = run_child(operation, store_env, public_key, export_file)
            export_file.unlink(missing_ok=True)
        rounds = {DECODE: [run.full[DECODE]], REBUILD: [run.full[REBUILD]]}
        for _ in range(RATIO_ROUNDS - 1):
            for operation, measured in rounds.items():
                measured.append(run_child(operation, store_env, public_key, export_file))
        for operation, measured in rounds.items():
            run.full[operation] = median_round(measured)
    finally:
        writer.close()
        ledger.close()
    run.events, run.incidents = writer.events, writer.incidents
    run.checkpoints, run.fill_seconds = writer.checkpoints, writer.seconds
    return run


def median_round(rounds: Sequence[Measured]) -> Measured:
    """The round of median rate (of an odd number; the lower middle of an even one)."""
    ordered = sorted(rounds, key=lambda m: m.rate)
    return ordered[(len(ordered) - 1) // 2]


def print_run(run: HistoryRun) -> None:
    """The section's table: rates on the full history, peak RSS on half and all of it."""
    half_events = run.half[DECODE].events
    print(
        f"  filled {run.events:,} events ({run.incidents:,} incidents, {run.checkpoints} signed "
        f"checkpoints) in {run.fill_seconds:.1f} s ({rate(run.events / run.fill_seconds)} "
        f"events/s; saves of {SAVE_BATCH} incidents)"
    )
    ceiling = run.full[DECODE].rate
    rows = []
    for operation in OPERATIONS:
        full, half = run.full[operation], run.half[operation]
        rows.append(
            [
                LABELS[operation],
                f"{full.seconds:.2f}",
                rate(full.rate),
                f"{full.rate / ceiling:.0%}",
                rate(half.rate),
                f"{full.base_mb:.0f}",
                f"{half.peak_mb:.1f}",
                f"{full.peak_mb:.1f}",
                f"{run.growth(operation):+.1%}",
            ]
        )
    print(
        table(
            [
                "operation (child process)",
                "s",
                "events/s",
                "of decode",
                f"events/s {half_events // 1000}k",
                "base MB",
                f"peak MB {half_events // 1000}k",
                f"peak MB {run.events // 1000}k",
                "RSS growth",
            ],
            rows,
        )
    )
    details = "; ".join(
        f"{LABELS[op]}: {run.full[op].detail}" for op in OPERATIONS if run.full[op].detail
    )
    print(f"  {details}")
    print(
        f"  seconds and events/s are of the full history (decode and rebuild: the median of "
        f"{RATIO_ROUNDS} alternating rounds); base MB = the child's RSS just before "
        "the operation (interpreter, imports, ledger open); peak = the child's own high-water "
        "mark (VmHWM), with its workers' where they run (sampled every 0.1 s)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    return _child(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())

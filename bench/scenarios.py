"""What is measured: the echo ceiling, the append ceiling, the ledger over gRPC, its RSS."""

from __future__ import annotations

import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import grpc
import psutil
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench import loadgen, profile
from bench.cpu import CpuUse, CpuWindow
from bench.echo import ECHO_METHOD
from bench.harness import Channels, Result, Worker, closed_loop, joined
from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import ledger_service_pb2_grpc as api_grpc
from services.common.config import PROJECT_ROOT, LedgerSettings
from services.common.reference import ReferenceData
from services.common.sql import open_database
from services.ledger.application import Ledger
from services.ledger.domain.commands import LogAction, ReportIncident
from services.ledger.domain.incident import Actor, Envelope, Incident
from services.ledger.domain.personal import Person, PersonalData
from services.ledger.personal_keys import SQLITE_PRAGMAS, KeyRing, PersonalKeys
from services.ledger.seals import Sealer

REPORTER = "kesbangpol"  # any responder may report
COORDINATOR = "desk_pilkada"  # verifies and assigns
LEAD = "polres"  # lead agency, logs the actions
KECAMATAN = "kota_mukomuko"
TITLE = "Planned mass gathering at the town square"
CATEGORY = "intimidation"
ACTION = "Two officers posted at the gathering, crowd calm"

Metadata = tuple[tuple[str, str], ...]


# ---------------------------------------------------------------- gRPC echo ceiling

# About the size of a serialized LogActionRequest with its CommandResult reply.
ECHO_PAYLOAD = os.urandom(160)


@contextmanager
def echo_process(settings: LedgerSettings, log_path: Path) -> Iterator[tuple[int, str]]:
    """``python -m bench.echo`` with the ledger's server settings, on a free port."""
    port = free_port()
    args = [
        "--listen",
        f"127.0.0.1:{port}",
        "--max-workers",
        str(settings.max_workers),
        "--max-message-bytes",
        str(settings.max_message_bytes),
    ]
    env = ledger_env(log_path.parent)
    with service_process("bench.echo", env, port, log_path, args) as (process, target):
        yield process.pid, target


def echo_workers(channels: Sequence[grpc.Channel]) -> list[Worker]:
    def worker(channel: grpc.Channel) -> Worker:
        call = channel.unary_unary(ECHO_METHOD, None, None)

        def once() -> object:
            return call(ECHO_PAYLOAD, timeout=30)

        return once

    return [worker(c) for c in channels]


@dataclass
class EchoRun:
    closed: dict[str, Result]  # per client channel mode, at saturation
    cpu: dict[str, CpuUse]  # the echo process's, per mode, through the closed loop
    mode: str  # the faster mode, which the ledger's clients use too
    paced: Result  # that mode, paced at paced_rate

    @property
    def best(self) -> Result:
        return self.closed[self.mode]

    @property
    def cpu_ms_per_call(self) -> float:
        """CPU time of the echo process per call, in the best mode's closed loop."""
        rate = self.best.rate
        return self.cpu[self.mode].replicas / rate * 1000 if rate > 0 else math.nan


def echo_ceiling(
    settings: LedgerSettings,
    clients: int,
    duration: float,
    modes: Sequence[str],
    paced_rate: float,
    paced_duration: float,
    workdir: Path,
) -> EchoRun:
    """The echo process driven from a load process: calls/s at saturation per channel
    mode (closed loop, ``clients`` threads), then latency paced at ``paced_rate``."""
    closed: dict[str, Result] = {}
    cpu: dict[str, CpuUse] = {}
    with echo_process(settings, workdir / "echo" / "echo.log") as (pid, target):
        for mode in modes:
            load = loadgen.Load(
                "echo", target, clients, mode, warmup=min(1.0, duration / 2), duration=duration
            )
            window = CpuWindow([pid])
            closed[mode] = loadgen.run_many([load], window.on_phase)[0].closed
            cpu[mode] = window.use()
        mode = max(closed, key=lambda m: closed[m].rate)
        paced = loadgen.run(
            loadgen.Load(
                "echo",
                target,
                clients,
                mode,
                warmup=0.2,
                duration=0.2,
                paced_rate=paced_rate,
                paced_duration=paced_duration,
            )
        ).paced
    if paced is None:
        raise RuntimeError("the paced echo run did not happen")
    return EchoRun(closed, cpu, mode, paced)


# ------------------------------------------------------------ incidents, in-process


def actors(reference: ReferenceData) -> dict[str, Actor]:
    return {
        code: Actor(code, f"bench-{code}", agency.role)
        for code, agency in reference.agencies.items()
    }


def envelope(actor: Actor) -> Envelope:
    request_id = uuid4().hex
    return Envelope(actor, request_id, request_id, request_id)


def prepare_assigned(ledger: Ledger, count: int, batch: int = 100) -> list[UUID]:
    """``count`` incidents reported, verified and assigned to the lead (ASSIGNED).

    Written straight into the store in batches (the domain's own commands, saved 100
    aggregates at a time, without idempotency records): setup, not measured.
    """
    who = actors(ledger.reference)
    ids: list[UUID] = []
    for start in range(0, count, batch):
        incidents = []
        for _ in range(min(batch, count - start)):
            incident = Incident.report(
                envelope(who[REPORTER]),
                title=TITLE,
                description="",
                category=CATEGORY,
                severity=ledger.reference.default_severity,
                location={"kecamatan": KECAMATAN, "desa": "", "tps": ""},
                incident_id=uuid4(),
            )
            incident.verify(envelope(who[COORDINATOR]), "confirmed by the desk")
            incident.assign_lead(envelope(who[COORDINATOR]), LEAD, "")
            incidents.append(incident)
        ledger.save(*incidents)
        ids.extend(i.id for i in incidents)
    return ids


# ------------------------------------------------------------- append ceiling


@dataclass
class AppendRow:
    what: str
    threads: int
    result: Result


RAW = "raw append"
COMMAND = "Ledger.log_action"
REPORT = "Ledger.execute(ReportIncident)"
REPORT_PEOPLE = "Ledger.execute(ReportIncident), naming two people"
#: A report's people (docs/personal-data.md): a reporter with phone, NIK and address, and a
#: witness with a phone; each sealed under a key of their own.
PEOPLE = PersonalData(
    reporter=Person("Siti Rahma", "081273456690", "1706014107900003", "Jl. Kenari 7"),
    witnesses=(Person("Budi Saksi", "081298765432"),),
)
APPENDS_PER_INCIDENT = 8  # aim: incidents grow by about this many events in one phase
#: Rounds of each kind of report, alternating (their phase's duration split between them).
REPORT_ROUNDS = 4


def _raw_append_worker(ledger: Ledger, ids: list[UUID], actor: Actor) -> Worker:
    """Load an incident, add one ActionLogged event, save it (nothing else)."""
    position = [0]

    def once() -> object:
        incident_id = ids[position[0] % len(ids)]
        position[0] += 1
        incident: Incident = ledger.repository.get(incident_id)
        incident.log_action(envelope(actor), ACTION, incident.location)
        return ledger.save(incident)

    return once


def _report_worker(ledger: Ledger, actor: Actor, people: PersonalData | None) -> Worker:
    """The application's whole ReportIncident command, with or without people."""

    def once() -> object:
        report = ReportIncident(TITLE, "", CATEGORY, "", {"kecamatan": KECAMATAN}, people)
        return ledger.execute(envelope(actor), report)

    return once


def _command_worker(ledger: Ledger, ids: list[UUID], actor: Actor) -> Worker:
    """The application's whole LogAction command (checks, idempotency record, save)."""
    position = [0]

    def once() -> object:
        incident_id = ids[position[0] % len(ids)]
        position[0] += 1
        return ledger.execute(envelope(actor), LogAction(incident_id, 0, ACTION, None))

    return once


def append_ceiling(
    store_env: dict[str, str],
    reference: ReferenceData,
    thread_counts: Sequence[int],
    duration: float,
    expected_rate: float,
) -> list[AppendRow]:
    """In-process appends on one fresh store: raw, then the whole application command.

    Each phase gets fresh ASSIGNED incidents (about ``APPENDS_PER_INCIDENT`` appends
    each at the expected rate), split between the threads so they never contend.
    """
    ledger = Ledger(reference, env=store_env)
    lead = actors(reference)[LEAD]
    rows: list[AppendRow] = []
    try:

        def phase(what: str, threads: int) -> AppendRow:
            count = max(4 * threads, math.ceil(expected_rate * duration / APPENDS_PER_INCIDENT))
            ids = prepare_assigned(ledger, count)
            make = _raw_append_worker if what == RAW else _command_worker
            workers = [make(ledger, ids[n::threads], lead) for n in range(threads)]
            return AppendRow(what, threads, closed_loop(workers, duration=duration))

        closed_loop([_raw_append_worker(ledger, prepare_assigned(ledger, 20), lead)], calls=50)
        for threads in thread_counts:
            rows.append(phase(RAW, threads))
        best = max((r for r in rows if r.what == RAW), key=lambda r: r.result.rate)
        for threads in sorted({1, best.threads}):
            rows.append(phase(COMMAND, threads))
        # Reports with and without personal data, one thread, in alternating rounds: the
        # store grows and the machine's speed drifts while they run, and of two phases one
        # after the other the second bore all of it (PostgreSQL, in-process: 1.5x one after
        # the other in the bench, 1.26-1.35x alternating in a probe of the same hour).
        ring = KeyRing({"bench": os.urandom(32)}, "bench")
        ledger.personal_keys = PersonalKeys(
            open_database(store_env, 4, sqlite_pragmas=SQLITE_PRAGMAS), ring
        )
        reporter = actors(reference)[REPORTER]
        reports = {
            what: _report_worker(ledger, reporter, people)
            for what, people in ((REPORT, None), (REPORT_PEOPLE, PEOPLE))
        }
        for worker in reports.values():
            closed_loop([worker], calls=50)  # warm-up: the first keys, the first reports
        rounds: dict[str, list[Result]] = {what: [] for what in reports}
        for _ in range(REPORT_ROUNDS):
            for what, worker in reports.items():
                rounds[what].append(closed_loop([worker], duration=duration / REPORT_ROUNDS))
        rows.extend(AppendRow(what, 1, joined(parts)) for what, parts in rounds.items())
    finally:
        if ledger.personal_keys is not None:
            ledger.personal_keys.close()
        ledger.close()
    return rows


# ----------------------------------------------------------- the ledger over gRPC


def read_tokens(data_dir: Path) -> dict[str, Metadata]:
    """Bearer metadata per agency from the development tokens the ledger wrote."""
    raw = yaml.safe_load((data_dir / "credentials" / "dev-tokens.yaml").read_text("utf-8"))
    return {
        agency: (("authorization", f"Bearer {entry['token']}"),) for agency, entry in raw.items()
    }


# Share of each command in the mix; a command whose precondition has no incident yet
# (nothing reported to verify, ...) falls through to LogAction or ReportIncident.
MIX = (("ReportIncident", 0.25), ("VerifyIncident", 0.075), ("AssignLeadAgency", 0.075))


@dataclass
class CommandMix:
    """One client thread's commands: reports, drives incidents to ASSIGNED, logs actions.

    Every command has a fresh request id and the incident's current expected_version
    (each thread works on its own incidents, as one officer's desk would, so there
    are no version conflicts between threads).
    """

    stub: api_grpc.LedgerServiceStub
    md: dict[str, Metadata]
    rng: random.Random
    assigned: list[list[Any]]  # [name, version], ASSIGNED or RESPONDING: LogAction
    reported: list[list[Any]] = field(default_factory=list)  # REPORTED: VerifyIncident
    verified: list[list[Any]] = field(default_factory=list)  # VERIFIED: AssignLeadAgency
    sent: Counter[str] = field(default_factory=Counter)
    acked: int = 0  # commands that succeeded, since the start (warm-up included)
    failed: int = 0  # commands that raised, since the start

    def __call__(self) -> object:
        try:
            result = self.next_command()()
        except Exception:
            self.failed += 1
            raise
        self.acked += 1
        return result

    def next_command(self) -> Callable[[], object]:
        draw = self.rng.random()
        if draw < MIX[0][1] or not self.assigned:
            return self.report
        draw -= MIX[0][1]
        if draw < MIX[1][1] and self.reported:
            return self.verify
        draw -= MIX[1][1]
        if draw < MIX[2][1] and self.verified:
            return self.assign
        return self.log_action

    def versions(self) -> dict[str, int]:
        """The last acknowledged version of each incident this client knows of."""
        return {
            str(name): int(version)
            for name, version in (*self.assigned, *self.reported, *self.verified)
        }

    def report(self) -> object:
        self.sent["ReportIncident"] += 1
        result = self.stub.ReportIncident(
            api.ReportIncidentRequest(
                request_id=uuid4().hex,
                title=TITLE,
                category=CATEGORY,
                location=pb.Location(kecamatan=KECAMATAN),
            ),
            metadata=self.md[REPORTER],
            timeout=30,
        ).result
        self.reported.append([result.incident, result.version])
        return result

    def verify(self) -> object:
        self.sent["VerifyIncident"] += 1
        incident = self.reported[-1]  # removed once verified: a failure keeps it known
        result = self.stub.VerifyIncident(
            api.VerifyIncidentRequest(
                request_id=uuid4().hex,
                name=incident[0],
                expected_version=incident[1],
                comment="confirmed by phone",
            ),
            metadata=self.md[COORDINATOR],
            timeout=30,
        ).result
        self.reported.pop()
        self.verified.append([result.incident, result.version])
        return result

    def assign(self) -> object:
        self.sent["AssignLeadAgency"] += 1
        incident = self.verified[-1]  # removed once assigned: a failure keeps it known
        result = self.stub.AssignLeadAgency(
            api.AssignLeadAgencyRequest(
                request_id=uuid4().hex,
                name=incident[0],
                expected_version=incident[1],
                agency=LEAD,
            ),
            metadata=self.md[COORDINATOR],
            timeout=30,
        ).result
        self.verified.pop()
        self.assigned.append([result.incident, result.version])
        return result

    def log_action(self) -> object:
        self.sent["LogAction"] += 1
        incident = self.assigned[self.rng.randrange(len(self.assigned))]
        result = self.stub.LogAction(
            api.LogActionRequest(
                request_id=uuid4().hex,
                name=incident[0],
                expected_version=incident[1],
                action=ACTION,
            ),
            metadata=self.md[LEAD],
            timeout=30,
        ).result
        incident[1] = result.version
        return result


@dataclass
class LedgerRun:
    closed: Result
    paced: Result
    sent: Counter[str]
    prepared: int
    cpu: CpuUse  # in the closed loop

    @property
    def cpu_ms_per_command(self) -> float:
        """CPU time the ledger process spent per command in the closed loop."""
        rate = self.closed.rate
        return self.cpu.replicas / rate * 1000 if rate > 0 else math.nan


@dataclass(frozen=True)
class SigningKey:
    """A signing key of the bench's, in a file a ledger process reads
    (``LEDGER_SIGNING_KEY_FILE``): the events the bench writes beforehand are sealed with
    it, as the ledger's own would be."""

    path: Path
    key: Ed25519PrivateKey

    @classmethod
    def create(cls, directory: Path) -> SigningKey:
        directory.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        path = directory / "bench-signing.key"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        return cls(path, key)

    @property
    def sealer(self) -> Sealer:
        return Sealer(self.key)

    @property
    def env(self) -> dict[str, str]:
        return {"LEDGER_SIGNING_KEY_FILE": str(self.path)}


def store_name(store_env: Mapping[str, str]) -> str:
    """``sqlite`` or ``postgres``, from the store's environment."""
    return store_env.get("PERSISTENCE_MODULE", "eventsourcing.sqlite").rsplit(".", 1)[-1]


def prepared_store(
    store_env: dict[str, str], reference: ReferenceData, count: int, key: SigningKey
) -> list[UUID]:
    """``count`` incidents in ASSIGNED written (sealed) into the store before the ledger
    starts."""
    ledger = Ledger(reference, env=store_env, sealer=key.sealer)
    try:
        return prepare_assigned(ledger, count)
    finally:
        ledger.close()


def ledger_over_grpc(
    data_dir: Path,
    store_env: dict[str, str],
    reference: ReferenceData,
    clients: int,
    mode: str,
    duration: float,
    paced_rate: float,
    paced_duration: float,
    per_client: int,
) -> LedgerRun:
    """``python -m services.ledger`` (relay off) on a prepared store, driven from a load
    process: a closed loop, then paced load, same clients; the ledger's CPU time sampled
    through the closed loop."""
    key = SigningKey.create(data_dir.parent / "key")
    ids = prepared_store(store_env, reference, clients * per_client, key)
    env = {**store_env, **key.env, "LEDGER_GRACE_SECONDS": "1"}
    with ledger_process(data_dir, env) as (
        process,
        target,
    ):
        load = loadgen.Load(
            "ledger",
            target,
            clients,
            mode,
            warmup=min(1.0, duration / 4),
            duration=duration,
            paced_rate=paced_rate,
            paced_duration=paced_duration,
            tokens=read_tokens(data_dir),
            assigned=[[[f"incidents/{i}", 3] for i in ids[n::clients]] for n in range(clients)],
        )
        window = CpuWindow([process.pid])
        recording: list[profile.Recording | None] = [None]

        def on_phase(phase: str, pids: list[int]) -> None:
            window.on_phase(phase, pids)
            if phase == loadgen.CLOSED:  # the profile covers the closed loop
                recording[0] = profile.start(f"ledger-{store_name(store_env)}-commands", pid)
            elif phase == loadgen.PACED:
                profile.stop(recording[0])

        pid = process.pid
        try:
            measured = loadgen.run_many([load], on_phase)[0]
        finally:
            profile.stop(recording[0])
    if measured.paced is None:
        raise RuntimeError("the paced run did not happen")
    return LedgerRun(measured.closed, measured.paced, measured.sent, len(ids), window.use())


# ------------------------------------------------------------- RSS of a real server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RssPoint:
    incidents: int
    rss_mb: float


def ledger_env(data_dir: Path, settings: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``python -m services.ledger`` child process.

    This process's environment without its store and NATS variables (so: the
    embedded SQLite store in ``data_dir``, relay off), then ``settings`` on top.
    """
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "gen")]),
        "LEDGER_DATA_DIR": str(data_dir),
        "LEDGER_LOG_LEVEL": "WARNING",
        "LEDGER_LOG_FORMAT": "json",
    }
    for key in list(env):
        if key == "NATS_URL" or key.startswith(
            ("PERSISTENCE_MODULE", "SQLITE_", "POSTGRES_", "CREATE_TABLE")
        ):
            del env[key]
    env.update(settings or {})
    return env


@contextmanager
def service_process(
    module: str,
    env: Mapping[str, str],
    port: int,
    log_path: Path,
    args: Sequence[str] = (),
    started: Callable[[int], object] | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``python -m <module> [args]`` with ``env``, listening on ``port``; ready once gRPC
    connects.

    Stopped with SIGTERM (then SIGKILL after 15 s) on exit; its output goes to ``log_path``.
    """
    name = module.rsplit(".", 1)[-1]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=PROJECT_ROOT,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        if started is not None:  # as soon as it runs (a profile of its start-up)
            started(process.pid)
        target = f"127.0.0.1:{port}"
        with grpc.insecure_channel(target) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=30)
            except grpc.FutureTimeoutError:
                raise RuntimeError(f"the {name} process did not start; see {log_path}") from None
        yield process, target
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def ledger_process(
    data_dir: Path,
    settings: Mapping[str, str] | None = None,
    started: Callable[[int], object] | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``python -m services.ledger`` on a free port; see ledger_env for ``settings``."""
    port = free_port()
    env = ledger_env(data_dir, {**(settings or {}), "LEDGER_LISTEN": f"127.0.0.1:{port}"})
    log_path = data_dir / "server.log"
    with service_process("services.ledger", env, port, log_path, started=started) as running:
        yield running


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def rss_against_incidents(
    data_dir: Path, checkpoints: Sequence[int], clients: int, mode: str
) -> tuple[list[RssPoint], Result]:
    """RSS of a separate ledger process after reporting each checkpoint's number of incidents.

    Point 0 is after start-up and 50 warm-up reports (not counted as incidents).
    """
    points: list[RssPoint] = []
    with ledger_process(data_dir) as (process, target):
        tokens = read_tokens(data_dir)
        with Channels(target, clients, mode) as channels:
            mixes = [
                CommandMix(api_grpc.LedgerServiceStub(c), tokens, random.Random(n), [])
                for n, c in enumerate(channels.for_thread)
            ]
            reporters: list[Callable[[], object]] = [m.report for m in mixes]
            closed_loop(reporters, calls=50)
            time.sleep(0.3)
            points.append(RssPoint(0, rss_mb(process.pid)))
            done = 0
            total = Result(0.0, [])
            for target_count in checkpoints:
                run = closed_loop(reporters, calls=target_count - done)
                if run.error_count:
                    raise RuntimeError(f"reports failed: {run.describe_errors()}")
                done = target_count
                total = Result(
                    total.elapsed + run.elapsed, total.latencies + run.latencies, total.errors
                )
                time.sleep(0.3)
                points.append(RssPoint(done, rss_mb(process.pid)))
    return points, total

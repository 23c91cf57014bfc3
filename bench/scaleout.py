"""Scale-out: the ledger as one process and as several (replicas) on one PostgreSQL schema.

For each replica count, on a fresh schema of its own (dropped afterwards):

1. Development tokens, a signing key and a page token secret shared by the replicas,
   then ``python -m services.ledger migrate`` once (the tables).
2. Incidents prepared in ASSIGNED, written straight into the store (setup, not measured).
3. The replicas: ``python -m services.ledger`` processes with ``CREATE_TABLE=n``, each on
   its own port and data directory, relay off (no ``NATS_URL``: the fan-out is measured
   in sections 5 and 6, and one relay per replica would only add its own work here).
4. The same number of load-generator processes and clients whatever the replica count
   (bench/loadgen.py, phases in step); client i connects to replica i % replicas. A
   warm-up, a closed loop (saturation), then paced load at a moderate rate.
5. The replicas stopped, the store checked: every acknowledged command is one stored
   incident event, and each incident's stored version is the last one a client saw
   acknowledged (nothing lost, nothing stored unacknowledged).

While the closed loop runs, the CPU time of the replicas, of the load processes and of
PostgreSQL is sampled, so the figures can be read against the machine's cores.
"""

from __future__ import annotations

import math
import secrets
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import get_topic
from psycopg.sql import SQL, Identifier

from bench import loadgen, logs
from bench.cpu import CpuUse, CpuWindow
from bench.harness import Result
from bench.logs import LogCount
from bench.scenarios import ledger_env, ledger_process, prepare_assigned, read_tokens
from services.common.auth import generate_dev_credentials
from services.common.config import PROJECT_ROOT
from services.common.reference import ReferenceData
from services.ledger.application import Ledger
from services.ledger.audit.keys import parse_private_key
from services.ledger.domain.incident import incident_event_classes
from services.ledger.seals import Sealer

CHANNEL_MODE = "per-thread"  # each client its own connection, as separate agency systems
PREPARED_VERSION = 3  # a prepared incident: reported, verified, assigned
MIGRATE_SECONDS = 120.0


@dataclass(frozen=True)
class ScaleoutLoad:
    """How each replica count is driven (the same for every count)."""

    clients: int
    load_processes: int
    warmup: float
    duration: float
    paced_rate: float
    paced_duration: float
    incidents_per_client: int


@dataclass(frozen=True)
class StoreCheck:
    """Acknowledged commands against what the store holds for the run's incidents."""

    acknowledged: int  # commands the clients saw succeed, warm-up included
    failed: int  # commands that failed on the client
    stored: int  # incident events stored beyond the prepared ones
    incidents: int  # incidents whose last acknowledged version the clients know
    lost: int  # acknowledged versions missing from the store (summed over incidents)
    unacknowledged: int  # incidents stored past their last acknowledged version
    gaps: int  # incidents whose stored versions are not 1..n

    @property
    def ok(self) -> bool:
        return (
            self.stored == self.acknowledged
            and self.lost == 0
            and self.unacknowledged == 0
            and self.gaps == 0
        )


@dataclass
class ReplicaRun:
    replicas: int
    clients: int
    load_processes: int
    prepared: int
    closed: Result
    paced: Result
    sent: Counter[str]
    cpu: CpuUse
    check: StoreCheck
    logs: LogCount

    @property
    def cpu_ms_per_command(self) -> float:
        """CPU time the ledger processes spent per command in the closed loop."""
        rate = self.closed.rate
        return self.cpu.replicas / rate * 1000 if rate > 0 else math.nan


# -------------------------------------------------------------------- the replicas


@dataclass(frozen=True)
class SharedSettings:
    """What every replica of one deployment shares, besides the store."""

    directory: Path
    tokens_file: Path
    signing_key_file: Path
    personal_keys_file: Path
    page_token_secret: str

    def env(self, store_env: dict[str, str]) -> dict[str, str]:
        return {
            **store_env,
            "LEDGER_TOKENS_FILE": str(self.tokens_file),
            "LEDGER_SIGNING_KEY_FILE": str(self.signing_key_file),
            # One key ring for all: a replica with a ring of its own refuses to start on a
            # key table holding another's keys.
            "LEDGER_PERSONAL_DATA_KEYS_FILE": str(self.personal_keys_file),
            "LEDGER_PAGE_TOKEN_SECRET": self.page_token_secret,
            "LEDGER_GRACE_SECONDS": "1",
        }


def migrate(directory: Path, store_env: dict[str, str], reference: ReferenceData) -> SharedSettings:
    """Credentials and keys for the replicas, then ``python -m services.ledger migrate``."""
    tokens_file = generate_dev_credentials(directory / "credentials", reference.agencies)
    shared = SharedSettings(
        directory=directory,
        tokens_file=tokens_file,
        # migrate generates the development keys here (LEDGER_DATA_DIR/keys).
        signing_key_file=directory / "keys" / "ledger-signing.key",
        personal_keys_file=directory / "keys" / "personal-data.keys",
        page_token_secret=secrets.token_hex(32),
    )
    env = ledger_env(directory, {**shared.env(store_env), "CREATE_TABLE": "y"})
    # Not there yet: development generates them.
    del env["LEDGER_SIGNING_KEY_FILE"], env["LEDGER_PERSONAL_DATA_KEYS_FILE"]
    log_file = directory / "migrate.log"
    with log_file.open("wb") as out:
        done = subprocess.run(
            [sys.executable, "-m", "services.ledger", "migrate"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=MIGRATE_SECONDS,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(
            f"migrate failed (exit {done.returncode}):\n{log_file.read_text('utf-8')[-2000:]}"
        )
    return shared


@contextmanager
def replicas(
    count: int, directory: Path, shared: SharedSettings, store_env: dict[str, str]
) -> Iterator[list[tuple[int, str]]]:
    """``count`` ledger processes on the migrated store; yields (pid, address) of each."""
    env = {**shared.env(store_env), "CREATE_TABLE": "n"}
    with ExitStack() as stack:
        started = [
            stack.enter_context(ledger_process(directory / f"replica-{n}", env))
            for n in range(count)
        ]
        yield [(process.pid, target) for process, target in started]


def replica_logs(directory: Path, count: int) -> LogCount:
    """The warnings and errors in the replicas' JSON logs."""
    return logs.tally(directory / f"replica-{n}" / "server.log" for n in range(count))


# ------------------------------------------------------------------ the store check


def stored_incidents(ledger: Ledger) -> dict[UUID, tuple[int, int]]:
    """(number of events, highest version) of every incident in the PostgreSQL store."""
    recorder = ledger.recorder
    if not isinstance(recorder, PostgresApplicationRecorder):
        raise TypeError("the scale-out scenario runs on PostgreSQL only")
    query = SQL(
        "SELECT originator_id, count(*) AS events, max(originator_version) AS version "
        "FROM {schema}.{table} WHERE topic = ANY(%s) GROUP BY originator_id"
    ).format(
        schema=Identifier(recorder.datastore.schema),
        table=Identifier(recorder.events_table_name),
    )
    topics = [get_topic(cls) for cls in incident_event_classes()]
    with recorder.datastore.transaction(commit=False) as curs:
        curs.execute(query, (topics,))
        return {
            UUID(str(row["originator_id"])): (int(row["events"]), int(row["version"]))
            for row in curs.fetchall()
        }


def compare(
    stored: dict[UUID, tuple[int, int]], prepared: int, measured: loadgen.LoadResult
) -> StoreCheck:
    """What the store holds (see stored_incidents) against what the clients saw acknowledged.

    ``prepared`` incidents were written before the load, PREPARED_VERSION events each.
    """
    lost = unacknowledged = 0
    for name, acked_version in measured.versions.items():
        _, version = stored.get(UUID(name.rsplit("/", 1)[-1]), (0, 0))
        if version < acked_version:
            lost += acked_version - version
        elif version > acked_version:
            unacknowledged += 1
    return StoreCheck(
        acknowledged=measured.acked,
        failed=measured.failed,
        stored=sum(events for events, _ in stored.values()) - PREPARED_VERSION * prepared,
        incidents=len(measured.versions),
        lost=lost,
        unacknowledged=unacknowledged,
        gaps=sum(1 for events, version in stored.values() if events != version),
    )


# ------------------------------------------------------------------------ one run


def loads(
    plan: ScaleoutLoad, targets: Sequence[str], tokens: dict[str, Any], ids: Sequence[UUID]
) -> list[loadgen.Load]:
    """The load processes' descriptions; client i (over all of them) uses replica i % n."""
    per_process = plan.clients // plan.load_processes
    assigned = [
        [[f"incidents/{i}", PREPARED_VERSION] for i in ids[n :: plan.clients]]
        for n in range(plan.clients)
    ]
    return [
        loadgen.Load(
            "ledger",
            targets[0],
            per_process,
            CHANNEL_MODE,
            warmup=plan.warmup,
            duration=plan.duration,
            paced_rate=plan.paced_rate / plan.load_processes,
            paced_duration=plan.paced_duration,
            tokens=tokens,
            assigned=assigned[p * per_process : (p + 1) * per_process],
            targets=tuple(targets),
            first_client=p * per_process,
        )
        for p in range(plan.load_processes)
    ]


def run(
    count: int,
    plan: ScaleoutLoad,
    reference: ReferenceData,
    store_env: dict[str, str],
    directory: Path,
) -> ReplicaRun:
    """One deployment of ``count`` replicas on a fresh, migrated store, measured and checked."""
    if plan.clients % plan.load_processes:
        raise ValueError("the clients must split evenly between the load processes")
    shared = migrate(directory / "shared", store_env, reference)
    tokens = read_tokens(shared.directory)
    # Sealed with the replicas' key, as their own events are (an unsealed history would
    # send every load through the checkpoint-covered path).
    key = parse_private_key(shared.signing_key_file.read_bytes())
    ledger = Ledger(reference, env={**store_env, "CREATE_TABLE": "n"}, sealer=Sealer(key))
    try:
        ids = prepare_assigned(ledger, plan.clients * plan.incidents_per_client)
        with replicas(count, directory, shared, store_env) as running:
            window = CpuWindow([pid for pid, _ in running])
            results = loadgen.run_many(
                loads(plan, [target for _, target in running], tokens, ids), window.on_phase
            )
        measured = loadgen.combined(results)
        check = compare(stored_incidents(ledger), len(ids), measured)
    finally:
        ledger.close()
    if measured.paced is None:
        raise RuntimeError("the paced run did not happen")
    return ReplicaRun(
        replicas=count,
        clients=plan.clients,
        load_processes=plan.load_processes,
        prepared=len(ids),
        closed=measured.closed,
        paced=measured.paced,
        sent=measured.sent,
        cpu=window.use(),
        check=check,
        logs=replica_logs(directory, count),
    )

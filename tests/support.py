"""Test support: real stores and a real ledger server on a free port."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
import psycopg
import pytest
import yaml
from google.protobuf.timestamp_pb2 import Timestamp

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import ledger_service_pb2_grpc as api_grpc
from services.common.config import PROJECT_ROOT, LedgerSettings
from services.common.reference import ReferenceData
from services.common.sql import Database
from services.ledger.server import LedgerServer, build

REFERENCE_FILE = PROJECT_ROOT / "config" / "mukomuko-pilkada.yaml"
STORES = ("popo", "sqlite", "postgres")
Metadata = tuple[tuple[str, str | bytes], ...]

PG_SETTINGS = {
    "POSTGRES_HOST": os.environ.get("TEST_POSTGRES_HOST", "127.0.0.1"),
    "POSTGRES_PORT": os.environ.get("TEST_POSTGRES_PORT", "5432"),
    "POSTGRES_DBNAME": os.environ.get("TEST_POSTGRES_DBNAME", "test"),
    "POSTGRES_USER": os.environ.get("TEST_POSTGRES_USER", "postgres"),
    "POSTGRES_PASSWORD": os.environ.get("TEST_POSTGRES_PASSWORD", ""),
}


def rid() -> str:
    """A fresh request id."""
    return secrets.token_hex(8)


@dataclass(frozen=True)
class DevUser:
    """One agency's development credentials, as the services wrote them."""

    officer: str
    token: str


def dev_users(data_dir: Path) -> dict[str, DevUser]:
    """Each agency's development officer and token, from ``credentials/dev-tokens.yaml``."""
    raw = yaml.safe_load((data_dir / "credentials" / "dev-tokens.yaml").read_text("utf-8"))
    return {agency: DevUser(entry["officer"], entry["token"]) for agency, entry in raw.items()}


def dev_tokens(data_dir: Path) -> dict[str, str]:
    """Each agency's development bearer token (see :func:`dev_users`)."""
    return {agency: user.token for agency, user in dev_users(data_dir).items()}


def ts(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def reference() -> ReferenceData:
    return ReferenceData.load(REFERENCE_FILE)


def _pg_connect() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        host=PG_SETTINGS["POSTGRES_HOST"],
        port=int(PG_SETTINGS["POSTGRES_PORT"]),
        dbname=PG_SETTINGS["POSTGRES_DBNAME"],
        user=PG_SETTINGS["POSTGRES_USER"],
        password=PG_SETTINGS["POSTGRES_PASSWORD"],
        autocommit=True,
        connect_timeout=3,
    )


def require_postgres() -> None:
    """Skip when PostgreSQL is unreachable, except in CI where it must be there."""
    try:
        _pg_connect().close()
    except psycopg.OperationalError as exc:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"CI requires PostgreSQL at {PG_SETTINGS['POSTGRES_HOST']}: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")


def row_count(db: Database, table: str) -> int:
    """The rows of ``table`` (a name of the test's own)."""
    with db.transaction() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {table}")  # noqa: S608 - the test's own names
        row = cur.fetchone()
    return int(row[0]) if row else 0


@contextmanager
def store_environment(kind: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The eventsourcing environment for a fresh, empty store of the given kind."""
    if kind == "popo":
        yield {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    elif kind == "sqlite":
        yield {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(tmp_path / "ledger.sqlite"),
            "SQLITE_LOCK_TIMEOUT": "30",
        }
    elif kind == "postgres":
        require_postgres()
        schema = f"test_{secrets.token_hex(6)}"
        with _pg_connect() as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        try:
            yield {
                "PERSISTENCE_MODULE": "eventsourcing.postgres",
                "POSTGRES_SCHEMA": schema,
                "POSTGRES_POOL_SIZE": "8",
                "POSTGRES_MAX_OVERFLOW": "16",
                **PG_SETTINGS,
            }
        finally:
            with _pg_connect() as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")
    else:
        raise ValueError(kind)


@dataclass
class Client:
    """A gRPC client of a running ledger, with a token per agency."""

    server: LedgerServer
    channel: grpc.Channel
    stub: api_grpc.LedgerServiceStub
    tokens: dict[str, str]
    data_dir: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def md(self, agency: str) -> Metadata:
        return (("authorization", f"Bearer {self.tokens[agency]}"),)

    def report(self, agency: str = "kesbangpol", **fields: object) -> api.CommandResult:
        request = api.ReportIncidentRequest(
            request_id=secrets.token_hex(8),
            title=str(fields.pop("title", "Planned mass gathering at the town square")),
            category=str(fields.pop("category", "crowd_gathering")),
            location=fields.pop("location", pb.Location(kecamatan="kota_mukomuko")),  # type: ignore[arg-type]
            **fields,  # type: ignore[arg-type]
        )
        return self.stub.ReportIncident(request, metadata=self.md(agency)).result


def settings_for(tmp_path: Path, store_env: dict[str, str], **overrides: object) -> LedgerSettings:
    values: dict[str, object] = {
        "listen": "127.0.0.1:0",
        "data_dir": tmp_path / "data",
        "reference_file": REFERENCE_FILE,
        "log_format": "json",
        "grace_seconds": 1.0,
        "store_env": store_env,
    }
    values.update(overrides)
    return LedgerSettings(**values)  # type: ignore[arg-type]


@contextmanager
def running_ledger(settings: LedgerSettings) -> Iterator[Client]:
    server = build(settings)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        tokens = dev_tokens(settings.data_dir)
        yield Client(
            server, channel, api_grpc.LedgerServiceStub(channel), tokens, settings.data_dir
        )
    finally:
        channel.close()
        server.stop(1.0)


@dataclass
class ServiceProcess:
    """A service started with ``python -m``; its port comes from its JSON start log line."""

    module: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log_lines(self) -> list[dict[str, object]]:
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines

    @property
    def metrics_port(self) -> int:
        """The port its /metrics is served on, as its start line names it: give it
        ``*_METRICS_LISTEN=127.0.0.1:0``. A port picked free beforehand could be taken by
        another process before the service bound it."""
        name = self.module.rsplit(".", 1)[-1]
        for line in self.log_lines():
            if line.get("event") == f"{name}.started" and line.get("metrics_port"):
                return int(str(line["metrics_port"]))
        raise AssertionError(f"{self.module} on {self.port} serves no metrics (its start line)")


#: How long a restart waits for its port to be free again. The port is held, at most, by a
#: process that bound it while the server was down: a probe for a free port (bound, closed at
#: once) or a client's connection. The services (gRPC's default) and PostgreSQL listen with
#: SO_REUSEADDR, so the connections the previous run left in TIME_WAIT do not hold it.
RESTART_PORT_WAIT_SECONDS = 30.0


def address_taken(log: str, address: str) -> bool:
    """Whether a service's log says it could not listen on ``address`` (``host:port``, not
    port 0) because it was taken: its ``*.config_error`` line names the address, gRPC
    core's line (on stderr) the reason."""
    return (
        not address.endswith(":0")
        and f"cannot listen on {address}:" in log
        and "Address already in use" in log
    )


@contextmanager
def service_process(
    module: str, env: dict[str, str], *, timeout: float = 30.0, root: Path = PROJECT_ROOT
) -> Iterator[ServiceProcess]:
    """``python -m <module>`` with ``env``; waits (with a deadline) for its start line.

    The code is the source tree at ``root`` (this repository, or a copy of it). A service
    whose ``env`` names no listen address gets a free port (its ``port``, from the start
    line), never the default one a ``make run`` on the same machine may hold. One given a
    port (a restart where its clients expect it) that another process holds is started
    again until :data:`RESTART_PORT_WAIT_SECONDS`."""
    name = module.rsplit(".", 1)[-1]
    listen = f"{name.upper()}_LISTEN"  # LEDGER_LISTEN, NOTIFIER_LISTEN
    if name in {"ledger", "notifier"} and listen not in env:
        env = {**env, listen: "127.0.0.1:0"}
    taken_until = time.monotonic() + RESTART_PORT_WAIT_SECONDS
    while True:
        log_path = Path(env["LEDGER_DATA_DIR"]) / f"{name}-{secrets.token_hex(4)}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", module],
                env={
                    **os.environ,
                    # The harness's own setting is no service's (each would warn of it).
                    **{k: v for k, v in env.items() if k != "LEDGER_LOG_LEVEL_CHILD"},
                    "LEDGER_LOG_FORMAT": "json",
                    "LEDGER_LOG_LEVEL": env.get("LEDGER_LOG_LEVEL_CHILD", "INFO"),
                    "PYTHONPATH": f"{root}:{root / 'gen'}",
                },
                cwd=root,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        service = ServiceProcess(module, proc, 0, log_path)
        with terminated_at_exit(proc, module, STOP_WAIT_SECONDS):
            deadline = time.monotonic() + timeout
            while not service.port:
                for line in service.log_lines():
                    if line.get("event") == f"{name}.started":
                        service.port = int(str(line["port"]))
                if proc.poll() is not None:
                    text = log_path.read_text(errors="replace")
                    if address_taken(text, env.get(listen, "")) and (
                        time.monotonic() < taken_until
                    ):
                        break
                    raise AssertionError(f"{module} died at start:\n{text}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{module} did not start in {timeout} s")
                time.sleep(0.05)
            if service.port:
                yield service
                return
        time.sleep(0.2)


#: How long a harness waits for a service to exit after SIGTERM before it kills it: past
#: the service's own deadline (grace period and margin; 15 s with the default settings).
STOP_WAIT_SECONDS = 30.0


def module_env(**settings: str) -> dict[str, str]:
    """The environment of a service run as its own process: the project on the path, and
    nothing of this process's other settings but ``PATH``."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "gen")]),
        **settings,
    }


def run_module(
    command: Sequence[str], env: Mapping[str, str], prefix: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """``python -m COMMAND...`` (after ``prefix``, e.g. setpriv) from the project's root with
    ``env``, to its end (at most two minutes), its output captured as text."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", *command],
        env=dict(env),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def terminate(proc: subprocess.Popen[bytes], what: str, timeout: float) -> str | None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL: nothing is left running.

    Returns what went wrong when the process had to be killed, else None.
    """
    if proc.poll() is not None:
        return None
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return f"{what} (pid {proc.pid}) did not exit {timeout:g} s after SIGTERM: killed"
    return None


@contextmanager
def terminated_at_exit(proc: subprocess.Popen[bytes], what: str, timeout: float) -> Iterator[None]:
    """:func:`terminate` ``proc`` when the block ends. A kill fails the test; if the block
    failed already, the kill is noted on its error instead."""
    try:
        yield
    except BaseException as exc:
        problem = terminate(proc, what, timeout)
        if problem is not None:
            exc.add_note(problem)
        raise
    problem = terminate(proc, what, timeout)
    if problem is not None:
        raise AssertionError(problem)

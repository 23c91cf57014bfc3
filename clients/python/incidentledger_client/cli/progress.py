"""Progress bars on stderr for the long commands (audit, dead letter replay)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from incidentledger_client.cli import output
from incidentledger_client.cli.state import State
from incidentledger_client.i18n import format_number


class Meter:
    """What a progress bar is told: work done so far, as a count or a position reached."""

    def __init__(self, progress: Progress | None = None, task: Any = None) -> None:
        self._progress = progress
        self._task = task
        self._started = time.monotonic()
        self.items = 0

    def _update(self, **fields: Any) -> None:
        if self._progress is not None:
            rate = self.items / max(time.monotonic() - self._started, 1e-6)
            self._progress.update(self._task, rate=f"{format_number(rate)}/s", **fields)

    def step(self) -> None:
        """One more item done."""
        self.items += 1
        self._update(advance=1)

    def reached(self, done: int) -> None:
        """One more item done, and everything up to ``done`` of the total covered (a position
        in the log: a filtered export skips positions, and they are done all the same)."""
        self.items += 1
        self._update(completed=done)

    def measured(self, done: int, total: int, items: int) -> None:
        """As the server measures it: ``done`` of ``total`` (which grows to ``done`` if it
        passes it), ``items`` done so far (the rate)."""
        self.items = items
        self._update(completed=done, total=max(total, done))

    def finish(self, total: int) -> None:
        """All done: the bar shows total/total."""
        self._update(total=total, completed=total)


@contextmanager
def progress_bar(st: State, what: str, total: int | None, unit: str = "") -> Iterator[Meter]:
    """A progress bar with count and rate on stderr (only on a terminal, never with --json)."""
    err = output.error_console()
    if st.as_json or not err.is_terminal:
        yield Meter()
        return
    with Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=err,
    ) as progress:
        yield Meter(progress, progress.add_task(what, total=total, rate=""))

"""The outcomes of webhook deliveries, recorded in batches (a group commit).

Each delivery used to record its outcome (the job's new state and its delivery log entry)
in a transaction of its own, through a thread hop of its own: on SQLite a commit with its
fsync per delivery, while the delivery's slot stayed taken and the next job of its incident
waited. The writer takes every outcome that arrived while its last transaction ran and
records them in the next one; each delivery still waits until its own outcome is stored,
so what a delivery promises (an outcome recorded before the next attempt of its incident
is claimed) is unchanged.
"""

from __future__ import annotations

import asyncio

import structlog

from services.notifier.store import NotifierStore, Outcome

log = structlog.get_logger(__name__)


class OutcomeWriter:
    """Runs on the engine's loop: ``record`` from the deliveries, ``run`` as a task."""

    def __init__(self, store: NotifierStore) -> None:
        self._store = store
        self._waiting: list[tuple[Outcome, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()

    async def record(self, outcome: Outcome) -> None:
        """Return once ``outcome`` is stored; raise what failed its transaction."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((outcome, done))
        self._wake.set()
        await done

    async def run(self) -> None:
        batch: list[tuple[Outcome, asyncio.Future[None]]] = []
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                batch, self._waiting = self._waiting, []
                if not batch:
                    continue
                try:
                    await asyncio.to_thread(self._store.finish_all, [o for o, _ in batch])
                except Exception as exc:  # handed to each delivery, which retries (or not)
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                else:
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
                batch = []
        finally:  # stopped: whoever still waits is not left waiting for ever
            for _, done in batch + self._waiting:
                if not done.done():
                    done.cancel()

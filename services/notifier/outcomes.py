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
import time
from collections.abc import Callable

import structlog

from services.common.failurelog import FailureLog
from services.notifier.store import NotifierStore, Outcome

log = structlog.get_logger(__name__)

#: The first pause before an outcome the store refused is tried again; it doubles up to
#: :data:`LONGEST_PAUSE_SECONDS`.
FIRST_PAUSE_SECONDS = 0.1
LONGEST_PAUSE_SECONDS = 2.0


class OutcomeWriter:
    """Runs on the engine's loop: ``record`` from the deliveries, ``run`` as a task."""

    def __init__(self, store: NotifierStore) -> None:
        self._store = store
        self._waiting: list[tuple[Outcome, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        # Every delivery under way retries its outcome while the store is away (16 per
        # endpoint, each every 0.1-2 s): one warning for all of them, not one per retry.
        self._failures = FailureLog(
            "webhook.outcome_not_recorded", "webhook.outcome_recorded_again", logger=log
        )

    async def record_within(
        self, outcome: Outcome, lease_ends: float, stopping: Callable[[], bool]
    ) -> bool:
        """Store ``outcome``, retrying a failing store until the job's lease ends (monotonic
        seconds) or ``stopping()``; False when it gave up: the job is then claimed again
        after its lease and delivered again, under the same id."""
        pause = FIRST_PAUSE_SECONDS
        while True:
            try:
                # With the outcomes of the other deliveries that end meanwhile.
                await self.record(outcome)
            except Exception as exc:  # the store is down or busy: retried, then left to the lease
                give_up = stopping() or time.monotonic() + pause >= lease_ends
                self._failures.failed(
                    webhook=outcome.job.webhook_id,
                    delivery=outcome.job.id,
                    outcome=outcome.outcome,
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_seconds=None if give_up else pause,
                )
                if give_up:
                    return False
                await asyncio.sleep(pause)
                pause = min(pause * 2, LONGEST_PAUSE_SECONDS)
            else:
                self._failures.succeeded()
                return True

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

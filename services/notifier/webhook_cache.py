"""The webhooks as a notifier replica last read them from the shared store, and when it
reads them again (see :class:`WebhookCache`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from services.notifier.filters import EventFilter
from services.notifier.store import WebhookRow

# A webhook gets the events recorded after it was created, give or take this margin
# (the clocks of the ledger, which records, and of the notifier, which creates webhooks).
CREATED_MARGIN_SECONDS = 1.0
WEBHOOKS_MAX_AGE_SECONDS = 5.0


@dataclass
class Webhook:
    row: WebhookRow
    filter: EventFilter


@dataclass(frozen=True)
class ReadStart:
    """When a read of the webhooks started (wall clock), and after how many of this
    replica's changes."""

    at: float
    changes: int


class WebhookCache:
    """The webhooks, as this replica last read them from the shared store.

    A webhook created on another replica must still get every event recorded after it:
    so the cache is read again whenever a batch holds an event recorded (within the clock
    margin) after the cache was read, and at least every few seconds (deletions).
    Under steady traffic that is one small read per fetched batch; when the stream is
    quiet, none. (Reading only every 5 s lost the events that the other replica handled
    in the first seconds of a new webhook.) A store of this process alone (SQLite) sees no
    other replica's webhooks: there, the replica's own changes (``invalidate``) and the
    periodic read suffice, and no read per batch competes with deliveries for SQLite's
    single writer lock. A read during which this replica made a change may have missed
    it: the next batch reads again.
    """

    def __init__(self, clock: Callable[[], float] = time.time, *, shared: bool = True) -> None:
        self._clock = clock
        self._shared = shared
        self.hooks: list[Webhook] = []
        self._loaded_at: float | None = None  # wall-clock time of the last read
        self._changes = 0  # this replica's changes so far (created, changed, deleted)

    def invalidate(self) -> None:
        """This replica changed a webhook (called from a gRPC thread)."""
        self._changes += 1
        self._loaded_at = None

    def needs_load(self, newest_recorded: float) -> bool:
        loaded = self._loaded_at
        return (
            loaded is None
            or self._clock() - loaded > WEBHOOKS_MAX_AGE_SECONDS
            or (self._shared and newest_recorded + CREATED_MARGIN_SECONDS >= loaded)
        )

    def read_started(self) -> ReadStart:
        """Taken just before a read of the store (see :meth:`loaded`)."""
        return ReadStart(self._clock(), self._changes)

    def loaded(self, hooks: list[Webhook], started: ReadStart) -> None:
        """``hooks`` as read from the store by a read that started at ``started``."""
        self.hooks = hooks
        self._loaded_at = started.at if started.changes == self._changes else None

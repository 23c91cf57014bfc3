"""The store watch behind the ledger's health on PostgreSQL: a store that answers is
available, one that refuses is not, and one that does not answer at all (an open
connection to a host that hangs) is not either, within the time given, not never."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from services.common.sql import Database, StoreWatch


class ScriptedStore(Database):
    """A database whose ``SELECT 1`` answers, fails, or hangs until released."""

    dialect = "postgres"

    def __init__(self) -> None:
        self.mode = "answer"
        self.release = threading.Event()

    def q(self, statement: str) -> str:
        return statement

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        if self.mode == "refuse":
            raise psycopg.OperationalError("connection refused")
        if self.mode == "hang":
            # Bounded, so that a watch that waits for it fails the test rather than hangs it.
            self.release.wait(timeout=10)
        yield self

    def execute(self, statement: str) -> None:
        assert statement == "SELECT 1"

    def close(self) -> None:
        self.release.set()


def test_a_store_that_hangs_is_unavailable_within_the_time_given_and_back_after() -> None:
    store = ScriptedStore()
    changes: list[bool] = []
    watch = StoreWatch(store, interval=1.0, on_change=changes.append, answer_within=0.05)
    assert watch.check() is True and changes == [True]
    store.mode = "hang"
    assert watch.check() is False and changes == [True, False]
    # While that question waits, no other is asked: still unavailable, nothing new told.
    assert watch.check() is False and changes == [True, False]
    store.mode = "answer"
    store.release.set()  # the host answers again; the waiting question ends
    deadline = time.monotonic() + 5
    while not watch.check():  # the next question, once the waiting one has ended
        assert time.monotonic() < deadline, "the watch never asked again"
    assert changes == [True, False, True]
    store.mode = "refuse"
    assert watch.check() is False and changes == [True, False, True, False]

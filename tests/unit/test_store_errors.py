"""A store's full disk told apart from a store that cannot be reached, on the drivers' own
errors (SQLite's SQLITE_FULL, PostgreSQL's disk_full), bare and as the event store's
library wraps them."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
from eventsourcing.persistence import OperationalError

from services.common.store_errors import as_ledger_error, is_store_full, start_failure


def sqlite_full() -> sqlite3.OperationalError:
    """SQLite's own error for a database that can grow no more (a full disk says the same)."""
    db = sqlite3.connect(":memory:")
    try:
        db.execute("CREATE TABLE t (x BLOB)")
        db.execute("PRAGMA max_page_count = 3")
        with pytest.raises(sqlite3.OperationalError) as full:
            for _ in range(10):
                db.execute("INSERT INTO t VALUES (zeroblob(4096))")
        return full.value
    finally:
        db.close()


def wrapped(exc: BaseException) -> OperationalError:
    try:
        raise OperationalError(exc) from exc
    except OperationalError as outer:
        return outer


def test_a_full_disk_is_store_full_bare_and_wrapped() -> None:
    for full in (sqlite_full(), psycopg.errors.DiskFull("could not extend file")):
        assert is_store_full(full)
        assert is_store_full(wrapped(full))
        error = as_ledger_error(wrapped(full))
        assert error is not None
        assert (error.code, error.reason) == ("UNAVAILABLE", "STORE_FULL")


def test_a_store_that_cannot_be_reached_is_not_full() -> None:
    for lost in (
        sqlite3.OperationalError("database is locked"),
        psycopg.OperationalError("connection refused"),
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
    ):
        assert not is_store_full(lost)
        error = as_ledger_error(wrapped(lost))
        assert error is not None
        assert (error.code, error.reason) == ("UNAVAILABLE", "STORE_UNAVAILABLE")


def test_a_start_on_a_full_disk_says_so_not_that_the_store_is_unreachable() -> None:
    failure = start_failure(wrapped(sqlite_full()))
    assert failure is not None and failure[0] == "store_full", failure
    assert "free space" in failure[1]
    lost = start_failure(wrapped(psycopg.OperationalError("connection refused")))
    assert lost is not None and lost[0] == "store_unreachable", lost

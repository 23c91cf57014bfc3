"""SQLite's reads of the project's own tables never take the store's write lock.

``SQLiteDatabase.transaction`` begins with ``BEGIN IMMEDIATE``: the one write lock of the
whole database, which the event store's commits need too (a commit that finds it taken
waits in SQLite's busy handler). ``read`` begins a deferred transaction: in WAL mode a
reader and the writer go on side by side.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from services.common.sql import SQLiteDatabase


def _store(path: Path) -> SQLiteDatabase:
    db = SQLiteDatabase(str(path))
    db._conn.execute("PRAGMA journal_mode = WAL")  # as the event store's library sets it
    with db.transaction() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
        cur.execute("INSERT INTO t VALUES (1)")
    return db


def _commit_while_open(path: Path, open_one: str) -> float:
    """Seconds a writer on another connection waited to commit while ``open_one`` of the
    store's transactions stayed open (at most the writer's timeout, 0.3 s)."""
    db = _store(path)
    inside, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with getattr(db, open_one)() as cur:
            cur.execute("SELECT n FROM t")
            cur.fetchall()
            inside.set()
            leave.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(10)
    writer = sqlite3.connect(str(path), timeout=0.3, isolation_level=None)
    started = time.monotonic()
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO t VALUES (2)")
        writer.execute("COMMIT")
        waited = time.monotonic() - started
    except sqlite3.OperationalError as exc:  # database is locked: the timeout ran out
        assert "locked" in str(exc)
        waited = time.monotonic() - started
    finally:
        leave.set()
        holder.join(10)
        writer.close()
        db.close()
    return waited


def test_a_read_leaves_the_write_lock_to_the_writers(tmp_path: Path) -> None:
    assert _commit_while_open(tmp_path / "read.sqlite", "read") < 0.2
    # The contrast: the same read in a writing transaction holds every writer back.
    assert _commit_while_open(tmp_path / "write.sqlite", "transaction") >= 0.29


def test_a_read_sees_one_snapshot_and_rolls_back_on_error(tmp_path: Path) -> None:
    db = _store(tmp_path / "s.sqlite")
    other = sqlite3.connect(str(tmp_path / "s.sqlite"), isolation_level=None)
    with db.read() as cur:
        cur.execute("SELECT COUNT(*) FROM t")
        before = cur.fetchone()[0]
        other.execute("INSERT INTO t VALUES (3)")  # committed meanwhile, elsewhere
        cur.execute("SELECT COUNT(*) FROM t")
        assert cur.fetchone()[0] == before  # the snapshot of its first read
    with pytest.raises(sqlite3.OperationalError, match="no such table"), db.read() as cur:
        cur.execute("SELECT n FROM nowhere")
    with db.read() as cur:  # the failed read left no transaction open
        cur.execute("SELECT COUNT(*) FROM t")
        assert cur.fetchone()[0] == before + 1
    other.close()
    db.close()

"""Only one relay publishes at a time: the lock it holds while it does (a PostgreSQL
advisory lock, a file lock beside the SQLite database, or none for the in-memory store);
its holder dying releases it (see :mod:`services.ledger.relay`)."""

from __future__ import annotations

import fcntl
import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
import structlog

from services.common.sql import (
    postgres_connect,
)

# The relay's own logger: these lines are the relay's.
log = structlog.get_logger("services.ledger.relay")


class LeaderLock(ABC):
    """Held by at most one relay at a time; released when its holder dies."""

    @abstractmethod
    def try_acquire(self) -> bool: ...

    @property
    def unreachable(self) -> bool:
        """True when the last attempt could not ask the store (rather than finding the
        lock held by another relay)."""
        return False

    @abstractmethod
    def still_held(self) -> bool: ...

    @abstractmethod
    def release(self) -> None: ...


class SoleLeader(LeaderLock):
    """The in-memory store has one process by definition."""

    def try_acquire(self) -> bool:
        return True

    def still_held(self) -> bool:
        return True

    def release(self) -> None:
        return None


class FileLeader(LeaderLock):
    """An exclusive ``flock`` on a file beside the SQLite database."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def still_held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


class PostgresLeader(LeaderLock):
    """A session-level advisory lock, held on a connection of its own."""

    def __init__(self, store_env: Mapping[str, str], name: str) -> None:
        self._store_env = store_env
        digest = hashlib.sha256(f"incidentledger-relay:{name}".encode()).digest()
        self._key = int.from_bytes(digest[:8], "big", signed=True)
        self._conn: psycopg.Connection[Any] | None = None
        self._unreachable = False

    @property
    def unreachable(self) -> bool:
        return self._unreachable

    def try_acquire(self) -> bool:
        if self._conn is not None and self.still_held():
            return True
        # Not held, or its session was lost (a restart): ask for the lock afresh.
        try:
            conn = postgres_connect(self._store_env, autocommit=True)
        except psycopg.OperationalError as exc:
            self._store_failed(exc)
            return False
        try:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
        except psycopg.Error as exc:  # the server went away meanwhile
            conn.close()
            self._store_failed(exc)
            return False
        if self._unreachable:  # the line that ends the outage's warning
            log.info("relay.leader_lock_available")
        self._unreachable = False
        if not row or not row[0]:
            conn.close()
            return False
        self._conn = conn
        return True

    def _store_failed(self, exc: psycopg.Error) -> None:
        if not self._unreachable:  # once per outage: the relay may ask twice a second
            log.warning("relay.leader_lock_unavailable", error=f"{type(exc).__name__}: {exc}")
        self._unreachable = True

    def still_held(self) -> bool:
        if self._conn is None:
            return False
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            self.release()
            return False
        return True

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()  # ending the session releases the lock
            except psycopg.Error as exc:
                log.warning("relay.leader_release_failed", error=str(exc))
            self._conn = None


def leader_lock(store_env: Mapping[str, str], stream: str) -> LeaderLock:
    module = store_env.get("PERSISTENCE_MODULE", "eventsourcing.popo")
    if module == "eventsourcing.postgres":
        schema = store_env.get("POSTGRES_SCHEMA", "public")
        return PostgresLeader(store_env, f"{schema}:{stream}")
    dbname = store_env.get("SQLITE_DBNAME", ":memory:")
    if module == "eventsourcing.sqlite" and dbname != ":memory:" and "mode=memory" not in dbname:
        return FileLeader(Path(f"{dbname}.relay.lock"))
    return SoleLeader()

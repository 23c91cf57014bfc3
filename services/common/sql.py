"""SQL tables beside the event store: one small adapter for SQLite and PostgreSQL.

Projections and the relay keep their rows in the ledger's own database, so they
share its backups and, on PostgreSQL, its transactions' guarantees. Statements are
written with ``?`` placeholders; :meth:`Database.q` adapts them to the dialect.
With the in-memory event store (tests), an in-memory SQLite database stands in.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import psycopg
import structlog
from eventsourcing.utils import strtobool

log = structlog.get_logger(__name__)


def open_database(store_env: Mapping[str, str]) -> Database:
    """The database of the event store configured by ``store_env``."""
    module = store_env.get("PERSISTENCE_MODULE", "eventsourcing.popo")
    if module == "eventsourcing.postgres":
        return PostgresDatabase(store_env)
    if module == "eventsourcing.sqlite":
        return SQLiteDatabase(store_env.get("SQLITE_DBNAME", ":memory:"))
    return SQLiteDatabase(":memory:")


def postgres_connect(
    env: Mapping[str, str], *, autocommit: bool = False
) -> psycopg.Connection[Any]:
    """A connection with the eventsourcing library's POSTGRES_* settings."""
    return psycopg.connect(
        dbname=env.get("POSTGRES_DBNAME", "postgres"),
        host=env.get("POSTGRES_HOST", "127.0.0.1"),
        port=int(env.get("POSTGRES_PORT", "5432")),
        user=env.get("POSTGRES_USER", "postgres"),
        password=env.get("POSTGRES_PASSWORD", ""),
        connect_timeout=int(env.get("POSTGRES_CONNECT_TIMEOUT", "5")),
        autocommit=autocommit,
        options=f"-c search_path={env['POSTGRES_SCHEMA']}" if env.get("POSTGRES_SCHEMA") else "",
    )


def schema_lock_key(env: Mapping[str, str]) -> int:
    """The advisory lock key that guards table creation in one PostgreSQL schema."""
    schema = env.get("POSTGRES_SCHEMA") or "public"
    digest = hashlib.sha256(f"incidentledger-schema:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def is_postgres(env: Mapping[str, str]) -> bool:
    return env.get("PERSISTENCE_MODULE") == "eventsourcing.postgres"


def creates_tables(env: Mapping[str, str]) -> bool:
    """Whether a process with these store settings creates missing tables (the library's
    ``CREATE_TABLE``, default yes)."""
    return strtobool(env.get("CREATE_TABLE") or "y")


@contextmanager
def schema_lock(env: Mapping[str, str]) -> Iterator[None]:
    """Hold the schema lock while creating tables, so that concurrent creators take turns.

    On PostgreSQL, a session-level advisory lock (:func:`schema_lock_key`) on a connection
    of its own: two processes creating the same tables at once can otherwise fail on
    PostgreSQL's catalog, even with ``IF NOT EXISTS``. Ending the session releases the lock,
    also when the process dies. Other stores need none: SQLite serialises its writers, and
    an in-memory store is private to its process.
    """
    if not is_postgres(env):
        yield
        return
    key = schema_lock_key(env)
    with postgres_connect(env, autocommit=True) as conn:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if not row or not row[0]:
            log.info("schema.lock_waiting", schema=env.get("POSTGRES_SCHEMA") or "public")
            conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


class Database(ABC):
    dialect: str = ""

    @abstractmethod
    def q(self, statement: str) -> str:
        """The statement in this database's dialect."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Any]:
        """A cursor inside a transaction, committed on success."""

    @abstractmethod
    def close(self) -> None: ...


class DatabaseClosedError(RuntimeError):
    """The database was closed (the service is stopping)."""


class SQLiteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
        self._conn.isolation_level = None
        self._guard = threading.Lock()
        self._closed = False

    def q(self, statement: str) -> str:
        # SQLite has one writer at a time (BEGIN IMMEDIATE): row locks are implied.
        return statement.replace(" FOR UPDATE SKIP LOCKED", "").replace(" FOR UPDATE", "")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        with self._guard:
            if self._closed:
                raise DatabaseClosedError("the database is closed")
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def close(self) -> None:
        with self._guard:  # never while another thread is inside a transaction
            self._closed = True
            self._conn.close()


class PostgresDatabase(Database):
    dialect = "postgres"

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = dict(env)
        self._conn = postgres_connect(env)
        self._guard = threading.Lock()
        self._closed = False

    def q(self, statement: str) -> str:
        return statement.replace("?", "%s")

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Cursor[Any]]:
        """One transaction; a connection lost earlier (server restart) is replaced first.

        A transaction that loses its connection fails with ``psycopg.OperationalError``
        (the caller retries or reports it); the next one connects afresh.
        """
        with self._guard:
            if self._closed:
                raise DatabaseClosedError("the database is closed")
            if self._conn.closed or self._conn.broken:
                self._conn = postgres_connect(self._env)
            with self._conn.transaction(), self._conn.cursor() as cur:
                yield cur

    def close(self) -> None:
        with self._guard:
            self._closed = True
            self._conn.close()

"""SQL tables beside the event store: one small adapter for SQLite and PostgreSQL.

Projections and the relay keep their rows in the ledger's own database, so they
share its backups and, on PostgreSQL, its transactions' guarantees. Statements are
written with ``?`` placeholders; :meth:`Database.q` adapts them to the dialect.
With the in-memory event store (tests), an in-memory SQLite database stands in.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from eventsourcing.utils import strtobool

from services.common.config import declared
from services.common.store_errors import STORE_CONNECTION_ERRORS

log = structlog.get_logger(__name__)


def store_location(store_env: Mapping[str, str]) -> str:
    """Where the store of ``store_env`` lives (a file, or a server's database and schema):
    two databases with the same location hold the same tables. An in-memory store has
    none of its own (``""``): nothing else shares it."""
    module = store_env.get("PERSISTENCE_MODULE", "eventsourcing.popo")
    if module == "eventsourcing.postgres":
        host = store_env.get("POSTGRES_HOST", "127.0.0.1")
        port = store_env.get("POSTGRES_PORT", "5432")
        dbname = store_env.get("POSTGRES_DBNAME", "postgres")
        schema = (store_env.get("POSTGRES_SCHEMA") or "").strip() or "public"
        return f"postgres://{host}:{port}/{dbname}?schema={schema}"
    if module == "eventsourcing.sqlite":
        path = store_env.get("SQLITE_DBNAME", ":memory:")
        if path == ":memory:" or "mode=memory" in path:
            return ""
        return f"sqlite:{os.path.realpath(path)}"
    return ""


def open_database(
    store_env: Mapping[str, str], connections: int = 1, sqlite_pragmas: Sequence[str] = ()
) -> Database:
    """The database of the event store configured by ``store_env``; on PostgreSQL with
    up to ``connections`` sessions (transactions beyond that wait for one); on SQLite with
    ``sqlite_pragmas`` run once on its connection."""
    module = store_env.get("PERSISTENCE_MODULE", "eventsourcing.popo")
    if module == "eventsourcing.postgres":
        database: Database = PostgresDatabase(store_env, connections)
    elif module == "eventsourcing.sqlite":
        database = SQLiteDatabase(store_env.get("SQLITE_DBNAME", ":memory:"), sqlite_pragmas)
    else:
        database = SQLiteDatabase(":memory:", sqlite_pragmas)
    database.location = store_location(store_env)
    return database


@dataclass(frozen=True)
class StoreTimeouts:
    """How long the project's PostgreSQL sessions may wait, in whole seconds (0: no limit).

    ``lock`` bounds each wait for a lock (a replica frozen inside a transaction holds
    its row locks: without it, whoever wants them waits until it thaws); ``statement``
    bounds each statement; ``idle_in_transaction`` ends a session that sits inside a
    transaction doing nothing (a frozen or hung process), which releases its locks.
    The library reads the same ``POSTGRES_LOCK_TIMEOUT`` and
    ``POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT`` for its own connections.

    ``tcp`` is the client's side: those three are the server's, and a server whose host
    died (or the network to it) enforces nothing. Measured with PostgreSQL behind a
    dropped route: a call waiting for its answer hung until the test gave up (minutes;
    the kernel's keepalive starts after 2 hours, its retransmissions end after about 15
    minutes), the group commit's thread with it and every command behind that; with
    libpq's ``tcp_user_timeout`` and keepalives it failed after 3 s.
    """

    connect: int = declared("POSTGRES_CONNECT_TIMEOUT").default
    tcp: int = declared("POSTGRES_TCP_USER_TIMEOUT").default
    lock: int = declared("POSTGRES_LOCK_TIMEOUT").default
    statement: int = declared("POSTGRES_STATEMENT_TIMEOUT").default
    idle_in_transaction: int = declared("POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT").default

    @classmethod
    def from_env(cls, store_env: Mapping[str, str]) -> StoreTimeouts:
        def seconds(key: str, default: int) -> int:
            text = store_env.get(key) or ""
            try:
                value = int(text) if text else default
            except ValueError:
                raise ValueError(f"{key} must be whole seconds, not {text!r}") from None
            if value < 0:
                raise ValueError(f"{key} must not be negative, not {text!r}")
            return value

        return cls(
            connect=seconds("POSTGRES_CONNECT_TIMEOUT", cls.connect),
            tcp=seconds("POSTGRES_TCP_USER_TIMEOUT", cls.tcp),
            lock=seconds("POSTGRES_LOCK_TIMEOUT", cls.lock),
            statement=seconds("POSTGRES_STATEMENT_TIMEOUT", cls.statement),
            idle_in_transaction=seconds(
                "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT", cls.idle_in_transaction
            ),
        )

    def connection_kwargs(self) -> dict[str, Any]:
        """libpq's parameters of every connection: its connect timeout, the session
        settings, and how soon a dead server's host is given up (``tcp``): unacknowledged
        data for that long, or keepalive probes from half of it on, end the connection
        (Linux applies ``tcp_user_timeout`` to the probes too)."""
        kwargs: dict[str, Any] = {"connect_timeout": self.connect, "options": self.options()}
        if self.tcp:
            kwargs.update(tcp_user_timeout=self.tcp * 1000, keepalives=1, **self._keepalive())
        return kwargs

    def options(self) -> str:
        """The session settings, as libpq's ``options``; with ``tcp``, the server's side of
        the connection gives up a client gone silent as soon as the client gives it up:
        a session of a replica cut off from the database otherwise lives on in the server
        until its kernel gives up (2 hours and more), with its locks (the relay's
        advisory lock: no other replica's relay could publish meanwhile)."""
        options = (
            f"-c lock_timeout={self.lock * 1000} -c statement_timeout={self.statement * 1000}"
            f" -c idle_in_transaction_session_timeout={self.idle_in_transaction * 1000}"
        )
        if self.tcp:
            keepalive = self._keepalive()
            options += (
                f" -c tcp_user_timeout={self.tcp * 1000}"
                f" -c tcp_keepalives_idle={keepalive['keepalives_idle']}"
                f" -c tcp_keepalives_interval={keepalive['keepalives_interval']}"
                f" -c tcp_keepalives_count={keepalive['keepalives_count']}"
            )
        return options

    def _keepalive(self) -> dict[str, int]:
        """Probes from half of ``tcp`` on, each side's (libpq's names)."""
        return {
            "keepalives_idle": max(1, self.tcp // 2),
            "keepalives_interval": max(1, self.tcp // 4),
            "keepalives_count": 3,
        }


def postgres_connect(
    store_env: Mapping[str, str], *, autocommit: bool = False
) -> psycopg.Connection[Any]:
    """A connection with the eventsourcing library's POSTGRES_* settings and the
    session timeouts of :class:`StoreTimeouts`."""
    kwargs = StoreTimeouts.from_env(store_env).connection_kwargs()
    if store_env.get("POSTGRES_SCHEMA"):
        kwargs["options"] += f" -c search_path={store_env['POSTGRES_SCHEMA']}"
    return psycopg.connect(
        dbname=store_env.get("POSTGRES_DBNAME", "postgres"),
        host=store_env.get("POSTGRES_HOST", "127.0.0.1"),
        port=int(store_env.get("POSTGRES_PORT", "5432")),
        user=store_env.get("POSTGRES_USER", "postgres"),
        password=store_env.get("POSTGRES_PASSWORD", ""),
        autocommit=autocommit,
        **kwargs,
    )


def schema_lock_key(store_env: Mapping[str, str]) -> int:
    """The advisory lock key that guards table creation in one PostgreSQL schema."""
    schema = store_env.get("POSTGRES_SCHEMA") or "public"
    digest = hashlib.sha256(f"incidentledger-schema:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def is_postgres(store_env: Mapping[str, str]) -> bool:
    return store_env.get("PERSISTENCE_MODULE") == "eventsourcing.postgres"


def creates_tables(store_env: Mapping[str, str]) -> bool:
    """Whether a process with these store settings creates missing tables (the library's
    ``CREATE_TABLE``, default yes)."""
    return strtobool(store_env.get("CREATE_TABLE") or "y")


@contextmanager
def schema_lock(store_env: Mapping[str, str]) -> Iterator[None]:
    """Hold the schema lock while creating tables, so that concurrent creators take turns.

    On PostgreSQL, a session-level advisory lock (:func:`schema_lock_key`) on a connection
    of its own: two processes creating the same tables at once can otherwise fail on
    PostgreSQL's catalog, even with ``IF NOT EXISTS``. Ending the session releases the lock,
    also when the process dies. Other stores need none: SQLite serialises its writers, and
    an in-memory store is private to its process.
    """
    if not is_postgres(store_env):
        yield
        return
    key = schema_lock_key(store_env)
    with postgres_connect(store_env, autocommit=True) as conn:
        # Waiting for another creator is expected here, however long it takes.
        conn.execute("SET lock_timeout = 0")
        conn.execute("SET statement_timeout = 0")
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if not row or not row[0]:
            log.info("schema.lock_waiting", schema=store_env.get("POSTGRES_SCHEMA") or "public")
            conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


class Database(ABC):
    dialect: str = ""
    #: The store it opened (:func:`store_location`), when opened by :func:`open_database`.
    location: str = ""

    @abstractmethod
    def q(self, statement: str) -> str:
        """The statement in this database's dialect."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Any]:
        """A cursor inside a transaction, committed on success."""

    def read(self) -> AbstractContextManager[Any]:
        """A cursor for reads only: on SQLite one snapshot for all its reads; on PostgreSQL
        each statement sees what committed before it began (READ COMMITTED)."""
        return self.transaction()

    @abstractmethod
    def close(self) -> None: ...


class DatabaseClosedError(RuntimeError):
    """The database was closed (the service is stopping)."""


class SQLiteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, path: str, pragmas: Sequence[str] = ()) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
        self._conn.isolation_level = None
        for pragma in pragmas:  # outside any transaction: some may not change inside one
            self._conn.execute(pragma)
        self._guard = threading.Lock()
        self._closed = False

    def q(self, statement: str) -> str:
        # SQLite has one writer at a time (BEGIN IMMEDIATE): row locks are implied.
        return statement.replace(" FOR UPDATE SKIP LOCKED", "").replace(" FOR UPDATE", "")

    def transaction(self) -> AbstractContextManager[sqlite3.Cursor]:
        return self._begun("BEGIN IMMEDIATE")

    def read(self) -> AbstractContextManager[sqlite3.Cursor]:
        """Without SQLite's write lock (a deferred ``BEGIN``): in WAL mode a reader neither
        waits for the writer nor holds it back. ``transaction``'s ``BEGIN IMMEDIATE`` takes
        the one write lock even for a read, and a command whose commit found it taken
        waited in SQLite's busy handler, a millisecond at the least."""
        return self._begun("BEGIN")

    @contextmanager
    def _begun(self, begin: str) -> Iterator[sqlite3.Cursor]:
        with self._guard:
            if self._closed:
                raise DatabaseClosedError("the database is closed")
            cur = self._conn.cursor()
            cur.execute(begin)
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def truncate_log(self, wait: float) -> bool:
        """Copy the write-ahead log into the database file and empty it, so that no older
        version of a changed page is left in either file (with ``secure_delete``, what a
        change freed is zeroed in the new version). False when another connection's
        transaction held it more than ``wait`` seconds: while it waits, SQLite holds every
        writer back, so the wait is short, not the connection's timeout."""
        with self._guard:
            if self._closed:
                raise DatabaseClosedError("the database is closed")
            (usual,) = self._conn.execute("PRAGMA busy_timeout").fetchone()
            self._conn.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
            try:
                busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                self._conn.execute(f"PRAGMA busy_timeout = {int(usual)}")
        return int(busy) == 0

    def close(self) -> None:
        with self._guard:  # never while another thread is inside a transaction
            self._closed = True
            self._conn.close()


class PostgresDatabase(Database):
    """Up to ``connections`` sessions, opened when needed and kept for reuse.

    Each transaction takes a session of its own, so that with more than one a slow
    transaction (the projections' writer) never holds up the others (readers). A
    session is checked with an empty query before each transaction: one left dead by
    a server restart is replaced then, instead of failing its next user. When the
    server is unreachable, a transaction fails at once (``psycopg.OperationalError``);
    the next one connects afresh.
    """

    dialect = "postgres"

    def __init__(self, store_env: Mapping[str, str], connections: int = 1) -> None:
        self._store_env = dict(store_env)
        self._timeouts = StoreTimeouts.from_env(store_env)
        self._slots = threading.BoundedSemaphore(connections)
        self._connections = connections
        self._idle: list[psycopg.Connection[Any]] = [postgres_connect(store_env, autocommit=True)]
        self._guard = threading.Lock()  # guards _idle and _closed
        self._closed = False

    def q(self, statement: str) -> str:
        return statement.replace("?", "%s")

    def transaction(self) -> AbstractContextManager[psycopg.Cursor[Any]]:
        """One transaction, on a session that answered just before it began."""
        return self._session(transaction=True)

    def read(self) -> AbstractContextManager[psycopg.Cursor[Any]]:
        """Reads without ``BEGIN`` and ``COMMIT``, each statement in its own implicit
        transaction: under READ COMMITTED each statement of a transaction sees what
        committed before it began anyway, so the two round trips bought nothing (a
        projection query took four: the session's check, ``BEGIN``, the query, ``COMMIT``)."""
        return self._session(transaction=False)

    @contextmanager
    def _session(self, *, transaction: bool) -> Iterator[psycopg.Cursor[Any]]:
        if self._closed:
            raise DatabaseClosedError("the database is closed")
        # Sessions are busy only while their transactions run, and statements and lock
        # waits are bounded: a caller waits at most about that long for one.
        wait = self._timeouts.statement or None
        if not self._slots.acquire(timeout=wait):
            raise psycopg.OperationalError(
                f"all {self._connections} database sessions stayed busy for {wait} s"
            )
        try:
            conn = self._checkout()
            try:
                with conn.transaction() if transaction else nullcontext(), conn.cursor() as cur:
                    yield cur
            finally:
                self._checkin(conn)
        finally:
            self._slots.release()

    def _checkout(self) -> psycopg.Connection[Any]:
        while True:
            with self._guard:
                if self._closed:
                    raise DatabaseClosedError("the database is closed")
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return postgres_connect(self._store_env, autocommit=True)
            try:
                conn.execute("")  # the server may have ended the session meanwhile
            except psycopg.Error as exc:
                log.info("store.session_replaced", error=f"{type(exc).__name__}: {exc}")
                conn.close()
                continue
            return conn

    def _checkin(self, conn: psycopg.Connection[Any]) -> None:
        with self._guard:
            if not (self._closed or conn.closed or conn.broken):
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._guard:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:  # sessions in use are closed when their transactions end
            conn.close()


class StoreWatch:
    """Asks the store every ``interval`` seconds whether it answers, in a thread of its
    own, and calls ``on_change(available)`` at the first answer and whenever it changes.
    It owns ``db`` (a database of its own: its question never waits behind others).

    Readiness follows it: a replica that cannot reach its store says so, and a load
    balancer or an orchestrator sends callers elsewhere until it can again. A store that
    does not answer within ``answer_within`` seconds is unavailable too: an open connection
    to a host that hangs (a stalled network, a frozen proxy) would otherwise keep the
    question, and the health, waiting for good; the question goes on waiting in a thread
    of its own, and none is asked again until it ends.
    """

    def __init__(
        self,
        db: Database,
        interval: float,
        on_change: Callable[[bool], None],
        answer_within: float = 3.0,
    ) -> None:
        self._db = db
        self._interval = interval
        self._on_change = on_change
        self._answer_within = answer_within
        self._available: bool | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._asking: threading.Thread | None = None

    @property
    def available(self) -> bool | None:
        """Whether the store answered the last question (None before the first)."""
        return self._available

    def _ask(self) -> BaseException | None:
        """The store's answer within ``answer_within``: None when it answered, else why not
        (TimeoutError when it did not answer in time, or still has not)."""
        if self._asking is not None and self._asking.is_alive():
            return TimeoutError("the store has not answered the last question yet")
        answered = threading.Event()
        failures: list[BaseException] = []

        def question() -> None:
            try:
                with self._db.transaction() as cur:
                    cur.execute("SELECT 1")
            except BaseException as exc:  # handed to the asking thread, which decides
                failures.append(exc)
            finally:
                answered.set()

        self._asking = threading.Thread(target=question, name="store-watch-question", daemon=True)
        self._asking.start()
        if not answered.wait(self._answer_within):
            return TimeoutError(f"the store did not answer within {self._answer_within:g} s")
        return failures[0] if failures else None

    def check(self) -> bool:
        """Ask once now; tell ``on_change`` if the answer changed."""
        failure = self._ask()
        if failure is None:
            available = True
        elif isinstance(failure, (*STORE_CONNECTION_ERRORS, TimeoutError)):
            if self._available is not False:
                log.warning("store.unreachable", error=f"{type(failure).__name__}: {failure}")
            available = False
        else:
            raise failure  # closed (the service stops), or a bug
        if available != self._available:
            if available and self._available is False:
                log.info("store.reachable")
            self._available = available
            self._on_change(available)
        return available

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="store-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.check()
            except DatabaseClosedError:
                return
            self._stopping.wait(self._interval)

    def stop(self) -> None:
        """Stop asking, and close the database (the watch owns it)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._db.close()


def watch_store(
    store_env: Mapping[str, str], interval: float, on_change: Callable[[bool], None]
) -> StoreWatch | None:
    """On PostgreSQL, a started :class:`StoreWatch` of a database of its own, asking every
    ``interval`` seconds and telling ``on_change``; None for an embedded store (SQLite),
    which is always there. An answer later than a connection attempt may take
    (``POSTGRES_CONNECT_TIMEOUT``, 3 s by default; at least 1 s) is no answer: a hung host."""
    if not is_postgres(store_env):
        return None
    connect_timeout = float(store_env.get("POSTGRES_CONNECT_TIMEOUT") or 0) or 3.0
    watch = StoreWatch(
        open_database(store_env), interval, on_change, answer_within=max(1.0, connect_timeout)
    )
    watch.start()
    return watch


def table_exists(db: Database, name: str) -> bool:
    """Whether the store has the table ``name`` (PostgreSQL: in the connection's schema)."""
    with db.transaction() as cur:
        if db.dialect == "postgres":
            cur.execute(db.q("SELECT to_regclass(?) IS NOT NULL"), (name,))
        else:
            cur.execute(
                db.q("SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?"),
                (name,),
            )
        row = cur.fetchone()
    return bool(row and row[0])

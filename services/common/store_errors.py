"""Failures of the store's drivers (PostgreSQL, SQLite, the event store's library).

Kept apart from :mod:`services.common.errors`, which the domain imports: this module
loads the PostgreSQL driver. The adapters that talk to a store (the connection pool,
the SQL helpers, the relay, the projections, the audit) and the gRPC server's error
mapping import it.
"""

from __future__ import annotations

import sqlite3

import psycopg
import structlog
from eventsourcing.persistence import InterfaceError, OperationalError, ProgrammingError

from services.common.errors import LedgerError, Unavailable
from services.common.logging import clipped


class StoreUnreachableError(Exception):
    """The store did not answer its last connection attempt: the caller fails at once
    (the event store's library does not retry this one; see services/common/storepool.py)."""


class StoreNotMigratedError(Exception):
    """A table of the store is in the layout of an earlier version, which ``migrate`` moves
    into the current one; the start stops as for a missing table (``store_not_migrated``)."""


class StoreTooNewError(Exception):
    """The store's tables are in a layout that a later version migrated them to
    (services/common/store_format.py): this version stops at its start (``store_too_new``)."""


#: Failures of the store's connection (a database restart, a network cut): transient.
STORE_CONNECTION_ERRORS = (
    StoreUnreachableError,
    OperationalError,
    sqlite3.OperationalError,  # raw SQLite (the notifier's store): locked, unopenable
    InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)


#: PostgreSQL's SQLSTATE for a disk full (class 53, insufficient resources).
_PG_DISK_FULL = "53100"
#: SQLite's primary result code for a full disk (or a database at its maximum size).
_SQLITE_FULL = 13


def is_store_full(exc: BaseException) -> bool:
    """Whether the store refused a write for want of space: its disk is full (SQLite's
    ``SQLITE_FULL``, PostgreSQL's ``disk_full``), directly or as the event store's library
    wraps it."""
    seen: BaseException | None = exc
    for _ in range(5):  # the driver's error, a wrapper or two above it
        if seen is None:
            return False
        if isinstance(seen, psycopg.Error) and getattr(seen, "sqlstate", None) == _PG_DISK_FULL:
            return True
        if isinstance(seen, sqlite3.Error) and (
            getattr(seen, "sqlite_errorcode", None) == _SQLITE_FULL
            or "database or disk is full" in str(seen)
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def as_ledger_error(exc: BaseException) -> LedgerError | None:
    """The caller-facing error for an infrastructure failure, or None when it is a bug.

    A lost database connection is UNAVAILABLE (retry, with the same request id), not
    INTERNAL. So is a store whose disk is full, under a reason of its own: it answers, and
    "unreachable" sent operators looking at the network while the disk filled.
    """
    if is_store_full(exc):
        return Unavailable(
            "the store has no space left (its disk is full): nothing was recorded; retry (a "
            "command with the same request id) once space is freed",
            reason="STORE_FULL",
        )
    if isinstance(exc, STORE_CONNECTION_ERRORS):
        return Unavailable(
            "the store is unreachable; retry (a command with the same request id)",
            reason="STORE_UNAVAILABLE",
        )
    return None


#: The most of a store's error a failed start logs (a driver's message may be long).
START_ERROR_CHARS = 500


def logged_start_failure(service: str, exc: BaseException) -> bool:
    """Log, as one line (``{service}.store_unreachable``, ``{service}.store_not_migrated``,
    with what to check), a failed start that the store caused; False, logging nothing, for
    any other failure (a bug, which the caller raises)."""
    failure = start_failure(exc)
    if failure is None:
        return False
    event, hint = failure
    error = clipped(f"{type(exc).__name__}: {exc}", START_ERROR_CHARS)
    structlog.get_logger(f"services.{service}").error(f"{service}.{event}", error=error, hint=hint)
    return True


def start_failure(exc: BaseException) -> tuple[str, str] | None:
    """What a service that cannot start on its store says of it, instead of a traceback:
    the log event's name and what to do; None for any other failure (a bug: raised).

    A store a later version migrated, a store whose tables were not made, or are in an
    earlier version's layout (a replica started with ``CREATE_TABLE=n`` before ``migrate``),
    a store whose disk is full, then a store that cannot be reached."""
    text = str(exc)
    if isinstance(exc, StoreTooNewError):
        return (
            "store_too_new",
            "a later version migrated this store: run that version, or restore the backup "
            "taken before its migrate to run this one (docs/operations.md, Upgrading)",
        )
    if isinstance(exc, StoreNotMigratedError):
        return (
            "store_not_migrated",
            "the store's tables are from an earlier version: run `incident-ledger migrate` "
            "first (or start one service without CREATE_TABLE=n)",
        )
    if is_store_full(exc):
        return (
            "store_full",
            "the disk under the store is full (SQLITE_DBNAME's file system, or PostgreSQL's "
            "data directory): free space on it, then start again",
        )
    if isinstance(exc, psycopg.errors.UndefinedTable) or (
        isinstance(exc, (sqlite3.OperationalError, OperationalError, ProgrammingError))
        and ("no such table" in text or "does not exist" in text)
    ):
        return (
            "store_not_migrated",
            "the store's tables are missing: run `incident-ledger migrate` first (or start "
            "one service without CREATE_TABLE=n); or the settings name another store than "
            "the ledger's (POSTGRES_DBNAME, POSTGRES_SCHEMA, SQLITE_DBNAME)",
        )
    if isinstance(exc, STORE_CONNECTION_ERRORS):
        return (
            "store_unreachable",
            "the store cannot be reached: check PERSISTENCE_MODULE and the POSTGRES_* (or "
            "SQLITE_DBNAME) settings, that the database is up, and that the disk under it has "
            'space (SQLite says "disk I/O error" when it cannot map its shared memory)',
        )
    return None

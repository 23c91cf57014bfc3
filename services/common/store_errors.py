"""Failures of the store's drivers (PostgreSQL, SQLite, the event store's library).

Kept apart from :mod:`services.common.errors`, which the domain imports: this module
loads the PostgreSQL driver. The adapters that talk to a store (the connection pool,
the SQL helpers, the relay, the projections, the audit) and the gRPC server's error
mapping import it.
"""

from __future__ import annotations

import sqlite3

import psycopg
from eventsourcing.persistence import InterfaceError, OperationalError

from services.common.errors import LedgerError, Unavailable


class StoreUnreachableError(Exception):
    """The store did not answer its last connection attempt: the caller fails at once
    (the event store's library does not retry this one; see services/common/storepool.py)."""


#: Failures of the store's connection (a database restart, a network cut): transient.
STORE_CONNECTION_ERRORS = (
    StoreUnreachableError,
    OperationalError,
    sqlite3.OperationalError,  # raw SQLite (the notifier's store): locked, unopenable
    InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)


def as_ledger_error(exc: BaseException) -> LedgerError | None:
    """The caller-facing error for an infrastructure failure, or None when it is a bug.

    A lost database connection is UNAVAILABLE (retry, with the same request id), not
    INTERNAL.
    """
    if isinstance(exc, STORE_CONNECTION_ERRORS):
        return Unavailable(
            "the store is unreachable; retry (a command with the same request id)",
            reason="STORE_UNAVAILABLE",
        )
    return None

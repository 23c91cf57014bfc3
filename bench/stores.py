"""Fresh, empty event stores for one measurement: a SQLite file or a PostgreSQL schema.

The same environment variables as the tests (tests/support.py) and the service
(the eventsourcing library's own PERSISTENCE_MODULE, SQLITE_*, POSTGRES_*).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

STORES = ("sqlite", "postgres")

PG_SETTINGS = {
    "POSTGRES_HOST": os.environ.get("BENCH_POSTGRES_HOST", "127.0.0.1"),
    "POSTGRES_PORT": os.environ.get("BENCH_POSTGRES_PORT", "5432"),
    "POSTGRES_DBNAME": os.environ.get("BENCH_POSTGRES_DBNAME", "test"),
    "POSTGRES_USER": os.environ.get("BENCH_POSTGRES_USER", "postgres"),
    "POSTGRES_PASSWORD": os.environ.get("BENCH_POSTGRES_PASSWORD", ""),
}
# Connection pool of each Application (ledger) on PostgreSQL, as in the tests.
PG_POOL = {"POSTGRES_POOL_SIZE": "8", "POSTGRES_MAX_OVERFLOW": "16"}


def _pg_connect() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        host=PG_SETTINGS["POSTGRES_HOST"],
        port=int(PG_SETTINGS["POSTGRES_PORT"]),
        dbname=PG_SETTINGS["POSTGRES_DBNAME"],
        user=PG_SETTINGS["POSTGRES_USER"],
        password=PG_SETTINGS["POSTGRES_PASSWORD"],
        autocommit=True,
        connect_timeout=3,
    )


def postgres_problem() -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        _pg_connect().close()
    except psycopg.Error as exc:
        where = f"{PG_SETTINGS['POSTGRES_HOST']}:{PG_SETTINGS['POSTGRES_PORT']}"
        return f"PostgreSQL unreachable at {where}: {str(exc).strip().splitlines()[0]}"
    return None


@contextmanager
def fresh_store(kind: str, directory: Path) -> Iterator[dict[str, str]]:
    """The eventsourcing environment of a new, empty store; dropped afterwards (PostgreSQL)."""
    if kind == "sqlite":
        directory.mkdir(parents=True, exist_ok=True)
        yield {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(directory / f"ledger-{secrets.token_hex(4)}.sqlite"),
            "SQLITE_LOCK_TIMEOUT": "30",
        }
    elif kind == "postgres":
        schema = f"bench_{secrets.token_hex(6)}"
        with _pg_connect() as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        try:
            yield {
                "PERSISTENCE_MODULE": "eventsourcing.postgres",
                "POSTGRES_SCHEMA": schema,
                **PG_POOL,
                **PG_SETTINGS,
            }
        finally:
            with _pg_connect() as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")
    else:
        raise ValueError(f"unknown store {kind!r}")

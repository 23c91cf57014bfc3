"""PostgreSQL's reads of the project's own tables run without ``BEGIN`` and ``COMMIT``:
under READ COMMITTED each statement of a transaction sees what committed before it began
anyway, so the read side's queries and the key table's lookups spend no round trips on
them. Transactions (the writers) still begin and commit."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from services.common.sql import PostgresDatabase
from tests.support import store_environment

INTRANS, IDLE = psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.IDLE
pytestmark = pytest.mark.postgres


def test_a_read_is_no_transaction_and_a_write_is_one(tmp_path: Path) -> None:
    with store_environment("postgres", tmp_path) as env:
        db = PostgresDatabase(env)
        try:
            with db.transaction() as cur:
                cur.execute("CREATE TABLE t (n INTEGER)")
                cur.execute("INSERT INTO t VALUES (1)")
                assert cur.connection.info.transaction_status == INTRANS
            with db.read() as cur:
                cur.execute("SELECT n FROM t")
                assert cur.fetchall() == [(1,)]
                # Autocommit: the statement's own transaction ended with it.
                assert cur.connection.info.transaction_status == IDLE
                cur.execute("SELECT count(*) FROM t")
                assert cur.fetchone() == (1,)
            # A failed read leaves the session usable: nothing to roll back.
            with pytest.raises(psycopg.errors.UndefinedTable), db.read() as cur:
                cur.execute("SELECT n FROM missing")
            with db.read() as cur:
                cur.execute("SELECT n FROM t")
                assert cur.fetchall() == [(1,)]
        finally:
            db.close()

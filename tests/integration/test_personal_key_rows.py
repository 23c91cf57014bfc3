"""The key table's rows of many reports at once (an ingest batch naming many people) are
all stored, in statements within PostgreSQL's parameter limit, and storing them again adds
nothing. On SQLite and PostgreSQL."""

from __future__ import annotations

from uuid import uuid4

from services.common.sql import open_database
from services.ledger.personal_keys import (
    ROWS_PER_STATEMENT,
    SQLITE_PRAGMAS,
    IndexRow,
    KeyRing,
    KeyRow,
    KeyRows,
    PersonalKeys,
)
from tests.support import row_count

RING = KeyRing({"kek-test": bytes(range(32))}, "kek-test")


def test_many_reports_rows_are_all_stored_once(either_store: dict[str, str]) -> None:
    db = open_database(either_store, 2, sqlite_pragmas=SQLITE_PRAGMAS)
    keys = PersonalKeys(db, RING)
    subjects = 2 * ROWS_PER_STATEMENT + 500  # more key rows than index rows: a last part alone
    incidents = [str(uuid4()) for _ in range(subjects // 11 + 1)]
    key_rows: list[KeyRow] = []
    index_rows: list[IndexRow] = []
    for n in range(subjects):
        subject, incident = str(uuid4()), incidents[n // 11]
        digests = [f"{n:064x}"] if n % 2 else []
        key_rows.append(
            (subject, incident, "kek-test", "d3JhcHBlZA==", "2026-12-03", " ".join(digests))
        )
        index_rows.extend((d, subject, incident) for d in digests)
    rows = KeyRows(tuple(key_rows), tuple(index_rows))
    before = row_count(db, "personal_data_keys")  # the blind index key's row
    keys.store(rows)
    keys.store(rows)  # again: nothing more
    assert row_count(db, "personal_data_keys") - before == subjects
    assert row_count(db, "personal_data_index") == len(index_rows) == subjects // 2
    keys.close()

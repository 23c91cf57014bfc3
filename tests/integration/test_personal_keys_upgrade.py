"""A key table in its former layout (keyed by subject, with an index per incident and one
per indexed subject) is moved into the current one when a ledger first opens it: every
key still opens its subject's data, the blind index still finds them, erasure still takes
them out of it, and a second start finds nothing to move. On SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.common.sql import Database, SQLiteDatabase, open_database
from services.common.store_errors import StoreNotMigratedError
from services.ledger.domain.personal import Person, PersonalData
from services.ledger.personal_keys import SQLITE_PRAGMAS, KeyRing, PersonalKeys

RING = KeyRing({"kek-test": bytes(range(32))}, "kek-test")
SITI = PersonalData(
    reporter=Person(name="Siti Rahma", phone="+6281273456690", nik="1706014107900003"),
    witnesses=(Person(name="Budi Saksi", phone="+6285212345678"),),
)
ANI = PersonalData(reporter=Person(name="Ani", phone="+6281311112222"))

#: The former layout, as the ledger created it.
FORMER = (
    """CREATE TABLE personal_data_keys (
        subject_id TEXT PRIMARY KEY,
        incident_id TEXT NOT NULL,
        kek_id TEXT NOT NULL,
        wrapped_key TEXT,
        created_at TEXT NOT NULL,
        erased_at TEXT
    )""",
    """CREATE TABLE personal_data_index (
        digest TEXT NOT NULL,
        subject_id TEXT NOT NULL,
        PRIMARY KEY (digest, subject_id)
    )""",
    "CREATE INDEX personal_data_index_subject ON personal_data_index (subject_id)",
    "CREATE INDEX personal_data_keys_incident ON personal_data_keys (incident_id)",
)
KEY_COLUMNS = "subject_id, incident_id, kek_id, wrapped_key, created_at, erased_at"


def rows(db: Database, statement: str) -> list[Any]:
    with db.transaction() as cur:
        cur.execute(statement)
        return list(cur.fetchall())


def former_store(db: Database, scratch: Path) -> tuple[PersonalData, PersonalData]:
    """Two reports' keys in the former layout of ``db``: sealed by a key table in a
    scratch file, then written row for row as the former layout held them."""
    made = PersonalKeys(SQLiteDatabase(str(scratch)), RING)
    siti, ani = made.seal(SITI), made.seal(ANI)
    made.close()
    source = SQLiteDatabase(str(scratch))
    keys = rows(source, f"SELECT {KEY_COLUMNS} FROM personal_data_keys")  # noqa: S608
    index = rows(source, "SELECT digest, subject_id FROM personal_data_index")
    source.close()
    assert len(keys) == 4 and len(index) == 4  # the index key, three people; NIK + 3 phones
    with db.transaction() as cur:
        for statement in FORMER:
            cur.execute(statement)
        cur.executemany(
            db.q(f"INSERT INTO personal_data_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"),  # noqa: S608
            [tuple(r) for r in keys],
        )
        cur.executemany(
            db.q("INSERT INTO personal_data_index (digest, subject_id) VALUES (?, ?)"),
            [tuple(r) for r in index],
        )
    return siti, ani


def test_a_former_key_table_is_moved_and_still_opens_finds_and_erases(
    either_store: dict[str, str], tmp_path: Path
) -> None:
    db = open_database(either_store, 2, sqlite_pragmas=SQLITE_PRAGMAS)
    siti, ani = former_store(db, tmp_path / "scratch.sqlite")
    assert siti.sealed is not None and ani.sealed is not None
    keys = PersonalKeys(db, RING)
    incident = siti.sealed.incident_id
    reporter, witness = siti.sealed.subjects
    assert keys.open_subject(incident, reporter) == SITI.reporter
    assert keys.open_subject(incident, witness) == SITI.witnesses[0]
    assert keys.open_subject(ani.sealed.incident_id, ani.sealed.subjects[0]) == ANI.reporter
    assert [k.subject_id for k in keys.find("nik", "1706014107900003")] == [reporter.subject_id]
    assert [k.subject_id for k in keys.find("phone", "+6285212345678")] == [witness.subject_id]
    # Nothing of the former layout is left.
    tables = (
        "SELECT name FROM sqlite_master"
        if db.dialect == "sqlite"
        else "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        " UNION SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
    )
    names = {str(r[0]) for r in rows(db, tables)}
    assert not {n for n in names if "former" in n or n.startswith("personal_data_keys_inc")}
    assert "personal_data_index_subject" not in names

    assert keys.destroy(incident, [reporter.subject_id]) == 1
    assert keys.open_subject(incident, reporter) is None
    assert keys.find("nik", "1706014107900003") == []
    assert keys.find("phone", "+6281273456690") == []
    assert [k.subject_id for k in keys.find("phone", "+6285212345678")] == [witness.subject_id]
    keys.close()

    # A second start: nothing to move, everything where it was.
    again = PersonalKeys(open_database(either_store, 2, sqlite_pragmas=SQLITE_PRAGMAS), RING)
    assert again.open_subject(incident, witness) == SITI.witnesses[0]
    assert again.open_subject(incident, reporter) is None
    assert len(again.find("phone", "+6281311112222")) == 1
    again.close()


def test_a_read_only_start_refuses_a_former_key_table(
    either_store: dict[str, str], tmp_path: Path
) -> None:
    db = open_database(either_store, 2, sqlite_pragmas=SQLITE_PRAGMAS)
    former_store(db, tmp_path / "scratch.sqlite")
    with pytest.raises(StoreNotMigratedError, match="former layout"):
        PersonalKeys(db, RING, create=False)
    db.close()

"""The keys of a report that failed to save are swept; a saved report's never are
(docs/personal-data.md, "Keys of a report that failed"). On SQLite and PostgreSQL.

A report's keys are written before its events. A report sent again with its request id
is answered from its first result (AIP-155), but only after its people were sealed
again, under new keys for a new incident that is never saved: the case of every report
whose save fails after its keys were written.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from services.common.sql import Database, open_database
from services.ledger.application import Ledger
from services.ledger.domain.commands import ReportIncident
from services.ledger.domain.personal import Person, PersonalData
from services.ledger.personal_keys import SQLITE_PRAGMAS, KeyRing, PersonalKeys
from tests.support import reference, store_environment
from tests.unit.incident_builders import envelope_for

RING = KeyRing({"kek-test": bytes(range(32))}, "kek-test")
PEOPLE = PersonalData(
    reporter=Person(name="Siti Rahma", phone="+6281273456690", nik="1706014107900003"),
    witnesses=(Person(name="Budi Saksi", phone="+6285212345678"),),
)
HOUR = timedelta(hours=1)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
    with store_environment(request.param, tmp_path) as env:
        yield env


def count(db: Database, table: str) -> int:
    with db.transaction() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {table}")  # noqa: S608 - the test's own names
        row = cur.fetchone()
    return int(row[0]) if row else 0


def subjects(db: Database) -> int:
    with db.transaction() as cur:
        cur.execute(
            db.q("SELECT COUNT(*) FROM personal_data_keys WHERE subject_id <> ?"),
            ("blind-index",),
        )
        row = cur.fetchone()
    return int(row[0]) if row else 0


def test_unsaved_reports_keys_are_swept_and_saved_ones_kept(store: dict[str, str]) -> None:
    db = open_database(store, 2, sqlite_pragmas=SQLITE_PRAGMAS)
    keys = PersonalKeys(db, RING)
    ledger = Ledger(reference(), env=store, personal_keys=keys)
    try:
        report = ReportIncident(
            "Vote buying near the market",
            "",
            "money_politics",
            "",
            {"kecamatan": "kota_mukomuko"},
            PEOPLE,
        )
        sent = envelope_for("kesbangpol", request_id="device-7/report-1")
        first = ledger.execute(sent, report)
        again = ledger.execute(sent, report)  # sealed again, then answered from the record
        assert again.replayed and again.incident_id == first.incident_id
        assert subjects(db) == 4  # two people, sealed twice: two keys open nothing
        index = count(db, "personal_data_index")
        assert index == 6  # each time: a NIK and two phones

        # Younger than the grace period: kept (its report may still be saving).
        assert ledger.delete_unsaved_personal_keys(HOUR) == 0
        assert subjects(db) == 4

        assert ledger.delete_unsaved_personal_keys(timedelta(0)) == 2
        assert subjects(db) == 2 and count(db, "personal_data_index") == 3
        assert ledger.delete_unsaved_personal_keys(timedelta(0)) == 0  # nothing left

        # The saved report's people are whole: found, and their data opens.
        found = keys.find("phone", "+6281273456690")
        assert [f.incident_id for f in found] == [first.incident_id]
        incident = ledger.get_incident(first.incident_id)
        opened = [keys.open_subject(incident.id, s.sealed) for s in incident.subjects.values()]
        assert sorted(p.name for p in opened if p) == ["Budi Saksi", "Siti Rahma"]
    finally:
        ledger.close()
        keys.close()

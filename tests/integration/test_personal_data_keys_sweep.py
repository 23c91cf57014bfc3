"""A report's keys are stored in its events' transaction: a report that is not saved
leaves none (docs/personal-data.md, "Keys of a report that failed"). Keys written apart
from their report (by an earlier version of the ledger, or where the key table is not in
the event store) are swept; a saved report's never are. On SQLite and PostgreSQL.

A report sent again with its request id is answered from its first result (AIP-155), but
only after its people were sealed again, under new keys for a new incident that is never
saved: the case of every report whose save fails after it was sealed.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from uuid import UUID

import pytest

from services.common.errors import AlreadyExists
from services.common.sql import Database, open_database
from services.ledger.application import Ledger
from services.ledger.domain.commands import ReportIncident
from services.ledger.domain.personal import Person, PersonalData
from services.ledger.personal_keys import SQLITE_PRAGMAS, KeyRing, PersonalKeys
from tests.support import reference, row_count
from tests.unit.incident_builders import envelope_for

RING = KeyRing({"kek-test": bytes(range(32))}, "kek-test")
PEOPLE = PersonalData(
    reporter=Person(name="Siti Rahma", phone="+6281273456690", nik="1706014107900003"),
    witnesses=(Person(name="Budi Saksi", phone="+6285212345678"),),
)
HOUR = timedelta(hours=1)


def subjects(db: Database) -> int:
    with db.transaction() as cur:
        cur.execute(
            db.q("SELECT COUNT(*) FROM personal_data_keys WHERE subject_id <> ?"),
            ("blind-index",),
        )
        row = cur.fetchone()
    return int(row[0]) if row else 0


REPORT = ReportIncident(
    "Vote buying near the market", "", "money_politics", "", {"kecamatan": "kota_mukomuko"}, PEOPLE
)


def test_a_report_that_is_not_saved_leaves_no_keys(either_store: dict[str, str]) -> None:
    db = open_database(either_store, 2, sqlite_pragmas=SQLITE_PRAGMAS)
    keys = PersonalKeys(db, RING)
    ledger = Ledger(reference(), env=either_store, personal_keys=keys)
    try:
        sent = envelope_for("kesbangpol", request_id="device-7/report-1")
        first = ledger.execute(sent, REPORT)
        assert (subjects(db), row_count(db, "personal_data_index")) == (2, 3)  # a NIK, two phones
        again = ledger.execute(sent, REPORT)  # sealed again, then answered from the record
        assert again.replayed and again.incident_id == first.incident_id
        other = replace(REPORT, title="Another report under the same request id")
        with pytest.raises(AlreadyExists):  # sealed, then refused: REQUEST_ID_REUSED
            ledger.execute(sent, other)
        # Neither left keys: they were to be stored with events that were never saved.
        assert (subjects(db), row_count(db, "personal_data_index")) == (2, 3)
        assert ledger.delete_unsaved_personal_keys(timedelta(0)) == 0
        opened = saved_people(ledger, keys, first.incident_id)
        assert opened == ["Budi Saksi", "Siti Rahma"]
    finally:
        ledger.close()
        keys.close()


def test_keys_written_apart_from_their_report_are_swept_and_saved_ones_kept(
    either_store: dict[str, str],
) -> None:
    db = open_database(either_store, 2, sqlite_pragmas=SQLITE_PRAGMAS)
    keys = PersonalKeys(db, RING)
    ledger = Ledger(reference(), env=either_store, personal_keys=keys)
    try:
        first = ledger.execute(envelope_for("kesbangpol"), REPORT)
        # Keys stored in a transaction of their own, for a report never saved: what an
        # earlier ledger left when a report failed after its keys were written.
        keys.seal(PEOPLE)
        assert subjects(db) == 4
        assert row_count(db, "personal_data_index") == 6

        # Younger than the grace period: kept (its report may still be saving).
        assert ledger.delete_unsaved_personal_keys(HOUR) == 0
        assert subjects(db) == 4

        assert ledger.delete_unsaved_personal_keys(timedelta(0)) == 2
        assert subjects(db) == 2 and row_count(db, "personal_data_index") == 3
        assert ledger.delete_unsaved_personal_keys(timedelta(0)) == 0  # nothing left

        # The saved report's people are whole: found, and their data opens.
        found = keys.find("phone", "+6281273456690")
        assert [f.incident_id for f in found] == [first.incident_id]
        assert saved_people(ledger, keys, first.incident_id) == ["Budi Saksi", "Siti Rahma"]
    finally:
        ledger.close()
        keys.close()


def saved_people(ledger: Ledger, keys: PersonalKeys, incident_id: UUID) -> list[str]:
    incident = ledger.get_incident(incident_id)
    opened = [keys.open_subject(incident.id, s.sealed) for s in incident.subjects.values()]
    return sorted(p.name for p in opened if p)

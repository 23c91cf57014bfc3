"""The layout of a service's tables a store records (services/common/store_format.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.common.sql import Database, open_database
from services.common.store_errors import StoreTooNewError
from services.common.store_format import check_format, record_format


@pytest.fixture
def db() -> Iterator[Database]:
    database = open_database(
        {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": ":memory:"}
    )
    try:
        yield database
    finally:
        database.close()


def recorded(db: Database) -> dict[str, int]:
    with db.transaction() as cur:
        cur.execute("SELECT service, version FROM incidentledger_store_format")
        return {str(service): int(version) for service, version in cur.fetchall()}


def test_a_store_made_before_layouts_were_recorded_is_read_by_every_version(db: Database) -> None:
    check_format(db, "ledger", 1)  # no table: layout 0


def test_each_service_records_its_own_layout_and_never_a_lower_one(db: Database) -> None:
    record_format(db, "ledger", 1)
    record_format(db, "notifier", 1)
    record_format(db, "ledger", 3)
    record_format(db, "ledger", 2)  # an older version's record does not lower it
    assert recorded(db) == {"ledger": 3, "notifier": 1}
    check_format(db, "ledger", 3)
    check_format(db, "notifier", 1)


def test_a_later_layout_stops_an_older_service_naming_both(db: Database) -> None:
    record_format(db, "ledger", 2)
    with pytest.raises(StoreTooNewError) as refused:
        check_format(db, "ledger", 1)
    assert "layout 2" in str(refused.value) and "layout 1 at most" in str(refused.value)
    check_format(db, "notifier", 1)  # another service's tables are its own

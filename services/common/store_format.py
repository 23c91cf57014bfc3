"""Which layout of a service's tables a store holds, so that an older service refuses a
store a newer one has migrated.

A ledger of an earlier version started on a store that a later version has migrated is
not refused by anything of its own: it reads the newer tables as it knows them and writes
rows the newer version then refuses (docs/operations.md, "Upgrading"). From this version
on, each service records the layout it created or migrated its tables to (table
``incidentledger_store_format``: a row per service, its ``version``), and stops at its
start, before it reads or writes anything else, on a store whose recorded layout is newer
than its own (``store_too_new``, exit 1). A store made before the table existed has no
row: layout 0, which every version reads (or migrates).

Raise :data:`LEDGER_FORMAT` or :data:`NOTIFIER_FORMAT` with a change of that service's
tables that an earlier version would misread or damage; ``migrate`` (and a start that
creates the tables) records it.
"""

from __future__ import annotations

from services.common.sql import Database, table_exists
from services.common.store_errors import StoreTooNewError

TABLE = "incidentledger_store_format"

#: The layout of the ledger's tables this version creates and reads.
LEDGER_FORMAT = 1
#: The layout of the notifier's tables this version creates and reads.
NOTIFIER_FORMAT = 1


def check_format(db: Database, service: str, version: int) -> None:
    """:class:`StoreTooNewError` when the store records a layout of ``service``'s tables
    newer than ``version``."""
    if not table_exists(db, TABLE):
        return
    with db.transaction() as cur:
        cur.execute(db.q(f"SELECT version FROM {TABLE} WHERE service = ?"), (service,))  # noqa: S608 - a constant
        row = cur.fetchone()
    if row is not None and int(row[0]) > version:
        raise StoreTooNewError(
            f"the store's {service} tables are in layout {int(row[0])}, which a later version "
            f"migrated them to; this version reads layout {version} at most"
        )


def record_format(db: Database, service: str, version: int) -> None:
    """Record that the store holds ``service``'s tables in layout ``version`` (never a
    lower one than it records: a start of an older version is refused before this)."""
    with db.transaction() as cur:
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} ("
            "service TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )
        cur.execute(
            db.q(
                f"INSERT INTO {TABLE} (service, version) VALUES (?, ?) "  # noqa: S608 - a constant
                f"ON CONFLICT (service) DO UPDATE SET version = excluded.version "
                f"WHERE {TABLE}.version < excluded.version"
            ),
            (service, version),
        )

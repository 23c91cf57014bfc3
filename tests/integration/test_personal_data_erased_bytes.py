"""An erased person's key leaves no byte behind in a SQLite store's files: not in the
database file (an older version of the key table's page, or a copy left by a page split),
not in its write-ahead log. Whoever later holds the key-encryption key and a copy of the
files can then not open the erased data (docs/personal-data.md, "Free space")."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from uuid import UUID

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.common.sql import open_database
from services.ledger.application import Ledger
from services.ledger.domain.commands import ErasePersonalData, ReportIncident
from services.ledger.domain.personal import Person, PersonalData
from services.ledger.personal_keys import SQLITE_PRAGMAS, KeyRing, PersonalKeys
from services.ledger.seals import Sealer
from tests.support import reference, store_environment
from tests.unit.incident_builders import COORDINATOR, LOCATION, REPORTER, envelope_for

RING = KeyRing({"kek-test": bytes(range(32))}, "kek-test")
#: Enough reports that the key table's pages split many times, before and after erasure.
REPORTS = 400


def report(ledger: Ledger, n: int) -> UUID:
    people = PersonalData(
        reporter=Person(f"Pelapor {n}", f"0812{n:08d}", f"170601{n:010d}", f"Jl. Kenari {n}"),
        witnesses=(Person(f"Saksi {n}", f"0813{n:08d}"),),
    )
    command = ReportIncident("Amplop dibagikan", "", "money_politics", "", dict(LOCATION), people)
    return ledger.execute(envelope_for(REPORTER), command).incident_id


def wrapped_keys(path: str, incident_id: UUID) -> list[bytes]:
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute(
            "SELECT wrapped_key FROM personal_data_keys WHERE incident_id = ?",
            (str(incident_id),),
        ).fetchall()
    assert len(rows) == 2, rows
    return [text.encode() for (text,) in rows]  # as stored: base64


def files_holding(directory: Path, secrets: list[bytes]) -> dict[str, int]:
    """Each file of the store (database, log, shared memory) and how many of the secrets
    its bytes hold."""
    found = {}
    for path in sorted(directory.glob("ledger.sqlite*")):
        data = path.read_bytes()
        held = sum(1 for secret in secrets if secret in data)
        if held:
            found[path.name] = held
    return found


def test_an_erased_persons_key_is_in_no_byte_of_the_sqlite_files(tmp_path: Path) -> None:
    with store_environment("sqlite", tmp_path) as env:
        ledger = Ledger(reference(), env=env, sealer=Sealer(Ed25519PrivateKey.generate()))
        ledger.personal_keys = PersonalKeys(
            open_database(env, 2, sqlite_pragmas=SQLITE_PRAGMAS), RING
        )
        try:
            incidents = [report(ledger, n) for n in range(REPORTS)]
            erased = incidents[:: REPORTS // 8]
            secrets = [s for i in erased for s in wrapped_keys(env["SQLITE_DBNAME"], i)]
            kept = wrapped_keys(env["SQLITE_DBNAME"], incidents[1])
            # The keys' pages copied into the database file, as SQLite does from time to
            # time (and at every close): the erasure must not leave this version behind.
            with closing(sqlite3.connect(env["SQLITE_DBNAME"])) as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            assert files_holding(tmp_path, secrets) == {"ledger.sqlite": len(secrets)}
            for incident_id in erased:
                subjects = tuple(ledger.get_incident(incident_id).subjects)
                erase = ErasePersonalData(incident_id, 0, subjects, "asked by the person")
                ledger.erase_personal_data(envelope_for(COORDINATOR), erase)
            for n in range(REPORTS, REPORTS + 50):  # the ledger goes on
                report(ledger, n)
            assert files_holding(tmp_path, secrets) == {}
            assert files_holding(tmp_path, kept), "a key not erased must still be there"
        finally:
            ledger.personal_keys.close()
            ledger.close()

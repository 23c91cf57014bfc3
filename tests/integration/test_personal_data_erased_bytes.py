"""An erased person's key leaves no byte behind in a SQLite store's files: not in the
database file (an older version of the key table's page, or a copy left by a page split),
not in its write-ahead log. Whoever later holds the key-encryption key and a copy of the
files can then not open the erased data (docs/personal-data.md, "Free space")."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.testing import capture_logs

from services.common.sql import open_database
from services.ledger.application import Ledger
from services.ledger.domain.commands import ErasePersonalData, ReportIncident
from services.ledger.domain.personal import Person, PersonalData, SubjectRole
from services.ledger.personal_keys import SQLITE_PRAGMAS, KeyRing, PersonalKeys
from services.ledger.seals import Sealer
from tests.support import reference, require_postgres, store_environment
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
            if files_holding(tmp_path, secrets):
                # An erasure's scrub that met another transaction for more than SCRUB_WAIT
                # (a busy machine: once in a whole suite's run) leaves it to the upkeep,
                # by design (the test below); the upkeep's turn, then.
                ledger.personal_keys.scrub()
            assert files_holding(tmp_path, secrets) == {}
            assert files_holding(tmp_path, kept), "a key not erased must still be there"
        finally:
            ledger.personal_keys.close()
            ledger.close()


def test_a_long_read_defers_the_scrub_to_the_upkeep_without_holding_the_erasure(
    tmp_path: Path,
) -> None:
    """While the scrub waits for a reader, SQLite holds every writer back: an erasure that
    meets a long read (an export, say) leaves the scrub to the upkeep rather than wait."""
    with store_environment("sqlite", tmp_path) as env:
        ledger = Ledger(reference(), env=env, sealer=Sealer(Ed25519PrivateKey.generate()))
        ledger.personal_keys = PersonalKeys(
            open_database(env, 2, sqlite_pragmas=SQLITE_PRAGMAS), RING
        )
        try:
            incident_id = report(ledger, 1)
            secrets = wrapped_keys(env["SQLITE_DBNAME"], incident_id)
            subjects = tuple(ledger.get_incident(incident_id).subjects)
            erase = ErasePersonalData(incident_id, 0, subjects, "asked by the person")
            erased = threading.Event()

            def run_erasure() -> None:
                ledger.erase_personal_data(envelope_for(COORDINATOR), erase)
                erased.set()

            with closing(sqlite3.connect(env["SQLITE_DBNAME"], isolation_level=None)) as reader:
                reader.execute("BEGIN")
                reader.execute("SELECT count(*) FROM personal_data_keys").fetchone()
                with capture_logs() as logs:
                    worker = threading.Thread(target=run_erasure)
                    worker.start()
                    # The read stays open until the erasure answers (or for long enough
                    # to tell an erasure that waits for it from one that does not).
                    assert erased.wait(timeout=10), "the erasure waited for the reader"
                reader.execute("COMMIT")
            worker.join()
            assert "personal_data.scrub_deferred" in [entry["event"] for entry in logs]
            ledger.scrub_personal_keys()  # the upkeep's turn, the read over
            assert files_holding(tmp_path, secrets) == {}
        finally:
            ledger.personal_keys.close()
            ledger.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_key_of_an_erased_person_restored_from_a_backup_is_destroyed_again(
    kind: str, tmp_path: Path
) -> None:
    """A key table restored from a backup older than an erasure holds the erased person's
    key (and blind index) again: with the key-encryption key, their data could be opened
    once more. The upkeep reads the erasures the log records and destroys such keys again;
    an erasure younger than a minute is left to its own request."""
    if kind == "postgres":
        require_postgres()
    with store_environment(kind, tmp_path) as env:
        ledger = Ledger(reference(), env=env, sealer=Sealer(Ed25519PrivateKey.generate()))
        db = open_database(env, 2, sqlite_pragmas=SQLITE_PRAGMAS)
        ledger.personal_keys = keys = PersonalKeys(db, RING)
        try:
            incident_id = report(ledger, 1)
            other = report(ledger, 2)
            reporter = next(
                s.subject_id
                for s in ledger.get_incident(incident_id).subjects.values()
                if s.sealed.role is SubjectRole.REPORTER
            )
            nik = f"170601{1:010d}"
            with db.read() as cur:  # the backup, taken before the erasure
                cur.execute(
                    db.q("SELECT * FROM personal_data_keys WHERE incident_id = ?"),
                    (str(incident_id),),
                )
                backup_keys = cur.fetchall()
                cur.execute(
                    db.q("SELECT * FROM personal_data_index WHERE incident_id = ?"),
                    (str(incident_id),),
                )
                backup_index = cur.fetchall()
            erase = ErasePersonalData(incident_id, 0, (reporter,), "asked by the person")
            ledger.erase_personal_data(envelope_for(COORDINATOR), erase)
            assert [k.subject_id for k in keys.find("nik", nik)] == []

            with db.transaction() as cur:  # the backup restored
                cur.execute(
                    db.q("DELETE FROM personal_data_keys WHERE incident_id = ?"),
                    (str(incident_id),),
                )
                cur.execute(
                    db.q("DELETE FROM personal_data_index WHERE incident_id = ?"),
                    (str(incident_id),),
                )
                for table, rows in (
                    ("personal_data_keys", backup_keys),
                    ("personal_data_index", backup_index),
                ):
                    marks = ", ".join("?" for _ in rows[0])
                    cur.executemany(db.q(f"INSERT INTO {table} VALUES ({marks})"), rows)  # noqa: S608
            assert [k.subject_id for k in keys.find("nik", nik)] == [reporter]
            assert keys.undestroyed({incident_id: {reporter}}) == {incident_id: [reporter]}

            # Just recorded: its request may still be destroying the keys; not yet looked at.
            with capture_logs() as logs:
                position, destroyed = ledger.destroy_keys_of_erased()
            assert (position, destroyed) == (0, 0)  # the first erasure of the log
            assert not [e for e in logs if e["event"] == "personal_data.erased_key_found"]

            with capture_logs() as logs:
                position, destroyed = ledger.destroy_keys_of_erased(position, settle=timedelta(0))
            assert destroyed == 1
            found = [e for e in logs if e["event"] == "personal_data.erased_key_found"]
            assert [(e["incident"], e["subjects"], e["log_level"]) for e in found] == [
                (f"incidents/{incident_id}", 1, "warning")
            ]
            assert [k.subject_id for k in keys.find("nik", nik)] == []
            assert keys.undestroyed({incident_id: {reporter}}) == {}
            witness = {s for s in ledger.get_incident(incident_id).subjects} - {reporter}
            assert keys.undestroyed({incident_id: witness, other: set()}) == {
                incident_id: list(witness)
            }, "only the erased person's key is destroyed"
            assert position > 0
            # From where it stopped: nothing more to do.
            assert ledger.destroy_keys_of_erased(position, settle=timedelta(0)) == (position, 0)
        finally:
            keys.close()
            ledger.close()

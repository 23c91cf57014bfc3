"""The keys of personal data: one AES-256-GCM key per data subject, kept in a key table
beside the event store, wrapped by a key-encryption key (KEK); a keyed blind index to find
a subject by phone or NIK. See docs/personal-data.md.

- A subject's data is encrypted under their own data key (DEK) before the ``Reported``
  event is made, bound (as associated data) to the incident, the subject and their role:
  the event, and everything made from it, holds ciphertext only.
- The table ``personal_data_keys`` keeps each DEK wrapped by a KEK, with the KEK's id;
  a report's rows are inserted with its events, in their transaction (the event store's
  recorder, :func:`insert_key_rows`), so keys and events are saved together or not at all.
  KEKs come from ``LEDGER_PERSONAL_DATA_KEYS`` (``id:base64key``, comma-separated, the
  first wraps new keys, the others still unwrap what they wrapped): rotating is putting
  a new key first; :meth:`PersonalKeys.rewrap` moves old rows under it.
- Erasing a subject overwrites their wrapped DEK with NULL and deletes their blind index
  rows (on SQLite with ``secure_delete``, so the old bytes do not linger in free pages,
  then :meth:`PersonalKeys.scrub`, so no older page version lingers in the files).
  Without the DEK the ciphertext in the events, the stream and every export is noise.
- The blind index key (HMAC-SHA256) is a random key of the table's own, wrapped like a
  DEK: rotating the KEK keeps the index valid. It also keys the digest that stands for
  personal data in idempotency fingerprints.
- At start every KEK id the table uses must be configured and must open a key it
  wrapped: a wrong or missing KEK stops the ledger with a clear message.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import secrets
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.common.config import ConfigError, required_in_production
from services.common.datafiles import make_private_dir
from services.common.errors import DataLoss
from services.common.sql import Database, SQLiteDatabase
from services.common.store_errors import StoreNotMigratedError
from services.ledger.domain.personal import (
    Person,
    PersonalData,
    SealedReport,
    SealedSubject,
    SubjectRole,
)

log = structlog.get_logger(__name__)

KEY_BYTES = 32
NONCE_BYTES = 12
#: Generated development KEKs have ids with this prefix; production refuses them.
DEV_PREFIX = "dev-"
#: The key table's row of the blind index key.
INDEX_ROW = "blind-index"
DEK_AAD = b"incidentledger/personal-data/dek/"
INDEX_AAD = b"incidentledger/personal-data/index-key"

#: The key table's own SQLite connection (reads, erasures, rotation, and the keys of a store
#: that cannot take them in its events' transaction): in WAL mode a commit then appends to
#: the log without waiting for the disk; the event store's next commit (synchronous FULL)
#: syncs the same log, and with it what came before. Destroyed keys are overwritten in the
#: file, not only unlinked (secure_delete). A report's keys, written by the event store's
#: recorder in its events' transaction, are synced with them.
SQLITE_PRAGMAS = ("PRAGMA synchronous = NORMAL", "PRAGMA secure_delete = ON")

#: How long a scrub waits for the other connections' transactions (a long read, an export)
#: before it leaves the work to the next upkeep: SQLite holds writers back meanwhile.
SCRUB_WAIT = 0.25

KEYS_TABLE = "personal_data_keys"
INDEX_TABLE = "personal_data_index"

#: The key table's layout: two tables, each one B-tree keyed as it is read, so that a
#: report's rows touch as few pages as they can. Every read of a key knows its incident (a
#: subject is named by an incident's events; the blind index rows carry it), so the keys
#: are ordered by incident then subject: a report's keys are neighbours, and the sweep
#: reads by incident. A subject's blind index digests are kept beside their key, so that
#: erasure deletes the index rows by their own key. With the former layout (a rowid per
#: row and an index per second order), a report naming two people wrote 19 pages to the
#: SQLite log; now 14, against 5.5 for a report naming nobody (docs/performance.md).
#: ``{without_rowid}``: SQLite's clause for a table that is its primary key's B-tree.
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS personal_data_keys (
        incident_id TEXT NOT NULL,
        subject_id TEXT NOT NULL,
        kek_id TEXT NOT NULL,
        wrapped_key TEXT,
        created_at TEXT NOT NULL,
        erased_at TEXT,
        index_digests TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (incident_id, subject_id)
    ){without_rowid}""",
    """CREATE TABLE IF NOT EXISTS personal_data_index (
        digest TEXT NOT NULL,
        subject_id TEXT NOT NULL,
        incident_id TEXT NOT NULL,
        PRIMARY KEY (digest, subject_id)
    ){without_rowid}""",
)

#: A row of ``personal_data_keys`` (subject, incident, KEK id, wrapped key, created at,
#: blind index digests joined by spaces) and one of ``personal_data_index`` (digest,
#: subject, incident).
KeyRow = tuple[str, str, str, str, str, str]
IndexRow = tuple[str, str, str]

#: The inserts of a report's keys, in the transaction of its events (``{keys}`` and
#: ``{index}`` the tables' names as the recorder's dialect writes them, ``{values}`` the
#: rows' placeholders). Inserted again by a command that runs again (its first save
#: failed): a no-op where the rows are there already (stored in a transaction of their
#: own, :meth:`PersonalKeys.store`).
INSERT_KEY_VALUES = (
    "INSERT INTO {keys} (subject_id, incident_id, kek_id, wrapped_key, created_at,"
    " index_digests) VALUES {values} ON CONFLICT (incident_id, subject_id) DO NOTHING"
)
INSERT_INDEX_VALUES = (
    "INSERT INTO {index} (digest, subject_id, incident_id) VALUES {values}"
    " ON CONFLICT (digest, subject_id) DO NOTHING"
)
#: On SQLite, one row at a time (``executemany``; ``?`` placeholders).
INSERT_KEYS = INSERT_KEY_VALUES.replace("{values}", "(?, ?, ?, ?, ?, ?)")
INSERT_INDEX = INSERT_INDEX_VALUES.replace("{values}", "(?, ?, ?)")
#: On PostgreSQL a report's rows go in as one statement of plain values, the key rows in a
#: data-modifying WITH: psycopg dumps scalars in C. CPU of the commit thread a report naming
#: two people (in-process, 2 x 1,000 reports, a loaded machine): two ``executemany`` 141-189
#: µs, arrays through ``unnest`` (psycopg dumps lists in Python) 141-161 µs, this 80-90 µs.
#: Rows per statement stay well under PostgreSQL's 65,535 parameters.
ROWS_PER_STATEMENT = 2_000


@dataclass(frozen=True)
class KeyRows:
    """What the key table stores for sealed reports: their subjects' wrapped keys and
    blind index entries, to insert in the transaction of the reports' events."""

    keys: tuple[KeyRow, ...] = ()
    index: tuple[IndexRow, ...] = ()

    @classmethod
    def joined(cls, parts: Iterable[KeyRows]) -> KeyRows:
        keys: list[KeyRow] = []
        index: list[IndexRow] = []
        for part in parts:
            keys.extend(part.keys)
            index.extend(part.index)
        return cls(tuple(keys), tuple(index))

    def __bool__(self) -> bool:
        return bool(self.keys or self.index)


def insert_key_rows(
    cursor: Any, rows: KeyRows, keys_table: str, index_table: str, mark: str
) -> None:
    """Insert ``rows`` with ``cursor``, inside the transaction the caller holds (the event
    store's recorder, saving the events that use the keys). ``mark``: the driver's
    placeholder (``?`` or ``%s``); the tables' names as the store's dialect needs them."""
    if mark == "%s":
        for start in range(0, max(len(rows.keys), len(rows.index)), ROWS_PER_STATEMENT):
            part = slice(start, start + ROWS_PER_STATEMENT)
            keys, index = rows.keys[part], rows.index[part]
            cursor.execute(
                _values_statement(keys_table, index_table, len(keys), len(index)),
                [value for row in (*keys, *index) for value in row],
            )
        return
    if rows.keys:
        cursor.executemany(INSERT_KEYS.format(keys=keys_table), rows.keys)
    if rows.index:
        cursor.executemany(INSERT_INDEX.format(index=index_table), rows.index)


def _values_statement(keys_table: str, index_table: str, keys: int, index: int) -> str:
    """The PostgreSQL insert of ``keys`` key rows and ``index`` index rows (either may be
    none): one statement, the key rows' insert a data-modifying WITH when there are both."""
    parts = []
    if keys:
        values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * keys)
        parts.append(INSERT_KEY_VALUES.format(keys=keys_table, values=values))
    if index:
        values = ", ".join(["(%s, %s, %s)"] * index)
        parts.append(INSERT_INDEX_VALUES.format(index=index_table, values=values))
    return parts[0] if len(parts) == 1 else f"WITH keyed AS ({parts[0]}) {parts[1]}"


#: The PostgreSQL advisory lock held while the key table is created or upgraded.
SCHEMA_LOCK = 0x1ED6E9_0001


def _schema(dialect: str) -> list[str]:
    clause = " WITHOUT ROWID" if dialect == "sqlite" else ""
    return [statement.format(without_rowid=clause) for statement in SCHEMA]


def _former_layout(cursor: Any, dialect: str) -> bool:
    """Whether the key table exists in its former layout (no ``index_digests``)."""
    if dialect == "sqlite":
        cursor.execute("SELECT name FROM pragma_table_info(?)", (KEYS_TABLE,))
    else:
        cursor.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = %s",
            (KEYS_TABLE,),
        )
    columns = {str(row[0]) for row in cursor.fetchall()}
    return bool(columns) and "index_digests" not in columns


def _upgrade(cursor: Any, dialect: str) -> None:
    """Move the key table from its former layout into :data:`SCHEMA`, in the caller's
    transaction: every key, wrapped as it was, and every blind index row, with the
    digests beside their subject's key."""
    joined = "group_concat(i.digest, ' ')" if dialect == "sqlite" else "string_agg(i.digest, ' ')"
    for table in (KEYS_TABLE, INDEX_TABLE):
        cursor.execute(f"ALTER TABLE {table} RENAME TO {table}_former")
        if dialect == "postgres":  # the primary key's index keeps its name: free it
            cursor.execute(f"ALTER INDEX IF EXISTS {table}_pkey RENAME TO {table}_former_pkey")
    for statement in _schema(dialect):
        cursor.execute(statement)
    cursor.execute(
        f"INSERT INTO {KEYS_TABLE} (incident_id, subject_id, kek_id, wrapped_key,"  # noqa: S608
        " created_at, erased_at, index_digests)"
        " SELECT k.incident_id, k.subject_id, k.kek_id, k.wrapped_key, k.created_at,"
        f" k.erased_at, COALESCE((SELECT {joined} FROM {INDEX_TABLE}_former i"
        f" WHERE i.subject_id = k.subject_id), '') FROM {KEYS_TABLE}_former k"
    )
    keys = int(cursor.rowcount or 0)
    cursor.execute(
        f"INSERT INTO {INDEX_TABLE} (digest, subject_id, incident_id)"  # noqa: S608
        f" SELECT i.digest, i.subject_id, k.incident_id FROM {INDEX_TABLE}_former i"
        f" JOIN {KEYS_TABLE}_former k ON k.subject_id = i.subject_id"
    )
    for table in (INDEX_TABLE, KEYS_TABLE):
        cursor.execute(f"DROP TABLE {table}_former")
    log.info("personal_data.key_table_upgraded", keys=keys)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


@dataclass(frozen=True)
class KeyRing:
    """The key-encryption keys by id; ``current`` wraps new keys. ``source`` names where
    they came from (a setting or a file), ``generated`` that a development key was made
    just now because there was none."""

    keys: dict[str, bytes]
    current: str
    source: str = field(default="", compare=False)
    generated: bool = field(default=False, compare=False)

    @classmethod
    def parse(cls, text: str, source: str) -> KeyRing:
        """``id:base64key[,id:base64key...]``, the first the current one; each key 32 bytes."""
        keys: dict[str, bytes] = {}
        order: list[str] = []
        for part in (p.strip() for p in text.replace("\n", ",").split(",")):
            if not part:
                continue
            kek_id, sep, encoded = part.partition(":")
            if not sep or not kek_id:
                raise ConfigError(f"{source}: each key is written id:base64key")
            try:
                key = _unb64(encoded.strip())
            except (binascii.Error, ValueError):
                raise ConfigError(f"{source}: key {kek_id!r} is not base64") from None
            if len(key) != KEY_BYTES:
                raise ConfigError(f"{source}: key {kek_id!r} must be {KEY_BYTES} bytes")
            if kek_id in keys:
                raise ConfigError(f"{source}: key id {kek_id!r} is given twice")
            keys[kek_id] = key
            order.append(kek_id)
        if not order:
            raise ConfigError(f"{source}: no key-encryption key")
        return cls(keys, order[0], source)

    @classmethod
    def generate_text(cls, kek_id: str) -> str:
        return f"{kek_id}:{_b64(AESGCM.generate_key(bit_length=256))}\n"

    def check_production(self, source: str) -> None:
        """A development key (generated, ``dev-`` id) has no place in production."""
        dev = sorted(k for k in self.keys if k.startswith(DEV_PREFIX))
        if dev:
            raise ConfigError(
                f"{source}: development key-encryption keys {dev} are refused in production"
            )


def load_key_ring(*, keys: str | None, key_dir: Path, production: bool, variable: str) -> KeyRing:
    """The configured KEKs; in development, unset, a key generated once in ``key_dir``."""
    if keys is not None:
        ring = KeyRing.parse(keys, variable)
    elif production:
        raise ConfigError(required_in_production(variable, from_file=True))
    else:
        path = key_dir / "personal-data.keys"
        generated = False
        if not path.exists():
            make_private_dir(key_dir)
            text = KeyRing.generate_text(f"{DEV_PREFIX}{secrets.token_hex(4)}")
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process generated it first: use that one
            else:
                with os.fdopen(fd, "w") as out:
                    out.write(text)
                generated = True
                log.warning(
                    "personal_data.dev_key_generated",
                    file=str(path),
                    note=f"development key; set {variable} in production",
                )
        ring = replace(KeyRing.parse(path.read_text(), str(path)), generated=generated)
    if production:
        ring.check_production(variable)
    return ring


@dataclass(frozen=True)
class SubjectKey:
    """A subject's entry in the key table (``erased``: their key is destroyed)."""

    subject_id: UUID
    incident_id: UUID
    erased: bool


class KekCipher:
    """Wraps and unwraps data keys with the key-encryption keys of ``ring`` (the current
    one wraps). Pickled as its ring: the ledger's intake process wraps with it too."""

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring
        # One cipher per KEK, made once: a report naming two people wraps two keys.
        self._keks = {kek_id: AESGCM(key) for kek_id, key in ring.keys.items()}

    def __reduce__(self) -> tuple[Any, ...]:
        return (KekCipher, (self.ring,))

    def wrap(self, subject: str, key: bytes) -> str:
        nonce = os.urandom(NONCE_BYTES)
        aad = INDEX_AAD if subject == INDEX_ROW else DEK_AAD + subject.encode()
        return _b64(nonce + self._keks[self.ring.current].encrypt(nonce, key, aad))

    def unwrap(self, subject: str, kek_id: str, wrapped: str) -> bytes:
        data = _unb64(wrapped)
        aad = INDEX_AAD if subject == INDEX_ROW else DEK_AAD + subject.encode()
        return self._keks[kek_id].decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], aad)


class PersonalSealer:
    """Seals a report's personal data: a new key per person, the data encrypted under it,
    the key wrapped (:class:`KekCipher`), the blind index digests. It needs no store (the
    key table's rows it makes are saved with the report's events), so the ledger's intake
    process seals the reports of a field device's batch with a copy of it (pickled as its
    keys, through the pipe to that child; services/ledger/intake.py)."""

    def __init__(self, kek: KekCipher, index_key: bytes) -> None:
        self._kek = kek
        self._index_key = index_key

    def __reduce__(self) -> tuple[Any, ...]:
        return (PersonalSealer, (self._kek, self._index_key))

    def _mac(self, label: str, value: str) -> str:
        # The one-shot form: a quarter of what an HMAC object costs (four per report
        # naming a reporter with phone and NIK and a witness with a phone).
        return hmac.digest(self._index_key, f"{label}\n{value}".encode(), "sha256").hex()

    def digest(self, data: PersonalData) -> str:
        """The keyed digest that stands for the plaintext in a request's fingerprint."""
        document = json.dumps(data.to_plain(), sort_keys=True, separators=(",", ":"))
        return self._mac("fingerprint", document)

    def index_digest(self, kind: str, value: str) -> str:
        """The blind index entry of a normalised phone (``phone``) or NIK (``nik``)."""
        return self._mac(kind, value)

    def seal_unstored(self, data: PersonalData) -> tuple[PersonalData, KeyRows]:
        """The sealed data, and the key table's rows that hold its keys, wrapped, and its
        blind index entries (:meth:`PersonalKeys.seal_unstored`)."""
        rows: list[KeyRow] = []
        index: list[IndexRow] = []
        sealed = self._sealed(data, rows, index)
        return sealed, KeyRows(tuple(rows), tuple(index))

    def _sealed(
        self,
        data: PersonalData,
        rows: list[KeyRow],
        index: list[IndexRow],
    ) -> PersonalData:
        """One report's people sealed; their key rows and index entries added to those."""
        incident_id = uuid4()
        subjects: list[SealedSubject] = []
        now = _now()
        incident = str(incident_id)
        for role, person in data.people():
            subject_id = uuid4()
            subject = str(subject_id)
            dek = AESGCM.generate_key(bit_length=256)
            nonce = os.urandom(NONCE_BYTES)
            plaintext = json.dumps(person.to_plain(), sort_keys=True).encode()
            ciphertext = AESGCM(dek).encrypt(nonce, plaintext, _aad(incident_id, subject_id, role))
            anonymous = data.anonymous and role is SubjectRole.REPORTER
            subjects.append(
                SealedSubject(subject_id, role, anonymous, _b64(nonce), _b64(ciphertext))
            )
            digests = [
                self.index_digest(kind, value)
                for kind, value in (("nik", person.nik), ("phone", person.phone))
                if value
            ]
            index.extend((digest, subject, incident) for digest in digests)
            wrapped = self._kek.wrap(subject, dek)
            rows.append(
                (subject, incident, self._kek.ring.current, wrapped, now, " ".join(digests))
            )
        return PersonalData(
            reporter=data.reporter,
            anonymous=data.anonymous,
            witnesses=data.witnesses,
            digest=self.digest(data),
            sealed=SealedReport(incident_id, tuple(subjects)),
        )


class PersonalKeys:
    """The key table and the blind index; :meth:`open` checks the KEKs against it."""

    def __init__(self, db: Database, ring: KeyRing, *, create: bool = True) -> None:
        self._db = db
        self._ring = ring
        self._kek = KekCipher(ring)
        if create:
            with db.transaction() as cur:
                if db.dialect == "postgres":  # replicas starting together: one at a time
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                if _former_layout(cur, db.dialect):
                    _upgrade(cur, db.dialect)
                for statement in _schema(db.dialect):
                    cur.execute(statement)
        else:
            with db.transaction() as cur:
                if _former_layout(cur, db.dialect):
                    raise StoreNotMigratedError(
                        "the personal data key table has its former layout: run "
                        "`incident-ledger migrate` (or start one ledger with "
                        "CREATE_TABLE=y), which moves it into the current one"
                    )
        #: What seals a report's personal data (the ledger's, and its intake process's).
        self.sealer = PersonalSealer(self._kek, self._open())

    # -------------------------------------------------------------- start

    def _open(self) -> bytes:
        """The blind index key (made on first start); ConfigError when a KEK the table
        uses is not configured or does not open what it wrapped."""
        with self._db.read() as cur:
            # An erased person's row keeps the id of the KEK that wrapped the key destroyed,
            # and nothing it would open: counted, it made a retired KEK needed for ever (a
            # rotation could not end once anyone had been erased).
            cur.execute(
                self._db.q(
                    "SELECT DISTINCT kek_id FROM personal_data_keys WHERE wrapped_key IS NOT NULL"
                )
            )
            used = sorted(str(row[0]) for row in cur.fetchall())
        missing = [k for k in used if k not in self._ring.keys]
        if missing:
            given = self._ring.source or "LEDGER_PERSONAL_DATA_KEYS"
            if self._ring.generated and self._ring.source:
                # The key this start generated in place of the missing file opens nothing
                # here: removed, so that the next start says again that the file is missing
                # (left, it was taken for the store's own, and the hint was lost).
                Path(self._ring.source).unlink(missing_ok=True)
            what = (
                f"{given} was missing, and the development key generated in its place is "
                "not one of them: put back the file the store's keys were written with"
                if self._ring.generated
                else "give the key-encryption keys the store's keys were written with"
            )
            raise ConfigError(
                f"the personal data key table holds keys wrapped by key-encryption keys "
                f"{missing}, which {given} does not give: {what} (a backup of the keys, "
                "docs/operations.md, Backups); without them no person's data can be read"
            )
        for kek_id in used:
            self._check_kek(kek_id)
        index_key = self._row_key("", INDEX_ROW)
        if index_key is None:
            wrapped = self._wrap(INDEX_ROW, AESGCM.generate_key(bit_length=256))
            with self._db.transaction() as cur:
                cur.execute(
                    self._db.q(
                        "INSERT INTO personal_data_keys (subject_id, incident_id, kek_id,"
                        " wrapped_key, created_at) VALUES (?, '', ?, ?, ?)"
                        " ON CONFLICT (incident_id, subject_id) DO NOTHING"
                    ),
                    (INDEX_ROW, self._ring.current, wrapped, _now()),
                )
            index_key = self._row_key("", INDEX_ROW)
        if index_key is None:
            raise RuntimeError("the blind index key could not be stored")
        return index_key

    def _check_kek(self, kek_id: str) -> None:
        with self._db.read() as cur:
            cur.execute(
                self._db.q(
                    "SELECT subject_id, wrapped_key FROM personal_data_keys"
                    " WHERE kek_id = ? AND wrapped_key IS NOT NULL LIMIT 1"
                ),
                (kek_id,),
            )
            row = cur.fetchone()
        if row is None:
            return
        try:
            self._unwrap(str(row[0]), kek_id, str(row[1]))
        except InvalidTag:
            given = self._ring.source or "LEDGER_PERSONAL_DATA_KEYS"
            raise ConfigError(
                f"key-encryption key {kek_id!r} of {given} does not open the keys it wrapped: "
                "it is not the key they were wrapped with (the same id, other bytes). Put back "
                "the key-encryption keys the store's keys were written with, from their backup "
                "(docs/operations.md, Backups); without them no person's data can be read"
            ) from None

    def _row_key(self, incident: str, subject: str) -> bytes | None:
        """The key of the incident's subject; None once destroyed or without a row."""
        row = self._key_row(incident, subject)
        if row is None:
            return None
        kek_id, wrapped = row
        return None if wrapped is None else self._unwrap(subject, kek_id, wrapped)

    def _key_row(self, incident: str, subject: str) -> tuple[str, str | None] | None:
        """The KEK id and wrapped key (None once destroyed) of the incident's subject;
        None when the table has no row for them."""
        with self._db.read() as cur:
            cur.execute(
                self._db.q(
                    "SELECT kek_id, wrapped_key FROM personal_data_keys"
                    " WHERE incident_id = ? AND subject_id = ?"
                ),
                (incident, subject),
            )
            row = cur.fetchone()
        if row is None:
            return None
        return str(row[0]), None if row[1] is None else str(row[1])

    def _wrap(self, subject: str, key: bytes) -> str:
        return self._kek.wrap(subject, key)

    def _unwrap(self, subject: str, kek_id: str, wrapped: str) -> bytes:
        return self._kek.unwrap(subject, kek_id, wrapped)

    def digest(self, data: PersonalData) -> str:
        """The keyed digest that stands for the plaintext in a request's fingerprint."""
        return self.sealer.digest(data)

    def index_digest(self, kind: str, value: str) -> str:
        """The blind index entry of a normalised phone (``phone``) or NIK (``nik``)."""
        return self.sealer.index_digest(kind, value)

    # ---------------------------------------------------------------- seal

    def seal(self, data: PersonalData) -> PersonalData:
        """The personal data with its digest and its sealed form, for a new incident: a
        new key per person, stored wrapped with their blind index entries in a
        transaction of their own (:meth:`seal_unstored` leaves them to the caller)."""
        (sealed,) = self.seal_many([data])
        return sealed

    def seal_many(self, batch: Sequence[PersonalData]) -> list[PersonalData]:
        """:meth:`seal` for several reports, their keys stored in one transaction."""
        sealed = [self.seal_unstored(data) for data in batch]
        self.store(KeyRows.joined(rows for _, rows in sealed))
        return [data for data, _ in sealed]

    def seal_unstored(self, data: PersonalData) -> tuple[PersonalData, KeyRows]:
        """:meth:`seal` without storing the keys: the sealed data, and the key table's
        rows that hold its keys, wrapped, and its blind index entries. The ledger stores
        them with the report's events, in their transaction (the recorder calls
        :func:`insert_key_rows`), so a report that fails to save leaves no keys behind
        and no event is stored without its keys."""
        return self.sealer.seal_unstored(data)

    @property
    def location(self) -> str:
        """The store the key table lives in (:func:`~services.common.sql.store_location`)."""
        return self._db.location

    def store(self, rows: KeyRows) -> None:
        """Store ``rows`` in a transaction of their own: for an event store that cannot
        take them in the events' (one in memory, or another database than the key
        table's). Called before the events are saved, so a report that then fails to
        save leaves keys that open nothing (swept later), never data no key opens."""
        if not rows:
            return
        with self._db.transaction() as cur:
            if self._db.dialect == "postgres":
                # No wait for this commit's flush: the report's own commit, later in the same
                # write-ahead log, flushes it too.
                cur.execute("SET LOCAL synchronous_commit = off")
            insert_key_rows(
                cur, rows, KEYS_TABLE, INDEX_TABLE, "%s" if self._db.dialect == "postgres" else "?"
            )

    # ---------------------------------------------------------------- read

    def open_subject(self, incident_id: UUID, sealed: SealedSubject) -> Person | None:
        """The subject's data; None once their key is destroyed. DataLoss when the key
        table has no key for them in this incident (a key is never deleted, only
        destroyed; and a ciphertext moved to another incident does not open there), or
        their key row holds a key wrapped for another subject (rows changed in the store:
        each key is wrapped bound to its subject)."""
        subject = str(sealed.subject_id)
        unreadable = DataLoss(
            f"the personal data of subject {subject} does not decrypt",
            reason="PERSONAL_DATA_UNREADABLE",
            metadata={"subject": subject},
        )
        row = self._key_row(str(incident_id), subject)
        if row is None:
            raise unreadable
        kek_id, wrapped = row
        if wrapped is None:
            return None
        try:
            key = self._unwrap(subject, kek_id, wrapped)
            plaintext = AESGCM(key).decrypt(
                _unb64(sealed.nonce),
                _unb64(sealed.ciphertext),
                _aad(incident_id, sealed.subject_id, sealed.role),
            )
        except (InvalidTag, ValueError):  # ValueError: base64 that does not decode
            raise unreadable from None
        return Person.from_plain(json.loads(plaintext))

    def find(self, kind: str, value: str) -> list[SubjectKey]:
        """The subjects whose normalised phone or NIK is ``value`` (erased ones are gone
        from the index)."""
        with self._db.read() as cur:
            cur.execute(
                self._db.q(
                    "SELECT k.subject_id, k.incident_id, k.wrapped_key FROM personal_data_index i"
                    " JOIN personal_data_keys k"
                    " ON k.incident_id = i.incident_id AND k.subject_id = i.subject_id"
                    " WHERE i.digest = ? ORDER BY k.created_at, k.subject_id"
                ),
                (self.index_digest(kind, value),),
            )
            rows = cur.fetchall()
        return [SubjectKey(UUID(str(r[0])), UUID(str(r[1])), r[2] is None) for r in rows]

    def incidents_with_keys(self) -> list[UUID]:
        """The incidents that hold personal data some key still opens (the candidates of
        the retention rule: the table, not the whole history, is scanned)."""
        with self._db.read() as cur:
            cur.execute(
                self._db.q(
                    "SELECT DISTINCT incident_id FROM personal_data_keys"
                    " WHERE wrapped_key IS NOT NULL AND subject_id <> ?"
                ),
                (INDEX_ROW,),
            )
            return [UUID(str(row[0])) for row in cur.fetchall()]

    def undestroyed(self, erased: Mapping[UUID, Collection[UUID]]) -> dict[UUID, list[UUID]]:
        """Of the subjects ``erased`` names (by incident), those whose key the table still
        holds, by incident (a key table restored from a backup older than their erasure,
        or an erasure whose keys were not destroyed before a crash)."""
        found: dict[UUID, list[UUID]] = {}
        incidents = sorted(erased, key=str)
        for n in range(0, len(incidents), 500):
            chunk = [str(i) for i in incidents[n : n + 500]]
            with self._db.read() as cur:
                cur.execute(
                    self._db.q(
                        "SELECT incident_id, subject_id FROM personal_data_keys"  # noqa: S608
                        " WHERE wrapped_key IS NOT NULL AND subject_id <> ?"
                        f" AND incident_id IN ({', '.join('?' for _ in chunk)})"
                    ),
                    (INDEX_ROW, *chunk),
                )
                rows = cur.fetchall()
            for incident_text, subject_text in rows:
                incident, subject = UUID(str(incident_text)), UUID(str(subject_text))
                if subject in erased[incident]:
                    found.setdefault(incident, []).append(subject)
        return found

    # ---------------------------------------------------------- the sweep

    def incidents_keyed_before(self, before: datetime, batch: int = 500) -> Iterator[list[UUID]]:
        """The incidents some key was written for before ``before``, ``batch`` at a time
        (the candidates of :meth:`delete_unsaved`), in the order of their ids."""
        after = ""
        while True:
            with self._db.read() as cur:
                cur.execute(
                    self._db.q(
                        "SELECT DISTINCT incident_id FROM personal_data_keys"
                        " WHERE incident_id > ? AND subject_id <> ? AND created_at < ?"
                        " ORDER BY incident_id LIMIT ?"
                    ),
                    (after, INDEX_ROW, _stamp(before), batch),
                )
                ids = [str(row[0]) for row in cur.fetchall()]
            if not ids:
                return
            yield [UUID(i) for i in ids]
            if len(ids) < batch:
                return
            after = ids[-1]

    def delete_unsaved(self, incident_ids: Sequence[UUID], before: datetime) -> int:
        """Delete the keys (and blind index entries) written before ``before`` for these
        incidents, which the caller found without any recorded event: the keys of reports
        that failed to save. How many keys were deleted."""
        ids = [str(i) for i in incident_ids]
        if not ids:
            return 0
        marks = ", ".join("?" for _ in ids)
        chosen = f"incident_id IN ({marks}) AND subject_id <> ? AND created_at < ?"
        arguments = (*ids, INDEX_ROW, _stamp(before))
        with self._db.transaction() as cur:
            cur.execute(
                self._db.q(
                    "SELECT subject_id, index_digests FROM personal_data_keys"  # noqa: S608
                    f" WHERE {chosen}"
                ),
                arguments,
            )
            _delete_index_rows(cur, self._db, cur.fetchall())
            cur.execute(
                self._db.q(f"DELETE FROM personal_data_keys WHERE {chosen}"),  # noqa: S608
                arguments,
            )
            deleted = int(cur.rowcount or 0)
        if deleted:
            log.info("personal_data.unsaved_keys_deleted", incidents=len(ids), keys=deleted)
        return deleted

    # --------------------------------------------------------------- erase

    def destroy(self, incident_id: UUID, subject_ids: Iterable[UUID]) -> int:
        """Destroy the keys of these subjects of the incident and their blind index
        entries; how many keys were destroyed now (a key destroyed before counts not).
        Idempotent."""
        ids = [str(i) for i in subject_ids]
        if not ids:
            return 0
        marks = ", ".join("?" for _ in ids)
        chosen = f"incident_id = ? AND subject_id IN ({marks})"
        with self._db.transaction() as cur:
            cur.execute(
                self._db.q(
                    "SELECT subject_id, index_digests FROM personal_data_keys"  # noqa: S608
                    f" WHERE {chosen}"
                ),
                (str(incident_id), *ids),
            )
            _delete_index_rows(cur, self._db, cur.fetchall())
            cur.execute(
                self._db.q(
                    "UPDATE personal_data_keys SET wrapped_key = NULL, erased_at = ?,"  # noqa: S608
                    f" index_digests = '' WHERE {chosen} AND wrapped_key IS NOT NULL"
                ),
                (_now(), str(incident_id), *ids),
            )
            destroyed = int(cur.rowcount or 0)
        log.info("personal_data.keys_destroyed", subjects=len(ids), destroyed=destroyed)
        self.scrub()
        return destroyed

    def scrub(self) -> None:
        """Leave no older copy of a destroyed (or re-wrapped) key in the store's files.

        On SQLite the key's page, rewritten without it, goes to the write-ahead log first,
        while the database file still holds its former version (and the log may hold
        earlier ones): both files are brought to the current version and the log emptied.
        On PostgreSQL the former row version stays until ``VACUUM`` (docs/personal-data.md,
        "Free space"). Called after every erasure and by the hourly upkeep, which retries
        one that other transactions held off (a read open for longer than ``SCRUB_WAIT``)."""
        if not isinstance(self._db, SQLiteDatabase):
            return
        if not self._db.truncate_log(SCRUB_WAIT):
            log.warning(
                "personal_data.scrub_deferred",
                reason="the store was busy; the upkeep retries within the hour",
            )

    def rewrap(self, batch: int = 500) -> int:
        """Wrap every key that an older KEK wraps under the current one; how many."""
        moved = 0
        while True:
            with self._db.transaction() as cur:
                cur.execute(
                    self._db.q(
                        "SELECT incident_id, subject_id, kek_id, wrapped_key"
                        " FROM personal_data_keys WHERE kek_id <> ? AND wrapped_key IS NOT NULL"
                        " LIMIT ?"
                    ),
                    (self._ring.current, batch),
                )
                rows: Sequence[Any] = cur.fetchall()
                for incident, subject, kek_id, wrapped in rows:
                    key = self._unwrap(str(subject), str(kek_id), str(wrapped))
                    cur.execute(
                        self._db.q(
                            "UPDATE personal_data_keys SET kek_id = ?, wrapped_key = ?"
                            " WHERE incident_id = ? AND subject_id = ?"
                        ),
                        (self._ring.current, self._wrap(str(subject), key), incident, subject),
                    )
            moved += len(rows)
            if len(rows) < batch:
                break
        if moved:
            log.info("personal_data.keys_rewrapped", keys=moved, kek_id=self._ring.current)
            self.scrub()  # no copy wrapped by the former key-encryption key left behind
        return moved

    def close(self) -> None:
        self._db.close()


def _delete_index_rows(cursor: Any, db: Database, keys: Sequence[Any]) -> None:
    """Delete the blind index rows of ``keys`` (rows of subject id and index digests)."""
    rows = [(d, str(subject)) for subject, digests in keys for d in str(digests or "").split()]
    if rows:
        cursor.executemany(
            db.q("DELETE FROM personal_data_index WHERE digest = ? AND subject_id = ?"), rows
        )


def _aad(incident_id: UUID, subject_id: UUID, role: SubjectRole) -> bytes:
    return f"incidentledger/personal-data/{incident_id}/{subject_id}/{role.value}".encode()


def _now() -> str:
    return _stamp(datetime.now(UTC))


def _stamp(moment: datetime) -> str:
    """The key table's times: ISO 8601 in UTC, to the microsecond (they sort as text)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")

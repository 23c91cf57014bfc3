"""Questions about the event store that the library's public API does not answer.

The library records each event's global position (notification id) but only
hands it back at save time. An idempotent retry must return the original
position, and an incident's history is shown with positions, so this adapter
looks them up, per backend, by (originator id, version). It also counts the
events of some topics recorded after a position (a backlog, for metrics), and reads the
log as plain rows (:func:`read_rows`) for those that read much of it (the audit, the
projections).

On PostgreSQL the ledger inserts with :class:`ArrayInsertRecorder`: the library's recorder
but for the insert statement's parameters. On both stores the ledger's recorder also writes
the keys of the personal data a transaction's events seal (``personal_keys``, a
:class:`~services.ledger.personal_keys.KeyRows`) in that transaction, through the
library's hook for what goes with the events (the one its process recorders use to
record their tracking). And on both, a commit given its signing key's id (``signing_key``)
looks that key up in ``ledger_retired_keys`` inside the events' transaction, once it holds
the store's write lock, and rolls back with :class:`RetiredKeyCommitError` when a rotation
has retired it (services/ledger/key_watch.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import psycopg
import structlog
from eventsourcing.persistence import (
    ApplicationRecorder,
    InterfaceError,
    OperationalError,
    StoredEvent,
)
from eventsourcing.popo import POPOApplicationRecorder
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor
from eventsourcing.utils import retry
from psycopg import Cursor
from psycopg.rows import DictRow, tuple_row
from psycopg.sql import SQL, Composed, Identifier, Literal

from services.ledger.personal_keys import INDEX_TABLE, KEYS_TABLE, KeyRows, insert_key_rows

log = structlog.get_logger(__name__)

RETIRED_KEYS_TABLE = "ledger_retired_keys"
#: The PostgreSQL function that stores a commit's events (and keys) in one statement.
INSERT_FUNCTION = "ledger_insert_events"
#: The message of the PostgreSQL error a commit of a retired key's seals raises.
RETIRED_KEY_MARK = "incidentledger.signing_key_retired"


class RetiredKeyCommitError(Exception):
    """A commit's transaction found its events' signing key retired: nothing was stored."""

    def __init__(self, key_id: str, retired_at: str, successor: str) -> None:
        super().__init__(f"signing key {key_id} was retired at {retired_at} for {successor}")
        self.key_id = key_id
        self.retired_at = retired_at
        self.successor = successor


class KeyedSQLiteRecorder(SQLiteApplicationRecorder):
    """The library's SQLite recorder, writing the keys of the personal data the events
    seal in their transaction, and refusing a retired signing key's commit."""

    def _insert_events(
        self,
        c: SQLiteCursor,
        stored_events: Sequence[StoredEvent],
        *,
        personal_keys: KeyRows | None = None,
        signing_key: str | None = None,
        **kwargs: Any,
    ) -> Sequence[int] | None:
        if personal_keys:
            insert_key_rows(c, personal_keys, KEYS_TABLE, INDEX_TABLE, "?")
        positions = super()._insert_events(c, stored_events, **kwargs)
        if signing_key is not None:
            # After a write: the transaction holds SQLite's one write lock, so a rotation
            # (services/ledger/audit/checkpoints.py) has committed entirely or not begun.
            c.execute(
                "SELECT retired_at, successor FROM ledger_retired_keys WHERE key_id = ?",
                (signing_key,),
            )
            row = c.fetchone()
            if row is not None:  # raised in the library's transaction: rolled back
                raise RetiredKeyCommitError(signing_key, str(row[0]), str(row[1]))
        return positions


class ArrayInsertRecorder(PostgresApplicationRecorder):
    """The library's PostgreSQL recorder, inserting a transaction's events from four plain
    arrays (ids, versions, topics, states) rather than one array of its composite type,
    and in one statement: a call of :data:`INSERT_FUNCTION`, which the recorder creates
    with its tables.

    psycopg writes an array of composite values in Python, field by field (its
    ``ListDumper`` and ``_SequenceDumper``: a quarter of the ledger's interpreter time
    while it ingested field reports, docs/performance.md); arrays of plain types it writes
    in C. The library's transaction (pipeline mode, ``BEGIN``, the table lock, the
    notification, the insert, a sync, ``COMMIT``, the pipeline's own syncs) cost the commit
    thread 0.73-0.88 ms of CPU and 1.3-1.6 ms a commit in a probe of one event, where one
    call of a function doing the same in the statement's own transaction cost 0.23 ms and
    0.56-0.73 ms (docs/performance.md). The rows, their order (and so their positions,
    returned in the order given), the table lock and the notification are the library's.
    A store whose tables an earlier version made, and no ``migrate`` since, has no function
    yet: the recorder then takes the library's transaction (and says so once).
    """

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self.insert_events_statement = SQL(
            "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(%s::{id_type}[], %s::int[], %s::text[], %s::bytea[]) "
            "RETURNING notification_id"
        ).format(
            schema=Identifier(datastore.schema),
            table=Identifier(self.events_table_name),
            id_type=Identifier(datastore.originator_id_type),
        )
        schema = Identifier(datastore.schema).as_string()
        self._key_tables = (f"{schema}.{KEYS_TABLE}", f"{schema}.{INDEX_TABLE}")
        self._key_checks: dict[str, SQL] = {}
        self.sql_create_statements.append(self._create_function_statement())
        self._call_function = SQL(
            "SELECT * FROM {schema}.{function}(%s::{id_type}[], %s::int[], %s::text[], "
            "%s::bytea[], %s::jsonb, %s::jsonb, %s::text, %s::text)"
        ).format(
            schema=Identifier(datastore.schema),
            function=Identifier(INSERT_FUNCTION),
            id_type=Identifier(datastore.originator_id_type),
        )
        self._lock_timeout = f"{datastore.lock_timeout}s"
        # Whether the store has the function: None until the first insert looks.
        self._has_function: bool | None = None

    def _create_function_statement(self) -> Composed:
        """``CREATE OR REPLACE FUNCTION`` of :data:`INSERT_FUNCTION` in this store's
        schema: the keys of the personal data the events seal, then the events' table
        lock, the notification, the check that the signing key is not retired (after the
        lock, which a rotation takes too), and the events, returning their positions. In
        a function each statement sees what committed before it began (READ COMMITTED),
        as each statement of the library's transaction does."""
        schema = Identifier(self.datastore.schema)
        return SQL(
            "CREATE OR REPLACE FUNCTION {schema}.{function}("
            "ids {id_type}[], versions int[], topics text[], states bytea[], "
            "key_rows jsonb, index_rows jsonb, signing_key text, lock_timeout text) "
            "RETURNS SETOF bigint LANGUAGE plpgsql AS $body$ "
            "DECLARE retired record; "
            "BEGIN "
            "IF key_rows IS NOT NULL THEN "
            "INSERT INTO {schema}.{keys} (subject_id, incident_id, kek_id, wrapped_key, "
            "created_at, index_digests) "
            "SELECT r->>0, r->>1, r->>2, r->>3, r->>4, r->>5 FROM jsonb_array_elements(key_rows) r "
            "ON CONFLICT (incident_id, subject_id) DO NOTHING; "
            "END IF; "
            "IF index_rows IS NOT NULL THEN "
            "INSERT INTO {schema}.{index} (digest, subject_id, incident_id) "
            "SELECT r->>0, r->>1, r->>2 FROM jsonb_array_elements(index_rows) r "
            "ON CONFLICT (digest, subject_id) DO NOTHING; "
            "END IF; "
            "PERFORM set_config('lock_timeout', lock_timeout, true); "
            "LOCK TABLE {schema}.{events} IN EXCLUSIVE MODE; "
            "NOTIFY {channel}; "
            "IF signing_key IS NOT NULL THEN "
            "SELECT retired_at, successor INTO retired FROM {schema}.{retired_keys} "
            "WHERE key_id = signing_key; "
            "IF FOUND THEN RAISE EXCEPTION USING MESSAGE = {mark}, "
            "DETAIL = retired.retired_at || ' ' || retired.successor; END IF; "
            "END IF; "
            "RETURN QUERY INSERT INTO {schema}.{events} "
            "(originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(ids, versions, topics, states) RETURNING notification_id; "
            "END $body$"
        ).format(
            schema=schema,
            function=Identifier(INSERT_FUNCTION),
            id_type=Identifier(self.datastore.originator_id_type),
            keys=Identifier(KEYS_TABLE),
            index=Identifier(INDEX_TABLE),
            events=Identifier(self.events_table_name),
            channel=Identifier(self.channel_name),
            retired_keys=Identifier(RETIRED_KEYS_TABLE),
            mark=Literal(RETIRED_KEY_MARK),
        )

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        if kwargs.get("personal_keys") and self.datastore.enable_db_functions:
            # The library's insert function takes the events alone: the keys would be lost.
            raise RuntimeError(
                "keys of personal data cannot be saved with POSTGRES_ENABLE_DB_FUNCTIONS"
            )
        try:
            positions: Sequence[int] | None
            if stored_events and self._function_ready():
                positions = self._insert_by_function(stored_events, **kwargs)
            else:
                positions = super().insert_events(stored_events, **kwargs)
        except Exception as exc:
            retired = _retired_key_error(exc)
            if retired is None:
                raise
            retired_at, _, successor = (retired.diag.message_detail or "").partition(" ")
            raise RetiredKeyCommitError(str(kwargs["signing_key"]), retired_at, successor) from None
        return positions

    def _function_ready(self) -> bool:
        """Whether the store has :data:`INSERT_FUNCTION` (looked up at the first commit,
        once: a ``migrate`` afterwards takes effect at the next start)."""
        if self._has_function is None:
            with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
                cur.execute(
                    "SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                    " WHERE n.nspname = %s AND p.proname = %s",
                    (self.datastore.schema, INSERT_FUNCTION),
                )
                self._has_function = cur.fetchone() is not None
            if not self._has_function:
                log.warning(
                    "store.insert_function_missing",
                    function=INSERT_FUNCTION,
                    effect="each commit takes the slower transaction of several round trips",
                    fix="python -m services.ledger migrate",
                )
        return self._has_function

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def _insert_by_function(
        self,
        stored_events: Sequence[StoredEvent],
        *,
        personal_keys: KeyRows | None = None,
        signing_key: str | None = None,
        **_: Any,
    ) -> list[int]:
        """The events (and keys) stored by one call of :data:`INSERT_FUNCTION`, in the
        statement's own transaction (the pool's connections are in autocommit); retried
        as the library retries its insert."""
        keys = json.dumps(personal_keys.keys) if personal_keys and personal_keys.keys else None
        index = json.dumps(personal_keys.index) if personal_keys and personal_keys.index else None
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(
                self._call_function,
                (
                    [e.originator_id for e in stored_events],
                    [e.originator_version for e in stored_events],
                    [e.topic for e in stored_events],
                    [e.state for e in stored_events],
                    keys,
                    index,
                    signing_key,
                    self._lock_timeout,
                ),
                prepare=True,
            )
            return [int(row[0]) for row in cur.fetchall()]

    def _key_check(self, signing_key: str) -> SQL:
        """A statement that fails (RETIRED_KEY_MARK) when ``signing_key`` is retired: a
        plain statement in the insert's pipeline, so the check adds no round trip. The key
        id is the ledger's own (hex digits), quoted as a literal: a DO block takes no
        parameters."""
        check = self._key_checks.get(signing_key)
        if check is None:
            composed = SQL(
                "DO $$DECLARE r record; BEGIN "
                "SELECT retired_at, successor INTO r FROM {table} WHERE key_id = {key}; "
                "IF FOUND THEN RAISE EXCEPTION USING MESSAGE = {mark}, "
                "DETAIL = r.retired_at || ' ' || r.successor; END IF; END$$"
            ).format(
                table=Identifier(self.datastore.schema, RETIRED_KEYS_TABLE),
                key=Literal(signing_key),
                mark=Literal(RETIRED_KEY_MARK),
            )
            # Rendered once: quoting the names again at each commit cost more than the check.
            with self.datastore.get_connection() as conn:
                check = SQL(composed.as_string(conn))
            self._key_checks[signing_key] = check
        return check

    def _insert_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        *,
        personal_keys: KeyRows | None = None,
        **kwargs: Any,
    ) -> None:
        # Called first in the events' transaction (and pipeline), before their insert.
        if personal_keys:
            insert_key_rows(curs, personal_keys, *self._key_tables, "%s")
        super()._insert_events(curs, stored_events, **kwargs)

    def _insert_stored_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        *,
        signing_key: str | None = None,
        **_: Any,
    ) -> None:
        self._lock_table(curs)
        self._notify_channel(curs)
        if signing_key is not None:
            # After the table lock, which a rotation takes too: it has committed entirely
            # or not begun (READ COMMITTED: this statement sees what committed before it).
            curs.execute(self._key_check(signing_key))
        curs.execute(
            self.insert_events_statement,
            (
                [e.originator_id for e in stored_events],
                [e.originator_version for e in stored_events],
                [e.topic for e in stored_events],
                [e.state for e in stored_events],
            ),
        )


def _retired_key_error(exc: BaseException) -> psycopg.errors.RaiseException | None:
    """The PostgreSQL error of :meth:`ArrayInsertRecorder._key_check` behind ``exc``, if it
    is one (the library wraps some of the driver's errors in its own)."""
    for error in (exc, exc.__cause__):
        if (
            isinstance(error, psycopg.errors.RaiseException)
            and error.diag.message_primary == RETIRED_KEY_MARK
        ):
            return error
    return None


class EventPositions:
    """Global positions of stored events, looked up by aggregate id and version."""

    def __init__(self, recorder: ApplicationRecorder) -> None:
        self._recorder = recorder

    def of(self, originator_id: UUID, gt: int = 0, lte: int | None = None) -> dict[int, int]:
        """Map of version -> position for the aggregate's events in (gt, lte]."""
        upper = lte if lte is not None else 2**62
        recorder = self._recorder
        if isinstance(recorder, SQLiteApplicationRecorder):
            statement = (
                f"SELECT originator_version, rowid FROM {recorder.events_table_name} "  # noqa: S608
                "WHERE originator_id=? AND originator_version>? AND originator_version<=?"
            )
            with recorder.datastore.transaction(commit=False) as cursor:
                cursor.execute(statement, (originator_id.hex, gt, upper))
                return {int(row[0]): int(row[1]) for row in cursor.fetchall()}
        if isinstance(recorder, PostgresApplicationRecorder):
            query = SQL(
                "SELECT originator_version, notification_id FROM {schema}.{table} "
                "WHERE originator_id=%s AND originator_version>%s AND originator_version<=%s"
            ).format(
                schema=Identifier(recorder.datastore.schema),
                table=Identifier(recorder.events_table_name),
            )
            with recorder.datastore.transaction(commit=False) as curs:
                curs.execute(query, (originator_id, gt, upper))
                return {
                    int(row["originator_version"]): int(row["notification_id"])
                    for row in curs.fetchall()
                }
        return self._scan(originator_id, gt, upper)

    def _scan(self, originator_id: UUID, gt: int, upper: int) -> dict[int, int]:
        recorder = self._recorder
        if isinstance(recorder, POPOApplicationRecorder):
            # The in-memory store (tests) keeps each aggregate's versions by their place in
            # its list of events, a position less one: walking the whole log instead, once per
            # report sent again, made a resent backlog take seconds per chunk (and time out).
            with recorder._database_lock:
                index = recorder._stored_events_index.get(str(originator_id), {})
                return {v: i + 1 for v, i in index.items() if gt < v <= upper}
        # Another store: walk the notification log.
        found: dict[int, int] = {}
        start = 0
        while True:
            batch = self._recorder.select_notifications(start, 1000, inclusive_of_start=False)
            if not batch:
                return found
            for n in batch:
                if n.originator_id == originator_id and gt < n.originator_version <= upper:
                    found[n.originator_version] = n.id
            start = batch[-1].id

    def existing(self, originator_ids: Sequence[UUID]) -> set[UUID]:
        """Which of these aggregates have events stored: one query, not one per id."""
        if not originator_ids:
            return set()
        recorder = self._recorder
        if isinstance(recorder, SQLiteApplicationRecorder):
            marks = ",".join("?" * len(originator_ids))
            statement = (
                f"SELECT DISTINCT originator_id FROM {recorder.events_table_name} "  # noqa: S608
                f"WHERE originator_id IN ({marks})"
            )
            with recorder.datastore.transaction(commit=False) as cursor:
                cursor.execute(statement, [i.hex for i in originator_ids])
                return {UUID(row[0]) for row in cursor.fetchall()}
        if isinstance(recorder, PostgresApplicationRecorder):
            query = SQL(
                "SELECT DISTINCT originator_id FROM {schema}.{table} WHERE originator_id = ANY(%s)"
            ).format(
                schema=Identifier(recorder.datastore.schema),
                table=Identifier(recorder.events_table_name),
            )
            with recorder.datastore.transaction(commit=False) as curs:
                curs.execute(query, (list(originator_ids),))
                return {UUID(str(row["originator_id"])) for row in curs.fetchall()}
        # In-memory store (tests): one look per id is cheap there.
        return {i for i in originator_ids if recorder.select_events(i, limit=1)}

    def count_after(self, position: int, topics: Sequence[str]) -> int:
        """How many events of these topics were recorded after ``position``."""
        recorder = self._recorder
        if isinstance(recorder, SQLiteApplicationRecorder):
            marks = ",".join("?" * len(topics))
            statement = (
                f"SELECT COUNT(*) FROM {recorder.events_table_name} "  # noqa: S608
                f"WHERE rowid>? AND topic IN ({marks})"
            )
            with recorder.datastore.transaction(commit=False) as cursor:
                cursor.execute(statement, (position, *topics))
                return int(cursor.fetchone()[0])
        if isinstance(recorder, PostgresApplicationRecorder):
            query = SQL(
                "SELECT COUNT(*) AS n FROM {schema}.{table} "
                "WHERE notification_id>%s AND topic = ANY(%s)"
            ).format(
                schema=Identifier(recorder.datastore.schema),
                table=Identifier(recorder.events_table_name),
            )
            with recorder.datastore.transaction(commit=False) as curs:
                curs.execute(query, (position, list(topics)))
                row = curs.fetchone()
                return int(row["n"]) if row else 0
        count = 0
        while True:  # in-memory store (tests): walk the notification log
            batch = recorder.select_notifications(
                position, 1000, topics=topics, inclusive_of_start=False
            )
            if not batch:
                return count
            count += len(batch)
            position = batch[-1].id


# A stored event as :func:`read_rows` gives it: position, originator id (as stored: on
# SQLite 32 hex digits, on PostgreSQL its text, dashed; :func:`stored_id_text`), version,
# topic, state.
RawRow = tuple[int, "UUID | str", int, str, bytes]


def rows_query(dialect: str, table: str, topics: int | None, bounded: bool) -> str:
    """The SELECT of stored rows (``RawRow``) with ``? < position (<= ?)`` and a topic among
    ``topics`` placeholders (None: any topic), in position order (``?`` placeholders,
    without a LIMIT). On PostgreSQL the id comes as text (its canonical form, dashed:
    :func:`stored_id_text` takes it as it is), not as a UUID made per row."""
    column = "rowid" if dialect == "sqlite" else "notification_id"
    originator = "originator_id" if dialect == "sqlite" else "originator_id::text"
    upper = f"AND {column} <= ? " if bounded else ""
    chosen = "" if topics is None else f"AND topic IN ({','.join('?' * topics)}) "
    return (
        f"SELECT {column}, {originator}, originator_version, topic, state "  # noqa: S608
        f"FROM {table} WHERE {column} > ? {upper}{chosen}ORDER BY {column}"
    )


def read_rows(
    recorder: ApplicationRecorder,
    topics: Sequence[str] | None,
    after: int,
    limit: int,
    stop: int | None = None,
) -> list[RawRow]:
    """The next stored events with ``after < position (<= stop)`` and one of ``topics``
    (None: of any topic).

    Both stores are read directly: the library's notifications convert every id to a
    UUID, which cost a third of a verification and a quarter of a projection rebuild on
    SQLite, and on PostgreSQL 9-11 µs of CPU a row against 3.3-4 read as plain tuples with
    the id as text (100,000 rows in batches of 2,000; docs/performance.md). Other stores
    (in memory) through the library.
    """
    chosen = None if topics is None else len(topics)
    if isinstance(recorder, SQLiteApplicationRecorder):
        statement = rows_query("sqlite", recorder.events_table_name, chosen, stop is not None)
        params = [after, *([stop] if stop is not None else []), *(topics or ()), limit]
        with recorder.datastore.transaction(commit=False) as cursor:
            # Plain tuples, as RawRow is, rather than the connection's sqlite3.Row, which
            # were copied into tuples: 1.5 instead of 1.8 us an event.
            cursor.sqlite_cursor.row_factory = None
            cursor.execute(statement + " LIMIT ?", params)
            rows: list[RawRow] = cursor.fetchall()
            return rows
    if isinstance(recorder, PostgresApplicationRecorder):
        # The upper bound is applied here, not in the query: with the bound, a planner whose
        # statistics lag the table (a store filled since its last ANALYZE) estimated a few
        # hundred rows in the range, took every row of it by a bitmap scan and sorted them
        # for the LIMIT, so each batch read the whole rest of the range (24,206 events: 17
        # ms a batch of 200 or 2,000 rows, against 1.2 ms by the index in order; an export
        # read the table about batches/2 times over). Without it, the index gives the rows
        # in order and the LIMIT stops the scan; at most one batch's rows past ``stop`` are
        # read and left.
        table = Identifier(recorder.datastore.schema, recorder.events_table_name).as_string()
        statement = rows_query("postgres", table, chosen, bounded=False) + " LIMIT ?"
        unbounded = [after, *(topics or ()), limit]
        with (
            recorder.datastore.transaction(commit=False) as curs,
            curs.connection.cursor(row_factory=tuple_row) as tuples,
        ):
            # In binary: the state comes as its bytes, not as hex text twice their size to
            # decode (docs/performance.md, "Verify and export").
            tuples.execute(statement.replace("?", "%s"), unbounded, prepare=True, binary=True)
            found: list[RawRow] = tuples.fetchall()
        if stop is not None and found and found[-1][0] > stop:
            return [row for row in found if row[0] <= stop]
        return found
    batch = recorder.select_notifications(
        after, limit, stop=stop, topics=topics or (), inclusive_of_start=False
    )
    return [(n.id, n.originator_id, n.originator_version, n.topic, n.state) for n in batch]


_HEX32 = re.compile(r"[0-9a-f]{32}")
_DASHED = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def stored_id_text(value: UUID | str) -> str:
    """``str(UUID(value))`` of an originator id as :func:`read_rows` gives it; the stored
    form (32 lowercase hex digits) without parsing. ValueError when it is not an id."""
    if isinstance(value, UUID):
        return str(value)
    if len(value) == 32 and _HEX32.fullmatch(value):
        # join: 0.34 us, the f-string of the same slices 0.56 (twice an event)
        return "-".join((value[:8], value[8:12], value[12:16], value[16:20], value[20:]))
    if len(value) == 36 and _DASHED.fullmatch(value):
        return value  # PostgreSQL's text of a uuid: already the canonical form
    return str(UUID(value))

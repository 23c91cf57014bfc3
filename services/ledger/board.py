"""The status board: one row per incident, kept from the notification log.

ListIncidents reads it. Rows are written together with the board's position in
one transaction, so each event is applied exactly once, across crashes too. The
rows are derived by loading the aggregates the new events belong to, so the
board folds events with the domain's own rules. Before answering, a query
catches the board up with everything recorded so far (read-your-writes).

The board lives in the ledger's database: the SQLite file, or PostgreSQL (an
in-memory SQLite database when the event store is in memory, for tests).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.utils import get_topic

from services.common.errors import InvalidArgument
from services.common.sql import open_database
from services.ledger.application import Ledger
from services.ledger.domain.incident import Incident, Status, incident_event_classes
from services.ledger.domain.reference import ReferenceData

BATCH = 500

FILTER_FIELDS = ("status", "severity", "category", "kecamatan", "lead_agency")
_CLAUSE = re.compile(
    r"\s*(?P<field>[a-z_]+)\s*(?P<op>!=|=)\s*"
    r"(?:\"(?P<quoted>[^\"\\]*)\"|(?P<bare>[A-Za-z0-9_]+))\s*"
)
_AND = re.compile(r"AND\b", re.ASCII)


@dataclass(frozen=True)
class BoardFilter:
    """A parsed AIP-160 filter: comparisons with = or != joined by AND."""

    clauses: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def parse(cls, text: str, reference: ReferenceData) -> BoardFilter:
        if len(text) > 1000:
            raise InvalidArgument("filter", "is longer than 1000 characters")
        clauses: list[tuple[str, str, str]] = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            if clauses:
                match_and = _AND.match(text, pos)
                if match_and is None:
                    raise InvalidArgument("filter", f"expected AND at character {pos + 1}")
                pos = match_and.end()
            match = _CLAUSE.match(text, pos)
            if match is None:
                raise InvalidArgument(
                    "filter",
                    f'expected `field = "value"` at character {pos + 1}; fields: '
                    + ", ".join(FILTER_FIELDS),
                )
            field, op = match["field"], match["op"]
            value = match["quoted"] if match["quoted"] is not None else match["bare"]
            clauses.append((field, op, _check_value(field, value, reference)))
            pos = match.end()
        return cls(tuple(clauses))

    def where(self, placeholder: str) -> tuple[str, list[str]]:
        parts, params = [], []
        for field, op, value in self.clauses:
            parts.append(f"{field} {'<>' if op == '!=' else '='} {placeholder}")
            params.append(value)
        return (" AND ".join(parts) or "1=1"), params


def _check_value(field: str, value: str, reference: ReferenceData) -> str:
    if field == "status":
        name = value.removeprefix("INCIDENT_STATUS_")
        if name not in Status.__members__:
            raise InvalidArgument("filter", f"unknown status {value!r}")
        return name
    known: Mapping[str, object]
    if field == "severity":
        known = reference.severities
    elif field == "category":
        known = reference.categories
    elif field == "kecamatan":
        known = reference.kecamatan
    elif field == "lead_agency":
        known = reference.agencies
    else:
        raise InvalidArgument(
            "filter", f"cannot filter on {field!r}; fields: " + ", ".join(FILTER_FIELDS)
        )
    if value not in known:
        raise InvalidArgument("filter", f"unknown {field} {value!r}")
    return value


SCHEMA = (
    "CREATE TABLE IF NOT EXISTS incident_board ("
    " incident_id TEXT PRIMARY KEY,"
    " seq BIGINT NOT NULL,"
    " status TEXT NOT NULL,"
    " severity TEXT NOT NULL,"
    " category TEXT NOT NULL,"
    " kecamatan TEXT NOT NULL,"
    " lead_agency TEXT NOT NULL,"
    " version BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS incident_board_seq ON incident_board (seq)",
    "CREATE TABLE IF NOT EXISTS board_position (id INTEGER PRIMARY KEY, position BIGINT NOT NULL)",
)


class Board:
    """The status board projection and its query."""

    def __init__(self, ledger: Ledger, store_env: Mapping[str, str], *, create: bool = True):
        self._ledger = ledger
        self._lock = threading.Lock()
        self._topics = [get_topic(cls) for cls in incident_event_classes()]
        self._sql = open_database(store_env)
        if create:
            self.create_schema()

    def create_schema(self) -> None:
        with self._sql.transaction() as cur:
            for statement in SCHEMA:
                cur.execute(statement)
            cur.execute(
                self._sql.q(
                    "INSERT INTO board_position (id, position) VALUES (1, 0) "
                    "ON CONFLICT (id) DO NOTHING"
                )
            )

    def close(self) -> None:
        self._sql.close()

    def position(self) -> int:
        with self._sql.transaction() as cur:
            cur.execute("SELECT position FROM board_position WHERE id = 1")
            row = cur.fetchone()
            return int(row[0]) if row else 0

    def catch_up(self) -> int:
        """Apply every event recorded so far; returns the board's position."""
        with self._lock:
            position = self.position()
            recorder = self._ledger.recorder
            while True:
                batch = recorder.select_notifications(
                    position, BATCH, topics=self._topics, inclusive_of_start=False
                )
                if not batch:
                    return position
                position = self._apply(batch, position)

    def _apply(self, batch: Sequence[Any], position: int) -> int:
        latest: dict[UUID, int] = {}
        first_seen: dict[UUID, int] = {}
        for notification in batch:
            incident_id = UUID(str(notification.originator_id))
            latest[incident_id] = max(latest.get(incident_id, 0), notification.originator_version)
            first_seen.setdefault(incident_id, notification.id)
        rows = []
        for incident_id, version in latest.items():
            incident: Incident = self._ledger.repository.get(incident_id, version=version)
            rows.append(
                (
                    str(incident_id),
                    first_seen[incident_id],
                    incident.status.value,
                    incident.severity,
                    incident.category,
                    str(incident.location.get("kecamatan", "")),
                    incident.lead_agency,
                    incident.version,
                )
            )
        new_position = int(batch[-1].id)
        with self._sql.transaction() as cur:
            cur.execute(self._sql.q("SELECT position FROM board_position WHERE id = 1 FOR UPDATE"))
            row = cur.fetchone()
            if row and int(row[0]) >= new_position:
                return int(row[0])  # another process applied this batch already
            cur.executemany(
                self._sql.q(
                    "INSERT INTO incident_board (incident_id, seq, status, severity, category,"
                    " kecamatan, lead_agency, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (incident_id) DO UPDATE SET status = excluded.status,"
                    " severity = excluded.severity, category = excluded.category,"
                    " kecamatan = excluded.kecamatan, lead_agency = excluded.lead_agency,"
                    " version = excluded.version"
                    " WHERE incident_board.version < excluded.version"
                ),
                rows,
            )
            cur.execute(
                self._sql.q("UPDATE board_position SET position = ? WHERE id = 1"),
                (new_position,),
            )
        return new_position

    def list(self, board_filter: BoardFilter, *, after: int, limit: int) -> list[tuple[int, UUID]]:
        """(cursor, id) of incidents matching the filter, in order of report, after a cursor."""
        self.catch_up()
        where, params = board_filter.where("?")
        with self._sql.transaction() as cur:
            cur.execute(
                self._sql.q(
                    f"SELECT seq, incident_id FROM incident_board WHERE seq > ? AND {where} "  # noqa: S608
                    "ORDER BY seq LIMIT ?"
                ),
                [after, *params, limit],
            )
            return [(int(seq), UUID(str(incident_id))) for seq, incident_id in cur.fetchall()]

"""The projections' tables: folding facts into rows, batch by batch, and the queries.

One batch of notifications is applied in one transaction: lock the position row,
check that nobody applied anything since the batch was read, read the rows the
batch touches, fold the batch into them, write them back in bulk and move the
position. A failure anywhere rolls back everything, so an event is applied
exactly once, and two processes racing for a batch cannot both apply it.

The writer never waits for the position row: when another process holds it (it is
applying a batch, or it froze in the middle of one), :class:`PositionBusy` says so
and the caller tries again later. Queries are plain reads, which never wait for a
writer's locks: they answer from what is applied.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification

from services.common.reference import ReferenceData, Role
from services.common.sql import Database
from services.ledger.projections.facts import Fact, FastDecoder, micros, parse_micros, to_datetime
from services.ledger.projections.filters import BoardFilter
from services.ledger.projections.model import (
    AgencyWorkload,
    BoardRow,
    DecisionInForce,
    KecamatanScore,
    Percentiles,
    ResponseTimes,
    VulnerabilityReason,
)

INCIDENT_COLUMNS = (
    "incident_id",
    "seq",
    "version",
    "status",
    "title",
    "category",
    "severity",
    "severity_event_id",
    "report_event_id",
    "kecamatan",
    "desa",
    "lead_agency",
    "supporting_agencies",
    "pending_handover_to",
    "close_requested",
    "escalation_level",
    "reporter_agency",
    "reported_at",
    "occurred_at",
    "acknowledged_at",
    "verified_at",
    "resolved_at",
    "last_change_at",
    "last_change_position",
    "last_event_type",
)
DECISION_COLUMNS = (
    "event_id",
    "incident_id",
    "position",
    "summary",
    "forum",
    "rationale",
    "deciding_agencies",
    "kecamatan",
    "desa",
    "valid_from",
    "valid_until",
    "recorded_at",
    "recorded_by",
)
_INT_COLUMNS = frozenset(
    {
        "seq",
        "version",
        "close_requested",
        "escalation_level",
        "reported_at",
        "occurred_at",
        "last_change_at",
        "last_change_position",
        "position",
        "valid_from",
        "valid_until",
        "recorded_at",
    }
)
_NULLABLE = frozenset({"acknowledged_at", "verified_at", "resolved_at"})


def _ddl(table: str, columns: Sequence[str], key: str) -> str:
    def kind(column: str) -> str:
        if column in _NULLABLE:
            return "BIGINT"
        if column in _INT_COLUMNS:
            return "BIGINT NOT NULL"
        return "TEXT NOT NULL"

    body = ", ".join(f"{c} {kind(c)}{' PRIMARY KEY' if c == key else ''}" for c in columns)
    return f"CREATE TABLE IF NOT EXISTS {table} ({body})"


SCHEMA = (
    _ddl("proj_incident", INCIDENT_COLUMNS, "incident_id"),
    "CREATE UNIQUE INDEX IF NOT EXISTS proj_incident_seq ON proj_incident (seq)",
    _ddl("proj_decision", DECISION_COLUMNS, "event_id"),
    "CREATE INDEX IF NOT EXISTS proj_decision_validity ON proj_decision (valid_until)",
    "CREATE TABLE IF NOT EXISTS projection_position"
    " (id INTEGER PRIMARY KEY, position BIGINT NOT NULL)",
)
TABLES = ("proj_incident", "proj_decision")


def _upsert(table: str, columns: Sequence[str], key: str) -> str:
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != key)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608 - names are constants
        f"VALUES ({', '.join('?' for _ in columns)}) "
        f"ON CONFLICT ({key}) DO UPDATE SET {updates}"
    )


UPSERT_INCIDENT = _upsert("proj_incident", INCIDENT_COLUMNS, "incident_id")
UPSERT_DECISION = _upsert("proj_decision", DECISION_COLUMNS, "event_id")
SELECT_CHUNK = 500

DECISION_FIELDS = frozenset({"forum", "summary", "rationale", "valid_from", "valid_until"})
NOT_SCORED = ("REJECTED", "MERGED")
SETTLED = frozenset({"RESOLVED", "CLOSED"})
# Who is responsible for an incident in each open status: its lead agency, or the
# coordinator while it waits for verification or a lead.
LEAD_OPEN = frozenset({"ASSIGNED", "RESPONDING", "REOPENED"})
COORDINATOR_OPEN = frozenset({"REPORTED", "VERIFIED"})
UNACKNOWLEDGED = frozenset({"REPORTED", "ASSIGNED"})
MICROS_PER_DAY = 86_400_000_000


class IncidentRow:
    """A row of proj_incident while a batch is folded (columns in INCIDENT_COLUMNS order)."""

    __slots__ = INCIDENT_COLUMNS

    incident_id: str
    seq: int
    version: int
    status: str
    title: str
    category: str
    severity: str
    severity_event_id: str
    report_event_id: str
    kecamatan: str
    desa: str
    lead_agency: str
    supporting_agencies: list[str]
    pending_handover_to: str
    close_requested: int
    escalation_level: int
    reporter_agency: str
    reported_at: int
    occurred_at: int
    acknowledged_at: int | None
    verified_at: int | None
    resolved_at: int | None
    last_change_at: int
    last_change_position: int
    last_event_type: str

    @classmethod
    def reported(cls, fact: Fact) -> IncidentRow:
        row = cls()
        data = fact.data
        row.incident_id = fact.incident_id
        row.seq = fact.position
        row.status = "REPORTED"
        row.title = data["title"]
        row.category = data["category"]
        row.severity = data["severity"]
        row.severity_event_id = fact.event_id
        row.report_event_id = fact.event_id
        row.kecamatan = fact.kecamatan
        row.desa = fact.desa
        row.lead_agency = ""
        row.supporting_agencies = []
        row.pending_handover_to = ""
        row.close_requested = 0
        row.escalation_level = 0
        row.reporter_agency = fact.agency
        row.reported_at = fact.recorded_at
        row.occurred_at = fact.occurred_at
        row.acknowledged_at = None
        row.verified_at = None
        row.resolved_at = None
        return row

    @classmethod
    def from_db(cls, values: Sequence[Any]) -> IncidentRow:
        row = cls()
        for name, value in zip(INCIDENT_COLUMNS, values, strict=True):
            setattr(row, name, value)
        row.supporting_agencies = list(json.loads(str(values[12])))
        return row

    def to_db(self) -> tuple[Any, ...]:
        values = [getattr(self, name) for name in INCIDENT_COLUMNS]
        values[12] = json.dumps(self.supporting_agencies)
        return tuple(values)


class DecisionRow:
    __slots__ = DECISION_COLUMNS

    event_id: str
    incident_id: str
    position: int
    summary: str
    forum: str
    rationale: str
    deciding_agencies: str  # JSON list
    kecamatan: str
    desa: str
    valid_from: int
    valid_until: int
    recorded_at: int
    recorded_by: str

    @classmethod
    def recorded(cls, fact: Fact) -> DecisionRow:
        row = cls()
        data = fact.data
        row.event_id = fact.event_id
        row.incident_id = fact.incident_id
        row.position = fact.position
        row.summary = data["summary"]
        row.forum = data["forum"]
        row.rationale = data["rationale"]
        row.deciding_agencies = json.dumps(list(data["deciding_agencies"]))
        row.kecamatan = fact.kecamatan
        row.desa = fact.desa
        row.valid_from = data["valid_from"]
        row.valid_until = data["valid_until"]
        row.recorded_at = fact.recorded_at
        row.recorded_by = fact.agency
        return row

    @classmethod
    def from_db(cls, values: Sequence[Any]) -> DecisionRow:
        row = cls()
        for name, value in zip(DECISION_COLUMNS, values, strict=True):
            setattr(row, name, value)
        return row

    def to_db(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in DECISION_COLUMNS)


class BatchFolder:
    """Folds one batch of facts into the rows it touches (the documented mapping)."""

    def __init__(self, rows: dict[str, IncidentRow], decisions: dict[str, DecisionRow]) -> None:
        self.rows = rows
        self.decisions = decisions
        self.dirty_decisions: set[str] = set()

    def fold(self, facts: Iterable[Fact]) -> None:
        rows = self.rows
        for fact in facts:
            type_ = fact.type
            if type_ == "Reported":
                row = rows[fact.incident_id] = IncidentRow.reported(fact)
            else:
                found = rows.get(fact.incident_id)
                if found is None:
                    msg = f"{type_} at {fact.position} for unknown incident {fact.incident_id}"
                    raise LookupError(msg)
                row = found
                self._evolve(row, fact, type_)
            row.version = fact.version
            row.last_change_at = fact.recorded_at
            row.last_change_position = fact.position
            row.last_event_type = type_

    def _evolve(self, row: IncidentRow, fact: Fact, type_: str) -> None:
        data = fact.data
        if type_ == "Verified":
            row.status = "VERIFIED"
            if row.verified_at is None:
                row.verified_at = fact.recorded_at
        elif type_ == "ActionLogged":
            if data["starts_response"]:
                row.status = "RESPONDING"
            if row.acknowledged_at is None:
                row.acknowledged_at = fact.recorded_at
        elif type_ == "LeadAssigned":
            row.status = "ASSIGNED"
            row.lead_agency = data["agency"]
            _discard(row.supporting_agencies, data["agency"])
            row.pending_handover_to = ""
        elif type_ == "SupportingAgencyAdded":
            row.supporting_agencies.append(data["agency"])
        elif type_ == "HandoverProposed":
            row.pending_handover_to = data["to_agency"]
        elif type_ == "HandoverAccepted":
            row.lead_agency = data["to_agency"]
            _discard(row.supporting_agencies, data["to_agency"])
            row.pending_handover_to = ""
        elif type_ == "SeverityAssessed":
            row.severity = data["severity"]
            row.severity_event_id = fact.event_id
        elif type_ == "Escalated":
            row.escalation_level = data["level"]
        elif type_ == "DecisionRecorded":
            self.decisions[fact.event_id] = DecisionRow.recorded(fact)
            self.dirty_decisions.add(fact.event_id)
        elif type_ == "Resolved":
            row.status = "RESOLVED"
            row.close_requested = 0
            if row.resolved_at is None:
                row.resolved_at = fact.recorded_at
        elif type_ == "ClosureRequested":
            row.close_requested = 1
        elif type_ == "ClosureApproved":
            row.status = "CLOSED"
            row.close_requested = 0
        elif type_ == "Reopened":
            row.status = "REOPENED"
            row.close_requested = 0
        elif type_ == "Rejected":
            row.status = "REJECTED"
        elif type_ == "Merged":
            row.status = "MERGED"
        elif type_ == "Corrected":
            self._correct(row, data["corrected_event_id"], data["field"], data["new_value"])
        # DuplicateMerged and unknown types change only the version and last change.

    def _correct(self, row: IncidentRow, target: str, field: str, value: str) -> None:
        if field == "severity" and target == row.severity_event_id:
            row.severity = value
        if target == row.report_event_id:
            if field == "title":
                row.title = value
            elif field == "category":
                row.category = value
            elif field == "location.kecamatan":
                row.kecamatan = value
            elif field == "location.desa":
                row.desa = value
            elif field == "occurred_at":
                row.occurred_at = parse_micros(value)
            return
        decision = self.decisions.get(target)
        if decision is None:
            return
        if field in {"summary", "forum", "rationale"}:
            setattr(decision, field, value)
        elif field in {"valid_from", "valid_until"}:
            setattr(decision, field, parse_micros(value))
        elif field == "location.kecamatan":
            decision.kecamatan = value
        elif field == "location.desa":
            decision.desa = value
        else:
            return
        self.dirty_decisions.add(target)


def _discard(values: list[str], value: str) -> None:
    if value in values:
        values.remove(value)


def corrected_decision_targets(facts: Iterable[Fact]) -> set[str]:
    """Event ids a batch's corrections may refer to on decisions."""
    return {
        f.data["corrected_event_id"]
        for f in facts
        if f.type == "Corrected"
        and (f.data["field"] in DECISION_FIELDS or f.data["field"].startswith("location."))
    }


def quantile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between the closest ranks of sorted values (numpy's default)."""
    if not values:
        return None
    pos = q * (len(values) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (pos - low)


def percentiles(values: list[float]) -> Percentiles:
    values.sort()
    return Percentiles(len(values), quantile(values, 0.5), quantile(values, 0.9))


class PositionBusy(Exception):  # noqa: N818 (a signal, not an error)
    """Another process holds the projection position: it is applying a batch."""


class ProjectionStore:
    """The projections' tables in one database: apply batches, answer queries."""

    def __init__(self, sql: Database, decoder: FastDecoder, reference: ReferenceData) -> None:
        self.sql = sql
        self.decoder = decoder
        self.reference = reference
        self._shared = False  # set once another process is seen applying batches

    # --------------------------------------------------------------- writing

    def create_schema(self) -> None:
        with self.sql.transaction() as cur:
            for statement in SCHEMA:
                cur.execute(statement)
            cur.execute(
                self.sql.q(
                    "INSERT INTO projection_position (id, position) VALUES (1, 0) "
                    "ON CONFLICT (id) DO NOTHING"
                )
            )

    def position(self) -> int:
        with self.sql.transaction() as cur:
            cur.execute("SELECT position FROM projection_position WHERE id = 1")
            row = cur.fetchone()
            return int(row[0]) if row else 0

    def reset(self) -> None:
        """Empty every table and move the position back to zero, in one transaction."""
        with self.sql.transaction() as cur:
            cur.execute(
                self.sql.q("SELECT position FROM projection_position WHERE id = 1 FOR UPDATE")
            )
            for table in TABLES:
                cur.execute(f"DELETE FROM {table}")  # noqa: S608 - constant names
            cur.execute("UPDATE projection_position SET position = 0 WHERE id = 1")

    def decode(self, batch: Sequence[Notification]) -> list[Fact]:
        decode = self.decoder.decode
        return [fact for n in batch if (fact := decode(n)) is not None]

    def apply(self, batch: Sequence[Notification], start: int) -> tuple[int, int]:
        """Apply a batch read after ``start``: (the position now, incident events applied).

        When the stored position is no longer ``start`` (another process applied
        events meanwhile) nothing is written and the stored position is returned.
        Raises :class:`PositionBusy` when another process holds the position row.
        """
        if self._shared:  # replicas race for batches: skip decoding one already applied
            current = self.position()
            if current != start:
                return current, 0
        facts = self.decode(batch)
        end = int(batch[-1].id)
        with self.sql.transaction() as cur:
            cur.execute(
                self.sql.q(
                    "SELECT position FROM projection_position WHERE id = 1 FOR UPDATE SKIP LOCKED"
                )
            )
            found = cur.fetchone()
            if found is None:  # locked by another process (the row always exists)
                self._shared = True
                raise PositionBusy
            current = int(found[0])
            if current != start:
                self._shared = True  # another process applies batches too
                return current, 0
            created = {f.incident_id for f in facts if f.type == "Reported"}
            touched = {f.incident_id for f in facts} - created
            folder = BatchFolder(
                self._load_incidents(cur, touched),
                self._load_decisions(cur, corrected_decision_targets(facts)),
            )
            folder.fold(facts)
            self.write_incidents(cur, [row.to_db() for row in folder.rows.values()])
            self.write_decisions(
                cur, [folder.decisions[e].to_db() for e in sorted(folder.dirty_decisions)]
            )
            cur.execute(
                self.sql.q("UPDATE projection_position SET position = ? WHERE id = 1"), (end,)
            )
        return end, len(facts)

    def write_incidents(self, cur: Any, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            cur.executemany(self.sql.q(UPSERT_INCIDENT), rows)

    def write_decisions(self, cur: Any, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            cur.executemany(self.sql.q(UPSERT_DECISION), rows)

    def _select_in(
        self, cur: Any, columns: Sequence[str], table: str, key: str, keys: Iterable[str]
    ) -> list[Sequence[Any]]:
        ordered = sorted(keys)
        found: list[Sequence[Any]] = []
        for n in range(0, len(ordered), SELECT_CHUNK):
            chunk = ordered[n : n + SELECT_CHUNK]
            cur.execute(
                self.sql.q(
                    f"SELECT {', '.join(columns)} FROM {table} "  # noqa: S608 - constant names
                    f"WHERE {key} IN ({', '.join('?' for _ in chunk)})"
                ),
                chunk,
            )
            found.extend(cur.fetchall())
        return found

    def _load_incidents(self, cur: Any, ids: set[str]) -> dict[str, IncidentRow]:
        rows = self._select_in(cur, INCIDENT_COLUMNS, "proj_incident", "incident_id", ids)
        return {str(r[0]): IncidentRow.from_db(r) for r in rows}

    def _load_decisions(self, cur: Any, ids: set[str]) -> dict[str, DecisionRow]:
        rows = self._select_in(cur, DECISION_COLUMNS, "proj_decision", "event_id", ids)
        return {str(r[0]): DecisionRow.from_db(r) for r in rows}

    # --------------------------------------------------------------- reading

    def raw_rows(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, in key order (for comparisons and audits)."""
        keys = {"proj_incident": "incident_id", "proj_decision": "event_id"}
        result: dict[str, list[tuple[Any, ...]]] = {}
        with self.sql.transaction() as cur:
            for table, key in keys.items():
                cur.execute(f"SELECT * FROM {table} ORDER BY {key}")  # noqa: S608
                result[table] = [tuple(r) for r in cur.fetchall()]
        return result

    def list_incidents(
        self, board_filter: BoardFilter, after: int, limit: int
    ) -> list[tuple[int, UUID]]:
        where, params = board_filter.where("?")
        with self.sql.transaction() as cur:
            cur.execute(
                self.sql.q(
                    f"SELECT seq, incident_id FROM proj_incident WHERE seq > ? AND {where} "  # noqa: S608
                    "ORDER BY seq LIMIT ?"
                ),
                [after, *params, limit],
            )
            return [(int(seq), UUID(str(incident_id))) for seq, incident_id in cur.fetchall()]

    def board_rows(self, ids: Iterable[UUID]) -> dict[UUID, BoardRow]:
        with self.sql.transaction() as cur:
            rows = self._select_in(
                cur, INCIDENT_COLUMNS, "proj_incident", "incident_id", {str(i) for i in ids}
            )
        return {UUID(str(r[0])): _board_row(IncidentRow.from_db(r)) for r in rows}

    def vulnerability_map(self, at: datetime) -> list[KecamatanScore]:
        model = self.reference.vulnerability
        at_us = micros(at)
        with self.sql.transaction() as cur:
            cur.execute(
                self.sql.q(
                    "SELECT incident_id, title, severity, category, status, kecamatan,"
                    " occurred_at, reported_at FROM proj_incident"
                    " WHERE status <> ? AND status <> ? AND occurred_at <= ? ORDER BY seq"
                ),
                (*NOT_SCORED, at_us),
            )
            rows = cur.fetchall()
        by_kecamatan: dict[str, list[VulnerabilityReason]] = defaultdict(list)
        categories = self.reference.categories
        for incident_id, title, severity, category, status, kecamatan, occurred, reported in rows:
            known = categories.get(category)
            dimension = known.dimension if known else ""
            age_days = (at_us - int(occurred)) / MICROS_PER_DAY
            weight = (
                model.severity_weight(severity)
                * model.dimension_weight(dimension)
                * 0.5 ** (age_days / model.half_life_days)
                * (1.0 if status in SETTLED else model.open_multiplier)
            )
            by_kecamatan[kecamatan].append(
                VulnerabilityReason(
                    UUID(str(incident_id)),
                    title,
                    severity,
                    category,
                    dimension,
                    status,
                    to_datetime(int(occurred)),
                    to_datetime(int(reported)),
                    weight,
                )
            )
        names = {k.code: k.name for k in self.reference.kecamatan.values()}
        codes = list(names) + sorted(set(by_kecamatan) - set(names))
        result = []
        for code in codes:
            reasons = by_kecamatan.get(code, [])
            raw = math.fsum(r.weight for r in reasons)
            score = round(100.0 * (1.0 - math.exp(-raw / model.scale)), 2)
            heaviest = sorted(reasons, key=lambda r: -r.weight)[: model.max_reasons]
            result.append(
                KecamatanScore(
                    code,
                    names.get(code, code),
                    score,
                    model.band(score),
                    raw,
                    len(reasons),
                    tuple(heaviest),
                )
            )
        return result

    def decisions_in_force(self, at: datetime, kecamatan: str | None) -> list[DecisionInForce]:
        at_us = micros(at)
        where = "valid_from <= ? AND valid_until > ?"
        params: list[Any] = [at_us, at_us]
        if kecamatan is not None:
            where += " AND kecamatan = ?"
            params.append(kecamatan)
        with self.sql.transaction() as cur:
            cur.execute(
                self.sql.q(
                    f"SELECT {', '.join(DECISION_COLUMNS)} FROM proj_decision "  # noqa: S608
                    f"WHERE {where} ORDER BY valid_from, position"
                ),
                params,
            )
            rows = [DecisionRow.from_db(r) for r in cur.fetchall()]
        return [
            DecisionInForce(
                incident_id=UUID(r.incident_id),
                event_id=UUID(r.event_id),
                position=int(r.position),
                summary=r.summary,
                forum=r.forum,
                rationale=r.rationale,
                deciding_agencies=tuple(json.loads(r.deciding_agencies)),
                kecamatan=r.kecamatan,
                desa=r.desa,
                valid_from=to_datetime(int(r.valid_from)),
                valid_until=to_datetime(int(r.valid_until)),
                recorded_at=to_datetime(int(r.recorded_at)),
                recorded_by=r.recorded_by,
            )
            for r in rows
        ]

    def workload(self, at: datetime) -> list[AgencyWorkload]:
        at_us = micros(at)
        statuses = sorted(LEAD_OPEN | COORDINATOR_OPEN)
        marks = ", ".join("?" for _ in statuses)
        with self.sql.transaction() as cur:
            cur.execute(
                self.sql.q(
                    "SELECT status, severity, lead_agency, supporting_agencies, reported_at"  # noqa: S608
                    f" FROM proj_incident WHERE status IN ({marks}) AND reported_at <= ?"
                ),
                (*statuses, at_us),
            )
            rows = cur.fetchall()
        coordinator = self.reference.coordinator
        counts: dict[str, list[int]] = {
            a.code: [0, 0, 0, 0]
            for a in self.reference.agencies.values()
            if a.role is not Role.AUDITOR
        }
        for status, severity, lead, supporting, reported in rows:
            agency = lead if status in LEAD_OPEN and lead else coordinator
            entry = counts.setdefault(agency, [0, 0, 0, 0])
            entry[0] += 1
            if status in UNACKNOWLEDGED:
                entry[1] += 1
            if at_us - int(reported) > self.reference.overdue_after_seconds(severity) * 1e6:
                entry[2] += 1
            if status in LEAD_OPEN:
                for helper in json.loads(supporting):
                    counts.setdefault(helper, [0, 0, 0, 0])[3] += 1
        return [AgencyWorkload(agency, *c) for agency, c in counts.items()]

    def response_times(self, by: str) -> list[ResponseTimes]:
        columns = {
            "agency": "lead_agency",
            "severity": "severity",
            "category": "category",
            "kecamatan": "kecamatan",
        }
        if by not in columns:
            raise ValueError(
                "response times are grouped by kecamatan or by agency, severity or category: "
                f"{by!r}"
            )
        with self.sql.transaction() as cur:
            cur.execute(
                self.sql.q(
                    f"SELECT {columns[by]}, reported_at, acknowledged_at, verified_at,"  # noqa: S608
                    " resolved_at FROM proj_incident WHERE status <> ? AND status <> ?"
                    " ORDER BY seq"
                ),
                NOT_SCORED,
            )
            rows = cur.fetchall()
        groups: dict[str, list[list[float]]] = {}
        counts: dict[str, int] = defaultdict(int)
        for key, reported, acknowledged, verified, resolved in rows:
            samples = groups.setdefault(key, [[], [], []])
            counts[key] += 1
            for n, reached in enumerate((acknowledged, verified, resolved)):
                if reached is not None:
                    samples[n].append((int(reached) - int(reported)) / 1e6)
        return [
            ResponseTimes(
                key,
                counts[key],
                percentiles(samples[0]),
                percentiles(samples[1]),
                percentiles(samples[2]),
            )
            for key, samples in sorted(groups.items())
        ]


def _board_row(row: IncidentRow) -> BoardRow:
    def when(value: int | None) -> datetime | None:
        return None if value is None else to_datetime(int(value))

    return BoardRow(
        incident_id=UUID(row.incident_id),
        position=int(row.seq),
        version=int(row.version),
        status=row.status,
        title=row.title,
        severity=row.severity,
        category=row.category,
        kecamatan=row.kecamatan,
        desa=row.desa,
        lead_agency=row.lead_agency,
        supporting_agencies=tuple(row.supporting_agencies),
        pending_handover_to=row.pending_handover_to,
        close_requested=bool(row.close_requested),
        escalation_level=int(row.escalation_level),
        reporter_agency=row.reporter_agency,
        reported_at=to_datetime(int(row.reported_at)),
        occurred_at=to_datetime(int(row.occurred_at)),
        acknowledged_at=when(row.acknowledged_at),
        verified_at=when(row.verified_at),
        resolved_at=when(row.resolved_at),
        last_change_at=to_datetime(int(row.last_change_at)),
        last_change_position=int(row.last_change_position),
        last_event_type=row.last_event_type,
    )

"""The projections' store: batches applied to its tables (their layout in
:mod:`services.ledger.projections.tables`, how facts fold into rows in
:mod:`services.ledger.projections.folding`), and the queries.

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

import structlog
from eventsourcing.persistence import MapperDeserialisationError

from services.common.reference import ReferenceData, Role
from services.common.sql import Database
from services.ledger.projections.facts import Fact, FastDecoder, micros, to_datetime
from services.ledger.projections.filters import BoardFilter
from services.ledger.projections.folding import (
    BatchFolder,
    DecisionRow,
    IncidentRow,
    corrected_decision_targets,
)
from services.ledger.projections.model import (
    AgencyWorkload,
    BoardRow,
    DecisionInForce,
    KecamatanScore,
    Percentiles,
    ResponseTimes,
    VulnerabilityReason,
)
from services.ledger.projections.tables import (
    ADDED_COLUMNS,
    DECISION_COLUMNS,
    INCIDENT_COLUMNS,
    SCHEMA,
    SELECT_CHUNK,
    TABLES,
    UPSERT_DECISION,
    UPSERT_INCIDENT,
)
from services.ledger.store import RawRow

log = structlog.get_logger(__name__)

NOT_SCORED = ("REJECTED", "MERGED")
SETTLED = frozenset({"RESOLVED", "CLOSED"})
# Who is responsible for an incident in each open status: its lead agency, or the
# coordinator while it waits for verification or a lead.
LEAD_OPEN = frozenset({"ASSIGNED", "RESPONDING", "REOPENED"})
COORDINATOR_OPEN = frozenset({"REPORTED", "VERIFIED"})
UNACKNOWLEDGED = frozenset({"REPORTED", "ASSIGNED"})
MICROS_PER_DAY = 86_400_000_000
#: The cursor of the first page newest first: above every seq (the largest BIGINT).
NEWEST_START = (1 << 63) - 1


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
            for table, column in ADDED_COLUMNS:
                self._add_column(cur, table, column)
            cur.execute(
                self.sql.q(
                    "INSERT INTO projection_position (id, position) VALUES (1, 0) "
                    "ON CONFLICT (id) DO NOTHING"
                )
            )

    def _add_column(self, cur: Any, table: str, column: str) -> None:
        """Add ``column`` (text, empty by default) to ``table`` made before it existed."""
        add = f"ALTER TABLE {table} ADD COLUMN"  # constant names
        if self.sql.dialect == "postgres":
            cur.execute(f"{add} IF NOT EXISTS {column} TEXT NOT NULL DEFAULT ''")
            return
        cur.execute(f"PRAGMA table_info({table})")
        if column not in {str(row[1]) for row in cur.fetchall()}:
            cur.execute(f"{add} {column} TEXT NOT NULL DEFAULT ''")

    def position(self) -> int:
        with self.sql.read() as cur:
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

    def decode(self, batch: Sequence[RawRow]) -> list[Fact]:
        """The batch's incident events as facts. A row that no longer decodes (changed in
        the store: the library's own mapper cannot read it either) is left out and logged
        ``projections.event_undecodable``: the read side goes on past it, where before its
        every query failed at it for good. The incident's own reads refuse it (DATA_LOSS)
        and lists flag it. A row the library reads is never left out: a failure to decode
        it is raised, as before."""
        decode = self.decoder.decode
        facts = []
        for row in batch:
            try:
                fact = decode(row)
            except (ValueError, KeyError, TypeError, MapperDeserialisationError) as exc:
                if self.decoder.stored_event_reads(row):
                    raise
                log.error(
                    "projections.event_undecodable",
                    position=int(row[0]),
                    originator_id=str(row[1]),
                    version=int(row[2]),
                    error=f"{type(exc).__name__}: {exc}",
                )
                continue
            if fact is not None:
                facts.append(fact)
        return facts

    def apply(self, batch: Sequence[RawRow], start: int) -> tuple[int, int]:
        """Apply a batch read after ``start``: (the position now, incident events applied).

        When the stored position is no longer ``start`` (another process applied
        events meanwhile) nothing is written and the stored position is returned.
        Raises :class:`PositionBusy` when another process holds the position row.

        On SQLite the rows the batch touches are read and folded before the writing
        transaction, which then holds only the writes: its lock is the whole database's,
        and a command whose commit finds it taken waits in SQLite's busy handler (a
        millisecond at the least, then longer). A batch of 500 held it 1.5 ms when folded
        under it, 0.5 ms now (docs/performance.md, "the projections hold SQLite's write
        lock for their writes only"). The position, checked again under the lock, says
        whether those rows are still the ones the fold started from: every batch applied
        moves it, in the transaction that changes the rows. PostgreSQL locks rows only,
        and there a second transaction cost round trips (catching up in rounds of 5: 2.2-2.9
        s against 1.5-2.1 s), so its batch is read, folded and written in one.
        """
        if self._shared:  # replicas race for batches: skip decoding one already applied
            current = self.position()
            if current != start:
                return current, 0
        facts = self.decode(batch)
        end = int(batch[-1][0])
        folder: BatchFolder | None = None
        if self.sql.dialect == "sqlite":
            with self.sql.read() as cur:
                cur.execute("SELECT position FROM projection_position WHERE id = 1")
                found = cur.fetchone()
                current = int(found[0]) if found else 0
                if current != start:
                    self._shared = True  # another process applies batches too
                    return current, 0
                folder = self._folded(cur, facts)
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
            if current != start:  # applied meanwhile (after a fold: from rows now stale)
                self._shared = True
                return current, 0
            if folder is None:
                folder = self._folded(cur, facts)
            self.write_incidents(cur, [row.to_db() for row in folder.rows.values()])
            self.write_decisions(
                cur, [folder.decisions[e].to_db() for e in sorted(folder.dirty_decisions)]
            )
            cur.execute(
                self.sql.q("UPDATE projection_position SET position = ? WHERE id = 1"), (end,)
            )
        return end, len(facts)

    def _folded(self, cur: Any, facts: Sequence[Fact]) -> BatchFolder:
        """The rows the facts touch, as stored, with the facts folded in."""
        created = {f.incident_id for f in facts if f.type == "Reported"}
        touched = {f.incident_id for f in facts} - created
        incidents = self._load_incidents(cur, touched)
        orphans = touched - incidents.keys()
        if orphans:
            facts = self._without_unreadable_reports(facts, orphans)
        folder = BatchFolder(
            incidents, self._load_decisions(cur, corrected_decision_targets(facts))
        )
        folder.fold(facts)
        return folder

    def _without_unreadable_reports(
        self, facts: Sequence[Fact], orphans: set[str]
    ) -> Sequence[Fact]:
        """The facts less those of incidents whose report was left out because it no
        longer reads (:meth:`decode`): before, the first such event stopped the read side
        for good. An incident missing from the projections whose report reads is this
        module's fault: its events stay, and the fold raises at them."""
        unreadable = {i for i in orphans if not self.decoder.report_reads(i)}
        if not unreadable:
            return facts
        kept = []
        for fact in facts:
            if fact.incident_id in unreadable:
                log.error(
                    "projections.event_orphaned",
                    position=fact.position,
                    originator_id=fact.incident_id,
                    version=fact.version,
                    error="the incident's report no longer reads: changed in the store",
                )
            else:
                kept.append(fact)
        return kept

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
        with self.sql.read() as cur:
            for table, key in keys.items():
                cur.execute(f"SELECT * FROM {table} ORDER BY {key}")  # noqa: S608
                result[table] = [tuple(r) for r in cur.fetchall()]
        return result

    def list_incidents(
        self, board_filter: BoardFilter, after: int, limit: int, *, newest_first: bool = False
    ) -> list[tuple[int, UUID]]:
        """(seq, id) after the cursor ``after`` in the order asked: ascending seq, or descending
        (then ``after`` bounds from above; :data:`NEWEST_START` for the first page). Either is
        a walk of the unique index on seq that stops after ``limit`` matching rows."""
        where, params = board_filter.where("?")
        bound, direction = ("<", "DESC") if newest_first else (">", "ASC")
        with self.sql.read() as cur:
            cur.execute(
                self.sql.q(
                    f"SELECT seq, incident_id FROM proj_incident WHERE seq {bound} ? AND {where} "  # noqa: S608
                    f"ORDER BY seq {direction} LIMIT ?"
                ),
                [after, *params, limit],
            )
            return [(int(seq), UUID(str(incident_id))) for seq, incident_id in cur.fetchall()]

    def board_rows(self, ids: Iterable[UUID]) -> dict[UUID, BoardRow]:
        with self.sql.read() as cur:
            rows = self._select_in(
                cur, INCIDENT_COLUMNS, "proj_incident", "incident_id", {str(i) for i in ids}
            )
        return {UUID(str(r[0])): _board_row(IncidentRow.from_db(r)) for r in rows}

    def vulnerability_map(self, at: datetime) -> list[KecamatanScore]:
        model = self.reference.vulnerability
        at_us = micros(at)
        with self.sql.read() as cur:
            cur.execute(
                self.sql.q(
                    "SELECT incident_id, title, severity, category, status, kecamatan,"
                    " occurred_at, reported_at, reference FROM proj_incident"
                    " WHERE status <> ? AND status <> ? AND occurred_at <= ? ORDER BY seq"
                ),
                (*NOT_SCORED, at_us),
            )
            rows = cur.fetchall()
        by_kecamatan: dict[str, list[VulnerabilityReason]] = defaultdict(list)
        categories = self.reference.categories
        for (
            incident_id,
            title,
            severity,
            category,
            status,
            kecamatan,
            occurred,
            reported,
            reference,
        ) in rows:
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
                    str(reference),
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

    def decisions_in_force(
        self,
        at: datetime,
        kecamatan: str | None,
        after: tuple[int, int] | None = None,
        limit: int | None = None,
    ) -> list[DecisionInForce]:
        """In the order of their start, then of their record; ``after``: the (start in
        microseconds, position) of the last one of the page before; at most ``limit``."""
        at_us = micros(at)
        where = "d.valid_from <= ? AND d.valid_until > ?"
        params: list[Any] = [at_us, at_us]
        if kecamatan is not None:
            where += " AND d.kecamatan = ?"
            params.append(kecamatan)
        if after is not None:
            where += " AND (d.valid_from > ? OR (d.valid_from = ? AND d.position > ?))"
            params += [after[0], after[0], after[1]]
        bound = ""
        if limit is not None:
            bound = " LIMIT ?"
            params.append(limit)
        # With the incident's reference code (MKM-7QK3-9V), which every view shows.
        columns = ", ".join(f"d.{c}" for c in DECISION_COLUMNS)
        with self.sql.read() as cur:
            cur.execute(
                self.sql.q(
                    f"SELECT {columns}, i.reference FROM proj_decision d "  # noqa: S608
                    "LEFT JOIN proj_incident i ON i.incident_id = d.incident_id "
                    f"WHERE {where} ORDER BY d.valid_from, d.position{bound}"
                ),
                params,
            )
            found = cur.fetchall()
        rows = [(DecisionRow.from_db(r[:-1]), r[-1] or "") for r in found]
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
                reference=code,
            )
            for r, code in rows
        ]

    def workload(self, at: datetime) -> list[AgencyWorkload]:
        at_us = micros(at)
        statuses = sorted(LEAD_OPEN | COORDINATOR_OPEN)
        marks = ", ".join("?" for _ in statuses)
        with self.sql.read() as cur:
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
        with self.sql.read() as cur:
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
        reference=row.reference,
    )

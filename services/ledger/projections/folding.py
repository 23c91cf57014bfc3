"""Folding facts into rows: what each event type changes in its incident's row and in
the decisions (the documented mapping), one batch at a time."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from services.ledger.projections.facts import Fact, parse_micros
from services.ledger.projections.tables import DECISION_COLUMNS, INCIDENT_COLUMNS

DECISION_FIELDS = frozenset({"forum", "summary", "rationale", "valid_from", "valid_until"})


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
    reference: str

    @classmethod
    def reported(cls, fact: Fact) -> IncidentRow:
        row = cls()
        data = fact.data
        row.incident_id = fact.incident_id
        row.seq = fact.position
        row.status = "REPORTED"
        row.title = data["title"]
        row.reference = data["reference"]
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

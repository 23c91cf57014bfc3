"""What the projections answer: plain dataclasses, no protobuf."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID


@dataclass(frozen=True)
class Lag:
    """How far the projections are behind the store."""

    events: int  # notification ids after the projections' position, up to the store's maximum
    seconds: float  # age of the oldest event not applied yet (0 when caught up)


@dataclass(frozen=True)
class RebuildStats:
    events: int  # incident events applied
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class BoardRow:
    """One incident on the status board."""

    incident_id: UUID
    position: int  # the position of its Reported event: the list cursor
    version: int
    status: str
    title: str
    severity: str
    category: str
    kecamatan: str
    desa: str
    lead_agency: str
    supporting_agencies: tuple[str, ...]
    pending_handover_to: str
    close_requested: bool
    escalation_level: int
    reporter_agency: str
    reported_at: datetime
    occurred_at: datetime
    acknowledged_at: datetime | None
    verified_at: datetime | None
    resolved_at: datetime | None
    last_change_at: datetime
    last_change_position: int
    last_event_type: str
    reference: str = ""  # "" for an incident reported before reference codes existed


@dataclass(frozen=True)
class VulnerabilityReason:
    """One incident behind a kecamatan's score, with its weight (its share of ``raw``)."""

    incident_id: UUID
    title: str
    severity: str
    category: str
    dimension: str
    status: str
    occurred_at: datetime
    reported_at: datetime
    weight: float
    reference: str = ""


@dataclass(frozen=True)
class KecamatanScore:
    code: str
    name: str
    score: float  # 0-100, two decimals
    band: str  # low, medium or high
    raw: float  # the sum of the weights of all its incidents
    incidents: int  # how many incidents contribute
    reasons: tuple[VulnerabilityReason, ...]  # the heaviest, at most max_reasons


@dataclass(frozen=True)
class DecisionInForce:
    incident_id: UUID
    event_id: UUID
    position: int
    summary: str
    forum: str
    rationale: str
    deciding_agencies: tuple[str, ...]
    kecamatan: str
    desa: str
    valid_from: datetime
    valid_until: datetime
    recorded_at: datetime
    recorded_by: str  # the agency that recorded it
    reference: str = ""  # the incident's reference code ("" for one recorded before codes)


@dataclass(frozen=True)
class AgencyWorkload:
    agency: str
    open: int
    unacknowledged: int
    overdue: int
    supporting: int  # open incidents the agency supports (not counted in ``open``)


@dataclass(frozen=True)
class Percentiles:
    count: int  # incidents that reached the milestone
    median: float | None  # seconds
    p90: float | None  # seconds


@dataclass(frozen=True)
class ResponseTimes:
    key: str  # the agency, severity, category or kecamatan ("" for incidents without a lead)
    count: int  # incidents in the group
    acknowledge: Percentiles
    verify: Percentiles
    resolve: Percentiles

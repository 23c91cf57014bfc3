"""Each projection query's semantics on small hand-made scenarios (in-memory store).

Record times come from a test clock: the aggregate's envelope builder is wrapped so
that each event is recorded at the clock's current time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from services.common.reference import ReferenceData, VulnerabilityModel
from services.ledger.application import CommandResult, Ledger
from services.ledger.domain import incident as incident_module
from services.ledger.domain.commands import (
    AcceptHandover,
    AddSupportingAgency,
    ApproveClosure,
    AssessSeverity,
    AssignLeadAgency,
    EscalateIncident,
    LogAction,
    ProposeHandover,
    RecordCorrection,
    RecordDecision,
    RejectIncident,
    ReportIncident,
    RequestClosure,
    ResolveIncident,
    VerifyIncident,
)
from services.ledger.domain.incident import Actor, Envelope, RejectionReason
from services.ledger.projections import BoardFilter, Projections
from services.ledger.projections.store import quantile
from tests.support import reference

BASE = reference()
MODEL = VulnerabilityModel(
    severity_weights={"low": 1.0, "medium": 2.0, "high": 4.0, "critical": 8.0},
    dimension_weights={"contestation": 1.5, "participation": 1.0},
    half_life_days=1.0,
    open_multiplier=2.0,
    scale=10.0,
    max_reasons=10,
)
REF = dataclasses.replace(BASE, vulnerability=MODEL)
T0 = datetime(2024, 11, 26, 8, 0, tzinfo=UTC)
COORD = "desk_pilkada"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    real = incident_module._envelope_kwargs

    def at_clock_time(envelope: Envelope, previous_hash: str, **kwargs: Any) -> dict[str, Any]:
        values = real(envelope, previous_hash, **kwargs)
        values["timestamp"] = clock.now
        if envelope.occurred_at is None:
            values["occurred_at"] = clock.now
        return values

    monkeypatch.setattr(incident_module, "_envelope_kwargs", at_clock_time)
    return clock


@pytest.fixture
def app() -> Iterator[Ledger]:
    ledger = Ledger(REF, env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    yield ledger
    ledger.close()


@pytest.fixture
def projections(app: Ledger) -> Iterator[Projections]:
    projections = Projections(app, {"PERSISTENCE_MODULE": "eventsourcing.popo"}, REF)
    yield projections
    projections.close()


class Desk:
    """Commands as the agencies would send them."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.n = 0

    def envelope_for(self, agency: str, occurred_at: datetime | None = None) -> Envelope:
        self.n += 1
        rid = f"req-{self.n}"
        role = REF.agencies[agency].role
        return Envelope(Actor(agency, "officer", role), rid, rid, rid, occurred_at)

    def report(
        self,
        kecamatan: str = "ipuh",
        *,
        severity: str = "medium",
        category: str = "money_politics",
        occurred_at: datetime | None = None,
        title: str = "incident",
    ) -> CommandResult:
        return self.ledger.execute(
            self.envelope_for("kesbangpol", occurred_at),
            ReportIncident(
                title=title,
                description="",
                category=category,
                severity=severity,
                location={"kecamatan": kecamatan},
            ),
        )

    def to_responding(self, incident: UUID, lead: str = "polres") -> None:
        self.ledger.execute(self.envelope_for(COORD), VerifyIncident(incident, 0, ""))
        self.ledger.execute(self.envelope_for(COORD), AssignLeadAgency(incident, 0, lead, ""))
        self.ledger.execute(self.envelope_for(lead), LogAction(incident, 0, "patrol", None))

    def decide(
        self, incident: UUID, kecamatan: str, start: datetime, end: datetime, summary: str
    ) -> CommandResult:
        return self.ledger.execute(
            self.envelope_for("polres"),
            RecordDecision(
                incident,
                0,
                deciding_agencies=("polres", "kodim"),
                forum="Forkopimda",
                summary=summary,
                rationale="supporters massing",
                scope={"kecamatan": kecamatan},
                valid_from=start,
                valid_until=end,
            ),
        )


def score(raw: float) -> float:
    return round(100 * (1 - math.exp(-raw / MODEL.scale)), 2)


def test_vulnerability_map_scores_bands_and_reasons(
    app: Ledger, projections: Projections, clock: Clock
) -> None:
    desk = Desk(app)
    at = T0 + timedelta(days=1)
    open_high = desk.report(severity="high", occurred_at=T0, title="vote buying").incident_id
    settled = desk.report(severity="low", category="flood", occurred_at=T0).incident_id
    desk.to_responding(settled)
    app.execute(desk.envelope_for("polres"), ResolveIncident(settled, 0, "water receded"))
    rejected = desk.report(severity="critical", occurred_at=T0).incident_id
    app.execute(desk.envelope_for(COORD), RejectIncident(rejected, 0, RejectionReason.HOAX, "hoax"))
    desk.report(severity="critical", occurred_at=at + timedelta(hours=1))  # after `at`
    other = desk.report("penarik", severity="low", category="flood", occurred_at=at).incident_id

    by_code = {s.code: s for s in projections.vulnerability_map(at)}

    assert list(by_code) == list(REF.kecamatan)  # every kecamatan, in the file's order
    ipuh = by_code["ipuh"]
    # open high contestation, one half-life old: 4 x 1.5 x 0.5 x 2 = 6
    # resolved low participation, one half-life old: 1 x 1 x 0.5 x 1 = 0.5
    assert ipuh.raw == pytest.approx(6.5)
    assert ipuh.score == score(6.5) == 47.8
    assert ipuh.band == "medium"
    assert ipuh.incidents == 2
    assert [r.incident_id for r in ipuh.reasons] == [open_high, settled]
    assert [r.weight for r in ipuh.reasons] == pytest.approx([6.0, 0.5])
    first = ipuh.reasons[0]
    assert (first.title, first.severity, first.category, first.dimension, first.status) == (
        "vote buying",
        "high",
        "money_politics",
        "contestation",
        "REPORTED",
    )
    assert first.occurred_at == T0
    assert first.reported_at == T0
    # open low participation, age 0: 1 x 1 x 1 x 2 = 2
    assert by_code["penarik"].raw == pytest.approx(2.0)
    assert by_code["penarik"].band == "medium"
    assert by_code["penarik"].reasons[0].incident_id == other
    assert (by_code["air_rami"].score, by_code["air_rami"].band) == (0.0, "low")
    assert by_code["air_rami"].reasons == ()

    # A correction of the report's category changes its dimension, so its weight.
    events = app.incident_events(open_high, after_version=0, limit=1)
    app.execute(
        desk.envelope_for("kesbangpol"),
        RecordCorrection(
            open_high,
            0,
            event_id=events[0].event.event_id,
            field="category",
            old_value="money_politics",
            new_value="flood",
            reason="misfiled",
        ),
    )
    # A second open high incident pushes ipuh over the high threshold.
    desk.report(severity="high", occurred_at=at)
    ipuh = next(s for s in projections.vulnerability_map(at) if s.code == "ipuh")
    raw = 4 * 1.0 * 0.5 * 2 + 0.5 + 4 * 1.5 * 1 * 2
    assert ipuh.raw == pytest.approx(raw)
    assert ipuh.score == score(raw) >= 49.33
    assert ipuh.band == "high"
    assert [r.weight for r in ipuh.reasons] == pytest.approx([12.0, 4.0, 0.5])


def test_band_thresholds_are_the_ikp_regency_ones() -> None:
    model = BASE.vulnerability
    assert (model.band(49.33), model.band(49.32), model.band(13.47), model.band(13.46)) == (
        "high",
        "medium",
        "medium",
        "low",
    )


def test_decisions_in_force_by_time_and_kecamatan_with_corrections(
    app: Ledger, projections: Projections, clock: Clock
) -> None:
    desk = Desk(app)
    incident = desk.report().incident_id
    desk.to_responding(incident)
    start = datetime(2024, 11, 26, 18, 0, tzinfo=UTC)
    end = datetime(2024, 11, 28, 18, 0, tzinfo=UTC)
    clock.advance(hours=2)
    ipuh = desk.decide(incident, "ipuh", start, end, "large gatherings restricted in Ipuh")
    kota = desk.decide(incident, "kota_mukomuko", start, start + timedelta(hours=6), "curfew")

    def summaries(at: datetime, kecamatan: str | None = None) -> list[str]:
        return [d.summary for d in projections.decisions_in_force(at, kecamatan)]

    assert summaries(start - timedelta(seconds=1)) == []
    assert summaries(start) == ["large gatherings restricted in Ipuh", "curfew"]
    assert summaries(start + timedelta(hours=7)) == ["large gatherings restricted in Ipuh"]
    assert summaries(start, "kota_mukomuko") == ["curfew"]
    assert summaries(start, "penarik") == []
    assert summaries(end) == []  # valid_until is exclusive
    (decision,) = projections.decisions_in_force(start, "ipuh")
    assert decision.incident_id == incident
    assert decision.event_id == ipuh.event_id
    assert decision.deciding_agencies == ("polres", "kodim")
    assert (decision.forum, decision.rationale) == ("Forkopimda", "supporters massing")
    assert (decision.kecamatan, decision.valid_from, decision.valid_until) == ("ipuh", start, end)
    assert (decision.recorded_by, decision.recorded_at) == ("polres", clock.now)

    later = end + timedelta(hours=2)
    app.execute(
        desk.envelope_for("polres"),
        RecordCorrection(
            incident,
            0,
            event_id=ipuh.event_id,
            field="valid_until",
            old_value=end.isoformat(timespec="microseconds"),
            new_value="2024-11-29T18:00:00+00:00",
            reason="extended by the Forkopimda",
        ),
    )
    app.execute(
        desk.envelope_for("polres"),
        RecordCorrection(
            incident,
            0,
            event_id=kota.event_id,
            field="summary",
            old_value="curfew",
            new_value="night curfew",
            reason="wording",
        ),
    )
    assert summaries(later, "ipuh") == ["large gatherings restricted in Ipuh"]
    assert summaries(start, "kota_mukomuko") == ["night curfew"]
    (extended,) = projections.decisions_in_force(later)
    assert extended.valid_until == datetime(2024, 11, 29, 18, 0, tzinfo=UTC)


def test_a_decision_outlives_its_closed_incident_until_its_end_is_corrected(
    app: Ledger, projections: Projections, clock: Clock
) -> None:
    """As docs/api.md says: closing the incident ends no decision; correcting its end
    lifts it early (there is no revocation)."""
    desk = Desk(app)
    incident = desk.report().incident_id
    desk.to_responding(incident)
    start = datetime(2024, 11, 26, 18, 0, tzinfo=UTC)
    end = start + timedelta(days=3)
    decided = desk.decide(incident, "ipuh", start, end, "large gatherings restricted")
    app.execute(desk.envelope_for("polres"), ResolveIncident(incident, 0, "dispersed"))
    app.execute(desk.envelope_for("polres"), RequestClosure(incident, 0, ""))
    app.execute(desk.envelope_for(COORD), ApproveClosure(incident, 0, ""))
    assert app.get_incident(incident).status.value == "CLOSED"
    day_two = start + timedelta(days=1, hours=12)
    assert [d.summary for d in projections.decisions_in_force(day_two)] == [
        "large gatherings restricted"
    ]
    lifted = start + timedelta(days=1)
    app.execute(
        desk.envelope_for("polres"),
        RecordCorrection(
            incident,
            0,
            event_id=decided.event_id,
            field="valid_until",
            old_value=end.isoformat(),
            new_value=lifted.isoformat(),
            reason="lifted by the Forkopimda",
        ),
    )
    assert projections.decisions_in_force(day_two) == []
    assert len(projections.decisions_in_force(lifted - timedelta(seconds=1))) == 1


def test_workload_open_unacknowledged_and_overdue_per_agency(
    app: Ledger, projections: Projections, clock: Clock
) -> None:
    desk = Desk(app)
    assigned = desk.report(severity="critical").incident_id  # polres, not acted on
    app.execute(desk.envelope_for(COORD), VerifyIncident(assigned, 0, ""))
    app.execute(desk.envelope_for(COORD), AssignLeadAgency(assigned, 0, "polres", ""))
    responding = desk.report(severity="low").incident_id  # polres, acting; kodim supports
    desk.to_responding(responding)
    app.execute(desk.envelope_for("polres"), AddSupportingAgency(responding, 0, "kodim", ""))
    desk.report(severity="high")  # waits for the coordinator's verification
    closed = desk.report(severity="critical").incident_id
    desk.to_responding(closed, lead="bpbd")
    app.execute(desk.envelope_for("bpbd"), ResolveIncident(closed, 0, "done"))

    def load(at: datetime) -> dict[str, tuple[int, int, int, int]]:
        rows = projections.workload(at)
        return {w.agency: (w.open, w.unacknowledged, w.overdue, w.supporting) for w in rows}

    now = load(T0 + timedelta(minutes=30))
    assert now["polres"] == (2, 1, 0, 0)
    assert now["desk_pilkada"] == (1, 1, 0, 0)
    assert now["kodim"] == (0, 0, 0, 1)
    assert now["bpbd"] == (0, 0, 0, 0)  # resolved is not open
    assert "inspektorat" not in now  # auditors carry no workload
    # After two hours the critical one (target 1 h) is overdue, the low one (72 h) not.
    assert load(T0 + timedelta(hours=2))["polres"] == (2, 1, 1, 0)
    # After five hours the high one (target 4 h) waiting for the coordinator is too.
    assert load(T0 + timedelta(hours=5))["desk_pilkada"] == (1, 1, 1, 0)
    assert load(T0 + timedelta(days=4))["polres"] == (2, 1, 2, 0)


def test_response_times_median_and_p90(app: Ledger, projections: Projections, clock: Clock) -> None:
    desk = Desk(app)
    minutes = [10, 20, 60]
    for n, delay in enumerate(minutes):
        clock.now = T0 + timedelta(hours=n)
        incident = desk.report(severity="high", category="hoax").incident_id
        clock.advance(minutes=delay / 2)
        app.execute(desk.envelope_for(COORD), VerifyIncident(incident, 0, ""))
        app.execute(desk.envelope_for(COORD), AssignLeadAgency(incident, 0, "polres", ""))
        clock.advance(minutes=delay / 2)
        app.execute(desk.envelope_for("polres"), LogAction(incident, 0, "patrol", None))
        clock.advance(minutes=delay)
        if n < 2:
            app.execute(desk.envelope_for("polres"), ResolveIncident(incident, 0, "done"))
    clock.now = T0 + timedelta(hours=5)
    desk.report(severity="low", category="flood")  # never verified

    by_agency = {r.key: r for r in projections.response_times("agency")}
    polres = by_agency["polres"]
    assert polres.count == 3
    assert polres.acknowledge.count == 3
    assert polres.acknowledge.median == 20 * 60
    assert polres.acknowledge.p90 == pytest.approx((20 + 0.8 * 40) * 60)
    assert polres.verify.median == 10 * 60
    assert polres.verify.p90 == pytest.approx((10 + 0.8 * 20) * 60)
    assert (polres.resolve.count, polres.resolve.median) == (2, 30 * 60)
    assert polres.resolve.p90 == pytest.approx((20 + 0.9 * 20) * 60)
    unassigned = by_agency[""]
    assert (unassigned.count, unassigned.acknowledge.count, unassigned.acknowledge.median) == (
        1,
        0,
        None,
    )
    by_severity = {r.key: r for r in projections.response_times("severity")}
    assert set(by_severity) == {"high", "low"}
    assert by_severity["high"].acknowledge == polres.acknowledge
    by_category = {r.key: r.count for r in projections.response_times("category")}
    assert by_category == {"hoax": 3, "flood": 1}
    by_kecamatan = {r.key: r.count for r in projections.response_times("kecamatan")}
    assert sum(by_kecamatan.values()) == 4 and "" not in by_kecamatan
    with pytest.raises(ValueError, match="agency, severity or category"):
        projections.response_times("desa")


def test_quantiles_interpolate_between_closest_ranks() -> None:
    assert quantile([], 0.5) is None
    assert quantile([7.0], 0.9) == 7.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert quantile([float(n) for n in range(1, 11)], 0.9) == pytest.approx(9.1)


def test_board_follows_the_lifecycle_and_serves_the_list(
    app: Ledger, projections: Projections, clock: Clock
) -> None:
    desk = Desk(app)
    first = desk.report(severity="low").incident_id
    second = desk.report("penarik", severity="high").incident_id
    desk.to_responding(second, lead="bpbd")
    app.execute(desk.envelope_for("bpbd"), ProposeHandover(second, 0, "polres", "police matter"))
    clock.advance(minutes=5)
    app.execute(desk.envelope_for("bpbd"), EscalateIncident(second, 0, "spreading"))
    row = projections.row(second)
    assert row is not None
    assert (row.status, row.lead_agency, row.pending_handover_to, row.escalation_level) == (
        "RESPONDING",
        "bpbd",
        "polres",
        1,
    )
    assert (row.last_event_type, row.last_change_at) == ("Escalated", clock.now)
    assert row.acknowledged_at == T0
    app.execute(desk.envelope_for("polres"), AcceptHandover(second, 0, "taken over"))
    row = projections.row(second)
    assert row is not None
    assert (row.lead_agency, row.pending_handover_to) == ("polres", "")

    def listed(text: str, after: int = 0, limit: int = 10) -> list[UUID]:
        board_filter = BoardFilter.parse(text, REF)
        return [i for _, i in projections.list_incidents(board_filter, after, limit)]

    assert listed("") == [first, second]
    assert listed('lead_agency = "polres" AND status = "RESPONDING"') == [second]
    assert listed('kecamatan != "penarik"') == [first]
    cursor, _ = projections.list_incidents(BoardFilter(), 0, 1)[0]
    assert listed("", after=cursor) == [second]
    assert projections.row(UUID(int=1)) is None


def test_as_of_answers_as_the_projections_did_then(
    app: Ledger, projections: Projections, clock: Clock
) -> None:
    desk = Desk(app)
    incident = desk.report(severity="low").incident_id
    then = desk.report(severity="high").position
    at = T0 + timedelta(hours=1)
    before = (projections.vulnerability_map(at), projections.list_incidents(BoardFilter(), 0, 9))
    app.execute(
        desk.envelope_for(COORD), AssessSeverity(incident, 0, "critical", "worse than thought")
    )
    assert projections.vulnerability_map(at) != before[0]
    with projections.as_of(then) as past:
        assert past.position == then
        assert (past.vulnerability_map(at), past.list_incidents(BoardFilter(), 0, 9)) == before
        row = past.row(incident)
        assert row is not None
        assert row.severity == "low"


def test_reference_data_sections_have_defaults() -> None:
    assert BASE.vulnerability.high_threshold == 49.33
    assert BASE.vulnerability.dimension_weight("contestation") == 1.2
    assert BASE.overdue_after_seconds("critical") == 3600.0
    raw: dict[str, Any] = {
        "regency": "X",
        "agencies": [{"code": "desk", "name": "Desk", "role": "coordinator"}],
        "kecamatan": [{"code": "k", "name": "K"}],
        "categories": [{"code": "c", "name": "C", "dimension": "participation"}],
        "severities": [
            {"code": "minor", "name": "Minor", "rank": 1},
            {"code": "major", "name": "Major", "rank": 2},
        ],
        "default_severity": "minor",
    }
    plain = ReferenceData.from_mapping(raw)
    assert plain.vulnerability.severity_weights == {"minor": 1.0, "major": 2.0}
    assert plain.vulnerability.dimension_weight("participation") == 1.0
    assert (plain.vulnerability.half_life_days, plain.vulnerability.scale) == (7.0, 20.0)
    assert plain.overdue_after_seconds("major") == 24 * 3600.0
    tuned = ReferenceData.from_mapping(
        {
            **raw,
            "vulnerability": {"scale": 5, "bands": {"high": 60}},
            "overdue_after_hours": {"major": 2},
        }
    )
    assert (tuned.vulnerability.scale, tuned.vulnerability.high_threshold) == (5.0, 60.0)
    assert tuned.overdue_after_seconds("major") == 7200.0


def test_corrections_change_the_board_only_where_the_corrected_value_is_in_effect(
    app: Ledger, projections: Projections, clock: Clock
) -> None:
    desk = Desk(app)
    incident = desk.report(severity="low", title="crowd").incident_id
    desk.to_responding(incident)
    app.execute(desk.envelope_for(COORD), AssessSeverity(incident, 0, "high", "bigger"))
    history = app.incident_events(incident, after_version=0, limit=100)
    by_type = {type(e.event).__name__: e.event.event_id for e in history}

    def correct(event: str, field: str, old: str, new: str) -> None:
        app.execute(
            desk.envelope_for(COORD),
            RecordCorrection(
                incident,
                0,
                event_id=by_type[event],
                field=field,
                old_value=old,
                new_value=new,
                reason="fix",
            ),
        )

    def board() -> tuple[str, str, str]:
        row = projections.row(incident)
        assert row is not None
        return row.severity, row.title, row.kecamatan

    correct("Reported", "severity", "low", "medium")  # not the severity in effect
    assert board() == ("high", "crowd", "ipuh")
    correct("SeverityAssessed", "severity", "high", "critical")
    correct("Reported", "title", "crowd", "large crowd")
    correct("ActionLogged", "location.kecamatan", "ipuh", "penarik")  # not the report's place
    assert board() == ("critical", "large crowd", "ipuh")
    correct("Reported", "location.kecamatan", "ipuh", "penarik")
    assert board() == ("critical", "large crowd", "penarik")
    incident_state = app.get_incident(incident)
    assert (incident_state.severity, incident_state.location["kecamatan"]) == (
        "critical",
        "penarik",
    )

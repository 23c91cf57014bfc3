"""Random command sequences against the Incident aggregate, checked against a model.

The model below is written from the design (the lifecycle in design.md and the
permission rules), not from the aggregate's code. After every step the aggregate
must agree with it, and replaying the events recorded so far must rebuild the
same aggregate with the same head hash.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from services.common.errors import LedgerError
from services.ledger.domain.incident import Incident, RejectionReason, Status
from tests.unit.incident_builders import AUDITOR, COORDINATOR, LOCATION, REF, envelope_for, replay

RESPONDERS = ("kesbangpol", "polres", "kodim", "bpbd", "satpolpp")
SEVERITIES = ("low", "medium", "high", "critical")
# Symbolic actors resolved against the model, so that commands reach deep states.
ACTORS = ("@coordinator", "@lead", "@supporter", "@reporter", "@recipient", AUDITOR, *RESPONDERS)
TERMINAL = {Status.CLOSED, Status.REJECTED, Status.MERGED}
# (event type, field) pairs a correction may change, among the fields the rules try.
CORRECTABLE = {
    ("Reported", "title"),
    ("Reported", "severity"),
    ("SeverityAssessed", "severity"),
    ("ActionLogged", "action"),
    ("Resolved", "resolution"),
}
# Half of the draws pick the coordinator or the lead, who may do the most.
WHO = st.one_of(st.sampled_from(("@coordinator", "@lead")), st.sampled_from(ACTORS))
T0 = datetime(2024, 11, 27, 7, 0, tzinfo=UTC)
MAX_INCIDENTS = 4


@dataclass
class Model:
    """What an incident should look like, kept independently of the aggregate."""

    reporter: str
    title: str
    severity: str
    status: Status = Status.REPORTED
    lead: str = ""
    supporting: list[str] = field(default_factory=list)
    # (proposing agency, receiving agency)
    pending: tuple[str, str] | None = None
    close_requested: bool = False
    escalation: int = 0
    decisions: int = 0
    merged_into: UUID | None = None
    merged: list[UUID] = field(default_factory=list)
    severity_event: UUID | None = None
    # Per event id: type, author agency and current values of correctable fields.
    types: dict[UUID, str] = field(default_factory=dict)
    authors: dict[UUID, str] = field(default_factory=dict)
    values: dict[UUID, dict[str, str]] = field(default_factory=dict)
    events: list[Incident.Event] = field(default_factory=list)

    @property
    def version(self) -> int:
        return len(self.events)

    def involved(self, agency: str) -> bool:
        return agency == COORDINATOR or agency == self.lead or agency in self.supporting


class IncidentMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.incidents: list[Incident] = []
        self.models: list[Model] = []

    # ------------------------------------------------------------ plumbing

    def _new_incident(self, reporter: str, severity: str) -> None:
        title = f"incident {len(self.incidents)}"
        incident = Incident.report(
            envelope_for(reporter),
            title=title,
            description="d",
            category="crowd_gathering",
            severity=severity,
            location=dict(LOCATION),
            incident_id=uuid4(),
        )
        model = Model(reporter=reporter, title=title, severity=severity)
        self.incidents.append(incident)
        self.models.append(model)
        [reported] = self._collect(incident, model, ["Reported"], reporter)
        model.values[reported] = {"title": title, "severity": severity}
        model.severity_event = reported

    def _collect(
        self, incident: Incident, model: Model, expected_types: list[str], author: str
    ) -> list[UUID]:
        """Moves the aggregate's new events to the model, checking their types."""
        new = list(incident.collect_events())
        assert [type(e).__name__ for e in new] == expected_types
        ids = []
        for e in new:
            assert isinstance(e, Incident.Event)
            assert e.actor_agency == author
            model.events.append(e)
            model.types[e.event_id] = type(e).__name__
            model.authors[e.event_id] = author
            ids.append(e.event_id)
        assert incident.version == model.version
        return ids

    def _pick(self, index: int) -> tuple[Incident, Model]:
        n = index % len(self.incidents)
        return self.incidents[n], self.models[n]

    def _actor(self, symbol: str, model: Model) -> str:
        if symbol == "@coordinator":
            return COORDINATOR
        if symbol == "@lead":
            return model.lead or "bpbd"
        if symbol == "@supporter":
            return model.supporting[0] if model.supporting else "satpolpp"
        if symbol == "@reporter":
            return model.reporter
        if symbol == "@recipient":
            return model.pending[1] if model.pending else "kodim"
        return symbol

    def _attempt(
        self,
        incident: Incident,
        model: Model,
        name: str,
        expected_ok: bool,
        action: Callable[[], None],
        *,
        allowed_when_terminal: bool = False,
    ) -> bool:
        """Runs a command; it must be accepted exactly when the model says so."""
        before = incident.version
        was_terminal = model.status in TERMINAL
        try:
            action()
        except LedgerError as error:
            assert not expected_ok, f"{name} refused unexpectedly: {error!r}"
            assert incident.version == before
            assert incident.pending_events == []
            event(f"refused {name}")
            return False
        assert expected_ok, f"{name} accepted, the model expected a refusal"
        assert incident.version == before + 1
        if was_terminal:
            assert allowed_when_terminal, f"{name} accepted in terminal {model.status}"
        event(f"accepted {name}")
        return True

    # -------------------------------------------------------------- rules

    @initialize(
        reporters=st.lists(st.sampled_from(RESPONDERS), min_size=2, max_size=2),
        severity=st.sampled_from(SEVERITIES),
        depths=st.lists(st.one_of(st.just(0), st.integers(1, 9)), min_size=2, max_size=2),
        lead=st.sampled_from(RESPONDERS),
    )
    def start(self, reporters: list[str], severity: str, depths: list[int], lead: str) -> None:
        """Two incidents, each taken some way along the happy path (checked as any step)."""
        for n, reporter in enumerate(reporters):
            self._new_incident(reporter, severity)
            for _ in range(depths[n]):
                self._advance_once(n, lead, detour=n == 1)

    @precondition(lambda self: len(self.incidents) < MAX_INCIDENTS)
    @rule(
        reporter=st.sampled_from((*RESPONDERS, COORDINATOR)), severity=st.sampled_from(SEVERITIES)
    )
    def report_another(self, reporter: str, severity: str) -> None:
        self._new_incident(reporter, severity)

    @rule(n=st.integers(0, 3), who=WHO)
    def verify(self, n: int, who: str) -> None:
        incident, m = self._pick(n)
        a = self._actor(who, m)
        ok = m.status is Status.REPORTED and a == COORDINATOR
        if self._attempt(incident, m, "verify", ok, lambda: incident.verify(envelope_for(a), "")):
            m.status = Status.VERIFIED
            self._collect(incident, m, ["Verified"], a)

    @rule(n=st.integers(0, 3), who=WHO, reason=st.sampled_from(RejectionReason))
    def reject(self, n: int, who: str, reason: RejectionReason) -> None:
        incident, m = self._pick(n)
        a = self._actor(who, m)
        ok = m.status is Status.REPORTED and a == COORDINATOR
        if self._attempt(
            incident, m, "reject", ok, lambda: incident.reject(envelope_for(a), reason, "no")
        ):
            m.status = Status.REJECTED
            self._collect(incident, m, ["Rejected"], a)

    @rule(n=st.integers(0, 3), into=st.integers(0, 3), who=WHO)
    def merge(self, n: int, into: int, who: str) -> None:
        incident, m = self._pick(n)
        other, tm = self._pick(into)
        a = self._actor(who, m)
        ok = (
            m.status is Status.REPORTED
            and a == COORDINATOR
            and other is not incident
            and tm.status not in {Status.REJECTED, Status.MERGED}
        )
        target_version = other.version
        accepted = self._attempt(
            incident, m, "merge", ok, lambda: incident.merge_into(envelope_for(a), other, "dup")
        )
        if not accepted:
            assert other.version == target_version
            return
        # Both incidents record an event: one each.
        assert other.version == target_version + 1
        m.status = Status.MERGED
        m.merged_into = other.id
        tm.merged.append(incident.id)
        self._collect(incident, m, ["Merged"], a)
        self._collect(other, tm, ["DuplicateMerged"], a)

    @rule(n=st.integers(0, 3), who=WHO, severity=st.sampled_from(SEVERITIES))
    def assess_severity(self, n: int, who: str, severity: str) -> None:
        incident, m = self._pick(n)
        a = self._actor(who, m)
        ok = (
            a != AUDITOR
            and m.status not in TERMINAL
            and (m.involved(a) or a == m.reporter)
            and severity != m.severity
        )
        if self._attempt(
            incident,
            m,
            "assess",
            ok,
            lambda: incident.assess_severity(envelope_for(a), severity, ""),
        ):
            [assessed] = self._collect(incident, m, ["SeverityAssessed"], a)
            m.severity = severity
            m.severity_event = assessed
            m.values[assessed] = {"severity": severity}

    @rule(n=st.integers(0, 3), who=WHO, lead=st.sampled_from(RESPONDERS))
    def assign_lead(self, n: int, who: str, lead: str) -> None:
        incident, m = self._pick(n)
        a = self._actor(who, m)
        ok = m.status in {Status.VERIFIED, Status.REOPENED} and a == COORDINATOR
        if self._attempt(
            incident, m, "assign", ok, lambda: incident.assign_lead(envelope_for(a), lead, "")
        ):
            m.status = Status.ASSIGNED
            m.lead = lead
            if lead in m.supporting:
                m.supporting.remove(lead)
            m.pending = None  # a former lead's proposal does not bind the new lead
            self._collect(incident, m, ["LeadAssigned"], a)

    @rule(n=st.integers(0, 3), who=WHO, agency=st.sampled_from(RESPONDERS))
    def add_supporter(self, n: int, who: str, agency: str) -> None:
        incident, m = self._pick(n)
        a = self._actor(who, m)
        ok = (
            m.status in {Status.VERIFIED, Status.ASSIGNED, Status.RESPONDING, Status.REOPENED}
            and a in {COORDINATOR, m.lead}
            and agency != m.lead
            and agency not in m.supporting
        )
        if self._attempt(
            incident,
            m,
            "support",
            ok,
            lambda: incident.add_supporting_agency(envelope_for(a), agency, ""),
        ):
            m.supporting.append(agency)
            self._collect(incident, m, ["SupportingAgencyAdded"], a)

    @rule(n=st.integers(0, 3), who=WHO, recipient=st.sampled_from(("@supporter", *RESPONDERS)))
    def propose_handover(self, n: int, who: str, recipient: str) -> None:
        incident, m = self._pick(n)
        a = self._actor(who, m)
        to = self._actor(recipient, m)
        ok = (
            m.status in {Status.ASSIGNED, Status.RESPONDING}
            and a in {COORDINATOR, m.lead}
            and m.pending is None
            and to != m.lead
        )
        if self._attempt(
            incident,
            m,
            "propose",
            ok,
            lambda: incident.propose_handover(envelope_for(a), to, "shift"),
        ):
            m.pending = (m.lead, to)
            self._collect(incident, m, ["HandoverProposed"], a)

    @rule(n=st.integers(0, 3), who=WHO)
    def accept_handover(self, n: int, who: str) -> None:
        incident, m = self._pick(n)
        a = self._actor(who, m)
        ok = (
            a != AUDITOR
            and m.status in {Status.ASSIGNED, Status.RESPONDING}
            and m.pending is not None
            and m.pending[1] == a
        )
        if self._attempt(
            incident, m, "accept", ok, lambda: incident.accept_handover(envelope_for(a), "")
        ):
            m.lead = a
            if a in m.supporting:
                m.supporting.remove(a)
            m.pending = None
            self._collect(incident, m, ["HandoverAccepted"], a)

    @rule(
        n=st.integers(0, 3),
        who=WHO,
        deciding=st.lists(st.sampled_from(RESPONDERS), min_size=1, max_size=3, unique=True),
        hours=st.integers(-1, 3),
    )
    def record_decision(self, n: int, who: str, deciding: list[str], hours: int) -> None:
        incident, m = self._pick(n)
        a = self._actor(who, m)
        allowed = {
            Status.VERIFIED,
            Status.ASSIGNED,
            Status.RESPONDING,
            Status.RESOLVED,
            Status.REOPENED,
        }
        ok = (
            m.status in allowed
            and m.involved(a)
            and (a == COORDINATOR or a in deciding)
            and hours > 0
        )

        def act() -> None:
            incident.record_decision(
                envelope_for(a),
                deciding_agencies=deciding,
                forum="rakor",
                summary="s",
                rationale="r",
                scope={"kecamatan": "ipuh"},
                valid_from=T0,
                valid_until=T0 + timedelta(hours=hours),
                zone=UTC,
            )

        if self._attempt(incident, m, "decide", ok, act):
            m.decisions += 1
            self._collect(incident, m, ["DecisionRecorded"], a)

    @rule(n=st.integers(0, 3), who=WHO, text=st.sampled_from(("a", "b")))
    def log_action(self, n: int, who: str, text: str) -> None:
        incident, m = self._pick(n)
        a = self._actor(who, m)
        allowed = {Status.ASSIGNED, Status.RESPONDING, Status.RESOLVED, Status.REOPENED}
        ok = m.status in allowed and m.involved(a)
        if self._attempt(
            incident, m, "log", ok, lambda: incident.log_action(envelope_for(a), text, {})
        ):
            if m.status is Status.ASSIGNED:
                m.status = Status.RESPONDING
            [logged] = self._collect(incident, m, ["ActionLogged"], a)
            m.values[logged] = {"action": text}

    @rule(n=st.integers(0, 3), who=WHO)
    def escalate(self, n: int, who: str) -> None:
        incident, m = self._pick(n)
        a = self._actor(who, m)
        allowed = {
            Status.REPORTED,
            Status.VERIFIED,
            Status.ASSIGNED,
            Status.RESPONDING,
            Status.REOPENED,
        }
        ok = a != AUDITOR and m.status in allowed and (m.involved(a) or a == m.reporter)
        if self._attempt(
            incident, m, "escalate", ok, lambda: incident.escalate(envelope_for(a), "worse")
        ):
            m.escalation += 1
            self._collect(incident, m, ["Escalated"], a)

    @rule(n=st.integers(0, 3), who=WHO)
    def resolve(self, n: int, who: str) -> None:
        incident, m = self._pick(n)
        a = self._actor(who, m)
        ok = m.status is Status.RESPONDING and a in {COORDINATOR, m.lead}
        if self._attempt(
            incident, m, "resolve", ok, lambda: incident.resolve(envelope_for(a), "done")
        ):
            m.status = Status.RESOLVED
            m.close_requested = False
            [resolved] = self._collect(incident, m, ["Resolved"], a)
            m.values[resolved] = {"resolution": "done"}

    @rule(n=st.integers(0, 3), who=WHO)
    def request_closure(self, n: int, who: str) -> None:
        incident, m = self._pick(n)
        a = self._actor(who, m)
        ok = m.status is Status.RESOLVED and a == m.lead and not m.close_requested
        if self._attempt(
            incident,
            m,
            "request_closure",
            ok,
            lambda: incident.request_closure(envelope_for(a), ""),
        ):
            m.close_requested = True
            self._collect(incident, m, ["ClosureRequested"], a)

    @rule(n=st.integers(0, 3), who=WHO)
    def approve_closure(self, n: int, who: str) -> None:
        incident, m = self._pick(n)
        a = self._actor(who, m)
        ok = m.status is Status.RESOLVED and a == COORDINATOR and m.close_requested
        if self._attempt(
            incident, m, "approve", ok, lambda: incident.approve_closure(envelope_for(a), "")
        ):
            m.status = Status.CLOSED
            m.close_requested = False
            self._collect(incident, m, ["ClosureApproved"], a)

    @rule(n=st.integers(0, 3), who=WHO)
    def reopen(self, n: int, who: str) -> None:
        incident, m = self._pick(n)
        a = self._actor(who, m)
        ok = m.status in {Status.RESOLVED, Status.CLOSED} and a in {COORDINATOR, m.lead}
        if self._attempt(
            incident,
            m,
            "reopen",
            ok,
            lambda: incident.reopen(envelope_for(a), "again"),
            allowed_when_terminal=m.status is Status.CLOSED,
        ):
            m.status = Status.REOPENED
            m.close_requested = False
            self._collect(incident, m, ["Reopened"], a)

    @rule(
        n=st.integers(0, 3),
        who=WHO,
        pick=st.integers(0, 1000),
        name=st.sampled_from(("title", "severity", "action", "resolution", "rationale")),
        use_current=st.booleans(),
        new=st.sampled_from((*SEVERITIES, "x", "done")),
        reason=st.sampled_from(("typo", "")),
    )
    def correct(
        self,
        n: int,
        who: str,
        pick: int,
        name: str,
        use_current: bool,
        new: str,
        reason: str,
    ) -> None:
        incident, m = self._pick(n)
        a = self._actor(who, m)
        # Any incident's event: sometimes one of another incident.
        every = [e for model in self.models for e in model.events]
        event_id = every[pick % len(every)].event_id
        current = m.values.get(event_id, {}).get(name)
        old = current if use_current and current is not None else "bogus"
        ok = (
            a != AUDITOR
            and event_id in m.types
            and (a == COORDINATOR or m.authors[event_id] == a)
            and (m.types[event_id], name) in CORRECTABLE
            and old == current
            and new != old
            and reason != ""
        )

        def act() -> None:
            incident.correct(
                envelope_for(a),
                event_id=event_id,
                field=name,
                old_value=old,
                new_value=new,
                reason=reason,
                zone=UTC,
                desa_of=REF.desa_of,
            )

        if self._attempt(incident, m, "correct", ok, act, allowed_when_terminal=True):
            m.values[event_id][name] = new
            if name == "severity" and event_id == m.severity_event:
                m.severity = new
            if name == "title" and m.types[event_id] == "Reported":
                m.title = new
            self._collect(incident, m, ["Corrected"], a)

    @rule(
        n=st.integers(0, 3),
        lead=st.sampled_from(RESPONDERS),
        steps=st.integers(1, 4),
        detour=st.booleans(),
    )
    def advance(self, n: int, lead: str, steps: int, detour: bool) -> None:
        """The next steps of the happy path, by the right actors (still checked by the model).

        With ``detour`` an assigned incident first gains a supporter, then hands
        the lead over to it, and a single step on a reported incident merges it
        into the next one.
        """
        if detour and steps == 1 and self._pick(n)[1].status is Status.REPORTED:
            self.merge(n, n + 1, "@coordinator")
            return
        for _ in range(steps):
            self._advance_once(n, lead, detour)

    def _advance_once(self, n: int, lead: str, detour: bool = False) -> None:
        _, m = self._pick(n)
        working = {Status.ASSIGNED, Status.RESPONDING}
        if detour and m.status in working and not m.supporting and m.pending is None:
            self.add_supporter(n, "@lead", lead)
        elif detour and m.status in working and m.pending is None:
            self.propose_handover(n, "@lead", "@supporter")
        elif m.status is Status.REPORTED:
            self.verify(n, "@coordinator")
        elif m.status in {Status.VERIFIED, Status.REOPENED}:
            self.assign_lead(n, "@coordinator", lead)
        elif m.status in {Status.ASSIGNED, Status.RESPONDING} and m.pending is not None:
            self.accept_handover(n, "@recipient")
        elif m.status is Status.ASSIGNED:
            self.log_action(n, "@lead", "a")
        elif m.status is Status.RESPONDING:
            self.resolve(n, "@lead")
        elif m.status is Status.RESOLVED and not m.close_requested:
            self.request_closure(n, "@lead")
        elif m.status is Status.RESOLVED:
            self.approve_closure(n, "@coordinator")
        elif m.status is Status.CLOSED:
            self.reopen(n, "@lead")

    def teardown(self) -> None:
        for m in self.models:
            event(f"reached {m.status.value}")
        event(f"events {sum(m.version for m in self.models) // 10 * 10}")

    # --------------------------------------------------------- invariants

    @invariant()
    def agrees_with_the_model(self) -> None:
        for incident, m in zip(self.incidents, self.models, strict=True):
            assert isinstance(incident.status, Status)
            assert incident.status is m.status
            assert incident.lead_agency == m.lead
            assert incident.supporting_agencies == m.supporting
            assert incident.close_requested is m.close_requested
            assert incident.severity == m.severity
            assert incident.title == m.title
            assert incident.escalation_level == m.escalation
            assert len(incident.decisions) == m.decisions
            assert incident.merged_into == m.merged_into
            assert incident.merged_incidents == m.merged
            assert incident.version == m.version
            pending = incident.pending_handover
            assert (pending[:2] if pending else None) == m.pending
            assert incident.is_terminal is (m.status in TERMINAL)

    @invariant()
    def replay_rebuilds_the_same_aggregate(self) -> None:
        for incident, m in zip(self.incidents, self.models, strict=True):
            rebuilt = replay(m.events)
            assert rebuilt.head_hash == incident.head_hash
            assert rebuilt == incident


IncidentMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestIncidentStateMachine = IncidentMachine.TestCase

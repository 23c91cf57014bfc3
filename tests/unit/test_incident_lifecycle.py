"""Example-based tests of the Incident aggregate: lifecycle, permissions, merge,
decisions, corrections and the hash chain."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from uuid import uuid4
from zoneinfo import ZoneInfo

import pytest

from services.common.errors import (
    DataLoss,
    FailedPrecondition,
    IllegalTransition,
    InvalidArgument,
    PermissionDenied,
)
from services.ledger.domain.incident import (
    GENESIS_HASH,
    Incident,
    RejectionReason,
    Status,
    event_hash,
)
from tests.unit.incident_builders import (
    AUDITOR,
    COORDINATOR,
    LEAD,
    LOCATION,
    OUTSIDER,
    REF,
    REPORTER,
    SUPPORTER,
    envelope_for,
    event_id_of,
    event_of,
    incident_events,
    incident_in,
    replay,
    report,
)

T0 = datetime(2024, 11, 27, 7, 0, tzinfo=UTC)
T1 = T0 + timedelta(hours=6)

Command = Callable[[Incident, str], None]


def status_of(incident: Incident) -> Status:
    """The current status, read through a call so that mypy does not narrow it."""
    return incident.status


def close_requested(incident: Incident) -> bool:
    return incident.close_requested


def pending(incident: Incident) -> tuple[str, str, str] | None:
    return incident.pending_handover


def _types(incident: Incident) -> list[str]:
    return [type(e).__name__ for e in incident_events(incident)]


# ------------------------------------------------------------------ happy path


def test_happy_path_from_report_to_closure() -> None:
    incident = report(REPORTER, severity="low")
    assert (incident.status, incident.version) == (Status.REPORTED, 1)
    assert incident.reporter_agency == REPORTER
    assert incident.severity == "low"
    assert incident.location == LOCATION

    coord = envelope_for(COORDINATOR)
    incident.verify(coord, "confirmed by phone")
    assert (incident.status, incident.version) == (Status.VERIFIED, 2)

    incident.assign_lead(coord, LEAD, "public order")
    assert (incident.status, incident.lead_agency) == (Status.ASSIGNED, LEAD)

    incident.add_supporting_agency(envelope_for(LEAD), SUPPORTER, "backup")
    assert incident.supporting_agencies == [SUPPORTER]
    assert status_of(incident) is Status.ASSIGNED

    incident.log_action(envelope_for(SUPPORTER), "troops on standby", {})
    assert status_of(incident) is Status.RESPONDING
    incident.log_action(envelope_for(LEAD), "crowd addressed", {"kecamatan": "ipuh"})
    assert status_of(incident) is Status.RESPONDING

    incident.resolve(envelope_for(LEAD), "crowd dispersed peacefully")
    assert status_of(incident) is Status.RESOLVED
    assert incident.close_requested is False

    incident.request_closure(envelope_for(LEAD), "nothing left to do")
    assert close_requested(incident) is True
    assert status_of(incident) is Status.RESOLVED

    incident.approve_closure(coord, "approved")
    assert status_of(incident) is Status.CLOSED
    assert close_requested(incident) is False
    assert incident.is_terminal
    assert incident.version == 9
    assert _types(incident) == [
        "Reported",
        "Verified",
        "LeadAssigned",
        "SupportingAgencyAdded",
        "ActionLogged",
        "ActionLogged",
        "Resolved",
        "ClosureRequested",
        "ClosureApproved",
    ]


def test_first_action_starts_the_response_and_later_ones_do_not() -> None:
    incident = incident_in(Status.ASSIGNED)
    incident.log_action(envelope_for(LEAD), "first", {})
    incident.log_action(envelope_for(LEAD), "second", {})
    first = event_of(incident, "ActionLogged", 0)
    second = event_of(incident, "ActionLogged", 1)
    assert isinstance(first, Incident.ActionLogged)
    assert isinstance(second, Incident.ActionLogged)
    assert (first.starts_response, second.starts_response) == (True, False)


def test_actor_and_envelope_are_recorded_on_every_event() -> None:
    incident = incident_in(Status.RESPONDING)
    events = incident_events(incident)
    assert [e.actor_agency for e in events] == [REPORTER, COORDINATOR, COORDINATOR, LEAD]
    assert all(e.actor_officer == f"officer-{e.actor_agency}" for e in events)
    assert all(e.correlation_id == "corr-1" for e in events)
    assert len({e.event_id for e in events}) == len(events)
    assert [e.originator_version for e in events] == [1, 2, 3, 4]


def test_reopen_after_closure_leads_back_to_assigned() -> None:
    incident = incident_in(Status.CLOSED)
    incident.reopen(envelope_for(COORDINATOR), "violence resumed")
    assert status_of(incident) is Status.REOPENED
    assert incident.close_requested is False
    incident.assign_lead(envelope_for(COORDINATOR), SUPPORTER, "army takes over")
    assert (incident.status, incident.lead_agency) == (Status.ASSIGNED, SUPPORTER)
    incident.log_action(envelope_for(SUPPORTER), "patrol", {})
    assert status_of(incident) is Status.RESPONDING


def test_lead_may_reopen_a_resolved_incident_and_reopen_clears_the_close_request() -> None:
    incident = incident_in(Status.RESOLVED)
    incident.request_closure(envelope_for(LEAD), "done")
    incident.reopen(envelope_for(LEAD), "not done after all")
    assert status_of(incident) is Status.REOPENED
    assert incident.close_requested is False


def test_reject_records_the_reason() -> None:
    incident = report()
    incident.reject(
        envelope_for(COORDINATOR), RejectionReason.OUT_OF_SCOPE, "not about the election"
    )
    assert status_of(incident) is Status.REJECTED
    assert incident.rejection_reason is RejectionReason.OUT_OF_SCOPE
    assert incident.is_terminal


def test_escalation_counts_levels() -> None:
    incident = report()
    incident.escalate(envelope_for(REPORTER), "growing")
    incident.escalate(envelope_for(COORDINATOR), "still growing")
    assert incident.escalation_level == 2


def test_assess_severity_changes_current_severity_and_refuses_no_change() -> None:
    incident = incident_in(Status.ASSIGNED)
    incident.assess_severity(envelope_for(LEAD), "critical", "weapons seen")
    assert incident.severity == "critical"
    assert incident.severity_event_id == event_id_of(incident, "SeverityAssessed")
    with pytest.raises(FailedPrecondition) as caught:
        incident.assess_severity(envelope_for(LEAD), "critical", "again")
    assert caught.value.reason == "NO_CHANGE"


# --------------------------------------------------------- illegal transitions

# The statuses in which each command is allowed; every other status is illegal.
NON_TERMINAL = frozenset(Status) - {Status.CLOSED, Status.REJECTED, Status.MERGED}
ALLOWED: dict[str, tuple[frozenset[Status], Command]] = {
    "VerifyIncident": (frozenset({Status.REPORTED}), lambda i, a: i.verify(envelope_for(a), "")),
    "RejectIncident": (
        frozenset({Status.REPORTED}),
        lambda i, a: i.reject(envelope_for(a), RejectionReason.INVALID, "no"),
    ),
    "MergeIncident": (
        frozenset({Status.REPORTED}),
        lambda i, a: i.merge_into(envelope_for(a), report(), ""),
    ),
    "AssignLeadAgency": (
        frozenset({Status.VERIFIED, Status.REOPENED}),
        lambda i, a: i.assign_lead(envelope_for(a), SUPPORTER, ""),
    ),
    "AddSupportingAgency": (
        frozenset({Status.VERIFIED, Status.ASSIGNED, Status.RESPONDING, Status.REOPENED}),
        lambda i, a: i.add_supporting_agency(envelope_for(a), OUTSIDER, ""),
    ),
    "ProposeHandover": (
        frozenset({Status.ASSIGNED, Status.RESPONDING}),
        lambda i, a: i.propose_handover(envelope_for(a), SUPPORTER, "shift change"),
    ),
    "AcceptHandover": (
        frozenset({Status.ASSIGNED, Status.RESPONDING}),
        lambda i, a: i.accept_handover(envelope_for(a), ""),
    ),
    "RecordDecision": (
        frozenset(
            {Status.VERIFIED, Status.ASSIGNED, Status.RESPONDING, Status.RESOLVED, Status.REOPENED}
        ),
        lambda i, a: i.record_decision(
            envelope_for(a),
            deciding_agencies=[LEAD],
            forum="rakor",
            summary="s",
            rationale="r",
            scope={},
            valid_from=T0,
            valid_until=T1,
            zone=UTC,
        ),
    ),
    "LogAction": (
        frozenset({Status.ASSIGNED, Status.RESPONDING, Status.RESOLVED, Status.REOPENED}),
        lambda i, a: i.log_action(envelope_for(a), "patrol", {}),
    ),
    "EscalateIncident": (
        frozenset(
            {Status.REPORTED, Status.VERIFIED, Status.ASSIGNED, Status.RESPONDING, Status.REOPENED}
        ),
        lambda i, a: i.escalate(envelope_for(a), "worse"),
    ),
    "AssessSeverity": (
        NON_TERMINAL,
        lambda i, a: i.assess_severity(envelope_for(a), "critical", ""),
    ),
    "ResolveIncident": (
        frozenset({Status.RESPONDING}),
        lambda i, a: i.resolve(envelope_for(a), "done"),
    ),
    "RequestClosure": (
        frozenset({Status.RESOLVED}),
        lambda i, a: i.request_closure(envelope_for(a), ""),
    ),
    "ApproveClosure": (
        frozenset({Status.RESOLVED}),
        lambda i, a: i.approve_closure(envelope_for(a), ""),
    ),
    "ReopenIncident": (
        frozenset({Status.RESOLVED, Status.CLOSED}),
        lambda i, a: i.reopen(envelope_for(a), "again"),
    ),
}

# Anyone else is refused these as COORDINATOR_ONLY whatever the status (see below).
COORDINATOR_COMMANDS = frozenset(
    {"VerifyIncident", "RejectIncident", "MergeIncident", "AssignLeadAgency", "ApproveClosure"}
)
ILLEGAL = [
    pytest.param(agency, command, status, id=f"{agency}-{command}-{status.value}")
    for command, (allowed, _) in ALLOWED.items()
    for status in Status
    if status not in allowed
    for agency in ([COORDINATOR] if command in COORDINATOR_COMMANDS else [COORDINATOR, LEAD])
]


@pytest.mark.parametrize(("agency", "command", "status"), ILLEGAL)
def test_illegal_transition_names_command_and_status(
    agency: str, command: str, status: Status
) -> None:
    incident = incident_in(status)
    version = incident.version
    _, call = ALLOWED[command]
    with pytest.raises(IllegalTransition) as caught:
        call(incident, agency)
    error = caught.value
    assert error.code == "FAILED_PRECONDITION"
    assert error.reason == "ILLEGAL_TRANSITION"
    assert (error.command, error.status) == (command, status.value)
    merged = (
        {"merged_into": f"incidents/{incident.merged_into}", "merged_into_reference": ""}
        if status is Status.MERGED
        else {}
    )  # the survivor, named for the caller to act on (incident_in's has no code)
    assert error.metadata == {"command": command, "status": status.value, **merged}
    assert command in str(error)
    assert status.value in str(error)
    assert incident.version == version
    assert status_of(incident) is status


def test_approve_closure_needs_a_close_request() -> None:
    incident = incident_in(Status.RESOLVED)
    with pytest.raises(FailedPrecondition) as caught:
        incident.approve_closure(envelope_for(COORDINATOR), "")
    assert caught.value.reason == "CLOSURE_NOT_REQUESTED"
    assert status_of(incident) is Status.RESOLVED


def test_closure_cannot_be_requested_twice() -> None:
    incident = incident_in(Status.RESOLVED)
    incident.request_closure(envelope_for(LEAD), "")
    with pytest.raises(FailedPrecondition) as caught:
        incident.request_closure(envelope_for(LEAD), "")
    assert caught.value.reason == "CLOSURE_ALREADY_REQUESTED"
    assert incident.version == 6


def test_resolving_again_after_reopen_needs_a_new_close_request() -> None:
    incident = incident_in(Status.RESOLVED)
    incident.request_closure(envelope_for(LEAD), "")
    incident.reopen(envelope_for(COORDINATOR), "back")
    incident.assign_lead(envelope_for(COORDINATOR), LEAD, "")
    incident.log_action(envelope_for(LEAD), "again", {})
    incident.resolve(envelope_for(LEAD), "done again")
    with pytest.raises(FailedPrecondition) as caught:
        incident.approve_closure(envelope_for(COORDINATOR), "")
    assert caught.value.reason == "CLOSURE_NOT_REQUESTED"


# ----------------------------------------------------------------- permissions


COORDINATOR_ONLY: dict[str, tuple[Status, Command]] = {
    "VerifyIncident": (Status.REPORTED, lambda i, a: i.verify(envelope_for(a), "")),
    "RejectIncident": (
        Status.REPORTED,
        lambda i, a: i.reject(envelope_for(a), RejectionReason.HOAX, "hoax"),
    ),
    "MergeIncident": (Status.REPORTED, lambda i, a: i.merge_into(envelope_for(a), report(), "")),
    "AssignLeadAgency": (Status.VERIFIED, lambda i, a: i.assign_lead(envelope_for(a), LEAD, "")),
    "ApproveClosure": (Status.RESOLVED, lambda i, a: i.approve_closure(envelope_for(a), "")),
}


@pytest.mark.parametrize("command", sorted(COORDINATOR_ONLY))
@pytest.mark.parametrize("agency", [REPORTER, LEAD, OUTSIDER])
def test_coordinator_only_commands_refuse_responders(command: str, agency: str) -> None:
    status, call = COORDINATOR_ONLY[command]
    incident = incident_in(status)
    if command == "ApproveClosure":
        incident.request_closure(envelope_for(LEAD), "")
    version = incident.version
    with pytest.raises(PermissionDenied) as caught:
        call(incident, agency)
    assert caught.value.reason == "COORDINATOR_ONLY"
    assert caught.value.metadata["command"] == command
    assert caught.value.metadata["caller_agency"] == agency
    assert incident.version == version
    call(incident, COORDINATOR)
    assert incident.version == version + 1


@pytest.mark.parametrize("status", list(Status))
@pytest.mark.parametrize("command", sorted(COORDINATOR_ONLY))
def test_a_coordinator_only_command_is_refused_before_the_status_is_looked_at(
    command: str, status: Status
) -> None:
    """The refusal is the same whatever the status: it tells the caller nothing of it."""
    assert set(COORDINATOR_ONLY) == COORDINATOR_COMMANDS
    _, call = COORDINATOR_ONLY[command]
    incident = incident_in(status)
    with pytest.raises(PermissionDenied) as caught:
        call(incident, LEAD)
    assert caught.value.reason == "COORDINATOR_ONLY"
    assert caught.value.metadata == {"command": command, "caller_agency": LEAD}
    assert status.value not in str(caught.value)


@pytest.mark.parametrize("agency", [COORDINATOR, SUPPORTER, REPORTER])
def test_only_the_lead_may_request_closure(agency: str) -> None:
    incident = incident_in(Status.ASSIGNED)
    incident.add_supporting_agency(envelope_for(LEAD), SUPPORTER, "")
    incident.log_action(envelope_for(LEAD), "x", {})
    incident.resolve(envelope_for(LEAD), "done")
    with pytest.raises(PermissionDenied) as caught:
        incident.request_closure(envelope_for(agency), "")
    assert caught.value.reason == "LEAD_AGENCY_ONLY"
    assert incident.close_requested is False
    incident.request_closure(envelope_for(LEAD), "")
    assert incident.close_requested is True


@pytest.mark.parametrize(
    ("agency", "allowed"), [(LEAD, True), (COORDINATOR, True), (SUPPORTER, False)]
)
def test_resolve_by_lead_or_coordinator(agency: str, allowed: bool) -> None:
    incident = incident_in(Status.RESPONDING)
    incident.add_supporting_agency(envelope_for(LEAD), SUPPORTER, "")
    if allowed:
        incident.resolve(envelope_for(agency), "done")
        assert status_of(incident) is Status.RESOLVED
    else:
        with pytest.raises(PermissionDenied) as caught:
            incident.resolve(envelope_for(agency), "done")
        assert caught.value.reason == "LEAD_OR_COORDINATOR_ONLY"
        assert status_of(incident) is Status.RESPONDING


def test_supporting_agency_cannot_add_supporters_but_lead_and_coordinator_can() -> None:
    incident = incident_in(Status.ASSIGNED)
    incident.add_supporting_agency(envelope_for(LEAD), SUPPORTER, "")
    with pytest.raises(PermissionDenied) as caught:
        incident.add_supporting_agency(envelope_for(SUPPORTER), OUTSIDER, "")
    assert caught.value.reason == "LEAD_OR_COORDINATOR_ONLY"
    incident.add_supporting_agency(envelope_for(COORDINATOR), OUTSIDER, "")
    assert incident.supporting_agencies == [SUPPORTER, OUTSIDER]


@pytest.mark.parametrize("agency", [LEAD, SUPPORTER])
def test_adding_an_involved_agency_again_is_refused(agency: str) -> None:
    incident = incident_in(Status.ASSIGNED)
    incident.add_supporting_agency(envelope_for(LEAD), SUPPORTER, "")
    with pytest.raises(FailedPrecondition) as caught:
        incident.add_supporting_agency(envelope_for(COORDINATOR), agency, "")
    assert caught.value.reason == "ALREADY_INVOLVED"
    assert incident.supporting_agencies == [SUPPORTER]


def test_assigning_a_supporter_as_lead_removes_it_from_the_supporters() -> None:
    incident = incident_in(Status.VERIFIED)
    incident.add_supporting_agency(envelope_for(COORDINATOR), SUPPORTER, "")
    incident.add_supporting_agency(envelope_for(COORDINATOR), OUTSIDER, "")
    incident.assign_lead(envelope_for(COORDINATOR), SUPPORTER, "")
    assert incident.lead_agency == SUPPORTER
    assert incident.supporting_agencies == [OUTSIDER]


# -------------------------------------------------------------------- handover


def test_handover_is_proposed_by_the_lead_and_accepted_by_the_recipient() -> None:
    incident = incident_in(Status.RESPONDING)
    incident.add_supporting_agency(envelope_for(LEAD), SUPPORTER, "")
    incident.propose_handover(envelope_for(LEAD), SUPPORTER, "the army has the manpower")
    # Until acceptance the old lead stays responsible.
    assert incident.lead_agency == LEAD
    assert incident.pending_handover == (LEAD, SUPPORTER, "the army has the manpower")
    incident.log_action(envelope_for(LEAD), "still on it", {})
    with pytest.raises(PermissionDenied) as not_lead:
        incident.propose_handover(envelope_for(SUPPORTER), OUTSIDER, "")
    assert not_lead.value.reason == "LEAD_OR_COORDINATOR_ONLY"

    incident.accept_handover(envelope_for(SUPPORTER), "taking over")
    assert incident.lead_agency == SUPPORTER
    assert incident.supporting_agencies == []
    assert pending(incident) is None
    accepted = event_of(incident, "HandoverAccepted")
    assert isinstance(accepted, Incident.HandoverAccepted)
    assert (accepted.from_agency, accepted.to_agency) == (LEAD, SUPPORTER)

    # The old lead has handed over its powers.
    with pytest.raises(PermissionDenied) as old_lead:
        incident.resolve(envelope_for(LEAD), "done")
    assert old_lead.value.reason == "LEAD_OR_COORDINATOR_ONLY"
    incident.resolve(envelope_for(SUPPORTER), "done")
    assert status_of(incident) is Status.RESOLVED


@pytest.mark.parametrize("agency", [LEAD, COORDINATOR, OUTSIDER, REPORTER])
def test_only_the_receiving_agency_may_accept_a_handover(agency: str) -> None:
    incident = incident_in(Status.ASSIGNED)
    incident.propose_handover(envelope_for(LEAD), SUPPORTER, "")
    version = incident.version
    with pytest.raises(PermissionDenied) as caught:
        incident.accept_handover(envelope_for(agency), "")
    assert caught.value.reason == "NOT_HANDOVER_RECIPIENT"
    assert caught.value.metadata == {"to_agency": SUPPORTER, "caller_agency": agency}
    assert incident.lead_agency == LEAD
    assert incident.version == version


def test_handover_refusals() -> None:
    incident = incident_in(Status.ASSIGNED)
    with pytest.raises(FailedPrecondition) as none_pending:
        incident.accept_handover(envelope_for(SUPPORTER), "")
    assert none_pending.value.reason == "NO_HANDOVER_PENDING"
    with pytest.raises(InvalidArgument) as to_self:
        incident.propose_handover(envelope_for(LEAD), LEAD, "")
    assert to_self.value.field == "to_agency"
    with pytest.raises(PermissionDenied) as outsider:
        incident.propose_handover(envelope_for(OUTSIDER), SUPPORTER, "")
    assert outsider.value.reason == "LEAD_OR_COORDINATOR_ONLY"
    incident.propose_handover(envelope_for(LEAD), SUPPORTER, "")
    with pytest.raises(FailedPrecondition) as twice:
        incident.propose_handover(envelope_for(LEAD), OUTSIDER, "")
    assert twice.value.reason == "HANDOVER_PENDING"
    assert twice.value.metadata == {"to_agency": SUPPORTER}
    assert incident.version == 4


def test_handover_proposed_by_the_coordinator_records_the_old_lead_as_from_agency() -> None:
    # The handover moves the lead from the lead agency to the receiving one,
    # whoever proposes it; the coordinator never led the incident.
    incident = incident_in(Status.RESPONDING)
    incident.propose_handover(envelope_for(COORDINATOR), SUPPORTER, "rebalancing")
    assert incident.lead_agency == LEAD
    incident.accept_handover(envelope_for(SUPPORTER), "")
    accepted = event_of(incident, "HandoverAccepted")
    assert isinstance(accepted, Incident.HandoverAccepted)
    assert accepted.from_agency == LEAD


def test_reassigning_the_lead_drops_a_handover_proposed_by_the_former_lead() -> None:
    # polres proposes a handover to kodim, the incident is resolved and reopened,
    # and the coordinator makes satpolpp the lead. kodim must not be able to take
    # the lead from satpolpp on the strength of polres's old proposal, and the new
    # lead must be able to propose its own handover.
    incident = incident_in(Status.RESPONDING)
    incident.propose_handover(envelope_for(LEAD), SUPPORTER, "")
    incident.resolve(envelope_for(LEAD), "done")
    incident.reopen(envelope_for(COORDINATOR), "back")
    incident.assign_lead(envelope_for(COORDINATOR), "satpolpp", "")
    assert incident.pending_handover is None
    with pytest.raises(FailedPrecondition):
        incident.accept_handover(envelope_for(SUPPORTER), "")
    assert incident.lead_agency == "satpolpp"


# ------------------------------------------------------------- auditor / outsider


AUDITOR_CASES: dict[str, tuple[Status, Command]] = {
    **{
        name: (min(allowed, key=lambda s: s.value), call)
        for name, (allowed, call) in ALLOWED.items()
    },
    "CorrectEvent": (
        Status.REPORTED,
        lambda i, a: i.correct(
            envelope_for(a),
            event_id=event_id_of(i, "Reported"),
            field="title",
            old_value=i.title,
            new_value="other",
            reason="typo",
            zone=UTC,
            desa_of=REF.desa_of,
        ),
    ),
}


@pytest.mark.parametrize("command", sorted(AUDITOR_CASES))
def test_auditor_is_refused_every_command(command: str) -> None:
    status, call = AUDITOR_CASES[command]
    incident = incident_in(status)
    if command == "AcceptHandover":
        incident.propose_handover(envelope_for(LEAD), AUDITOR, "")
    version = incident.version
    with pytest.raises(PermissionDenied) as caught:
        call(incident, AUDITOR)
    assert caught.value.reason == "READ_ONLY_ROLE"
    assert caught.value.metadata["caller_agency"] == AUDITOR
    assert incident.version == version


def test_auditor_cannot_report() -> None:
    with pytest.raises(PermissionDenied) as caught:
        report(AUDITOR)
    assert caught.value.reason == "READ_ONLY_ROLE"
    assert caught.value.metadata["command"] == "ReportIncident"


INVOLVED_ONLY: dict[str, Command] = {
    "LogAction": lambda i, a: i.log_action(envelope_for(a), "x", {}),
    "RecordDecision": lambda i, a: i.record_decision(
        envelope_for(a),
        deciding_agencies=[a],
        forum="f",
        summary="s",
        rationale="r",
        scope={},
        valid_from=T0,
        valid_until=T1,
        zone=UTC,
    ),
    "EscalateIncident": lambda i, a: i.escalate(envelope_for(a), "worse"),
    "AssessSeverity": lambda i, a: i.assess_severity(envelope_for(a), "high", ""),
}


@pytest.mark.parametrize("command", sorted(INVOLVED_ONLY))
def test_agency_not_involved_is_refused(command: str) -> None:
    incident = incident_in(Status.ASSIGNED)
    incident.add_supporting_agency(envelope_for(LEAD), SUPPORTER, "")
    with pytest.raises(PermissionDenied) as caught:
        INVOLVED_ONLY[command](incident, OUTSIDER)
    assert caught.value.reason == "NOT_INVOLVED"
    assert caught.value.metadata == {"command": command, "caller_agency": OUTSIDER}
    assert incident.version == 4
    # Lead, supporter and coordinator are involved.
    for agency in (LEAD, SUPPORTER, COORDINATOR):
        before = incident.version
        INVOLVED_ONLY[command](incident, agency)
        assert incident.version == before + 1
        if command == "AssessSeverity":
            break  # a second identical assessment is a NO_CHANGE


@pytest.mark.parametrize("command", ["EscalateIncident", "AssessSeverity"])
def test_reporter_may_escalate_and_assess_severity(command: str) -> None:
    incident = incident_in(Status.ASSIGNED)
    INVOLVED_ONLY[command](incident, REPORTER)
    assert incident.version == 4


@pytest.mark.parametrize("command", ["LogAction", "RecordDecision"])
def test_reporter_alone_is_not_involved_for_actions_and_decisions(command: str) -> None:
    incident = incident_in(Status.ASSIGNED)
    with pytest.raises(PermissionDenied) as caught:
        INVOLVED_ONLY[command](incident, REPORTER)
    assert caught.value.reason == "NOT_INVOLVED"


# ----------------------------------------------------------------------- merge


def test_merge_records_events_on_both_incidents() -> None:
    duplicate = report(title="duplicate")
    target = incident_in(Status.RESPONDING)
    duplicate.merge_into(envelope_for(COORDINATOR), target, "same crowd")
    assert (duplicate.status, duplicate.version) == (Status.MERGED, 2)
    assert duplicate.merged_into == target.id
    assert (target.status, target.version) == (Status.RESPONDING, 5)
    assert target.merged_incidents == [duplicate.id]
    merged = event_of(duplicate, "Merged")
    absorbed = event_of(target, "DuplicateMerged")
    assert isinstance(merged, Incident.Merged)
    assert isinstance(absorbed, Incident.DuplicateMerged)
    assert merged.target_id == target.id
    assert absorbed.duplicate_id == duplicate.id
    assert merged.reason == absorbed.reason == "same crowd"


def test_cannot_merge_into_itself() -> None:
    incident = report()
    with pytest.raises(InvalidArgument) as caught:
        incident.merge_into(envelope_for(COORDINATOR), incident, "")
    assert caught.value.field == "target"
    assert (incident.status, incident.version) == (Status.REPORTED, 1)


@pytest.mark.parametrize("status", [Status.REJECTED, Status.MERGED])
def test_cannot_merge_into_a_dead_incident(status: Status) -> None:
    duplicate = report()
    target = incident_in(status)
    target_version = target.version
    with pytest.raises(FailedPrecondition) as caught:
        duplicate.merge_into(envelope_for(COORDINATOR), target, "")
    assert caught.value.reason == "MERGE_TARGET_NOT_LIVE"
    assert caught.value.metadata == {"target_status": status.value}
    assert (duplicate.status, duplicate.version) == (Status.REPORTED, 1)
    assert target.version == target_version
    assert target.merged_incidents == []


def test_merged_incident_accepts_nothing_but_corrections() -> None:
    incident = incident_in(Status.MERGED)
    with pytest.raises(IllegalTransition):
        incident.verify(envelope_for(COORDINATOR), "")
    incident.correct(
        envelope_for(REPORTER),
        event_id=event_id_of(incident, "Reported"),
        field="title",
        old_value=incident.title,
        new_value="fixed",
        reason="typo",
        zone=UTC,
        desa_of=REF.desa_of,
    )
    assert incident.title == "fixed"
    assert status_of(incident) is Status.MERGED


# ------------------------------------------------------------------- decisions


def _decide(
    incident: Incident, agency: str, deciding: list[str], start: datetime, end: datetime
) -> None:
    incident.record_decision(
        envelope_for(agency),
        deciding_agencies=deciding,
        forum="Rakor Forkopimda",
        summary="close the road",
        rationale="safety",
        scope={"kecamatan": "ipuh"},
        valid_from=start,
        valid_until=end,
        zone=UTC,
    )


def test_decision_is_recorded_with_its_deciding_agencies_and_scope() -> None:
    incident = incident_in(Status.RESPONDING)
    incident.add_supporting_agency(envelope_for(LEAD), SUPPORTER, "")
    _decide(incident, SUPPORTER, [LEAD, SUPPORTER], T0, T1)
    assert len(incident.decisions) == 1
    decision = incident.decisions[0]
    assert decision.deciding_agencies == (LEAD, SUPPORTER)
    assert decision.scope == {"kecamatan": "ipuh"}
    assert decision.event_id == event_id_of(incident, "DecisionRecorded")
    recorded = event_of(incident, "DecisionRecorded")
    assert isinstance(recorded, Incident.DecisionRecorded)
    assert (recorded.valid_from, recorded.valid_until) == (T0, T1)
    assert recorded.location == {"kecamatan": "ipuh"}


@pytest.mark.parametrize("end", [T0, T0 - timedelta(seconds=1)])
def test_decision_validity_window_must_not_be_empty(end: datetime) -> None:
    incident = incident_in(Status.ASSIGNED)
    with pytest.raises(InvalidArgument) as caught:
        _decide(incident, LEAD, [LEAD], T0, end)
    assert caught.value.field == "valid_until"
    assert incident.decisions == []
    assert incident.version == 3


def test_a_window_that_ends_before_it_starts_is_refused_in_the_regencys_zone() -> None:
    """Officers in WIB read the refusal's times as theirs, with the offset: in UTC,
    18:00 WIB read 11:00 and looked like another decision."""
    incident = incident_in(Status.ASSIGNED)
    start = datetime(2026, 12, 8, 11, 0, tzinfo=UTC)  # 18:00 WIB
    end = start - timedelta(days=1)
    with pytest.raises(InvalidArgument) as caught:
        incident.record_decision(
            envelope_for(LEAD),
            deciding_agencies=[LEAD],
            forum="Rakor Forkopimda",
            summary="close the road",
            rationale="safety",
            scope={"kecamatan": "ipuh"},
            valid_from=start,
            valid_until=end,
            zone=ZoneInfo("Asia/Jakarta"),
        )
    error = caught.value
    assert error.field == "valid_until"
    assert error.metadata == {
        "field": "valid_until",
        "check": "window",
        "valid_from": "2026-12-08T18:00:00+07:00",
        "valid_until": "2026-12-07T18:00:00+07:00",
    }
    assert "2026-12-07T18:00:00+07:00" in error.message, error.message
    assert "2026-12-08T18:00:00+07:00" in error.message, error.message
    assert "+00:00" not in error.message
    assert incident.decisions == []


def test_involved_agency_must_be_a_deciding_agency() -> None:
    incident = incident_in(Status.ASSIGNED)
    incident.add_supporting_agency(envelope_for(LEAD), SUPPORTER, "")
    with pytest.raises(PermissionDenied) as caught:
        _decide(incident, SUPPORTER, [LEAD], T0, T1)
    assert caught.value.reason == "NOT_A_DECIDING_AGENCY"
    assert caught.value.metadata == {"caller_agency": SUPPORTER}
    assert incident.decisions == []


def test_coordinator_may_record_a_decision_of_other_agencies() -> None:
    incident = incident_in(Status.ASSIGNED)
    _decide(incident, COORDINATOR, [LEAD, "kpu"], T0, T1)
    assert incident.decisions[0].deciding_agencies == (LEAD, "kpu")


# ----------------------------------------------------------------- corrections


def _correct(
    incident: Incident,
    agency: str,
    event_type: str,
    field: str,
    old: str,
    new: str,
    reason: str = "typo",
    nth: int = 0,
    zone: tzinfo = UTC,
) -> None:
    incident.correct(
        envelope_for(agency),
        event_id=event_id_of(incident, event_type, nth),
        field=field,
        old_value=old,
        new_value=new,
        reason=reason,
        zone=zone,
        desa_of=REF.desa_of,
    )


def test_correction_changes_the_current_value_and_records_old_and_new() -> None:
    incident = report(title="Crowd at teh square")
    _correct(incident, REPORTER, "Reported", "title", "Crowd at teh square", "Crowd at the square")
    assert incident.title == "Crowd at the square"
    corrected = event_of(incident, "Corrected")
    assert isinstance(corrected, Incident.Corrected)
    assert corrected.corrected_event_id == event_id_of(incident, "Reported")
    assert (corrected.field, corrected.old_value, corrected.new_value) == (
        "title",
        "Crowd at teh square",
        "Crowd at the square",
    )
    assert corrected.reason == "typo"
    # The original event is untouched.
    reported = event_of(incident, "Reported")
    assert isinstance(reported, Incident.Reported)
    assert reported.title == "Crowd at teh square"


def test_correction_old_value_must_match_the_current_value() -> None:
    incident = report(title="first")
    with pytest.raises(FailedPrecondition) as caught:
        _correct(incident, REPORTER, "Reported", "title", "wrong", "second")
    assert caught.value.reason == "OLD_VALUE_MISMATCH"
    assert caught.value.metadata == {"field": "title", "recorded_value": "first"}
    _correct(incident, REPORTER, "Reported", "title", "first", "second")
    # After a correction the corrected value is what must be named.
    with pytest.raises(FailedPrecondition):
        _correct(incident, REPORTER, "Reported", "title", "first", "third")
    _correct(incident, REPORTER, "Reported", "title", "second", "third")
    assert incident.title == "third"
    assert incident.version == 3


@pytest.mark.parametrize(
    ("event_type", "field"),
    [
        ("Reported", "rationale"),
        ("Reported", "status"),
        ("Verified", "severity"),
        ("LeadAssigned", "agency"),
        ("Reported", "previous_hash"),
    ],
)
def test_field_must_be_correctable(event_type: str, field: str) -> None:
    incident = incident_in(Status.ASSIGNED)
    with pytest.raises(InvalidArgument) as caught:
        _correct(incident, COORDINATOR, event_type, field, "x", "y")
    assert caught.value.field == "field"
    assert event_type in caught.value.message
    assert incident.version == 3


@pytest.mark.parametrize(
    ("field", "new", "attribute", "expected"),
    [
        ("description", "fixed", "description", "fixed"),
        ("category", "hoax", "category", "hoax"),
        ("location.desa", "Bandar Ratu", "location", {**LOCATION, "desa": "Bandar Ratu"}),
        ("location.tps", "TPS 09", "location", {**LOCATION, "tps": "TPS 09"}),
    ],
)
def test_correcting_the_report_changes_the_incident(
    field: str, new: str, attribute: str, expected: object
) -> None:
    incident = report()
    old = incident.event_values[event_id_of(incident, "Reported")][field]
    _correct(incident, COORDINATOR, "Reported", field, old, new)
    assert getattr(incident, attribute) == expected


def test_correcting_the_report_s_kecamatan_with_its_desa_cleared_moves_the_incident() -> None:
    """A desa lies in one kecamatan: the report's desa is cleared (or was never named)
    before its kecamatan is corrected, then the new kecamatan's desa is named."""
    incident = report()
    _correct(incident, COORDINATOR, "Reported", "location.desa", LOCATION["desa"], "")
    with pytest.raises(InvalidArgument) as unknown:
        _correct(incident, COORDINATOR, "Reported", "location.kecamatan", "kota_mukomuko", "x")
    assert "unknown kecamatan" in unknown.value.message
    _correct(incident, COORDINATOR, "Reported", "location.kecamatan", "kota_mukomuko", "ipuh")
    _correct(incident, COORDINATOR, "Reported", "location.desa", "", "Medan Jaya")
    assert incident.location == {**LOCATION, "kecamatan": "ipuh", "desa": "Medan Jaya"}


def test_severity_correction_of_the_event_in_effect_changes_the_severity() -> None:
    incident = report(severity="low")
    _correct(incident, REPORTER, "Reported", "severity", "low", "medium")
    assert incident.severity == "medium"


def test_severity_correction_of_a_superseded_event_leaves_the_severity() -> None:
    incident = incident_in(Status.ASSIGNED)  # reported as low
    incident.assess_severity(envelope_for(LEAD), "high", "")
    reported_id = event_id_of(incident, "Reported")
    _correct(incident, REPORTER, "Reported", "severity", "low", "medium")
    assert incident.severity == "high"
    assert incident.event_values[reported_id]["severity"] == "medium"
    _correct(incident, LEAD, "SeverityAssessed", "severity", "high", "critical")
    assert incident.severity == "critical"


def test_correction_of_an_older_assessment_leaves_the_latest_in_effect() -> None:
    incident = incident_in(Status.ASSIGNED)
    incident.assess_severity(envelope_for(LEAD), "high", "")
    incident.assess_severity(envelope_for(LEAD), "medium", "")
    _correct(incident, LEAD, "SeverityAssessed", "severity", "high", "critical", nth=0)
    assert incident.severity == "medium"


def test_corrected_event_must_belong_to_the_incident() -> None:
    incident = report()
    other = report()
    with pytest.raises(InvalidArgument) as caught:
        incident.correct(
            envelope_for(COORDINATOR),
            event_id=event_id_of(other, "Reported"),
            field="title",
            old_value=other.title,
            new_value="x",
            reason="r",
            zone=UTC,
            desa_of=REF.desa_of,
        )
    assert caught.value.field == "corrected_event_id"
    with pytest.raises(InvalidArgument):
        incident.correct(
            envelope_for(COORDINATOR),
            event_id=uuid4(),
            field="title",
            old_value=incident.title,
            new_value="x",
            reason="r",
            zone=UTC,
            desa_of=REF.desa_of,
        )
    assert incident.version == 1


@pytest.mark.parametrize("agency", [LEAD, OUTSIDER])
def test_only_author_agency_or_coordinator_may_correct(agency: str) -> None:
    incident = incident_in(Status.ASSIGNED)
    title = incident.title
    with pytest.raises(PermissionDenied) as caught:
        _correct(incident, agency, "Reported", "title", title, "new")
    assert caught.value.reason == "NOT_EVENT_AUTHOR"
    assert caught.value.metadata == {"event_agency": REPORTER}
    assert incident.title == title
    _correct(incident, COORDINATOR, "Reported", "title", title, "by coordinator")
    _correct(incident, REPORTER, "Reported", "title", "by coordinator", "by reporter")
    assert incident.title == "by reporter"


def test_correction_needs_a_different_value_and_a_reason() -> None:
    incident = report(title="t")
    with pytest.raises(InvalidArgument) as same:
        _correct(incident, REPORTER, "Reported", "title", "t", "t")
    assert same.value.field == "new_value"
    with pytest.raises(InvalidArgument) as no_reason:
        _correct(incident, REPORTER, "Reported", "title", "t", "u", reason="")
    assert no_reason.value.field == "reason"
    assert incident.version == 1


WIB = timezone(timedelta(hours=7), "WIB")


def _decided(start: datetime = T0, end: datetime = T1) -> Incident:
    incident = incident_in(Status.ASSIGNED)
    _decide(incident, LEAD, [LEAD], start, end)
    return incident


@pytest.mark.parametrize(
    ("field", "new"),
    [
        ("valid_until", T0),
        ("valid_until", T0 - timedelta(days=1)),
        ("valid_from", T1),
        ("valid_from", T1 + timedelta(hours=1)),
    ],
)
def test_a_corrected_end_of_a_decision_keeps_its_window_non_empty(
    field: str, new: datetime
) -> None:
    incident = _decided()
    recorded = incident.event_values[event_id_of(incident, "DecisionRecorded")]
    with pytest.raises(InvalidArgument) as caught:
        _correct(incident, LEAD, "DecisionRecorded", field, recorded[field], new.isoformat())
    assert caught.value.field == "new_value"
    other = "valid_until" if field == "valid_from" else "valid_from"
    # The other end, in the zone the new value was written in (here UTC).
    assert datetime.fromisoformat(recorded[other]).isoformat() in str(caught.value)
    assert incident.version == 4


def test_a_corrected_window_is_refused_in_the_zone_the_new_value_was_written_in() -> None:
    """An officer who writes the new end in WIB reads both ends in WIB, not the recorded
    start in UTC."""
    incident = _decided()
    recorded = incident.event_values[event_id_of(incident, "DecisionRecorded")]
    new = (T0 - timedelta(hours=1)).astimezone(WIB)
    with pytest.raises(InvalidArgument) as caught:
        _correct(
            incident,
            LEAD,
            "DecisionRecorded",
            "valid_until",
            recorded["valid_until"],
            new.isoformat(),
        )
    error = caught.value
    assert error.metadata["check"] == "window"
    assert error.metadata["valid_from"] == T0.astimezone(WIB).isoformat()
    assert error.metadata["valid_until"] == new.isoformat()
    assert T0.astimezone(WIB).isoformat() in error.message, error.message
    assert "+00:00" not in error.message
    assert incident.version == 4


def test_a_time_is_named_by_its_instant_and_recorded_in_one_form() -> None:
    """The old value of a time in any spelling of its instant (as a duty officer in WIB
    reads it, without the microseconds); the new one recorded as the original was."""
    incident = _decided()
    event_id = event_id_of(incident, "DecisionRecorded")
    extended = T1 + timedelta(days=2)
    _correct(
        incident,
        LEAD,
        "DecisionRecorded",
        "valid_until",
        T1.astimezone(WIB).isoformat(),
        extended.astimezone(WIB).isoformat(),
    )
    recorded = incident.event_values[event_id]["valid_until"]
    assert recorded == extended.isoformat(timespec="microseconds")
    corrected = event_of(incident, "Corrected")
    assert isinstance(corrected, Incident.Corrected)
    assert corrected.old_value == T1.isoformat(timespec="microseconds")
    assert corrected.new_value == recorded
    # Another instant does not match; the same instant again is no change.
    with pytest.raises(FailedPrecondition) as caught:
        _correct(incident, LEAD, "DecisionRecorded", "valid_until", T1.isoformat(), "x")
    assert caught.value.reason == "OLD_VALUE_MISMATCH"
    # In the zone old_value was written in (here UTC), as a retry may give it.
    assert caught.value.metadata["recorded_value"] == extended.isoformat()
    assert extended.isoformat() in str(caught.value)
    with pytest.raises(InvalidArgument) as same:
        _correct(incident, LEAD, "DecisionRecorded", "valid_until", recorded, extended.isoformat())
    assert same.value.field == "new_value"


def test_a_mismatched_old_time_is_stated_in_the_callers_zone_else_the_regencys() -> None:
    """An officer who names another end in WIB reads the recorded one in WIB, not in UTC
    (seven hours off); an old value with no zone of its own, in the regency's zone."""
    incident = _decided()
    in_wib = T1.astimezone(WIB).isoformat()  # T1: 13:00 UTC, 20:00 WIB
    for old in ((T1 - timedelta(hours=1)).astimezone(WIB).isoformat(), "yesterday"):
        with pytest.raises(FailedPrecondition) as caught:
            _correct(incident, LEAD, "DecisionRecorded", "valid_until", old, "x", zone=WIB)
        error = caught.value
        assert error.reason == "OLD_VALUE_MISMATCH"
        assert error.metadata == {"field": "valid_until", "recorded_value": in_wib}
        assert in_wib in error.message and "+00:00" not in error.message, error.message
    with pytest.raises(FailedPrecondition) as caught:
        _correct(incident, LEAD, "DecisionRecorded", "valid_until", "yesterday", "x", zone=UTC)
    assert caught.value.metadata["recorded_value"] == T1.isoformat()
    # The stated value names the recorded instant: given as old_value, it matches.
    _correct(
        incident,
        LEAD,
        "DecisionRecorded",
        "valid_until",
        in_wib,
        (T1 + timedelta(hours=1)).isoformat(),
    )
    assert incident.version == 5


def test_a_decisions_scope_reflects_a_correction_of_its_place() -> None:
    incident = _decided()
    decision = incident.decisions[0]
    assert incident.decision_scope(decision) == {"kecamatan": "ipuh"}
    _correct(incident, LEAD, "DecisionRecorded", "location.kecamatan", "ipuh", "penarik")
    assert incident.decision_scope(decision) == {"kecamatan": "penarik"}
    # The recorded scope is untouched: the correction is an event of its own.
    assert decision.scope == {"kecamatan": "ipuh"}


def test_corrections_are_allowed_on_a_closed_incident() -> None:
    incident = incident_in(Status.CLOSED)
    _correct(incident, LEAD, "Resolved", "resolution", "crowd dispersed", "crowd went home")
    assert status_of(incident) is Status.CLOSED
    assert incident.event_values[event_id_of(incident, "Resolved")]["resolution"] == (
        "crowd went home"
    )


# ------------------------------------------------------------------ hash chain


def _busy_incident() -> Incident:
    incident = incident_in(Status.RESPONDING)
    incident.add_supporting_agency(envelope_for(LEAD), SUPPORTER, "")
    _decide(incident, LEAD, [LEAD], T0, T1)
    _correct(incident, REPORTER, "Reported", "title", incident.title, "new title")
    incident.resolve(envelope_for(LEAD), "done")
    return incident


def test_each_event_links_to_the_hash_of_the_previous_one() -> None:
    incident = _busy_incident()
    events = incident_events(incident)
    assert events[0].previous_hash == GENESIS_HASH
    for previous, event in itertools.pairwise(events):
        assert event.previous_hash == event_hash(previous)
    assert incident.head_hash == event_hash(events[-1])
    assert len({event_hash(e) for e in events}) == len(events)


def test_replaying_the_events_gives_the_same_state_and_head_hash() -> None:
    incident = _busy_incident()
    rebuilt = replay(incident_events(incident))
    assert rebuilt.head_hash == incident.head_hash
    assert rebuilt.version == incident.version
    assert rebuilt.title == "new title"
    assert rebuilt.supporting_agencies == [SUPPORTER]
    assert rebuilt.event_values == incident.event_values
    assert rebuilt.status is Status.RESOLVED


@pytest.mark.parametrize(
    ("event_type", "changes"),
    [
        ("Reported", {"title": "a quieter crowd"}),
        ("LeadAssigned", {"agency": SUPPORTER}),
        ("ActionLogged", {"actor_agency": OUTSIDER}),
        ("Verified", {"occurred_at": T0}),
    ],
)
def test_a_tampered_event_breaks_the_chain_on_replay(
    event_type: str, changes: dict[str, object]
) -> None:
    incident = _busy_incident()
    events = incident_events(incident)
    position = next(n for n, e in enumerate(events) if type(e).__name__ == event_type)
    events[position] = dataclasses.replace(events[position], **changes)  # type: ignore[arg-type]
    with pytest.raises(DataLoss) as caught:
        replay(events)
    error = caught.value
    assert error.reason == "HASH_CHAIN_BROKEN"
    assert error.code == "DATA_LOSS"
    assert error.metadata == {
        "incident": f"incidents/{incident.id}",
        "version": str(position + 2),
        "check": "chain",
    }


def test_a_removed_event_breaks_the_chain_on_replay() -> None:
    incident = _busy_incident()
    events = incident_events(incident)
    # Drop the third event and renumber the rest so only the hash link can tell.
    kept = events[:2] + [
        dataclasses.replace(e, originator_version=e.originator_version - 1) for e in events[3:]
    ]
    with pytest.raises(DataLoss) as caught:
        replay(kept)
    assert caught.value.reason == "HASH_CHAIN_BROKEN"


def test_a_location_correction_does_not_alter_earlier_unsaved_events() -> None:
    incident = incident_in(Status.RESPONDING)  # the action took the incident's location
    reported = event_id_of(incident, "Reported")
    incident.correct(
        envelope_for(COORDINATOR),
        event_id=reported,
        field="location.desa",
        old_value=str(incident.location.get("desa", "")),
        new_value="Ujung Padang",
        reason="wrong desa",
        zone=UTC,
        desa_of=REF.desa_of,
    )
    events = incident_events(incident)
    assert events[-1].previous_hash == event_hash(events[-2])
    rebuilt = replay(events)  # raises DataLoss if an earlier event changed after hashing
    assert rebuilt.head_hash == incident.head_hash
    assert incident.location["desa"] == "Ujung Padang"
    assert all(e.location is not incident.location for e in events)

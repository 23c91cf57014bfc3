"""TriageIncidents in the application: each item the single command it names, one result
per item, idempotent on the call's request id."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any
from uuid import UUID, uuid4

import pytest

from services.common.errors import (
    AlreadyExists,
    IllegalTransition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    VersionConflict,
)
from services.ledger.application import Ledger, TriageOutcome, TriageResult
from services.ledger.domain.commands import (
    AssignLeadAgency,
    IncidentCommand,
    RejectIncident,
    ReportIncident,
    VerifyIncident,
)
from services.ledger.domain.incident import RejectionReason, Status
from tests.unit.incident_builders import (
    AUDITOR,
    COORDINATOR,
    LEAD,
    LOCATION,
    REF,
    REPORTER,
    envelope_for,
)

RECORDED, DUPLICATE, CONFLICT, INVALID, REFUSED = (
    TriageOutcome.RECORDED,
    TriageOutcome.DUPLICATE,
    TriageOutcome.CONFLICT,
    TriageOutcome.INVALID,
    TriageOutcome.REFUSED,
)


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    app = Ledger(REF, env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, triage_max_items=20)
    yield app
    app.close()


def reported(ledger: Ledger) -> UUID:
    command = ReportIncident(
        title="Uang dibagikan", description="", category="money_politics", severity="",
        location=dict(LOCATION),
    )  # fmt: skip
    return ledger.execute(envelope_for(REPORTER), command).incident_id


def triage(
    ledger: Ledger,
    items: list[IncidentCommand | InvalidArgument],
    request_id: str = "triage-1",
    agency: str = COORDINATOR,
) -> list[TriageResult]:
    envelope = dataclasses.replace(envelope_for(agency), request_id=request_id)
    return ledger.triage(envelope, items)


def outcomes(results: list[TriageResult]) -> list[TriageOutcome]:
    return [r.outcome for r in results]


def recorded(ledger: Ledger) -> int:
    return ledger.recorder.max_notification_id() or 0


def test_each_item_gets_its_own_outcome_in_order(ledger: Ledger) -> None:
    a, b, c, d = (reported(ledger) for _ in range(4))
    missing = uuid4()
    results = triage(
        ledger,
        [
            VerifyIncident(a, 1, "seen by Panwascam"),
            RejectIncident(b, 1, RejectionReason.HOAX, "edited photo"),
            VerifyIncident(c, 7, ""),  # stale expected version
            VerifyIncident(missing, 0, ""),
            InvalidArgument("name", "must look like 'incidents/{id}'"),
            AssignLeadAgency(d, 0, LEAD, ""),  # REPORTED: not yet verified
            AssignLeadAgency(a, 2, LEAD, "Polres leads"),  # after the verify above
            RejectIncident(a, 0, RejectionReason.HOAX, "too late"),  # ASSIGNED now
            AssignLeadAgency(c, 0, "nobody", ""),
        ],
    )
    assert outcomes(results) == [
        RECORDED, RECORDED, REFUSED, REFUSED, INVALID, REFUSED, RECORDED, REFUSED, INVALID,
    ]  # fmt: skip
    errors = [r.error for r in results]
    assert isinstance(errors[2], VersionConflict)
    assert isinstance(errors[3], NotFound)
    assert isinstance(errors[5], IllegalTransition)
    assert isinstance(errors[7], IllegalTransition)
    assert isinstance(errors[8], InvalidArgument) and errors[8].field == "agency"
    assert all(r.result is None for r in results if r.outcome is not RECORDED)
    incident = ledger.get_incident(a)
    assert (incident.status, incident.lead_agency, incident.version) == (Status.ASSIGNED, LEAD, 3)
    assert ledger.get_incident(b).status is Status.REJECTED
    assert ledger.get_incident(c).version == ledger.get_incident(d).version == 1


def test_only_the_coordinator_triages_item_by_item(ledger: Ledger) -> None:
    a = reported(ledger)
    before = recorded(ledger)
    results = triage(ledger, [VerifyIncident(a, 0, ""), VerifyIncident(a, 0, "")], agency=LEAD)
    assert outcomes(results) == [REFUSED, REFUSED]
    assert all(isinstance(r.error, PermissionDenied) for r in results)
    assert recorded(ledger) == before
    with pytest.raises(PermissionDenied):
        triage(ledger, [VerifyIncident(a, 0, "")], agency=AUDITOR)


def test_a_call_sent_again_records_nothing_twice(ledger: Ledger) -> None:
    a, b = reported(ledger), reported(ledger)
    items: list[IncidentCommand | InvalidArgument] = [
        VerifyIncident(a, 1, ""),
        VerifyIncident(b, 5, ""),
    ]
    first = triage(ledger, items)
    stored = recorded(ledger)
    again = triage(ledger, items)
    assert outcomes(first) == [RECORDED, REFUSED]
    assert outcomes(again) == [DUPLICATE, REFUSED]
    assert again[0].result == first[0].result
    assert recorded(ledger) == stored
    # The same request id for other items is a conflict, item by item.
    other = triage(ledger, [RejectIncident(b, 0, RejectionReason.HOAX, "hoax")])
    assert outcomes(other) == [CONFLICT]
    assert isinstance(other[0].error, AlreadyExists)
    assert other[0].error.reason == "REQUEST_ID_REUSED"


def test_an_item_is_the_single_command_with_its_own_request_id(ledger: Ledger) -> None:
    a = reported(ledger)
    (result,) = triage(ledger, [VerifyIncident(a, 0, "ok")], request_id="pagi")
    assert result.result is not None
    single = ledger.execute(envelope_for(COORDINATOR, "pagi/1"), VerifyIncident(a, 0, "ok"))
    assert single == result.result, "the single command with the item's request id is a retry"


@pytest.mark.parametrize(
    ("request_id", "count", "field"),
    [("", 1, "request_id"), ("x" * 121, 1, "request_id"), ("fine", 21, "items")],
)
def test_a_call_refused_as_a_whole_records_nothing(
    ledger: Ledger, request_id: str, count: int, field: str
) -> None:
    a = reported(ledger)
    before = recorded(ledger)
    items: list[Any] = [VerifyIncident(a, 0, "")] * count
    with pytest.raises(InvalidArgument) as caught:
        triage(ledger, items, request_id=request_id)
    assert caught.value.field == field
    assert recorded(ledger) == before

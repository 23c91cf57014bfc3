"""The Ledger application over the in-memory store: idempotency, expected
versions and input checks against the reference data."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.common.config import LedgerSettings
from services.common.errors import (
    AlreadyExists,
    IllegalTransition,
    InvalidArgument,
    LedgerError,
    NotFound,
    PermissionDenied,
    VersionConflict,
)
from services.ledger.application import CommandResult, Ledger, time_bounds_of
from services.ledger.domain.commands import (
    MAX_TITLE,
    AddSupportingAgency,
    AssessSeverity,
    AssignLeadAgency,
    EscalateIncident,
    LogAction,
    MergeIncident,
    ProposeHandover,
    RecordCorrection,
    RecordDecision,
    RejectIncident,
    ReportIncident,
    ResolveIncident,
    VerifyIncident,
)
from services.ledger.domain.incident import (
    Envelope,
    Incident,
    RejectionReason,
    Status,
    event_hash,
)
from services.ledger.seals import Sealer
from tests.unit.incident_builders import (
    AUDITOR,
    COORDINATOR,
    LEAD,
    REF,
    REPORTER,
    SUPPORTER,
    actor,
    envelope_for,
)

T0 = datetime(2024, 11, 27, 7, 0, tzinfo=UTC)
LOCATION: dict[str, Any] = {"kecamatan": "ipuh", "desa": "Medan Jaya"}


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    app = Ledger(REF, env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    yield app
    app.close()


def recorded(ledger: Ledger) -> int:
    return ledger.recorder.max_notification_id() or 0


def report(ledger: Ledger, envelope: Envelope | None = None, **fields: Any) -> CommandResult:
    values: dict[str, Any] = {
        "title": "Vote buying near TPS 3",
        "description": "envelopes handed out",
        "category": "money_politics",
        "severity": "high",
        "location": dict(LOCATION),
    }
    values.update(fields)
    return ledger.execute(envelope or envelope_for(REPORTER), ReportIncident(**values))


def verified(ledger: Ledger) -> CommandResult:
    created = report(ledger)
    return ledger.execute(envelope_for(COORDINATOR), VerifyIncident(created.incident_id, 1, "ok"))


# ----------------------------------------------------------------- basics


def test_report_records_one_event_and_returns_its_coordinates(ledger: Ledger) -> None:
    result = report(ledger)
    assert result.version == 1
    # The idempotency record and the claim of the reference code are stored right after
    # the incident's event.
    assert result.position == recorded(ledger) - 2 == 1
    incident = ledger.get_incident(result.incident_id)
    assert incident.status is Status.REPORTED
    assert ledger.incident_by_reference(incident.reference) == incident.id
    assert incident.title == "Vote buying near TPS 3"
    reported = ledger.incident_events(result.incident_id, after_version=0, limit=10)
    assert [type(s.event).__name__ for s in reported] == ["Reported"]
    assert reported[0].event.event_id == result.event_id
    assert reported[0].position == result.position
    assert reported[0].event.timestamp == result.recorded_at


def test_report_without_severity_takes_the_default(ledger: Ledger) -> None:
    result = report(ledger, severity="")
    assert ledger.get_incident(result.incident_id).severity == REF.default_severity == "medium"


def test_each_command_returns_the_new_version(ledger: Ledger) -> None:
    created = report(ledger)
    incident_id = created.incident_id
    assert (
        ledger.execute(envelope_for(COORDINATOR), VerifyIncident(incident_id, 1, "")).version == 2
    )
    assert (
        ledger.execute(
            envelope_for(COORDINATOR), AssignLeadAgency(incident_id, 2, LEAD, "")
        ).version
        == 3
    )
    logged = ledger.execute(envelope_for(LEAD), LogAction(incident_id, 3, "patrol", None))
    assert logged.version == 4
    assert logged.position == recorded(ledger) - 1
    incident = ledger.get_incident(incident_id)
    assert (incident.status, incident.lead_agency, incident.version) == (
        Status.RESPONDING,
        LEAD,
        4,
    )
    # The action took the incident's location when none was given.
    actions = ledger.incident_events(incident_id, after_version=3, limit=10)
    assert actions[0].event.location == LOCATION


def test_expected_version_zero_skips_the_check(ledger: Ledger) -> None:
    created = report(ledger)
    ledger.execute(envelope_for(REPORTER), EscalateIncident(created.incident_id, 0, "worse"))
    again = ledger.execute(
        envelope_for(REPORTER), EscalateIncident(created.incident_id, 0, "worse still")
    )
    assert again.version == 3


def test_unknown_incident_is_not_found(ledger: Ledger) -> None:
    with pytest.raises(NotFound) as caught:
        ledger.execute(envelope_for(COORDINATOR), VerifyIncident(uuid4(), 0, ""))
    assert caught.value.reason == "INCIDENT_NOT_FOUND"
    assert recorded(ledger) == 0


def test_merge_records_on_both_incidents(ledger: Ledger) -> None:
    duplicate = report(ledger)
    target = report(ledger, title="The same vote buying")
    result = ledger.execute(
        envelope_for(COORDINATOR),
        MergeIncident(duplicate.incident_id, 1, target.incident_id, "dup"),
    )
    assert (result.incident_id, result.version) == (duplicate.incident_id, 2)
    assert ledger.get_incident(duplicate.incident_id).status is Status.MERGED
    absorbing = ledger.get_incident(target.incident_id)
    assert absorbing.version == 2
    assert absorbing.merged_incidents == [duplicate.incident_id]
    # The duplicate keeps its code and points to the survivor's.
    merged = ledger.get_incident(duplicate.incident_id)
    assert merged.reference
    assert merged.merged_into_reference == absorbing.reference != merged.reference
    # Two reports with their request records and code claims, then two events and one
    # record.
    assert recorded(ledger) == 6 + 3


def test_merge_retry_returns_the_original_result(ledger: Ledger) -> None:
    duplicate = report(ledger)
    target = report(ledger, title="The same vote buying")
    envelope = envelope_for(COORDINATOR, request_id="merge-1")
    first = ledger.execute(
        envelope, MergeIncident(duplicate.incident_id, 1, target.incident_id, "dup")
    )
    before = recorded(ledger)
    again = ledger.execute(
        envelope, MergeIncident(duplicate.incident_id, 1, target.incident_id, "dup")
    )
    assert again == first
    assert recorded(ledger) == before
    assert ledger.get_incident(target.incident_id).version == 2


def test_merge_into_unknown_incident_names_the_target_field(ledger: Ledger) -> None:
    duplicate = report(ledger)
    before = recorded(ledger)
    with pytest.raises(NotFound) as caught:
        ledger.execute(
            envelope_for(COORDINATOR), MergeIncident(duplicate.incident_id, 1, uuid4(), "dup")
        )
    assert caught.value.metadata["field"] == "target"
    assert recorded(ledger) == before


# ------------------------------------------------------------ idempotency


def test_same_request_id_and_body_returns_the_original_result(ledger: Ledger) -> None:
    envelope = envelope_for(REPORTER, request_id="req-1")
    first = report(ledger, envelope)
    before = recorded(ledger)
    second = report(ledger, envelope)
    assert second == first
    assert recorded(ledger) == before


def test_retry_of_a_state_command_returns_the_original_result(ledger: Ledger) -> None:
    created = report(ledger)
    envelope = envelope_for(COORDINATOR, request_id="verify-1")
    first = ledger.execute(envelope, VerifyIncident(created.incident_id, 1, "ok"))
    before = recorded(ledger)
    assert ledger.execute(envelope, VerifyIncident(created.incident_id, 1, "ok")) == first
    assert recorded(ledger) == before


def test_retry_that_would_now_fail_still_returns_the_original_result(ledger: Ledger) -> None:
    created = report(ledger)
    incident_id = created.incident_id
    envelope = envelope_for(COORDINATOR, request_id="verify-1")
    first = ledger.execute(envelope, VerifyIncident(incident_id, 0, "ok"))
    ledger.execute(envelope_for(COORDINATOR), AssignLeadAgency(incident_id, 2, LEAD, ""))
    before = recorded(ledger)
    # Verifying an ASSIGNED incident is illegal, but this is the same request.
    assert ledger.execute(envelope, VerifyIncident(incident_id, 0, "ok")) == first
    assert recorded(ledger) == before
    # A new request with the same body is refused.
    with pytest.raises(IllegalTransition):
        ledger.execute(envelope_for(COORDINATOR), VerifyIncident(incident_id, 0, "ok"))


def test_retry_with_a_now_stale_expected_version_returns_the_original(ledger: Ledger) -> None:
    created = report(ledger)
    envelope = envelope_for(COORDINATOR, request_id="verify-1")
    first = ledger.execute(envelope, VerifyIncident(created.incident_id, 1, "ok"))
    ledger.execute(envelope_for(COORDINATOR), AssignLeadAgency(created.incident_id, 2, LEAD, ""))
    assert ledger.execute(envelope, VerifyIncident(created.incident_id, 1, "ok")) == first


def test_retry_of_an_action_records_it_once(ledger: Ledger) -> None:
    incident_id = verified(ledger).incident_id
    ledger.execute(envelope_for(COORDINATOR), AssignLeadAgency(incident_id, 0, LEAD, ""))
    envelope = envelope_for(LEAD, request_id="act-1")
    first = ledger.execute(envelope, LogAction(incident_id, 0, "patrol", None))
    second = ledger.execute(envelope, LogAction(incident_id, 0, "patrol", None))
    assert second == first
    assert ledger.get_incident(incident_id).version == 4


@pytest.mark.parametrize(
    "changes",
    [{"title": "Another title"}, {"severity": "low"}, {"location": {"kecamatan": "penarik"}}],
)
def test_same_request_id_with_another_body_is_refused(
    ledger: Ledger, changes: dict[str, Any]
) -> None:
    envelope = envelope_for(REPORTER, request_id="req-1")
    first = report(ledger, envelope)
    before = recorded(ledger)
    with pytest.raises(AlreadyExists) as caught:
        report(ledger, envelope, **changes)
    assert caught.value.reason == "REQUEST_ID_REUSED"
    assert caught.value.code == "ALREADY_EXISTS"
    # What the request recorded is named, with the report's code, so that it can be found.
    assert first.reference
    assert caught.value.metadata == {
        "request_id": "req-1",
        "original_command": "ReportIncident",
        "incident": f"incidents/{first.incident_id}",
        "version": "1",
        "reference": first.reference,
    }
    assert f"incidents/{first.incident_id} version 1, reference {first.reference}" in str(
        caught.value.message
    )
    assert recorded(ledger) == before


def test_same_request_id_for_another_command_is_refused(ledger: Ledger) -> None:
    created = report(ledger)
    envelope = envelope_for(COORDINATOR, request_id="shared")
    ledger.execute(envelope, VerifyIncident(created.incident_id, 1, "ok"))
    before = recorded(ledger)
    with pytest.raises(AlreadyExists) as caught:
        ledger.execute(envelope, AssignLeadAgency(created.incident_id, 2, LEAD, ""))
    assert caught.value.reason == "REQUEST_ID_REUSED"
    assert caught.value.metadata["original_command"] == "VerifyIncident"
    assert caught.value.metadata["incident"] == f"incidents/{created.incident_id}"
    assert caught.value.metadata["version"] == "2" and "reference" not in caught.value.metadata
    assert recorded(ledger) == before
    assert ledger.get_incident(created.incident_id).status is Status.VERIFIED


def test_same_request_id_with_another_occurred_at_is_another_body(ledger: Ledger) -> None:
    report(ledger, envelope_for(REPORTER, request_id="r", occurred_at=T0))
    with pytest.raises(AlreadyExists):
        report(
            ledger, envelope_for(REPORTER, request_id="r", occurred_at=T0 + timedelta(minutes=1))
        )


def test_same_request_id_from_another_agency_is_another_request(ledger: Ledger) -> None:
    first = report(ledger, envelope_for(REPORTER, request_id="req-1"))
    before = recorded(ledger)
    second = report(ledger, envelope_for("kpu", request_id="req-1"))
    assert second.incident_id != first.incident_id
    assert recorded(ledger) == before + 3  # the event, the request record, the code's claim
    assert ledger.get_incident(second.incident_id).reporter_agency == "kpu"


def test_a_refused_command_does_not_use_up_its_request_id(ledger: Ledger) -> None:
    created = report(ledger)
    envelope = envelope_for(REPORTER, request_id="try-1")
    with pytest.raises(PermissionDenied):
        ledger.execute(envelope, VerifyIncident(created.incident_id, 1, ""))
    # The same request id may carry another request, since nothing was recorded.
    result = ledger.execute(envelope, EscalateIncident(created.incident_id, 1, "worse"))
    assert result.version == 2


def test_request_id_is_required(ledger: Ledger) -> None:
    envelope = Envelope(actor=actor(REPORTER), request_id="", correlation_id="", causation_id="")
    with pytest.raises(InvalidArgument) as caught:
        report(ledger, envelope)
    assert caught.value.field == "request_id"
    assert recorded(ledger) == 0


# -------------------------------------------------------- expected version


def test_stale_expected_version_is_a_version_conflict(ledger: Ledger) -> None:
    incident_id = verified(ledger).incident_id
    before = recorded(ledger)
    with pytest.raises(VersionConflict) as caught:
        ledger.execute(envelope_for(COORDINATOR), AssignLeadAgency(incident_id, 1, LEAD, ""))
    error = caught.value
    assert error.code == "ABORTED"
    assert error.reason == "VERSION_CONFLICT"
    assert error.metadata == {"expected_version": "1", "current_version": "2"}
    assert (error.expected, error.current) == (1, 2)
    assert recorded(ledger) == before
    assert ledger.get_incident(incident_id).status is Status.VERIFIED


def test_expected_version_ahead_of_the_incident_is_a_version_conflict(ledger: Ledger) -> None:
    created = report(ledger)
    with pytest.raises(VersionConflict) as caught:
        ledger.execute(envelope_for(COORDINATOR), VerifyIncident(created.incident_id, 5, ""))
    assert caught.value.metadata["current_version"] == "1"


def test_negative_expected_version_is_invalid(ledger: Ledger) -> None:
    created = report(ledger)
    with pytest.raises(InvalidArgument) as caught:
        ledger.execute(envelope_for(COORDINATOR), VerifyIncident(created.incident_id, -1, ""))
    assert caught.value.field == "expected_version"


# ------------------------------------------------------------ input checks


def _decision(ledger: Ledger, incident_id: UUID, **changes: Any) -> CommandResult:
    values: dict[str, Any] = {
        "deciding_agencies": (LEAD,),
        "forum": "Rakor",
        "summary": "close the road",
        "rationale": "safety",
        "scope": None,
        "valid_from": T0,
        "valid_until": T0 + timedelta(hours=2),
    }
    values.update(changes)
    return ledger.execute(envelope_for(COORDINATOR), RecordDecision(incident_id, 0, **values))


Invalid = Callable[[Ledger, UUID], object]
YEAR_9999 = datetime(9999, 1, 1, tzinfo=UTC)
BEFORE_2000 = datetime(1999, 12, 31, 23, 59, tzinfo=UTC)


def _in(**delta: float) -> datetime:
    return datetime.now(UTC) + timedelta(**delta)


def _correct_time(ledger: Ledger, incident_id: UUID, field: str, value: datetime) -> object:
    return ledger.execute(
        envelope_for(COORDINATOR),
        RecordCorrection(
            incident_id,
            0,
            event_id=uuid4(),
            field=field,
            old_value="",
            new_value=value.isoformat(),
            reason="typo",
        ),
    )


INVALID_INPUTS: dict[str, tuple[str, str, Invalid]] = {
    "unknown category": (
        "category",
        "INVALID_FIELD",
        lambda lg, _: report(lg, category="littering"),
    ),
    "unknown severity": ("severity", "INVALID_FIELD", lambda lg, _: report(lg, severity="huge")),
    "unknown kecamatan": (
        "location.kecamatan",
        "INVALID_FIELD",
        lambda lg, _: report(lg, location={"kecamatan": "atlantis"}),
    ),
    "missing kecamatan": (
        "location.kecamatan",
        "INVALID_FIELD",
        lambda lg, _: report(lg, location={"desa": "Medan Jaya"}),
    ),
    "desa of another kecamatan": (
        "location.desa",
        "INVALID_FIELD",
        lambda lg, _: report(lg, location={"kecamatan": "ipuh", "desa": "Koto Jaya"}),
    ),
    "latitude out of range": (
        "location.latitude",
        "INVALID_FIELD",
        lambda lg, _: report(lg, location={"kecamatan": "ipuh", "latitude": 91.0}),
    ),
    "title too long": (
        "title",
        "FIELD_TOO_LONG",
        lambda lg, _: report(lg, title="x" * (MAX_TITLE + 1)),
    ),
    "empty title": ("title", "INVALID_FIELD", lambda lg, _: report(lg, title="   ")),
    "unknown lead agency": (
        "agency",
        "INVALID_FIELD",
        lambda lg, i: lg.execute(envelope_for(COORDINATOR), AssignLeadAgency(i, 0, "fbi", "")),
    ),
    "auditor as lead agency": (
        "agency",
        "INVALID_FIELD",
        lambda lg, i: lg.execute(envelope_for(COORDINATOR), AssignLeadAgency(i, 0, AUDITOR, "")),
    ),
    "unknown supporting agency": (
        "agency",
        "INVALID_FIELD",
        lambda lg, i: lg.execute(envelope_for(COORDINATOR), AddSupportingAgency(i, 0, "nasa", "")),
    ),
    "unknown handover recipient": (
        "to_agency",
        "INVALID_FIELD",
        lambda lg, i: lg.execute(envelope_for(COORDINATOR), ProposeHandover(i, 0, "nasa", "why")),
    ),
    "unknown assessed severity": (
        "severity",
        "INVALID_FIELD",
        lambda lg, i: lg.execute(envelope_for(COORDINATOR), AssessSeverity(i, 0, "extreme", "")),
    ),
    "unknown deciding agency": (
        "deciding_agencies[1]",
        "INVALID_FIELD",
        lambda lg, i: _decision(lg, i, deciding_agencies=(LEAD, "nasa")),
    ),
    "deciding agency twice": (
        "deciding_agencies",
        "INVALID_FIELD",
        lambda lg, i: _decision(lg, i, deciding_agencies=(LEAD, LEAD)),
    ),
    "unknown scope kecamatan": (
        "scope.kecamatan",
        "INVALID_FIELD",
        lambda lg, i: _decision(lg, i, scope={"kecamatan": "atlantis"}),
    ),
    "unknown action kecamatan": (
        "location.kecamatan",
        "INVALID_FIELD",
        lambda lg, i: lg.execute(
            envelope_for(COORDINATOR), LogAction(i, 0, "x", {"kecamatan": "atlantis"})
        ),
    ),
    "unknown corrected severity": (
        "new_value",
        "INVALID_FIELD",
        lambda lg, i: lg.execute(
            envelope_for(COORDINATOR),
            RecordCorrection(
                i,
                0,
                event_id=uuid4(),
                field="severity",
                old_value="high",
                new_value="extreme",
                reason="r",
            ),
        ),
    ),
    "reject without comment": (
        "comment",
        "INVALID_FIELD",
        lambda lg, i: lg.execute(
            envelope_for(COORDINATOR), RejectIncident(i, 0, RejectionReason.HOAX, "")
        ),
    ),
    # Auditors read everything and write nothing: a decision is not theirs to take either.
    "an auditing agency among the deciding agencies": (
        "deciding_agencies[1]",
        "INVALID_FIELD",
        lambda lg, i: _decision(lg, i, deciding_agencies=(LEAD, AUDITOR)),
    ),
    "an agency the reference data does not know among the deciding agencies": (
        "deciding_agencies[0]",
        "INVALID_FIELD",
        lambda lg, i: _decision(lg, i, deciding_agencies=("atlantis_police", LEAD)),
    ),
    "occur_time in year 9999": (
        "occur_time",
        "INVALID_FIELD",
        lambda lg, i: lg.execute(
            envelope_for(COORDINATOR, occurred_at=YEAR_9999), EscalateIncident(i, 0, "worse")
        ),
    ),
    "occur_time an hour ahead of the server": (
        "occur_time",
        "INVALID_FIELD",
        lambda lg, _: report(lg, envelope_for(REPORTER, occurred_at=_in(hours=1))),
    ),
    "occur_time before the ledger's era": (
        "occur_time",
        "INVALID_FIELD",
        lambda lg, _: report(lg, envelope_for(REPORTER, occurred_at=BEFORE_2000)),
    ),
    "decision valid until year 9999": (
        "valid_until",
        "INVALID_FIELD",
        lambda lg, i: _decision(lg, i, valid_until=YEAR_9999),
    ),
    "decision valid from before the ledger's era": (
        "valid_from",
        "INVALID_FIELD",
        lambda lg, i: _decision(lg, i, valid_from=BEFORE_2000),
    ),
    "decision valid until two years ahead": (
        "valid_until",
        "INVALID_FIELD",
        lambda lg, i: _decision(lg, i, valid_until=_in(days=731)),
    ),
    "corrected occurred_at in year 9999": (
        "new_value",
        "INVALID_FIELD",
        lambda lg, i: _correct_time(lg, i, "occurred_at", YEAR_9999),
    ),
    "corrected occurred_at an hour ahead (naive, read as UTC)": (
        "new_value",
        "INVALID_FIELD",
        lambda lg, i: _correct_time(lg, i, "occurred_at", _in(hours=1).replace(tzinfo=None)),
    ),
    # Read as UTC, 18:00 meant in WIB would end the decision seven hours late.
    "corrected valid_until without a UTC offset": (
        "new_value",
        "INVALID_FIELD",
        lambda lg, i: _correct_time(lg, i, "valid_until", _in(hours=2).replace(tzinfo=None)),
    ),
    "corrected valid_from before the ledger's era": (
        "new_value",
        "INVALID_FIELD",
        lambda lg, i: _correct_time(lg, i, "valid_from", BEFORE_2000),
    ),
    "corrected valid_until in year 9999": (
        "new_value",
        "INVALID_FIELD",
        lambda lg, i: _correct_time(lg, i, "valid_until", YEAR_9999),
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID_INPUTS))
def test_invalid_input_names_the_field_and_records_nothing(ledger: Ledger, case: str) -> None:
    incident_id = verified(ledger).incident_id
    before = recorded(ledger)
    field, reason, call = INVALID_INPUTS[case]
    with pytest.raises(InvalidArgument) as caught:
        call(ledger, incident_id)
    error = caught.value
    assert error.code == "INVALID_ARGUMENT"
    assert error.field == field
    assert error.metadata["field"] == field
    assert error.reason == reason
    assert recorded(ledger) == before
    assert ledger.get_incident(incident_id).version == 2


def test_stated_times_are_checked_against_the_configured_bounds_and_clock() -> None:
    now = datetime(2024, 11, 27, 12, 0, tzinfo=UTC)
    settings = LedgerSettings(
        earliest_time=datetime(2024, 1, 1, tzinfo=UTC),
        max_clock_skew_seconds=60,
        max_decision_days=7,
    )
    app = Ledger(
        REF,
        env={"PERSISTENCE_MODULE": "eventsourcing.popo"},
        time_bounds=time_bounds_of(settings),
        clock=lambda: now,
    )
    try:
        late = timedelta(seconds=61)
        for occurred, accepted in [
            (now + timedelta(seconds=60), True),  # within the skew
            (now + late, False),
            (datetime(2024, 1, 1, tzinfo=UTC), True),
            (datetime(2023, 12, 31, 23, 59, tzinfo=UTC), False),
        ]:
            if accepted:
                report(app, envelope_for(REPORTER, occurred_at=occurred))
            else:
                with pytest.raises(InvalidArgument) as caught:
                    report(app, envelope_for(REPORTER, occurred_at=occurred))
                assert caught.value.field == "occur_time"
        incident_id = verified(app).incident_id
        _decision(app, incident_id, valid_from=now, valid_until=now + timedelta(days=7))
        with pytest.raises(InvalidArgument) as caught:
            _decision(app, incident_id, valid_from=now, valid_until=now + timedelta(days=8))
        assert caught.value.field == "valid_until"
    finally:
        app.close()


def test_refused_times_are_stated_in_the_callers_zone_or_the_regencys() -> None:
    """A Timestamp carries no zone: the refusal states it in the regency's (WIB for
    Mukomuko); a corrected time states its own offset. Both said UTC before."""
    now = datetime(2026, 12, 5, 13, 0, tzinfo=UTC)  # 20:00 WIB
    settings = LedgerSettings(earliest_time=datetime(2024, 1, 1, tzinfo=UTC), max_decision_days=7)
    app = Ledger(
        REF,
        env={"PERSISTENCE_MODULE": "eventsourcing.popo"},
        time_bounds=time_bounds_of(settings),
        clock=lambda: now,
    )
    try:
        incident_id = verified(app).incident_id
        with pytest.raises(InvalidArgument) as ahead:
            _decision(app, incident_id, valid_from=now, valid_until=now + timedelta(days=8))
        assert ahead.value.metadata == {
            "field": "valid_until",
            "check": "ahead",
            "value": "2026-12-13T20:00:00+07:00",
            "latest": "2026-12-12T20:00:00+07:00",
            "days": "7",
        }
        assert "2026-12-13T20:00:00+07:00" in ahead.value.message, ahead.value.message
        with pytest.raises(InvalidArgument) as early:
            _correct_time(app, incident_id, "valid_from", datetime(2023, 6, 1, 8, 0, tzinfo=_WITA))
        assert early.value.metadata["check"] == "era"
        assert early.value.metadata["value"] == "2023-06-01T08:00:00+08:00"
        assert early.value.metadata["earliest"] == "2024-01-01T08:00:00+08:00"
        with pytest.raises(InvalidArgument) as future:
            report(app, envelope_for(REPORTER, occurred_at=now + timedelta(hours=1)))
        assert future.value.metadata["check"] == "future"
        assert future.value.metadata["now"] == "2026-12-05T20:00:00+07:00"
        for error in (ahead.value, early.value, future.value):
            assert "+00:00" not in error.message, error.message
    finally:
        app.close()


_WITA = timezone(timedelta(hours=8))


def test_title_at_the_limit_is_accepted(ledger: Ledger) -> None:
    result = report(ledger, title="x" * MAX_TITLE)
    assert len(ledger.get_incident(result.incident_id).title) == MAX_TITLE


REFUSED: dict[str, tuple[type[LedgerError], Callable[[Ledger, UUID], object]]] = {
    "reporter adds a supporter": (
        PermissionDenied,
        lambda lg, i: lg.execute(envelope_for(REPORTER), AddSupportingAgency(i, 0, SUPPORTER, "")),
    ),
    "auditor escalates": (
        PermissionDenied,
        lambda lg, i: lg.execute(envelope_for(AUDITOR), EscalateIncident(i, 0, "worse")),
    ),
    "resolve before response": (
        IllegalTransition,
        lambda lg, i: lg.execute(envelope_for(COORDINATOR), ResolveIncident(i, 0, "done")),
    ),
    "stale version": (
        VersionConflict,
        lambda lg, i: lg.execute(envelope_for(COORDINATOR), EscalateIncident(i, 1, "worse")),
    ),
    "handover to the lead itself": (
        InvalidArgument,
        lambda lg, i: lg.execute(envelope_for(LEAD), ProposeHandover(i, 0, LEAD, "why")),
    ),
    "merge an assigned incident": (
        IllegalTransition,
        lambda lg, i: lg.execute(envelope_for(COORDINATOR), MergeIncident(i, 0, i, "dup")),
    ),
    "correct a foreign event": (
        InvalidArgument,
        lambda lg, i: lg.execute(
            envelope_for(COORDINATOR),
            RecordCorrection(
                i, 0, event_id=uuid4(), field="title", old_value="a", new_value="b", reason="r"
            ),
        ),
    ),
    "outsider logs an action": (
        PermissionDenied,
        lambda lg, i: lg.execute(envelope_for(SUPPORTER), LogAction(i, 0, "x", None)),
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_commands_record_nothing(ledger: Ledger, case: str) -> None:
    incident_id = verified(ledger).incident_id
    ledger.execute(envelope_for(COORDINATOR), AssignLeadAgency(incident_id, 2, LEAD, ""))
    before = recorded(ledger)
    error_type, call = REFUSED[case]
    with pytest.raises(error_type):
        call(ledger, incident_id)
    assert recorded(ledger) == before
    incident: Incident = ledger.get_incident(incident_id)
    assert (incident.version, incident.status) == (3, Status.ASSIGNED)


def _correct_place(ledger: Ledger, incident_id: UUID, field: str, old: str, new: str) -> object:
    incident: Incident = ledger.get_incident(incident_id)
    reported = next(e for e, kind in incident.event_types.items() if kind == "Reported")
    return ledger.execute(
        envelope_for(COORDINATOR),
        RecordCorrection(
            incident_id,
            incident.version,
            event_id=reported,
            field=field,
            old_value=old,
            new_value=new,
            reason="the place was misheard",
        ),
    )


@pytest.mark.parametrize(
    ("field", "old", "new"),
    [
        ("location.desa", "Medan Jaya", "Atlantis"),  # no such desa anywhere
        ("location.desa", "Medan Jaya", "Koto Jaya"),  # a desa of Kota Mukomuko, not Ipuh
        ("location.kecamatan", "ipuh", "kota_mukomuko"),  # Medan Jaya is in Ipuh
    ],
    ids=["unknown desa", "desa of another kecamatan", "kecamatan without the desa"],
)
def test_a_corrected_place_must_be_one_a_report_could_name(
    ledger: Ledger, field: str, old: str, new: str
) -> None:
    """A report naming a desa outside its kecamatan is refused; a correction made the same
    place, and the situation room then counted the incident in a kecamatan its desa is not
    in. The corrected location is checked as a reported one is, and nothing is recorded."""
    incident_id = report(ledger).incident_id
    before = recorded(ledger)
    with pytest.raises(InvalidArgument) as refused:
        _correct_place(ledger, incident_id, field, old, new)
    assert refused.value.field == "new_value", refused.value
    assert refused.value.reason == "INVALID_FIELD"
    assert recorded(ledger) == before
    assert ledger.get_incident(incident_id).location == LOCATION


def test_a_report_moves_to_another_kecamatan_by_clearing_its_desa_first(ledger: Ledger) -> None:
    """The way a refusal above points to: the desa emptied, the kecamatan corrected, then the
    desa of the new kecamatan named; each step a place a report could name."""
    incident_id = report(ledger).incident_id
    _correct_place(ledger, incident_id, "location.desa", "Medan Jaya", "")
    _correct_place(ledger, incident_id, "location.kecamatan", "ipuh", "kota_mukomuko")
    _correct_place(ledger, incident_id, "location.desa", "", "Koto Jaya")
    incident: Incident = ledger.get_incident(incident_id)
    assert (incident.location["kecamatan"], incident.location["desa"]) == (
        "kota_mukomuko",
        "Koto Jaya",
    )


# ------------------------------------------------------------------ seals


def test_every_incident_event_a_command_stores_carries_a_seal_over_its_hash() -> None:
    """Each stored incident event, not only each incident's newest, is sealed over its hash."""
    sealer = Sealer(Ed25519PrivateKey.generate())
    sealing = Ledger(REF, env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, sealer=sealer)
    try:
        duplicate = report(sealing)
        target = verified(sealing)
        sealing.execute(
            envelope_for(COORDINATOR),
            MergeIncident(duplicate.incident_id, 1, target.incident_id, "dup"),
        )
        sealing.execute(
            envelope_for(COORDINATOR), AssignLeadAgency(target.incident_id, 0, LEAD, "")
        )
        sealing.execute(envelope_for(LEAD), LogAction(target.incident_id, 0, "patrol", None))
        stored = [s.event for s in sealing.history()]
        assert len(stored) == 7  # two reports, a verification, a merge (two), two more
        for event in stored:
            seal = vars(event).get("seal")
            assert seal, f"{type(event).__name__} stored without a seal"
            assert sealer.checker.problem(event_hash(event), seal) is None
        assert sealing.get_incident(target.incident_id).version == 5  # loads: seal checked
    finally:
        sealing.close()

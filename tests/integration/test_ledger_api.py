"""The ledger's gRPC API end to end, on the in-memory, SQLite and PostgreSQL stores."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from services.common.grpc_errors import error_info
from tests.support import Client, rid, ts


def fails(call: object, code: grpc.StatusCode, reason: str | None = None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    error = caught.value
    assert error.code() == code, error.details()
    info = error_info(error)  # type: ignore[arg-type]
    assert info is not None, "every error carries an ErrorInfo"
    assert info.domain == "ledger.incidentledger"
    if reason is not None:
        assert info.reason == reason, (info.reason, error.details())
    return error


def events_of(ledger: Client, name: str) -> list[pb.IncidentEvent]:
    return list(
        ledger.stub.ListIncidentEvents(
            api.ListIncidentEventsRequest(parent=name, page_size=1000),
            metadata=ledger.md("inspektorat"),
        ).events
    )


def get(ledger: Client, name: str) -> pb.Incident:
    return ledger.stub.GetIncident(
        api.GetIncidentRequest(name=name), metadata=ledger.md("inspektorat")
    ).incident


def test_whole_lifecycle_is_recorded_with_trustworthy_envelopes(ledger: Client) -> None:
    s, md = ledger.stub, ledger.md
    now = datetime.now(UTC)
    name = ledger.report("kesbangpol", severity="high", correlation_id="op-gathering").incident
    s.VerifyIncident(
        api.VerifyIncidentRequest(
            request_id=rid(),
            name=name,
            expected_version=1,
            comment="confirmed by Kesbangpol field team",
        ),
        metadata=md("desk_pilkada"),
    )
    s.AssignLeadAgency(
        api.AssignLeadAgencyRequest(
            request_id=rid(), name=name, agency="polres", expected_version=2
        ),
        metadata=md("desk_pilkada"),
    )
    s.AddSupportingAgency(
        api.AddSupportingAgencyRequest(request_id=rid(), name=name, agency="satpolpp"),
        metadata=md("polres"),
    )
    s.RecordDecision(
        api.RecordDecisionRequest(
            request_id=rid(),
            name=name,
            deciding_agencies=["desk_pilkada", "polres", "kodim"],
            forum="Forkopimda coordination meeting",
            summary="Large gatherings restricted",
            rationale="Risk of clashes between supporters",
            valid_from=ts(now),
            valid_until=ts(now + timedelta(days=3)),
        ),
        metadata=md("desk_pilkada"),
    )
    s.LogAction(
        api.LogActionRequest(request_id=rid(), name=name, action="Patrol deployed"),
        metadata=md("polres"),
    )
    assert get(ledger, name).status == pb.INCIDENT_STATUS_RESPONDING
    s.ProposeHandover(
        api.ProposeHandoverRequest(
            request_id=rid(), name=name, to_agency="kodim", reason="military support needed"
        ),
        metadata=md("polres"),
    )
    pending = get(ledger, name)
    assert pending.lead_agency == "polres", "the old lead stays responsible until acceptance"
    assert pending.pending_handover.to_agency == "kodim"
    s.AcceptHandover(api.AcceptHandoverRequest(request_id=rid(), name=name), metadata=md("kodim"))
    s.EscalateIncident(
        api.EscalateIncidentRequest(request_id=rid(), name=name, reason="crowd growing"),
        metadata=md("kodim"),
    )
    s.ResolveIncident(
        api.ResolveIncidentRequest(request_id=rid(), name=name, resolution="crowd dispersed"),
        metadata=md("kodim"),
    )
    s.RequestClosure(api.RequestClosureRequest(request_id=rid(), name=name), metadata=md("kodim"))
    s.ApproveClosure(
        api.ApproveClosureRequest(request_id=rid(), name=name), metadata=md("desk_pilkada")
    )
    s.ReopenIncident(
        api.ReopenIncidentRequest(request_id=rid(), name=name, reason="gathering resumed"),
        metadata=md("desk_pilkada"),
    )
    final = get(ledger, name)
    assert final.status == pb.INCIDENT_STATUS_REOPENED
    assert final.lead_agency == "kodim"
    assert list(final.supporting_agencies) == ["satpolpp"]
    assert final.escalation_level == 1
    assert [d.summary for d in final.decisions] == ["Large gatherings restricted"]
    assert list(final.decisions[0].deciding_agencies) == ["desk_pilkada", "polres", "kodim"]

    events = events_of(ledger, name)
    assert [e.type for e in events] == [
        "Reported",
        "Verified",
        "LeadAssigned",
        "SupportingAgencyAdded",
        "DecisionRecorded",
        "ActionLogged",
        "HandoverProposed",
        "HandoverAccepted",
        "Escalated",
        "Resolved",
        "ClosureRequested",
        "ClosureApproved",
        "Reopened",
    ]
    assert [e.version for e in events] == list(range(1, 14))
    assert events[0].previous_hash == "0" * 64
    for before, after in itertools.pairwise(events):
        assert after.previous_hash == before.hash
        assert after.position > before.position
    assert events[0].actor.agency == "kesbangpol"
    assert events[0].actor.officer == "dev-kesbangpol"
    assert events[0].correlation_id == "op-gathering"
    assert events[7].actor.agency == "kodim"
    assert json.loads(events[7].payload_json) == {"from_agency": "polres", "to_agency": "kodim"}
    assert all(e.record_time.seconds > 0 and e.request_id for e in events)


def test_retried_command_returns_the_original_result_and_records_nothing(ledger: Client) -> None:
    request = api.ReportIncidentRequest(
        request_id="kesbangpol-2026-0001",
        title="Hoax: ballots tampered in Ipuh",
        category="hoax",
        location=pb.Location(kecamatan="ipuh", desa="Pasar Ipuh"),
    )
    first = ledger.stub.ReportIncident(request, metadata=ledger.md("kesbangpol"))
    again = ledger.stub.ReportIncident(request, metadata=ledger.md("kesbangpol"))
    assert again == first
    listed = ledger.stub.ListIncidents(
        api.ListIncidentsRequest(), metadata=ledger.md("inspektorat")
    )
    assert [i.name for i in listed.incidents] == [first.result.incident]

    verify = api.VerifyIncidentRequest(
        request_id="v-1", name=first.result.incident, expected_version=1
    )
    verified = ledger.stub.VerifyIncident(verify, metadata=ledger.md("desk_pilkada"))
    # The retry would now be an illegal transition and a stale version; it is the original.
    assert ledger.stub.VerifyIncident(verify, metadata=ledger.md("desk_pilkada")) == verified
    assert len(events_of(ledger, first.result.incident)) == 2

    changed = api.ReportIncidentRequest()
    changed.CopyFrom(request)
    changed.title = "Something else"
    fails(
        lambda: ledger.stub.ReportIncident(changed, metadata=ledger.md("kesbangpol")),
        grpc.StatusCode.ALREADY_EXISTS,
        "REQUEST_ID_REUSED",
    )
    # The same request id from another agency is another request.
    other = ledger.stub.ReportIncident(request, metadata=ledger.md("bawaslu"))
    assert other.result.incident != first.result.incident


def test_stale_expected_version_is_aborted_with_the_current_version(ledger: Client) -> None:
    name = ledger.report().incident
    error = fails(
        lambda: ledger.stub.VerifyIncident(
            api.VerifyIncidentRequest(request_id=rid(), name=name, expected_version=5),
            metadata=ledger.md("desk_pilkada"),
        ),
        grpc.StatusCode.ABORTED,
        "VERSION_CONFLICT",
    )
    info = error_info(error)  # type: ignore[arg-type]
    assert info is not None
    assert info.metadata["current_version"] == "1"
    assert len(events_of(ledger, name)) == 1


def test_illegal_transition_names_the_state_and_command(ledger: Client) -> None:
    name = ledger.report().incident
    error = fails(
        lambda: ledger.stub.ResolveIncident(
            api.ResolveIncidentRequest(request_id=rid(), name=name, resolution="done"),
            metadata=ledger.md("desk_pilkada"),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ILLEGAL_TRANSITION",
    )
    assert "ResolveIncident" in str(error.details())
    assert "REPORTED" in str(error.details())


def test_a_coordinator_command_is_refused_to_others_without_naming_the_status(
    ledger: Client,
) -> None:
    name = ledger.report().incident
    ledger.stub.RejectIncident(
        api.RejectIncidentRequest(
            request_id=rid(), name=name, rejection_reason=pb.REJECTION_REASON_HOAX, comment="x"
        ),
        metadata=ledger.md("desk_pilkada"),
    )
    error = fails(
        lambda: ledger.stub.VerifyIncident(
            api.VerifyIncidentRequest(request_id=rid(), name=name, comment="x"),
            metadata=ledger.md("polres"),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "COORDINATOR_ONLY",
    )
    assert "REJECTED" not in str(error.details())
    info = error_info(error)  # type: ignore[arg-type]
    assert info is not None
    assert "status" not in info.metadata


def test_permissions_follow_roles_and_involvement(ledger: Client) -> None:
    name = ledger.report("bawaslu").incident
    s, md = ledger.stub, ledger.md
    fails(
        lambda: s.VerifyIncident(
            api.VerifyIncidentRequest(request_id=rid(), name=name), metadata=md("polres")
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "COORDINATOR_ONLY",
    )
    fails(
        lambda: s.ReportIncident(
            api.ReportIncidentRequest(
                request_id=rid(), title="x", category="hoax", location=pb.Location(kecamatan="ipuh")
            ),
            metadata=md("inspektorat"),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "READ_ONLY_ROLE",
    )
    s.VerifyIncident(
        api.VerifyIncidentRequest(request_id=rid(), name=name), metadata=md("desk_pilkada")
    )
    s.AssignLeadAgency(
        api.AssignLeadAgencyRequest(request_id=rid(), name=name, agency="kpu"),
        metadata=md("desk_pilkada"),
    )
    fails(
        lambda: s.LogAction(
            api.LogActionRequest(request_id=rid(), name=name, action="x"), metadata=md("dinkes")
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "NOT_INVOLVED",
    )
    # Auditors read everything.
    assert get(ledger, name).lead_agency == "kpu"


def test_credentials_are_required_and_checked(ledger: Client) -> None:
    request = api.GetIncidentRequest(name=ledger.report().incident)
    fails(
        lambda: ledger.stub.GetIncident(request),
        grpc.StatusCode.UNAUTHENTICATED,
        "CREDENTIALS_MISSING",
    )
    fails(
        lambda: ledger.stub.GetIncident(request, metadata=(("authorization", "Bearer nope"),)),
        grpc.StatusCode.UNAUTHENTICATED,
        "CREDENTIALS_INVALID",
    )
    fails(
        lambda: ledger.stub.GetIncident(request, metadata=(("authorization", "Basic x"),)),
        grpc.StatusCode.UNAUTHENTICATED,
        "CREDENTIALS_MALFORMED",
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"category": "alien_landing"}, "category"),
        ({"severity": "apocalyptic"}, "severity"),
        ({"location": pb.Location(kecamatan="atlantis")}, "location.kecamatan"),
        ({"location": pb.Location(kecamatan="ipuh", desa="Bandar Ratu")}, "location.desa"),
        ({"location": pb.Location(kecamatan="ipuh", latitude=123.0)}, "location.latitude"),
        ({"title": ""}, "title"),
        ({"title": "x" * 201}, "title"),
        ({"request_id": ""}, "request_id"),
        ({"request_id": "r" * 129}, "request_id"),
    ],
)
def test_bad_report_is_invalid_argument_naming_the_field(
    ledger: Client, change: dict[str, object], field: str
) -> None:
    fields: dict[str, object] = {
        "request_id": rid(),
        "title": "Clash",
        "category": "supporter_clash",
        "location": pb.Location(kecamatan="lubuk_pinang"),
    }
    fields.update(change)
    error = fails(
        lambda: ledger.stub.ReportIncident(
            api.ReportIncidentRequest(**fields),  # type: ignore[arg-type]
            metadata=ledger.md("polres"),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    info = error_info(error)  # type: ignore[arg-type]
    assert info is not None
    assert info.metadata["field"] == field
    listed = ledger.stub.ListIncidents(
        api.ListIncidentsRequest(), metadata=ledger.md("inspektorat")
    )
    assert list(listed.incidents) == [], "nothing is recorded for a rejected command"


def test_malformed_names_unknown_enums_and_missing_incidents(ledger: Client) -> None:
    s, md = ledger.stub, ledger.md
    for name in ("", "incident/1", "incidents/not-a-uuid"):
        fails(
            lambda n=name: s.GetIncident(api.GetIncidentRequest(name=n), metadata=md("polres")),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    missing = "incidents/00000000-0000-4000-8000-000000000000"
    fails(
        lambda: s.GetIncident(api.GetIncidentRequest(name=missing), metadata=md("polres")),
        grpc.StatusCode.NOT_FOUND,
        "INCIDENT_NOT_FOUND",
    )
    name = ledger.report().incident
    fails(
        lambda: s.RejectIncident(
            api.RejectIncidentRequest(
                request_id=rid(),
                name=name,
                rejection_reason=42,  # type: ignore[arg-type]
                comment="x",
            ),
            metadata=md("desk_pilkada"),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    fails(
        lambda: s.AssignLeadAgency(
            api.AssignLeadAgencyRequest(request_id=rid(), name=name, agency="cia"),
            metadata=md("desk_pilkada"),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert len(events_of(ledger, name)) == 1


def test_incident_not_found_names_the_field_in_every_query(ledger: Client) -> None:
    """INCIDENT_NOT_FOUND carries `field` (docs/api.md) whichever query names the incident:
    a client points at the form field from it, as it does for a command's."""
    s, md = ledger.stub, ledger.md
    missing = "incidents/00000000-0000-4000-8000-000000000000"
    calls = {
        "name": lambda: s.GetIncident(api.GetIncidentRequest(name=missing), metadata=md("polres")),
        "parent": lambda: s.ListIncidentEvents(
            api.ListIncidentEventsRequest(parent=missing), metadata=md("polres")
        ),
    }
    for field, call in calls.items():
        info = error_info(fails(call, grpc.StatusCode.NOT_FOUND, "INCIDENT_NOT_FOUND"))  # type: ignore[arg-type]
        assert info is not None
        assert dict(info.metadata) == {"incident": missing, "field": field}
    # Asked as it stood before it was reported: it did not exist then.
    result = ledger.report()
    before = ts(datetime(2001, 1, 1, tzinfo=UTC))
    for request, field in (
        (api.GetIncidentRequest(name=result.incident, as_of_time=before), "name"),
        (api.GetIncidentRequest(reference=result.reference, as_of_time=before), "reference"),
    ):
        error = fails(
            lambda r=request: s.GetIncident(r, metadata=md("polres")),
            grpc.StatusCode.NOT_FOUND,
            "INCIDENT_NOT_FOUND",
        )
        info = error_info(error)  # type: ignore[arg-type]
        assert info is not None
        assert dict(info.metadata) == {"incident": result.incident, "field": field}


def test_a_page_token_sent_with_another_order_says_what_must_stay_the_same(
    ledger: Client,
) -> None:
    """The refusal of a token used with another query names every part of the query it
    is bound to: a client that changed only order_by was told its filter changed."""
    for _ in range(3):
        ledger.report()
    first = ledger.stub.ListIncidents(
        api.ListIncidentsRequest(page_size=1), metadata=ledger.md("polres")
    )
    assert first.next_page_token
    error = fails(
        lambda: ledger.stub.ListIncidents(
            api.ListIncidentsRequest(
                page_size=1, page_token=first.next_page_token, order_by="create_time desc"
            ),
            metadata=ledger.md("polres"),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
    )
    assert "order_by" in (error.details() or ""), error.details()
    # Only page_size may change between pages.
    second = ledger.stub.ListIncidents(
        api.ListIncidentsRequest(page_size=2, page_token=first.next_page_token),
        metadata=ledger.md("polres"),
    )
    assert len(second.incidents) == 2


def test_lists_paginate_with_opaque_tamper_proof_tokens(ledger: Client) -> None:
    names = [ledger.report(location=pb.Location(kecamatan="ipuh")).incident for _ in range(5)]
    ledger.report(location=pb.Location(kecamatan="penarik"))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = ledger.stub.ListIncidents(
            api.ListIncidentsRequest(page_size=2, page_token=token, filter='kecamatan = "ipuh"'),
            metadata=ledger.md("inspektorat"),
        )
        seen += [i.name for i in page.incidents]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == names
    assert pages == 3
    first = ledger.stub.ListIncidents(
        api.ListIncidentsRequest(page_size=2, filter='kecamatan = "ipuh"'),
        metadata=ledger.md("inspektorat"),
    )
    tampered = (
        first.next_page_token[:-2]
        + ("A" if first.next_page_token[-2] != "A" else "B")
        + first.next_page_token[-1]
    )
    for bad in (tampered, "garbage!", first.next_page_token):
        filt = 'kecamatan = "penarik"' if bad == first.next_page_token else 'kecamatan = "ipuh"'
        fails(
            lambda b=bad, f=filt: ledger.stub.ListIncidents(
                api.ListIncidentsRequest(page_size=2, page_token=b, filter=f),
                metadata=ledger.md("inspektorat"),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    fails(
        lambda: ledger.stub.ListIncidents(
            api.ListIncidentsRequest(page_size=-1), metadata=ledger.md("inspektorat")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    fails(
        lambda: ledger.stub.ListIncidents(
            api.ListIncidentsRequest(filter="colour = red"), metadata=ledger.md("inspektorat")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_list_filters_by_status_and_lead_agency(ledger: Client) -> None:
    a = ledger.report().incident
    b = ledger.report().incident
    ledger.stub.VerifyIncident(
        api.VerifyIncidentRequest(request_id=rid(), name=b), metadata=ledger.md("desk_pilkada")
    )
    ledger.stub.AssignLeadAgency(
        api.AssignLeadAgencyRequest(request_id=rid(), name=b, agency="bpbd"),
        metadata=ledger.md("desk_pilkada"),
    )

    def names(filter_text: str) -> list[str]:
        return [
            i.name
            for i in ledger.stub.ListIncidents(
                api.ListIncidentsRequest(filter=filter_text), metadata=ledger.md("polres")
            ).incidents
        ]

    assert names('status = "REPORTED"') == [a]
    assert names('status = "INCIDENT_STATUS_ASSIGNED" AND lead_agency = "bpbd"') == [b]
    assert names('status != "REPORTED"') == [b]
    assert names('lead_agency = ""') == [a], "no lead yet: what the desk has to triage"
    assert names('lead_agency != ""') == [b]
    assert names('category = "crowd_gathering" AND severity = "medium"') == [a, b]


def test_incident_events_paginate(ledger: Client) -> None:
    name = ledger.report("polres").incident
    for _ in range(4):
        ledger.stub.EscalateIncident(
            api.EscalateIncidentRequest(request_id=rid(), name=name, reason="growing"),
            metadata=ledger.md("polres"),
        )
    versions: list[int] = []
    token = ""
    while True:
        page = ledger.stub.ListIncidentEvents(
            api.ListIncidentEventsRequest(parent=name, page_size=2, page_token=token),
            metadata=ledger.md("polres"),
        )
        versions += [e.version for e in page.events]
        token = page.next_page_token
        if not token:
            break
    assert versions == [1, 2, 3, 4, 5]


def test_correction_names_the_event_field_and_values(ledger: Client) -> None:
    result = ledger.report("kesbangpol", severity="low")
    name = result.incident
    ledger.stub.RecordCorrection(
        api.RecordCorrectionRequest(
            request_id=rid(),
            name=name,
            corrected_event_id=result.event_id,
            field="severity",
            old_value="low",
            new_value="high",
            reason="typo: the crowd is over 2,000 people",
        ),
        metadata=ledger.md("kesbangpol"),
    )
    assert get(ledger, name).severity == "high"
    correction = events_of(ledger, name)[-1]
    assert correction.type == "Corrected"
    assert json.loads(correction.payload_json) == {
        "corrected_event_id": result.event_id,
        "field": "severity",
        "old_value": "low",
        "new_value": "high",
    }
    fails(
        lambda: ledger.stub.RecordCorrection(
            api.RecordCorrectionRequest(
                request_id=rid(),
                name=name,
                corrected_event_id=result.event_id,
                field="severity",
                old_value="low",
                new_value="medium",
                reason="again",
            ),
            metadata=ledger.md("kesbangpol"),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "OLD_VALUE_MISMATCH",
    )


def test_merge_records_on_both_incidents(ledger: Client) -> None:
    original = ledger.report().incident
    duplicate = ledger.report("satpolpp").incident
    ledger.stub.MergeIncident(
        api.MergeIncidentRequest(
            request_id=rid(), name=duplicate, target=original, comment="same gathering"
        ),
        metadata=ledger.md("desk_pilkada"),
    )
    assert get(ledger, duplicate).status == pb.INCIDENT_STATUS_MERGED
    assert get(ledger, duplicate).merged_into == original
    assert list(get(ledger, original).merged_incidents) == [duplicate]


def test_oversized_messages_are_refused(ledger: Client) -> None:
    request = api.ReportIncidentRequest(
        request_id=rid(),
        title="big",
        category="hoax",
        description="x" * (2 * 1024 * 1024),
        location=pb.Location(kecamatan="ipuh"),
    )
    with pytest.raises(grpc.RpcError) as caught:
        ledger.stub.ReportIncident(request, metadata=ledger.md("polres"))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_health_and_reflection(ledger: Client) -> None:
    health = health_pb2_grpc.HealthStub(ledger.channel)
    for service in ("", "incidentledger.v1.LedgerService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(ledger.channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert "incidentledger.v1.LedgerService" in names

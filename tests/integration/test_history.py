"""Auditors' view of the past: incidents as of a time or position, and the replay stream."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest

from incidentledger.v1 import audit_service_pb2 as audit
from incidentledger.v1 import audit_service_pb2_grpc as audit_grpc
from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from services.common.grpc_errors import error_info
from tests.support import Client, rid, ts


def test_an_incident_as_of_a_position_or_a_time(ledger: Client) -> None:
    s, md = ledger.stub, ledger.md
    reported = ledger.report("kesbangpol")
    name = reported.incident
    verified = s.VerifyIncident(
        api.VerifyIncidentRequest(request_id=rid(), name=name), metadata=md("desk_pilkada")
    ).result
    between = datetime.now(UTC)
    s.AssignLeadAgency(
        api.AssignLeadAgencyRequest(request_id=rid(), name=name, agency="polres"),
        metadata=md("desk_pilkada"),
    )

    def as_of(**fields: object) -> pb.Incident:
        return s.GetIncident(
            api.GetIncidentRequest(name=name, **fields),  # type: ignore[arg-type]
            metadata=md("inspektorat"),
        ).incident

    assert as_of(as_of_position=reported.position).status == pb.INCIDENT_STATUS_REPORTED
    assert as_of(as_of_position=verified.position).status == pb.INCIDENT_STATUS_VERIFIED
    then = as_of(as_of_time=ts(between))
    assert then.status == pb.INCIDENT_STATUS_VERIFIED
    assert then.lead_agency == ""
    assert as_of().status == pb.INCIDENT_STATUS_ASSIGNED
    with pytest.raises(grpc.RpcError) as caught:
        as_of(as_of_time=ts(datetime(2020, 1, 1, tzinfo=UTC)))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # A position not recorded yet has no state to show: today's answer would be another
    # tomorrow (before, the current state).
    latest = ledger.report("kesbangpol").position
    with pytest.raises(grpc.RpcError) as caught:
        as_of(as_of_position=latest + 100)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(caught.value)  # type: ignore[arg-type]
    assert info is not None and info.reason == "POSITION_NOT_RECORDED"
    assert info.metadata["as_of_position"] == str(latest + 100)
    assert int(info.metadata["ledger_position"]) >= latest
    assert as_of(as_of_position=latest).status == pb.INCIDENT_STATUS_ASSIGNED


def test_the_replay_streams_the_history_in_order_with_filters(ledger: Client) -> None:
    s, md = ledger.stub, ledger.md
    ipuh = ledger.report("bawaslu", category="hoax", location=pb.Location(kecamatan="ipuh"))
    kota = ledger.report("kesbangpol")
    s.VerifyIncident(
        api.VerifyIncidentRequest(request_id=rid(), name=kota.incident), metadata=md("desk_pilkada")
    )
    s.RejectIncident(
        api.RejectIncidentRequest(
            request_id=rid(),
            name=ipuh.incident,
            comment="checked: false",
            rejection_reason=pb.REJECTION_REASON_HOAX,
        ),
        metadata=md("desk_pilkada"),
    )
    stub = audit_grpc.AuditServiceStub(ledger.channel)

    def stream(**fields: object) -> list[pb.IncidentEvent]:
        request = audit.StreamEventsRequest(**fields)  # type: ignore[arg-type]
        return [r.event for r in stub.StreamEvents(request, metadata=md("inspektorat"))]

    everything = stream()
    assert [(e.incident, e.type) for e in everything] == [
        (ipuh.incident, "Reported"),
        (kota.incident, "Reported"),
        (kota.incident, "Verified"),
        (ipuh.incident, "Rejected"),
    ]
    positions = [e.position for e in everything]
    assert positions == sorted(positions)
    assert [e.type for e in stream(incident=ipuh.incident)] == ["Reported", "Rejected"]
    assert [e.type for e in stream(agency="desk_pilkada")] == ["Verified", "Rejected"]
    assert [e.incident for e in stream(kecamatan="ipuh")] == [ipuh.incident] * 2
    assert stream(after_position=positions[1]) == everything[2:]
    assert stream(until_position=positions[1]) == everything[:2]
    start = everything[2].record_time.ToDatetime(tzinfo=UTC)
    assert stream(start_time=ts(start)) == everything[2:]
    # One incident's replay reads its own events: the same as the whole one's, filtered.
    for fields in (
        {"after_position": positions[0]},
        {"until_position": positions[2]},
        {"after_position": positions[0], "until_position": positions[2]},
        {"start_time": ts(start)},
        {"agency": "desk_pilkada"},
    ):
        assert stream(incident=ipuh.incident, **fields) == [
            e for e in stream(**fields) if e.incident == ipuh.incident
        ], fields
    for bad in ({"agency": "fbi"}, {"kecamatan": "atlantis"}, {"incident": "incidents/x"}):
        with pytest.raises(grpc.RpcError) as caught:
            stream(**bad)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

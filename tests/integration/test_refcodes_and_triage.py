"""Reference codes and bulk triage through the real gRPC server, on the in-memory store,
SQLite and PostgreSQL: an incident is found by its code (a mistyped code is refused as
mistyped), lists filter on codes, a triage call gets one outcome per item, and a triaged
incident's history is the history of one sent its commands singly."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import code_pb2, error_details_pb2, status_pb2

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import situation_service_pb2 as sit
from incidentledger.v1 import situation_service_pb2_grpc as sit_grpc
from services.common.grpc_errors import error_info
from services.ledger.domain.refcodes import ALPHABET, check_character
from tests.support import Client, rid

COORDINATOR = "desk_pilkada"
RECORDED = api.TRIAGE_OUTCOME_RECORDED
DUPLICATE = api.TRIAGE_OUTCOME_DUPLICATE
INVALID = api.TRIAGE_OUTCOME_INVALID
REFUSED = api.TRIAGE_OUTCOME_REFUSED


def get(ledger: Client, **fields: Any) -> pb.Incident:
    return ledger.stub.GetIncident(
        api.GetIncidentRequest(**fields), metadata=ledger.md("bawaslu")
    ).incident


def events_of(ledger: Client, name: str) -> list[pb.IncidentEvent]:
    return list(
        ledger.stub.ListIncidentEvents(
            api.ListIncidentEventsRequest(parent=name, page_size=1000),
            metadata=ledger.md("bawaslu"),
        ).events
    )


def reason_of(status: status_pb2.Status) -> str:
    for packed in status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            return str(info.reason)
    raise AssertionError(f"no ErrorInfo in {status}")


def reason(error: grpc.RpcError) -> str:
    info = error_info(error)  # type: ignore[arg-type]
    assert info is not None, error
    return str(info.reason)


def triage(
    ledger: Client, items: list[api.TriageItem], request_id: str, agency: str = COORDINATOR
) -> list[api.TriageResult]:
    response = ledger.stub.TriageIncidents(
        api.TriageIncidentsRequest(request_id=request_id, items=items),
        metadata=ledger.md(agency),
    )
    assert len(response.results) == len(items)
    return list(response.results)


def verify(name: str, version: int = 0, comment: str = "") -> api.TriageItem:
    return api.TriageItem(
        name=name, expected_version=version, verify=api.TriageVerify(comment=comment)
    )


def assign(name: str, agency: str, version: int = 0, comment: str = "") -> api.TriageItem:
    return api.TriageItem(
        name=name,
        expected_version=version,
        assign_lead=api.TriageAssignLead(agency=agency, comment=comment),
    )


def test_an_incident_is_found_by_its_reference(ledger: Client) -> None:
    result = ledger.report(title="Spanduk calon dirusak")
    incident = get(ledger, name=result.incident)
    code = incident.reference
    assert code.startswith("MKM-") and len(code) == len("MKM-XXXX-XX")
    assert get(ledger, reference=code) == incident
    # Read as people say it: lower case, spaces, O for 0 and L for 1.
    spoken = code.lower().replace("-", " ").replace("0", "o").replace("1", "l")
    assert get(ledger, reference=spoken).name == incident.name
    # Every view shows it: the list too.
    listed = ledger.stub.ListIncidents(
        api.ListIncidentsRequest(min_position=result.position, page_size=500),
        metadata=ledger.md("bawaslu"),
    ).incidents
    assert [i.reference for i in listed if i.name == incident.name] == [code]
    # And the board's: the vulnerability map names each incident behind a score by its code.
    situation = sit_grpc.SituationServiceStub(ledger.channel)
    scores = situation.GetVulnerabilityMap(
        sit.GetVulnerabilityMapRequest(min_position=result.position),
        metadata=ledger.md("bawaslu"),
    ).kecamatan
    reasons = [r for k in scores for r in k.reasons if r.incident == incident.name]
    assert [r.reference for r in reasons] == [code]


def test_a_report_answers_with_its_code_and_so_does_its_retry(ledger: Client) -> None:
    request = api.ReportIncidentRequest(
        request_id=rid(),
        title="Politik uang di TPS 3",
        category="money_politics",
        location=pb.Location(kecamatan="ipuh"),
    )
    first = ledger.stub.ReportIncident(request, metadata=ledger.md("kpu")).result
    again = ledger.stub.ReportIncident(request, metadata=ledger.md("kpu")).result
    assert first.reference == get(ledger, name=first.incident).reference != ""
    assert again == first
    device = api.DeviceReport(
        device_report_id="7d444840-9dc0-11d1-b245-5ffdce74fad2",
        device_id="hp-panwascam-ipuh-01",
        device_record_time=request_time(),
        title="Kotak suara rusak",
        category="logistics_failure",
        location=pb.Location(kecamatan="ipuh"),
    )
    for expected in (api.INGEST_OUTCOME_CREATED, api.INGEST_OUTCOME_DUPLICATE):
        (ingested,) = ledger.stub.IngestReports(
            api.IngestReportsRequest(reports=[device]), metadata=ledger.md("bawaslu")
        ).results
        assert ingested.outcome == expected
        code = get(ledger, name=ingested.result.incident).reference
        assert ingested.result.reference == code != ""
    verified = ledger.stub.VerifyIncident(
        api.VerifyIncidentRequest(request_id=rid(), name=first.incident),
        metadata=ledger.md(COORDINATOR),
    ).result
    assert verified.reference == "", "only a report answers with a code"


def request_time() -> Any:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def test_a_mistyped_reference_is_refused_as_mistyped(ledger: Client) -> None:
    code = get(ledger, name=ledger.report().incident).reference
    last = code[-1]
    wrong = code[:-1] + ALPHABET[(ALPHABET.index(last) + 1) % len(ALPHABET)]
    with pytest.raises(grpc.RpcError) as caught:
        get(ledger, reference=wrong)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "mistyped" in (caught.value.details() or "")
    assert reason(caught.value) == "REFERENCE_MISTYPED"


def test_a_reference_no_incident_has_is_not_found(ledger: Client) -> None:
    code = get(ledger, name=ledger.report().incident).reference
    payload = code[4:8] + code[9]
    other = "0000" if payload[:4] != "0000" else "1111"
    unknown = f"MKM-{other}-{payload[4]}{check_character(other + payload[4])}"
    with pytest.raises(grpc.RpcError) as caught:
        get(ledger, reference=unknown)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert reason(caught.value) == "INCIDENT_NOT_FOUND"
    with pytest.raises(grpc.RpcError) as both:
        get(ledger, reference=code, name="incidents/x")
    assert both.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_the_list_filters_on_a_reference(ledger: Client) -> None:
    first = ledger.report(title="Pertama")
    second = ledger.report(title="Kedua")
    code = get(ledger, name=second.incident).reference

    def names(text: str) -> list[str]:
        response = ledger.stub.ListIncidents(
            api.ListIncidentsRequest(filter=text, min_position=second.position, page_size=500),
            metadata=ledger.md("bawaslu"),
        )
        return [i.name for i in response.incidents]

    assert names(f'reference = "{code}"') == [second.incident]
    assert names(f'reference = "{code.lower()}" AND kecamatan = "kota_mukomuko"') == [
        second.incident
    ]
    assert second.incident not in names(f'reference != "{code}"')
    assert first.incident in names(f'reference != "{code}"')
    with pytest.raises(grpc.RpcError) as caught:
        names(f'reference = "{code[:-1]}{"0" if code[-1] != "0" else "1"}"')
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert reason(caught.value) == "REFERENCE_MISTYPED"


def test_a_merged_incident_keeps_its_reference_and_points_to_the_survivor(
    ledger: Client,
) -> None:
    duplicate, survivor = ledger.report(title="Dobel"), ledger.report(title="Asli")
    ledger.stub.MergeIncident(
        api.MergeIncidentRequest(
            request_id=rid(), name=duplicate.incident, target=survivor.incident, comment="dup"
        ),
        metadata=ledger.md(COORDINATOR),
    )
    merged, kept = get(ledger, name=duplicate.incident), get(ledger, name=survivor.incident)
    assert merged.status == pb.INCIDENT_STATUS_MERGED
    assert get(ledger, reference=merged.reference).name == duplicate.incident
    assert merged.merged_into == survivor.incident
    assert merged.merged_into_reference == kept.reference != merged.reference


def test_triage_answers_each_item_with_its_own_outcome(ledger: Client) -> None:
    a, b, c, d = (ledger.report(title=f"Laporan {n}").incident for n in range(4))
    missing = "incidents/00000000-0000-4000-8000-000000000000"
    items = [
        verify(a, 1, "dicek Panwascam"),  # ok
        api.TriageItem(
            name=b,
            reject=api.TriageReject(
                rejection_reason=pb.REJECTION_REASON_HOAX, comment="foto editan"
            ),
        ),  # ok
        verify(c, 4),  # a stale expected version
        verify(missing),  # no such incident
        assign(d, "polres"),  # not permitted: REPORTED, not verified
        assign(a, "polres", 2, "Polres memimpin"),  # ok, after the verify above
        api.TriageItem(name="incidents/not-a-uuid", verify=api.TriageVerify()),
        api.TriageItem(name=c),  # no action
        api.TriageItem(name=c, expected_version=-1, verify=api.TriageVerify()),
    ]
    results = triage(ledger, items, "pagi-1")
    assert [r.outcome for r in results] == [
        RECORDED, RECORDED, REFUSED, REFUSED, REFUSED, RECORDED, INVALID, INVALID, INVALID,
    ]  # fmt: skip
    codes = [(r.error.code, reason_of(r.error)) for r in results if r.outcome == REFUSED]
    assert codes == [
        (code_pb2.ABORTED, "VERSION_CONFLICT"),
        (code_pb2.NOT_FOUND, "INCIDENT_NOT_FOUND"),
        (code_pb2.FAILED_PRECONDITION, "ILLEGAL_TRANSITION"),
    ]
    invalid = [r.error for r in results if r.outcome == INVALID]
    assert all(e.code == code_pb2.INVALID_ARGUMENT for e in invalid)
    assert results[5].result.version == 3
    assert get(ledger, name=a).lead_agency == "polres"
    assert get(ledger, name=b).status == pb.INCIDENT_STATUS_REJECTED
    assert get(ledger, name=c).version == get(ledger, name=d).version == 1
    # Sent again: what was recorded comes back DUPLICATE, with its original result.
    again = triage(ledger, items, "pagi-1")
    assert [r.outcome for r in again][:2] == [DUPLICATE, DUPLICATE]
    assert again[0].result == results[0].result
    assert get(ledger, name=a).version == 3


def test_only_the_coordinator_triages(ledger: Client) -> None:
    name = ledger.report().incident
    (result,) = triage(ledger, [verify(name)], rid(), agency="polres")
    assert result.outcome == REFUSED
    assert (result.error.code, reason_of(result.error)) == (
        code_pb2.PERMISSION_DENIED,
        "COORDINATOR_ONLY",
    )
    with pytest.raises(grpc.RpcError) as caught:
        triage(ledger, [verify(name)], rid(), agency="inspektorat")
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert get(ledger, name=name).version == 1


def _comparable(event: pb.IncidentEvent) -> dict[str, Any]:
    """What an event says, without what differs between any two events: ids, times,
    positions, hashes and the request's ids."""
    return {
        "type": event.type,
        "version": event.version,
        "schema_version": event.schema_version,
        "actor": (event.actor.agency, event.actor.officer),
        "reason": event.reason,
        "location": event.location,
        "payload": {k: v for k, v in json.loads(event.payload_json).items() if k != "reference"},
    }


def test_a_triaged_incident_has_the_history_of_one_sent_its_commands_singly(
    ledger: Client,
) -> None:
    bulk, single = ledger.report(title="Sama"), ledger.report(title="Sama")
    results = triage(
        ledger,
        [verify(bulk.incident, 1, "benar"), assign(bulk.incident, "kodim", 2, "Kodim")],
        "bulk-1",
    )
    assert [r.outcome for r in results] == [RECORDED, RECORDED]
    coordinator = ledger.md(COORDINATOR)
    ledger.stub.VerifyIncident(
        api.VerifyIncidentRequest(
            request_id=rid(), name=single.incident, expected_version=1, comment="benar"
        ),
        metadata=coordinator,
    )
    ledger.stub.AssignLeadAgency(
        api.AssignLeadAgencyRequest(
            request_id=rid(),
            name=single.incident,
            expected_version=2,
            agency="kodim",
            comment="Kodim",
        ),
        metadata=coordinator,
    )
    bulk_events, single_events = (
        events_of(ledger, bulk.incident),
        events_of(ledger, single.incident),
    )
    assert [e.type for e in bulk_events] == ["Reported", "Verified", "LeadAssigned"]
    assert [_comparable(e) for e in bulk_events] == [_comparable(e) for e in single_events]
    assert [e.request_id for e in bulk_events[1:]] == ["bulk-1/1", "bulk-1/2"]
    bulk_now, single_now = get(ledger, name=bulk.incident), get(ledger, name=single.incident)
    for field in ("status", "lead_agency", "version", "title"):
        assert getattr(bulk_now, field) == getattr(single_now, field)

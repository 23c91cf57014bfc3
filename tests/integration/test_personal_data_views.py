"""The people a report names as every view of the incident shows them, through the real gRPC
server: present, held, then erased, never their data; and the access log page by page
(docs/personal-data.md)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.json_format import MessageToJson

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import personal_data_pb2 as pd
from incidentledger_client import LedgerClient, SubjectState
from tests.integration.test_personal_data import (
    NAME,
    NIK,
    PHONE,
    WITNESS_NIK,
    accesses,
    erase,
    hold,
    read,
)
from tests.support import Client

WITNESS_PHONE = "+6281298765432"
#: Every piece of personal data the report holds: no view of the incident may carry one.
CANARIES = (NAME, NIK, PHONE[1:], "Kenari", "Budi Saksi", "Ani Saksi", WITNESS_NIK, "98765432")


def report_naming_three(ledger: Client, *, anonymous: bool = False) -> api.CommandResult:
    return ledger.report(
        personal_data=pd.PersonalData(
            reporter=pd.Person(name=NAME, phone=PHONE, nik=NIK, address="Jl. Kenari 7"),
            reporter_anonymous=anonymous,
            witnesses=[
                pd.Person(name="Budi Saksi", nik=WITNESS_NIK),
                pd.Person(name="Ani Saksi", phone=WITNESS_PHONE),
            ],
        )
    )


def views(ledger: Client, name: str, agency: str, position: int) -> list[pb.Incident]:
    """The incident as GetIncident and as ListIncidents (once it has caught up) show it."""
    got = ledger.stub.GetIncident(api.GetIncidentRequest(name=name), metadata=ledger.md(agency))
    listed = ledger.stub.ListIncidents(
        api.ListIncidentsRequest(
            filter=f'reference = "{got.incident.reference}"', min_position=position
        ),
        metadata=ledger.md(agency),
    ).incidents
    assert [i.name for i in listed] == [name]
    return [got.incident, listed[0]]


def assert_no_personal_data(incident: pb.Incident) -> None:
    text = MessageToJson(incident)
    data = incident.SerializeToString()
    for canary in CANARIES:
        assert canary not in text, canary
        assert canary.encode() not in data, canary


def people(incident: pb.Incident) -> list[tuple[int, bool, int]]:
    return [(s.role, s.anonymous, s.state) for s in incident.data_subjects]


def test_every_view_names_the_people_then_says_erased_and_never_their_data(
    ledger: Client,
) -> None:
    reported = report_naming_three(ledger, anonymous=True)
    name = reported.incident
    present = [
        (pb.DATA_SUBJECT_ROLE_REPORTER, True, pb.DATA_SUBJECT_STATE_PRESENT),
        (pb.DATA_SUBJECT_ROLE_WITNESS, False, pb.DATA_SUBJECT_STATE_PRESENT),
        (pb.DATA_SUBJECT_ROLE_WITNESS, False, pb.DATA_SUBJECT_STATE_PRESENT),
    ]
    # An agency that may read none of the data still sees that people are named.
    for incident in views(ledger, name, "kpu", reported.position):
        assert people(incident) == present
        assert not incident.legal_hold_agencies
        assert_no_personal_data(incident)
    # The subject ids are the ones the access log and the reads name.
    record = accesses(ledger, "desk_pilkada", name)
    (incident, _) = views(ledger, name, "kpu", reported.position)
    assert [s.subject_id for s in incident.data_subjects] == [s.subject_id for s in record.subjects]

    hold(ledger, "kejari", name)
    hold(ledger, "polres", name)
    held = ledger.stub.GetIncident(api.GetIncidentRequest(name=name), metadata=ledger.md("kpu"))
    assert list(held.incident.legal_hold_agencies) == ["kejari", "polres"]
    assert people(held.incident) == present
    hold(ledger, "kejari", name, lift=True)
    hold(ledger, "polres", name, lift=True)

    erased = erase(ledger, "desk_pilkada", name)
    for incident in views(ledger, name, "desk_pilkada", erased.result.position):
        assert [state for _, _, state in people(incident)] == [pb.DATA_SUBJECT_STATE_ERASED] * 3
        assert not incident.legal_hold_agencies
        assert_no_personal_data(incident)


def test_a_report_naming_nobody_shows_no_people(ledger: Client) -> None:
    reported = ledger.report()
    for incident in views(ledger, reported.incident, "kpu", reported.position):
        assert not incident.data_subjects
        assert not incident.legal_hold_agencies


def test_the_access_log_comes_page_by_page(ledger: Client) -> None:
    name = report_naming_three(ledger).incident
    reads = [read(ledger, "bawaslu", name, f"look number {n}").result.event_id for n in range(5)]
    pages: list[api.ListPersonalDataAccessesResponse] = []
    token = ""
    while True:
        page = ledger.stub.ListPersonalDataAccesses(
            api.ListPersonalDataAccessesRequest(name=name, page_size=2, page_token=token),
            metadata=ledger.md("inspektorat"),
        )
        pages.append(page)
        token = page.next_page_token
        if not token:
            break
        assert len(pages) < 10, "the pages never end"
    assert [len(p.accesses) for p in pages] == [2, 2, 1]
    assert [a.event_id for p in pages for a in p.accesses] == reads
    # The people and holds come with every page.
    assert all(len(p.subjects) == 3 for p in pages)
    # A token continues only the incident it was made for.
    other = report_naming_three(ledger).incident
    with pytest.raises(grpc.RpcError) as foreign:
        ledger.stub.ListPersonalDataAccesses(
            api.ListPersonalDataAccessesRequest(
                name=other, page_size=2, page_token=pages[0].next_page_token
            ),
            metadata=ledger.md("inspektorat"),
        )
    assert foreign.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as negative:
        ledger.stub.ListPersonalDataAccesses(
            api.ListPersonalDataAccessesRequest(name=name, page_size=-1),
            metadata=ledger.md("inspektorat"),
        )
    assert negative.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    # The client follows the pages.
    with LedgerClient(ledger.address, ledger.tokens["inspektorat"], tls=False) as client:
        record = client.personal_data_accesses(name, page_size=2)
        assert [a.event_id for a in record.accesses] == reads
        assert [a.purpose for a in record.accesses] == [f"look number {n}" for n in range(5)]
        assert len(record.subjects) == 3
        shown = client.get_incident(name)
        assert [(s.role, s.state) for s in shown.data_subjects] == [
            ("reporter", SubjectState.PRESENT),
            ("witness", SubjectState.PRESENT),
            ("witness", SubjectState.PRESENT),
        ]
    # Reads recorded after a page was served are found by its token, none repeated.
    first = ledger.stub.ListPersonalDataAccesses(
        api.ListPersonalDataAccessesRequest(name=name, page_size=4),
        metadata=ledger.md("inspektorat"),
    )
    later = read(ledger, "bawaslu", name, "one more look").result.event_id
    rest = ledger.stub.ListPersonalDataAccesses(
        api.ListPersonalDataAccessesRequest(
            name=name, page_size=4, page_token=first.next_page_token
        ),
        metadata=ledger.md("inspektorat"),
    )
    assert [a.event_id for a in rest.accesses] == [reads[4], later]
    assert not rest.next_page_token

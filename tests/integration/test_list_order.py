"""ListIncidents newest first (``order_by = "create_time desc"``), on every store: the order
holds across pages, with and without a filter, against the order computed here from the
reports' own results; an unknown order and a token of the other order are refused."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from tests.support import Client

NEWEST_FIRST = "create_time desc"
KECAMATAN = ("ipuh", "penarik", "kota_mukomuko")


def walk(ledger: Client, order_by: str, page_size: int, filter_: str = "") -> list[pb.Incident]:
    """Every page of the list in turn, following the page tokens."""
    request = api.ListIncidentsRequest(page_size=page_size, order_by=order_by, filter=filter_)
    listed: list[pb.Incident] = []
    pages = 0
    while True:
        page = ledger.stub.ListIncidents(request, metadata=ledger.md("polres"))
        assert len(page.incidents) <= page_size
        listed.extend(page.incidents)
        pages += 1
        assert pages < 100, "the page tokens do not end"
        if not page.next_page_token:
            return listed
        request.page_token = page.next_page_token


def field_violations(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(v.field for v in bad.field_violations)
    return fields


def test_newest_first_holds_across_pages(ledger: Client) -> None:
    # (position, name, kecamatan) of each report, from the command's own result.
    reported = []
    for n in range(23):
        kecamatan = KECAMATAN[n % 3]
        result = ledger.report(title=f"Report {n}", location=pb.Location(kecamatan=kecamatan))
        reported.append((result.position, result.incident, kecamatan))
    last = max(position for position, _, _ in reported)
    ledger.stub.ListIncidents(  # the board has caught up with the last report
        api.ListIncidentsRequest(min_position=last), metadata=ledger.md("polres")
    )
    newest = [name for _, name, _ in sorted(reported, reverse=True)]

    for size in (1, 4, 23, 500):
        listed = walk(ledger, NEWEST_FIRST, size)
        assert [i.name for i in listed] == newest
        times = [i.create_time.ToDatetime() for i in listed]
        assert times == sorted(times, reverse=True)
    assert [i.name for i in walk(ledger, "", 5)] == newest[::-1]
    assert [i.name for i in walk(ledger, " create_time  asc ", 5)] == newest[::-1]
    assert [i.name for i in walk(ledger, "create_time DESC", 5)] == newest

    ipuh = [name for _, name, kecamatan in sorted(reported, reverse=True) if kecamatan == "ipuh"]
    assert [i.name for i in walk(ledger, NEWEST_FIRST, 3, 'kecamatan = "ipuh"')] == ipuh
    not_ipuh = [n for n in newest if n not in ipuh]
    assert [i.name for i in walk(ledger, NEWEST_FIRST, 3, 'kecamatan != "ipuh"')] == not_ipuh


def test_a_report_between_pages_neither_repeats_nor_hides_one(ledger: Client) -> None:
    names = [ledger.report(title=f"Report {n}").incident for n in range(6)]
    request = api.ListIncidentsRequest(page_size=2, order_by=NEWEST_FIRST)
    first = ledger.stub.ListIncidents(request, metadata=ledger.md("polres"))
    assert [i.name for i in first.incidents] == names[:-3:-1]
    newer = ledger.report(title="Reported while the pages are read")
    request.page_token = first.next_page_token
    request.min_position = newer.position
    rest: list[str] = []
    while True:
        page = ledger.stub.ListIncidents(request, metadata=ledger.md("polres"))
        rest.extend(i.name for i in page.incidents)
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    # The walk continues below its cursor: the newer report is on a new walk's first page.
    assert rest == names[-3::-1]
    again = ledger.stub.ListIncidents(
        api.ListIncidentsRequest(page_size=2, order_by=NEWEST_FIRST), metadata=ledger.md("polres")
    )
    assert [i.name for i in again.incidents] == [newer.incident, names[-1]]


@pytest.mark.parametrize("order_by", ["reported_at desc", "create_time descending", "title"])
def test_an_unknown_order_is_refused(ledger: Client, order_by: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        ledger.stub.ListIncidents(
            api.ListIncidentsRequest(order_by=order_by), metadata=ledger.md("polres")
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["order_by"]


def test_a_page_token_continues_only_its_own_order(ledger: Client) -> None:
    for n in range(3):
        ledger.report(title=f"Report {n}")
    page = ledger.stub.ListIncidents(
        api.ListIncidentsRequest(page_size=1), metadata=ledger.md("polres")
    )
    with pytest.raises(grpc.RpcError) as caught:
        ledger.stub.ListIncidents(
            api.ListIncidentsRequest(
                page_size=1, order_by=NEWEST_FIRST, page_token=page.next_page_token
            ),
            metadata=ledger.md("polres"),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["page_token"]

"""IngestReports through the API on the in-memory store, SQLite and PostgreSQL: a field
device's batch gets exactly the documented outcomes, a re-sent batch records nothing twice,
and ingested reports reach the projections and the NATS stream like any other."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import notifier_service_pb2 as napi
from services.common.config import RelaySettings
from services.common.grpc_errors import error_info
from services.common.natsserver import NatsServer
from services.ledger.server import ERROR_DOMAIN
from tests.fanout_support import running_stack, wait_until
from tests.integration.test_fanout import stream_messages
from tests.support import Client, running_ledger, settings_for, store_environment, ts

CREATED = api.INGEST_OUTCOME_CREATED
DUPLICATE = api.INGEST_OUTCOME_DUPLICATE
CONFLICT = api.INGEST_OUTCOME_CONFLICT
INVALID = api.INGEST_OUTCOME_INVALID
DEVICE = "hp-babinsa-air-rami-2"


def device_report(title: str = "Massa menghadang kotak suara", **fields: Any) -> api.DeviceReport:
    values: dict[str, Any] = {
        "device_report_id": str(uuid.uuid4()),
        "device_id": DEVICE,
        "device_record_time": ts(datetime.now(UTC) - timedelta(hours=30)),
        "title": title,
        "category": "crowd_gathering",
        "location": pb.Location(kecamatan="air_rami", desa="Arga Jaya"),
    }
    values.update(fields)
    return api.DeviceReport(**values)


def ingest(
    ledger: Client, reports: list[api.DeviceReport], agency: str = "bawaslu", **fields: Any
) -> list[api.IngestResult]:
    response = ledger.stub.IngestReports(
        api.IngestReportsRequest(reports=reports, **fields), metadata=ledger.md(agency)
    )
    assert len(response.results) == len(reports)
    return list(response.results)


def recorded(ledger: Client) -> int:
    """How many events the store holds (PostgreSQL's positions skip those a failed
    transaction took, so the last position is no count)."""
    return len(ledger.server.ledger.recorder.select_notifications(1, 100_000))


def listed(ledger: Client, position: int, kecamatan: str = "air_rami") -> list[pb.Incident]:
    response = ledger.stub.ListIncidents(
        api.ListIncidentsRequest(
            filter=f'kecamatan = "{kecamatan}"', min_position=position, page_size=500
        ),
        metadata=ledger.md("bawaslu"),
    )
    return list(response.incidents)


def detail(status: status_pb2.Status, kind: Any) -> Any:
    for packed in status.details:
        if packed.Is(kind.DESCRIPTOR):
            found = kind()
            packed.Unpack(found)
            return found
    raise AssertionError(f"no {kind.DESCRIPTOR.name} in {status}")


def test_a_mixed_batch_gets_exactly_the_documented_outcomes(ledger: Client) -> None:
    earlier = [device_report("Recorded yesterday"), device_report("Also yesterday")]
    first = ingest(ledger, earlier)
    assert [r.outcome for r in first] == [CREATED, CREATED]
    before = recorded(ledger)
    new = device_report("Spanduk dirusak di TPS 2")
    batch = [
        new,
        earlier[0],  # sent again: DUPLICATE
        device_report("Other content", device_report_id=earlier[1].device_report_id),
        device_report(category="picnic"),  # an unknown category
        device_report("Nul\x00 in the title"),  # refused for itself, not the batch
        device_report(device_report_id="not-a-uuid"),
        device_report(location=None),
        device_report(device_record_time=None),
        new,  # twice in one batch
    ]
    results = ingest(ledger, batch)
    assert [r.outcome for r in results] == [
        CREATED,
        DUPLICATE,
        CONFLICT,
        *[INVALID] * 5,
        DUPLICATE,
    ]
    assert results[1].result == first[0].result, "the original result"
    assert results[8].result == results[0].result
    # CONFLICT: ALREADY_EXISTS, naming the device report's request id.
    conflict = results[2].error
    assert conflict.code == code_pb2.ALREADY_EXISTS
    info = detail(conflict, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("REQUEST_ID_REUSED", ERROR_DOMAIN)
    assert info.metadata["request_id"] == f"{DEVICE}/{earlier[1].device_report_id}"
    # INVALID: the status ReportIncident would fail with, with its field violation.
    fields = []
    for result in results[3:8]:
        assert result.error.code == code_pb2.INVALID_ARGUMENT and not result.HasField("result")
        assert detail(result.error, error_details_pb2.ErrorInfo).reason == "INVALID_FIELD"
        (violation,) = detail(result.error, error_details_pb2.BadRequest).field_violations
        fields.append(violation.field)
    assert fields == ["category", "title", "device_report_id", "location", "device_record_time"]
    # Nothing recorded for the refused ones: the new report, its request record and the
    # claim of its reference code only.
    assert recorded(ledger) == before + 3
    assert {i.title for i in listed(ledger, results[0].result.position)} == {
        "Recorded yesterday",
        "Also yesterday",
        "Spanduk dirusak di TPS 2",
    }


def test_the_same_report_through_report_incident_is_the_same_request(ledger: Client) -> None:
    report = device_report("Sent alone, then synced")
    alone = ledger.stub.ReportIncident(
        api.ReportIncidentRequest(
            request_id=f"{DEVICE}/{report.device_report_id}",
            title=report.title,
            category=report.category,
            location=report.location,
        ),
        metadata=ledger.md("bawaslu"),
    ).result
    (synced,) = ingest(ledger, [report])
    assert synced.outcome == DUPLICATE and synced.result == alone


def test_a_batch_sent_three_times_records_each_report_once(ledger: Client) -> None:
    batch = [device_report(f"Laporan {n}") for n in range(60)]
    first = ingest(ledger, batch, send_time=ts(datetime.now(UTC)))
    assert [r.outcome for r in first] == [CREATED] * 60
    stored = recorded(ledger)
    for _ in range(2):
        again = ingest(ledger, batch, send_time=ts(datetime.now(UTC)))
        assert [r.outcome for r in again] == [DUPLICATE] * 60
        assert [r.result for r in again] == [r.result for r in first]
    assert recorded(ledger) == stored
    incidents = listed(ledger, first[-1].result.position)
    assert sorted(i.name for i in incidents) == sorted(r.result.incident for r in first)
    # The re-sent batches never reached the store's insert: on PostgreSQL a refused insert
    # takes a position of the sequence, so the next event would come after a gap.
    last = ledger.server.ledger.recorder.max_notification_id() or 0
    assert ledger.report(agency="bawaslu").position == last + 1


def test_more_than_500_reports_is_invalid_argument_and_records_nothing(ledger: Client) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        ingest(ledger, [device_report(f"r{n}") for n in range(501)])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(refused.value)  # type: ignore[arg-type]
    assert info is not None and info.reason == "INVALID_FIELD"
    assert info.metadata["field"] == "reports"
    assert recorded(ledger) == 0
    with pytest.raises(grpc.RpcError) as auditor:
        ingest(ledger, [device_report()], agency="inspektorat")
    assert auditor.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert recorded(ledger) == 0


def test_a_call_over_the_byte_limit_is_resource_exhausted_and_records_nothing(
    store_env: dict[str, str], tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, store_env, ingest_max_reports=3, ingest_max_bytes=4096)
    with running_ledger(settings) as ledger:
        with pytest.raises(grpc.RpcError) as too_many:
            ingest(ledger, [device_report(f"r{n}") for n in range(4)])
        assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        request = api.IngestReportsRequest(reports=[device_report("x" * 150) for _ in range(3)])
        request.reports[0].description = "y" * 4000
        assert request.ByteSize() > 4096
        with pytest.raises(grpc.RpcError) as too_large:
            ledger.stub.IngestReports(request, metadata=ledger.md("bawaslu"))
        assert too_large.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info = error_info(too_large.value)  # type: ignore[arg-type]
        assert info is not None and info.reason == "INGEST_TOO_LARGE"
        assert info.metadata["limit"] == "4096"
        assert recorded(ledger) == 0
        del request.reports[0]
        results = ingest(ledger, list(request.reports))
        assert [r.outcome for r in results] == [CREATED] * 2


def test_ingested_reports_are_read_like_any_other_with_the_device_s_provenance(
    ledger: Client,
) -> None:
    occurred = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    report = device_report(
        "Pemilih diintimidasi di Lubuk Bento",
        location=pb.Location(kecamatan="malin_deman", desa="Lubuk Bento", tps="TPS 05"),
        occur_time=ts(occurred),
        severity="high",
    )
    sent = datetime.now(UTC) + timedelta(minutes=10)  # the device's clock runs ahead
    (result,) = ingest(ledger, [report], send_time=ts(sent))
    (incident,) = listed(ledger, result.result.position, kecamatan="malin_deman")
    assert incident.name == result.result.incident
    assert incident.status == pb.INCIDENT_STATUS_REPORTED and incident.severity == "high"
    assert incident.reporter.agency == "bawaslu"
    assert incident.occur_time.ToDatetime(tzinfo=UTC) == occurred
    (event,) = ledger.stub.ListIncidentEvents(
        api.ListIncidentEventsRequest(parent=incident.name), metadata=ledger.md("bawaslu")
    ).events
    assert event.request_id == f"{DEVICE}/{report.device_report_id}"
    payload = json.loads(event.payload_json)
    assert payload["device_id"] == DEVICE
    assert payload["device_report_id"] == report.device_report_id
    device_time = report.device_record_time.ToDatetime(tzinfo=UTC)
    assert datetime.fromisoformat(payload["device_record_time"]) == device_time
    # About ten minutes ahead, less the call's transit.
    assert 9 * 60_000 < payload["device_clock_skew_ms"] <= 10 * 60_000


@pytest.mark.nats
@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_ingested_reports_reach_the_stream_once_each(
    tmp_path: Path, nats_server: NatsServer, store: str
) -> None:
    relay = RelaySettings(nats_url=nats_server.url)
    with (
        store_environment(store, tmp_path) as store_env,
        running_ledger(settings_for(tmp_path, store_env, relay=relay)) as ledger,
    ):
        batch = [device_report(f"Laporan {n}") for n in range(40)]
        first = ingest(ledger, batch)
        single = ledger.report("bawaslu", title="Reported alone")
        ingest(ledger, batch)  # sent again: nothing new to publish
        last = ledger.report("bawaslu", title="After the re-sent batch")
        wait_until(
            lambda: last.position in {p for _, p in stream_messages(nats_server.url)},
            what="the last report on the stream",
        )
        positions = [p for _, p in stream_messages(nats_server.url)]
    expected = [r.result.position for r in first] + [single.position, last.position]
    assert positions == sorted(expected), "each report once, in log order, nothing else"


@pytest.mark.nats
@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_subscriber_is_notified_of_ingested_reports_like_any_other(
    tmp_path: Path, nats_server: NatsServer, store: str
) -> None:
    with (
        store_environment(store, tmp_path) as store_env,
        running_stack(tmp_path, store_env, nats_server.url) as stack,
    ):
        subscriber = stack.subscribe("bpbd", filter=napi.EventFilter(kecamatan=["air_rami"]))
        batch = [device_report(f"Laporan {n}") for n in range(25)]
        batch[3] = device_report(category="picnic")  # refused: never notified
        results = ingest(stack.ledger, batch)
        ingest(stack.ledger, batch)  # sent again: nothing new to notify
        last = stack.ledger.report(
            "bawaslu", location=pb.Location(kecamatan="air_rami"), title="After the batch"
        )
        subscriber.wait_for(25)
        wait_until(
            lambda: (
                last.position in {n.notification.event.position for n in subscriber.notifications}
            ),
            what="the report after the batch",
        )
        subscriber.close()
    streamed = [n.notification for n in subscriber.notifications]
    created = [r.result for r in results if r.outcome == CREATED]
    assert len(created) == 24
    assert [n.event.position for n in streamed] == [r.position for r in created] + [last.position]
    assert {n.event.type for n in streamed} == {"Reported"}
    assert [n.incident.name for n in streamed[:-1]] == [r.incident for r in created]
    assert all(n.event.actor.agency == "bawaslu" for n in streamed)

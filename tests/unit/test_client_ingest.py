"""The Python client's side of IngestReports, without a server: how a backlog is cut into
calls, and per-report errors read from their google.rpc.Status."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger_client import (
    DeviceReport,
    IngestOutcome,
    IngestResult,
    InvalidArgument,
    Location,
    RequestIdReused,
)
from incidentledger_client.ledger import MAX_INGEST_BYTES, MAX_INGEST_REPORTS, report_chunks
from services.common.errors import AlreadyExists
from services.common.errors import InvalidArgument as ServerInvalidArgument
from services.common.grpc_errors import to_status_proto

RECORDED = datetime(2026, 11, 27, 13, 40, tzinfo=UTC)


def report(description: str = "", n: int = 0) -> DeviceReport:
    return DeviceReport(
        report_id=str(uuid.uuid4()),
        device_id="hp-panwascam-07",
        record_time=RECORDED,
        title=f"Laporan {n}",
        category="crowd_gathering",
        location=Location("ipuh", tps="TPS 07"),
        description=description,
    )


def request_bytes(chunk: list[tuple[DeviceReport, api.DeviceReport]]) -> int:
    """The size of the call's request, with the largest send_time there is."""
    send_time = Timestamp(seconds=253402300799, nanos=999_999_999)
    request = api.IngestReportsRequest(reports=[m for _, m in chunk], send_time=send_time)
    return request.ByteSize()


def test_a_backlog_goes_in_chunks_of_at_most_500_reports_in_order() -> None:
    backlog = [report(n=n) for n in range(1203)]
    chunks = list(report_chunks(backlog, MAX_INGEST_REPORTS, MAX_INGEST_BYTES))
    assert [len(c) for c in chunks] == [500, 500, 203]
    assert [r for c in chunks for r, _ in c] == backlog
    assert all(m == r.to_proto() for c in chunks for r, m in c)


def test_a_chunk_stays_within_its_bytes_and_a_larger_report_goes_alone() -> None:
    backlog = [report("d" * 4000, n) for n in range(30)]
    backlog.insert(7, report("\u00e9" * 4000 * 3, 99))  # 24 KB of UTF-8 on its own
    limit = 20_000
    chunks = list(report_chunks(backlog, MAX_INGEST_REPORTS, limit))
    assert [r for c in chunks for r, _ in c] == backlog
    for chunk in chunks:
        assert len(chunk) == 1 or request_bytes(chunk) <= limit
    assert [len(c) for c in chunks if len(c) == 1 and c[0][0] is backlog[7]] == [1]
    sizes = [request_bytes(c) for c in chunks if c[0][0] is not backlog[7]]
    assert max(sizes) > limit - 4_500, "chunks are filled, not cut early"


def test_a_device_report_becomes_its_message() -> None:
    message = report("desc").to_proto()
    assert message.device_id == "hp-panwascam-07" and message.title == "Laporan 0"
    assert message.device_record_time.ToDatetime(tzinfo=UTC) == RECORDED
    assert message.location.kecamatan == "ipuh" and message.location.tps == "TPS 07"
    assert not message.HasField("occur_time")
    with pytest.raises(ValueError, match="timezone-aware"):
        DeviceReport("r", "d", datetime(2026, 11, 27), "t", "c", "ipuh").to_proto()


def test_per_report_errors_are_the_client_s_typed_errors() -> None:
    invalid = api.IngestResult(
        outcome=api.INGEST_OUTCOME_INVALID,
        error=to_status_proto(ServerInvalidArgument("title", "is required"), "ledger.x"),
    )
    result = IngestResult.from_proto("r-1", invalid)
    assert result.outcome is IngestOutcome.INVALID and not result.recorded
    assert isinstance(result.error, InvalidArgument)
    assert (result.error.reason, result.error.field, result.error.domain) == (
        "INVALID_FIELD",
        "title",
        "ledger.x",
    )
    conflict = api.IngestResult(
        outcome=api.INGEST_OUTCOME_CONFLICT,
        error=to_status_proto(
            AlreadyExists("used", reason="REQUEST_ID_REUSED", metadata={"request_id": "d/r"}),
            "ledger.x",
        ),
    )
    error = IngestResult.from_proto("r-2", conflict).error
    assert isinstance(error, RequestIdReused) and error.metadata == {"request_id": "d/r"}
    created = api.IngestResult(
        outcome=api.INGEST_OUTCOME_CREATED,
        result=api.CommandResult(incident="incidents/x", version=1, position=7),
    )
    done = IngestResult.from_proto("r-3", created)
    assert done.recorded and done.error is None and done.result is not None
    assert (done.report_id, done.result.position) == ("r-3", 7)

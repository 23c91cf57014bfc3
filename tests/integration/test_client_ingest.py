"""LedgerClient.ingest_reports against a real ledger: a long backlog in chunks, sent again
safely, a chunk whose answer is lost retried with the same ids, refused reports typed."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger_client import (
    DeviceReport,
    IngestOutcome,
    IngestResult,
    IngestSummary,
    InvalidArgument,
    LedgerClient,
    Location,
    PermissionDenied,
    RequestIdReused,
    RetryPolicy,
)
from tests.integration.test_client import FlakyProxy
from tests.support import Client, running_ledger, settings_for

if TYPE_CHECKING:  # generic in grpc-stubs only
    Interceptor = grpc.UnaryUnaryClientInterceptor[Any, Any]
else:
    Interceptor = grpc.UnaryUnaryClientInterceptor


class Calls(Interceptor):
    """Counts the calls of each method through the channel."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.methods.append(details.method.rsplit("/", 1)[-1])
        return continuation(details, request)


def backlog(count: int, device: str = "tab-babinsa-air-rami") -> list[DeviceReport]:
    saved = datetime.now(UTC) - timedelta(days=1)
    return [
        DeviceReport(
            report_id=str(uuid.uuid4()),
            device_id=device,
            record_time=saved + timedelta(seconds=n),
            title=f"Laporan lapangan {n}",
            category="crowd_gathering",
            location=Location("air_rami", desa="Batu Ejung"),
        )
        for n in range(count)
    ]


def incidents_listed(client: LedgerClient, results: Sequence[IngestResult]) -> set[str]:
    last = max(r.result.position for r in results if r.result)
    return {i.name for i in client.list_incidents('kecamatan = "air_rami"', min_position=last)}


def test_a_long_backlog_goes_in_chunks_and_can_be_sent_again(ledger: Client) -> None:
    calls = Calls()
    channel = grpc.intercept_channel(grpc.insecure_channel(ledger.address), calls)
    reports = backlog(1203)
    chunks: list[int] = []
    try:
        with LedgerClient(token=ledger.tokens["bawaslu"], channel=channel) as client:
            first = client.ingest_reports(reports, on_chunk=lambda c: chunks.append(len(c)))
            again = client.ingest_reports(reports)
            listed = incidents_listed(client, first)
    finally:
        channel.close()
    assert calls.methods.count("IngestReports") == 6, "3 calls a time: 500, 500 and 203"
    assert chunks == [500, 500, 203]
    assert [r.report_id for r in first] == [r.report_id for r in reports], "in order"
    assert {r.outcome for r in first} == {IngestOutcome.CREATED}
    assert {r.outcome for r in again} == {IngestOutcome.DUPLICATE}
    assert [r.result for r in again] == [r.result for r in first]
    assert listed == {r.result.incident for r in first if r.result}
    assert len(listed) == 1203


@pytest.mark.parametrize("mode", ["unavailable", "slow"])
def test_a_chunk_whose_answer_was_lost_is_sent_again_with_the_same_ids(
    ledger: Client, mode: str
) -> None:
    # The ledger starts its intake process at the first batch (a second, several on a busy
    # machine): started here, so that the attempts' 1 s deadline measures the lost answer.
    with LedgerClient(ledger.address, ledger.tokens["bawaslu"]) as warm:
        warm.ingest_reports(
            [
                DeviceReport(
                    str(uuid.uuid4()),
                    "tab-warm-up",
                    datetime.now(UTC),
                    "t",
                    "hoax",
                    Location("ipuh"),
                )
            ]
        )
    proxy = FlakyProxy(ledger.address, "IngestReports", mode)
    reports = backlog(40)
    try:
        retry = RetryPolicy(retries=3, initial_backoff=0.05, max_backoff=0.1)
        with LedgerClient(
            f"127.0.0.1:{proxy.port}", ledger.tokens["bawaslu"], timeout=1.0, retry=retry
        ) as client:
            results = client.ingest_reports(reports)
            listed = incidents_listed(client, results)
    finally:
        proxy.close()
    assert len(proxy.requests) == 2, "the first answer was lost, the retry got through"
    first, second = (api.IngestReportsRequest.FromString(r) for r in proxy.requests)
    assert list(first.reports) == list(second.reports), "the same reports, the same ids"
    assert second.send_time.ToDatetime() >= first.send_time.ToDatetime(), "a fresh send_time"
    # The lost attempt recorded them: the retry's answer is the original results.
    assert {r.outcome for r in results} == {IngestOutcome.DUPLICATE}
    assert listed == {r.result.incident for r in results if r.result}
    assert len(listed) == 40


def test_refused_reports_carry_typed_errors_and_do_not_stop_the_others(ledger: Client) -> None:
    good, other = backlog(2)
    with LedgerClient(ledger.address, ledger.tokens["bawaslu"]) as client:
        client.ingest_reports([good])
        changed = DeviceReport(
            report_id=good.report_id,
            device_id=good.device_id,
            record_time=good.record_time,
            title="Another title",
            category=good.category,
            location=good.location,
        )
        malformed = DeviceReport("not-a-uuid", "tab-1", good.record_time, "t", "hoax", "ipuh")
        results = client.ingest_reports([changed, malformed, other], chunk_size=2)
        with pytest.raises(ValueError, match="chunk_size"):
            client.ingest_reports([], chunk_size=501)
    assert [r.outcome for r in results] == [
        IngestOutcome.CONFLICT,
        IngestOutcome.INVALID,
        IngestOutcome.CREATED,
    ]
    assert isinstance(results[0].error, RequestIdReused)
    assert isinstance(results[1].error, InvalidArgument)
    assert results[1].error.field == "device_report_id"
    with (
        LedgerClient(ledger.address, ledger.tokens["inspektorat"]) as auditor,
        pytest.raises(PermissionDenied),
    ):
        auditor.ingest_reports(backlog(1))


def test_results_come_one_by_one_and_a_summary_counts_them_per_outcome(ledger: Client) -> None:
    reports = backlog(30)
    with LedgerClient(ledger.address, ledger.tokens["bawaslu"]) as client:
        client.ingest_reports(reports[:10])
        stream = client.iter_ingest_reports(reports, chunk_size=7)
        first = next(stream)
        assert first.outcome is IngestOutcome.DUPLICATE
        summary = IngestSummary.of([first, *stream])
    assert summary[IngestOutcome.DUPLICATE] == 10
    assert summary[IngestOutcome.CREATED] == 20
    assert (summary.total, summary.recorded, summary.refused) == (30, 30, 0)


def test_a_ledger_with_lower_limits_gets_the_backlog_in_smaller_chunks(
    store_env: dict[str, str], tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, store_env, ingest_max_reports=40, ingest_max_bytes=8192)
    calls = Calls()
    reports = backlog(100)
    with running_ledger(settings) as ledger:
        channel = grpc.intercept_channel(grpc.insecure_channel(ledger.address), calls)
        try:
            with LedgerClient(token=ledger.tokens["bawaslu"], channel=channel) as client:
                results = client.ingest_reports(reports)
        finally:
            channel.close()
    assert [r.report_id for r in results] == [r.report_id for r in reports]
    assert {r.outcome for r in results} == {IngestOutcome.CREATED}
    # 100 refused (too many), then halves of 50 (too many, then too large for 8 KiB), ...
    assert calls.methods.count("IngestReports") > 4

"""Per-agency limits on real servers: request rate, server streams, message size."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import grpc
import pytest

from incidentledger.v1 import audit_service_pb2 as audit
from incidentledger.v1 import audit_service_pb2_grpc as audit_grpc
from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger_client import LedgerClient, ResourceExhausted, RetryPolicy
from services.common.config import LimitSettings
from services.common.grpc_errors import error_info, retry_info
from services.common.natsserver import NatsServer
from services.ledger.domain.incident import Incident
from tests.fanout_support import Subscriber, running_stack, wait_until
from tests.support import Client, Metadata, rid, running_ledger, settings_for, store_environment
from tests.unit.incident_builders import LOCATION, envelope_for

AUDITOR = "inspektorat"
COORDINATOR = "desk_pilkada"


def report_request(title: str = "Planned mass gathering") -> api.ReportIncidentRequest:
    return api.ReportIncidentRequest(
        request_id=rid(),
        title=title,
        category="crowd_gathering",
        location=pb.Location(kecamatan="kota_mukomuko"),
    )


def position(client: Client) -> int:
    return client.server.ledger.recorder.max_notification_id() or 0


def refused(
    error: grpc.RpcError, reason: str, domain: str = "ledger.incidentledger"
) -> dict[str, str]:
    """Check a RESOURCE_EXHAUSTED refusal with ``reason``; its ErrorInfo metadata."""
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    info = error_info(error)  # type: ignore[arg-type]
    assert info is not None
    assert info.domain == domain
    assert info.reason == reason
    return dict(info.metadata)


# ------------------------------------------------------------- request rate


@pytest.fixture
def limited(store_env: dict[str, str], tmp_path: Path) -> Iterator[Client]:
    """A ledger allowing each agency a burst of 5 requests, refilled at 2 per second."""
    limits = LimitSettings(rate_per_second=2.0, burst=5)
    with running_ledger(settings_for(tmp_path, store_env, limits=limits)) as client:
        yield client


def test_a_burst_over_the_rate_is_refused_records_nothing_and_recovers(limited: Client) -> None:
    md = limited.md("kesbangpol")
    started = time.monotonic()
    admitted = 0
    refusal: grpc.RpcError | None = None
    while refusal is None:
        assert admitted <= 50, "the rate limit never refused a request"
        before = position(limited)
        try:
            limited.stub.ReportIncident(report_request(), metadata=md)
            admitted += 1
        except grpc.RpcError as error:
            refusal = error
    elapsed = time.monotonic() - started
    assert position(limited) == before, "a refused command records nothing"
    # The burst, plus what refilled while it was being sent.
    assert 5 <= admitted <= 5 + math.ceil(2.0 * elapsed)
    metadata = refused(refusal, "RATE_LIMITED")
    assert metadata == {"agency": "kesbangpol", "limit": "2", "burst": "5"}
    retry = retry_info(refusal)  # type: ignore[arg-type]
    assert retry is not None
    assert 0 < retry.retry_delay.ToNanoseconds() <= 500_000_000  # one token at 2/s

    # Another agency has its own bucket.
    limited.stub.ReportIncident(report_request(), metadata=limited.md("polres"))

    # Refused calls cost nothing, so polling does not delay the recovery.
    def admitted_again() -> bool:
        try:
            limited.stub.ListIncidents(api.ListIncidentsRequest(page_size=1), metadata=md)
        except grpc.RpcError as error:
            refused(error, "RATE_LIMITED")
            return False
        return True

    wait_until(admitted_again, timeout=10.0, what="a token to refill")


def test_the_python_client_waits_as_told_when_rate_limited(limited: Client) -> None:
    """LedgerClient retries RATE_LIMITED after the server's RetryInfo delay: all succeed."""
    with LedgerClient(limited.address, limited.tokens["kesbangpol"], retries=10) as client:
        results = [client.report(f"Gathering {n}", "crowd_gathering", "ipuh") for n in range(8)]
    assert len({r.position for r in results}) == 8  # 5 from the burst, 3 after waiting
    with (
        LedgerClient(
            limited.address, limited.tokens["kesbangpol"], retry=RetryPolicy(retries=0)
        ) as impatient,
        pytest.raises(ResourceExhausted) as caught,
    ):
        for n in range(8):
            impatient.report(f"Gathering {n}", "crowd_gathering", "ipuh")
    assert caught.value.reason == "RATE_LIMITED"


def test_unauthenticated_calls_are_refused_before_the_rate_limit(limited: Client) -> None:
    for authorization in ("Bearer not-a-token", "Basic abc"):
        for _ in range(20):
            with pytest.raises(grpc.RpcError) as caught:
                limited.stub.ListIncidents(
                    api.ListIncidentsRequest(), metadata=(("authorization", authorization),)
                )
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


# ------------------------------------------------------------- server streams


def long_report() -> Incident:
    return Incident.report(
        envelope_for("kesbangpol"),
        title="Crowd at the square",
        description="Hundreds gathered without a permit near the regent's office. " * 40,
        category="crowd_gathering",
        severity="low",
        location=dict(LOCATION),
        incident_id=uuid4(),
    )


@pytest.fixture
def two_streams(tmp_path: Path) -> Iterator[Client]:
    """A ledger (in memory) allowing each agency two server streams, with a long history."""
    limits = LimitSettings(max_streams_per_agency=2)
    with (
        store_environment("popo", tmp_path) as store_env,
        running_ledger(settings_for(tmp_path, store_env, limits=limits)) as client,
    ):
        # About 500 KB of events: several times a stream's flow-control window (64 KiB
        # when the reader does not let it grow), so a stream whose reader stops reading
        # stays open, its server waiting for the reader.
        client.server.ledger.save(*(long_report() for _ in range(200)))
        yield client


@pytest.fixture
def audit_stub(two_streams: Client) -> Iterator[audit_grpc.AuditServiceStub]:
    """A stub on a channel whose flow-control window stays small (no BDP probing)."""
    with grpc.insecure_channel(two_streams.address, options=[("grpc.http2.bdp_probe", 0)]) as ch:
        yield audit_grpc.AuditServiceStub(ch)


def open_stream(
    stub: audit_grpc.AuditServiceStub, md: Metadata
) -> grpc.CallIterator[audit.StreamEventsResponse]:
    """A StreamEvents call that has delivered its first event (so the server holds it)."""
    call = stub.StreamEvents(audit.StreamEventsRequest(), metadata=md)
    next(iter(call))
    return call


def test_streams_over_the_cap_are_refused_until_one_is_cancelled(
    two_streams: Client, audit_stub: audit_grpc.AuditServiceStub
) -> None:
    md = two_streams.md(AUDITOR)
    held = [open_stream(audit_stub, md) for _ in range(2)]
    with pytest.raises(grpc.RpcError) as caught:
        open_stream(audit_stub, md)
    assert refused(caught.value, "TOO_MANY_STREAMS") == {"agency": AUDITOR, "limit": "2"}
    # Unary calls and other agencies' streams are not affected.
    two_streams.stub.ListIncidents(api.ListIncidentsRequest(page_size=1), metadata=md)
    open_stream(audit_stub, two_streams.md(COORDINATOR)).cancel()  # type: ignore[no-untyped-call]

    held[0].cancel()  # type: ignore[no-untyped-call]
    reopened: list[grpc.CallIterator[audit.StreamEventsResponse]] = []

    def slot_released() -> bool:
        try:
            reopened.append(open_stream(audit_stub, md))
        except grpc.RpcError as error:
            refused(error, "TOO_MANY_STREAMS")
            return False
        return True

    wait_until(slot_released, timeout=10.0, what="the cancelled stream's slot")
    with pytest.raises(grpc.RpcError) as caught:
        open_stream(audit_stub, md)
    refused(caught.value, "TOO_MANY_STREAMS")
    for call in (held[1], *reopened):
        call.cancel()  # type: ignore[no-untyped-call]


def test_a_stream_that_ends_or_fails_frees_its_slot(
    two_streams: Client, audit_stub: audit_grpc.AuditServiceStub
) -> None:
    md = two_streams.md(AUDITOR)
    for _ in range(5):  # more than the cap, one after the other
        assert len(list(audit_stub.StreamEvents(audit.StreamEventsRequest(), metadata=md))) == 200
        with pytest.raises(grpc.RpcError) as caught:
            list(audit_stub.StreamEvents(audit.StreamEventsRequest(after_position=-1), metadata=md))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.nats
def test_notifier_subscriptions_are_capped_per_agency(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    limits = LimitSettings(max_streams_per_agency=1)
    with (
        store_environment("popo", tmp_path) as store_env,
        running_stack(tmp_path, store_env, nats_server.url, limits=limits) as stack,
    ):
        first = stack.subscribe("bpbd")
        with pytest.raises(grpc.RpcError) as caught:
            stack.subscribe("bpbd")
        metadata = refused(caught.value, "TOO_MANY_STREAMS", "notifier.incidentledger")
        assert metadata == {"agency": "bpbd", "limit": "1"}
        stack.subscribe("polres").close()
        first.close()
        again: list[Subscriber] = []

        def slot_released() -> bool:
            try:
                again.append(stack.subscribe("bpbd"))
            except grpc.RpcError as error:
                refused(error, "TOO_MANY_STREAMS", "notifier.incidentledger")
                return False
            return True

        wait_until(slot_released, timeout=10.0, what="the cancelled subscription's slot")
        again[0].close()


# ------------------------------------------------------------- message size


def test_a_request_over_the_message_size_is_refused_and_records_nothing(
    store_env: dict[str, str], tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, store_env, max_message_bytes=16 * 1024)
    with running_ledger(settings) as client:
        md = client.md("kesbangpol")
        client.stub.ReportIncident(report_request(), metadata=md)
        before = position(client)
        oversized = report_request()
        oversized.description = "x" * (20 * 1024)
        with pytest.raises(grpc.RpcError) as caught:
            client.stub.ReportIncident(oversized, metadata=md)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert position(client) == before
        # The server goes on answering.
        client.stub.ReportIncident(report_request(), metadata=md)
        assert position(client) > before

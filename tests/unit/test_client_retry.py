"""The client's retry loop, backoff, error mapping and subscription reconnects, with fakes."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from incidentledger.v1 import evidence_service_pb2 as ev
from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import notifier_service_pb2 as napi
from incidentledger_client import (
    Aborted,
    IllegalTransition,
    Internal,
    InvalidArgument,
    LedgerClient,
    LedgerError,
    ProjectionLagging,
    RequestIdReused,
    RetryPolicy,
    Unavailable,
    VersionConflict,
)
from incidentledger_client._transport import Transport, call_with_retry, channel_options
from incidentledger_client.errors import DeadlineExceeded, from_rpc_error
from incidentledger_client.notifier import Subscription
from incidentledger_client.types import EventFilter, Incident, Location, to_timestamp


class FakeRpcError(grpc.RpcError):
    """What grpc raises for a failed call: code, details and trailers (with google.rpc.Status)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str = "",
        reason: str = "",
        metadata: dict[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self._code = code
        self._message = message
        self._trailers: tuple[tuple[str, bytes], ...] = ()
        if reason:
            info = any_pb2.Any()
            info.Pack(
                error_details_pb2.ErrorInfo(
                    reason=reason, domain="ledger.incidentledger", metadata=metadata or {}
                )
            )
            details = [info]
            if retry_after is not None:
                retry = any_pb2.Any()
                delay = duration_pb2.Duration()
                delay.FromTimedelta(timedelta(seconds=retry_after))
                retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
                details.append(retry)
            status = status_pb2.Status(
                code=getattr(code_pb2, code.name), message=message, details=details
            )
            self._trailers = (("grpc-status-details-bin", status.SerializeToString()),)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> Any:
        return self._trailers


class Flaky:
    """A fake RPC that fails with the given errors, then answers; records its requests."""

    def __init__(self, *failures: grpc.RpcError) -> None:
        self.failures = list(failures)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def test_unavailable_and_deadline_exceeded_are_retried_with_growing_backoff() -> None:
    rpc = Flaky(
        FakeRpcError(grpc.StatusCode.UNAVAILABLE),
        FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED),
        FakeRpcError(grpc.StatusCode.UNAVAILABLE),
    )
    slept: list[float] = []
    policy = RetryPolicy(retries=5, initial_backoff=0.1, max_backoff=0.3, multiplier=2.0)
    assert call_with_retry(rpc, policy, sleep=slept.append, rng=lambda: 1.0) == "ok"
    assert rpc.calls == 4
    assert slept == pytest.approx([0.1, 0.2, 0.3])  # doubling, capped at max_backoff


def test_each_retry_is_announced_before_its_wait_with_the_budget_left() -> None:
    rpc = Flaky(
        FakeRpcError(grpc.StatusCode.UNAVAILABLE), FakeRpcError(grpc.StatusCode.UNAVAILABLE)
    )
    told: list[tuple[int, float]] = []
    now = [100.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    policy = RetryPolicy(
        budget=10.0, initial_backoff=1.0, on_retry=lambda a, left: told.append((a, left))
    )
    assert call_with_retry(rpc, policy, sleep=sleep, rng=lambda: 1.0, clock=lambda: now[0]) == "ok"
    assert [attempt for attempt, _ in told] == [0, 1]
    assert [left for _, left in told] == pytest.approx([10.0, 9.0])
    assert RetryPolicy(on_retry=print) == RetryPolicy()  # a listener is not part of the policy


def test_rate_limited_calls_wait_the_delay_the_server_names() -> None:
    sleeps: list[float] = []
    limited = FakeRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", "RATE_LIMITED", retry_after=0.25
    )
    call = Flaky(limited, limited)
    assert call_with_retry(call, RetryPolicy(retries=3), sleep=sleeps.append) == "ok"
    assert sleeps == [0.25, 0.25]


@pytest.mark.parametrize(
    "error",
    [
        # No RetryInfo (a full stream cap, a message too large): waiting would not help.
        FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many", "TOO_MANY_STREAMS"),
        # Longer than the policy lets a caller wait.
        FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "later", "RATE_LIMITED", retry_after=60),
    ],
)
def test_resource_exhausted_without_a_short_retry_delay_is_raised(error: FakeRpcError) -> None:
    sleeps: list[float] = []
    with pytest.raises(LedgerError) as caught:
        call_with_retry(Flaky(error), RetryPolicy(retries=3), sleep=sleeps.append)
    assert caught.value.code == "RESOURCE_EXHAUSTED"
    assert sleeps == []


def test_backoff_has_full_jitter() -> None:
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=10.0)
    assert policy.delay(3, rng=lambda: 0.0) == 0.0
    assert policy.delay(3, rng=lambda: 0.5) == pytest.approx(4.0)
    assert all(0.0 <= policy.delay(n) <= 10.0 for n in range(20))


def test_retries_give_up_after_the_policy_and_raise_the_mapped_error() -> None:
    rpc = Flaky(*[FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down")] * 10)
    slept: list[float] = []
    with pytest.raises(Unavailable) as caught:
        call_with_retry(rpc, RetryPolicy(retries=2), sleep=slept.append)
    assert rpc.calls == 3
    assert len(slept) == 2
    assert caught.value.code == "UNAVAILABLE"
    assert caught.value.message == "down"


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.CANCELLED,
    ],
)
def test_other_failures_are_not_retried(code: grpc.StatusCode) -> None:
    rpc = Flaky(FakeRpcError(code))
    with pytest.raises(LedgerError) as caught:
        call_with_retry(rpc, RetryPolicy(retries=5), sleep=lambda _: None)
    assert rpc.calls == 1
    assert caught.value.code == code.name


def test_the_transport_sends_the_same_request_with_a_deadline_on_every_attempt() -> None:
    seen: list[tuple[object, float | None, object]] = []
    failures = [FakeRpcError(grpc.StatusCode.UNAVAILABLE)] * 2

    def method(request: object, *, timeout: float | None, metadata: object) -> str:
        seen.append((request, timeout, metadata))
        if failures:
            raise failures.pop()
        return "done"

    transport = Transport(
        target="127.0.0.1:1",
        target_env="UNUSED_TARGET_VARIABLE",
        default_target="",
        token="t0k",
        auth_env="UNUSED_TOKEN_VARIABLE",
        tls=False,
        tls_env=(),
        timeout=2.5,
        retry=RetryPolicy(retries=3, initial_backoff=0.001),
        channel=None,
        options=(),
    )
    request = object()
    try:
        assert transport.unary(method, request) == "done"
    finally:
        transport.close()
    assert [r for r, _, _ in seen] == [request] * 3
    assert {t for _, t, _ in seen} == {2.5}
    assert {m for _, _, m in seen} == {(("authorization", "Bearer t0k"),)}


class FakeTime:
    """A clock that only moves when the retry loop sleeps (or an attempt takes time)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_transfer_cut_after_the_budget_is_sent_again_and_refusals_still_end() -> None:
    """A 60 MB upload on a slow link, cut at 18 s by a ledger's restart: the budget (20 s)
    counted from the first attempt was spent by the upload itself, and the file was never
    sent again. A transfer's attempt that ran a while starts the budget again."""
    time_ = FakeTime()
    attempts: list[float] = []

    def upload() -> str:
        attempts.append(time_.now)
        if len(attempts) == 1:
            time_.now += 18.0  # sending, then the ledger restarts
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, "", "SHUTTING_DOWN")
        time_.now += 0.002
        if time_.now < 24.0:  # the restart takes 6 s: connections refused meanwhile
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")
        time_.now += 18.0
        return "recorded"

    assert (
        call_with_retry(
            upload,
            RetryPolicy(),
            sleep=time_.sleep,
            rng=lambda: 0.5,
            clock=time_.clock,
            transfer=True,
        )
        == "recorded"
    )
    # The same without transfer: given up, as for any call whose budget is spent.
    time_, attempts[:] = FakeTime(), []
    with pytest.raises(Unavailable):
        call_with_retry(
            upload, RetryPolicy(), sleep=time_.sleep, rng=lambda: 0.5, clock=time_.clock
        )
    # Refused at once, again and again: a transfer gives up with the budget like any call.
    time_ = FakeTime()
    refused = Flaky(*[FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")] * 1000)
    with pytest.raises(Unavailable):
        call_with_retry(
            refused,
            RetryPolicy(),
            sleep=time_.sleep,
            rng=lambda: 0.5,
            clock=time_.clock,
            transfer=True,
        )
    assert time_.now <= RetryPolicy().budget


def test_the_default_policy_outlasts_a_restart_of_the_ledger() -> None:
    """A restart takes 3-6 s: the default retries for about 20 s, then gives up."""
    time_ = FakeTime()
    rpc = Flaky(*[FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")] * 1000)
    with pytest.raises(Unavailable):
        call_with_retry(rpc, RetryPolicy(), sleep=time_.sleep, rng=lambda: 0.5, clock=time_.clock)
    assert 15.0 <= time_.now <= RetryPolicy().budget
    assert max(time_.slept) <= RetryPolicy().max_backoff
    # The server is back after 6 s: the call succeeds, whatever the jitter draws.
    for draw in (0.0, 0.5, 1.0):
        time_ = FakeTime()

        def until_restarted(t: FakeTime = time_) -> str:
            t.now += 0.002  # a refused connection takes a moment
            if t.now < 6.0:
                raise FakeRpcError(grpc.StatusCode.UNAVAILABLE)
            return "ok"

        assert (
            call_with_retry(
                until_restarted,
                RetryPolicy(),
                sleep=time_.sleep,
                rng=lambda d=draw: d,  # type: ignore[misc]
                clock=time_.clock,
            )
            == "ok"
        )
        assert time_.now < 6.0 + RetryPolicy().max_backoff + 0.01


def test_the_budget_bounds_the_retries_and_the_server_s_delays() -> None:
    time_ = FakeTime()
    rpc = Flaky(*[FakeRpcError(grpc.StatusCode.UNAVAILABLE)] * 1000)
    policy = RetryPolicy(budget=3.0, initial_backoff=0.5, max_backoff=1.0)
    with pytest.raises(Unavailable):
        call_with_retry(rpc, policy, sleep=time_.sleep, rng=lambda: 1.0, clock=time_.clock)
    assert time_.now <= 3.0
    # A RetryInfo delay beyond what is left of the budget is not waited for.
    time_ = FakeTime()
    limited = FakeRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", "RATE_LIMITED", retry_after=4.0
    )
    with pytest.raises(LedgerError):
        call_with_retry(Flaky(limited), policy, sleep=time_.sleep, clock=time_.clock)
    assert time_.slept == []


class StoreDown:
    """A ledger whose database is down: it answers each attempt STORE_UNAVAILABLE after
    ``answer_seconds``, unless the attempt's deadline (the retry budget: ``budget`` from
    the start) ends first, which cuts it short with DEADLINE_EXCEEDED."""

    def __init__(self, time_: FakeTime, budget: float, answer_seconds: float = 0.7) -> None:
        self.time = time_
        self.budget = budget
        self.answer_seconds = answer_seconds
        self.codes: list[str] = []

    def __call__(self) -> str:
        if self.time.now + self.answer_seconds > self.budget:
            self.time.now = max(self.time.now, self.budget)
            self.codes.append("DEADLINE_EXCEEDED")
            raise FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        self.time.now += self.answer_seconds
        self.codes.append("STORE_UNAVAILABLE")
        raise FakeRpcError(
            grpc.StatusCode.UNAVAILABLE,
            "the store is unreachable; retry (a command with the same request id)",
            "STORE_UNAVAILABLE",
        )


def test_the_budget_spent_raises_the_server_s_answer_not_the_attempt_it_cut_short() -> None:
    time_ = FakeTime()
    down = StoreDown(time_, budget=10.0)
    with pytest.raises(LedgerError) as caught:
        call_with_retry(
            down,
            RetryPolicy(budget=10.0),
            sleep=time_.sleep,
            rng=lambda: 0.5,
            clock=time_.clock,
            request_id="req-7",
        )
    # The sequence the defect needs: the server's answers, then a last attempt cut short.
    assert down.codes[-1] == "DEADLINE_EXCEEDED", down.codes
    assert down.codes.count("STORE_UNAVAILABLE") >= 3, down.codes
    error = caught.value
    assert isinstance(error, Unavailable), error
    assert (error.code, error.reason) == ("UNAVAILABLE", "STORE_UNAVAILABLE")
    assert error.message.startswith("the store is unreachable")
    assert error.request_id == "req-7"
    # The attempt cut short may have reached the ledger: the error says one went unanswered.
    assert error.unanswered_attempts == 1


def test_answers_alone_leave_no_attempt_unanswered_and_deadlines_alone_are_raised() -> None:
    time_ = FakeTime()
    # Answered at once every time: the budget runs out between attempts, none is cut short.
    down = StoreDown(time_, budget=5.0, answer_seconds=0.0)
    with pytest.raises(Unavailable) as caught:
        call_with_retry(down, RetryPolicy(budget=5.0), sleep=time_.sleep, clock=time_.clock)
    assert set(down.codes) == {"STORE_UNAVAILABLE"} and len(down.codes) >= 3, down.codes
    assert caught.value.reason == "STORE_UNAVAILABLE"
    assert caught.value.unanswered_attempts == 0
    # Without any answer from the server, the last failure is raised, as before.
    time_ = FakeTime()
    silent = Flaky(*[FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")] * 5)
    with pytest.raises(DeadlineExceeded) as timed_out:
        call_with_retry(silent, RetryPolicy(retries=4), sleep=time_.sleep, clock=time_.clock)
    assert timed_out.value.unanswered_attempts == 5
    # A refusal that is not retried is the server's final word: raised even after an answer.
    refused = Flaky(
        FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down", "STORE_UNAVAILABLE"),
        FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "title: is required", "INVALID_FIELD"),
    )
    with pytest.raises(InvalidArgument):
        call_with_retry(refused, RetryPolicy(retries=3), sleep=time_.sleep, clock=time_.clock)


def test_a_failed_command_names_its_request_id_to_retry_with() -> None:
    failures = [FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")] * 3

    def method(request: object, *, timeout: float | None, metadata: object) -> str:
        raise failures[0]

    transport = Transport(
        target="127.0.0.1:1",
        target_env="UNUSED_TARGET_VARIABLE",
        default_target="",
        token="t0k",
        auth_env="UNUSED_TOKEN_VARIABLE",
        tls=False,
        tls_env=(),
        timeout=1.0,
        retry=RetryPolicy(retries=2, initial_backoff=0.001),
        channel=None,
        options=(),
    )
    try:
        with pytest.raises(Unavailable) as caught:
            transport.unary(method, _Command("req-42"))
    finally:
        transport.close()
    assert caught.value.request_id == "req-42"
    assert "req-42" in str(caught.value)
    assert caught.value.message == "connection refused"


class _Command:
    def __init__(self, request_id: str) -> None:
        self.request_id = request_id


def test_target_token_and_tls_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGER_ADDRESS", "ledger.example:443")
    monkeypatch.setenv("LEDGER_TOKEN", "from-env")
    monkeypatch.delenv("LEDGER_TLS_CA", raising=False)
    from incidentledger_client import LedgerClient, NotifierClient

    with LedgerClient() as ledger:
        assert ledger.target == "ledger.example:443"
        assert ledger._transport.metadata == (("authorization", "Bearer from-env"),)
    with LedgerClient("other:1", "given") as ledger:
        assert ledger.target == "other:1"
        assert ledger._transport.metadata == (("authorization", "Bearer given"),)
    monkeypatch.delenv("NOTIFIER_ADDRESS", raising=False)
    with NotifierClient() as notifier:
        assert notifier.target == "127.0.0.1:50052"
    monkeypatch.setenv("LEDGER_TLS_CA", "/nonexistent/ca.pem")
    with pytest.raises(FileNotFoundError):
        LedgerClient()


def test_errors_map_by_reason_then_by_code_with_their_details() -> None:
    conflict = from_rpc_error(
        FakeRpcError(
            grpc.StatusCode.ABORTED,
            "stale",
            "VERSION_CONFLICT",
            {"current_version": "7", "expected_version": "3"},
        )
    )
    assert isinstance(conflict, VersionConflict)
    assert isinstance(conflict, Aborted)
    assert (conflict.current_version, conflict.expected_version) == (7, 3)
    assert conflict.domain == "ledger.incidentledger"
    illegal = from_rpc_error(
        FakeRpcError(
            grpc.StatusCode.FAILED_PRECONDITION,
            "no",
            "ILLEGAL_TRANSITION",
            {"command": "ResolveIncident", "status": "REPORTED"},
        )
    )
    assert isinstance(illegal, IllegalTransition)
    assert (illegal.command, illegal.status) == ("ResolveIncident", "REPORTED")
    reused = from_rpc_error(FakeRpcError(grpc.StatusCode.ALREADY_EXISTS, "", "REQUEST_ID_REUSED"))
    assert isinstance(reused, RequestIdReused)
    lagging = from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "", "PROJECTION_LAGGING"))
    assert isinstance(lagging, ProjectionLagging)
    field = from_rpc_error(
        FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "", "INVALID_FIELD", {"field": "title"})
    )
    assert isinstance(field, InvalidArgument)
    assert field.field == "title"
    # A known reason under an unexpected code falls back to the code's class.
    odd = from_rpc_error(FakeRpcError(grpc.StatusCode.INTERNAL, "", "VERSION_CONFLICT"))
    assert type(odd) is Internal
    assert type(from_rpc_error(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED))) is (
        DeadlineExceeded
    )
    assert type(from_rpc_error(FakeRpcError(grpc.StatusCode.UNKNOWN))) is Internal


def test_times_are_aware_utc_and_naive_ones_are_refused() -> None:
    local = datetime(2026, 11, 27, 14, 0, tzinfo=timezone(timedelta(hours=7)))
    assert to_timestamp(local).ToDatetime(tzinfo=UTC) == local
    with pytest.raises(ValueError, match="timezone-aware"):
        to_timestamp(datetime(2026, 11, 27, 14, 0))
    message = pb.Incident(
        name="incidents/x", status=pb.INCIDENT_STATUS_ASSIGNED, location=pb.Location(kecamatan="a")
    )
    message.create_time.CopyFrom(to_timestamp(local))
    incident = Incident.from_proto(message)
    assert incident.status == "ASSIGNED"
    assert incident.create_time == local and incident.create_time.tzinfo is UTC
    assert incident.occur_time is None
    assert incident.location == Location("a")
    assert Location("a", latitude=-2.5).to_proto().HasField("latitude")


# --- subscriptions ---------------------------------------------------------------------------


class FakeCall:
    """A server stream that yields responses, then fails, ends, or (``hang``) goes silent
    until cancelled."""

    def __init__(
        self,
        responses: list[napi.SubscribeResponse],
        error: grpc.RpcError | None,
        *,
        hang: bool = False,
    ) -> None:
        self._responses = responses
        self._error = error
        self._hang = hang
        self._cancelled = threading.Event()

    def __iter__(self) -> Iterator[napi.SubscribeResponse]:
        yield from self._responses
        if self._hang:
            assert self._cancelled.wait(10), "never cancelled"
            raise FakeRpcError(grpc.StatusCode.CANCELLED, "cancelled")
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        self._cancelled.set()


class FakeStub:
    def __init__(self, calls: list[FakeCall]) -> None:
        self.calls = calls
        self.requests: list[napi.SubscribeRequest] = []

    def Subscribe(self, request: napi.SubscribeRequest, metadata: Any = None) -> FakeCall:  # noqa: N802
        self.requests.append(request)
        return self.calls.pop(0)


def heartbeat(cursor: str) -> napi.SubscribeResponse:
    return napi.SubscribeResponse(cursor=cursor, heartbeat=napi.Heartbeat())


def note(cursor: str, event_id: str) -> napi.SubscribeResponse:
    response = napi.SubscribeResponse(cursor=cursor)
    response.notification.event.event_id = event_id
    return response


def subscription(
    stub: FakeStub, max_reconnects: int | None = 3, idle_timeout: float = 5.0
) -> Subscription:
    transport = Transport(
        target="127.0.0.1:1",
        target_env="UNUSED_TARGET_VARIABLE",
        default_target="",
        token="",
        auth_env="UNUSED_TOKEN_VARIABLE",
        tls=False,
        tls_env=(),
        timeout=1.0,
        retry=RetryPolicy(),
        channel=None,
        options=(),
    )
    transport.close()
    return Subscription(
        transport,
        stub,  # type: ignore[arg-type]
        EventFilter(kecamatan=("ipuh",)),
        cursor="",
        heartbeat_seconds=1,
        max_reconnects=max_reconnects,
        reconnect=RetryPolicy(initial_backoff=0.001, max_backoff=0.001),
        idle_timeout=idle_timeout,
    )


def test_a_dropped_subscription_resumes_from_its_last_cursor() -> None:
    unavailable = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection reset")
    stub = FakeStub(
        [
            FakeCall([heartbeat("c0"), note("c1", "e1"), note("c2", "e2")], unavailable),
            FakeCall([], unavailable),  # the notifier is still away
            FakeCall([heartbeat("c2"), note("c3", "e3")], unavailable),
            FakeCall([heartbeat("c3"), note("c4", "e4")], None),
        ]
    )
    sub = subscription(stub)
    seen = [next(sub) for _ in range(4)]
    assert [n.event.event_id for n in seen] == ["e1", "e2", "e3", "e4"]
    assert [n.cursor for n in seen] == ["c1", "c2", "c3", "c4"]
    assert [r.cursor for r in stub.requests] == ["", "c2", "c2", "c3"]
    assert all(list(r.filter.kecamatan) == ["ipuh"] for r in stub.requests)
    assert sub.reconnects == 3
    sub.close()
    with pytest.raises(StopIteration):
        next(sub)


def test_a_subscription_gives_up_after_max_reconnects_without_news() -> None:
    unavailable = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down")
    stub = FakeStub([FakeCall([heartbeat("c0")], unavailable)] + [FakeCall([], unavailable)] * 3)
    sub = subscription(stub, max_reconnects=2)
    with pytest.raises(Unavailable):
        next(sub)
    assert len(stub.requests) == 3  # the first stream, then two reconnections
    assert sub.cursor == "c0"


def test_a_non_transient_subscription_error_is_raised_at_once() -> None:
    expired = FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "gone", "CURSOR_EXPIRED")
    stub = FakeStub([FakeCall([], expired)])
    with pytest.raises(LedgerError) as caught:
        next(subscription(stub))
    assert caught.value.reason == "CURSOR_EXPIRED"
    assert len(stub.requests) == 1


def test_a_silent_stream_is_taken_for_dead_and_resumed() -> None:
    stub = FakeStub(
        [
            FakeCall([heartbeat("c0"), note("c1", "e1")], None, hang=True),  # heartbeats stop
            FakeCall([heartbeat("c1"), note("c2", "e2")], None, hang=True),
        ]
    )
    sub = subscription(stub, idle_timeout=0.2)
    began = time.monotonic()
    assert [next(sub).event.event_id for _ in range(2)] == ["e1", "e2"]
    assert 0.2 <= time.monotonic() - began < 5
    assert [r.cursor for r in stub.requests] == ["", "c1"]
    sub.close()


def test_the_client_s_channel_reconnects_often_unless_told_otherwise() -> None:
    assert ("grpc.max_reconnect_backoff_ms", 2000) in channel_options(())
    given = dict(
        channel_options((("grpc.max_reconnect_backoff_ms", 500), ("grpc.enable_retries", 0)))
    )
    assert given["grpc.max_reconnect_backoff_ms"] == 500 and given["grpc.enable_retries"] == 0
    assert given["grpc.keepalive_time_ms"] == 10_000  # the defaults the caller did not name


# --- evidence downloads ----------------------------------------------------------------------


class FakeEvidenceStub:
    """DownloadEvidence answering each call with the next of ``calls``."""

    def __init__(self, calls: list[FakeCall]) -> None:
        self.calls = calls
        self.requests: list[ev.DownloadEvidenceRequest] = []

    def DownloadEvidence(self, request: ev.DownloadEvidenceRequest, **_: Any) -> FakeCall:  # noqa: N802
        self.requests.append(request)
        return self.calls.pop(0)


def test_a_download_the_ledger_could_not_serve_is_tried_again_from_the_first_byte(
    tmp_path: Path,
) -> None:
    """A replica whose evidence store or spool was away answers UNAVAILABLE, maybe after
    some bytes: the client starts again (another replica, or the same one back), as it
    retries other calls, and the file holds only the second attempt's bytes. Before, the
    first UNAVAILABLE ended the download, though docs/evidence.md promised the retry."""
    data = b"foto amplop uang di Ipuh" * 100
    header = ev.DownloadEvidenceResponse()
    header.evidence.name = "incidents/x/evidence/y"
    header.evidence.sha256 = hashlib.sha256(data).hexdigest()
    header.evidence.size_bytes = len(data)
    chunks = [
        ev.DownloadEvidenceResponse(chunk=data[:1000]),
        ev.DownloadEvidenceResponse(chunk=data[1000:]),
    ]
    unavailable = FakeRpcError(
        grpc.StatusCode.UNAVAILABLE, "evidence store away", "EVIDENCE_STORE_UNAVAILABLE"
    )
    stub = FakeEvidenceStub(
        [
            FakeCall([header, chunks[0]], unavailable),  # type: ignore[list-item]
            FakeCall([], unavailable),
            FakeCall([header, *chunks], None),  # type: ignore[list-item]
        ]
    )
    client = LedgerClient(
        "127.0.0.1:1", "t", retry=RetryPolicy(initial_backoff=0.001, max_backoff=0.001)
    )
    client._evidence = stub  # type: ignore[assignment]
    target = tmp_path / "foto.jpg"
    evidence = client.download_evidence("incidents/x/evidence/y", target)
    assert target.read_bytes() == data and evidence.sha256 == header.evidence.sha256
    assert len(stub.requests) == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["foto.jpg"]
    # Refused (not UNAVAILABLE): not tried again, nothing left behind.
    stub.calls = [FakeCall([], FakeRpcError(grpc.StatusCode.NOT_FOUND, "no", "EVIDENCE_NOT_FOUND"))]
    with pytest.raises(LedgerError):
        client.download_evidence("incidents/x/evidence/z", tmp_path / "other.jpg")
    assert not list(tmp_path.glob("other.jpg*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foto.jpg"], "no partial file left"
    # A folder that does not exist: refused before the call, which the ledger would have
    # recorded as a download that produced no file.
    stub.requests.clear()
    with pytest.raises(FileNotFoundError):
        client.download_evidence("incidents/x/evidence/y", tmp_path / "nowhere" / "foto.jpg")
    assert stub.requests == []
    client.close()

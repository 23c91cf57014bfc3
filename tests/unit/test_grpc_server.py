"""The request interceptor's table of wrapped handlers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from incidentledger.v1 import ledger_service_pb2 as api
from services.common import grpc_server
from services.common.auth import Principal, TokenStore, token_hash
from services.common.errors import (
    DataLoss,
    InvalidArgument,
    LedgerError,
    PermissionDenied,
    Unavailable,
)
from services.common.grpc_server import RequestInterceptor
from services.common.store_errors import StoreUnreachableError


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def _handler(request: Any, context: grpc.ServicerContext) -> Any:
    return request


def test_unknown_methods_are_not_kept_and_known_ones_are_wrapped_once() -> None:
    interceptor = RequestInterceptor(TokenStore({}, development=True), "test.example")
    for n in range(100):
        found = interceptor.intercept_service(lambda _: None, _Details(f"/x.Y/Random{n}"))
        assert found is None
    known = grpc.unary_unary_rpc_method_handler(_handler)
    first = interceptor.intercept_service(lambda _: known, _Details("/x.Y/Known"))
    again = interceptor.intercept_service(lambda _: known, _Details("/x.Y/Known"))
    assert first is not None and first is again
    assert list(interceptor._wrapped) == ["/x.Y/Known"]


class _AbortedError(Exception):
    pass


class _Context:
    """The parts of a grpc.ServicerContext the interceptor uses."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.code: grpc.StatusCode | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        raise _AbortedError(details)

    def abort_with_status(self, status: grpc.Status) -> None:
        self.code = status.code
        raise _AbortedError(status.details)


class _RecordingLog:
    def __init__(self) -> None:
        self.lines: list[dict[str, object]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        def write(event: str, **fields: object) -> None:
            self.lines.append({"event": event, "level": level, **fields})

        return write


def test_what_a_crash_logs_of_the_caller_s_input_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recording = _RecordingLog()
    monkeypatch.setattr(grpc_server, "log", recording)
    tokens = TokenStore({token_hash("t0k"): Principal("polres", "dev")}, development=True)
    interceptor = RequestInterceptor(tokens, "test.example")
    huge = "x" * 1_000_000

    def crashing(request: Any, context: grpc.ServicerContext) -> Any:
        raise KeyError(huge)  # an exception quoting what the caller sent

    handler = interceptor.intercept_service(
        lambda _: grpc.unary_unary_rpc_method_handler(crashing), _Details("/x.Y/Crash")
    )
    assert handler is not None and handler.unary_unary is not None
    context = _Context("t0k")
    with pytest.raises(_AbortedError):
        handler.unary_unary(api.ListIncidentsRequest(), context)  # type: ignore[arg-type]
    assert context.code == grpc.StatusCode.INTERNAL
    crashed = [line for line in recording.lines if line["event"] == "request.crashed"]
    assert len(crashed) == 1
    assert len(str(crashed[0])) < 32 * 1024
    assert "KeyError" in str(crashed[0]["error"])
    assert "crashing" in str(crashed[0]["traceback"])  # still says where


@pytest.mark.parametrize(
    ("error", "level"),
    [
        (InvalidArgument("title", "is required"), "info"),  # the caller's own mistake
        (PermissionDenied("no", reason="NOT_INVOLVED"), "warning"),
        (Unavailable("the store is away", reason="STORE_UNAVAILABLE"), "warning"),
        (DataLoss("fails its chain", reason="HASH_CHAIN_BROKEN"), "error"),
    ],
)
def test_a_refused_requests_line_has_the_level_an_operator_needs(
    monkeypatch: pytest.MonkeyPatch, error: LedgerError, level: str
) -> None:
    recording = _RecordingLog()
    monkeypatch.setattr(grpc_server, "log", recording)
    tokens = TokenStore({token_hash("t0k"): Principal("polres", "dev")}, development=True)
    interceptor = RequestInterceptor(tokens, "test.example")

    def refusing(request: Any, context: grpc.ServicerContext) -> Any:
        raise error

    handler = interceptor.intercept_service(
        lambda _: grpc.unary_unary_rpc_method_handler(refusing), _Details("/x.Y/Refuse")
    )
    assert handler is not None and handler.unary_unary is not None
    with pytest.raises(_AbortedError):
        handler.unary_unary(api.ListIncidentsRequest(), _Context("t0k"))  # type: ignore[arg-type]
    (line,) = [line for line in recording.lines if line["event"] == "request"]
    assert (line["level"], line["reason"]) == (level, error.reason)


def test_a_request_the_store_failed_is_one_line_with_its_cause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While PostgreSQL is down every command fails: each was two warnings, the request's
    line and ``request.store_failed`` with the cause (186 of them on two replicas in a 20 s
    outage at 50 commands a second). The request's line now says the cause itself."""
    recording = _RecordingLog()
    monkeypatch.setattr(grpc_server, "log", recording)
    tokens = TokenStore({token_hash("t0k"): Principal("polres", "dev")}, development=True)
    interceptor = RequestInterceptor(tokens, "test.example")

    def store_down(request: Any, context: grpc.ServicerContext) -> Any:
        raise StoreUnreachableError("the store is unreachable (its last connection attempt failed)")

    handler = interceptor.intercept_service(
        lambda _: grpc.unary_unary_rpc_method_handler(store_down), _Details("/x.Y/Report")
    )
    assert handler is not None and handler.unary_unary is not None
    context = _Context("t0k")
    with pytest.raises(_AbortedError):
        handler.unary_unary(api.ListIncidentsRequest(), context)  # type: ignore[arg-type]
    assert context.code == grpc.StatusCode.UNAVAILABLE
    (line,) = recording.lines
    assert (line["event"], line["level"], line["status"], line["reason"]) == (
        "request",
        "warning",
        "UNAVAILABLE",
        "STORE_UNAVAILABLE",
    )
    assert line["cause"] == (
        "StoreUnreachableError: the store is unreachable (its last connection attempt failed)"
    )

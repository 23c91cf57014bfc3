"""What every gRPC server of the project shares: the request interceptor.

The interceptor authenticates the caller, applies the per-agency limits
(:mod:`services.common.limits`), binds the request context for logging
(method, actor, request id), maps :class:`LedgerError` to AIP-193 statuses, turns
unexpected exceptions into INTERNAL (logged with their traceback) and writes one
log line per request with its status and duration. Before the servicer, every
request passes :mod:`services.common.request_checks` (a body that parses, no NUL
characters).
"""

from __future__ import annotations

import contextvars
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from services.common.auth import Principal, TokenStore, authenticate, bearer_token
from services.common.config import LimitSettings
from services.common.errors import AuthThrottled, LedgerError, Unauthenticated
from services.common.grpc_errors import accept_language, to_grpc_status
from services.common.limits import Limits
from services.common.logging import clipped
from services.common.metrics import Metrics
from services.common.request_checks import check_request, parsing
from services.common.store_errors import as_ledger_error

log = structlog.get_logger("request")

#: The level of a failed request's log line, by its code: what an operator must look at
#: (a store away, history that fails its chain) above a caller's own mistakes (info).
REQUEST_LOG_LEVELS: Mapping[str, str] = MappingProxyType(
    {
        "PERMISSION_DENIED": "warning",
        "UNAUTHENTICATED": "warning",
        "UNAVAILABLE": "warning",
        "DATA_LOSS": "error",
    }
)

_PRINCIPAL: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal")

UNAUTHENTICATED_PREFIXES = ("/grpc.health.", "/grpc.reflection.")

#: Characters of a request id logged before the caller is authenticated (then a marker with
#: its length and hash), and after: the longest request id the ledger accepts (AIP-155).
UNAUTHENTICATED_LOG_CHARS = 32
REQUEST_ID_LOG_CHARS = 128
#: Characters of an unexpected exception's message, and of its traceback, in the log.
ERROR_LOG_CHARS = 1024
TRACEBACK_LOG_CHARS = 16 * 1024


def current_principal() -> Principal:
    """The authenticated caller of the request being handled."""
    return _PRINCIPAL.get()


def peer_certificate(context: grpc.ServicerContext) -> bytes | None:
    """The client certificate (PEM) the TLS handshake verified, if any.

    gRPC asks for one only when the port requires client certificates, and then puts it
    in the auth context only after verifying it against the client CA.
    """
    # Each property is a list of values (the type stubs say a single bytes value).
    auth: Mapping[str, Sequence[bytes]] = context.auth_context()  # type: ignore[assignment]
    if list(auth.get("transport_security_type", ())) != [b"ssl"]:
        return None
    pem = auth.get("x509_pem_cert")
    return bytes(pem[0]) if pem else None


if TYPE_CHECKING:
    _ServerInterceptor = grpc.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.ServerInterceptor


class RequestInterceptor(_ServerInterceptor):
    def __init__(
        self,
        tokens: TokenStore,
        domain: str,
        metrics: Metrics | None = None,
        limits: Limits | None = None,
    ) -> None:
        self._tokens = tokens
        self._domain = domain
        self._metrics = metrics
        self._limits = limits or Limits(LimitSettings())
        # Wrapped handlers, built once per method (the wrapping is the same each call).
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        self._wrapped_lock = threading.Lock()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = details.method
        if method.startswith(UNAUTHENTICATED_PREFIXES):
            return continuation(details)
        try:
            return self._wrapped[method]
        except KeyError:
            pass
        wrapped = self._wrap(method, continuation(details))
        if wrapped is None:  # no such method: not kept, or any caller could grow the table
            return None
        with self._wrapped_lock:
            self._wrapped[method] = wrapped
        return wrapped

    def _wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any] | None
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        if handler is None:
            return None
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary),
                request_deserializer=parsing(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(method, handler.unary_stream),
                request_deserializer=parsing(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._client_stream(method, handler.stream_unary),
                request_deserializer=parsing(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler

    def _begin(self, method: str, request: Any, context: grpc.ServicerContext) -> Principal:
        structlog.contextvars.clear_contextvars()
        # The request id is the caller's text: before authentication only a short summary
        # is logged, after it at most the longest request id the services accept.
        request_id = str(getattr(request, "request_id", "") or "")
        # The caller's address (gRPC's "ipv4:10.0.0.7:53122"): which host sends a bad token.
        peer = context.peer()
        structlog.contextvars.bind_contextvars(
            method=method,
            request_id=clipped(request_id, UNAUTHENTICATED_LOG_CHARS) or None,
            peer=peer,
        )
        given = [v for k, v in context.invocation_metadata() if k == "authorization"]
        if len(given) > 1:
            # Which one would count is the server's choice, not the caller's: the first
            # was taken, silently, even when the two named different agencies.
            raise Unauthenticated(
                f"{len(given)} authorization headers: send one",
                reason="CREDENTIALS_MALFORMED",
            )
        authorization = given[0] if given else None
        if isinstance(authorization, bytes):
            authorization = authorization.decode("utf-8", "replace")
        token = bearer_token(authorization)
        self._limits.auth.check(peer, token)
        try:
            principal = authenticate(self._tokens, authorization, peer_certificate(context))
        except Unauthenticated as error:
            if error.reason == "CREDENTIALS_INVALID":  # a guess, not a missing header
                self._limits.auth.failed(peer, token)
            raise
        structlog.contextvars.bind_contextvars(
            actor=f"{principal.agency}/{principal.officer}",
            request_id=clipped(request_id, REQUEST_ID_LOG_CHARS) or None,
        )
        return principal

    def _unary(
        self, method: str, behaviour: Callable[[Any, grpc.ServicerContext], Any]
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                principal = self._begin(method, request, context)
                self._limits.admit(principal.agency)
                check_request(request)
                token = _PRINCIPAL.set(principal)
                try:
                    response = behaviour(request, context)
                finally:
                    _PRINCIPAL.reset(token)
            except LedgerError as error:
                self._fail(context, error, started)
            except Exception as exc:
                self._crash(context, exc, started)
            self._done("OK", started)
            return response

        return handle

    def _stream(
        self, method: str, behaviour: Callable[[Any, grpc.ServicerContext], Iterator[Any]]
    ) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
        def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.perf_counter()
            try:
                principal = self._begin(method, request, context)
                # The slot is freed when the stream ends: here, or on cancellation.
                slot = self._limits.open_stream(principal.agency)
                context.add_callback(slot.release)
                token = _PRINCIPAL.set(principal)
                try:
                    check_request(request)
                    yield from behaviour(request, context)
                finally:
                    _PRINCIPAL.reset(token)
                    slot.release()
            except LedgerError as error:
                self._fail(context, error, started)
            except Exception as exc:
                self._crash(context, exc, started)
            self._done("OK", started)

        return handle

    def _client_stream(
        self, method: str, behaviour: Callable[[Iterator[Any], grpc.ServicerContext], Any]
    ) -> Callable[[Iterator[Any], grpc.ServicerContext], Any]:
        """A client-streaming call (an evidence upload): authenticated before its first
        message is read, holding one of its agency's stream slots while it lasts, each
        message checked as a unary request is."""

        def checked(requests: Iterator[Any]) -> Iterator[Any]:
            for request in requests:
                check_request(request)
                yield request

        def handle(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                principal = self._begin(method, None, context)
                self._limits.admit(principal.agency)
                slot = self._limits.open_stream(principal.agency)
                context.add_callback(slot.release)
                token = _PRINCIPAL.set(principal)
                try:
                    response = behaviour(checked(requests), context)
                finally:
                    _PRINCIPAL.reset(token)
                    slot.release()
            except LedgerError as error:
                self._fail(context, error, started)
            except Exception as exc:
                self._crash(context, exc, started)
            self._done("OK", started)
            return response

        return handle

    def _fail(
        self,
        context: grpc.ServicerContext,
        error: LedgerError,
        started: float,
        **extra: Any,
    ) -> None:
        if isinstance(error, AuthThrottled):
            # Counted, not logged: the throttle logs one line per block, not per request.
            if self._metrics is not None:
                self._metrics.auth_throttled.labels(error.key).inc()
            self._done(error.code, started, logged=False)
        else:
            level = REQUEST_LOG_LEVELS.get(error.code, "info")
            self._done(
                error.code, started, level=level, reason=error.reason, error=error.message, **extra
            )
        context.abort_with_status(to_grpc_status(error, self._domain, accept_language(context)))

    def _crash(self, context: grpc.ServicerContext, exc: Exception, started: float) -> None:
        known = as_ledger_error(exc)
        # Exception messages may quote what the caller sent (a database's DETAIL line, a
        # value in a KeyError): bounded like everything else a caller can reach the log with.
        error = clipped(f"{type(exc).__name__}: {exc}", ERROR_LOG_CHARS)
        if known is not None:
            # Infrastructure, not a bug: the request's own line says the cause, no traceback
            # (a second line per request doubled what a store outage logs).
            self._fail(context, known, started, cause=error)
            return
        trace = "".join(traceback.format_exception(exc))
        log.error("request.crashed", error=error, traceback=clipped(trace, TRACEBACK_LOG_CHARS))
        self._done("INTERNAL", started, level="error")
        context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")

    def _done(
        self,
        status: str,
        started: float,
        *,
        level: str = "info",
        logged: bool = True,
        **extra: Any,
    ) -> None:
        seconds = time.perf_counter() - started
        if self._metrics is not None:
            method = structlog.contextvars.get_contextvars().get("method", "")
            self._metrics.observe(str(method), status, seconds)
        if logged:
            duration_ms = round(seconds * 1000, 3)
            getattr(log, level)("request", status=status, duration_ms=duration_ms, **extra)
        structlog.contextvars.clear_contextvars()

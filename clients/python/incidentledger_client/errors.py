"""Exceptions raised by the client: one per gRPC status code, and one per useful ErrorInfo reason.

Every failed call raises a :class:`LedgerError` carrying the gRPC ``code`` (for example
``"ABORTED"``), the AIP-193 ``reason`` from the server's ``ErrorInfo`` (for example
``"VERSION_CONFLICT"``), the human ``message``, the ErrorInfo ``metadata`` and ``domain``.
The class is picked by reason first, then by code, from one table (:data:`REASONS`,
:data:`CODES`)::

    try:
        client.verify(name, expected_version=3)
    except VersionConflict as conflict:
        client.verify(name, expected_version=conflict.current_version)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

M = TypeVar("M", bound=Message)


class LedgerError(Exception):
    """Base class of every error the client raises for a failed call."""

    def __init__(
        self,
        code: str,
        reason: str,
        message: str,
        metadata: Mapping[str, str] | None = None,
        domain: str = "",
        request_id: str | None = None,
        localized_message: str | None = None,
        locale: str | None = None,
    ) -> None:
        text = f"{code} {reason}: {message}" if reason else f"{code}: {message}"
        if request_id:
            text = f"{text} (request_id {request_id})"
        super().__init__(text)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})
        self.domain = domain
        self.localized_message = localized_message
        """The message in the language the client asked for (``language=``: the call's
        ``accept-language``), from the server's google.rpc.LocalizedMessage; None without."""
        self.locale = locale
        """The language of :attr:`localized_message` (``id``, ``en``)."""
        self.request_id = request_id
        """The request id of the failed command (``None`` for a query): retrying the command
        with it is safe, a command is recorded at most once per request id."""
        self.unanswered_attempts = 0
        """How many of the call's attempts failed without an answer from the server (no
        answer in time, a connection refused or lost). Unless refused, such an attempt may
        have reached the server: a command may have been recorded even when the error raised
        is the server's answer to another attempt (``STORE_UNAVAILABLE``)."""

    @property
    def field(self) -> str | None:
        """The request field at fault, when the server named one."""
        return self.metadata.get("field")


# --- by gRPC status code -------------------------------------------------------------------


class InvalidArgument(LedgerError):  # noqa: N818 - named after the gRPC code
    """INVALID_ARGUMENT: a bad field (``.field``), filter or page token."""


class NotFound(LedgerError):  # noqa: N818
    """NOT_FOUND: no such incident, webhook or dead letter."""


class FailedPrecondition(LedgerError):  # noqa: N818
    """FAILED_PRECONDITION: the resource's state does not allow the call."""


class Aborted(LedgerError):  # noqa: N818
    """ABORTED: a concurrency conflict."""


class AlreadyExists(LedgerError):  # noqa: N818
    """ALREADY_EXISTS."""


class PermissionDenied(LedgerError):  # noqa: N818
    """PERMISSION_DENIED: the caller's agency or role may not do this."""


class Unauthenticated(LedgerError):  # noqa: N818
    """UNAUTHENTICATED: the token is missing, malformed or unknown."""


class ResourceExhausted(LedgerError):  # noqa: N818
    """RESOURCE_EXHAUSTED: for example a request larger than the server accepts."""


class Unavailable(LedgerError):  # noqa: N818
    """UNAVAILABLE: the server is unreachable or shutting down (retried before raised).

    For a command, ``request_id`` (also in the message) is the id to send it again with:
    whether or not the failed attempts reached the ledger, it is recorded once."""


class CertificateNotVerified(Unavailable):
    """UNAVAILABLE: a TLS certificate was not accepted, so no call was made. This client
    did not accept the server's: it is not signed by a CA the client trusts (``cause``
    ``"ca"``), or it is not for the host name in the address (``cause`` ``"host_name"``);
    or the server did not accept this client's, or its lack of one (``cause``
    ``"client_certificate"``, mutual TLS). Raised at once, by unary calls and streams
    alike, never retried: a certificate that does not verify will not verify on a retry.
    The message names the CA setting, the host name or the client certificate;
    ``metadata`` holds ``cause`` and ``host``, and ``ca`` or ``refusal``."""

    @property
    def cause(self) -> str:
        return self.metadata.get("cause", "")


class DeadlineExceeded(LedgerError):  # noqa: N818
    """DEADLINE_EXCEEDED: no answer within the call's timeout (retried before raised)."""


class DataLoss(LedgerError):  # noqa: N818
    """DATA_LOSS: stored history fails its integrity checks."""


class Internal(LedgerError):  # noqa: N818
    """INTERNAL, UNKNOWN or any other code: a server fault."""


class Cancelled(LedgerError):  # noqa: N818
    """CANCELLED: the call was cancelled."""


# --- by ErrorInfo reason -------------------------------------------------------------------


class VersionConflict(Aborted):
    """ABORTED / VERSION_CONFLICT: ``expected_version`` was stale.

    ``current_version`` is the incident's version now (``expected_version`` what was sent).
    """

    @property
    def current_version(self) -> int:
        return int(self.metadata.get("current_version", "0"))

    @property
    def expected_version(self) -> int:
        return int(self.metadata.get("expected_version", "0"))


class TooMuchContention(Aborted):
    """ABORTED / TOO_MUCH_CONTENTION: the server gave up retrying a contended incident."""


class IllegalTransition(FailedPrecondition):
    """FAILED_PRECONDITION / ILLEGAL_TRANSITION: ``command`` is not allowed in ``status``."""

    @property
    def status(self) -> str:
        return self.metadata.get("status", "")

    @property
    def command(self) -> str:
        return self.metadata.get("command", "")


class PositionNotRecorded(FailedPrecondition):
    """FAILED_PRECONDITION / POSITION_NOT_RECORDED: ``min_position`` the ledger never recorded."""


class CursorExpired(FailedPrecondition):
    """FAILED_PRECONDITION / CURSOR_EXPIRED: the events after a cursor are no longer kept."""


class RequestIdReused(AlreadyExists):
    """ALREADY_EXISTS / REQUEST_ID_REUSED: the same request_id with a different request."""


class IncidentNotFound(NotFound):
    """NOT_FOUND / INCIDENT_NOT_FOUND."""


class ProjectionLagging(Unavailable):
    """UNAVAILABLE / PROJECTION_LAGGING: the read side did not reach ``min_position`` in time."""


class HashChainBroken(DataLoss):
    """DATA_LOSS / HASH_CHAIN_BROKEN: an incident's hash chain does not verify."""


CODES: dict[grpc.StatusCode, type[LedgerError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.DATA_LOSS: DataLoss,
    grpc.StatusCode.CANCELLED: Cancelled,
}
"""The class of an error by gRPC code, when its reason has no class of its own."""

REASONS: dict[str, type[LedgerError]] = {
    "VERSION_CONFLICT": VersionConflict,
    "TOO_MUCH_CONTENTION": TooMuchContention,
    "ILLEGAL_TRANSITION": IllegalTransition,
    "POSITION_NOT_RECORDED": PositionNotRecorded,
    "CURSOR_EXPIRED": CursorExpired,
    "REQUEST_ID_REUSED": RequestIdReused,
    "INCIDENT_NOT_FOUND": IncidentNotFound,
    "PROJECTION_LAGGING": ProjectionLagging,
    "HASH_CHAIN_BROKEN": HashChainBroken,
}
"""The class of an error by ErrorInfo reason (each a subclass of its code's class)."""


def status_code(error: grpc.RpcError) -> grpc.StatusCode | None:
    """The status code of a failed call (None for an RpcError that is not a call)."""
    code = getattr(error, "code", None)
    value = code() if callable(code) else None
    return value if isinstance(value, grpc.StatusCode) else None


def _details(error: grpc.RpcError) -> list[Any]:
    """The google.rpc.Status details of a failed call (empty when it carries none)."""
    if status_code(error) is None:
        return []
    try:
        status = rpc_status.from_call(cast(grpc.Call, error))
    except (
        ValueError,
        AttributeError,
    ):  # trailers that do not match the status: ignore the details
        return []
    return list(status.details) if status is not None else []


def _unpacked(details: list[Any], kind: type[M]) -> M | None:
    """The first of ``details`` (a google.rpc.Status's) of type ``kind``, if any."""
    for detail in details:
        if detail.Is(kind.DESCRIPTOR):
            found = kind()
            detail.Unpack(found)
            return found
    return None


def _detail(error: grpc.RpcError, kind: type[M]) -> M | None:
    """The first detail of type ``kind`` in a failed call's google.rpc.Status, if any."""
    return _unpacked(_details(error), kind)


def error_reason(error: grpc.RpcError) -> str:
    """The ErrorInfo reason of a failed call ("" when the server gave none, or did not answer)."""
    info = _detail(error, error_details_pb2.ErrorInfo)
    return info.reason if info is not None else ""


def retry_delay(error: grpc.RpcError) -> float | None:
    """Seconds the server asks the caller to wait before retrying (its RetryInfo), if any."""
    info = _detail(error, error_details_pb2.RetryInfo)
    return None if info is None else float(info.retry_delay.ToNanoseconds()) / 1e9


def from_rpc_error(error: grpc.RpcError, request_id: str | None = None) -> LedgerError:
    """The :class:`LedgerError` for a failed gRPC call (its ErrorInfo, when it has one);
    ``request_id``: the command's, to retry with."""
    code = status_code(error) or grpc.StatusCode.UNKNOWN
    details = getattr(error, "details", None)
    message = str(details() or "") if callable(details) else str(error)
    return _error(code, message, _details(error), request_id)


_CODES_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def from_status(status: status_pb2.Status, request_id: str | None = None) -> LedgerError:
    """The :class:`LedgerError` a ``google.rpc.Status`` message says, as :func:`from_rpc_error`
    makes it of a failed call: for the per-report errors of ``ingest_reports``."""
    code = _CODES_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
    return _error(code, status.message, list(status.details), request_id)


def _error(
    code: grpc.StatusCode, message: str, details: list[Any], request_id: str | None
) -> LedgerError:
    """The error a status says (its ``details``: ErrorInfo, LocalizedMessage)."""
    info = _unpacked(details, error_details_pb2.ErrorInfo)
    reason = info.reason if info is not None else ""
    metadata = dict(info.metadata) if info is not None else {}
    domain = info.domain if info is not None else ""
    cls = REASONS.get(reason) or CODES.get(code, Internal)
    if not issubclass(cls, CODES.get(code, Internal)):  # a reason under an unexpected code
        cls = CODES.get(code, Internal)
    localized = _unpacked(details, error_details_pb2.LocalizedMessage)
    return cls(
        code.name,
        reason,
        message,
        metadata,
        domain,
        request_id,
        localized.message if localized is not None else None,
        localized.locale if localized is not None else None,
    )

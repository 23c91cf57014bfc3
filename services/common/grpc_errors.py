"""The one mapping from :class:`LedgerError` to gRPC statuses (AIP-193).

Every error leaves as google.rpc.Status with an ErrorInfo (reason, domain,
metadata), for a bad field a BadRequest field violation, and when a retry may
succeed later a RetryInfo with its delay.
"""

from __future__ import annotations

from typing import TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common.error_messages import localized, preferred
from services.common.errors import LedgerError

M = TypeVar("M", bound=Message)


#: The most of a call's ``accept-language`` values read (a caller can send anything).
ACCEPT_LANGUAGE_CHARS = 256


def accept_language(context: grpc.ServicerContext) -> str:
    """The call's ``accept-language`` header (its values joined), bounded."""
    return ",".join(
        str(value)
        for key, value in (context.invocation_metadata() or ())
        if key == "accept-language"
    )[:ACCEPT_LANGUAGE_CHARS]


def to_grpc_status(error: LedgerError, domain: str, accept_language: str = "") -> grpc.Status:
    """The status a call fails with: :func:`to_status_proto` in the call's trailers."""
    return rpc_status.to_status(to_status_proto(error, domain, accept_language))


def to_status_proto(
    error: LedgerError, domain: str, accept_language: str = ""
) -> status_pb2.Status:
    """The google.rpc.Status of an error, as a failed call carries it; also what a
    per-item result carries (``IngestReports``), so both say the same. With
    ``accept_language`` (the call's header), with a LocalizedMessage in the language it
    prefers (:mod:`services.common.error_messages`)."""
    code = getattr(code_pb2, error.code)
    details = []
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=error.metadata)
    )
    details.append(info)
    if error.field is not None:
        bad = any_pb2.Any()
        bad.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=error.field, description=error.message, reason=error.reason
                    )
                ]
            )
        )
        details.append(bad)
    if error.retry_delay is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(max(0, round(error.retry_delay * 1e9)))
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(retry)
    language = preferred(accept_language) if accept_language else None
    text = localized(error.reason, error.metadata, language) if language else None
    if language and text:
        message = any_pb2.Any()
        message.Pack(error_details_pb2.LocalizedMessage(locale=language, message=text))
        details.append(message)
    return status_pb2.Status(code=code, message=error.message, details=details)


def _detail(call: grpc.Call, kind: type[M]) -> M | None:
    """The first detail of type ``kind`` in a failed call's google.rpc.Status, if any."""
    status = rpc_status.from_call(call)
    for detail in status.details if status is not None else ():
        if detail.Is(kind.DESCRIPTOR):
            found = kind()
            detail.Unpack(found)
            return found
    return None


def error_info(call: grpc.Call) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo of a failed call, for clients and tests."""
    return _detail(call, error_details_pb2.ErrorInfo)


def localized_message(call: grpc.Call) -> error_details_pb2.LocalizedMessage | None:
    """The LocalizedMessage of a failed call, for clients and tests."""
    return _detail(call, error_details_pb2.LocalizedMessage)


def retry_info(call: grpc.Call) -> error_details_pb2.RetryInfo | None:
    """The RetryInfo of a failed call, for clients and tests."""
    return _detail(call, error_details_pb2.RetryInfo)

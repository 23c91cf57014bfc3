"""The error vocabulary of the project, independent of any transport or driver.

Each error carries an AIP-193 ``reason`` (UPPER_SNAKE_CASE), the name of the gRPC
status code it maps to, and metadata for the ErrorInfo. The mapping to gRPC lives
in :mod:`services.common.grpc_errors`, the classification of the store's driver
failures in :mod:`services.common.store_errors`; domain and application code raise
these. It imports nothing but the standard library (the domain imports it: see the
contracts in ``.importlinter``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Bounds (UTF-8 bytes) of what an error carries: it travels in the response's
# trailing metadata (percent-encoded, and again base64-encoded in the status
# details), which clients refuse beyond a few KiB. Messages quote client values.
MAX_MESSAGE_BYTES = 512
MAX_METADATA_VALUE_BYTES = 128


def bounded(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (on a character boundary), marked."""
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return text
    return encoded[: limit - 3].decode("utf-8", "ignore") + "\u2026"


class LedgerError(Exception):
    """Base class of every error the services report to callers."""

    code: str = "INTERNAL"
    reason: str = "INTERNAL"
    #: Seconds after which a retry may succeed (sent as google.rpc.RetryInfo), if known.
    retry_delay: float | None = None

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        field: str | None = None,
    ) -> None:
        message = bounded(message, MAX_MESSAGE_BYTES)
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata: dict[str, str] = {
            key: bounded(value, MAX_METADATA_VALUE_BYTES) for key, value in (metadata or {}).items()
        }
        self.field = field
        if field is not None:
            self.metadata.setdefault("field", field)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as it is (the intake process sends a batch's refusals back): the
        # default would call the subclass's __init__ with the message alone.
        return (_restored, (type(self), self.args, vars(self)))


def _restored(cls: type[LedgerError], args: tuple[Any, ...], state: dict[str, Any]) -> LedgerError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class InvalidArgument(LedgerError):
    code = "INVALID_ARGUMENT"
    reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        field: str,
        message: str,
        *,
        reason: str = "INVALID_FIELD",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{field}: {message}", reason=reason, field=field, metadata=metadata)


class MalformedRequest(LedgerError):
    """A request body that is not an encoding of the method's request message."""

    code = "INVALID_ARGUMENT"
    reason = "MALFORMED_REQUEST"


class NotFound(LedgerError):
    code = "NOT_FOUND"
    reason = "NOT_FOUND"


class FailedPrecondition(LedgerError):
    code = "FAILED_PRECONDITION"
    reason = "FAILED_PRECONDITION"


class IllegalTransition(FailedPrecondition):
    """A command that the incident's current state does not allow."""

    reason = "ILLEGAL_TRANSITION"

    def __init__(
        self,
        command: str,
        status: str,
        detail: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        message = f"{command} is not allowed while the incident is {status}"
        if detail:
            message = f"{message}: {detail}"
        super().__init__(
            message, metadata={"command": command, "status": status, **(metadata or {})}
        )
        self.command = command
        self.status = status


class Aborted(LedgerError):
    code = "ABORTED"
    reason = "ABORTED"


class VersionConflict(Aborted):
    reason = "VERSION_CONFLICT"

    def __init__(self, expected: int, current: int) -> None:
        super().__init__(
            f"expected version {expected} but the incident is at version {current}",
            metadata={"expected_version": str(expected), "current_version": str(current)},
        )
        self.expected = expected
        self.current = current


class AlreadyExists(LedgerError):
    code = "ALREADY_EXISTS"
    reason = "ALREADY_EXISTS"


class PermissionDenied(LedgerError):
    code = "PERMISSION_DENIED"
    reason = "PERMISSION_DENIED"


class Unauthenticated(LedgerError):
    code = "UNAUTHENTICATED"
    reason = "UNAUTHENTICATED"


class ResourceExhausted(LedgerError):
    code = "RESOURCE_EXHAUSTED"
    reason = "RESOURCE_EXHAUSTED"


class RateLimited(ResourceExhausted):
    """The agency's request rate is over its limit; retry after ``retry_delay`` seconds."""

    reason = "RATE_LIMITED"

    def __init__(self, agency: str, rate_per_second: float, burst: int, retry_delay: float) -> None:
        super().__init__(
            f"agency {agency} is over its request rate limit "
            f"({rate_per_second:g}/s, burst {burst}); retry in {retry_delay:.3f} s",
            metadata={"agency": agency, "limit": f"{rate_per_second:g}", "burst": str(burst)},
        )
        self.retry_delay = retry_delay


class AuthThrottled(ResourceExhausted):
    """Too many failed authentications from one peer address or with one token prefix.

    ``key`` says which (``peer`` or ``token``); a retry may succeed after ``retry_delay``.
    """

    reason = "AUTH_THROTTLED"

    def __init__(self, key: str, failures: int, window_seconds: float, retry_delay: float) -> None:
        super().__init__(
            f"too many failed authentications from this {key} ({failures} within "
            f"{window_seconds:g} s); retry in {retry_delay:.1f} s",
            metadata={
                "key": key,
                "failures": str(failures),
                "window_seconds": f"{window_seconds:g}",
            },
        )
        self.key = key
        self.retry_delay = retry_delay


class TooManyStreams(ResourceExhausted):
    """The agency already holds as many server streams as it may."""

    reason = "TOO_MANY_STREAMS"

    def __init__(self, agency: str, limit: int) -> None:
        super().__init__(
            f"agency {agency} already has {limit} open streams, its limit; close one first",
            metadata={"agency": agency, "limit": str(limit)},
        )


class TooManyWebhooks(ResourceExhausted):
    """The agency already has as many webhooks as it may: delete one, or widen a filter."""

    reason = "TOO_MANY_WEBHOOKS"

    def __init__(self, agency: str, limit: int) -> None:
        super().__init__(
            f"agency {agency} already has {limit} webhooks, the most it may; delete one, or "
            "let one webhook's filter take more events",
            metadata={"agency": agency, "limit": str(limit)},
        )


class WebhookExists(AlreadyExists):
    """The agency has a webhook of this URL and filter already: a second one would deliver
    every event it takes twice, under two delivery ids (a setup script run again)."""

    reason = "WEBHOOK_EXISTS"

    def __init__(self, agency: str, webhook_id: str) -> None:
        super().__init__(
            f"agency {agency} already has webhooks/{webhook_id} for this URL and filter: a "
            "second one would deliver each event twice; change its secret or filter with "
            "UpdateWebhook (ledgerctl webhooks update), or delete it first",
            metadata={"agency": agency, "webhook": f"webhooks/{webhook_id}"},
        )


class IngestTooLarge(ResourceExhausted):
    """An ``IngestReports`` request larger than the ledger takes in one call: send its
    reports in smaller chunks."""

    reason = "INGEST_TOO_LARGE"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the request has {size} bytes, more than the {limit} one IngestReports call "
            "may have; send the reports in smaller chunks",
            metadata={"bytes": str(size), "limit": str(limit)},
        )


class Cancelled(LedgerError):
    """The caller went away before its call was done (a stream it cancelled)."""

    code = "CANCELLED"
    reason = "CANCELLED"


class Unavailable(LedgerError):
    code = "UNAVAILABLE"
    reason = "UNAVAILABLE"


class SigningKeyRetired(Unavailable):
    """This replica's signing key was retired by a rotation (another replica started with
    the new key): it records nothing more, since what it sealed would be refused. Another
    replica takes the same request (same request id); this one must be restarted with the
    current key."""

    reason = "SIGNING_KEY_RETIRED"

    def __init__(self, key_id: str, retired_at: str, successor: str) -> None:
        super().__init__(
            f"this ledger replica signs with key {key_id}, retired at {retired_at} for key "
            f"{successor}: it records nothing more; send the request again (same request_id) "
            "to another replica",
            metadata={"key_id": key_id, "successor": successor},
        )


class DataLoss(LedgerError):
    """Stored history that fails its integrity checks."""

    code = "DATA_LOSS"
    reason = "DATA_LOSS"

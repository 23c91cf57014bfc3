"""The ledger client: commands, queries, the situation views and the audit calls.

>>> from incidentledger_client import LedgerClient
>>> with LedgerClient("127.0.0.1:50051", token) as ledger:  # doctest: +SKIP
...     result = ledger.report("Mass gathering", "crowd_gathering", "kota_mukomuko")
...     incidents = list(ledger.list_incidents('status = "REPORTED"',
...                                            min_position=result.position))
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import grpc

from incidentledger.v1 import audit_service_pb2 as audit_pb
from incidentledger.v1 import audit_service_pb2_grpc as audit_grpc
from incidentledger.v1 import evidence_service_pb2 as evidence_pb
from incidentledger.v1 import evidence_service_pb2_grpc as evidence_grpc
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import ledger_service_pb2_grpc as api_grpc
from incidentledger.v1 import situation_service_pb2 as situation_pb
from incidentledger.v1 import situation_service_pb2_grpc as situation_grpc
from incidentledger_client._transport import (
    ClientCertificate,
    RetryPolicy,
    Transport,
    new_request_id,
)
from incidentledger_client.errors import (
    DataLoss,
    InvalidArgument,
    ResourceExhausted,
    from_rpc_error,
)
from incidentledger_client.personal import (
    DataSubject,
    LegalHold,
    PersonalData,
    PersonalDataAccess,
    PersonalDataErasure,
    PersonalDataRecord,
)
from incidentledger_client.types import (
    AgencyWorkload,
    Checkpoint,
    CommandResult,
    DecisionInForce,
    DeviceReport,
    Evidence,
    EvidenceDownload,
    EvidenceReport,
    Incident,
    IncidentEvent,
    IncidentPage,
    IngestResult,
    Location,
    ProjectionStatus,
    ReferenceData,
    RejectionReason,
    ResponseTimeGrouping,
    ResponseTimes,
    TriageItem,
    TriageResult,
    VerifyProgress,
    VerifyReport,
    VulnerabilityMap,
    to_timestamp,
)

T = TypeVar("T")
DEFAULT_TARGET = "127.0.0.1:50051"

#: The most reports the ledger takes in one ``IngestReports`` call.
MAX_INGEST_REPORTS = 500
#: The size of one ``IngestReports`` call :meth:`LedgerClient.ingest_reports` aims under: the
#: ledger's default ``LEDGER_MAX_MESSAGE_BYTES`` (1 MiB), less a margin.
MAX_INGEST_BYTES = 1_000_000
#: The most items :meth:`LedgerClient.triage` sends in one ``TriageIncidents`` call (the
#: ledger's default ``LEDGER_TRIAGE_MAX_ITEMS``).
MAX_TRIAGE_ITEMS = 500

#: The size of the chunks an upload sends: every message must also fit the ledger's
#: ``LEDGER_MAX_MESSAGE_BYTES`` (1 MiB by default), its framing included.
UPLOAD_CHUNK_BYTES = 512 * 1024

#: Told the bytes sent or received so far and the file's size (0 while unknown).
TransferProgress = Callable[[int, int], None]

#: What a request holds beside its reports: ``send_time`` (at most 2 + 11 + 6 bytes).
_REQUEST_OVERHEAD = 32

_GROUPINGS = {
    "agency": situation_pb.RESPONSE_TIME_GROUPING_AGENCY,
    "severity": situation_pb.RESPONSE_TIME_GROUPING_SEVERITY,
    "category": situation_pb.RESPONSE_TIME_GROUPING_CATEGORY,
    "kecamatan": situation_pb.RESPONSE_TIME_GROUPING_KECAMATAN,
}


class _HasResult(Protocol):
    @property
    def result(self) -> api.CommandResult: ...


def _location(value: Location | str) -> Location:
    return Location(value) if isinstance(value, str) else value


def report_chunks(
    reports: Iterable[DeviceReport], max_reports: int, max_bytes: int
) -> Iterator[list[tuple[DeviceReport, api.DeviceReport]]]:
    """The reports in order, in chunks of at most ``max_reports`` whose request stays
    within ``max_bytes`` (a single larger report makes a chunk of its own)."""
    chunk: list[tuple[DeviceReport, api.DeviceReport]] = []
    size = _REQUEST_OVERHEAD
    for report in reports:
        message = report.to_proto()
        length = message.ByteSize()
        item = 1 + _varint_size(length) + length  # the field's tag, length and body
        if chunk and (len(chunk) >= max_reports or size + item > max_bytes):
            yield chunk
            chunk, size = [], _REQUEST_OVERHEAD
        chunk.append((report, message))
        size += item
    if chunk:
        yield chunk


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def paginate(fetch: Callable[[str], tuple[Iterable[T], str]]) -> Iterator[T]:
    """Every item of every page: ``fetch(page_token)`` returns (items, next_page_token)."""
    token = ""
    while True:
        items, token = fetch(token)
        yield from items
        if not token:
            return


class LedgerClient:
    """A typed client of the ledger (LedgerService, SituationService, AuditService).

    :param target: ``host:port``; default ``$LEDGER_ADDRESS`` or ``127.0.0.1:50051``.
    :param token: the bearer token (it decides the agency and officer recorded in events);
        default ``$LEDGER_TOKEN``.
    :param tls: ``True`` for TLS with the system's roots, root certificates (PEM bytes, or a
        path to a PEM file) for TLS with those, ``False`` for plaintext; default: TLS with
        the file ``$LEDGER_TLS_CA`` when that is set, plaintext otherwise.
    :param client_cert: for mutual TLS, the client certificate (PEM bytes or a path);
        default the file ``$LEDGER_TLS_CLIENT_CERT``. Its subject names the agency (O) and
        the officer (CN); with it, a token is optional (and must be of the same agency).
    :param client_key: its private key (PEM bytes or a path; unencrypted); default the file
        ``$LEDGER_TLS_CLIENT_KEY``.
    :param timeout: the deadline of each attempt of each unary call, in seconds.
    :param retries: how many times UNAVAILABLE and DEADLINE_EXCEEDED are retried (with the
        same request, so the same request_id), with exponential backoff and jitter; default
        as often as the retry budget allows (20 s: longer than a restart of the ledger).
    :param retry: a full :class:`RetryPolicy` (overrides ``retries``).
    :param channel: use this channel (for example with interceptors) instead of making one;
        it is not closed by :meth:`close`.
    :param options: gRPC channel options.
    :param language: the language of errors for people (``"id"``, ``"en"``): sent as the
        ``accept-language`` of each call, the server adds its message in that language to each
        error, which :attr:`LedgerError.localized_message` holds.

    Every command takes ``request_id`` (a fresh uuid4 hex when omitted: pass your own to
    retry a command across restarts of your program), ``expected_version`` (0 = do not
    check; a stale one raises :class:`~incidentledger_client.errors.VersionConflict`),
    ``occur_time`` (when it happened; default now) and ``correlation_id``, and returns a
    :class:`CommandResult`. Failures raise :class:`~incidentledger_client.errors.LedgerError`
    subclasses.
    """

    def __init__(
        self,
        target: str | None = None,
        token: str | None = None,
        *,
        tls: bool | str | bytes | Path | None = None,
        client_cert: str | bytes | Path | None = None,
        client_key: str | bytes | Path | None = None,
        timeout: float = 10.0,
        retries: int | None = None,
        retry: RetryPolicy | None = None,
        channel: grpc.Channel | None = None,
        options: Iterable[tuple[str, Any]] = (),
        language: str | None = None,
    ) -> None:
        self._transport = Transport(
            target=target,
            target_env="LEDGER_ADDRESS",
            default_target=DEFAULT_TARGET,
            token=token,
            auth_env="LEDGER_TOKEN",
            tls=tls,
            tls_env=("LEDGER_TLS_CA",),
            timeout=timeout,
            retry=retry or RetryPolicy(retries=retries),
            channel=channel,
            options=tuple(options),
            language=language,
            client_certificate=ClientCertificate(
                client_cert,
                client_key,
                cert_env=("LEDGER_TLS_CLIENT_CERT",),
                key_env=("LEDGER_TLS_CLIENT_KEY",),
            ),
        )
        channel = self._transport.channel
        self._ledger = api_grpc.LedgerServiceStub(channel)
        self._situation = situation_grpc.SituationServiceStub(channel)
        self._audit = audit_grpc.AuditServiceStub(channel)
        self._evidence = evidence_grpc.EvidenceServiceStub(channel)

    @property
    def target(self) -> str:
        return self._transport.target

    @property
    def channel(self) -> grpc.Channel:
        """The channel, for other clients to share (``channel=``): one connection for
        clients with different tokens (the situation room's officers)."""
        return self._transport.channel

    def reachable(self, timeout: float) -> bool:
        """Whether the channel is connected to the ledger, or connects within ``timeout``
        seconds. No call is made (nothing the ledger logs or counts): a stopped ledger is
        found at once, a frozen one by the channel's keepalive pings."""
        ready = grpc.channel_ready_future(self.channel)
        try:
            ready.result(timeout=timeout)
        except grpc.FutureTimeoutError:
            return False
        finally:
            ready.cancel()  # no longer watching the channel
        return True

    def close(self) -> None:
        """Close the channel (unless it was passed in)."""
        self._transport.close()

    def __enter__(self) -> LedgerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------ commands

    def _command(
        self,
        method: Callable[..., _HasResult],
        request_type: Callable[..., Any],
        *,
        request_id: str | None,
        occur_time: datetime | None,
        correlation_id: str,
        **fields: Any,
    ) -> CommandResult:
        request = request_type(
            request_id=request_id or new_request_id(), correlation_id=correlation_id, **fields
        )
        if occur_time is not None:
            request.occur_time.CopyFrom(to_timestamp(occur_time))
        response = self._transport.unary(method, request)
        return CommandResult.from_proto(response.result)

    def report(
        self,
        title: str,
        category: str,
        location: Location | str,
        *,
        description: str = "",
        severity: str = "",
        occur_time: datetime | None = None,
        correlation_id: str = "",
        request_id: str | None = None,
        personal_data: PersonalData | None = None,
    ) -> CommandResult:
        """Report a new incident (``location``: a :class:`Location` or a kecamatan code;
        ``personal_data``: the people it names, sealed by the ledger before it is recorded).

        >>> result = ledger.report("Flood at TPS 03", "flood",  # doctest: +SKIP
        ...                        Location("air_manjunto", tps="TPS 03"), severity="high")
        >>> result.incident, result.version  # doctest: +SKIP
        ('incidents/0b6f…', 1)
        """
        return self._command(
            self._ledger.ReportIncident,
            api.ReportIncidentRequest,
            request_id=request_id,
            occur_time=occur_time,
            correlation_id=correlation_id,
            title=title,
            category=category,
            location=_location(location).to_proto(),
            description=description,
            severity=severity,
            personal_data=personal_data.to_proto() if personal_data else None,
        )

    def ingest_reports(
        self,
        reports: Iterable[DeviceReport],
        *,
        chunk_size: int = MAX_INGEST_REPORTS,
        max_chunk_bytes: int = MAX_INGEST_BYTES,
        on_chunk: Callable[[Sequence[IngestResult]], None] | None = None,
        sender_is_device: bool = True,
    ) -> list[IngestResult]:
        """Hand over a field device's backlog (``IngestReports``): one result per report, in
        the order given.

        The reports go in chunks, one call each: at most ``chunk_size`` reports (the
        ledger's default limit, 500) and about ``max_chunk_bytes`` bytes (under the ledger's
        default ``LEDGER_INGEST_MAX_BYTES``, 1 MiB; a report larger than that goes alone).
        A chunk the ledger finds too large (its operator set lower limits) is sent again in
        halves. ``on_chunk`` sees each chunk's results as they come (progress, or a record
        of what is done); :meth:`iter_ingest_reports` yields them one by one instead, and
        :class:`~incidentledger_client.types.IngestSummary` counts them per outcome.

        Safe to repeat: a report's ids are its idempotency key. A chunk whose answer is lost
        (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``) is sent again as it was, with backoff (the
        same ids; only ``send_time``, the clock the ledger measures the device's skew
        against, is fresh); a whole backlog sent again after a crash records nothing twice:
        what was recorded comes back ``DUPLICATE`` with its original result. A report the
        ledger refuses (``INVALID``, ``CONFLICT``) does not stop the others: its error is in
        its result. A chunk refused as a whole (the ledger still unreachable after the
        retries, an auditor's credentials) raises; the chunks before it are recorded.

        ``sender_is_device``: this program runs on the device whose reports these are, so
        its clock is the device's and the ledger records how far off it is
        (``device_clock_skew_ms``); a program handing over a device's exported file on
        another machine passes False, and no skew is recorded (it would be that machine's).

        >>> results = ledger.ingest_reports(backlog)  # doctest: +SKIP
        >>> [r for r in results if not r.recorded]  # doctest: +SKIP
        """
        results: list[IngestResult] = []
        chunks = self._ingest_chunks(reports, chunk_size, max_chunk_bytes, sender_is_device)
        for answered in chunks:
            if on_chunk is not None:
                on_chunk(answered)
            results.extend(answered)
        return results

    def iter_ingest_reports(
        self,
        reports: Iterable[DeviceReport],
        *,
        chunk_size: int = MAX_INGEST_REPORTS,
        max_chunk_bytes: int = MAX_INGEST_BYTES,
        sender_is_device: bool = True,
    ) -> Iterator[IngestResult]:
        """:meth:`ingest_reports` as an iterator: each report's result, in order, as soon as
        its chunk is answered (the backlog is read as it goes, so it may be a file of any
        length). Stopping early leaves the chunks not yet sent unsent.

        >>> summary = IngestSummary.of(ledger.iter_ingest_reports(backlog))  # doctest: +SKIP
        """
        for answered in self._ingest_chunks(reports, chunk_size, max_chunk_bytes, sender_is_device):
            yield from answered

    def _ingest_chunks(
        self,
        reports: Iterable[DeviceReport],
        chunk_size: int,
        max_chunk_bytes: int,
        sender_is_device: bool,
    ) -> Iterator[list[IngestResult]]:
        if not 1 <= chunk_size <= MAX_INGEST_REPORTS:
            raise ValueError(f"chunk_size must be 1 to {MAX_INGEST_REPORTS}, got {chunk_size}")
        for chunk in report_chunks(reports, chunk_size, max_chunk_bytes):
            yield self._ingest_chunk(chunk, sender_is_device)

    def _ingest_chunk(
        self, chunk: list[tuple[DeviceReport, api.DeviceReport]], sender_is_device: bool
    ) -> list[IngestResult]:
        """One call for the chunk; two, recursively, when the ledger finds it too large."""

        def send(request: api.IngestReportsRequest, **kwargs: Any) -> api.IngestReportsResponse:
            if sender_is_device:  # at each attempt: the clock the device's skew is taken against
                request.send_time.CopyFrom(to_timestamp(datetime.now(UTC)))
            response: api.IngestReportsResponse = self._ledger.IngestReports(request, **kwargs)
            return response

        request = api.IngestReportsRequest(reports=[message for _, message in chunk])
        try:
            response = self._transport.unary(send, request)
        except (InvalidArgument, ResourceExhausted) as error:
            # The ledger's limits (INGEST_TOO_LARGE, too many reports), or gRPC's own size
            # limit, which carries no reason: the ledger's operator set them lower.
            too_large = (
                error.reason in ("INGEST_TOO_LARGE", "")
                if isinstance(error, ResourceExhausted)
                else error.field == "reports"
            )
            if not too_large or len(chunk) == 1:
                raise
            half = len(chunk) // 2
            return [
                *self._ingest_chunk(chunk[:half], sender_is_device),
                *self._ingest_chunk(chunk[half:], sender_is_device),
            ]
        return [
            IngestResult.from_proto(report.report_id, result)
            for (report, _), result in zip(chunk, response.results, strict=True)
        ]

    def triage(
        self,
        items: Iterable[TriageItem],
        *,
        request_id: str | None = None,
        chunk_size: int = MAX_TRIAGE_ITEMS,
        occur_time: datetime | None = None,
        correlation_id: str = "",
        on_chunk: Callable[[Sequence[TriageResult]], None] | None = None,
    ) -> list[TriageResult]:
        """Verify, reject or assign a lead to many incidents (``TriageIncidents``,
        coordinator): one result per item, in the order given. Each item is recorded as
        its single command would be (same event, same checks); one refused item does not
        stop the others, its error is in its result.

        The items go in calls of at most ``chunk_size`` (the ledger's default limit, 500);
        the calls' request ids are ``request_id`` (one call) or ``{request_id}.{k}`` (k from
        1). A call whose answer is lost is sent again with the same id, and so is safe: what
        was recorded comes back ``DUPLICATE`` with its original result. Pass the same
        ``request_id`` to repeat a whole triage safely.

        >>> results = ledger.triage([TriageItem(n, "verify") for n in names])  # doctest: +SKIP
        >>> [r for r in results if not r.recorded]  # doctest: +SKIP
        """
        if not 1 <= chunk_size <= MAX_TRIAGE_ITEMS:
            raise ValueError(f"chunk_size must be 1 to {MAX_TRIAGE_ITEMS}, got {chunk_size}")
        listed = list(items)
        base = request_id or new_request_id()
        chunks = [listed[n : n + chunk_size] for n in range(0, len(listed), chunk_size)]
        results: list[TriageResult] = []
        for k, chunk in enumerate(chunks, 1):
            request = api.TriageIncidentsRequest(
                request_id=base if len(chunks) == 1 else f"{base}.{k}",
                items=[item.to_proto() for item in chunk],
                correlation_id=correlation_id,
            )
            if occur_time is not None:
                request.occur_time.CopyFrom(to_timestamp(occur_time))
            response = self._transport.unary(self._ledger.TriageIncidents, request)
            answered = [
                TriageResult.from_proto(item.name, result)
                for item, result in zip(chunk, response.results, strict=True)
            ]
            if on_chunk is not None:
                on_chunk(answered)
            results.extend(answered)
        return results

    def verify(
        self,
        name: str,
        *,
        comment: str = "",
        expected_version: int = 0,
        occur_time: datetime | None = None,
        correlation_id: str = "",
        request_id: str | None = None,
    ) -> CommandResult:
        """Confirm a reported incident (coordinator).

        >>> ledger.verify(result.incident, expected_version=result.version)  # doctest: +SKIP
        """
        return self._command(
            self._ledger.VerifyIncident,
            api.VerifyIncidentRequest,
            request_id=request_id,
            occur_time=occur_time,
            correlation_id=correlation_id,
            name=name,
            expected_version=expected_version,
            comment=comment,
        )

    def reject(
        self,
        name: str,
        reason: RejectionReason | str,
        comment: str,
        *,
        expected_version: int = 0,
        occur_time: datetime | None = None,
        correlation_id: str = "",
        request_id: str | None = None,
    ) -> CommandResult:
        """Reject a reported incident as ``"INVALID"``, ``"HOAX"`` or ``"OUT_OF_SCOPE"``."""
        return self._command(
            self._ledger.RejectIncident,
            api.RejectIncidentRequest,
            request_id=request_id,
            occur_time=occur_time,
            correlation_id=correlation_id,
            name=name,
            expected_version=expected_version,
            rejection_reason=RejectionReason(reason).to_proto(),
            comment=comment,
        )

    def merge(
        self,
        name: str,
        target: str,
        *,
        comment: str = "",
        expected_version: int = 0,
        occur_time: datetime | None = None,
        correlation_id: str = "",
        request_id: str | None = None,
    ) -> CommandResult:
        """Merge the reported incident ``name`` into ``target`` as a duplicate (coordinator)."""
        return self._command(
            self._ledger.MergeIncident,
            api.MergeIncidentRequest,
            request_id=request_id,
            occur_time=occur_time,
            correlation_id=correlation_id,
            name=name,
            expected_version=expected_version,
            target=target,
            comment=comment,
        )

    def assess_severity(
        self,
        name: str,
        severity: str,
        *,
        comment: str = "",
        expected_version: int = 0,
        occur_time: datetime | None = None,
        correlation_id: str = "",
        request_id: str | None = None,
    ) -> CommandResult:
        """Assess (or re-assess) the severity, for example ``"critical"``."""
        return self._command(
            self._ledger.AssessSeverity,
            api.AssessSeverityRequest,
            request_id=request_id,
            occur_time=occur_time,
            correlation_id=correlation_id,
            name=name,
            expected_version=expected_version,
            severity=severity,
            comment=comment,
        )

    def assign_lead(
        self,
        name: str,
        agency: str,
        *,
        comment: str = "",
        expected_version: int = 0,
        occur_time: datetime | None = None,
        correlation_id: str = "",
        request_id: str | None = None,
    ) -> CommandResult:
        """Assign the lead agency of a verified or reopened incident (coordinator)."""
        return self._command(
            self._ledger.AssignLeadAgency,
            api.AssignLeadAgencyRequest,
            request_id=request_id,
            occur_time=occur_time,
            correlation_id=correlation_id,
            name=name,
            expected_version=expected_version,
            agency=agency,
            comment=comment,
        )

    def add_supporting_agency(
        self,
        name: str,
        agency: str,
        *,
        comment: str = "",
        expected_version: int = 0,
        occur_time: datetime | None = None,
        correlation_id: str = "",
        request_id: str | None = None,
    ) -> CommandResult:
        """Add a supporting agency (lead agency or coordinator)."""
        return self._command(
            self._ledger.AddSupportingAgency,
            api.AddSupportingAgencyRequest,
            request_id=request_id,
            occur_time=occur_time,
            correlation_id=correlation_id,
            name=name,
            expected_version=expected_version,
            agency=agency,
            comment=comment,
        )

    def propose_handover(
        self,
        name: str,
        to_agency: str,
        *,
        reason: str = "",
        expected_version: int = 0,
        occur_time: datetime | None = None,
        correlation_id: str = "",
        request_id: str | None = None,
    ) -> CommandResult:
        """Propose to hand the lead over to ``to_agency`` (lead agency or coordinator)."""
        return self._command(
            self._ledger.ProposeHandover,
            api.ProposeHandoverRequest,
            request_id=request_id,
            occur_time=occur_time,
            correlation_id=correlation_id,
            name=name,
            expected_version=expected_version,
            to_agency=to_agency,
            reason=reason,
        )

    def accept_handover(
        self,
        name: str,
        *,
        comment: str = "",
        expected_version: int = 0,
        occur_time: datetime | None = None,
        correlation_id: str = "",
        request_id: str | None = None,
    ) -> CommandResult:
        """Accept a proposed handover (the proposed agency only)."""
        return self._command(
            self._ledger.AcceptHandover,
            api.AcceptHandoverRequest,
            request_id=request_id,
            occur_time=occur_time,
            correlation_id=correlation_id,
            name=name,
            expected_version=expected_version,
            comment=comment,
        )

    def record_decision(
        self,
        name: str,
        deciding_agencies: Iterable[str],
        forum: str,
        summary: str,
        *,
        rationale: str,
        valid_from: datetime,
        scope: Location | str | None = None,
        valid_until: datetime | None = None,
        expected_version: int = 0,
        occur_time: datetime | None = None,
        correlation_id: str = "",
        request_id: str | None = None,
    ) -> CommandResult:
        """Record a decision valid in ``[valid_from, valid_until)``; scope: the incident's
        place. The ledger requires the rationale and the start (an aware datetime).

        >>> now = datetime.now(UTC)  # doctest: +SKIP
        >>> ledger.record_decision(name, ["desk_pilkada", "polres"], "Forkopimda",  # doctest: +SKIP
        ...     "Gatherings restricted", rationale="Two camps announced rallies",
        ...     valid_from=now, valid_until=now + timedelta(days=3))
        """
        fields: dict[str, Any] = {"valid_from": to_timestamp(valid_from)}
        if scope is not None:
            fields["scope"] = _location(scope).to_proto()
        if valid_until is not None:
            fields["valid_until"] = to_timestamp(valid_until)
        return self._command(
            self._ledger.RecordDecision,
            api.RecordDecisionRequest,
            request_id=request_id,
            occur_time=occur_time,
            correlation_id=correlation_id,
            name=name,
            expected_version=expected_version,
            deciding_agencies=list(deciding_agencies),
            forum=forum,
            summary=summary,
            rationale=rationale,
            **fields,
        )

    def log_action(
        self,
        name: str,
        action: str,
        *,
        location: Location | str | None = None,
        expected_version: int = 0,
        occur_time: datetime | None = None,
        correlation_id: str = "",
        request_id: str | None = None,
    ) -> CommandResult:
        """Log an action; the first one on an ASSIGNED incident moves it to RESPONDING."""
        fields: dict[str, Any] = {}
        if location is not None:
            fields["location"] = _location(location).to_proto()
        return self._command(
            self._ledger.LogAction,
            api.LogActionRequest,
            request_id=request_id,
            occur_time=occur_time,
            correlation_id=correlation_id,
            name=name,
            expected_version=expected_version,
            action=action,
            **fields,
        )

    def escalate(
        self,
        name: str,
        reason: str = "",
        *,
        expected_version: int = 0,
        occur_time: datetime | None = None,
        correlation_id: str = "",
        request_id: str | None = None,
    ) -> CommandResult:
        """Escalate an incident one level."""
        return self._command(
            self._ledger.EscalateIncident,
            api.EscalateIncidentRequest,
            request_id=request_id,
            occur_time=occur_time,
            correlation_id=correlation_id,
            name=name,
            expected_version=expected_version,
            reason=reason,
        )

    def resolve(
        self,
        name: str,
        resolution: str = "",
        *,
        expected_version: int = 0,
        occur_time: datetime | None = None,
        correlation_id: str = "",
        request_id: str | None = None,
    ) -> CommandResult:
        """Mark a RESPONDING incident resolved (lead agency or coordinator)."""
        return self._command(
            self._ledger.ResolveIncident,
            api.ResolveIncidentRequest,
            request_id=request_id,
            occur_time=occur_time,
            correlation_id=correlation_id,
            name=name,
            expected_version=expected_version,
            resolution=resolution,
        )

    def request_closure(
        self,
        name: str,
        *,
        comment: str = "",
        expected_version: int = 0,
        occur_time: datetime | None = None,
        correlation_id: str = "",
        request_id: str | None = None,
    ) -> CommandResult:
        """Ask the coordinator to close a resolved incident (lead agency)."""
        return self._command(
            self._ledger.RequestClosure,
            api.RequestClosureRequest,
            request_id=request_id,
            occur_time=occur_time,
            correlation_id=correlation_id,
            name=name,
            expected_version=expected_version,
            comment=comment,
        )

    def approve_closure(
        self,
        name: str,
        *,
        comment: str = "",
        expected_version: int = 0,
        occur_time: datetime | None = None,
        correlation_id: str = "",
        request_id: str | None = None,
    ) -> CommandResult:
        """Approve a requested closure (coordinator): the incident is CLOSED."""
        return self._command(
            self._ledger.ApproveClosure,
            api.ApproveClosureRequest,
            request_id=request_id,
            occur_time=occur_time,
            correlation_id=correlation_id,
            name=name,
            expected_version=expected_version,
            comment=comment,
        )

    def reopen(
        self,
        name: str,
        reason: str = "",
        *,
        expected_version: int = 0,
        occur_time: datetime | None = None,
        correlation_id: str = "",
        request_id: str | None = None,
    ) -> CommandResult:
        """Reopen a resolved or closed incident (lead agency or coordinator)."""
        return self._command(
            self._ledger.ReopenIncident,
            api.ReopenIncidentRequest,
            request_id=request_id,
            occur_time=occur_time,
            correlation_id=correlation_id,
            name=name,
            expected_version=expected_version,
            reason=reason,
        )

    def correct(
        self,
        name: str,
        corrected_event_id: str,
        field: str,
        old_value: str,
        new_value: str,
        *,
        reason: str = "",
        expected_version: int = 0,
        occur_time: datetime | None = None,
        correlation_id: str = "",
        request_id: str | None = None,
    ) -> CommandResult:
        """Record a correction of ``field`` of an earlier event (``old_value`` is checked).

        >>> ledger.correct(name, reported.event_id, "severity", "low", "high",  # doctest: +SKIP
        ...                reason="typo in the first report")
        """
        return self._command(
            self._ledger.RecordCorrection,
            api.RecordCorrectionRequest,
            request_id=request_id,
            occur_time=occur_time,
            correlation_id=correlation_id,
            name=name,
            expected_version=expected_version,
            corrected_event_id=corrected_event_id,
            field=field,
            old_value=old_value,
            new_value=new_value,
            reason=reason,
        )

    # ------------------------------------------- personal data (docs/personal-data.md)

    def read_personal_data(
        self,
        name: str,
        purpose: str,
        *,
        subjects: Sequence[str] = (),
        request_id: str | None = None,
    ) -> tuple[CommandResult, list[DataSubject]]:
        """The people an incident names, with their data where the caller may read it (only
        ``subjects``' data, when given: subject ids as ``Incident.data_subjects`` has them);
        the read is recorded (who, when, ``purpose``, whose) before anything is disclosed."""
        request = api.ReadPersonalDataRequest(
            request_id=request_id or new_request_id(),
            name=name,
            purpose=purpose,
            subjects=list(subjects),
        )
        response = self._transport.unary(self._ledger.ReadPersonalData, request)
        return (
            CommandResult.from_proto(response.result),
            [DataSubject.from_proto(s) for s in response.subjects],
        )

    def find_personal_data(
        self, purpose: str, *, phone: str = "", nik: str = "", request_id: str | None = None
    ) -> list[DataSubject]:
        """Subject access: the person with this phone or NIK in every incident naming them,
        with their data and every recorded read of it."""
        request = api.FindPersonalDataRequest(
            request_id=request_id or new_request_id(), phone=phone, nik=nik, purpose=purpose
        )
        response = self._transport.unary(self._ledger.FindPersonalData, request)
        return [DataSubject.from_proto(s) for s in response.subjects]

    def erase_personal_data(
        self,
        name: str,
        legal_basis: str,
        *,
        subjects: Sequence[str] = (),
        everyone: bool = False,
        expected_version: int = 0,
        request_id: str | None = None,
    ) -> CommandResult:
        """Erase the data of ``subjects`` (their ids, as ``Incident.data_subjects`` gives
        them) by destroying their keys, or of everyone the incident names with
        ``everyone=True``; one of the two is required (``ValueError`` otherwise: an erasure
        cannot be undone, and a forgotten ``subjects`` erased everyone). Refused
        (FailedPrecondition, ``LEGAL_HOLD``) under a legal hold."""
        if bool(subjects) == everyone:
            raise ValueError(
                "say whose data to erase: subjects=[...] or everyone=True, not both"
                if everyone
                else "say whose data to erase: subjects=[...] (Incident.data_subjects), or "
                "everyone=True for everyone the incident names"
            )
        return self._command(
            self._ledger.ErasePersonalData,
            api.ErasePersonalDataRequest,
            request_id=request_id,
            occur_time=None,
            correlation_id="",
            name=name,
            expected_version=expected_version,
            subjects=list(subjects),
            legal_basis=legal_basis,
            everyone=everyone,
        )

    def place_legal_hold(
        self, name: str, reason: str, *, request_id: str | None = None
    ) -> CommandResult:
        """Block erasure of the incident's personal data (law enforcement, Bawaslu)."""
        return self._command(
            self._ledger.PlaceLegalHold,
            api.PlaceLegalHoldRequest,
            request_id=request_id,
            occur_time=None,
            correlation_id="",
            name=name,
            reason=reason,
        )

    def lift_legal_hold(
        self, name: str, reason: str, *, request_id: str | None = None
    ) -> CommandResult:
        """Lift the caller's agency's legal hold."""
        return self._command(
            self._ledger.LiftLegalHold,
            api.LiftLegalHoldRequest,
            request_id=request_id,
            occur_time=None,
            correlation_id="",
            name=name,
            reason=reason,
        )

    def personal_data_accesses(self, name: str, *, page_size: int = 0) -> PersonalDataRecord:
        """Who read the incident's personal data, when and why (every page of it, oldest
        first); its people and holds (as the first page says them)."""
        first: list[api.ListPersonalDataAccessesResponse] = []

        def fetch(token: str) -> tuple[list[PersonalDataAccess], str]:
            page = self._transport.unary(
                self._ledger.ListPersonalDataAccesses,
                api.ListPersonalDataAccessesRequest(
                    name=name, page_size=page_size, page_token=token
                ),
            )
            if not first:
                first.append(page)
            return [PersonalDataAccess.from_proto(a) for a in page.accesses], page.next_page_token

        accesses = tuple(paginate(fetch))
        return PersonalDataRecord(
            accesses=accesses,
            subjects=tuple(DataSubject.from_proto(s) for s in first[0].subjects),
            legal_holds=tuple(LegalHold(h.agency, h.reason) for h in first[0].legal_holds),
            erasures=tuple(PersonalDataErasure.from_proto(e) for e in first[0].erasures),
        )

    # ------------------------------------------------------------------------- queries

    def get_incident(
        self,
        name: str = "",
        *,
        reference: str = "",
        as_of_time: datetime | None = None,
        as_of_position: int = 0,
    ) -> Incident:
        """An incident now, or as it stood at a past time or global position; by its name,
        or by its ``reference`` code (``"MKM-7QK3-9V"``: a mistyped code raises
        :class:`~incidentledger_client.errors.InvalidArgument`, reason
        ``REFERENCE_MISTYPED``; one no incident has,
        :class:`~incidentledger_client.errors.IncidentNotFound`).

        >>> ledger.get_incident(reference="mkm 7qk3 9v").name  # doctest: +SKIP
        """
        request = api.GetIncidentRequest(
            name=name, reference=reference, as_of_position=as_of_position
        )
        if as_of_time is not None:
            request.as_of_time.CopyFrom(to_timestamp(as_of_time))
        return Incident.from_proto(
            self._transport.unary(self._ledger.GetIncident, request).incident
        )

    def list_incidents(
        self,
        filter: str = "",
        *,
        page_size: int = 0,
        min_position: int = 0,
        as_of_time: datetime | None = None,
        newest_first: bool = False,
    ) -> Iterator[Incident]:
        """Every incident matching an AIP-160 ``filter``, in report order, page after page
        (``newest_first``: the newest report first, ``order_by = "create_time desc"``).

        ``min_position`` (a command's ``result.position``) makes the list include that
        write. Pages are fetched lazily, as the iterator is consumed: newest first, taking
        the first n reads only the pages that hold them.

        >>> for incident in ledger.list_incidents('status = "ASSIGNED" AND kecamatan = "ipuh"'):
        ...     print(incident.name, incident.lead_agency)  # doctest: +SKIP
        """

        def fetch(token: str) -> tuple[tuple[Incident, ...], str]:
            page = self.list_incidents_page(
                filter,
                page_size=page_size,
                page_token=token,
                min_position=min_position,
                as_of_time=as_of_time,
                newest_first=newest_first,
            )
            return page.incidents, page.next_page_token

        return paginate(fetch)

    def list_incidents_page(
        self,
        filter: str = "",
        *,
        page_size: int = 0,
        page_token: str = "",
        min_position: int = 0,
        as_of_time: datetime | None = None,
        newest_first: bool = False,
    ) -> IncidentPage:
        """One page of :meth:`list_incidents`: at most ``page_size`` incidents (the ledger's
        default 50, at most 500; fewer when the page would pass 2 MiB) from where
        ``page_token`` (a previous page's ``next_page_token``, sent with the same ``filter``,
        order and ``as_of_time``) left off, and the token of the page after it, "" when no
        more incidents match."""
        request = api.ListIncidentsRequest(
            filter=filter,
            page_size=page_size,
            page_token=page_token,
            min_position=min_position,
            order_by="create_time desc" if newest_first else "",
        )
        if as_of_time is not None:
            request.as_of_time.CopyFrom(to_timestamp(as_of_time))
        page = self._transport.unary(self._ledger.ListIncidents, request)
        return IncidentPage(
            tuple(Incident.from_proto(i) for i in page.incidents), page.next_page_token
        )

    def incident_events(self, name: str, *, page_size: int = 0) -> Iterator[IncidentEvent]:
        """An incident's events, oldest first, page after page."""

        def fetch(token: str) -> tuple[list[IncidentEvent], str]:
            request = api.ListIncidentEventsRequest(
                parent=name, page_size=page_size, page_token=token
            )
            page = self._transport.unary(self._ledger.ListIncidentEvents, request)
            return [IncidentEvent.from_proto(e) for e in page.events], page.next_page_token

        return paginate(fetch)

    def reference_data(self) -> ReferenceData:
        """Agencies with roles, kecamatan with desa, categories with IKP dimension, severities."""
        response = self._transport.unary(
            self._ledger.GetReferenceData, api.GetReferenceDataRequest()
        )
        return ReferenceData.from_proto(response)

    # ----------------------------------------------------------------------- situation

    def vulnerability_map(
        self, time: datetime | None = None, *, min_position: int = 0
    ) -> VulnerabilityMap:
        """Score, band and reasons per kecamatan, now or at a past ``time``."""
        request = situation_pb.GetVulnerabilityMapRequest(min_position=min_position)
        if time is not None:
            request.time.CopyFrom(to_timestamp(time))
        response = self._transport.unary(self._situation.GetVulnerabilityMap, request)
        return VulnerabilityMap.from_proto(response)

    def decisions_in_force(
        self,
        time: datetime | None = None,
        kecamatan: str | None = None,
        *,
        min_position: int = 0,
    ) -> list[DecisionInForce]:
        """Decisions whose validity window covers ``time`` (default now), by kecamatan:
        every page of them (a page ends before 2 MiB)."""
        request = situation_pb.ListDecisionsInForceRequest(
            kecamatan=kecamatan or "", min_position=min_position
        )
        if time is not None:
            request.time.CopyFrom(to_timestamp(time))

        def fetch(token: str) -> tuple[list[DecisionInForce], str]:
            request.page_token = token
            page = self._transport.unary(self._situation.ListDecisionsInForce, request)
            return [DecisionInForce.from_proto(d) for d in page.decisions], page.next_page_token

        return list(paginate(fetch))

    def workload(self, *, min_position: int = 0) -> list[AgencyWorkload]:
        """Open, unacknowledged and overdue incidents per agency."""
        request = situation_pb.GetAgencyWorkloadRequest(min_position=min_position)
        response = self._transport.unary(self._situation.GetAgencyWorkload, request)
        return [AgencyWorkload.from_proto(a) for a in response.agencies]

    def response_times(
        self, group_by: ResponseTimeGrouping = "agency", *, min_position: int = 0
    ) -> list[ResponseTimes]:
        """Median and p90 time to acknowledge, verify and resolve, by agency, severity, category
        or kecamatan; each figure with its sample size (``count``: 0 means no data)."""
        if group_by not in _GROUPINGS:
            raise ValueError(f"group_by must be one of {sorted(_GROUPINGS)}, got {group_by!r}")
        request = situation_pb.GetResponseTimesRequest(
            group_by=_GROUPINGS[group_by], min_position=min_position
        )
        response = self._transport.unary(self._situation.GetResponseTimes, request)
        return [ResponseTimes.from_proto(g) for g in response.groups]

    def projection_status(self) -> ProjectionStatus:
        """How far the projections are behind the ledger."""
        response = self._transport.unary(
            self._situation.GetProjectionStatus, situation_pb.GetProjectionStatusRequest()
        )
        return ProjectionStatus.from_proto(response)

    # --------------------------------------------------------------------------- audit

    def history(
        self,
        after: int = 0,
        until: int = 0,
        *,
        incident: str | None = None,
        agency: str | None = None,
        kecamatan: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        timeout: float | None = None,
    ) -> Iterator[IncidentEvent]:
        """The history in log order, positions in ``(after, until]`` (``until`` 0 = the end).

        A flow-controlled server stream: it is not retried, and has no deadline unless
        ``timeout`` is given. Filters combine with AND; ``[start, end)`` is on record time.

        >>> for event in ledger.history(incident=name):  # doctest: +SKIP
        ...     print(event.position, event.type, event.actor.agency)
        """
        request = audit_pb.StreamEventsRequest(
            after_position=after,
            until_position=until,
            incident=incident or "",
            agency=agency or "",
            kecamatan=kecamatan or "",
        )
        if start is not None:
            request.start_time.CopyFrom(to_timestamp(start))
        if end is not None:
            request.end_time.CopyFrom(to_timestamp(end))
        return self._stream_history(request, timeout)

    def _stream_history(
        self, request: audit_pb.StreamEventsRequest, timeout: float | None
    ) -> Iterator[IncidentEvent]:
        call = self._audit.StreamEvents(request, timeout=timeout, metadata=self._transport.metadata)
        try:
            for response in call:
                yield IncidentEvent.from_proto(response.event)
        except grpc.RpcError as error:
            raise self._transport.certificate_failure(error) or from_rpc_error(error) from None
        finally:
            call.cancel()  # type: ignore[no-untyped-call]

    def verify_ledger(self) -> VerifyReport:
        """Recompute every hash chain and check the checkpoints (coordinator and auditors).

        (Named ``verify_ledger`` because :meth:`verify` verifies an incident.)
        """
        response = self._transport.unary(self._audit.VerifyLedger, audit_pb.VerifyLedgerRequest())
        return VerifyReport.from_proto(response)

    def stream_verify_ledger(
        self, *, timeout: float | None = None
    ) -> Iterator[VerifyProgress | VerifyReport]:
        """:meth:`verify_ledger` as it goes: :class:`VerifyProgress` items (a few a second
        at most), then the :class:`VerifyReport`, the last item.

        A server stream: it is not retried, and has no deadline unless ``timeout`` is given.

        >>> for item in ledger.stream_verify_ledger():  # doctest: +SKIP
        ...     if isinstance(item, VerifyProgress):
        ...         print(f"{item.position}/{item.ledger_position}")
        """
        call = self._audit.StreamVerifyLedger(
            audit_pb.StreamVerifyLedgerRequest(),
            timeout=timeout,
            metadata=self._transport.metadata,
        )
        try:
            for response in call:
                if response.HasField("result"):
                    yield VerifyReport.from_proto(response.result)
                else:
                    yield VerifyProgress.from_proto(response.progress)
        except grpc.RpcError as error:
            raise self._transport.certificate_failure(error) or from_rpc_error(error) from None
        finally:
            call.cancel()  # type: ignore[no-untyped-call]

    def create_checkpoint(self) -> Checkpoint:
        """Write a signed checkpoint now (coordinator and auditors)."""
        response = self._transport.unary(
            self._audit.CreateCheckpoint, audit_pb.CreateCheckpointRequest()
        )
        return Checkpoint.from_proto(response.checkpoint)

    def checkpoints(self, *, page_size: int = 0) -> Iterator[Checkpoint]:
        """The signed checkpoints, oldest first, page after page."""

        def fetch(token: str) -> tuple[list[Checkpoint], str]:
            request = audit_pb.ListCheckpointsRequest(page_size=page_size, page_token=token)
            page = self._transport.unary(self._audit.ListCheckpoints, request)
            return [Checkpoint.from_proto(c) for c in page.checkpoints], page.next_page_token

        return paginate(fetch)

    # --- evidence (EvidenceService) ---------------------------------------------------

    def attach_evidence(
        self,
        incident: str,
        path: str | Path,
        *,
        description: str = "",
        media_type: str = "",
        file_name: str | None = None,
        request_id: str | None = None,
        occur_time: datetime | None = None,
        correlation_id: str = "",
        progress: TransferProgress | None = None,
        timeout: float | None = None,
    ) -> tuple[CommandResult, Evidence]:
        """Attach the file at ``path`` to ``incident``, streamed from disk in chunks.

        The ledger sniffs the media type from the content (``media_type``, when given, must
        be that one). A retryable failure (UNAVAILABLE, DEADLINE_EXCEEDED) sends the file
        again with the same request id: the ledger records it once. ``progress`` is told
        the bytes sent so far and the file's size. ``timeout``: the deadline of each
        attempt (none by default: a large file on a slow link takes long).
        """
        source = Path(path)
        size = source.stat().st_size
        header = evidence_pb.EvidenceHeader(
            request_id=request_id or new_request_id(),
            name=incident,
            file_name=file_name if file_name is not None else source.name,
            media_type=media_type,
            description=description,
            correlation_id=correlation_id,
            # Declared, so that the ledger never takes a stream cut short for the file.
            size_bytes=size,
        )
        if occur_time is not None:
            header.occur_time.CopyFrom(to_timestamp(occur_time))

        def messages() -> Iterator[evidence_pb.UploadEvidenceRequest]:
            yield evidence_pb.UploadEvidenceRequest(header=header)
            sent = 0
            with source.open("rb") as file:
                while chunk := file.read(UPLOAD_CHUNK_BYTES):
                    yield evidence_pb.UploadEvidenceRequest(chunk=chunk)
                    sent += len(chunk)
                    if progress is not None:
                        progress(sent, size)

        def attempt() -> evidence_pb.UploadEvidenceResponse:
            response: evidence_pb.UploadEvidenceResponse = self._evidence.UploadEvidence(
                messages(), timeout=timeout, metadata=self._transport.metadata
            )
            return response

        response = self._transport.retrying(attempt, header.request_id, transfer=True)
        return CommandResult.from_proto(response.result), Evidence.from_proto(response.evidence)

    def download_evidence(
        self,
        name: str,
        path: str | Path,
        *,
        progress: TransferProgress | None = None,
        timeout: float | None = None,
    ) -> Evidence:
        """Write the evidence ``name`` (``incidents/{id}/evidence/{event_id}``) to ``path``,
        chunk by chunk; the bytes are checked against the recorded SHA-256 and size before
        the file takes its name (a ``.part`` file until then, removed on failure). The
        ledger records the download. A download the ledger could not serve (``UNAVAILABLE``:
        its evidence store or spool away, a replica restarting) starts again from the first
        byte, within the client's retry budget, as other calls are retried; each attempt
        the ledger served is recorded."""
        target = Path(path)
        # Beside the target (the rename stays on its file system), under a short name of its
        # own: the target's name and ".part" could pass the file system's 255 bytes.
        partial = target.with_name(f".{uuid.uuid4().hex[:16]}.part")
        request = evidence_pb.DownloadEvidenceRequest(name=name)

        def attempt() -> Evidence:
            # The file opened before the call: a folder that cannot be written fails here,
            # not after the ledger recorded a download that produced no file.
            with partial.open("wb") as out:
                call = self._evidence.DownloadEvidence(
                    request, timeout=timeout, metadata=self._transport.metadata
                )
                try:
                    evidence = _received(call, out, name, progress)
                finally:
                    call.cancel()  # type: ignore[no-untyped-call]
            partial.replace(target)
            return evidence

        try:
            return self._transport.retrying(attempt, transfer=True)
        finally:
            partial.unlink(missing_ok=True)

    def list_evidence(self, incident: str, *, page_size: int = 0) -> list[Evidence]:
        """The evidence attached to ``incident``, oldest first: every page."""

        def fetch(token: str) -> tuple[list[Evidence], str]:
            request = evidence_pb.ListEvidenceRequest(
                parent=incident, page_size=page_size, page_token=token
            )
            page = self._transport.unary(self._evidence.ListEvidence, request)
            return [Evidence.from_proto(e) for e in page.evidence], page.next_page_token

        return list(paginate(fetch))

    def evidence_downloads(self, incident: str, *, page_size: int = 0) -> list[EvidenceDownload]:
        """Who downloaded which evidence of ``incident``, and when (auditors, coordinator),
        oldest first: every page."""

        def fetch(token: str) -> tuple[list[EvidenceDownload], str]:
            request = evidence_pb.ListEvidenceDownloadsRequest(
                parent=incident, page_size=page_size, page_token=token
            )
            page = self._transport.unary(self._evidence.ListEvidenceDownloads, request)
            return [EvidenceDownload.from_proto(d) for d in page.downloads], page.next_page_token

        return list(paginate(fetch))

    def verify_evidence(self, *, timeout: float = 3600.0) -> EvidenceReport:
        """Deep verification (coordinator and auditors): the ledger re-reads every evidence
        file from its object store and checks digest and size. It reads every file in
        full: ``timeout`` (seconds) is long by default."""
        response = self._transport.unary(
            self._evidence.VerifyEvidence, evidence_pb.VerifyEvidenceRequest(), timeout=timeout
        )
        return EvidenceReport.from_proto(response)


def _received(
    call: Iterable[Any], out: IO[bytes], name: str, progress: TransferProgress | None
) -> Evidence:
    """A download's bytes written to ``out``, checked against what the ledger recorded."""
    evidence: Evidence | None = None
    digest = hashlib.sha256()
    received = 0
    for response in call:
        if response.HasField("evidence"):
            evidence = Evidence.from_proto(response.evidence)
            continue
        out.write(response.chunk)
        digest.update(response.chunk)
        received += len(response.chunk)
        if progress is not None:
            progress(received, evidence.size_bytes if evidence else 0)
    if evidence is None or (digest.hexdigest(), received) != (
        evidence.sha256,
        evidence.size_bytes,
    ):
        raise DataLoss(
            "DATA_LOSS",
            "EVIDENCE_CHANGED",
            f"the bytes received for {name} are not the recorded ones",
        )
    return evidence

"""EvidenceService: translates the evidence RPCs to :class:`EvidenceService` calls and back.

An upload's first message is its header and every later one a chunk; the servicer only
splits them and hands the chunks on as they arrive (the application streams them into the
object store).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from uuid import UUID

import grpc
import structlog
from typing_extensions import override

from incidentledger.v1 import evidence_service_pb2 as api
from incidentledger.v1 import evidence_service_pb2_grpc as api_grpc
from incidentledger.v1 import incident_pb2 as pb
from services.common.errors import Cancelled, InvalidArgument, Unavailable
from services.common.grpc_server import current_principal
from services.common.pagetoken import PageTokens, page_of
from services.common.reference import ReferenceData, Role
from services.ledger import wire
from services.ledger.api.servicer import DEFAULT_PAGE, MAX_PAGE, page_size
from services.ledger.audit.evidence_check import EvidenceReport
from services.ledger.domain.incident import Actor, Envelope
from services.ledger.evidence import (
    AttachedEvidence,
    DownloadCursor,
    EvidenceService,
    UploadHeader,
)

_EVIDENCE_PART = "/evidence/"


def evidence_name(incident_id: UUID, event_id: UUID) -> str:
    return f"{wire.incident_name(incident_id)}{_EVIDENCE_PART}{event_id}"


def parse_evidence_name(name: str, field: str = "name") -> tuple[UUID, UUID]:
    """The incident and event ids of ``incidents/{id}/evidence/{event_id}``."""
    incident, part, event = name.partition(_EVIDENCE_PART)
    if not part:
        raise InvalidArgument(
            field, f"must look like 'incidents/{{id}}/evidence/{{event_id}}', got {name[:80]!r}"
        )
    return wire.parse_name(incident, field), wire.parse_event_id(event, field)


def evidence_to_proto(attached: AttachedEvidence) -> api.Evidence:
    evidence = attached.evidence
    return api.Evidence(
        name=evidence_name(attached.incident_id, evidence.event_id),
        sha256=evidence.file.sha256,
        size_bytes=evidence.file.size_bytes,
        media_type=evidence.file.media_type,
        file_name=evidence.file_name,
        description=attached.description,
        uploader=pb.Actor(agency=evidence.agency, officer=evidence.officer),
        attach_time=wire.timestamp(evidence.attached_at),
        superseded_by=(
            evidence_name(attached.incident_id, attached.superseded_by)
            if attached.superseded_by
            else ""
        ),
    )


AUDIT_ROLES = {Role.COORDINATOR, Role.AUDITOR}


class EvidenceServicer(api_grpc.EvidenceServiceServicer):
    def __init__(
        self,
        evidence: EvidenceService | None,
        reference: ReferenceData,
        page_tokens: PageTokens,
        verify: Callable[[], EvidenceReport] | None = None,
    ) -> None:
        self._evidence = evidence
        self._reference = reference
        self._tokens = page_tokens
        self._verify = verify

    def _service(self) -> EvidenceService:
        if self._evidence is None:
            raise Unavailable(
                "evidence needs the ledger's NATS (NATS_URL is not set)",
                reason="EVIDENCE_STORE_UNAVAILABLE",
            )
        return self._evidence

    def _actor(self) -> Actor:
        principal = current_principal()
        role = self._reference.agencies[principal.agency].role
        return Actor(principal.agency, principal.officer, role)

    @override
    def UploadEvidence(
        self, request_iterator: Iterator[api.UploadEvidenceRequest], context: grpc.ServicerContext
    ) -> api.UploadEvidenceResponse:
        service = self._service()
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument("header", "the first message of an upload is its header")
        header = first.header
        # The interceptor saw no request id (a stream has none before its first message).
        structlog.contextvars.bind_contextvars(request_id=header.request_id[:128] or None)
        envelope = Envelope(
            actor=self._actor(),
            request_id=header.request_id,
            correlation_id=header.correlation_id or header.request_id,
            causation_id=header.request_id,
            occurred_at=wire.optional_time(header, "occur_time"),
        )
        upload = UploadHeader(
            incident_id=wire.parse_name(header.name),
            file_name=header.file_name,
            declared_media_type=header.media_type,
            description=header.description,
            declared_size=header.size_bytes,
        )
        chunks = _chunks(request_iterator, context)
        result, attached = service.upload(
            envelope, upload, chunks, gone=lambda: not context.is_active()
        )
        return api.UploadEvidenceResponse(
            result=wire.result_to_proto(result), evidence=evidence_to_proto(attached)
        )

    @override
    def DownloadEvidence(
        self, request: api.DownloadEvidenceRequest, context: grpc.ServicerContext
    ) -> Iterator[api.DownloadEvidenceResponse]:
        incident_id, event_id = parse_evidence_name(request.name)
        attached, chunks = self._service().download(self._actor(), incident_id, event_id)
        yield api.DownloadEvidenceResponse(evidence=evidence_to_proto(attached))
        for chunk in chunks:
            yield api.DownloadEvidenceResponse(chunk=chunk)

    @override
    def ListEvidence(
        self, request: api.ListEvidenceRequest, context: grpc.ServicerContext
    ) -> api.ListEvidenceResponse:
        incident_id = wire.parse_name(request.parent, "parent")
        service, actor = self._service(), self._actor()
        found, next_token = page_of(
            self._tokens,
            f"evidence?parent={request.parent}",
            request.page_token,
            page_size(request.page_size, DEFAULT_PAGE, MAX_PAGE),
            lambda after, limit: service.attached(actor, incident_id, int(after), limit),
            lambda item: item[0],
            0,
        )
        return api.ListEvidenceResponse(
            evidence=[evidence_to_proto(a) for _, a in found], next_page_token=next_token
        )

    @override
    def ListEvidenceDownloads(
        self, request: api.ListEvidenceDownloadsRequest, context: grpc.ServicerContext
    ) -> api.ListEvidenceDownloadsResponse:
        incident_id = wire.parse_name(request.parent, "parent")
        service, actor = self._service(), self._actor()
        downloads, next_token = page_of(
            self._tokens,
            f"evidence-downloads?parent={request.parent}",
            request.page_token,
            page_size(request.page_size, DEFAULT_PAGE, MAX_PAGE),
            lambda after, limit: service.downloads(
                actor, incident_id, _download_cursor(after), limit
            ),
            lambda download: list(download.cursor),
            None,
        )
        return api.ListEvidenceDownloadsResponse(
            next_page_token=next_token,
            downloads=[
                api.EvidenceDownload(
                    evidence=evidence_name(d.incident_id, d.event_id),
                    actor=pb.Actor(agency=d.agency, officer=d.officer),
                    download_time=wire.timestamp(d.downloaded_at),
                )
                for d in downloads
            ],
        )

    @override
    def VerifyEvidence(
        self, request: api.VerifyEvidenceRequest, context: grpc.ServicerContext
    ) -> api.VerifyEvidenceResponse:
        self._reference.require_role(current_principal().agency, AUDIT_ROLES, "verify the evidence")
        self._service()  # UNAVAILABLE without the object store
        if self._verify is None:
            raise Unavailable(
                "evidence needs the ledger's NATS (NATS_URL is not set)",
                reason="EVIDENCE_STORE_UNAVAILABLE",
            )
        report = self._verify()
        return api.VerifyEvidenceResponse(
            ok=report.ok,
            evidence=report.evidence,
            objects=report.objects,
            bytes_read=report.bytes_read,
            problems=[
                api.EvidenceProblem(
                    evidence=f"{p.incident}/evidence/{p.event_id}",
                    position=p.position,
                    object=p.object,
                    problem=p.problem,
                    expected_sha256=p.expected_sha256,
                    expected_size_bytes=p.expected_size,
                    found_sha256=p.found_sha256,
                    found_size_bytes=p.found_size,
                )
                for p in report.problems
            ],
        )


def _download_cursor(value: object) -> DownloadCursor | None:
    """The cursor a page token carries (checked: the token is signed, but old or odd)."""
    if value is None:
        return None
    if isinstance(value, list) and len(value) == 4 and all(isinstance(v, str) for v in value):
        return (value[0], value[1], value[2], value[3])
    raise InvalidArgument("page_token", "is not a valid page token")


def _chunks(
    requests: Iterator[api.UploadEvidenceRequest], context: grpc.ServicerContext
) -> Iterator[bytes]:
    try:
        for request in requests:
            if request.WhichOneof("part") != "chunk":
                raise InvalidArgument("header", "only the first message of an upload is a header")
            yield request.chunk
    except grpc.RpcError:
        if context.is_active():
            raise
    else:
        # A client that dies may close its connection as if its stream had ended: when its
        # call is known cancelled by now, the bytes are not the file. (Not always known
        # yet: the header's declared size is what tells them apart for certain.)
        if context.is_active():
            return
    # The uploader went away half way: what it sent is dropped, not a fault here.
    raise Cancelled("the upload was cancelled before its last chunk", reason="UPLOAD_CANCELLED")

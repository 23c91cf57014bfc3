"""Evidence: uploads checked and stored before their event, downloads recorded.

An upload (:meth:`EvidenceService.upload`) is checked before its bytes are taken (the
command's texts and ids, the incident's involvement rule), then goes into the object store
as it arrives (:meth:`EvidenceObjects.put_chunks`), each chunk checked on the way: its
size, the size so far against the limit, and the media type sniffed from the first bytes.
Only once the object store holds the complete file under its content address, with the
size and digest computed here, is the ``UploadEvidence`` command executed: the
``EvidenceAttached`` event is the last step. An upload refused or cut short half way leaves
no event and, its chunks purged, no object (after a kill of the ledger: an object no event
names, which the ledger's sweep deletes once past its grace period:
services/ledger/evidence_sweep.py). One whose event is refused once its bytes are stored
(another upload under the same request id recorded first) deletes the object it created,
unless another upload of the same bytes found it meanwhile.

A download (:meth:`EvidenceService.download`) reads the object back into a spool file in
the ledger's data directory, checks it against the event's digest and size before the
first byte goes out, records who fetched it (the ``evidence_downloads`` table beside the
event store) and then streams it. Spool files a kill left behind are removed at the next
start (:func:`clear_spool`).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol
from uuid import UUID

import structlog

from services.common.datafiles import make_private_dir
from services.common.errors import (
    Cancelled,
    DataLoss,
    InvalidArgument,
    LedgerError,
    Unavailable,
)
from services.common.sql import Database
from services.ledger.application import CommandResult, Ledger
from services.ledger.domain.evidence import (
    MAX_CHUNK_BYTES,
    SNIFF_BYTES,
    EvidencePolicy,
    UploadEvidence,
    check_chunk,
    check_declared_size,
    object_name,
    sniff_media_type,
)
from services.ledger.domain.incident import Actor, Envelope, Evidence, Incident
from services.ledger.evidence_store import (
    HashingSink,
    ListedObject,
    ObjectChangedError,
    SinkWriteError,
    StoredObject,
)

log = structlog.get_logger(__name__)

SPOOL_SUFFIX = ".part"


class Objects(Protocol):
    """The object store, as the evidence needs it (services/ledger/evidence_store.py)."""

    def put_chunks(self, pieces: Iterator[bytes]) -> StoredObject: ...

    def read_into(self, name: str, sink: HashingSink) -> StoredObject | None: ...

    def delete_unchanged(self, listed: ListedObject) -> bool: ...

    @property
    def stopping(self) -> bool: ...


#: The codes of refusals that record nothing, for certain (an outage's UNAVAILABLE or an
#: INTERNAL may come after the event was recorded all the same).
REFUSALS = frozenset(
    {
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "FAILED_PRECONDITION",
        "ABORTED",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "CANCELLED",
    }
)


def cut_by_stop() -> Unavailable:
    """An upload the ledger's stop cut short (its grace period over with the upload going
    on): not the caller's fault, and nothing of it kept."""
    return Unavailable(
        "the ledger is stopping and cut the upload short; nothing of it was kept: "
        "send it again (the same request id), to another replica or once this one is back",
        reason="SHUTTING_DOWN",
    )


@dataclass
class _Tally:
    """What an upload's checks found so far: its size, SHA-256 and media type."""

    size: int = 0
    media_type: str = ""
    digest: Any = field(default_factory=hashlib.sha256)

    @property
    def sha256(self) -> str:
        return str(self.digest.hexdigest())


@dataclass(frozen=True)
class UploadHeader:
    """The first message of an upload, as the ledger takes it."""

    incident_id: UUID
    file_name: str
    declared_media_type: str
    description: str
    #: The file's size as the uploader declared it; 0: not declared.
    declared_size: int = 0


@dataclass(frozen=True)
class AttachedEvidence:
    """Evidence as it stands: its corrected description and what supersedes it."""

    incident_id: UUID
    evidence: Evidence
    description: str
    superseded_by: UUID | None

    @classmethod
    def of(cls, incident: Incident, evidence: Evidence) -> AttachedEvidence:
        values = incident.event_values[evidence.event_id]
        superseded = values.get("superseded_by", "")
        return cls(
            incident.id,
            evidence,
            values.get("description", ""),
            UUID(superseded) if superseded else None,
        )


#: A download's place in the order of downloads: its time as stored, evidence, agency and
#: officer.
DownloadCursor = tuple[str, str, str, str]


def _stored_time(value: datetime) -> str:
    """A download's time as the table holds it (and orders it: one format throughout)."""
    return value.isoformat(timespec="microseconds")


@dataclass(frozen=True)
class Download:
    """One recorded download."""

    incident_id: UUID
    event_id: UUID
    agency: str
    officer: str
    downloaded_at: datetime

    @property
    def cursor(self) -> DownloadCursor:
        return (_stored_time(self.downloaded_at), str(self.event_id), self.agency, self.officer)


def clear_spool(spool_dir: Path) -> None:
    """Remove the spool files of downloads a kill cut short.

    A directory that cannot be made or cleared (a read-only or full disk) does not stop the
    ledger: one warning, and each download answers ``EVIDENCE_SPOOL_UNAVAILABLE`` until the
    data directory takes files (commands, queries and uploads need no local disk)."""
    try:
        # Its missing parents (the data directory itself, on a first start) private too.
        make_private_dir(spool_dir)
        for leftover in spool_dir.glob(f"*{SPOOL_SUFFIX}"):
            leftover.unlink(missing_ok=True)
            log.info("evidence.spool_cleared", file=leftover.name)
    except OSError as error:
        log.warning(
            "evidence.spool_unavailable",
            directory=str(spool_dir),
            error=f"{type(error).__name__}: {error}",
            hint="downloads of evidence fail until LEDGER_DATA_DIR is a writable directory",
        )


def create_downloads_table(db: Database) -> None:
    with db.transaction() as cur:
        cur.execute(
            "CREATE TABLE IF NOT EXISTS evidence_downloads ("
            "incident TEXT NOT NULL, event_id TEXT NOT NULL, agency TEXT NOT NULL, "
            "officer TEXT NOT NULL, downloaded_at TEXT NOT NULL)"
        )


class EvidenceService:
    """Uploads, downloads and lists of evidence; the rules are the incident's."""

    def __init__(
        self,
        ledger: Ledger,
        objects: Objects,
        policy: EvidencePolicy,
        spool_dir: Path,
        db: Database,
    ) -> None:
        self._ledger = ledger
        self._objects = objects
        self._policy = policy
        self._spool = spool_dir
        self._db = db

    # ------------------------------------------------------------------ upload

    def upload(
        self,
        envelope: Envelope,
        header: UploadHeader,
        chunks: Iterable[bytes],
        gone: Callable[[], bool] = lambda: False,
    ) -> tuple[CommandResult, AttachedEvidence]:
        """Take the file, store it, then record its event (see the module's docstring).

        ``gone`` says whether the uploader has gone away (its call cancelled): asked once
        the bytes are stored, before the event, as a dying uploader's stream may end like a
        finished one and its cancellation be known only a moment later. The object so left
        is one no event names, which the sweep deletes."""
        placeholder = UploadEvidence(
            header.incident_id, 0, "", 0, "", header.file_name, header.description
        )
        self._ledger.check_ahead(envelope, placeholder)
        self._ledger.get_incident(header.incident_id).check_attach(envelope)
        tally = _Tally()
        checked = self._checked(header, self._unless_stopped(iter(chunks)), tally)
        stored: StoredObject | None = None
        try:
            if self._ledger.request_recorded(envelope):
                # Its request id was recorded: the command answers that result, or refuses
                # the id reused for another file (REQUEST_ID_REUSED). Either way these bytes
                # are only checked and hashed, never stored: a refused file left an object
                # no event names until the sweep, and the recorded one is stored (its event
                # names it: no sweep takes it).
                for _chunk in checked:
                    pass
            else:
                stored = self._objects.put_chunks(checked)
        except Unavailable:
            if self._objects.stopping:  # its call ended by the stop, after the grace period
                raise cut_by_stop() from None
            raise
        if stored is not None and (stored.sha256, stored.size_bytes) != (tally.sha256, tally.size):
            # The name is the content's address: anything else there was changed.
            raise DataLoss(
                f"the evidence store holds other bytes under {object_name(tally.sha256)}",
                reason="EVIDENCE_CHANGED",
                metadata={"object": object_name(tally.sha256)},
            )
        command = UploadEvidence(
            header.incident_id,
            0,
            tally.sha256,
            tally.size,
            tally.media_type,
            header.file_name,
            header.description,
        )
        if gone():
            ended: LedgerError = (
                cut_by_stop()
                if self._objects.stopping
                else Cancelled(
                    "the upload was cancelled before its last chunk", reason="UPLOAD_CANCELLED"
                )
            )
            self._discard(stored, ended)
            raise ended
        try:
            result = self._ledger.execute(envelope, command)
        except LedgerError as error:
            if error.code in REFUSALS:  # nothing recorded: the object is no event's
                self._discard(stored, error)
            raise
        incident = self._ledger.get_incident(header.incident_id)
        attached = AttachedEvidence.of(incident, incident.evidence_item(result.event_id))
        if result.replayed:
            # A retry of an upload recorded before: its answer again, nothing recorded now.
            log.info("evidence.upload_replayed", event_id=str(result.event_id), sha256=tally.sha256)
        else:
            log.info(
                "evidence.attached",
                event_id=str(result.event_id),
                sha256=tally.sha256,
                size=tally.size,
                media_type=tally.media_type,
            )
        return result, attached

    def _discard(self, stored: StoredObject | None, error: LedgerError) -> None:
        """Delete the object this upload created, its event refused (another upload under
        the same request id recorded first: REQUEST_ID_REUSED) or never to come: no event
        names it, and none will. Only as this upload created it: should another upload of
        the same bytes have found it meanwhile (its time rewritten, see
        services/ledger/evidence_store.py), it stays for that one's event. A deletion that
        fails (NATS away, the ledger stopping) leaves it to the sweep."""
        created = stored.created if stored is not None else None
        if created is None:  # nothing stored, or the bytes were there before
            return
        try:
            deleted = self._objects.delete_unchanged(created)
        except Unavailable as failure:
            log.warning("evidence.discard_failed", object=created.name, error=failure.message)
            return
        log.info("evidence.discarded", object=created.name, reason=error.reason, deleted=deleted)

    def _unless_stopped(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """The chunks; the upload cut by the stop (UNAVAILABLE, to be sent again) when its
        stream ended, or was cancelled, once the ledger's grace period was over: gRPC ends
        the calls still open then, and a stream so ended is not the file."""
        try:
            yield from chunks
        except Cancelled:
            if self._objects.stopping:
                raise cut_by_stop() from None
            raise
        if self._objects.stopping:
            raise cut_by_stop()

    def _checked(
        self, header: UploadHeader, chunks: Iterator[bytes], tally: _Tally
    ) -> Iterator[bytes]:
        """The chunks as they come, each checked (its size, the size so far against the
        limit, the media type once the first bytes are in) and counted into ``tally``; the
        refusal of the first that fails a check ends the upload."""
        head = b""
        check_declared_size(header.declared_size, 0, ended=False)
        self._policy.check_size(header.declared_size)  # refused before its first byte
        for chunk in chunks:
            check_chunk(len(chunk))
            tally.size += len(chunk)
            self._policy.check_size(tally.size)
            check_declared_size(header.declared_size, tally.size, ended=False)
            if not tally.media_type:
                head += chunk[: SNIFF_BYTES - len(head)]
                if len(head) >= SNIFF_BYTES:
                    # Refused after its first bytes, not after the whole file.
                    tally.media_type = self._policy.check_type(
                        sniff_media_type(head), header.declared_media_type
                    )
            tally.digest.update(chunk)
            yield chunk
        if tally.size == 0:
            raise InvalidArgument(
                "chunk", "the file is empty: there is nothing to attach", reason="EVIDENCE_EMPTY"
            )
        check_declared_size(header.declared_size, tally.size, ended=True)
        if not tally.media_type:
            tally.media_type = self._policy.check_type(
                sniff_media_type(head), header.declared_media_type
            )

    # ---------------------------------------------------------------- reading

    def attached(
        self, actor: Actor, incident_id: UUID, after: int = 0, limit: int | None = None
    ) -> list[tuple[int, AttachedEvidence]]:
        """The incident's evidence, oldest first, each with its ordinal (from 1), from the
        one after ordinal ``after`` on: evidence is only ever added, so an ordinal stays
        the same one's (a page's cursor)."""
        incident = self._ledger.get_incident(incident_id, "parent")
        incident.check_evidence_reader(actor, "ListEvidence")
        items = list(incident.evidence.values())
        end = len(items) if limit is None else after + limit
        return [
            (after + n, AttachedEvidence.of(incident, e))
            for n, e in enumerate(items[after:end], start=1)
        ]

    def download(
        self, actor: Actor, incident_id: UUID, event_id: UUID
    ) -> tuple[AttachedEvidence, Iterator[bytes]]:
        """The evidence and its bytes: read back and checked against the event first, the
        download recorded, then streamed from the spool file."""
        incident = self._ledger.get_incident(incident_id)
        incident.check_evidence_reader(actor, "DownloadEvidence")
        attached = AttachedEvidence.of(incident, incident.evidence_item(event_id))
        file = attached.evidence.file
        name = object_name(file.sha256)
        try:
            spool = tempfile.NamedTemporaryFile(dir=self._spool, suffix=SPOOL_SUFFIX)  # noqa: SIM115 (closed by the generator)
        except OSError as error:
            raise self._spool_failed(error) from error
        try:
            sink = HashingSink(spool)
            try:
                found = self._objects.read_into(name, sink)
            except ObjectChangedError:
                found = None
            except SinkWriteError as error:
                raise self._spool_failed(error.error) from error
            metadata = {
                "object": name,
                "evidence": f"incidents/{incident_id}/evidence/{event_id}",
            }
            if found is None and not sink.size:
                raise DataLoss(
                    f"evidence {event_id} is missing from the evidence store",
                    reason="EVIDENCE_MISSING",
                    metadata=metadata,
                )
            if (sink.sha256, sink.size) != (file.sha256, file.size_bytes):
                raise DataLoss(
                    f"evidence {event_id} was changed in the evidence store",
                    reason="EVIDENCE_CHANGED",
                    metadata=metadata,
                )
            try:
                spool.flush()
                spool.seek(0)
            except OSError as error:
                raise self._spool_failed(error) from error
            self._record_download(incident_id, event_id, actor)
        except BaseException:
            with suppress(OSError):  # a full disk fails the flush of closing too; removed anyway
                spool.close()
            raise
        return attached, _chunks_of(spool)

    def _spool_failed(self, error: OSError) -> Unavailable:
        """The download's spool file cannot be written (a full or read-only disk): this
        replica's own failure, which another replica, or this one later, may not have."""
        log.warning(
            "evidence.spool_failed",
            directory=str(self._spool),
            error=f"{type(error).__name__}: {error}",
        )
        return Unavailable(
            "this ledger cannot write the download to its disk "
            f"({error.strerror or type(error).__name__}): retry",
            reason="EVIDENCE_SPOOL_UNAVAILABLE",
        )

    def _record_download(self, incident_id: UUID, event_id: UUID, actor: Actor) -> None:
        now = _stored_time(datetime.now(UTC))
        with self._db.transaction() as cur:
            cur.execute(
                self._db.q(
                    "INSERT INTO evidence_downloads "
                    "(incident, event_id, agency, officer, downloaded_at) VALUES (?, ?, ?, ?, ?)"
                ),
                (str(incident_id), str(event_id), actor.agency, actor.officer, now),
            )
        log.info("evidence.downloaded", incident=str(incident_id), evidence=str(event_id))

    def downloads(
        self,
        actor: Actor,
        incident_id: UUID,
        after: DownloadCursor | None = None,
        limit: int | None = None,
    ) -> list[Download]:
        """Who fetched the incident's evidence, and when (auditors and the coordinator),
        oldest first; those after the download ``after`` (a page's cursor: see
        :attr:`Download.cursor`), at most ``limit``."""
        self._ledger.get_incident(incident_id, "parent").check_download_auditor(actor)
        # A download has no id of its own: the row's values in full are its place in the
        # order (two rows alike in all of them are one download recorded twice).
        query = (
            "SELECT event_id, agency, officer, downloaded_at FROM evidence_downloads "
            "WHERE incident = ?"
        )
        values: list[object] = [str(incident_id)]
        if after is not None:
            query += " AND (downloaded_at, event_id, agency, officer) > (?, ?, ?, ?)"
            values.extend(after)
        query += " ORDER BY downloaded_at, event_id, agency, officer"
        if limit is not None:
            query += " LIMIT ?"
            values.append(limit)
        with self._db.transaction() as cur:
            cur.execute(self._db.q(query), tuple(values))
            rows = cur.fetchall()
        return [
            Download(incident_id, UUID(row[0]), row[1], row[2], datetime.fromisoformat(row[3]))
            for row in rows
        ]


def _chunks_of(spool: IO[bytes]) -> Iterator[bytes]:
    with spool:
        while chunk := spool.read(MAX_CHUNK_BYTES):
            yield chunk

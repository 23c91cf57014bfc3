"""Evidence files in the NATS JetStream object store, for the ledger's threads.

The object store is nats-py's (asyncio); the ledger's gRPC handlers are threads. One
event loop runs in a thread of its own with one NATS connection, and each call here
hands it a coroutine and waits for the answer. No whole file is ever held in memory.

An object is named by its content (``sha256-<hex>``, see
:func:`services.ledger.domain.evidence.object_name`), which is known only once the last
byte is in. So that an upload goes into the object store while it arrives (not after),
:meth:`EvidenceObjects.put_chunks` writes the chunks under a fresh id and, beside them, a
pending entry ``upload-<id>`` (the object store's own metadata, with its time); at the end
it creates the content address's entry pointing at those chunks, only if no object of
that name is there (JetStream's expected-last-subject-sequence: two uploads of the same
bytes at once cannot both create it), and removes the pending entry. The same file sent
twice is stored once: the second upload's chunks are purged. An upload that fails or is
cut short purges its chunks and its pending entry; one cut short by a kill of the ledger
leaves the pending entry with its chunks, an object no event names, which the ledger's
sweep (services/ledger/evidence_sweep.py, or ``ledger-audit sweep-evidence``) deletes once
it is older than the grace period.

Several ledger replicas share the bucket, and each sweeps it. So that a sweep never takes
what another replica is still writing for a leftover: an upload under way rewrites its
pending entry's time every ``pending_refresh_seconds`` (a quarter of the grace period, at
most a minute), and an upload of bytes already stored rewrites that object's time before
its event is recorded. Both rewrites, and the sweep's deletion
(:meth:`EvidenceObjects.delete_unchanged`), are conditional on the entry's last sequence
as the writer read it: of a sweep and an upload that meet on one entry, exactly one wins.
An upload whose pending entry a sweep deleted fails (``UNAVAILABLE``: sent again, it is
taken again); a sweep that finds an entry rewritten leaves it.

Reading (:meth:`EvidenceObjects.read_into`) writes each chunk as it arrives and checks the
digest recorded with the object, as nats-py's ``get(writeinto=)`` does, but a read that
receives no chunk for ``READ_STALL_SECONDS`` (NATS gone mid-read) ends with UNAVAILABLE
rather than waiting for NATS to come back. The bucket is created on first use with the replicas
of ``LEDGER_EVIDENCE_REPLICAS``, no TTL and no size limit: evidence must not age out of the
store.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import CancelledError as CallCancelledError
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import IO, Any, TypeVar

import nats
import structlog
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext, api
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    NotFoundError,
    ObjectNotFoundError,
)
from nats.js.object_store import ObjectStore

from services.common.config import EvidenceSettings, NatsClientSettings, nats_servers
from services.common.errors import ResourceExhausted, Unavailable
from services.common.natsconn import connect_options
from services.common.natslink import NatsLink
from services.ledger.domain.evidence import object_name

log = structlog.get_logger(__name__)

T = TypeVar("T")
#: The longest one call to NATS may take before the caller is told the store is away.
CALL_SECONDS = 120.0
#: How long a read of an object may wait for its next chunk before it ends, UNAVAILABLE.
#: NATS gone in the middle of a read leaves the read's consumer waiting for chunks that do
#: not come (the client reconnects for ever, and a NATS back later may not resume it): a
#: download waited out CALL_SECONDS, two minutes, for nothing. A NATS that is there sends
#: a 128 KiB chunk in far less, however slowly the reader writes (flow control waits on
#: the reader, not the reverse), so only a read that makes no progress is cut, never a
#: long one that does; the client retries the UNAVAILABLE, on another replica if need be.
READ_STALL_SECONDS = 5.0
#: How long a stalled read waits to learn whether the object's chunks are still in the
#: stream: a NATS that hangs (connected, answering nothing) must not add its request
#: timeout to READ_STALL_SECONDS; not knowing in time is the same UNAVAILABLE.
CHUNK_COUNT_SECONDS = 1.0
#: How long an upload that failed (NATS timed out, most likely) tries to purge what it
#: wrote before it answers: a NATS that hangs must not add two request timeouts (10 s) to
#: the answer; what a purge leaves is swept.
PURGE_AFTER_FAILURE_SECONDS = 1.0
CONNECT_SECONDS = 5.0
#: How long a stop waits for the calls it cancelled to end: an upload purges what it wrote
#: (at most PURGE_AFTER_FAILURE_SECONDS for each of its two purges) while NATS is still
#: connected, so that a stop leaves nothing for the sweep.
CLOSE_CALLS_SECONDS = 2 * PURGE_AFTER_FAILURE_SECONDS + 1.0
#: How long a call waits for the evidence store's first connection to NATS (a few attempts).
FIRST_CONNECT_SECONDS = 2 * CONNECT_SECONDS
IO_THREADS = 64
#: The size of the object store's chunks (nats-py's own).
CHUNK_BYTES = 128 * 1024
#: The prefix of an upload's pending entry (see the module's docstring).
PENDING_PREFIX = "upload-"
# The object store's metadata entries replace each other (as nats-py writes them).
_ROLLUP: dict[str, str] = {"Nats-Rollup": "sub"}
_EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"


@dataclass(frozen=True)
class ListedObject:
    """An object of the bucket: its name, size and when it was stored."""

    name: str
    size_bytes: int
    stored_at: datetime | None
    #: The stream sequence of the entry as listed: a deletion is conditional on it.
    sequence: int = 0
    #: The id of the object's chunks.
    nuid: str = ""

    @property
    def pending(self) -> bool:
        """An upload's pending entry (an upload under way, or one a kill cut short)."""
        return self.name.startswith(PENDING_PREFIX)


@dataclass(frozen=True)
class StoredObject:
    """What the object store says of an object: its size and SHA-256 (hex)."""

    size_bytes: int
    sha256: str
    #: The object's entry as this upload created it (its sequence and chunks), for
    #: :meth:`EvidenceObjects.delete_unchanged`; None when the bytes were stored already (the entry
    #: is another upload's, or an event's).
    created: ListedObject | None = None


class EntryChangedError(Exception):
    """An entry was rewritten (or deleted) since it was read: a conditional write lost."""


class ObjectChangedError(Exception):
    """The bytes read back do not match the digest the object store recorded for them."""


class SinkWriteError(Exception):
    """The local file a read goes into could not be written (a full or read-only disk): the
    ledger's own disk failed, not NATS. Not an ``OSError``, so that it is not taken for an
    evidence store away."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class HashingSink:
    """A file object's ``write`` that also hashes and counts what passes through."""

    def __init__(self, target: IO[bytes] | None = None) -> None:
        self._target = target
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        if self._target is not None:
            try:
                self._target.write(data)
            except OSError as error:
                raise SinkWriteError(error) from error
        return len(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


def _hex_digest(digest: str | None) -> str:
    """nats-py's ``SHA-256=<urlsafe base64>`` as hex."""
    encoded = (digest or "").split("=", 1)[-1] if digest else ""
    padded = encoded + "=" * (-len(encoded) % 4)
    return base64.urlsafe_b64decode(padded).hex() if encoded else ""


def _time(value: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def _meta_subject(bucket: str, name: str) -> str:
    # As nats-py names it (base64url with padding), so that its get and list find it.
    return f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"


def _meta_body(info: api.ObjectInfo) -> bytes:
    return json.dumps(info.as_dict()).encode()


class _PendingRefresh:
    """An upload's pending entry, its time rewritten while the upload goes on; each rewrite
    over the entry's last sequence as this upload wrote it (see the module's docstring)."""

    def __init__(
        self, js: JetStreamContext, subject: str, entry: api.ObjectInfo, sequence: int
    ) -> None:
        self._js = js
        self._subject = subject
        self._entry = entry
        self._sequence = sequence
        self._written = time.monotonic()

    def due(self, seconds: float) -> bool:
        return time.monotonic() - self._written >= seconds

    async def now(self) -> None:
        """Rewrite the entry's time; UNAVAILABLE when a sweep deleted it meanwhile."""
        self._entry.mtime = datetime.now(UTC).isoformat()
        headers = {**_ROLLUP, _EXPECTED_LAST_SUBJECT_SEQUENCE: str(self._sequence)}
        try:
            ack = await self._js.publish(self._subject, _meta_body(self._entry), headers=headers)
        except APIError as error:
            full = store_full(error)
            if full is not None:
                raise full from error
            log.warning("evidence.upload_swept", entry=self._entry.name)
            raise unavailable(EntryChangedError(self._entry.name)) from None
        self._sequence = ack.seq
        self._written = time.monotonic()


def unavailable(error: BaseException) -> Unavailable:
    said = getattr(error, "description", None) if isinstance(error, APIError) else None
    return Unavailable(
        f"the evidence store (NATS) is not available: {type(error).__name__}"
        + (f" ({said})" if said else ""),
        reason="EVIDENCE_STORE_UNAVAILABLE",
    )


#: JetStream's error codes for a stream that holds all it may: 10047, the server's storage
#: (insufficient resources); 10077, the stream's own limit (maximum bytes exceeded).
_FULL_CODES = frozenset({10047, 10077})


def store_full(error: BaseException) -> ResourceExhausted | None:
    """RESOURCE_EXHAUSTED ``EVIDENCE_STORE_FULL`` when NATS refused a write because the
    evidence's stream is full; None for any other failure. It was UNAVAILABLE, which
    clients retry: a 60 MB file was sent a dozen times over, each refused, and the answer
    said "not available" where the operator had to make room."""
    if not isinstance(error, APIError):
        return None
    said = str(error.description or "")
    if error.err_code not in _FULL_CODES and "maximum bytes" not in said:
        return None
    log.error("evidence.store_full", error=said, err_code=error.err_code)
    return ResourceExhausted(
        f"the evidence store (NATS) is full ({said or error.err_code}): nothing of the file "
        "was kept; the operator must make room (the stream's max_bytes, or the disk)",
        reason="EVIDENCE_STORE_FULL",
        metadata={"nats_error": str(error.err_code or "")},
    )


def stopping() -> Unavailable:
    """A call cut short, or refused, because the ledger is stopping (see close())."""
    return Unavailable(
        "the ledger is stopping: retry, on another replica or once it is back",
        reason="EVIDENCE_STORE_UNAVAILABLE",
    )


class EvidenceObjects:
    """The evidence bucket, called from any thread."""

    def __init__(
        self, nats_url: str, nats_settings: NatsClientSettings, settings: EvidenceSettings
    ) -> None:
        self._servers = nats_servers(nats_url)
        self._nats_settings = nats_settings
        self._settings = settings
        self._loop = asyncio.new_event_loop()
        # Each upload blocks one of these threads while it waits for its sender's next chunk,
        # and nats-py writes each chunk of a read through them: enough for every request
        # thread of the ledger (LEDGER_MAX_WORKERS) to upload or download at once.
        self._loop.set_default_executor(
            ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="evidence-io")
        )
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="evidence-objects", daemon=True
        )
        self._thread.start()
        self._nc: NatsClient | None = None
        self._store: ObjectStore | None = None
        self._js: JetStreamContext | None = None
        # An outage is logged once, with a reminder a minute, not once per attempt to
        # reconnect (the client's default: an error line and its traceback every 2 s).
        self.nats_link = NatsLink("evidence")
        self._closing = False
        # The calls under way, each its task in the loop (touched only there): a stop
        # cancels them (see close()).
        self._calls: set[asyncio.Task[Any]] = set()

    def _call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = CALL_SECONDS) -> T:
        if self._closing:
            # The ledger is stopping: a request thread or the sweep that goes on past the
            # grace period is told the store is away, not left waiting on a stopped loop.
            coroutine.close()
            raise stopping()
        try:
            future = asyncio.run_coroutine_threadsafe(self._tracked(coroutine), self._loop)
        except RuntimeError as error:  # the loop closed between the check and here
            coroutine.close()
            raise stopping() from error
        try:
            return future.result(timeout)
        except TimeoutError as error:
            future.cancel()
            raise unavailable(error) from error
        except CallCancelledError as error:  # by close(), with the call under way
            raise stopping() from error
        except (NatsError, OSError) as error:
            raise (store_full(error) or unavailable(error)) from error

    async def _tracked(self, coroutine: Coroutine[Any, Any, T]) -> T:
        task = asyncio.current_task()
        if task is None:  # never: run_coroutine_threadsafe runs it as a task
            return await coroutine
        self._calls.add(task)
        try:
            return await coroutine
        finally:
            self._calls.discard(task)

    async def _bucket(self) -> ObjectStore:
        return (await self._jetstream())[1]

    async def _context(self) -> JetStreamContext:
        """The JetStream context, connecting if need be (the bucket neither opened nor
        created)."""
        if self._nc is None or self._nc.is_closed:
            link = self.nats_link

            async def disconnected() -> None:
                link.down(self._closing)

            async def reconnected() -> None:
                link.up()

            async def error(exc: Exception) -> None:
                link.error(exc)

            # Reconnecting for ever once connected, but a first connection is waited for
            # at most FIRST_CONNECT_SECONDS: nats-py's connect tries again and again while
            # NATS is away, and a ledger started meanwhile had its first evidence call wait
            # out CALL_SECONDS (two minutes) before answering UNAVAILABLE.
            self._nc = await asyncio.wait_for(
                nats.connect(
                    servers=self._servers,
                    connect_timeout=CONNECT_SECONDS,
                    max_reconnect_attempts=-1,
                    allow_reconnect=True,
                    disconnected_cb=disconnected,
                    reconnected_cb=reconnected,
                    error_cb=error,
                    **connect_options(self._nats_settings),
                ),
                FIRST_CONNECT_SECONDS,
            )
            if self._nc.is_connected:
                link.up()
        self._js = self._nc.jetstream()
        return self._js

    async def _jetstream(self) -> tuple[JetStreamContext, ObjectStore]:
        """The JetStream context and the bucket, connecting (and creating it) if need be."""
        if (
            self._store is not None
            and self._js is not None
            and self._nc is not None
            and self._nc.is_connected
        ):
            return self._js, self._store
        js = await self._context()
        try:
            self._store = await js.object_store(self._settings.bucket)
        except BucketNotFoundError:
            config = ObjectStoreConfig(
                bucket=self._settings.bucket,
                replicas=self._settings.replicas,
                storage=StorageType.FILE,
            )
            self._store = await js.create_object_store(self._settings.bucket, config=config)
            log.info("evidence.bucket_created", bucket=self._settings.bucket)
        return js, self._store

    # ------------------------------------------------------------------ calls

    def stat(self, name: str) -> StoredObject | None:
        """The object's size and digest as recorded, or None when there is none."""
        return self._call(self._stat(name))

    async def _stat(self, name: str) -> StoredObject | None:
        store = await self._bucket()
        try:
            info = await store.get_info(name)
        except ObjectNotFoundError:
            return None
        return StoredObject(int(info.size or 0), _hex_digest(info.digest))

    def put_chunks(self, pieces: Iterator[bytes]) -> StoredObject:
        """Store the bytes ``pieces`` yields, as they come, under their content address (see
        the module's docstring); the object's size and digest as recorded. ``pieces`` is
        pulled in a worker thread (it may block, as a gRPC stream does), so an exception it
        raises ends the upload, leaving nothing behind. No deadline: an upload lasts as
        long as its sender takes (the gRPC call's deadline bounds it)."""
        return self._call(self._put_chunks(pieces), timeout=None)

    async def _put_chunks(self, pieces: Iterator[bytes]) -> StoredObject:
        js, _ = await self._jetstream()
        bucket = self._settings.bucket
        stream = f"OBJ_{bucket}"
        nuid = uuid.uuid4().hex
        chunk_subject = f"$O.{bucket}.C.{nuid}"
        pending = api.ObjectInfo(
            name=f"{PENDING_PREFIX}{nuid}",
            bucket=bucket,
            nuid=nuid,
            size=0,
            chunks=0,
            digest="",
            mtime=datetime.now(UTC).isoformat(),
        )
        pending_subject = _meta_subject(bucket, pending.name)
        ack = await js.publish(pending_subject, _meta_body(pending), headers=_ROLLUP)
        refresh = _PendingRefresh(js, pending_subject, pending, ack.seq)
        loop = asyncio.get_running_loop()
        digest = hashlib.sha256()
        size = chunks = 0
        # The next piece is received while this one is published: the two waits (the
        # sender's next message, the stream's acks) overlap instead of adding up.
        coming = loop.run_in_executor(None, next, pieces, None)
        failed = False
        try:
            while (piece := await coming) is not None:
                coming = loop.run_in_executor(None, next, pieces, None)
                for start in range(0, len(piece), CHUNK_BYTES):
                    part = piece[start : start + CHUNK_BYTES]
                    await js.publish(chunk_subject, part)
                    digest.update(part)
                    size += len(part)
                    chunks += 1
                if refresh.due(self._settings.pending_refresh_seconds):
                    await refresh.now()
            # Once more before the object is created: a sweep that deleted the pending
            # entry (and with it the chunks) must not leave an object missing its chunks.
            await refresh.now()
            info = api.ObjectInfo(
                name=object_name(digest.hexdigest()),
                bucket=bucket,
                nuid=nuid,
                size=size,
                chunks=chunks,
                digest="SHA-256=" + base64.urlsafe_b64encode(digest.digest()).decode(),
                mtime=datetime.now(UTC).isoformat(),
                options=api.ObjectMetaOptions(max_chunk_size=CHUNK_BYTES),
            )
            created = await self._claim(js, stream, info)
            if created is None:
                # The same bytes are stored already: these chunks are not needed.
                await js.purge_stream(stream, subject=chunk_subject)
        except BaseException:
            # A piece still being received is not wanted: its outcome (the sender's error,
            # most likely) is dropped with the future rather than left unobserved.
            coming.cancel()
            failed = True
            await self._purge_quietly(js, stream, chunk_subject, PURGE_AFTER_FAILURE_SECONDS)
            raise
        finally:
            await self._purge_quietly(
                js, stream, pending_subject, PURGE_AFTER_FAILURE_SECONDS if failed else None
            )
        stored = await self._stat(info.name)
        if stored is None:
            raise unavailable(ObjectNotFoundError())
        # already_stored: the same bytes were there before (a retry, the same file twice).
        log.info("evidence.stored", object=info.name, size=size, already_stored=created is None)
        if created is None:
            return stored
        entry = ListedObject(info.name, size, _time(info.mtime), created, nuid)
        return replace(stored, created=entry)

    async def _claim(self, js: JetStreamContext, stream: str, info: api.ObjectInfo) -> int | None:
        """Create the entry of ``info.name`` unless a live object has that name; the
        sequence of the entry created, None when none was. Exclusive: the entry is written
        only over the history it was read with (none, or a deleted object's entry). A live
        object of that name gets its time rewritten instead (over the history it was read
        with, too), so that no sweep deletes it before this upload's event names it."""
        subject = _meta_subject(info.bucket, info.name)
        expected = 0
        entry = info  # what is written: this upload's entry, or the live one's, touched
        for _ in range(4):
            headers = {**_ROLLUP, _EXPECTED_LAST_SUBJECT_SEQUENCE: str(expected)}
            try:
                ack = await js.publish(subject, _meta_body(entry), headers=headers)
                return int(ack.seq) if entry is info else None
            except APIError:  # the subject's last sequence is not the one expected
                try:
                    last = await js.get_last_msg(stream, subject)
                except NotFoundError:
                    expected, entry = 0, info
                    continue
                existing = api.ObjectInfo.from_response(json.loads(last.data or b"{}"))
                expected = int(last.seq or 0)
                if existing.deleted:
                    entry = info
                else:
                    existing.mtime = datetime.now(UTC).isoformat()
                    entry = existing
        raise unavailable(APIError())

    async def _purge_quietly(
        self, js: JetStreamContext, stream: str, subject: str, seconds: float | None = None
    ) -> None:
        """Purge ``subject``; a failure is logged (what is left is an unreferenced object,
        swept later), so that it does not hide the error being raised. Not tried while
        NATS is away (an upload it cut short), and given at most ``seconds`` when set: the
        purge would only wait out its request's timeout (5 s) on a NATS that answers
        nothing, the caller's answer with it, and what is left is swept all the same."""
        if self._nc is None or not self._nc.is_connected:
            log.warning("evidence.purge_failed", subject=subject, error="NATS not connected")
            return
        try:
            await asyncio.wait_for(js.purge_stream(stream, subject=subject), seconds)
        except (NatsError, OSError, TimeoutError) as error:
            log.warning("evidence.purge_failed", subject=subject, error=type(error).__name__)

    def read_into(self, name: str, sink: HashingSink) -> StoredObject | None:
        """Read the object's bytes into ``sink`` as they arrive; None when there is no such
        object. :class:`ObjectChangedError` when they do not match the digest recorded with it
        (``sink`` has what was read: its size and hash say by how much). No deadline for the
        whole read, but UNAVAILABLE once no chunk came for ``READ_STALL_SECONDS``."""
        return self._call(self._read(name, sink), timeout=None)

    async def _read(self, name: str, sink: HashingSink) -> StoredObject | None:
        # nats-py's get(writeinto=) as it reads, but each wait for a chunk bounded (its own
        # waits for ever) and the consumer removed however the read ends.
        js, store = await self._jetstream()
        try:
            info = await store.get_info(name)
        except ObjectNotFoundError:
            return None
        if not info.nuid or info.is_link():  # not an object the ledger wrote
            raise ObjectChangedError(name)
        stored = StoredObject(int(info.size or 0), _hex_digest(info.digest))
        if not stored.size_bytes:
            return stored
        subject = f"$O.{self._settings.bucket}.C.{info.nuid}"
        subscription = await js.subscribe(subject, ordered_consumer=True)
        loop = asyncio.get_running_loop()
        digest = hashlib.sha256()
        try:
            while True:
                try:
                    message = await subscription.next_msg(timeout=READ_STALL_SECONDS)
                except NatsTimeoutError:
                    if await self._chunks_missing(js, subject, int(info.chunks or 0)):
                        raise ObjectChangedError(name) from None
                    log.warning(
                        "evidence.read_stalled",
                        object=name,
                        read=sink.size,
                        size=stored.size_bytes,
                        seconds=READ_STALL_SECONDS,
                    )
                    raise
                await loop.run_in_executor(None, sink.write, message.data)
                digest.update(message.data)
                if message.metadata.num_pending == 0:
                    break
        finally:
            with suppress(NatsError, OSError):
                await subscription.unsubscribe()
        if digest.hexdigest() != stored.sha256:
            raise ObjectChangedError(name)
        return stored

    async def _chunks_missing(self, js: JetStreamContext, subject: str, chunks: int) -> bool:
        """Whether the stream holds fewer of an object's chunks than its entry says (purged
        by hand, or lost): a read stalled waiting for them, with NATS there, waits for
        nothing, and the object is not the one recorded. False when NATS cannot say."""
        if self._nc is None or not self._nc.is_connected:
            return False
        try:
            found = await asyncio.wait_for(
                js.stream_info(f"OBJ_{self._settings.bucket}", subjects_filter=subject),
                CHUNK_COUNT_SECONDS,
            )
        except (NatsError, OSError, TimeoutError):
            return False
        return (found.state.subjects or {}).get(subject, 0) < chunks

    def list_objects(self) -> list[ListedObject]:
        """Every object of the bucket (its metadata only; deleted ones left out)."""
        return self._call(self._list())

    async def _list(self) -> list[ListedObject]:
        # From the stream's metadata subjects, each one's last entry: nats-py's list()
        # waits forever on a bucket that never held an object. A bucket not yet created
        # holds nothing (listing, the sweep's first step, does not create it).
        js = await self._context()
        bucket = self._settings.bucket
        stream = f"OBJ_{bucket}"
        try:
            info = await js.stream_info(stream, subjects_filter=f"$O.{bucket}.M.>")
        except NotFoundError:
            return []
        listed = []
        for subject in sorted(info.state.subjects or {}):
            try:
                last = await js.get_last_msg(stream, subject)
            except NotFoundError:  # purged meanwhile
                continue
            entry = api.ObjectInfo.from_response(json.loads(last.data or b"{}"))
            if not entry.deleted:
                listed.append(
                    ListedObject(
                        entry.name,
                        int(entry.size or 0),
                        _time(entry.mtime),
                        int(last.seq or 0),
                        entry.nuid or "",
                    )
                )
        return listed

    def delete(self, name: str) -> None:
        """Delete the object whatever its state (what an operator may do by hand; the
        sweep deletes only with :meth:`delete_unchanged`)."""
        self._call(self._delete(name))

    async def _delete(self, name: str) -> None:
        store = await self._bucket()
        await store.delete(name)

    def delete_unchanged(self, listed: ListedObject) -> bool:
        """Delete the object as it was listed; False (and nothing done) when its entry was
        rewritten since (an upload touched it) or deleted by another sweep."""
        return self._call(self._delete_unchanged(listed))

    async def _delete_unchanged(self, listed: ListedObject) -> bool:
        js = await self._context()
        bucket = self._settings.bucket
        stream = f"OBJ_{bucket}"
        subject = _meta_subject(bucket, listed.name)
        gone = api.ObjectInfo(
            name=listed.name, bucket=bucket, nuid=listed.nuid, deleted=True, size=0, chunks=0
        )
        headers = {**_ROLLUP, _EXPECTED_LAST_SUBJECT_SEQUENCE: str(listed.sequence)}
        try:
            # The entry first, conditionally: once it says deleted, no upload uses the chunks.
            await js.publish(subject, _meta_body(gone), headers=headers)
        except APIError:  # rewritten or deleted since it was listed
            return False
        if listed.nuid:
            await js.purge_stream(stream, subject=f"$O.{bucket}.C.{listed.nuid}")
        if listed.pending:
            # A pending entry is nobody's name: no deletion mark need stay for it.
            await js.purge_stream(stream, subject=subject)
        return True

    @property
    def stopping(self) -> bool:
        """Whether the ledger is stopping (:meth:`cut` or :meth:`close` called): every call
        from now on, and every one cut short, answers UNAVAILABLE."""
        return self._closing

    def cut(self) -> None:
        """End the calls under way, each with its own answer (UNAVAILABLE, the ledger is
        stopping; an upload purges what it wrote first), and refuse new ones; the
        connection stays open until :meth:`close`. Called when the grace period of a stop
        is over, before gRPC cancels the calls still going: cancelled first, an upload's
        call was answered by gRPC's bare cancellation while its handler took the stream's
        end for the file's (``INVALID_FIELD``, ``header.size_bytes``, or with no declared
        size the bytes so far stored as a file)."""
        self._closing = True
        if self._loop.is_closed():
            return
        with suppress(RuntimeError, TimeoutError):  # the loop stopped meanwhile
            asyncio.run_coroutine_threadsafe(self._end_calls(), self._loop).result(
                CLOSE_CALLS_SECONDS + CONNECT_SECONDS
            )

    async def _end_calls(self) -> None:
        calls = set(self._calls)
        for task in calls:
            task.cancel()
        if calls:
            await asyncio.wait(calls, timeout=CLOSE_CALLS_SECONDS)

    def close(self) -> None:
        """Cancel the calls under way (each answers UNAVAILABLE; an upload purges what it
        wrote first), refuse new ones, then close the connection and the loop. A call under
        way when the loop stopped waited for ever (a deep verification the grace period cut
        short kept the process from exiting: forced out at its deadline), and one made
        after the loop closed failed with 'Event loop is closed'. Closing again does
        nothing."""
        self._closing = True
        if self._loop.is_closed():
            return

        async def closing() -> None:
            await self._end_calls()
            if self._nc is not None and not self._nc.is_closed:
                await self._nc.close()

        try:
            asyncio.run_coroutine_threadsafe(closing(), self._loop).result(
                CLOSE_CALLS_SECONDS + CONNECT_SECONDS
            )
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CONNECT_SECONDS)
            if not self._thread.is_alive():
                self._loop.close()

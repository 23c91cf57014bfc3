"""Evidence files in the NATS JetStream object store, for the ledger's threads.

The object store is nats-py's (asyncio); the ledger's gRPC handlers are threads. One
event loop runs in a thread of its own with one NATS connection, and each call here
hands it a coroutine and waits for the answer. Files go in and out through files on
disk (nats-py's ``put`` reads 128 KiB chunks from a file object, ``get(writeinto=)``
writes each chunk as it arrives): no whole file is ever held in memory.

An object is named by its content (``sha256-<hex>``, see
:func:`services.ledger.domain.evidence.object_name`); :meth:`EvidenceObjects.put_file`
stores a name only once, so the same file sent twice is stored once. The bucket is
created on first use with the replicas of ``LEDGER_EVIDENCE_REPLICAS``, no TTL and no
size limit: evidence must not age out of the store.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any, TypeVar

import nats
import structlog
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.errors import (
    BucketNotFoundError,
    DigestMismatchError,
    NotFoundError,
    ObjectNotFoundError,
)
from nats.js.object_store import ObjectStore

from services.common.config import EvidenceSettings, NatsClientSettings, nats_servers
from services.common.errors import Unavailable
from services.common.natsconn import connect_options

log = structlog.get_logger(__name__)

T = TypeVar("T")
#: The longest one call to NATS may take before the caller is told the store is away.
CALL_SECONDS = 120.0
CONNECT_SECONDS = 5.0


@dataclass(frozen=True)
class ListedObject:
    """An object of the bucket: its name, size and when it was stored."""

    name: str
    size_bytes: int
    stored_at: datetime | None


@dataclass(frozen=True)
class StoredObject:
    """What the object store says of an object: its size and SHA-256 (hex)."""

    size_bytes: int
    sha256: str


class ObjectChangedError(Exception):
    """The bytes read back do not match the digest the object store recorded for them."""


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
            self._target.write(data)
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


def unavailable(error: BaseException) -> Unavailable:
    return Unavailable(
        f"the evidence store (NATS) is not available: {type(error).__name__}",
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
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="evidence-objects", daemon=True
        )
        self._thread.start()
        self._nc: NatsClient | None = None
        self._store: ObjectStore | None = None

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(CALL_SECONDS)
        except TimeoutError as error:
            future.cancel()
            raise unavailable(error) from error
        except (NatsError, OSError) as error:
            raise unavailable(error) from error

    async def _bucket(self) -> ObjectStore:
        if self._store is not None and self._nc is not None and self._nc.is_connected:
            return self._store
        if self._nc is None or self._nc.is_closed:
            self._nc = await nats.connect(
                servers=self._servers,
                connect_timeout=CONNECT_SECONDS,
                max_reconnect_attempts=-1,
                allow_reconnect=True,
                **connect_options(self._nats_settings),
            )
        js = self._nc.jetstream()
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
        return self._store

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

    def put_file(self, name: str, source: IO[bytes]) -> StoredObject:
        """Store the file under ``name`` unless an object of that name is there already
        (names are content addresses: it holds the same bytes). The object's recorded
        size and digest either way."""
        return self._call(self._put(name, source))

    async def _put(self, name: str, source: IO[bytes]) -> StoredObject:
        existing = await self._stat(name)
        if existing is not None:
            return existing
        store = await self._bucket()
        # nats-py purges the chunks it sent when a put fails half way.
        info = await store.put(name, source)  # type: ignore[arg-type]
        log.info("evidence.stored", object=name, size=info.size)
        return StoredObject(int(info.size or 0), _hex_digest(info.digest))

    def read_into(self, name: str, sink: HashingSink) -> StoredObject | None:
        """Read the object's bytes into ``sink`` as they arrive; None when there is no such
        object. :class:`ObjectChangedError` when they do not match the digest recorded with it
        (``sink`` has what was read: its size and hash say by how much)."""
        return self._call(self._read(name, sink))

    async def _read(self, name: str, sink: HashingSink) -> StoredObject | None:
        store = await self._bucket()
        try:
            result = await store.get(name, writeinto=sink)  # type: ignore[arg-type]
        except ObjectNotFoundError:
            return None
        except DigestMismatchError:
            raise ObjectChangedError(name) from None
        return StoredObject(int(result.info.size or 0), _hex_digest(result.info.digest))

    def list_objects(self) -> list[ListedObject]:
        """Every object of the bucket (its metadata only; deleted ones left out)."""
        return self._call(self._list())

    async def _list(self) -> list[ListedObject]:
        store = await self._bucket()
        try:
            infos = await store.list(ignore_deletes=True)
        except NotFoundError:  # nats-py's answer for an empty bucket
            return []
        return [
            ListedObject(info.name, int(info.size or 0), _time(info.mtime))
            for info in infos
            if not info.deleted
        ]

    def delete(self, name: str) -> None:
        self._call(self._delete(name))

    async def _delete(self, name: str) -> None:
        store = await self._bucket()
        await store.delete(name)

    def close(self) -> None:
        async def closing() -> None:
            if self._nc is not None and not self._nc.is_closed:
                await self._nc.close()

        try:
            asyncio.run_coroutine_threadsafe(closing(), self._loop).result(CONNECT_SECONDS)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CONNECT_SECONDS)
            if not self._thread.is_alive():
                self._loop.close()

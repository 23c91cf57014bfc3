"""Evidence transfer: the ledger's upload and download beside the object store alone.

On a nats-server the bench starts, with one file of random bytes (a JPEG header, so the
ledger accepts it):

- the ceiling, in this process: nats-py's object store ``put`` of the file (from the
  file), in a bucket of its own; and for reading, the faster of nats-py's ``get`` into a
  file and the same read without it (an ordered consumer on the object's chunks, each
  written to the file and hashed: what the ledger does). The library's ``get`` gave
  36-37 MB/s where that read gave 165-190 on the same object (2026-12-07): its message
  iterator makes a task and an ``asyncio.wait`` per chunk. A ceiling the ledger beat by
  3.5 times said nothing of the ledger's own cost;
- the ledger, ``python -m services.ledger`` in its own process (SQLite, relay on): the
  same file through ``LedgerClient.attach_evidence`` (gRPC client streaming, spooled, put
  into the object store, the event recorded) and ``download_evidence`` (read back,
  checked, streamed), in MB/s (10^6 bytes) over the whole call;
- the ledger process's RSS, sampled every 10 ms during the upload, against its RSS when
  idle (after a small upload and download warmed every path up).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nats
import psutil
import yaml

from bench.scenarios import ledger_process
from incidentledger_client import LedgerClient
from services.common.natsserver import NatsServer

PIECE = 1 << 20
JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01"
CEILING_BUCKET = "bench_plain"


@dataclass(frozen=True)
class EvidenceRun:
    size_mb: float
    plain_put: float  # MB/s
    library_get: float  # nats-py's ObjectStore.get
    consumer_read: float  # the chunks read with an ordered consumer, without the library's get
    upload: float
    download: float
    idle_rss_mb: float
    peak_rss_mb: float
    identical: bool  # the download's bytes are the upload's

    @property
    def plain_get(self) -> float:
        """The download's ceiling: the faster plain read of the object."""
        return max(self.library_get, self.consumer_read)

    @property
    def rss_growth_mb(self) -> float:
        return self.peak_rss_mb - self.idle_rss_mb


def write_file(path: Path, size: int) -> str:
    """``size`` random bytes after a JPEG header, written piece by piece; their SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        written = 0
        while written < size:
            piece = os.urandom(min(PIECE, size - written))
            if written == 0:
                piece = JPEG_HEAD + piece[len(JPEG_HEAD) :]
            out.write(piece)
            digest.update(piece)
            written += len(piece)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while piece := source.read(PIECE):
            digest.update(piece)
    return digest.hexdigest()


async def _plain(url: str, source: Path, target: Path) -> tuple[float, float, float]:
    """Seconds of a plain put of ``source``, of nats-py's get of it into ``target``, and of
    an ordered consumer's read of its chunks into ``target``."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        store = await js.create_object_store(CEILING_BUCKET)
        started = time.perf_counter()
        with source.open("rb") as data:
            await store.put("plain", data)
        put = time.perf_counter() - started
        started = time.perf_counter()
        with target.open("wb") as out:
            await store.get("plain", writeinto=out)
        get = time.perf_counter() - started
        started = time.perf_counter()
        info = await store.get_info("plain")
        subscription = await js.subscribe(
            f"$O.{CEILING_BUCKET}.C.{info.nuid}", ordered_consumer=True
        )
        loop = asyncio.get_running_loop()
        digest = hashlib.sha256()
        with target.open("wb") as out:
            while True:
                message = await subscription.next_msg(timeout=30)
                await loop.run_in_executor(None, out.write, message.data)
                digest.update(message.data)
                if message.metadata.num_pending == 0:
                    break
        await subscription.unsubscribe()
        read = time.perf_counter() - started
        if digest.hexdigest() != _sha256(source):
            raise RuntimeError("the plain read did not give the file back")
        return put, get, read
    finally:
        await nc.close()


class RssSampler:
    """The largest RSS of a process while it runs, sampled every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self._process = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self._interval)

    @contextmanager
    def sampling(self) -> Iterator[None]:
        self._thread.start()
        try:
            yield
        finally:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._process.memory_info().rss)


def run(workdir: Path, size_mb: int) -> EvidenceRun:
    size = size_mb * 1_000_000
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "evidence.jpg"
    digest = write_file(source, size)
    small = workdir / "warm-up.jpg"
    write_file(small, 1_000_000)
    with NatsServer(workdir / "nats", log_file=workdir / "nats.log") as server:
        put_s, get_s, read_s = asyncio.run(_plain(server.url, source, workdir / "plain-copy.jpg"))
        (workdir / "plain-copy.jpg").unlink()
        data_dir = workdir / "ledger"
        settings = {"NATS_URL": server.url, "LEDGER_EVIDENCE_MAX_MB": str(size_mb + 1)}
        with ledger_process(data_dir, settings) as (process, target):
            raw = yaml.safe_load((data_dir / "credentials" / "dev-tokens.yaml").read_text())
            with LedgerClient(target, raw["kesbangpol"]["token"], timeout=600) as ledger:
                incident = ledger.report("Amplop dibagikan", "money_politics", "ipuh").incident
                # Warm-up: every path of an upload and a download taken once.
                _, warm = ledger.attach_evidence(incident, small)
                ledger.download_evidence(warm.name, workdir / "warm-copy.jpg")
                time.sleep(0.5)
                idle = psutil.Process(process.pid).memory_info().rss
                sampler = RssSampler(process.pid)
                with sampler.sampling():
                    started = time.perf_counter()
                    _, evidence = ledger.attach_evidence(incident, source)
                    upload_s = time.perf_counter() - started
                copy = workdir / "ledger-copy.jpg"
                started = time.perf_counter()
                ledger.download_evidence(evidence.name, copy)
                download_s = time.perf_counter() - started
                identical = evidence.sha256 == digest == _sha256(copy)
    mb = size / 1_000_000
    return EvidenceRun(
        size_mb=mb,
        plain_put=mb / put_s,
        library_get=mb / get_s,
        consumer_read=mb / read_s,
        upload=mb / upload_s,
        download=mb / download_s,
        idle_rss_mb=idle / 1_000_000,
        peak_rss_mb=sampler.peak / 1_000_000,
        identical=identical,
    )

"""Reading the stored incident events in worker processes, a position range each, in order.

Verification and export spend most of their time decoding and hashing events, which
are independent of each other; only the ledger-wide chain is sequential (one SHA-256
per event). With workers, each worker process reads its own position ranges straight
from the store (its own connection), decodes, hashes or encodes them, and sends back
small results; the calling process takes them in position order and keeps the chains.

Workers are started with this interpreter and import path (``python -c``, not
multiprocessing, which would import the caller's main module again); requests and
replies are pickles over their standard input and output.
"""

from __future__ import annotations

import importlib
import itertools
import os
import pickle
import queue
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import OperationalError

from services.common.sql import Database, open_database
from services.common.store_errors import STORE_CONNECTION_ERRORS
from services.ledger.audit.encoding import (
    EventDecodeError,
    RawDecoder,
    body_hash,
    export_line,
)
from services.ledger.store import RawRow, rows_query

RANGE = 1000  # positions per job (larger ranges cost memory and gained no speed)
WORKERS = 2  # at most; never more than the CPUs
IN_FLIGHT = 2  # jobs handed to each worker ahead of the one being taken
#: Positions: below this, starting workers costs more than they save. Each worker spends
#: about half a second of CPU importing before its first range, and on two CPUs it shares
#: them with this process. Measured on the 2-core machine, the same store read inline and
#: by two workers: 40,000 events, verify 71,000 against 22,000 events/s, export 38,000
#: against 33,500; 200,000 events, verify 59,900 against 60,800, export 30,400 against
#: 26,700 (docs/performance.md, "Verify and export").
PARALLEL_FROM = 250_000
STORES = {"eventsourcing.sqlite", "eventsourcing.postgres"}


@dataclass(frozen=True)
class StoreSource:
    """What a worker needs to read the store: the settings, the table and the topics."""

    store_env: tuple[tuple[str, str], ...]  # the store's settings (a tuple: sources are dict keys)
    table: str
    topics: tuple[str, ...]

    def read(self, db: Database, after: int, stop: int) -> list[RawRow]:
        """The incident events with ``after < position <= stop``, in position order."""
        statement = rows_query(db.dialect, self.table, len(self.topics), bounded=True)
        with db.transaction() as cur:
            cur.execute(db.q(statement), (after, stop, *self.topics))
            return [(r[0], r[1], r[2], r[3], bytes(r[4])) for r in cur.fetchall()]


def store_source(ledger: Application[Any]) -> StoreSource | None:
    """The ledger's store as workers can read it; None where they cannot (in memory,
    or a mapper that encrypts or compresses, which the workers do not have)."""
    store_env = {k: str(v) for k, v in ledger.env.items()}
    module = store_env.get("PERSISTENCE_MODULE", "")
    if module not in STORES:
        return None
    if module == "eventsourcing.sqlite" and store_env.get("SQLITE_DBNAME", ":memory:") in {
        "",
        ":memory:",
    }:
        return None
    if ledger.mapper.cipher is not None or ledger.mapper.compressor is not None:
        return None
    table = getattr(ledger.recorder, "events_table_name", None)
    if not isinstance(table, str):
        return None
    return StoreSource(
        tuple(sorted(store_env.items())), table, tuple(RawDecoder(ledger.mapper).topics)
    )


def worker_count(span: int, requested: int | None = None) -> int:
    if requested is not None:
        return requested
    return min(WORKERS, os.cpu_count() or 1) if span > PARALLEL_FROM else 0


# ------------------------------------------------------------------ jobs (in the workers)

HASHES = "hashes"
LINES = "lines"

# One event's hash: (position, incident id, version, previous_hash, hash); the hash is None
# where the event does not decode (previous_hash then holds the error, and the incident id
# is as stored), or needs the ledger's mapper (an older schema; previous_hash is then "").
Hashed = tuple[int, str, int, str, str | None]


@dataclass
class Lines:
    """A range's export lines: each event's position, hash and line length (with its
    newline), and the lines themselves; or ``failed`` (an event does not decode), or
    ``needs_mapper`` (an event of an older schema: the calling process encodes the range)."""

    positions: list[int]
    digests: list[str]
    lengths: list[int]
    blob: bytes
    failed: str = ""
    needs_mapper: bool = False


class NeedsMapper(Exception):  # noqa: N818 (a signal, not an error)
    """An event of an older schema version: upcasting needs the ledger's own mapper."""


class WorkerDecoder(RawDecoder):
    """Decodes plain JSON; leaves events that need upcasting to the calling process."""

    def _slow(
        self, topic: str, originator_id: UUID | str, version: int, state: bytes
    ) -> tuple[dict[str, Any], str | None]:
        raise NeedsMapper


def hashes(decoder: RawDecoder, rows: Sequence[RawRow]) -> list[Hashed]:
    result: list[Hashed] = []
    for at, originator_id, version, topic, state in rows:
        try:
            body = decoder.body(topic, originator_id, version, state)
        except NeedsMapper:
            result.append((at, str(originator_id), version, "", None))
            continue
        except EventDecodeError as exc:
            result.append((at, str(originator_id), version, str(exc), None))
            continue
        result.append((at, body["originator_id"], version, body["previous_hash"], body_hash(body)))
    return result


def export_row(decoder: RawDecoder, row: RawRow) -> tuple[bytes, str]:
    """One event's export line (UTF-8, no newline) and hash; ``ValueError`` if it fails."""
    try:
        body, seal = decoder.row_sealed_body(row)
    except EventDecodeError as exc:
        raise ValueError(f"{exc}; run verify") from exc
    try:
        return export_line(body, row[0], seal)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"the event at position {row[0]} cannot be exported: {exc}; run verify"
        ) from exc


def lines(decoder: RawDecoder, rows: Sequence[RawRow]) -> Lines:
    positions: list[int] = []
    digests: list[str] = []
    lengths: list[int] = []
    parts: list[bytes] = []
    for row in rows:
        try:
            line, digest = export_row(decoder, row)
        except NeedsMapper:
            return Lines([], [], [], b"", needs_mapper=True)
        except ValueError as exc:
            return Lines([], [], [], b"", failed=str(exc))
        positions.append(row[0])
        digests.append(digest)
        lengths.append(len(line) + 1)
        parts.append(line)
    parts.append(b"")
    return Lines(positions, digests, lengths, b"\n".join(parts))


class WorkerState:
    """What a worker keeps from job to job: its store connections and its decoder."""

    def __init__(self) -> None:
        self.decoder = WorkerDecoder()
        self._databases: dict[StoreSource, Database] = {}

    def rows(self, source: StoreSource, after: int, stop: int) -> list[RawRow]:
        db = self._databases.get(source)
        if db is None:
            db = self._databases[source] = open_database(dict(source.store_env))
        return source.read(db, after, stop)

    def close(self) -> None:
        for db in self._databases.values():
            db.close()


def hashes_job(state: WorkerState, source: StoreSource, after: int, stop: int) -> list[Hashed]:
    return hashes(state.decoder, state.rows(source, after, stop))


def lines_job(state: WorkerState, source: StoreSource, after: int, stop: int) -> Lines:
    return lines(state.decoder, state.rows(source, after, stop))


CHECK_EXPORT = "check-export"
# Each job's function, called as function(state, *args) in the worker ("module:name", so
# that jobs defined beside their callers are imported only in the workers).
JOBS = {
    HASHES: f"{__name__}:hashes_job",
    LINES: f"{__name__}:lines_job",
    CHECK_EXPORT: "services.ledger.audit.verify_exported:check_export_chunk",
}


def _job(name: str) -> Callable[..., object]:
    module, function = JOBS[name].split(":")
    found: Callable[..., object] = getattr(importlib.import_module(module), function)
    return found


def serve_worker() -> None:
    """A worker's loop: ``(job, args)`` in, the job's result (or a :class:`Failure`) out."""
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    state = WorkerState()
    try:
        while True:
            try:
                job, args = pickle.load(requests)  # noqa: S301 - from the process that started us
            except EOFError:
                return
            try:
                reply: object = _job(job)(state, *args)
            except Exception as exc:  # handed to the parent, which raises it
                unreachable = isinstance(exc, STORE_CONNECTION_ERRORS)
                reply = Failure(f"{type(exc).__name__}: {exc}", unreachable)
            pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
            replies.flush()
    finally:
        state.close()


# ------------------------------------------------------------------ the calling side


@dataclass(frozen=True)
class Failure:
    """A worker's job failed: why, and whether the store could not be reached."""

    message: str
    store_unreachable: bool


class WorkerError(RuntimeError):
    """A worker process failed."""


_DEAD = object()  # the worker's output ended


class Worker:
    def __init__(self) -> None:
        environ = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._process = subprocess.Popen(  # noqa: S603 - this interpreter, fixed code, no shell
            [sys.executable, "-c", f"import {__name__} as m; m.serve_worker()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=environ,
        )
        self._replies: queue.SimpleQueue[object] = queue.SimpleQueue()
        # Replies are read as they come, so that neither side ever waits on a full pipe.
        self._reader = threading.Thread(target=self._read, name="audit-scan-worker", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        out = self._process.stdout
        if out is None:  # pragma: no cover - always a pipe
            raise RuntimeError("no pipe from the worker")
        try:
            while True:
                self._replies.put(pickle.load(out))  # noqa: S301 - from our own worker
        except (EOFError, OSError, pickle.UnpicklingError):
            self._replies.put(_DEAD)

    def send(self, request: tuple[str, tuple[Any, ...]]) -> None:
        stdin = self._process.stdin
        if stdin is None:  # pragma: no cover - always a pipe
            raise RuntimeError("no pipe to the worker")
        try:
            pickle.dump(request, stdin, protocol=pickle.HIGHEST_PROTOCOL)
            stdin.flush()
        except OSError as exc:
            raise WorkerError(f"an audit worker process failed: {exc}") from exc

    def receive(self) -> object:
        reply = self._replies.get()
        if reply is _DEAD:
            code = self._process.wait()
            raise WorkerError(f"an audit worker process ended (exit code {code})")
        if isinstance(reply, Failure):
            if reply.store_unreachable:  # as the store's own error: UNAVAILABLE, not INTERNAL
                raise OperationalError(f"an audit worker: {reply.message}")
            raise WorkerError(f"an audit worker failed: {reply.message}")
        return reply

    def close(self) -> None:
        if self._process.stdin is not None:
            with suppress(OSError):
                self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._reader.join(timeout=10)
        if self._process.stdout is not None:
            self._process.stdout.close()


@contextmanager
def workers(count: int) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    try:
        for _ in range(count):
            started.append(Worker())
        yield started
    finally:
        for worker in started:
            worker.close()


def ranges(after: int, stop: int, size: int | None = None) -> Iterator[tuple[int, int]]:
    """``(after, stop]`` cut into consecutive ranges of ``size`` (``RANGE``) positions."""
    size = size or RANGE
    low = after
    while low < stop:
        high = min(low + size, stop)
        yield low, high
        low = high


def ordered(
    pool: list[Worker], requests: Iterable[tuple[str, tuple[Any, ...]]]
) -> Iterator[tuple[tuple[Any, ...], object]]:
    """Each request's arguments with its result, in the order of the requests; the
    requests are handed round the workers, a few ahead of the one being taken."""
    window: deque[tuple[tuple[Any, ...], Worker]] = deque()
    turn = itertools.cycle(pool)
    for job, args in requests:
        worker = next(turn)
        worker.send((job, args))
        window.append((args, worker))
        if len(window) > len(pool) * IN_FLIGHT:
            done, by = window.popleft()
            yield done, by.receive()
    while window:
        done, by = window.popleft()
        yield done, by.receive()


def scan(
    pool: list[Worker], job: str, source: StoreSource, after: int, stop: int
) -> Iterator[tuple[tuple[int, int], object]]:
    """Each range of ``(after, stop]`` with the job's result on it, in position order."""
    requests = ((job, (source, low, high)) for low, high in ranges(after, stop))
    for (_, low, high), result in ordered(pool, requests):
        yield (low, high), result

"""Export of the incident events to JSON Lines, streaming, for auditors and offline verification."""

from __future__ import annotations

import itertools
import json
import os
import pickle
import queue
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from uuid import UUID

from eventsourcing.application import Application

from services.common.sql import Database, open_database
from services.ledger.audit.checkpoints import (
    BATCH,
    ChainState,
    Checkpoint,
    extend_chain,
    iterate_checkpoints,
)
from services.ledger.audit.encoding import (
    EXPORT_FORMAT,
    GENESIS_HASH,
    EventDecodeError,
    RawDecoder,
    RawRow,
    batches,
    chain_step,
    export_line,
)


@dataclass(frozen=True)
class ExportStats:
    events: int
    first_position: int | None
    last_position: int | None
    head: str  # the chain head after the last exported event
    checkpoints: int  # checkpoint records written into the file
    bytes: int


class ExportError(RuntimeError):
    """The stored history cannot be exported (an event does not decode)."""


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@contextmanager
def _output(target: Path | str | IO[bytes]) -> Iterator[IO[bytes]]:
    if isinstance(target, Path | str):
        with Path(target).open("wb") as out:
            yield out
    else:
        yield target


# Exports longer than this many positions encode their events in worker processes.
PARALLEL_FROM = 10_000
WORKERS = 2
IN_FLIGHT = 2  # batches handed to each worker ahead of the one being written

Encoded = tuple[bytes, str] | tuple[None, str]  # (line, hash), or (None, error or "")


def export_jsonl(
    ledger: Application[Any],
    target: Path | str | IO[bytes],
    start: int = 0,
    stop: int | None = None,
    *,
    workers: int | None = None,
) -> ExportStats:
    """Write the incident events with ``start <= position <= stop`` as JSON Lines.

    Lines: a header, one line per event (its ``IncidentEvent`` envelope plus the
    ``canonical`` body that was hashed), after each event the stored checkpoints at
    its position, and an end record (see the package documentation).

    A long range is decoded and encoded by ``workers`` processes (default: up to
    ``WORKERS``, one per CPU) while this process reads the store, keeps the chain
    and writes, in log order; the file is the same byte for byte.
    """
    decoder = RawDecoder(ledger.mapper)
    recorder = ledger.recorder
    if stop is None:  # a fixed end, so that checkpoints made meanwhile stay outside
        stop = recorder.max_notification_id() or 0
    database = open_database(ledger.env)
    try:
        base = _start_state(ledger, decoder, database, start)
        pending = iterate_checkpoints(database, after=base.position - 1, until=stop)
        next_cp = next(pending, None)
        count = cps = 0
        first: int | None = None
        head, position = base.head, base.position
        if workers is None:
            workers = min(WORKERS, os.cpu_count() or 1) if stop - position > PARALLEL_FROM else 0
        if ledger.mapper.cipher is not None or ledger.mapper.compressor is not None:
            workers = 0  # the workers decode plain JSON only
        with (
            _output(target) as out,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-write") as writer,
            _encoders(workers) as pool,
        ):
            header = {
                "record": "header",
                "format": EXPORT_FORMAT,
                "start": start,
                "stop": stop,
                "start_position": base.position,
                "start_head": base.head,
                "start_events": base.events,
                "exported_at": datetime.now(UTC).isoformat(timespec="microseconds"),
            }
            written = out.write(_dumps(header).encode("utf-8") + b"\n")
            writing: Future[int] | None = None
            for batch, encoded in _encoded_batches(
                pool, decoder, batches(recorder, decoder.topics, position, stop, BATCH)
            ):
                chunk: list[bytes] = []
                for row, (line, digest) in zip(batch, encoded, strict=True):
                    at = row[0]
                    # Checkpoints go right after the event at their position (or, if
                    # that event is gone, before the next one), where verify checks them.
                    while next_cp is not None and next_cp.position < at:
                        chunk.append(_checkpoint_line(next_cp))
                        cps += 1
                        next_cp = next(pending, None)
                    if line is None:
                        if digest:  # the worker's error
                            raise ExportError(digest)
                        line, digest = _encode_row(decoder, row)  # needs the ledger's mapper
                    head = chain_step(head, at, digest)
                    chunk.append(line)
                    count += 1
                    if first is None:
                        first = at
                    while next_cp is not None and next_cp.position == at:
                        chunk.append(_checkpoint_line(next_cp))
                        cps += 1
                        next_cp = next(pending, None)
                chunk.append(b"")
                # Written in a helper thread while the next batch is encoded (in order).
                if writing is not None:
                    written += writing.result()
                writing = writer.submit(out.write, b"\n".join(chunk))
                position = batch[-1][0]
            if writing is not None:
                written += writing.result()
                writing = None
            while next_cp is not None:  # beyond the last event: evidence of truncation
                written += out.write(_checkpoint_line(next_cp) + b"\n")
                cps += 1
                next_cp = next(pending, None)
            end = {"record": "end", "events": count, "last_position": position, "head": head}
            written += out.write(_dumps(end).encode("utf-8") + b"\n")
        return ExportStats(count, first, position if count else None, head, cps, written)
    finally:
        database.close()


def _encode_row(decoder: RawDecoder, row: RawRow) -> tuple[bytes, str]:
    """One event's export line (UTF-8, no newline) and hash; :class:`ExportError` if it fails."""
    at, originator_id, version, topic, stored = row
    try:
        body = decoder.body(topic, originator_id, version, stored)
    except EventDecodeError as exc:
        raise ExportError(
            f"the event at position {at} (incident {originator_id}, "
            f"version {version}) does not decode: {exc}; run verify"
        ) from exc
    try:
        line, digest = export_line(body, at)
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(
            f"the event at position {at} cannot be exported: {exc}; run verify"
        ) from exc
    return line, digest


# ------------------------------------------------------------------ worker processes


class _NeedsMapper(Exception):  # noqa: N818 (a signal, not an error)
    """An event of an older schema version: upcasting needs the ledger's own mapper."""


class _WorkerDecoder(RawDecoder):
    """Decodes plain JSON; leaves events that need upcasting to the exporting process."""

    def _slow(
        self, topic: str, originator_id: UUID | str, version: int, state: bytes
    ) -> dict[str, Any]:
        raise _NeedsMapper


_worker_decoder: RawDecoder | None = None


def _encode_rows(rows: list[RawRow]) -> list[Encoded]:
    """In a worker process: each row's line and hash, or (None, error), or (None, "")."""
    global _worker_decoder
    if _worker_decoder is None:
        _worker_decoder = _WorkerDecoder()
    decoder = _worker_decoder
    result: list[Encoded] = []
    for row in rows:
        try:
            result.append(_encode_row(decoder, row))
        except _NeedsMapper:
            result.append((None, ""))
        except ExportError as exc:
            result.append((None, str(exc)))
    return result


_DEAD = object()  # the worker's output ended


class _Worker:
    """A process that encodes batches of rows: ``python -c`` running :func:`serve_worker`.

    Started with the interpreter and import path of this process (not through
    multiprocessing, which would import the caller's main module again). Requests
    and replies are pickles over its standard input and output; a thread reads the
    replies as they come, so that neither side ever waits on a full pipe.
    """

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._process = subprocess.Popen(  # noqa: S603 - this interpreter, fixed code, no shell
            [sys.executable, "-c", f"import {__name__} as m; m.serve_worker()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self._replies: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, name="audit-export-worker", daemon=True)
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

    def send(self, rows: list[RawRow]) -> None:
        stdin = self._process.stdin
        if stdin is None:  # pragma: no cover - always a pipe
            raise RuntimeError("no pipe to the worker")
        try:
            pickle.dump(rows, stdin, protocol=pickle.HIGHEST_PROTOCOL)
            stdin.flush()
        except OSError as exc:
            raise ExportError(f"an export worker process failed: {exc}") from exc

    def receive(self) -> list[Encoded]:
        reply = self._replies.get()
        if reply is _DEAD:
            code = self._process.wait()
            raise ExportError(f"an export worker process ended (exit code {code})")
        result: list[Encoded] = reply  # type: ignore[assignment]
        return result

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


def serve_worker() -> None:
    """The worker's loop: a pickled list of rows in, the pickled list of encodings out."""
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            rows = pickle.load(requests)  # noqa: S301 - from the process that started us
        except EOFError:
            return
        pickle.dump(_encode_rows(rows), replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()


@contextmanager
def _encoders(count: int) -> Iterator[list[_Worker]]:
    workers: list[_Worker] = []
    try:
        for _ in range(count):
            workers.append(_Worker())
        yield workers
    finally:
        for worker in workers:
            worker.close()


def _encoded_batches(
    workers: list[_Worker], decoder: RawDecoder, source: Iterator[list[RawRow]]
) -> Iterator[tuple[list[RawRow], list[Encoded]]]:
    """Each batch with its encoded rows, in order; at most a few batches in flight."""
    if not workers:
        for batch in source:
            yield batch, [_encode_row(decoder, row) for row in batch]
        return
    window: deque[tuple[list[RawRow], _Worker]] = deque()
    turn = itertools.cycle(workers)
    for batch in source:
        worker = next(turn)
        worker.send(batch)
        window.append((batch, worker))
        if len(window) > len(workers) * IN_FLIGHT:
            done, by = window.popleft()
            yield done, by.receive()
    while window:
        done, by = window.popleft()
        yield done, by.receive()


def _checkpoint_line(checkpoint: Checkpoint) -> bytes:
    return _dumps({"record": "checkpoint", **checkpoint.to_json()}).encode("utf-8")


def _start_state(
    ledger: Application[Any], decoder: RawDecoder, database: Database, start: int
) -> ChainState:
    """The chain just before ``start``: from the latest valid checkpoint before it, extended."""
    if start <= 1:
        return ChainState(0, GENESIS_HASH, 0)
    base = ChainState(0, GENESIS_HASH, 0)
    for checkpoint in iterate_checkpoints(database, until=start - 1):
        base = ChainState(checkpoint.position, checkpoint.head, checkpoint.events)
    return extend_chain(ledger.recorder, decoder, base, stop=start - 1)

"""Export of the incident events to JSON Lines, streaming, for auditors and offline verification."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

from eventsourcing.application import Application
from eventsourcing.persistence import ApplicationRecorder

from services.common.sql import Database, open_database
from services.ledger.audit import scan
from services.ledger.audit.checkpoints import (
    BATCH,
    ChainState,
    Checkpoint,
    extend_chain,
    iterate_checkpoints,
    last_checkpoint_position,
)
from services.ledger.audit.encoding import (
    EXPORT_FORMAT,
    GENESIS_HASH,
    RawDecoder,
    batches,
    chain_step,
)
from services.ledger.audit.scan import store_source
from services.ledger.store import RawRow


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
    """The file to write to. A path gets its file only once the export is whole: it is
    written beside it (``.NAME.XXXXXXXX.partial``) and renamed at the end, and removed
    when the export fails. Before, a failed export left a header-only file, which verify
    read as a log whose every event was deleted. A path that is not a regular file
    (``/dev/stdout``, a pipe) is written as it goes."""
    if not isinstance(target, Path | str):
        yield target
        return
    path = Path(target)
    if path.exists() and not path.is_file():
        with path.open("wb") as out:
            yield out
        return
    # Beside it, so that the rename stays on its file system; a name of its own (O_EXCL),
    # so that two exports, or someone's file, are never written into.
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as out:
            yield out
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def export_jsonl(
    ledger: Application[Any],
    target: Path | str | IO[bytes],
    start: int = 0,
    stop: int | None = None,
    *,
    workers: int | None = None,
) -> ExportStats:
    """Write the incident events with ``start <= position <= stop`` as JSON Lines.

    ``stop`` is the last position of the range, and the log's last position bounds it: the
    header's ``stop`` is the last position the file covers (with or without ``stop``), so
    that a checkpoint made after the export is never taken for one the file should reach.
    A range that starts after the log's end, or ends before it starts, is a ValueError.

    Lines: a header, one line per event (its ``IncidentEvent`` envelope plus the
    ``canonical`` body that was hashed), after each event the stored checkpoints at
    its position, and an end record (see the package documentation).

    A long range is read, decoded and encoded by ``workers`` processes (default: up
    to two, one per CPU; see :mod:`services.ledger.audit.scan`) while this process
    keeps the chain and writes, in log order; the file is the same byte for byte.
    """
    decoder = RawDecoder(ledger.mapper)
    recorder = ledger.recorder
    if start < 0 or (stop is not None and stop < start):
        raise ValueError(f"no positions from {start} to {stop}: the range is empty")
    database = open_database(ledger.env)
    try:
        # A whole log's export carries every checkpoint stored when it starts, those past
        # the log's end too: read before the end is, they are of events deleted since
        # (a checkpoint is made only for an event already stored), never of events recorded
        # during the export, and they are what shows a verifier of the file alone that the
        # log was cut (before, they were left out and a truncated store exported clean).
        checkpointed = last_checkpoint_position(database) if stop is None else 0
        # A fixed end, so that events and checkpoints made meanwhile stay outside.
        last = recorder.max_notification_id() or 0
        if start > max(last, 1):
            raise ValueError(f"nothing to export from position {start}: the log ends at {last}")
        stop = last if stop is None else min(stop, last)
        base = _start_state(ledger, decoder, database, start)
        pending = iterate_checkpoints(
            database, after=base.position - 1, until=max(stop, checkpointed)
        )
        next_cp = next(pending, None)
        count = cps = 0
        first: int | None = None
        head, position = base.head, base.position
        source = store_source(ledger)
        count_workers = scan.worker_count(stop - position, workers) if source is not None else 0
        with (
            _output(target) as out,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-write") as writer,
            scan.workers(count_workers) as pool,
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
            for encoded in _encoded(pool, source, decoder, recorder, position, stop):
                chunk: list[bytes] = []
                if next_cp is None or next_cp.position > encoded.positions[-1]:
                    chunk.append(encoded.blob)  # no checkpoint among these events
                    for at, digest in zip(encoded.positions, encoded.digests, strict=True):
                        head = chain_step(head, at, digest)
                else:
                    offset = 0
                    for at, digest, length in zip(
                        encoded.positions, encoded.digests, encoded.lengths, strict=True
                    ):
                        # Checkpoints go right after the event at their position (or, if
                        # that event is gone, before the next one), where verify checks them.
                        while next_cp is not None and next_cp.position < at:
                            chunk.append(_checkpoint_line(next_cp) + b"\n")
                            cps += 1
                            next_cp = next(pending, None)
                        head = chain_step(head, at, digest)
                        chunk.append(encoded.blob[offset : offset + length])
                        offset += length
                        while next_cp is not None and next_cp.position == at:
                            chunk.append(_checkpoint_line(next_cp) + b"\n")
                            cps += 1
                            next_cp = next(pending, None)
                count += len(encoded.positions)
                if first is None:
                    first = encoded.positions[0]
                position = encoded.positions[-1]
                # Written in a helper thread while the next batch is encoded (in order).
                if writing is not None:
                    written += writing.result()
                writing = writer.submit(out.write, b"".join(chunk))
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


def _encoded(
    pool: list[scan.Worker],
    source: scan.StoreSource | None,
    decoder: RawDecoder,
    recorder: ApplicationRecorder,
    after: int,
    stop: int,
) -> Iterator[scan.Lines]:
    """The export lines of the events in ``(after, stop]``, batch by batch, in order; by
    the workers when there are any (this process encodes what they cannot)."""
    if not pool or source is None:
        for batch in batches(recorder, decoder.topics, after, stop, BATCH):
            yield _lines(decoder, batch)
        return
    for (low, high), result in scan.scan(pool, scan.LINES, source, after, stop):
        encoded = cast(scan.Lines, result)
        if encoded.needs_mapper:  # an older schema version: upcast here
            for batch in batches(recorder, decoder.topics, low, high, BATCH):
                yield _lines(decoder, batch)
        elif encoded.failed:
            raise ExportError(encoded.failed)
        elif encoded.positions:
            yield encoded


def _lines(decoder: RawDecoder, batch: list[RawRow]) -> scan.Lines:
    encoded = scan.lines(decoder, batch)
    if encoded.failed:
        raise ExportError(encoded.failed)
    return encoded


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

"""Export of the incident events to JSON Lines, streaming, for auditors and offline verification."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

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


def export_jsonl(
    ledger: Application[Any],
    target: Path | str | IO[bytes],
    start: int = 0,
    stop: int | None = None,
) -> ExportStats:
    """Write the incident events with ``start <= position <= stop`` as JSON Lines.

    Lines: a header, one line per event (its ``IncidentEvent`` envelope plus the
    ``canonical`` body that was hashed), after each event the stored checkpoints at
    its position, and an end record (see the package documentation).
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
        with (
            _output(target) as out,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-write") as writer,
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
            for batch in batches(recorder, decoder.topics, position, stop, BATCH):
                chunk: list[bytes] = []
                for at, originator_id, version, topic, stored in batch:
                    # Checkpoints go right after the event at their position (or, if
                    # that event is gone, before the next one), where verify checks them.
                    while next_cp is not None and next_cp.position < at:
                        chunk.append(_checkpoint_line(next_cp))
                        cps += 1
                        next_cp = next(pending, None)
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
                    head = chain_step(head, at, digest)
                    chunk.append(line.encode("utf-8"))
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

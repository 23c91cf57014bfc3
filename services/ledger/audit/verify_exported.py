"""Verification of an export file, offline: its lines into a :class:`ChainVerifier`
(parsed and hashed by worker processes, a chunk each, when the file is long); the header,
the checkpoints and the end record checked too."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import IO, Any, cast

import orjson

from services.common.jsoncodec import loads
from services.ledger.audit import scan
from services.ledger.audit.checkpoints import ChainState, Checkpoint
from services.ledger.audit.encoding import EXPORT_FORMAT, envelope_from_body, export_line
from services.ledger.audit.verifier import Body, ChainVerifier, Divergence, VerifyReport


class ExportFormatError(ValueError):
    """The file is not a ledger export (no or an unknown header)."""


def verify_export(
    source: Path | str | IO[bytes],
    public_key: bytes | Sequence[bytes],
    checkpoints: Iterable[Checkpoint] | None = None,
    *,
    workers: int | None = None,
) -> VerifyReport:
    """Verify an export file (see the package documentation for its format) offline.

    A long file (a path) is parsed and hashed by ``workers`` processes (default: up to
    two, one per CPU), a chunk of lines each, while this process keeps the chains; the
    report is the same.
    """
    if isinstance(source, Path | str):
        path = Path(source)
        with path.open("rb") as stream:
            return _verify_lines(stream, public_key, checkpoints, path, workers)
    return _verify_lines(source, public_key, checkpoints, None, 0)


# Files longer than this are checked in worker processes, in chunks of about CHUNK bytes.
# Shorter ones are checked faster in this process (as scan.PARALLEL_FROM says for the store):
# on the 2-core machine, a 200,000-event export (66 MB) was verified at 38,200 events/s
# inline and 32,500 by two workers; 40,000 events, 62,700 against 37,600.
PARALLEL_FILE_FROM = 256 * 2**20
CHUNK = 4 * 2**20


def _verify_lines(
    lines: IO[bytes],
    public_key: bytes | Sequence[bytes],
    checkpoints: Iterable[Checkpoint] | None,
    path: Path | None,
    workers: int | None,
) -> VerifyReport:
    first = lines.readline()
    try:
        header = json.loads(first)
    except ValueError:
        header = None
    if isinstance(header, dict) and "record" not in header and "hash" in header:
        raise ExportFormatError(
            "not a ledger export: the first line is an event, not the export's header (a "
            "replay file such as `ledgerctl audit export` writes holds no chain state or "
            "checkpoints; make a verifiable export with `ledger-audit export`)"
        )
    if not isinstance(header, dict) or header.get("record") != "header":
        raise ExportFormatError("not a ledger export: the first line is not its header")
    if header.get("format") != EXPORT_FORMAT:
        raise ExportFormatError(f"unknown export format {header.get('format')!r}")
    try:
        start = ChainState(
            int(header["start_position"]), str(header["start_head"]), int(header["start_events"])
        )
        # The range asked for; without it (no exporter wrote such a file) every
        # checkpoint is checked against the file.
        asked: tuple[int | None, int | None] = (
            (int(header["start"]), int(header["stop"])) if "stop" in header else (None, None)
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportFormatError(f"malformed export header: {exc}") from exc
    verifier = ChainVerifier(
        public_key,
        sorted(checkpoints or (), key=lambda c: c.position),
        start=start,
        partial=start.events > 0,
        stop=asked[1],
    )
    feed = _LineFeed(verifier)
    size = path.stat().st_size if path is not None else 0
    if workers is None:
        workers = min(scan.WORKERS, os.cpu_count() or 1) if size > PARALLEL_FILE_FROM else 0
    if path is None or workers == 0:
        for number, line in enumerate(lines, 2):
            if not feed.line(number, line):
                break
    else:
        with scan.workers(workers) as pool, path.open("rb") as reread:
            _feed_checked(feed, pool, path, len(first), size, reread)
    report = replace(verifier.finish(), start=asked[0], stop=asked[1])
    trailer = _check_end(verifier, feed.end)
    if trailer is not None and (report.divergence is None):
        return replace(report, ok=False, divergence=trailer)
    return report


class _LineFeed:
    """The lines after the header, in order, into the verifier."""

    def __init__(self, verifier: ChainVerifier) -> None:
        self.verifier = verifier
        self.end: dict[str, Any] | None = None

    def line(self, number: int, line: bytes) -> bool:
        """One line of the file; False once nothing more is to be read."""
        if not line.strip():
            return True
        verifier = self.verifier
        quick = exported_as_is(line)
        if quick is not None:
            return self._follows_events(number) and self.event(number, *quick)
        where = verifier.last_position
        try:
            record = loads(line)
            if not isinstance(record, dict):
                raise TypeError("not an object")
        except (ValueError, TypeError) as exc:
            verifier.found(where, _unreadable(number, where, str(exc)))
            return True
        if not self._follows_events(number):
            return False
        kind = record.get("record")
        if kind == "checkpoint":
            try:
                verifier.offer_checkpoint(Checkpoint.from_json(record), number)
            except ValueError as exc:
                verifier.found(where, _unreadable(number, where, str(exc)))
            return True
        if kind == "end":
            self.end = record
            return True
        return self.event(number, check_event_line(record, line), record.get("canonical"))

    def _follows_events(self, number: int) -> bool:
        if self.end is None:
            return True
        self.verifier.found(
            self.verifier.last_position,
            Divergence(
                "inserted", None, None, None, f"line {number} follows the end record", number
            ),
        )
        return False

    def event(self, number: int, checked: EventCheck | str, body: Body | None) -> bool:
        """One event line, checked (here or in a worker); False once nothing more is read."""
        if not self._follows_events(number):
            return False
        verifier = self.verifier
        if isinstance(checked, str):
            where = verifier.last_position
            verifier.found(where, _unreadable(number, where, f"not an event line ({checked})"))
            return True
        incident, version, position, previous_hash, digest, problem, seal = checked
        verifier.add(position, incident, version, previous_hash, digest, body, None, seal, number)
        if problem is not None:
            detail = f"line {number}: {_PROBLEMS[problem]}"
            verifier.found(
                position,
                Divergence("modified", f"incidents/{incident}", version, position, detail, number),
            )
        return True


def _unreadable(number: int, where: int, error: str) -> Divergence:
    return Divergence(
        "modified",
        None,
        None,
        None,
        f"line {number} (after position {where}) is unreadable: {error}",
        number,
    )


_PROBLEMS = {
    "hash": "the event's hash does not match its content",
    "envelope": "the envelope does not match the canonical event",
}
# An event line checked on its own: (incident, version, position, previous_hash, hash,
# problem, seal), the problem None or a key of _PROBLEMS; or why it is not an event line.
EventCheck = tuple[str, int, int, str, str, str | None, str | None]


def exported_as_is(text: bytes) -> tuple[EventCheck, dict[str, Any]] | None:
    """The check of an event line that is byte for byte what the exporter writes for its
    canonical body, with that body's hash (nearly every line of a file), and the body;
    None for any other line, which :func:`check_event_line` then reads.

    The line is read by orjson alone, without :func:`loads`'s search for long numbers
    (2.4 us of the 14 an event line costs; docs/performance.md, "Verify and export"): the
    one number orjson reads differently from json, an integer beyond 64 bits, becomes a
    float, which the exporter writes with a point or an exponent, never as that integer's
    digits; so a line written again exactly was read exactly.
    """
    try:
        record = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if type(record) is not dict or "record" in record:
        return None
    body, position, seal = record.get("canonical"), record.get("position"), record.get("seal")
    if type(body) is not dict or type(position) is not str:
        return None
    if seal is not None and type(seal) is not str:
        return None
    try:
        line, digest = export_line(body, int(position), seal)
        if line != text.rstrip(b"\r\n") or record.get("hash") != digest:
            return None
        incident, version = str(body["originator_id"]), int(body["originator_version"])
        checked = (incident, version, int(position), str(body["previous_hash"]), digest, None, seal)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return None
    return checked, body


def check_event_line(record: dict[str, Any], text: bytes) -> EventCheck | str:
    """What one event line says, and whether its hash and envelope match its body."""
    body = record.get("canonical")
    try:
        if not isinstance(body, dict):
            raise TypeError("no canonical body")
        incident = str(body["originator_id"])
        version = int(body["originator_version"])
        position = int(record["position"])
        previous_hash = str(body["previous_hash"])
        seal = record.get("seal")
        if seal is not None and not isinstance(seal, str):
            raise TypeError("the seal is not text")
        line, digest = export_line(body, position, seal)
        # Exactly what the exporter writes: then the envelope matches the body.
        same = line == text.rstrip(b"\r\n")
        expected = None if same else envelope_from_body(body, position, digest, seal)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        return str(exc)
    problem = None
    if record.get("hash") != digest:
        problem = "hash"
    elif expected is not None:
        envelope = {k: v for k, v in record.items() if k != "canonical"}
        if not _same_envelope(envelope, expected):
            problem = "envelope"
    return incident, version, position, previous_hash, digest, problem, seal


# What a worker returns for each line of its chunk: the checked event and the line's
# offset in the file, or the line itself where this process reads it (anything else).
CheckedLine = tuple[EventCheck | str, int] | bytes


def check_export_chunk(
    state: scan.WorkerState, path: str, start: int, end: int
) -> tuple[int, list[CheckedLine]]:
    """In a worker: the lines in ``[start, end)`` of the file, each checked or as is."""
    with Path(path).open("rb") as stream:
        stream.seek(start)
        data = stream.read(end - start)
    pieces = data.split(b"\n")  # lines as a file yields them: ended by "\n" alone
    last = pieces.pop()
    result: list[CheckedLine] = []
    offset = start
    for line in [piece + b"\n" for piece in pieces] + ([last] if last else []):
        here, offset = offset, offset + len(line)
        quick = exported_as_is(line)
        if quick is not None:
            result.append((quick[0], here))
            continue
        try:
            record = loads(line) if line.strip() else None
        except ValueError:
            record = None
        if not isinstance(record, dict) or record.get("record") in {"checkpoint", "end"}:
            result.append(line)  # blank, unreadable, a checkpoint or the end: read here
            continue
        result.append((check_event_line(record, line), here))
    return len(result), result


def _chunks(stream: IO[bytes], start: int, size: int) -> Iterator[tuple[int, int]]:
    """``[start, size)`` of the file cut at line ends into spans of about ``CHUNK`` bytes."""
    low = start
    while low < size:
        high = low + CHUNK
        if high < size:
            stream.seek(high)
            stream.readline()  # on to the end of the line the cut falls in
            high = stream.tell()
        high = min(high, size)
        yield low, high
        low = high


def _feed_checked(
    feed: _LineFeed, pool: list[scan.Worker], path: Path, start: int, size: int, reread: IO[bytes]
) -> None:
    """The lines after the header, checked by the workers, into the feed in order."""

    def body_at(offset: int) -> dict[str, Any]:  # read again only where a link is broken
        reread.seek(offset)
        body: dict[str, Any] = loads(reread.readline())["canonical"]
        return body

    with path.open("rb") as cutter:
        spans = _chunks(cutter, start, size)
        requests = ((scan.CHECK_EXPORT, (str(path), low, high)) for low, high in spans)
        number = 2
        for _, result in scan.ordered(pool, requests):
            count, checked = cast(tuple[int, list[CheckedLine]], result)
            for index, item in enumerate(checked):
                if isinstance(item, bytes):
                    going = feed.line(number + index, item)
                else:
                    event, offset = item
                    going = feed.event(number + index, event, partial(body_at, offset))
                if not going:
                    return
            number += count


def _same_envelope(record: dict[str, Any], expected: dict[str, Any]) -> bool:
    payload, wanted = record.pop("payload_json", None), expected.pop("payload_json")
    if record != expected:
        return False
    if payload == wanted:
        return True
    try:
        return _same_value(json.loads(str(payload)), json.loads(wanted))
    except ValueError:
        return False


def _same_value(found: Any, wanted: Any) -> bool:
    """Equal, where a time may be written without its zero microseconds."""
    if isinstance(wanted, str) and isinstance(found, str):
        if found == wanted:
            return True
        return (
            len(wanted) == 32 and wanted[20:26] == "000000" and found == wanted[:19] + wanted[26:]
        )
    if isinstance(wanted, dict) and isinstance(found, dict):
        return found.keys() == wanted.keys() and all(
            _same_value(found[k], wanted[k]) for k in wanted
        )
    if isinstance(wanted, list) and isinstance(found, list):
        return len(found) == len(wanted) and all(
            _same_value(f, w) for f, w in zip(found, wanted, strict=True)
        )
    return bool(found == wanted and type(found) is type(wanted))


def _check_end(verifier: ChainVerifier, end: dict[str, Any] | None) -> Divergence | None:
    if end is None:
        return Divergence(
            "truncated",
            None,
            None,
            verifier.last_position,
            f"the file ends after position {verifier.last_position} without its end record",
        )
    try:
        events, last, head = int(end["events"]), int(end["last_position"]), str(end["head"])
    except (KeyError, TypeError, ValueError):
        return Divergence("modified", None, None, None, "the end record is malformed")
    if last > verifier.last_position or events > verifier.events:
        return Divergence(
            "truncated",
            None,
            None,
            verifier.last_position,
            f"the file's events end at position {verifier.last_position} ({verifier.events} "
            f"events), its end record says position {last} ({events} events)",
        )
    if events != verifier.events or last != verifier.last_position or head != verifier.head:
        return Divergence(
            "modified",
            None,
            None,
            verifier.last_position,
            "the end record does not match the events in the file",
        )
    return None

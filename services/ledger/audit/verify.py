"""Verification: recompute every hash and both chains, check the signed checkpoints.

One :class:`ChainVerifier` is fed the incident events in log order, from the store
(:func:`verify_store`) or from an export file (:func:`verify_export`). It reports the
first divergence in log order (see the package documentation for what each kind
means and which incident, version and position it names).
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any, Literal, cast
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import ApplicationRecorder

from services.common.jsoncodec import loads
from services.common.sql import open_database
from services.ledger.audit import scan
from services.ledger.audit.checkpoints import BATCH, ChainState, Checkpoint, iterate_checkpoints
from services.ledger.audit.encoding import (
    EXPORT_FORMAT,
    GENESIS_HASH,
    EventDecodeError,
    RawDecoder,
    RawRow,
    batches,
    body_hash,
    chain_step,
    envelope_from_body,
    export_line,
    read_rows,
    uuid_text,
)
from services.ledger.audit.scan import store_source
from services.ledger.seals import SealChecker

Kind = Literal["modified", "deleted", "inserted", "reordered", "truncated", "bad_signature"]
_UNKNOWN = "?" * 64  # stands for the hash of an event that does not decode


class ExportFormatError(ValueError):
    """The file is not a ledger export (no or an unknown header)."""


@dataclass(frozen=True)
class Divergence:
    """The first place where the history differs from what its hashes and checkpoints say."""

    kind: Kind
    incident: str | None  # resource name "incidents/{id}"
    version: int | None
    position: int | None
    detail: str

    def to_log(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    events: int
    incidents: int
    checkpoints_checked: int
    divergence: Divergence | None
    position: int = 0  # the last position verified
    head: str = GENESIS_HASH  # the chain head there

    def to_log(self) -> dict[str, Any]:
        values = asdict(self)
        values["divergence"] = self.divergence.to_log() if self.divergence else None
        return values


@dataclass(frozen=True)
class VerifyProgress:
    """How far a verification of the store has come."""

    position: int  # every position up to this one is checked
    end: int  # the last position when the verification started (later ones are checked too)
    events: int  # events checked so far


# Told of the progress at the start, then after each batch of events (a few thousand at most).
ProgressCallback = Callable[[VerifyProgress], None]

# An event's seal, or a function that loads it (from the store, when a worker hashed it).
Seal = str | None | Callable[[], str | None]


class _Track:
    """What the verifier remembers of one incident (a few hundred bytes)."""

    __slots__ = ("hash", "next", "pos", "prev_hash", "seal", "suspect")

    def __init__(self, next_version: int, head: str | None) -> None:
        self.next = next_version
        self.hash: str | None = head  # hash of the latest event; None = unknown
        self.prev_hash: str | None = None  # hash of the one before it
        self.pos = 0  # position of the latest event
        self.seal: Seal = None  # the latest event's seal
        self.suspect: _Suspect | None = None


@dataclass
class _Suspect:
    """The link from ``version - 1`` into ``version`` is broken; the next event decides why."""

    version: int
    position: int
    previous_hash: str
    before_position: int
    identity: dict[str, Any]  # the row's type and schema version (the topic stays with a row)


@dataclass
class _Gap:
    """Versions ``missing`` had not appeared when ``version`` did, at ``position``."""

    missing: set[int]
    version: int
    position: int
    before_position: int
    body: Body
    ph_after: str
    hash_before: str | None


@dataclass(order=True)
class _Found:
    key: tuple[int, int, int]
    divergence: Divergence = field(compare=False)


# An event's body, or a function that loads it (from the store, when a worker hashed it).
Body = dict[str, Any] | Callable[[], dict[str, Any]]


def _loaded(body: Body) -> dict[str, Any]:
    return body() if callable(body) else body


def _name(incident: str) -> str:
    return f"incidents/{incident}"


class ChainVerifier:
    """Checks incident chains, the ledger-wide chain and checkpoints over a log-ordered feed."""

    def __init__(
        self,
        public_key: bytes,
        checkpoints: Iterable[Checkpoint] = (),
        *,
        start: ChainState | None = None,
        partial: bool = False,
    ) -> None:
        self.public_key = public_key
        self._seals = SealChecker(public_key)
        self.state = start or ChainState(0, GENESIS_HASH, 0)
        self._start_position = self.state.position
        self._partial = partial
        self._incidents: dict[str, _Track] = {}
        self._gaps: dict[str, list[_Gap]] = {}
        self._suspects: set[str] = set()
        self._head = self.state.head
        self._events_total = self.state.events
        self._last = self.state.position
        self.events = 0
        self.checkpoints_checked = 0
        self._best: _Found | None = None
        self._seq = itertools.count()
        self._pending: list[tuple[int, int, Checkpoint]] = []
        self._seen: set[tuple[int, bytes]] = set()
        self._feed = iter(checkpoints)
        self._feed_next: Checkpoint | None = next(self._feed, None)
        self._prev_checked = self._start_position
        # Up to here a valid checkpoint vouches for the log; above it, each incident's
        # newest seal does (see services/ledger/seals.py).
        self._covered = 0

    # ------------------------------------------------------------ divergences

    def _found(self, key_position: int, rank: int, divergence: Divergence) -> None:
        found = _Found((key_position, rank, next(self._seq)), divergence)
        if self._best is None or found < self._best:
            self._best = found

    def found(self, position: int, divergence: Divergence) -> None:
        """Record a divergence found by the caller (e.g. an unreadable export line)."""
        self._found(position, 0, divergence)

    # ------------------------------------------------------------ checkpoints

    def offer_checkpoint(self, checkpoint: Checkpoint) -> None:
        """A checkpoint to check when the feed passes its position."""
        ident = (checkpoint.position, checkpoint.signature)
        if ident in self._seen:
            return
        self._seen.add(ident)
        if not checkpoint.verify(self.public_key):
            self._found(
                checkpoint.position,
                0,
                Divergence(
                    "bad_signature",
                    None,
                    None,
                    checkpoint.position,
                    f"the checkpoint at position {checkpoint.position} (key {checkpoint.key_id}) "
                    "is not validly signed by the given public key",
                ),
            )
            return
        if checkpoint.position < self._start_position:
            return  # before the exported range: cannot be checked here
        if checkpoint.position < self._last:
            self._found(
                checkpoint.position,
                1,
                Divergence(
                    "reordered",
                    None,
                    None,
                    checkpoint.position,
                    f"the checkpoint at position {checkpoint.position} comes after the event at "
                    f"position {self._last}",
                ),
            )
            return
        heapq.heappush(self._pending, (checkpoint.position, next(self._seq), checkpoint))

    def _pass(self, before: int | None) -> None:
        """Check the checkpoints at positions below ``before`` (all of them when None)."""
        while True:
            while self._feed_next is not None and (
                before is None or self._feed_next.position < before
            ):
                self.offer_checkpoint(self._feed_next)
                self._feed_next = next(self._feed, None)
            if not self._pending or (before is not None and self._pending[0][0] >= before):
                return
            _, _, checkpoint = heapq.heappop(self._pending)
            self._check(checkpoint, at_end=before is None)

    def _check(self, cp: Checkpoint, *, at_end: bool) -> None:
        n, head, last = self._events_total, self._head, self._last
        since = f"after the checkpoint at position {self._prev_checked}"
        self._prev_checked = cp.position
        if at_end and last < cp.position and n < cp.events:
            divergence = Divergence(
                "truncated",
                None,
                None,
                cp.position,
                f"the log ends at position {last} after {n} events, but the checkpoint at "
                f"position {cp.position} covers {cp.events}: {cp.events - n} later event(s) "
                "are gone",
            )
        elif n < cp.events:
            divergence = Divergence(
                "deleted",
                None,
                None,
                cp.position,
                f"{cp.events - n} event(s) up to position {cp.position} ({since}) are missing: "
                f"{n} found, the checkpoint counts {cp.events}",
            )
        elif n > cp.events:
            divergence = Divergence(
                "inserted",
                None,
                None,
                cp.position,
                f"{n - cp.events} event(s) up to position {cp.position} ({since}) were added: "
                f"{n} found, the checkpoint counts {cp.events}",
            )
        elif head != cp.head:
            divergence = Divergence(
                "modified",
                None,
                None,
                cp.position,
                f"the chain head at position {cp.position} differs from the signed checkpoint: "
                f"an event {since} was altered (the latest event of its incident, as no "
                "incident chain shows it)",
            )
        else:
            self.checkpoints_checked += 1
            self._covered = max(self._covered, cp.position)
            return
        self._found(cp.position, 1, divergence)

    # ------------------------------------------------------------ events

    def add(
        self,
        position: int,
        incident: str,
        version: int,
        previous_hash: str,
        digest: str | None,
        body: Body | None,
        problem: str | None = None,
        seal: Seal = None,
    ) -> None:
        """One incident event, in log order; ``problem`` when it does not decode.

        ``body`` (or a function that loads it) is read only where a link is broken;
        ``seal`` (or a function that loads it) only for the newest event of an incident
        above the last valid checkpoint.
        """
        if position <= self._last:
            kind: Kind = "inserted" if position == self._last else "reordered"
            self._found(
                position,
                0,
                Divergence(
                    kind,
                    _name(incident),
                    version,
                    position,
                    f"position {position} comes after position {self._last}",
                ),
            )
            return
        self._pass(position)
        self.events += 1
        self._events_total += 1
        self._last = position
        self._head = chain_step(self._head, position, digest or _UNKNOWN)
        track = self._incidents.get(incident)
        if track is None:
            if self._partial and version > 1:
                track = _Track(version, None)  # its earlier events precede the export
            else:
                track = _Track(1, GENESIS_HASH)
            self._incidents[incident] = track
        if problem is not None or digest is None or body is None:
            self._found(
                position,
                0,
                Divergence(
                    "modified",
                    _name(incident),
                    version,
                    position,
                    problem or "the event does not decode",
                ),
            )
            if version >= track.next:
                self._settle(incident, track)
                track.prev_hash, track.hash, track.pos = track.hash, None, position
                track.next, track.seal = version + 1, None
            return
        if version > track.next:
            self._gap(incident, track, position, version, previous_hash, digest, body)
            track.seal = seal
        elif version < track.next:
            self._late(incident, position, version, previous_hash, digest)
        else:
            self._link(incident, track, position, version, previous_hash, body)
            track.prev_hash, track.hash, track.pos = track.hash, digest, position
            track.next, track.seal = version + 1, seal

    def _gap(
        self,
        incident: str,
        track: _Track,
        position: int,
        version: int,
        previous_hash: str,
        digest: str,
        body: Body,
    ) -> None:
        self._settle(incident, track)
        gap = _Gap(
            set(range(track.next, version)),
            version,
            position,
            track.pos,
            body,
            previous_hash,
            track.hash,
        )
        self._gaps.setdefault(incident, []).append(gap)
        track.prev_hash, track.hash, track.pos = track.hash, digest, position
        track.next = version + 1

    def _late(
        self, incident: str, position: int, version: int, previous_hash: str, digest: str
    ) -> None:
        gaps = self._gaps.get(incident, [])
        gap = next((g for g in gaps if version in g.missing), None)
        if gap is None:
            self._found(
                position,
                0,
                Divergence(
                    "inserted",
                    _name(incident),
                    version,
                    position,
                    f"version {version} of the incident appears a second time",
                ),
            )
            return
        gap.missing.discard(version)
        if not gap.missing:
            gaps.remove(gap)
            if not gaps:
                del self._gaps[incident]
        fits = previous_hash == gap.hash_before and digest == gap.ph_after
        swapped = body_hash({**_loaded(gap.body), "originator_version": version}) == previous_hash
        if fits or swapped or gap.ph_after != gap.hash_before:
            self._found(
                gap.position,
                0,
                Divergence(
                    "reordered",
                    _name(incident),
                    gap.version,
                    gap.position,
                    f"version {gap.version} is at position {gap.position}, before version "
                    f"{version} at position {position}",
                ),
            )
            return
        self._found(
            gap.position,
            0,
            Divergence(
                "inserted",
                _name(incident),
                version,
                position,
                f"version {version} at position {position} does not belong to the chain: "
                f"version {gap.version} at position {gap.position} links straight to the event "
                "before it (the versions after the forged event were renumbered)",
            ),
        )

    def _link(
        self,
        incident: str,
        track: _Track,
        position: int,
        version: int,
        previous_hash: str,
        body: Body,
    ) -> None:
        link_ok = track.hash is None or previous_hash == track.hash
        suspect = track.suspect
        name = _name(incident)
        if suspect is not None:
            track.suspect = None
            self._suspects.discard(incident)
            sv = suspect.version
            if link_ok:
                self._modified_before(incident, suspect)
            elif (
                body_hash({**_loaded(body), "originator_version": sv, **suspect.identity})
                == suspect.previous_hash
            ):
                self._found(
                    suspect.position,
                    0,
                    Divergence(
                        "reordered",
                        name,
                        sv,
                        suspect.position,
                        f"versions {sv} (position {suspect.position}) and {version} (position "
                        f"{position}) hold each other's events",
                    ),
                )
            elif track.prev_hash is not None and previous_hash == track.prev_hash:
                self._inserted(name, sv, suspect.position, version)
            else:
                self._found(
                    suspect.position,
                    0,
                    Divergence(
                        "modified",
                        name,
                        sv,
                        suspect.position,
                        f"its previous_hash no longer links to version {sv - 1}, and version "
                        f"{version} no longer links to it",
                    ),
                )
        elif not link_ok:
            if track.prev_hash is not None and previous_hash == track.prev_hash:
                self._inserted(name, version - 1, track.pos, version)
            else:
                loaded = _loaded(body)
                identity = {"type": loaded["type"], "schema_version": loaded["schema_version"]}
                track.suspect = _Suspect(version, position, previous_hash, track.pos, identity)
                self._suspects.add(incident)

    def _inserted(self, name: str, version: int, position: int, successor: int) -> None:
        self._found(
            position,
            0,
            Divergence(
                "inserted",
                name,
                version,
                position,
                f"version {successor} links to version {version - 1}: version {version} at "
                f"position {position} was put between them",
            ),
        )

    def _modified_before(self, incident: str, suspect: _Suspect) -> None:
        self._found(
            suspect.before_position,
            0,
            Divergence(
                "modified",
                _name(incident),
                suspect.version - 1,
                suspect.before_position,
                f"its content changed: its hash no longer matches the previous_hash recorded "
                f"by version {suspect.version} (position {suspect.position})",
            ),
        )

    def _settle(self, incident: str, track: _Track) -> None:
        """Decide a pending broken link without its successor: the earlier event changed."""
        if track.suspect is not None:
            self._modified_before(incident, track.suspect)
            track.suspect = None
            self._suspects.discard(incident)

    # ------------------------------------------------------------ the end

    def _check_seals(self) -> None:
        """Each incident's newest event above the last valid checkpoint must carry the
        ledger's seal over its hash: the hash chain vouches for the events below it, a
        checkpoint for the log up to its position, but only the seal for the newest one
        (whoever rewrote it in the store could recompute every hash, not the seal)."""
        for incident, track in self._incidents.items():
            if track.pos <= self._covered or track.hash is None:
                continue
            seal = track.seal() if callable(track.seal) else track.seal
            problem = self._seals.problem(track.hash, seal)
            if problem is None:
                continue
            version = track.next - 1
            self._found(
                track.pos,
                0,
                Divergence(
                    "modified",
                    _name(incident),
                    version,
                    track.pos,
                    f"the newest event of its incident (version {version}, after the last "
                    f"checkpoint) was changed or forged: {problem}",
                ),
            )

    def finish(self) -> VerifyReport:
        self._pass(None)
        self._check_seals()
        for incident in sorted(self._suspects):
            self._settle(incident, self._incidents[incident])
        for incident, gaps in self._gaps.items():
            for gap in gaps:
                first = min(gap.missing)
                self._found(
                    gap.before_position,
                    0,
                    Divergence(
                        "deleted",
                        _name(incident),
                        first,
                        gap.position,
                        f"version(s) {_ranges(gap.missing)} are missing: version {gap.version} "
                        f"at position {gap.position} follows version {first - 1}",
                    ),
                )
        divergence = self._best.divergence if self._best else None
        return VerifyReport(
            ok=divergence is None,
            events=self.events,
            incidents=len(self._incidents),
            checkpoints_checked=self.checkpoints_checked,
            divergence=divergence,
            position=self._last,
            head=self._head,
        )

    @property
    def head(self) -> str:
        return self._head

    @property
    def last_position(self) -> int:
        return self._last

    @property
    def total_events(self) -> int:
        return self._events_total


def _ranges(versions: set[int]) -> str:
    ordered = sorted(versions)
    return f"{ordered[0]}-{ordered[-1]}" if len(ordered) > 1 else str(ordered[0])


# ------------------------------------------------------------------ the store


def verify_store(
    ledger: Application[Any] | ApplicationRecorder,
    public_key: bytes,
    checkpoints: Iterable[Checkpoint] | None = None,
    *,
    stored_checkpoints: bool = True,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> VerifyReport:
    """Verify the stored history against its hashes, the given (witness's) checkpoints and,
    with an application and ``stored_checkpoints``, the checkpoints stored beside it.

    A long history is decoded and hashed by ``workers`` processes (default: up to two,
    one per CPU; see :mod:`services.ledger.audit.scan`); the result is the same.
    ``progress`` is told how far it has come, at the start and after each batch; an
    exception it raises ends the verification (a caller that went away).
    """
    if isinstance(ledger, Application):
        recorder, decoder = ledger.recorder, RawDecoder(ledger.mapper)
    else:
        recorder, decoder = ledger, RawDecoder()
    given = sorted(checkpoints or (), key=lambda c: c.position)
    database = (
        open_database(ledger.env)
        if stored_checkpoints and isinstance(ledger, Application)
        else None
    )
    try:
        stored: Iterator[Checkpoint] = (
            iterate_checkpoints(database) if database is not None else iter(())
        )
        merged = heapq.merge(given, stored, key=lambda c: c.position)
        verifier = ChainVerifier(public_key, merged)
        source = store_source(ledger) if isinstance(ledger, Application) else None
        stop = recorder.max_notification_id() or 0

        def reached(position: int | None = None) -> None:
            if progress is not None:
                at = verifier.last_position if position is None else position
                progress(VerifyProgress(at, stop, verifier.events))

        reached(0)
        count = scan.worker_count(stop, workers) if source is not None else 0
        if source is None or count == 0:
            _verify_rows(
                verifier, decoder, batches(recorder, decoder.topics, 0, None, BATCH), reached
            )
        else:
            with scan.workers(count) as pool:
                _verify_hashed(verifier, decoder, recorder, pool, source, stop, reached)
            # Events recorded meanwhile (beyond ``stop``), read here.
            _verify_rows(
                verifier, decoder, batches(recorder, decoder.topics, stop, None, BATCH), reached
            )
        return verifier.finish()
    finally:
        if database is not None:
            database.close()


def _verify_rows(
    verifier: ChainVerifier,
    decoder: RawDecoder,
    source: Iterator[list[RawRow]],
    reached: Callable[[], None] | None = None,
) -> None:
    """The rows into the verifier; ``reached`` after each batch."""
    add = verifier.add
    for batch in source:
        for at, originator_id, version, topic, state in batch:
            try:
                body, seal = decoder.sealed_body(topic, originator_id, version, state)
            except EventDecodeError as exc:
                add(at, _incident_text(originator_id), version, "", None, None, str(exc))
                continue
            digest = body_hash(body)
            add(at, body["originator_id"], version, body["previous_hash"], digest, body, None, seal)
        if reached is not None:
            reached()


def _verify_hashed(
    verifier: ChainVerifier,
    decoder: RawDecoder,
    recorder: ApplicationRecorder,
    pool: list[scan.Worker],
    source: scan.StoreSource,
    stop: int,
    reached: Callable[[int], None],
) -> None:
    """The events up to ``stop`` as the workers hashed them, in order; ``reached`` with the
    end of each range."""
    add, topics = verifier.add, decoder.topics

    def load(at: int) -> dict[str, Any]:
        _, originator_id, version, topic, state = read_rows(recorder, topics, at - 1, 1, at)[0]
        return decoder.body(topic, originator_id, version, state)

    def load_seal(at: int) -> str | None:
        _, originator_id, version, topic, state = read_rows(recorder, topics, at - 1, 1, at)[0]
        return decoder.sealed_body(topic, originator_id, version, state)[1]

    for (_, high), result in scan.scan(pool, scan.HASHES, source, 0, stop):
        for at, originator_id, version, previous_hash, digest in cast(list[scan.Hashed], result):
            if digest is not None:
                add(
                    at,
                    originator_id,
                    version,
                    previous_hash,
                    digest,
                    partial(load, at),
                    None,
                    partial(load_seal, at),
                )
            elif previous_hash:  # the worker's decode error
                add(at, _incident_text(originator_id), version, "", None, None, previous_hash)
            else:  # an older schema version: upcast here, with the ledger's mapper
                _verify_rows(verifier, decoder, iter([read_rows(recorder, topics, at - 1, 1, at)]))
        reached(high)


def _incident_text(originator_id: UUID | str) -> str:
    if isinstance(originator_id, UUID):
        return str(originator_id)
    try:
        return uuid_text(originator_id)
    except EventDecodeError:
        return str(originator_id)


# ------------------------------------------------------------------ an export file


def verify_export(
    source: Path | str | IO[bytes],
    public_key: bytes,
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
PARALLEL_FILE_FROM = 16 * 2**20
CHUNK = 4 * 2**20


def _verify_lines(
    lines: IO[bytes],
    public_key: bytes,
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
            "checkpoints; make a verifiable export with `python -m services.ledger.audit export`)"
        )
    if not isinstance(header, dict) or header.get("record") != "header":
        raise ExportFormatError("not a ledger export: the first line is not its header")
    if header.get("format") != EXPORT_FORMAT:
        raise ExportFormatError(f"unknown export format {header.get('format')!r}")
    try:
        start = ChainState(
            int(header["start_position"]), str(header["start_head"]), int(header["start_events"])
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportFormatError(f"malformed export header: {exc}") from exc
    verifier = ChainVerifier(
        public_key,
        sorted(checkpoints or (), key=lambda c: c.position),
        start=start,
        partial=start.events > 0,
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
    report = verifier.finish()
    trailer = _check_end(verifier, feed.end)
    if trailer is not None and (report.divergence is None):
        return VerifyReport(
            False,
            report.events,
            report.incidents,
            report.checkpoints_checked,
            trailer,
            report.position,
            report.head,
        )
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
                verifier.offer_checkpoint(Checkpoint.from_json(record))
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
            Divergence("inserted", None, None, None, f"line {number} follows the end record"),
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
        verifier.add(position, incident, version, previous_hash, digest, body, None, seal)
        if problem is not None:
            detail = f"line {number}: {_PROBLEMS[problem]}"
            verifier.found(
                position, Divergence("modified", f"incidents/{incident}", version, position, detail)
            )
        return True


def _unreadable(number: int, where: int, error: str) -> Divergence:
    return Divergence(
        "modified",
        None,
        None,
        None,
        f"line {number} (after position {where}) is unreadable: {error}",
    )


_PROBLEMS = {
    "hash": "the event's hash does not match its content",
    "envelope": "the envelope does not match the canonical event",
}
# An event line checked on its own: (incident, version, position, previous_hash, hash,
# problem, seal), the problem None or a key of _PROBLEMS; or why it is not an event line.
EventCheck = tuple[str, int, int, str, str, str | None, str | None]


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

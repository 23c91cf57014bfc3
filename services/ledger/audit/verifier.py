"""The chain verifier: fed the incident events in log order, it recomputes every hash and
both chains (each incident's, the ledger-wide one), checks the signed checkpoints and
reports the first divergence in log order (see the package documentation for what each kind
means and which incident, version and position it names). Its feeds: the store
(:mod:`services.ledger.audit.verify_stored`) and an export file
(:mod:`services.ledger.audit.verify_exported`)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from services.ledger.audit.checkpoints import ChainState, Checkpoint
from services.ledger.audit.encoding import GENESIS_HASH, body_hash, chain_step
from services.ledger.seals import SealChecker, key_id

Kind = Literal[
    "modified", "deleted", "inserted", "reordered", "truncated", "bad_signature", "wrong_key"
]
_UNKNOWN = "?" * 64  # stands for the hash of an event that does not decode


@dataclass(frozen=True)
class Divergence:
    """The first place where the history differs from what its hashes and checkpoints say."""

    kind: Kind
    incident: str | None  # resource name "incidents/{id}"
    version: int | None
    position: int | None
    detail: str
    line: int | None = None  # the export's line that shows it (none for the store)

    def to_log(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class KeyUse:
    """What one of the given public keys was found to have signed: the checkpoints checked
    (their count, first and last position) and the seals checked (each incident's newest
    event above the last checkpoint)."""

    key_id: str
    checkpoints: int = 0
    first_checkpoint: int | None = None
    last_checkpoint: int | None = None
    seals: int = 0


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    events: int
    incidents: int
    checkpoints_checked: int
    divergence: Divergence | None
    position: int = 0  # the last position verified
    head: str = GENESIS_HASH  # the chain head there
    # An export's stated range (its header's start and stop, both included; None for the
    # store), and the positions of the checkpoints beyond it: their signatures were
    # checked, their counts and heads could not be (the export does not reach them).
    start: int | None = None
    stop: int | None = None
    checkpoints_after: tuple[int, ...] = ()
    # Per given key, in the order given: what it signed (docs/hash-chain.md, section 8).
    keys: tuple[KeyUse, ...] = ()

    def to_log(self) -> dict[str, Any]:
        values = asdict(self)
        values["checkpoints_after"] = list(self.checkpoints_after)
        values["keys"] = [asdict(k) for k in self.keys]
        values["divergence"] = self.divergence.to_log() if self.divergence else None
        return values


# An event's seal, or a function that loads it (from the store, when a worker hashed it).
Seal = str | None | Callable[[], str | None]


class _Track:
    """What the verifier remembers of one incident (a few hundred bytes)."""

    __slots__ = ("hash", "line", "next", "pos", "prev_hash", "seal", "suspect")

    def __init__(self, next_version: int, head: str | None) -> None:
        self.next = next_version
        self.hash: str | None = head  # hash of the latest event; None = unknown
        self.prev_hash: str | None = None  # hash of the one before it
        self.pos = 0  # position of the latest event
        self.line: int | None = None  # and its line in an export
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
    # The two events' hashes and seals: whose seal holds tells which of them changed.
    hash: str
    seal: Seal
    before_hash: str | None
    before_seal: Seal
    line: int | None = None  # the lines of the two events in an export
    before_line: int | None = None


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
    line: int | None = None  # the lines of the two events in an export
    before_line: int | None = None


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
        public_key: bytes | Sequence[bytes],
        checkpoints: Iterable[Checkpoint] = (),
        *,
        start: ChainState | None = None,
        partial: bool = False,
        stop: int | None = None,
        recorded_retired: Mapping[str, tuple[int, str]] | None = None,
    ) -> None:
        # One key, or several: the ledger's current one and those it retired (in any order).
        keys = (public_key,) if isinstance(public_key, bytes) else tuple(dict.fromkeys(public_key))
        if not keys:
            raise ValueError("no public key given")
        self.public_key = keys[0]
        self._keys = {key_id(k): k for k in keys}
        self._seals = SealChecker(keys[0], keys[1:])
        # The key ids the seals and checkpoints name, and whether a checkpoint verified with
        # a given key: when none did and none names one, the keys are not the ledger's.
        self._named: set[str] = set()
        # What each key signed; and, once a checkpoint signed with another key follows
        # one of a key's, the position from which that key is retired: whatever it signs
        # after that is not the ledger's (a leaked key in other hands, or a replica that
        # kept the old key).
        self._use: dict[str, KeyUse] = {kid: KeyUse(kid) for kid in self._keys}
        self._retired_at: dict[str, tuple[int, str]] = {}
        # What the store records of its rotations (ledger_retired_keys: key id -> the last
        # position the key sealed, its successor), when the verifier reads the store: until
        # the new key's first checkpoint is stored (a rotation made by an earlier version
        # with nothing new to sign left none; a rotation that failed to sign), only this
        # table says that the key signs nothing after that position.
        self._recorded_retired = dict(recorded_retired or {})
        self._last_signer: str | None = None
        self._key_verified = False
        self.state = start or ChainState(0, GENESIS_HASH, 0)
        self._start_position = self.state.position
        self._partial = partial
        # The last position an export states it covers: a checkpoint beyond it says nothing
        # about the file (a range asked for, or a file made before the checkpoint).
        self._stop = stop
        self._after: list[int] = []
        self._incidents: dict[str, _Track] = {}
        self._gaps: dict[str, list[_Gap]] = {}
        self._suspects: set[str] = set()
        self._head = self.state.head
        self._events_total = self.state.events
        self._last = self.state.position
        self.events = 0
        self.checkpoints_checked = 0
        self._best: _Found | None = None
        # The first seal that fails, reported only when nothing else is (see _seals_last).
        self._seal_best: _Found | None = None
        self._head_differs: dict[int, Divergence] = {}  # by checkpoint position
        self._seq = itertools.count()
        self._pending: list[tuple[int, int, Checkpoint, str]] = []
        self._seen: set[Checkpoint] = set()
        self._feed = iter(checkpoints)
        self._feed_next: Checkpoint | None = next(self._feed, None)
        self._prev_checked: int | None = None  # the last checkpoint checked
        self._line: int | None = None  # the line of the event being added, in an export
        # Up to here a valid checkpoint vouches for the log; above it, each incident's
        # newest seal does (see services/ledger/seals.py).
        self._covered = 0

    # ------------------------------------------------------------ divergences

    def _found(
        self, key_position: int, rank: int, divergence: Divergence, line: int | None = None
    ) -> None:
        if line is not None and divergence.line is None:
            divergence = replace(divergence, line=line)
        found = _Found((key_position, rank, next(self._seq)), divergence)
        if self._best is None or found < self._best:
            self._best = found

    def found(self, position: int, divergence: Divergence) -> None:
        """Record a divergence found by the caller (e.g. an unreadable export line)."""
        self._found(position, 0, divergence)

    # ------------------------------------------------------------ checkpoints

    def offer_checkpoint(self, checkpoint: Checkpoint, line: int | None = None) -> None:
        """A checkpoint (on ``line`` of an export) to check when the feed passes its
        position."""
        # The same checkpoint twice (an export's and a witness's copy) is checked once; one
        # with a field changed, its signature kept, is another, and its own check fails
        # (before, it passed as a copy of the genuine one at its position, unchecked).
        if checkpoint in self._seen:
            return
        self._seen.add(checkpoint)
        if checkpoint.key_id:
            self._named.add(checkpoint.key_id)
        signer = self._checkpoint_signer(checkpoint)
        if signer is not None:
            self._key_verified = True
        else:
            self._found(
                checkpoint.position,
                0,
                Divergence(
                    "bad_signature",
                    None,
                    None,
                    checkpoint.position,
                    f"the checkpoint at position {checkpoint.position} (key {checkpoint.key_id}) "
                    f"is not validly signed by {self._given}",
                ),
                line,
            )
            return
        if checkpoint.position < self._start_position:
            return  # before the exported range: cannot be checked here
        if self._stop is not None and checkpoint.position > self._stop and line is None:
            # A witness's, after the exported range: not checked. The file's own past its
            # range are the store's past the log's end, which a whole log's export carries
            # as the evidence that the log was cut: checked at the end (truncated).
            self._after.append(checkpoint.position)
            return
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
                line,
            )
            return
        heapq.heappush(self._pending, (checkpoint.position, next(self._seq), checkpoint, signer))

    @property
    def _given(self) -> str:
        return "the given public key" if len(self._keys) == 1 else "any of the given public keys"

    def _checkpoint_signer(self, checkpoint: Checkpoint) -> str | None:
        """The id of the given key that signed ``checkpoint`` (the one it names first)."""
        for kid in sorted(self._keys, key=lambda k: k != checkpoint.key_id):
            if checkpoint.verify(self._keys[kid]):
                return kid
        return None

    def _signed_by(self, cp: Checkpoint, signer: str) -> Divergence | None:
        """Note that ``signer`` signed ``cp`` (checkpoints come here in position order);
        the divergence when ``signer`` was retired before ``cp``'s position."""
        retired = self._retired_at.get(signer)
        if retired is not None and cp.position > retired[0]:
            return Divergence(
                "bad_signature",
                None,
                None,
                cp.position,
                f"the checkpoint at position {cp.position} is signed with key {signer}, which "
                f"the checkpoint at position {retired[0]} (key {retired[1]}) replaced: a "
                "retired key signs nothing after its successor's first checkpoint",
            )
        recorded = self._recorded_retired.get(signer)
        if recorded is not None and cp.position > recorded[0]:
            return Divergence(
                "bad_signature",
                None,
                None,
                cp.position,
                f"the checkpoint at position {cp.position} is signed with key {signer}, which "
                f"the store records as retired at position {recorded[0]} for key "
                f"{recorded[1]}: a retired key signs nothing after its rotation",
            )
        if self._last_signer is not None and self._last_signer != signer:
            self._retired_at.setdefault(self._last_signer, (cp.position, signer))
        self._last_signer = signer
        use = self._use[signer]
        self._use[signer] = replace(
            use,
            checkpoints=use.checkpoints + 1,
            first_checkpoint=cp.position if use.first_checkpoint is None else use.first_checkpoint,
            last_checkpoint=cp.position,
        )
        return None

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
            _, _, checkpoint, signer = heapq.heappop(self._pending)
            self._check(checkpoint, signer, at_end=before is None)

    def _check(self, cp: Checkpoint, signer: str, *, at_end: bool) -> None:
        n, head, last = self._events_total, self._head, self._last
        since = self._since()
        self._prev_checked = cp.position
        retired = self._signed_by(cp, signer)
        if retired is not None:
            self._found(cp.position, 0, retired, self._line)
            return
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
            divergence = self._head_differs[cp.position] = Divergence(
                "modified",
                None,
                None,
                cp.position,
                f"the chain head at position {cp.position} differs from the signed checkpoint: "
                f"an event up to it ({since}) was altered (the latest event of its "
                "incident, as no incident chain shows it)",
            )
        else:
            self.checkpoints_checked += 1
            self._covered = max(self._covered, cp.position)
            return
        self._found(cp.position, 1, divergence, self._line)

    def _since(self) -> str:
        """Where the stretch of log a checkpoint is checked over begins, in words (it was
        "after the checkpoint at position 0" for the beginning of the log)."""
        if self._prev_checked is not None:
            return f"after the checkpoint at position {self._prev_checked}"
        if self._start_position == 0:
            return "from the start of the log"
        return f"after position {self._start_position}, where the export starts"

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
        line: int | None = None,
    ) -> None:
        """One incident event, in log order; ``problem`` when it does not decode.

        ``body`` (or a function that loads it) is read only where a link is broken;
        ``seal`` (or a function that loads it) only for the newest event of an incident
        above the last valid checkpoint.
        """
        if type(seal) is str:
            self._named.add(seal.partition(":")[0])
        self._line = line
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
                line,
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
                line,
            )
            if version >= track.next:
                self._settle(incident, track)
                track.prev_hash, track.hash, track.pos = track.hash, None, position
                track.line = line
                track.next, track.seal = version + 1, None
            return
        if version > track.next:
            self._gap(incident, track, position, version, previous_hash, digest, body)
            track.seal = seal
        elif version < track.next:
            self._late(incident, position, version, previous_hash, digest)
        else:
            self._link(incident, track, position, version, previous_hash, body, digest, seal)
            track.prev_hash, track.hash, track.pos = track.hash, digest, position
            track.line = line
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
            self._line,
            track.line,
        )
        self._gaps.setdefault(incident, []).append(gap)
        track.prev_hash, track.hash, track.pos = track.hash, digest, position
        track.line = self._line
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
                self._line,
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
                gap.line,
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
            self._line,
        )

    def _link(
        self,
        incident: str,
        track: _Track,
        position: int,
        version: int,
        previous_hash: str,
        body: Body,
        digest: str,
        seal: Seal,
    ) -> None:
        link_ok = track.hash is None or previous_hash == track.hash
        suspect = track.suspect
        name = _name(incident)
        if suspect is not None:
            track.suspect = None
            self._suspects.discard(incident)
            sv = suspect.version
            if link_ok:
                self._modified(incident, suspect)
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
                    suspect.line,
                )
            elif track.prev_hash is not None and previous_hash == track.prev_hash:
                self._inserted(name, sv, suspect.position, version, suspect.line)
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
                    suspect.line,
                )
        elif not link_ok:
            if track.prev_hash is not None and previous_hash == track.prev_hash:
                self._inserted(name, version - 1, track.pos, version, track.line)
            else:
                loaded = _loaded(body)
                identity = {"type": loaded["type"], "schema_version": loaded["schema_version"]}
                track.suspect = _Suspect(
                    version,
                    position,
                    previous_hash,
                    track.pos,
                    identity,
                    digest,
                    seal,
                    track.hash,
                    track.seal,
                    self._line,
                    track.line,
                )
                self._suspects.add(incident)

    def _inserted(
        self, name: str, version: int, position: int, successor: int, line: int | None
    ) -> None:
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
            line,
        )

    def _modified(self, incident: str, suspect: _Suspect) -> None:
        """The link into ``suspect`` is broken, and nothing says the events were moved: one
        of the two changed. The earlier one did, unless its seal holds (the ledger sealed
        its content as it is) and the later one's does not: then the later one was changed
        or forged (a genuine row copied in as the incident's next version, say), and the
        earlier one is authentic."""
        problem = self._seal_problem(suspect.hash, suspect.seal)
        if (
            problem is None
            or suspect.before_hash is None
            or self._seal_problem(suspect.before_hash, suspect.before_seal) is not None
        ):
            self._modified_before(incident, suspect)
            return
        sv = suspect.version
        self._found(
            suspect.position,
            0,
            Divergence(
                "modified",
                _name(incident),
                sv,
                suspect.position,
                f"its previous_hash does not link to version {sv - 1} (position "
                f"{suspect.before_position}), whose seal holds, and its own seal does not "
                f"verify ({problem}): this event was changed or forged",
            ),
            suspect.line,
        )

    def _seal_problem(self, digest: str, seal: Seal) -> str | None:
        """Why ``seal`` (or the seal it loads) does not vouch for ``digest``; None when it
        does."""
        return self._seals.problem(digest, seal() if callable(seal) else seal)

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
            suspect.before_line,
        )

    def _settle(self, incident: str, track: _Track) -> None:
        """Decide a pending broken link without its successor, by the two events' seals."""
        if track.suspect is not None:
            self._modified(incident, track.suspect)
            track.suspect = None
            self._suspects.discard(incident)

    # ------------------------------------------------------------ the end

    def _seals_last(self) -> None:
        """Name the event whose seal fails in a checkpoint's report of a changed head.

        Seals are checked at the end, after everything met while reading the feed (the
        order of docs/hash-chain.md, section 8, which the export's other verifiers follow),
        so a checkpoint whose head differs is the first divergence even when the seal of
        the event that changed fails as well; its detail says which event that is."""
        best, seal = self._best, self._seal_best
        if best is None or seal is None:
            return
        position = best.divergence.position
        if position is None or self._head_differs.get(position) is not best.divergence:
            return
        named = seal.divergence
        if named.position is None or named.position > position:
            return
        detail = f"{best.divergence.detail}; {named.incident}, position {named.position}: "
        detail += named.detail
        best.divergence = replace(best.divergence, detail=detail)

    def _check_seals(self) -> None:
        """Each incident's newest event above the last valid checkpoint must carry the
        ledger's seal over its hash: the hash chain vouches for the events below it, a
        checkpoint for the log up to its position, but only the seal for the newest one
        (whoever rewrote it in the store could recompute every hash, not the seal)."""
        for incident, track in self._incidents.items():
            if track.pos <= self._covered or track.hash is None:
                continue
            seal = track.seal() if callable(track.seal) else track.seal
            if seal:
                self._named.add(seal.partition(":")[0])
            problem = self._seals.problem(track.hash, seal)
            signer = self._seals.signer(track.hash, seal) if problem is None else None
            retired = self._retired_at.get(signer) if signer is not None else None
            recorded = self._recorded_retired.get(signer) if signer is not None else None
            if signer is not None and retired is not None and track.pos > retired[0]:
                problem = (
                    f"it is sealed with key {signer}, which the checkpoint at position "
                    f"{retired[0]} (key {retired[1]}) replaced"
                )
            elif signer is not None and recorded is not None and track.pos > recorded[0]:
                problem = (
                    f"it is sealed with key {signer}, which the store records as retired at "
                    f"position {recorded[0]} for key {recorded[1]}"
                )
            elif signer is not None:
                use = self._use[signer]
                self._use[signer] = replace(use, seals=use.seals + 1)
                continue
            version = track.next - 1
            divergence = Divergence(
                "modified",
                _name(incident),
                version,
                track.pos,
                f"the newest event of its incident (version {version}, after the last "
                f"checkpoint) was changed or forged: {problem}",
                track.line,
            )
            found = _Found((track.pos, 0, next(self._seq)), divergence)
            if self._seal_best is None or found < self._seal_best:
                self._seal_best = found

    def finish(self) -> VerifyReport:
        self._line = None  # what the end finds is shown by no one line
        self._pass(None)
        self._check_seals()
        self._seals_last()
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
                    gap.line,
                )
        if self._best is None:  # the seals come last (docs/hash-chain.md, section 8)
            self._best = self._seal_best
        divergence = self._best.divergence if self._best else None
        wrong_key = self._wrong_key()
        if wrong_key is not None:
            divergence = wrong_key
        return VerifyReport(
            ok=divergence is None,
            events=self.events,
            incidents=len(self._incidents),
            checkpoints_checked=self.checkpoints_checked,
            divergence=divergence,
            position=self._last,
            head=self._head,
            checkpoints_after=tuple(sorted(set(self._after))),
            keys=tuple(self._use.values()),
        )

    def _wrong_key(self) -> Divergence | None:
        """The given key is not the one the history was sealed with: no checkpoint verifies
        with it and no seal or checkpoint names it, while some name another key. Nothing
        can be checked against that key, so this is the one answer (not tampering, which a
        single forged seal among the ledger's own still is)."""
        if self._key_verified or not self._named or self._named & set(self._keys):
            return None
        others = ", ".join(sorted(self._named))
        given = ", ".join(self._keys)
        return Divergence(
            "wrong_key",
            None,
            None,
            None,
            f"the history was sealed with key {others}; the given public key is "
            f"{given}: none of its checkpoints verifies with it, and none of its seals "
            "or checkpoints names it. Check that the key is the ledger's: if it is, the whole "
            "file was sealed again with another key, and is not the ledger's history",
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

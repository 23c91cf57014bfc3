"""Signed checkpoints of the ledger-wide chain: create (incrementally), store, list, publish.

A checkpoint says: after the incident events up to ``position`` (``events`` of them),
the chain head was ``head``; signed with the ledger's Ed25519 key. It is stored in
the table ``ledger_checkpoints`` of the ledger's database and handed to
``on_checkpoint`` (the server publishes it to NATS, subject ``ledger.v1.checkpoints``)
so that a witness outside the ledger can keep it.

Rotating the signing key (docs/operations.md): a ledger started with a new key, on a store
whose latest checkpoint (or, before the first one, newest seal) was made with a key listed
in ``LEDGER_RETIRED_SIGNING_KEYS_FILE``, records that key as retired (table
``ledger_retired_keys``: which key, when, for which, up to which position) and signs a
checkpoint over the whole log with the new key at once (when nothing was recorded since the
old key's last checkpoint, at the position of a record of the rotation it writes in the log,
so that the new key's run of checkpoints starts at the rotation: docs/hash-chain.md,
section 6); from then on a checkpoint is signed only over seals of the new key, and a
ledger started with a retired key refuses to start.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from eventsourcing.persistence import ApplicationRecorder
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg.sql import SQL, Identifier

from services.common.config import ConfigError
from services.common.failurelog import FailureLog
from services.common.sql import Database, open_database, table_exists
from services.common.store_errors import STORE_CONNECTION_ERRORS
from services.ledger.audit.encoding import (
    CHECKPOINT_FORMAT,
    GENESIS_HASH,
    EventDecodeError,
    RawDecoder,
    batches,
    body_hash,
    chain_step,
    newest_row,
)
from services.ledger.audit.keys import key_id, public_key_bytes
from services.ledger.audit.recorded import RecordedCheck, RecordedEvents
from services.ledger.domain.incident import canonical_json
from services.ledger.seals import SealChecker
from services.ledger.store import RawRow, read_rows

log = structlog.get_logger(__name__)

NATS_SUBJECT = "ledger.v1.checkpoints"
BATCH = 2000


class CheckpointError(RuntimeError):
    """A checkpoint cannot be made (the stored history or the last checkpoint is damaged)."""


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement of the chain head at a position of the notification log."""

    position: int
    head: str
    events: int
    created_at: str  # UTC ISO-8601 with microseconds, e.g. 2026-11-28T06:22:43.201375+00:00
    key_id: str
    signature: bytes

    def signed_bytes(self) -> bytes:
        return signing_payload(self.position, self.head, self.events, self.created_at)

    def verify(self, public_key: bytes) -> bool:
        """Whether the signature is valid under ``public_key`` (raw 32 bytes)."""
        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(
                self.signature, self.signed_bytes()
            )
        except (InvalidSignature, ValueError):
            return False
        return True

    def to_json(self) -> dict[str, Any]:
        """The published form (NATS message body, witness file line, export line)."""
        return {
            "position": self.position,
            "head": self.head,
            "events": self.events,
            "created_at": self.created_at,
            "key_id": self.key_id,
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Checkpoint:
        """Parses the published form; ``ValueError`` when it is malformed."""
        try:
            return cls(
                position=_int(data["position"]),
                head=str(data["head"]),
                events=_int(data["events"]),
                created_at=str(data["created_at"]),
                key_id=str(data.get("key_id", "")),
                signature=base64.b64decode(str(data["signature"]), validate=True),
            )
        except (KeyError, TypeError, binascii.Error) as exc:
            raise ValueError(f"malformed checkpoint: {exc}") from exc


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"not an integer: {value!r}")
    return int(value)


def signing_payload(position: int, head: str, events: int, created_at: str) -> bytes:
    """What is signed: the canonical JSON (sorted keys, no spaces, UTF-8) of
    ``{"created_at", "events", "format": "incidentledger.checkpoint.v1", "head", "position"}``.
    """
    return canonical_json(
        {
            "created_at": created_at,
            "events": events,
            "format": CHECKPOINT_FORMAT,
            "head": head,
            "position": position,
        }
    )


def read_checkpoints_file(path: Path) -> list[Checkpoint]:
    """A witness's checkpoints: JSON Lines, one :meth:`Checkpoint.to_json` object a line."""
    found: list[Checkpoint] = []
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                found.append(Checkpoint.from_json(json.loads(line)))
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: {exc}") from exc
    return sorted(found, key=lambda c: c.position)


@dataclass(frozen=True)
class ChainState:
    """The chain after the incident events up to ``position``."""

    position: int
    head: str
    events: int


def extend_chain(
    recorder: ApplicationRecorder,
    decoder: RawDecoder,
    state: ChainState,
    stop: int | None = None,
    *,
    seals: SealChecker | None = None,
    accept_unsealed: bool = False,
    retired_until: Mapping[str, int] | None = None,
    heads: dict[UUID, str] | None = None,
    on_row: Callable[[RawRow], None] | None = None,
) -> ChainState:
    """``state`` extended over the incident events after it (up to ``stop``, inclusive).

    With ``seals``, the range must agree with itself before anything signs it: each
    incident's events in the range link to each other, and the newest of them carries
    the ledger's seal over its hash (which vouches for those below it). Otherwise
    :class:`CheckpointError`. ``accept_unsealed`` lets events without a seal pass (the
    log of a ledger from before seals existed), never a seal that does not match.
    ``retired_until`` (key id: the last position its rotation recorded) bounds the seals
    of ``seals``' retired keys as the ledger's load does (Ledger.bound_retired_seals): such
    a seal vouches only for an event at or before its key's position, and one of a key
    missing from it for none. ``heads``, when given, gets each incident's newest hash in
    the range, by incident id; ``on_row`` is called with each row read.
    """
    position, head, events = state.position, state.head, state.events
    topics = decoder.topics
    newest: dict[UUID | str, _InRange] = {}
    for batch in batches(recorder, topics, position, stop, BATCH):
        for row in batch:
            try:
                body, seal = decoder.row_sealed_body(row)
            except EventDecodeError as exc:
                raise CheckpointError(str(exc)) from exc
            digest = body_hash(body)
            if seals is not None:
                _check_link(newest, row, body, digest, seal)
            if heads is not None:
                heads[UUID(str(row[1]))] = digest
            if on_row is not None:
                on_row(row)
            head = chain_step(head, row[0], digest)
            events += 1
        position = batch[-1][0]
    if seals is not None:
        late: list[str] = []
        for incident, last in newest.items():
            signer = seals.signer(last.hash, last.seal)
            if signer is None:
                if accept_unsealed and last.seal is None:
                    continue
                problem = seals.problem(last.hash, last.seal)
                raise CheckpointError(
                    f"incident {incident}, version {last.version} at position {last.position}: "
                    f"{problem}; the store was changed outside the ledger (run verify)"
                )
            if retired_until is None or signer == key_id(seals.public_key):
                continue
            bound = retired_until.get(signer)
            if bound is None or last.position > bound:
                late.append(
                    f"incidents/{UUID(str(incident))}, version {last.version} at position "
                    f"{last.position}, sealed with key {signer} "
                    + ("never retired" if bound is None else f"retired at position {bound}")
                )
        if late:
            # The ledger refuses these incidents at load (DATA_LOSS): signing over them would
            # make verification vouch for what the ledger will not serve.
            raise CheckpointError(
                f"{len(late)} incident(s) last sealed with a retired key after its rotation: "
                + "; ".join(late[:_NAMED])
                + ("; …" if len(late) > _NAMED else "")
                + " (a replica ran with the retired key after the rotation: stop it, then run "
                "`ledger-audit verify`, docs/operations.md)"
            )
    return ChainState(position, head, events)


def _signed(c: Checkpoint) -> tuple[int, str, int, str, bytes]:
    """What a checkpoint's signature covers, and the signature (not the key id)."""
    return (c.position, c.head, c.events, c.created_at, bytes(c.signature))


@dataclass(frozen=True)
class UnsealedHistory:
    """What :meth:`Checkpoints.unsealed_history` found: the position of the newest incident
    event recorded before seals existed under a checkpoint (0: none), and the newest hash of
    each incident of that history there."""

    until: int = 0
    heads: Mapping[UUID, str] = field(default_factory=dict)


#: How many incidents a refusal names (the count says how many there are).
_NAMED = 10


@dataclass
class _InRange:
    """The newest event of one incident seen so far in a checkpoint's range."""

    version: int
    position: int
    hash: str
    seal: str | None


def _check_link(
    newest: dict[UUID | str, _InRange],
    row: RawRow,
    body: Mapping[str, Any],
    digest: str,
    seal: str | None,
) -> None:
    at, originator_id, version = row[0], row[1], row[2]
    last = newest.get(originator_id)
    if last is not None and (version != last.version + 1 or body.get("previous_hash") != last.hash):
        raise CheckpointError(
            f"incident {originator_id}: version {version} at position {at} does not follow "
            f"version {last.version} at position {last.position} in its hash chain; the store "
            "was changed outside the ledger (run verify)"
        )
    newest[originator_id] = _InRange(version, at, digest, seal)


def checkpoint_table_exists(db: Database) -> bool:
    return table_exists(db, "ledger_checkpoints")


def recorded_retirements(db: Database) -> dict[str, tuple[int, str]]:
    """The store's rotations (ledger_retired_keys): key id -> (the last position the key
    sealed, its successor); empty on a store made before rotations."""
    if not table_exists(db, "ledger_retired_keys"):
        return {}
    with db.transaction() as cur:
        cur.execute("SELECT key_id, position, successor FROM ledger_retired_keys")
        return {str(kid): (int(position), str(succ)) for kid, position, succ in cur.fetchall()}


def select_checkpoints(db: Database, where: str, params: tuple[int, ...]) -> list[Checkpoint]:
    columns = "position, head, events, created_at, key_id, signature"
    statement = f"SELECT {columns} FROM ledger_checkpoints {where}"  # noqa: S608 (fixed clauses)
    with db.transaction() as cur:
        cur.execute(db.q(statement), params)
        rows = cur.fetchall()
    result = []
    for position, head, events, created_at, kid, signature in rows:
        try:
            raw = base64.b64decode(str(signature), validate=True)
        except binascii.Error:
            raw = b""  # a damaged row: its signature will not verify
        result.append(Checkpoint(int(position), head, int(events), created_at, kid, raw))
    return result


def last_checkpoint_position(db: Database) -> int:
    """The position of the latest stored checkpoint (0: none)."""
    if not checkpoint_table_exists(db):
        return 0
    latest = select_checkpoints(db, "ORDER BY position DESC LIMIT ?", (1,))
    return latest[0].position if latest else 0


def iterate_checkpoints(
    db: Database, after: int = 0, until: int | None = None, page: int = 500
) -> Iterator[Checkpoint]:
    """Stored checkpoints with ``after < position <= until``, oldest first, page by page."""
    if not checkpoint_table_exists(db):
        return
    while True:
        rows = select_checkpoints(db, "WHERE position > ? ORDER BY position LIMIT ?", (after, page))
        for checkpoint in rows:
            if until is not None and checkpoint.position > until:
                return
            yield checkpoint
        if len(rows) < page:
            return
        after = rows[-1].position


class Checkpoints:
    """Creates, stores, lists and periodically makes signed checkpoints of one ledger."""

    def __init__(
        self,
        recorder: ApplicationRecorder,
        store_env: Mapping[str, str],
        signing_key: Ed25519PrivateKey,
        *,
        decoder: RawDecoder | None = None,
        interval_seconds: float = 0.0,
        on_checkpoint: Callable[[Checkpoint], None] | None = None,
        create_table: bool = True,
        retired: Sequence[bytes] = (),
        recorded: RecordedEvents | None = None,
    ) -> None:
        self._recorder = recorder
        # The incident events this replica recorded, found as written before each checkpoint.
        self._recorded = recorded
        self._key = signing_key
        self.public_key: bytes = public_key_bytes(signing_key)
        self.key_id: str = key_id(self.public_key)
        # The public keys of LEDGER_RETIRED_SIGNING_KEYS_FILE: checkpoints made with them
        # still count as a base, their seals only when a rotation signs over them.
        self._retired = tuple(k for k in retired if k != self.public_key)
        # What a verifier in the ledger checks the history with: the current key first.
        self.public_keys: tuple[bytes, ...] = (self.public_key, *self._retired)
        self._decoder = decoder or RawDecoder()
        self._interval = interval_seconds
        self._on_checkpoint = on_checkpoint
        self._db: Database = open_database(store_env)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._store_failures = FailureLog(
            "checkpoint.store_unavailable", "checkpoint.store_available_again", logger=log
        )
        self._thread: threading.Thread | None = None
        # The last checkpoint this replica signed (None: none since its start).
        self._made: Checkpoint | None = None
        # Checkpoints refused since the start (CheckpointError): what an alert watches.
        self.refused = 0
        if create_table:
            self.create_table()

    def create_table(self) -> None:
        with self._db.transaction() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS ledger_checkpoints ("
                "position BIGINT PRIMARY KEY, head TEXT NOT NULL, events BIGINT NOT NULL, "
                "created_at TEXT NOT NULL, key_id TEXT NOT NULL, signature TEXT NOT NULL)"
            )
            cur.execute(
                "CREATE TABLE IF NOT EXISTS ledger_retired_keys ("
                "key_id TEXT PRIMARY KEY, retired_at TEXT NOT NULL, successor TEXT NOT NULL, "
                "position BIGINT NOT NULL)"
            )

    def _signer(self, checkpoint: Checkpoint) -> str | None:
        """The id of the key (this ledger's or a retired one) that signed ``checkpoint``."""
        for public in (self.public_key, *self._retired):
            if checkpoint.verify(public):
                return key_id(public)
        return None

    def retired_positions(self) -> dict[str, int]:
        """Every key the store records as retired, with the last position it sealed."""
        if not table_exists(self._db, "ledger_retired_keys"):
            return {}
        with self._db.transaction() as cur:
            cur.execute("SELECT key_id, position FROM ledger_retired_keys")
            return {str(kid): int(position) for kid, position in cur.fetchall()}

    def records_retirements(self) -> bool:
        """Whether the store has the table of retired keys (one made before rotations,
        with CREATE_TABLE=n, has it only once `migrate` ran)."""
        return table_exists(self._db, "ledger_retired_keys")

    def retirement(self, kid: str) -> tuple[str, str, int] | None:
        """When key ``kid`` was retired, for which key, and the last position it covers."""
        if not table_exists(self._db, "ledger_retired_keys"):
            return None  # a store made before rotations (tables made by `migrate`)
        with self._db.transaction() as cur:
            cur.execute(
                self._db.q(
                    "SELECT retired_at, successor, position FROM ledger_retired_keys "
                    "WHERE key_id = ?"
                ),
                (kid,),
            )
            row = cur.fetchone()
        return (str(row[0]), str(row[1]), int(row[2])) if row else None

    # ------------------------------------------------------------------ create

    def create(
        self, *, accept_unsealed: bool = False, rotating: bool = False, at: int | None = None
    ) -> Checkpoint:
        """:meth:`_create`, its refusals counted (``refused``: the metric
        ``ledger_checkpoints_refused_total``)."""
        try:
            return self._create(accept_unsealed=accept_unsealed, rotating=rotating, at=at)
        except CheckpointError:
            with self._lock:
                self.refused += 1
            raise

    def _create(self, *, accept_unsealed: bool, rotating: bool, at: int | None) -> Checkpoint:
        """A checkpoint at the current end of the log (the latest one if nothing is new);
        with ``at``, at that position (the record of a rotation with nothing new to sign,
        :meth:`rotate_key`), over the incident events up to it, even when none lies after
        the latest checkpoint: it then states that checkpoint's count and head again.

        Refuses (:class:`CheckpointError`) to sign a range that disagrees with itself or
        with the seals of its events (see :func:`extend_chain`), and to sign at all with a
        key the store records as retired. The latest checkpoint may be signed with a
        retired key (the rotation's own, or a rotation with nothing new to sign made by an
        earlier version, which left no checkpoint of this key); the seals of the range must be
        this key's, except in the rotation's own checkpoint (``rotating``), which signs
        over the retired keys' seals with the new key, each only on events at or before the
        position its rotation recorded (as the ledger loads them): a retired key's seal
        beyond it (a replica left on it where the commit's own check does not run) is
        refused, naming the incidents.
        """
        with self._lock:
            retired = self.retirement(self.key_id)
            if retired is not None:
                raise CheckpointError(
                    f"key {self.key_id} was retired at {retired[0]} for key {retired[1]}: "
                    "it signs nothing after its rotation (restart with the current key)"
                )
            last = self.latest()
            self._check_made()
            if last is not None and self._signer(last) is None:
                raise CheckpointError(
                    f"the stored checkpoint at position {last.position} does not verify "
                    f"with key {self.key_id}: run `verify` before making new checkpoints"
                )
            base = (
                ChainState(last.position, last.head, last.events)
                if last is not None
                else ChainState(0, GENESIS_HASH, 0)
            )
            own = RecordedCheck(self._recorded) if self._recorded is not None else None
            if own is not None and own.first is not None and own.first <= base.position:
                # Some lie under a checkpoint made since they were recorded (another
                # replica's, or an earlier one that was refused): read them there.
                for batch in batches(
                    self._recorder, self._decoder.topics, own.first - 1, base.position, BATCH
                ):
                    for row in batch:
                        own.row(row)
            state = extend_chain(
                self._recorder,
                self._decoder,
                base,
                seals=SealChecker(self.public_key, self._retired if rotating else ()),
                accept_unsealed=accept_unsealed,
                retired_until=self.retired_positions() if rotating else None,
                stop=at,
                on_row=own.row if own is not None else None,
            )
            # Every event kept was recorded before the read began: all must be there, up to
            # ``at`` when the range stops there (the newest gone are beyond the log's end).
            problem = own.problem(at) if own is not None else None
            if problem is not None:
                log.error("checkpoint.recorded_events_changed", problem=problem)
                raise CheckpointError(problem)
            if at is not None and state.position < at:
                # No incident event holds that position: the rotation's record does.
                state = ChainState(at, state.head, state.events)
            if last is not None and state.position == last.position:
                return last  # a checkpoint's position is its key: one per position
            created_at = datetime.now(UTC).isoformat(timespec="microseconds")
            signature = self._key.sign(
                signing_payload(state.position, state.head, state.events, created_at)
            )
            checkpoint = Checkpoint(
                state.position, state.head, state.events, created_at, self.key_id, signature
            )
            inserted = self._insert(checkpoint)
            if not inserted:  # another replica stored the same position first
                stored = self._at(checkpoint.position)
                return stored or checkpoint
            self._made = checkpoint
        log.info(
            "checkpoint.created",
            position=checkpoint.position,
            head=checkpoint.head,
            events=checkpoint.events,
            key_id=checkpoint.key_id,
        )
        if self._on_checkpoint is not None:
            self._on_checkpoint(checkpoint)
        return checkpoint

    def _check_made(self) -> None:
        """The last checkpoint this replica signed must still be in the store as it signed
        it: a deleted (or changed) row would let the next one be made from an earlier base,
        over a range whose events may have been changed since."""
        made = self._made
        if made is None:
            return
        stored = self._at(made.position)
        if stored is not None and _signed(stored) == _signed(made):
            return
        problem = (
            f"the checkpoint this replica signed at position {made.position} is "
            + ("gone from the store" if stored is None else "changed in the store")
            + "; the store was changed outside the ledger (run verify, and compare with a "
            "witness's checkpoints)"
        )
        log.error("checkpoint.signed_checkpoint_changed", position=made.position, problem=problem)
        raise CheckpointError(problem)

    def seal_earlier_history(self) -> None:
        """On a log whose incident events all carry no seal (recorded before seals
        existed), make one checkpoint that covers them, so that verification, which wants
        a seal on every incident's newest event after the last checkpoint, holds. Once a
        sealed event is the newest, this does nothing; an unsealed newest event after a
        sealed one was not recorded before seals existed (a ledger from before seals ran on
        the store again, or the store was changed): it is logged and never signed over."""
        row = newest_row(self._recorder, self._decoder.topics)
        if row is None:
            return
        try:
            _, seal = self._decoder.row_sealed_body(row)
        except EventDecodeError as exc:
            log.error("checkpoint.newest_event_broken", error=str(exc))
            return
        if seal is not None:
            return
        end, sealed_after = self._unsealed_prefix()
        if sealed_after:
            log.error(
                "checkpoint.unsealed_after_sealed",
                position=row[0],
                unsealed_until=end,
                note="an event without a seal follows sealed ones: a ledger from before "
                "seals wrote to this store after an upgrade, or it was changed; run "
                "`ledger-audit verify --store`",
            )
            return
        try:
            checkpoint = self.create(accept_unsealed=True)
        except CheckpointError as exc:
            log.error("checkpoint.failed", error=str(exc))
            return
        log.warning(
            "checkpoint.unsealed_history_covered",
            position=checkpoint.position,
            events=checkpoint.events,
            note="events recorded before seals existed are now covered by this checkpoint",
        )

    def unsealed_history(self) -> UnsealedHistory:
        """The incident events recorded before seals existed (those of a store written by a
        ledger from before seals, up to its first sealed event), when a checkpoint of this
        ledger's keys covers them and signs their chain as it now is: the position of the
        newest, and each of their incidents' newest hash there. Nothing (position 0) when
        the log's first incident event is sealed (a store that was always sealed: one row
        read), nothing covers those events, or they were changed since. Run after
        :meth:`seal_earlier_history`, which makes that checkpoint; what it returns is where
        a missing seal stops being a forgery."""
        end, _ = self._unsealed_prefix()
        if end == 0:
            return UnsealedHistory()
        # The first checkpoint of this ledger's keys at or after that end must sign the
        # chain of those events as they are now: an event without a seal is otherwise
        # vouched for by nothing at load, and whoever stripped the seals of a sealed store's
        # first events and changed one of them would have it loaded. One pass over that
        # history at the start (the history a ledger from before seals wrote).
        # (The first one past it, else the latest: then only what lies under that one.)
        cover = next((c for c in self.iterate(after=end - 1) if self._signer(c) is not None), None)
        if cover is None:
            cover = self.latest()
            if cover is None or self._signer(cover) is None:
                return UnsealedHistory()
        until = min(end, cover.position)
        # The heads as checked here: an event of that history changed in the store later,
        # while the ledger runs, is then no longer the one checked, and loads as any
        # unsealed event does (DATA_LOSS) instead of until the next start.
        heads: dict[UUID, str] = {}
        try:
            state = extend_chain(
                self._recorder, self._decoder, ChainState(0, GENESIS_HASH, 0), until, heads=heads
            )
            state = extend_chain(self._recorder, self._decoder, state, cover.position)
        except CheckpointError as exc:
            problem = str(exc)
        else:
            if (state.head, state.events) == (cover.head, cover.events):
                return UnsealedHistory(until, heads)
            problem = f"the chain's head after them is {state.head}, not {cover.head}"
        log.error(
            "checkpoint.unsealed_history_changed",
            unsealed_until=end,
            checkpoint=cover.position,
            problem=problem,
            note="the events without a seal do not lead to the head their checkpoint signed: "
            "the store was changed; each incident needs its seal to load; run "
            "`ledger-audit verify --store`",
        )
        return UnsealedHistory()

    def _unsealed_prefix(self) -> tuple[int, bool]:
        """The position of the last incident event before the first sealed one (0: the
        first is sealed, or there is none), and whether a sealed one follows. A broken
        event ends the prefix (loading it says what broke)."""
        end = after = 0
        while True:
            rows = read_rows(self._recorder, self._decoder.topics, after, BATCH)
            if not rows:
                return end, False
            for row in rows:
                try:
                    _, seal = self._decoder.row_sealed_body(row)
                except EventDecodeError:
                    return end, True
                if seal is not None:
                    return end, True
                end = row[0]
            after = rows[-1][0]

    def _insert(self, c: Checkpoint) -> bool:
        with self._db.transaction() as cur:
            cur.execute(
                self._db.q(
                    "INSERT INTO ledger_checkpoints "
                    "(position, head, events, created_at, key_id, signature) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (position) DO NOTHING"
                ),
                (
                    c.position,
                    c.head,
                    c.events,
                    c.created_at,
                    c.key_id,
                    base64.b64encode(c.signature).decode("ascii"),
                ),
            )
            return bool(cur.rowcount == 1)

    def check_key(self) -> str | None:
        """Refuse (:class:`ConfigError`) a signing key that is not the one the store's
        latest checkpoint was signed with, nor the one that sealed its newest incident
        event. A replica started with another key would seal its events with it: the
        others would then refuse those incidents (their newest seal fails), every later
        checkpoint would fail, and the audit would report them as forged, for good. The
        newest seal counts too: before the first checkpoint (the first
        `LEDGER_CHECKPOINT_SECONDS` of a ledger, or for good with `0`) it is the only
        thing that names the ledger's key.

        The one other key accepted is a successor: when that checkpoint or seal was made
        with a key of ``retired`` (LEDGER_RETIRED_SIGNING_KEYS_FILE), the id of that key
        is returned, and :meth:`rotate_key` retires it. A key the store records as
        retired is refused whatever the files say."""
        retired = self.retirement(self.key_id)
        if retired is not None:
            raise ConfigError(
                f"LEDGER_SIGNING_KEY_FILE holds key {self.key_id}, which this ledger retired "
                f"at {retired[0]} for key {retired[1]}: give every replica the current "
                "signing key"
            )
        hint = (
            "give every replica the ledger's own signing key, or, to rotate to this one, "
            "list the old key's public key in LEDGER_RETIRED_SIGNING_KEYS_FILE"
        )
        last = self.latest()
        rotating: str | None = None
        if last is not None and not last.verify(self.public_key):
            rotating = self._signer(last)
            if rotating is None and last.key_id in {key_id(k) for k in self.public_keys}:
                # It names a key this ledger knows, and that key's signature does not
                # hold: the row was changed, not the key.
                raise ConfigError(
                    f"the store's latest checkpoint (position {last.position}) names key "
                    f"{last.key_id} but its signature does not verify with it: the "
                    "checkpoint was changed outside the ledger; run `ledger-audit verify` "
                    "(docs/operations.md)"
                )
            if rotating is None:
                raise ConfigError(
                    f"LEDGER_SIGNING_KEY_FILE holds key {self.key_id}, but the store's "
                    f"checkpoints are signed with key {last.key_id} (the latest at "
                    f"position {last.position}): {hint}"
                )
        row = newest_row(self._recorder, self._decoder.topics)
        if row is None or (rotating is None and last is not None and row[0] <= last.position):
            return rotating  # the newest event is under a checkpoint of this key
        try:
            _, seal = self._decoder.row_sealed_body(row)
        except EventDecodeError:
            return rotating  # the audit names a broken event; it says nothing about the key
        sealed_with = seal.partition(":")[0] if seal else ""
        if not sealed_with or sealed_with == self.key_id:
            return rotating
        retired_ids = {key_id(k) for k in self._retired}
        if sealed_with in retired_ids and (rotating is not None or last is None):
            return rotating or sealed_with
        if sealed_with in retired_ids:
            after = last.position if last is not None else 0
            raise ConfigError(
                f"the store's newest event (position {row[0]}) is sealed with the retired "
                f"key {sealed_with}, after the checkpoint at position {after} "
                f"signed with key {self.key_id}: a replica still runs with the retired key; "
                "stop it, then run `ledger-audit verify` (docs/operations.md)"
            )
        raise ConfigError(
            f"LEDGER_SIGNING_KEY_FILE holds key {self.key_id}, but the store's newest "
            f"event (position {row[0]}) is sealed with key {sealed_with[:32]}: {hint} "
            "(or restore the ledger's key from the backup)"
        )

    def check_taken_over(self) -> None:
        """Refuse (:class:`ConfigError`) to sign outside the ledger (``ledger-audit
        checkpoint``) with a key the ledger does not sign with yet: one that is neither the
        store's nor a successor (as :meth:`check_key`), and a successor before the ledger
        has rotated to it. Only a ledger started with the new key rotates (it records the
        old key as retired and signs the rotation checkpoint over its seals, under the
        store's write lock): signing here first would find the old key's seals and fail as
        if the store had been changed, or show the old key's checkpoint as the latest.
        A rotation already recorded with the old key's checkpoint still the latest (made
        by an earlier version with nothing new to sign) passes; so does a latest checkpoint
        that names this key but does
        not verify (changed in the store: :meth:`create` says to run verify)."""
        last = self.latest()
        if last is not None and (last.verify(self.public_key) or last.key_id == self.key_id):
            return
        retiring = self.check_key()
        if retiring is None:
            return
        recorded = self.retirement(retiring)
        if recorded is not None and last is not None and recorded[2] <= last.position:
            return
        raise ConfigError(
            f"LEDGER_SIGNING_KEY_FILE holds key {self.key_id}, which is to take over from the "
            f"retired key {retiring} (LEDGER_RETIRED_SIGNING_KEYS_FILE), but the ledger has "
            "not rotated to it yet: nothing was signed; start the ledger with this key "
            "first (it records the rotation and signs its checkpoint, docs/operations.md), "
            "then make checkpoints with it"
        )

    def rotate_key(self, record_rotation: Callable[[str, str, int], int]) -> Checkpoint | None:
        """When :meth:`check_key` finds the store last signed with a retired key: record
        that key as retired (a ledger started with it refuses from now on) and sign a
        checkpoint over the whole log with this key, over the retired key's seals, so that
        everything before the rotation is covered by the new key too. None when there is
        nothing to rotate. Two replicas rotating at once record and sign the same.

        With no incident event since the retired key's last checkpoint, that checkpoint's
        position is taken (one checkpoint a position): ``record_rotation`` (retired key,
        this key, the position the key is retired at; Ledger.record_key_rotation) records
        the rotation in the log and returns the record's position, where this key signs its
        first checkpoint at once. From there on a verifier that has the checkpoints alone
        (an export) knows the retired key's run has ended, and refuses what it signs or
        seals after that position (docs/hash-chain.md, section 6)."""
        retiring = self.check_key()
        if retiring is None:
            return None
        if not table_exists(self._db, "ledger_retired_keys"):
            raise CheckpointError(
                "the store has no table ledger_retired_keys (made before key rotations): "
                "run `python -m services.ledger migrate` first"
            )
        # Recorded first: from here on the retired key is refused, also if the checkpoint
        # below fails (the next start signs it; a start finds the key retired already).
        rotated_at = datetime.now(UTC).isoformat(timespec="microseconds")
        with self._db.transaction() as cur:
            # Under the store's write lock (SQLite's BEGIN IMMEDIATE; on PostgreSQL the
            # events table's, which every commit takes), so that no commit falls between
            # the newest position read here and the row: a replica left on the retired key
            # checks the row in its commit's transaction under that lock (services/ledger/
            # store.py), so each of its commits is either below the position or refused.
            self._lock_events(cur)
            newest = newest_row(self._recorder, self._decoder.topics)
            # The retired key's own last checkpoint may lie after the newest incident
            # event (at the record of an earlier rotation): the key vouches for both.
            cur.execute("SELECT MAX(position) FROM ledger_checkpoints")
            signed = cur.fetchone()
            position = max(newest[0] if newest else 0, int(signed[0] or 0) if signed else 0)
            cur.execute(
                self._db.q(
                    "INSERT INTO ledger_retired_keys (key_id, retired_at, successor, position) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (key_id) DO NOTHING"
                ),
                (retiring, rotated_at, self.key_id, position),
            )
            recorded = bool(cur.rowcount == 1)
        checkpoint = self.create(rotating=True)
        retirement = self.retirement(retiring)
        retired_at = retirement[2] if retirement is not None else position
        if not checkpoint.verify(self.public_key):
            # Nothing new to sign: the retired key's checkpoint is still the latest.
            at = record_rotation(retiring, self.key_id, retired_at)
            checkpoint = self.create(rotating=True, at=at)
        if recorded:
            log.warning(
                "checkpoint.key_rotated",
                retired_key=retiring,
                key_id=self.key_id,
                position=retired_at,
                checkpoint=checkpoint.position,
                events=checkpoint.events,
                checkpoint_key=checkpoint.key_id,
                note="the retired key signs nothing from now on; keep its public key, and "
                "this position, to verify the history before it",
            )
        return checkpoint

    def _lock_events(self, cur: Any) -> None:
        if isinstance(self._recorder, PostgresApplicationRecorder):
            table = Identifier(self._recorder.datastore.schema, self._recorder.events_table_name)
            cur.execute(SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(table))

    # ------------------------------------------------------------------ read

    def latest(self) -> Checkpoint | None:
        rows = self._select("ORDER BY position DESC LIMIT 1", ())
        return rows[0] if rows else None

    def _at(self, position: int) -> Checkpoint | None:
        rows = self._select("WHERE position = ?", (position,))
        return rows[0] if rows else None

    def list(self, after: int = 0, limit: int = 100) -> list[Checkpoint]:
        """Checkpoints with ``position > after``, oldest first, at most ``limit``."""
        return self._select("WHERE position > ? ORDER BY position LIMIT ?", (after, limit))

    def iterate(self, after: int = 0, until: int | None = None) -> Iterator[Checkpoint]:
        """Every checkpoint with ``after < position <= until``, oldest first, page by page."""
        return iterate_checkpoints(self._db, after, until)

    def _select(self, where: str, params: tuple[int, ...]) -> builtins.list[Checkpoint]:
        return select_checkpoints(self._db, where, params)

    # ------------------------------------------------------------------ periodic

    def start(self) -> None:
        """Make a checkpoint every ``interval_seconds`` in a thread (none when 0)."""
        if self._interval <= 0 or self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="checkpoints", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                self.create()
            except STORE_CONNECTION_ERRORS as exc:  # the store restarts: next interval
                self._store_failures.failed(error=str(exc))
            except CheckpointError as exc:  # a refusal, with its reason: no traceback
                log.error("checkpoint.failed", error=str(exc))
            except Exception:
                log.exception("checkpoint.failed")
            else:
                self._store_failures.succeeded()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        self.stop()
        self._db.close()

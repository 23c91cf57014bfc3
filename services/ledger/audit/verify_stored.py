"""Verification of the stored history: its rows, in log order, into a :class:`ChainVerifier`
(hashed by worker processes when the history is long), with the checkpoints given and
those stored beside it."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, cast
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import ApplicationRecorder

from services.common.sql import open_database
from services.ledger.audit import scan
from services.ledger.audit.checkpoints import (
    BATCH,
    Checkpoint,
    iterate_checkpoints,
    recorded_retirements,
)
from services.ledger.audit.encoding import (
    EventDecodeError,
    RawDecoder,
    batches,
    body_hash,
    uuid_text,
)
from services.ledger.audit.scan import store_source
from services.ledger.audit.verifier import ChainVerifier, VerifyReport
from services.ledger.store import RawRow, read_rows


@dataclass(frozen=True)
class VerifyProgress:
    """How far a verification of the store has come."""

    position: int  # every position up to this one is checked
    end: int  # the last position when the verification started (later ones are checked too)
    events: int  # events checked so far


# Told of the progress at the start, then after each batch of events (a few thousand at most).
ProgressCallback = Callable[[VerifyProgress], None]


def verify_store(
    ledger: Application[Any] | ApplicationRecorder,
    public_key: bytes | Sequence[bytes],
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
        verifier = ChainVerifier(
            public_key,
            merged,
            recorded_retired=recorded_retirements(database) if database is not None else None,
        )
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

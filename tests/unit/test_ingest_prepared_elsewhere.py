"""Ledger.ingest with its batches prepared by another ledger, as the intake process's is
(services/ledger/intake.py: over no store and no key table, with copies of the signing key
and the key table's sealer): what crosses is pickled both ways, as through the child's
pipe. The outcomes, the errors, the seals and the people's data come out as when the
batch is prepared in the ledger that saves it. The child itself, through the API:
tests/integration/test_intake_process.py."""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.common.errors import AlreadyExists, InvalidArgument, LedgerError
from services.common.sql import SQLiteDatabase
from services.ledger.application import (
    IngestItem,
    IngestOutcome,
    IngestResult,
    Ledger,
    PreparedBatch,
)
from services.ledger.domain.commands import ReadPersonalData
from services.ledger.domain.incident import Actor
from services.ledger.domain.personal import Person, PersonalData
from services.ledger.personal_keys import KeyRing, PersonalKeys
from services.ledger.seals import Sealer
from tests.unit.incident_builders import REF, REPORTER, actor, envelope_for
from tests.unit.test_ingest import CONFLICT, CREATED, DUPLICATE, INVALID, item

NOW = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)
POPO = {"PERSISTENCE_MODULE": "eventsourcing.popo"}


T = TypeVar("T")


def round_trip(value: T) -> T:
    """``value`` pickled and unpickled, as the pipe to the intake's child carries it."""
    copy: T = pickle.loads(pickle.dumps(value))  # noqa: S301 - the bytes were made here
    return copy


class PicklingIntake:
    """Prepares with ``preparer``; the call's values and the prepared batch are pickled
    and unpickled on the way, as the pipe to the child does."""

    def __init__(self, preparer: Ledger) -> None:
        self.preparer = preparer
        self.batches = 0

    def prepare(
        self, actor: Actor, items: Sequence[IngestItem | InvalidArgument], skew_ms: int | None
    ) -> PreparedBatch:
        actor, items, skew_ms = round_trip((actor, items, skew_ms))
        batch = self.preparer.prepare_reports(actor, items, skew_ms)
        self.batches += 1
        answer = round_trip(batch)
        assert isinstance(answer, PreparedBatch)
        return answer


@pytest.fixture
def keys() -> Iterator[PersonalKeys]:
    table = PersonalKeys(SQLiteDatabase(":memory:"), KeyRing({"k1": bytes(range(32))}, "k1"))
    yield table
    table.close()


@pytest.fixture
def sealer() -> Sealer:
    return Sealer(Ed25519PrivateKey.generate())


def ledger_with(
    keys: PersonalKeys, sealer: Sealer, elsewhere: bool
) -> tuple[Ledger, PicklingIntake | None]:
    ledger = Ledger(REF, env=POPO, clock=lambda: NOW, sealer=sealer, personal_keys=keys)
    intake = None
    if elsewhere:
        preparer = Ledger(
            REF,
            env=POPO,
            clock=lambda: NOW,
            # Copies, as the child gets them.
            sealer=round_trip(sealer),
            personal_sealer=round_trip(keys.sealer),
        )
        intake = PicklingIntake(preparer)
        ledger.use_intake(intake)
    return ledger, intake


def shape(result: IngestResult) -> tuple[Any, ...]:
    """What a result says, but for what differs between two ledgers (ids, times)."""
    error = result.error
    # A conflict names the incident recorded first, and its reference code: each ledger's own.
    message = None if error is None else re.sub(r"\(ReportIncident, .*\)$", "", error.message)
    return (
        result.outcome,
        None if error is None else (type(error), error.reason, error.field, message),
        None if result.result is None else result.result.version,
    )


def batch_and_again() -> tuple[list[IngestItem | InvalidArgument], list[IngestItem]]:
    earlier = item("Recorded yesterday")
    new = item("Money handed out at TPS 4")
    changed = item("Other content", report_id=earlier.report_id)
    batch: list[IngestItem | InvalidArgument] = [
        new,
        earlier,
        changed,
        item(""),
        InvalidArgument("location", "is required"),
        item(category="picnic"),
        new,
    ]
    return batch, [earlier]


def test_a_mixed_batch_prepared_elsewhere_is_answered_as_one_prepared_here(
    keys: PersonalKeys, sealer: Sealer
) -> None:
    answers = []
    batch, first = batch_and_again()  # the same reports to each ledger
    for elsewhere in (False, True):
        ledger, intake = ledger_with(keys, sealer, elsewhere)
        ledger.ingest(actor(REPORTER), first)
        results = ledger.ingest(actor(REPORTER), batch)
        answers.append([shape(r) for r in results])
        assert [r.outcome for r in results] == [
            CREATED,
            DUPLICATE,
            CONFLICT,
            INVALID,
            INVALID,
            INVALID,
            DUPLICATE,
        ]
        conflict = results[2].error
        assert isinstance(conflict, AlreadyExists) and conflict.reason == "REQUEST_ID_REUSED"
        created = results[0].result
        assert created is not None and created.position > 0
        assert results[6].result == created, "the same report twice: the first's result"
        # Loaded from the store, its newest event's seal checked against the ledger's key.
        assert ledger.get_incident(created.incident_id).title == "Money handed out at TPS 4"
        assert intake is None or intake.batches == 2
        ledger.close()
    assert answers[0] == answers[1]


def test_people_sealed_elsewhere_open_and_are_found_with_the_key_table(
    keys: PersonalKeys, sealer: Sealer
) -> None:
    ledger, _ = ledger_with(keys, sealer, elsewhere=True)
    people = PersonalData(
        reporter=Person(name="Siti", phone="081273456690", nik="1706014107900003"),
        witnesses=(Person(name="Budi"),),
    )
    plain = item("Amplop dibagikan", category="money_politics")
    named = replace(plain, command=replace(plain.command, personal_data=people))
    (result,) = ledger.ingest(actor(REPORTER), [named])
    assert result.outcome is IngestOutcome.CREATED and result.result is not None
    incident = result.result.incident_id
    # Its blind index digests are the key table's: found by phone and NIK.
    assert {k.incident_id for k in keys.find("phone", "+6281273456690")} == {incident}
    assert {k.incident_id for k in keys.find("nik", "1706014107900003")} == {incident}
    # Its keys, wrapped in the other ledger, open under the key table's KEK.
    read = ledger.read_personal_data(
        envelope_for("bawaslu"), ReadPersonalData(incident, 0, "verify report")
    )
    assert sorted(v.person.name for v in read.subjects if v.person) == ["Budi", "Siti"]
    # Sent again, the same report is the same request (its fingerprint's digest alike).
    (again,) = ledger.ingest(actor(REPORTER), [named])
    assert again.outcome is IngestOutcome.DUPLICATE and again.result == result.result
    ledger.close()


@pytest.mark.parametrize(
    "error",
    [
        InvalidArgument("title", "is required"),
        AlreadyExists("used", reason="REQUEST_ID_REUSED", metadata={"request_id": "d/1"}),
    ],
)
def test_a_refusal_crosses_the_pipe_as_it_is(error: LedgerError) -> None:
    copy = round_trip(error)
    assert type(copy) is type(error)
    assert (str(copy), vars(copy)) == (str(error), vars(error))

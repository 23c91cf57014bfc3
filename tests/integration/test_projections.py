"""Projections on real stores: rebuilt equals incremental, exactly once across a crash,
snapshots as of a position, and the follower thread.

The history is made of random legal command sequences through the Ledger application
(refused commands record nothing and are simply skipped).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from services.common.config import PROJECT_ROOT
from services.common.errors import LedgerError
from services.common.sql import open_database
from services.ledger.application import CommandResult, Ledger
from services.ledger.domain.commands import (
    AcceptHandover,
    AddSupportingAgency,
    ApproveClosure,
    AssessSeverity,
    AssignLeadAgency,
    EscalateIncident,
    LogAction,
    MergeIncident,
    ProposeHandover,
    RecordCorrection,
    RecordDecision,
    RejectIncident,
    ReopenIncident,
    ReportIncident,
    RequestClosure,
    ResolveIncident,
    VerifyIncident,
)
from services.ledger.domain.incident import Actor, Envelope, Incident, RejectionReason
from services.ledger.projections import BoardFilter, Lag, Projections, service
from services.ledger.projections.facts import FastDecoder, fact_from_event, incident_topics
from services.ledger.projections.folding import BatchFolder
from services.ledger.projections.store import PositionBusy, ProjectionStore
from services.ledger.store import read_rows
from tests.support import reference, store_environment
from tests.unit.incident_builders import evidence_attached, personal_data_history

REF = reference()
COORDINATOR = REF.coordinator
RESPONDERS = sorted(a.code for a in REF.agencies.values() if a.role.value == "responder")
KECAMATAN = sorted(REF.kecamatan)
CATEGORIES = sorted(REF.categories)
SEVERITIES = sorted(REF.severities)
T0 = datetime(2024, 11, 20, tzinfo=UTC)
FILTERS = (
    "",
    'status = "REPORTED"',
    'status != "CLOSED" AND severity = "high"',
    'kecamatan = "ipuh"',
    'lead_agency = "polres"',
    'lead_agency = "" AND status != "REJECTED"',
    'category = "hoax" AND status != "REJECTED"',
)


def envelope(agency: str, rng: random.Random) -> Envelope:
    request_id = f"{agency}-{rng.getrandbits(64):016x}"
    return Envelope(
        actor=Actor(agency, f"officer-{agency}", REF.agencies[agency].role),
        request_id=request_id,
        correlation_id=request_id,
        causation_id=request_id,
        occurred_at=T0 + timedelta(minutes=rng.randrange(0, 20_000)),
    )


@dataclass
class History:
    """Drives random commands through the ledger and remembers what it needs."""

    ledger: Ledger
    rng: random.Random
    incidents: list[UUID] = field(default_factory=list)
    decisions: list[tuple[UUID, UUID]] = field(default_factory=list)
    events: int = 0

    def run(self, steps: int, on_step: Callable[[int], None] = lambda _: None) -> None:
        for step in range(steps):
            if not self.incidents or self.rng.random() < 0.08:
                self.report()
            else:
                self.act(self.pick())
            on_step(step)

    def pick(self) -> UUID:
        """An incident, most often a live one (recent incidents are likelier live)."""
        recent = self.incidents[-60:]
        return self.rng.choice(recent if self.rng.random() < 0.8 else self.incidents)

    def _do(self, command: Callable[[], CommandResult]) -> CommandResult | None:
        try:
            result = command()
        except LedgerError:
            return None
        self.events += 1
        return result

    def report(self) -> None:
        rng = self.rng
        kecamatan = rng.choice(KECAMATAN)
        result = self._do(
            lambda: self.ledger.execute(
                envelope(rng.choice(RESPONDERS), rng),
                ReportIncident(
                    title=f"incident {len(self.incidents)}",
                    description="",
                    category=rng.choice(CATEGORIES),
                    severity=rng.choice(SEVERITIES),
                    location={
                        "kecamatan": kecamatan,
                        "desa": sorted(REF.kecamatan[kecamatan].desa)[0],
                    },
                ),
            )
        )
        assert result is not None
        self.incidents.append(result.incident_id)

    def act(self, incident_id: UUID) -> None:
        rng, ledger = self.rng, self.ledger
        coord = envelope(COORDINATOR, rng)
        incident: Incident = ledger.get_incident(incident_id)
        lead = incident.lead_agency or COORDINATOR
        choice = rng.randrange(19)  # 16, 17 and 18: a correction
        if rng.random() < 0.5:  # most often, the next step of the lifecycle
            choice = NEXT_STEP.get(incident.status.value, choice)
        if incident.pending_handover is not None and rng.random() < 0.5:
            choice = 9  # accept it
        if choice <= 2:
            self._do(lambda: ledger.execute(coord, VerifyIncident(incident_id, 0, "checked")))
        elif choice == 3 and rng.random() < 0.3:
            self._do(
                lambda: ledger.execute(
                    coord, RejectIncident(incident_id, 0, RejectionReason.HOAX, "hoax")
                )
            )
        elif choice == 4 and rng.random() < 0.3:
            target = rng.choice(self.incidents)
            self._do(
                lambda: ledger.execute(coord, MergeIncident(incident_id, 0, target, "duplicate"))
            )
        elif choice == 5:
            severity = rng.choice(SEVERITIES)
            self._do(
                lambda: ledger.execute(
                    coord, AssessSeverity(incident_id, 0, severity, "re-assessed")
                )
            )
        elif choice <= 7:
            agency = rng.choice(RESPONDERS)
            self._do(
                lambda: ledger.execute(coord, AssignLeadAgency(incident_id, 0, agency, "lead"))
            )
        elif choice == 8:
            agency = rng.choice(RESPONDERS)
            self._do(lambda: ledger.execute(coord, AddSupportingAgency(incident_id, 0, agency, "")))
        elif choice == 9:
            agency = rng.choice(RESPONDERS)
            if incident.pending_handover is None:
                self._do(
                    lambda: ledger.execute(coord, ProposeHandover(incident_id, 0, agency, "move"))
                )
            else:
                to = envelope(incident.pending_handover[1], rng)
                self._do(lambda: ledger.execute(to, AcceptHandover(incident_id, 0, "accepted")))
        elif choice == 10:
            start = T0 + timedelta(hours=rng.randrange(0, 300))
            result = self._do(
                lambda: ledger.execute(
                    coord,
                    RecordDecision(
                        incident_id,
                        0,
                        deciding_agencies=tuple(rng.sample(RESPONDERS, 2)),
                        forum="Forkopimda",
                        summary="large gatherings restricted",
                        rationale="tension",
                        scope={"kecamatan": rng.choice(KECAMATAN)} if rng.random() < 0.5 else None,
                        valid_from=start,
                        valid_until=start + timedelta(hours=rng.randrange(1, 96)),
                    ),
                )
            )
            if result is not None:
                self.decisions.append((incident_id, result.event_id))
        elif choice <= 12:
            self._do(
                lambda: ledger.execute(
                    envelope(lead, rng), LogAction(incident_id, 0, "patrol", None)
                )
            )
        elif choice == 13:
            self._do(lambda: ledger.execute(coord, EscalateIncident(incident_id, 0, "worse")))
        elif choice == 14:
            self._do(lambda: ledger.execute(coord, ResolveIncident(incident_id, 0, "calm again")))
        elif choice == 15:
            if incident.close_requested:
                self._do(lambda: ledger.execute(coord, ApproveClosure(incident_id, 0, "ok")))
            elif incident.status.value == "CLOSED" or rng.random() < 0.2:
                self._do(lambda: ledger.execute(coord, ReopenIncident(incident_id, 0, "again")))
            else:
                self._do(
                    lambda: ledger.execute(envelope(lead, rng), RequestClosure(incident_id, 0, ""))
                )
        else:
            self.correct(incident)

    def correct(self, incident: Incident) -> None:
        rng = self.rng
        event_id = rng.choice(list(incident.event_values))
        values = incident.event_values[event_id]
        kind = incident.event_types[event_id]
        options: dict[str, Callable[[], str]] = {
            "severity": lambda: rng.choice(SEVERITIES),
            "category": lambda: rng.choice(CATEGORIES),
            "title": lambda: f"corrected {rng.randrange(1000)}",
            "summary": lambda: f"summary {rng.randrange(1000)}",
            "forum": lambda: f"forum {rng.randrange(1000)}",
            "valid_until": lambda: (T0 + timedelta(hours=rng.randrange(1, 400))).isoformat(),
            "valid_from": lambda: (T0 + timedelta(hours=rng.randrange(0, 300))).isoformat(),
            "location.kecamatan": lambda: rng.choice(KECAMATAN),
            "location.desa": lambda: "",
            "occurred_at": lambda: (T0 + timedelta(minutes=rng.randrange(20_000))).isoformat(),
        }
        fields = [f for f in values if f in options and (f != "occurred_at" or kind == "Reported")]
        if not fields:
            return
        name = rng.choice(fields)
        new_value = options[name]()
        if new_value == values[name]:
            return
        self._do(
            lambda: self.ledger.execute(
                envelope(COORDINATOR, rng),
                RecordCorrection(
                    incident.id,
                    0,
                    event_id=event_id,
                    field=name,
                    old_value=values[name],
                    new_value=new_value,
                    reason="typo",
                ),
            )
        )


def outputs(projections: Any, at_times: list[datetime]) -> dict[str, Any]:
    """Every query's answer, for comparisons."""
    result: dict[str, Any] = {}
    for text in FILTERS:
        board_filter = BoardFilter.parse(text, REF)
        result[f"list {text}"] = projections.list_incidents(board_filter, 0, 100_000)
        result[f"page {text}"] = projections.list_incidents(board_filter, 40, 7)
    for at in at_times:
        result[f"map {at}"] = projections.vulnerability_map(at)
        result[f"decisions {at}"] = projections.decisions_in_force(at)
        result[f"decisions ipuh {at}"] = projections.decisions_in_force(at, "ipuh")
        result[f"workload {at}"] = projections.workload(at)
    for by in ("agency", "severity", "category"):
        result[f"times {by}"] = projections.response_times(by)
    return result


# The command (a branch of History.act) that moves an incident on from its status.
NEXT_STEP = {
    "REPORTED": 0,
    "VERIFIED": 6,
    "REOPENED": 6,
    "ASSIGNED": 11,
    "RESPONDING": 14,
    "RESOLVED": 15,
    "CLOSED": 15,
}
AT_TIMES = [T0 + timedelta(hours=h) for h in (0, 50, 150, 333)] + [T0 + timedelta(days=60)]


@pytest.fixture
def ledger(store_env: dict[str, str]) -> Iterator[Ledger]:
    app = Ledger(REF, env={**store_env, "CREATE_TABLE": "y"})
    yield app
    app.close()


def check_rows_match_aggregates(projections: Projections, ledger: Ledger, ids: list[UUID]) -> None:
    """The documented mapping folds the same state as the domain's own rules."""
    rows = projections.board_rows(ids)
    assert len(rows) == len(ids)
    for incident_id in ids:
        incident: Incident = ledger.get_incident(incident_id)
        row = rows[incident_id]
        assert (
            row.status,
            row.severity,
            row.category,
            row.title,
            row.kecamatan,
            row.lead_agency,
            list(row.supporting_agencies),
            row.escalation_level,
            row.version,
            row.close_requested,
            row.pending_handover_to,
            row.reference,
        ) == (
            incident.status.value,
            incident.severity,
            incident.category,
            incident.title,
            incident.location.get("kecamatan", ""),
            incident.lead_agency,
            incident.supporting_agencies,
            incident.escalation_level,
            incident.version,
            incident.close_requested,
            incident.pending_handover[1] if incident.pending_handover else "",
            incident.reference,
        )


def test_a_board_made_before_reference_codes_gains_their_column(
    ledger: Ledger, store_env: dict[str, str]
) -> None:
    if store_env["PERSISTENCE_MODULE"] == "eventsourcing.popo":
        pytest.skip("the projections' tables live in the store's database")
    projections = Projections(ledger, store_env, REF)
    history = History(ledger, random.Random(12))
    history.run(20)
    projections.catch_up()
    old = history.incidents[0]
    database = open_database(store_env)
    try:
        with database.transaction() as cur:  # the board as it was: no reference column
            cur.execute("ALTER TABLE proj_incident DROP COLUMN reference")
            cur.execute(
                database.q("UPDATE proj_incident SET title = ? WHERE incident_id = ?"),
                ("reported before codes", str(old)),
            )
    finally:
        database.close()
    again = Projections(ledger, store_env, REF)
    again.create_schema()
    again.create_schema()  # twice: adding the column is done once
    assert again.board_rows([old])[old].reference == ""
    assert again.board_rows([old])[old].title == "reported before codes"
    history.report()
    again.catch_up()
    newest = history.incidents[-1]
    assert again.board_rows([newest])[newest].reference == ledger.get_incident(newest).reference


def test_rebuilt_projections_equal_the_incrementally_maintained_ones(
    ledger: Ledger, store_env: dict[str, str]
) -> None:
    rng = random.Random(20241127)
    projections = Projections(ledger, store_env, REF)
    history = History(ledger, rng)
    snapshots: list[tuple[int, dict[str, Any]]] = []

    def maybe_catch_up(step: int) -> None:
        # Incremental application in batches of random size, splitting incidents.
        if rng.random() < 0.05:
            projections.catch_up(batch_size=rng.choice([1, 3, 17, 64, 500]))
        if step % 700 == 350:
            position = projections.catch_up()
            snapshots.append((position, outputs(projections, AT_TIMES[:3])))

    history.run(5000, maybe_catch_up)
    position = projections.catch_up(batch_size=37)
    assert history.events >= 2000, history.events
    assert len(history.incidents) >= 300
    assert history.decisions
    assert position == ledger.recorder.max_notification_id()
    check_rows_match_aggregates(projections, ledger, history.incidents)
    incremental_rows = projections.raw_rows()
    incremental = outputs(projections, AT_TIMES)
    assert len(incremental_rows["proj_incident"]) == len(history.incidents)
    assert len(incremental_rows["proj_decision"]) == len(history.decisions)

    stats = projections.rebuild()

    # Every incident event once: the sum of the incidents' versions.
    assert stats.events == sum(
        r.version for r in projections.board_rows(history.incidents).values()
    )
    assert projections.position() == position
    assert projections.raw_rows() == incremental_rows
    assert outputs(projections, AT_TIMES) == incremental

    # As of a past position: the same answers as the live projections gave back then.
    for past, answers in snapshots:
        with projections.as_of(past) as then:
            assert outputs(then, AT_TIMES[:3]) == answers
    projections.close()


def test_fast_decoder_gives_the_mappers_facts(ledger: Ledger) -> None:
    history = History(ledger, random.Random(7))
    history.run(1500)
    # A merge and a rejection for certain (a random history may miss the rare ones).
    for _ in range(3):
        history.report()
    rejected, duplicate, target = history.incidents[-3:]
    ledger.execute(
        envelope(COORDINATOR, random.Random(8)), MergeIncident(duplicate, 0, target, "same")
    )
    ledger.execute(
        envelope(COORDINATOR, random.Random(9)),
        RejectIncident(rejected, 0, RejectionReason.HOAX, "hoax"),
    )
    # The personal data events and evidence (the history does not make them).
    personal_data_history(ledger)
    evidence_attached(ledger, target, "desk_pilkada")
    decoder = FastDecoder(ledger)
    assert decoder.fast
    # What a store whose mapper encrypts or compresses gets: the library decodes the row.
    through_mapper = FastDecoder(ledger)
    through_mapper.fast = False
    # The fast decoder reads the rows as the projections read them (plain, the ids as
    # stored); the reference, the library's notifications of the same positions.
    rows = {row[0]: row for row in read_rows(ledger.recorder, None, 0, 10_000)}
    notifications = ledger.recorder.select_notifications(0, 10_000)
    assert sorted(rows) == [n.id for n in notifications]
    seen: set[str] = set()
    for notification in notifications:
        fact = decoder.decode(rows[notification.id])
        event = ledger.mapper.to_domain_event(notification)
        if not isinstance(event, Incident.Event):
            assert fact is None
            assert through_mapper.decode(rows[notification.id]) is None
            continue
        assert fact == fact_from_event(event, notification.id)
        assert through_mapper.decode(rows[notification.id]) == fact
        seen.add(type(event).__name__)
    assert seen == set(incident_topics().values())  # every event type was compared


class CrashError(RuntimeError):
    pass


def test_a_crash_inside_a_batch_changes_nothing_and_catching_up_again_is_exact(
    ledger: Ledger, store_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    history = History(ledger, random.Random(99))
    history.run(400)
    projections = Projections(ledger, store_env, REF)
    projections.catch_up(batch_size=50)
    before_rows, before_position = projections.raw_rows(), projections.position()
    history.run(300)

    real = ProjectionStore.write_decisions

    def crash_after_incident_rows(self: ProjectionStore, cur: Any, rows: Any) -> None:
        real(self, cur, rows[: len(rows) // 2])
        raise CrashError("power cut")

    monkeypatch.setattr(ProjectionStore, "write_decisions", crash_after_incident_rows)
    with pytest.raises(CrashError):
        projections.catch_up(batch_size=100_000)
    assert projections.position() == before_position
    assert projections.raw_rows() == before_rows
    monkeypatch.undo()

    position = projections.catch_up()
    assert position == ledger.recorder.max_notification_id()
    after_rows = projections.raw_rows()
    projections.rebuild()  # what never failing gives
    assert projections.raw_rows() == after_rows
    check_rows_match_aggregates(projections, ledger, history.incidents)
    projections.close()


def test_two_projection_processes_apply_each_event_once(
    ledger: Ledger, store_env: dict[str, str]
) -> None:
    if store_env["PERSISTENCE_MODULE"] == "eventsourcing.popo":
        pytest.skip("the in-memory store is private to one process")
    history = History(ledger, random.Random(5))
    history.run(600)
    first = Projections(ledger, store_env, REF)
    second = Projections(ledger, store_env, REF, create=False)
    errors: list[BaseException] = []

    def run(projections: Projections, size: int) -> None:
        try:
            projections.catch_up(batch_size=size)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(first, 7)),
        threading.Thread(target=run, args=(second, 11)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    raced = first.raw_rows()
    first.rebuild()
    assert first.raw_rows() == raced
    check_rows_match_aggregates(first, ledger, history.incidents)
    second.close()
    first.close()


def test_a_batch_folded_while_another_process_applies_is_written_once(
    ledger: Ledger, store_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process applies while the first folds a batch. On SQLite the fold runs
    before the writing transaction: the other applies that batch and the next, and the
    position, read again under the lock, tells the first its rows are stale, so it writes
    nothing (they would undo the next batch's changes and move the position back). On
    PostgreSQL the fold runs under the position row's lock: the other is refused."""
    if store_env["PERSISTENCE_MODULE"] == "eventsourcing.popo":
        pytest.skip("the in-memory store is private to one process")
    sqlite = store_env["PERSISTENCE_MODULE"] == "eventsourcing.sqlite"
    history = History(ledger, random.Random(8))
    history.run(300)
    first = Projections(ledger, store_env, REF)
    second = Projections(ledger, store_env, REF, create=False)
    batch = read_rows(ledger.recorder, None, 0, 120)
    after = read_rows(ledger.recorder, None, int(batch[-1][0]), 10_000)
    assert batch and after
    first_store, second_store = first._store, second._store
    real_fold = BatchFolder.fold
    folds: list[int] = []

    def fold_while_the_other_applies(folder: Any, facts: Any) -> None:
        folds.append(len(facts))
        if len(folds) == 1:  # the first store's fold
            if sqlite:
                second_store.apply(batch, 0)
                second_store.apply(after, int(batch[-1][0]))
            else:
                with pytest.raises(PositionBusy):
                    second_store.apply(batch, 0)
        real_fold(folder, facts)

    monkeypatch.setattr(BatchFolder, "fold", fold_while_the_other_applies)
    end = int(after[-1][0])
    first_applied = first_store.apply(batch, 0)
    monkeypatch.undo()
    if sqlite:
        assert first_applied == (end, 0)
    else:
        assert first_applied[0] == int(batch[-1][0]) and first_applied[1] > 0
        first.catch_up()
    assert first.position() == end
    raced = first.raw_rows()
    first.rebuild()  # every event applied once
    assert first.raw_rows() == raced
    check_rows_match_aggregates(first, ledger, history.incidents)
    second.close()
    first.close()


def test_the_follower_catches_up_when_woken_and_reports_lag(
    ledger: Ledger, store_env: dict[str, str]
) -> None:
    projections = Projections(ledger, store_env, REF)
    assert projections.lag().events == 0
    history = History(ledger, random.Random(3))
    history.run(50)
    lag = projections.lag()
    assert lag.events == ledger.recorder.max_notification_id()
    assert lag.seconds >= 0.0
    ledger.add_commit_listener(projections.wake)
    projections.start()
    try:
        history.run(50)
        last = ledger.recorder.max_notification_id() or 0
        assert projections.wait_for(last, timeout=30)
        assert projections.position() >= last
        assert projections.lag() == Lag(0, 0.0)
        assert not projections.wait_for(last + 1000, timeout=0.2)
    finally:
        projections.stop()
    rows = projections.board_rows(history.incidents, catch_up_first=False)
    assert len(rows) == len(history.incidents)
    projections.close()


def test_a_reader_waiting_for_its_write_does_not_wait_for_commits_to_gather(
    ledger: Ledger, store_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under load the follower lets commits gather between rounds; a reader waiting for a
    # position cuts the pause short (here a minute long, far beyond the reader's timeout).
    monkeypatch.setattr(service, "GATHER_SECONDS", 60.0)
    projections = Projections(ledger, store_env, REF)
    ledger.add_commit_listener(projections.wake)
    projections.start()
    history = History(ledger, random.Random(5))
    try:
        for _ in range(3):  # the first round, then rounds that follow one within the pause
            history.run(10)
            last = ledger.recorder.max_notification_id() or 0
            assert projections.wait_for(last, timeout=10)
            assert projections.position() >= last
    finally:
        projections.stop()
    projections.close()


def test_wait_for_without_a_follower_catches_up_itself(
    ledger: Ledger, store_env: dict[str, str]
) -> None:
    projections = Projections(ledger, store_env, REF)
    History(ledger, random.Random(1)).run(20)
    last = ledger.recorder.max_notification_id() or 0
    assert projections.position() == 0
    assert projections.wait_for(last, timeout=5)
    assert projections.position() == last
    assert not projections.wait_for(last + 1, timeout=0)
    projections.close()


def test_on_sqlite_the_projections_commit_without_a_sync_and_the_events_with_one(
    ledger: Ledger, store_env: dict[str, str]
) -> None:
    """The projections' commits leave the sync of SQLite's log to the ledger's next commit
    (service.SQLITE_PRAGMAS); the events' own connections keep theirs (FULL)."""
    if store_env["PERSISTENCE_MODULE"] != "eventsourcing.sqlite":
        pytest.skip("a pragma of SQLite's connections")
    projections = Projections(ledger, store_env, REF)
    History(ledger, random.Random(3)).run(20)
    projections.catch_up()
    with projections._store.sql.transaction() as cur:
        cur.execute("PRAGMA journal_mode")
        assert cur.fetchone()[0] == "wal"  # where NORMAL risks the last commits, not the file
        cur.execute("PRAGMA synchronous")
        assert cur.fetchone()[0] == 1  # NORMAL
    with ledger.recorder.datastore.transaction(commit=False) as cur:  # type: ignore[attr-defined]
        cur.execute("PRAGMA synchronous")
        assert cur.fetchone()[0] == 2  # FULL: a command answers once its events are synced
    projections.close()


def test_rebuild_command_logs_only_structlog_lines(tmp_path: Path) -> None:
    with store_environment("sqlite", tmp_path) as store_env:
        app = Ledger(REF, env={**store_env, "CREATE_TABLE": "y"})
        History(app, random.Random(2)).run(100)
        expected = sum(app.get_incident(i).version for i in set(_incidents(app)))
        app.close()
        done = subprocess.run(
            [sys.executable, "-m", "services.ledger.projections", "rebuild"],
            env={
                **os.environ,
                **store_env,
                "LEDGER_DATA_DIR": str(tmp_path / "data"),
                "LEDGER_LOG_FORMAT": "json",
                "PYTHONPATH": f"{PROJECT_ROOT}:{PROJECT_ROOT / 'gen'}",
            },
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.stderr == ""
    assert lines[-1]["event"] == "projections.rebuild_done"
    assert lines[-1]["events"] == expected


def _incidents(app: Ledger) -> list[UUID]:
    return [
        UUID(str(n.originator_id))
        for n in app.recorder.select_notifications(0, 100_000)
        if n.topic.endswith("Incident.Reported")
    ]

"""Tamper evidence on real stores: rows altered directly in SQLite and PostgreSQL are found
and named; exports verify offline and an edited export is caught; the CLI's exit codes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import grpc
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg.sql import SQL, Identifier
from structlog.testing import capture_logs

from incidentledger.v1 import audit_service_pb2 as audit_api
from incidentledger.v1 import audit_service_pb2_grpc as audit_grpc
from incidentledger.v1 import ledger_service_pb2 as api
from services.common.config import PROJECT_ROOT, AuditSettings, ConfigError
from services.common.errors import DataLoss
from services.common.grpc_errors import error_info
from services.common.sql import postgres_connect
from services.ledger.application import Ledger
from services.ledger.audit import (
    Checkpoint,
    CheckpointError,
    Checkpoints,
    Divergence,
    ExportError,
    RawDecoder,
    VerifyReport,
    body_hash,
    export_jsonl,
    public_key_bytes,
    read_checkpoints_file,
    scan,
    verify_export,
    verify_exported,
    verify_store,
)
from services.ledger.audit.keys import load_signing_key, public_key_pem
from services.ledger.domain.commands import EscalateIncident, ReportIncident
from services.ledger.domain.incident import incident_event_classes
from services.ledger.projections import BoardFilter, Projections
from services.ledger.projections.facts import FastDecoder
from services.ledger.relay_messages import EventEncoder
from services.ledger.seals import Sealer
from services.ledger.store import RawRow
from tests.ledgerctl_support import Ctl
from tests.support import (
    REFERENCE_FILE,
    Client,
    reference,
    require_postgres,
    rid,
    running_ledger,
    settings_for,
    store_environment,
)
from tests.unit.incident_builders import envelope_for
from tests.unit.test_audit_encoding import History, build_history

KEY = Ed25519PrivateKey.generate()
PUBLIC = public_key_bytes(KEY)
NODE_VERIFIER = PROJECT_ROOT / "tests" / "js" / "verify_export.mjs"


@dataclass
class Row:
    position: int
    version: int
    topic: str
    state: bytes


class Surgery:
    """Direct access to the event rows, bypassing the ledger, as an intruder would."""

    def __init__(self, kind: str, store_env: dict[str, str], table: str) -> None:
        self.kind, self.env, self.table = kind, store_env, table

    def _run(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.kind == "sqlite":
            with closing(sqlite3.connect(self.env["SQLITE_DBNAME"])) as lite, lite:
                rows = lite.execute(
                    statement.replace("{t}", self.table).replace("{pos}", "rowid"), params
                ).fetchall()
                return [tuple(r) for r in rows]
        with postgres_connect(self.env, autocommit=True) as pg:
            text = statement.replace("?", "%s").replace("{pos}", "notification_id")
            query = SQL(text.replace("{t}", "{table}")).format(
                table=Identifier(self.env["POSTGRES_SCHEMA"], self.table)
            )
            cur = pg.execute(query, params)
            return [tuple(r) for r in cur.fetchall()] if cur.description else []

    def _id(self, incident: UUID) -> object:
        return incident.hex if self.kind == "sqlite" else incident

    def rows(self, incident: UUID) -> list[Row]:
        found = self._run(
            "SELECT {pos}, originator_version, topic, state FROM {t} "
            "WHERE originator_id = ? ORDER BY originator_version",
            (self._id(incident),),
        )
        return [Row(int(p), int(v), str(t), bytes(s)) for p, v, t, s in found]

    def set_state(self, position: int, state: bytes) -> None:
        self._run("UPDATE {t} SET state = ? WHERE {pos} = ?", (state, position))

    def set_version(self, position: int, version: int) -> None:
        self._run("UPDATE {t} SET originator_version = ? WHERE {pos} = ?", (version, position))

    def delete(self, position: int) -> None:
        self._run("DELETE FROM {t} WHERE {pos} = ?", (position,))

    def insert(self, incident: UUID, version: int, topic: str, state: bytes) -> int:
        self._run(
            "INSERT INTO {t} (originator_id, originator_version, topic, state) VALUES (?, ?, ?, ?)",
            (self._id(incident), version, topic, state),
        )
        return max(r.position for r in self.rows(incident))

    def last_rows(self, count: int) -> list[int]:
        """The positions of the last ``count`` stored rows, of any aggregate."""
        statement = "SELECT {pos} FROM {t} ORDER BY {pos} DESC LIMIT ?"
        return [int(r[0]) for r in self._run(statement, (count,))]

    def last_positions(self, count: int) -> list[int]:
        topics = tuple(_topics())
        marks = ",".join("?" * len(topics))
        statement = (
            f"SELECT {{pos}} FROM {{t}} WHERE topic IN ({marks}) ORDER BY {{pos}} DESC LIMIT ?"  # noqa: S608
        )
        found = self._run(statement, (*topics, count))
        return [int(r[0]) for r in found]


def _topics() -> list[str]:
    from eventsourcing.utils import get_topic

    return [get_topic(cls) for cls in incident_event_classes()]


@dataclass
class Store:
    kind: str
    env: dict[str, str]
    ledger: Ledger
    history: History
    checkpoints: Checkpoints
    rows: Surgery

    def verify(self, witness: list[Checkpoint] | None = None) -> VerifyReport:
        serial = verify_store(self.ledger, PUBLIC, witness, workers=0)
        # Hashed by worker processes, a few positions at a time: the same report.
        assert scan.store_source(self.ledger) is not None  # workers can read this store
        assert verify_store(self.ledger, PUBLIC, witness, workers=2) == serial
        return serial

    def divergence(self, witness: list[Checkpoint] | None = None) -> Divergence:
        report = self.verify(witness)
        assert not report.ok
        assert report.divergence is not None
        return report.divergence


@pytest.fixture(params=["sqlite", "postgres"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Store]:
    monkeypatch.setattr(scan, "RANGE", 7)  # many ranges for the workers, checkpoints inside
    monkeypatch.setattr(verify_exported, "CHUNK", 3000)  # and many chunks of an export file
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
    with store_environment(request.param, tmp_path) as store_env:
        ledger = Ledger(reference(), env=store_env, sealer=Sealer(KEY))
        checkpoints = Checkpoints(ledger.recorder, store_env, KEY)
        try:
            history = build_history(ledger)
            surgery = Surgery(request.param, store_env, ledger.recorder.events_table_name)  # type: ignore[attr-defined]
            yield Store(request.param, store_env, ledger, history, checkpoints, surgery)
        finally:
            checkpoints.close()
            ledger.close()


def verify_file(path: Path, witness: list[Checkpoint] | None = None) -> VerifyReport:
    """``verify_export`` in this process, and in two workers (a line or two a chunk): the
    same report."""
    serial = verify_export(path, PUBLIC, witness, workers=0)
    assert verify_export(path, PUBLIC, witness, workers=2) == serial
    return serial


def _name(incident: UUID) -> str:
    return f"incidents/{incident}"


# ---------------------------------------------------------------- clean


def test_an_unaltered_ledger_verifies_clean_in_the_store_and_in_its_export(
    store: Store, tmp_path: Path
) -> None:
    first = store.checkpoints.create()
    build_history(store.ledger, extra=1)
    second = store.checkpoints.create()
    assert second.events > first.events
    report = store.verify()
    assert report.ok, report.divergence
    assert report.checkpoints_checked == 2
    assert report.events == second.events
    # The second history adds six incidents: its ingested report is the first's, sent again.
    assert report.incidents == len(store.history.others) + 1 + 6
    out = tmp_path / "ledger.jsonl"
    stats = export_jsonl(store.ledger, out)
    assert stats.events == second.events and stats.checkpoints == 2
    assert stats.head == second.head
    offline = verify_file(out)
    assert offline.ok, offline.divergence
    assert offline.checkpoints_checked == 2
    assert verify_file(out, [first, second]).ok


def test_checkpoints_are_incremental_listed_and_published_once(store: Store) -> None:
    published: list[Checkpoint] = []
    checkpoints = Checkpoints(store.ledger.recorder, store.env, KEY, on_checkpoint=published.append)
    try:
        first = checkpoints.create()
        assert checkpoints.create() == first  # nothing new: no new checkpoint
        build_history(store.ledger, extra=0)
        second = checkpoints.create()
        assert published == [first, second]
        assert second.position > first.position and second.verify(PUBLIC)
        assert checkpoints.list() == [first, second]
        assert checkpoints.list(after=first.position) == [second]
        assert checkpoints.list(limit=1) == [first]
        assert checkpoints.key_id == first.key_id
    finally:
        checkpoints.close()


def test_a_replica_with_another_signing_key_is_refused_at_start(store: Store) -> None:
    # It would seal its events with that key: the other replicas would refuse them, and
    # every later checkpoint fail. The ledger's start runs this check before serving.
    store.checkpoints.check_key()  # no checkpoint yet: any key
    store.checkpoints.create()
    store.checkpoints.check_key()  # the ledger's own key
    other = Checkpoints(store.ledger.recorder, store.env, Ed25519PrivateKey.generate())
    try:
        with pytest.raises(ConfigError) as refused:
            other.check_key()
        assert other.key_id in str(refused.value), refused.value
        assert store.checkpoints.key_id in str(refused.value), refused.value
    finally:
        other.close()


def test_another_signing_key_is_refused_before_the_first_checkpoint(store: Store) -> None:
    # A lost key file, or the development key generated again in its place: before the
    # first checkpoint only the seals name the ledger's key. Started, the ledger would
    # seal with the new key, and the audit would find the history sealed by another.
    assert store.checkpoints.latest() is None
    store.checkpoints.check_key()  # the ledger's own key
    stranger = Ed25519PrivateKey.generate()
    other = Checkpoints(store.ledger.recorder, store.env, stranger)
    try:
        with pytest.raises(ConfigError) as refused:
            other.check_key()
        assert other.key_id in str(refused.value), refused.value
        assert store.checkpoints.key_id in str(refused.value), refused.value
        assert "newest event" in str(refused.value), refused.value
    finally:
        other.close()


def test_an_altered_latest_checkpoint_is_named_as_altered_at_start(store: Store) -> None:
    """The intruder edits the latest stored checkpoint: the start refuses, saying that
    the checkpoint does not verify with the key it names, not that the key is wrong."""
    latest = store.checkpoints.create()
    Surgery(store.kind, store.env, "ledger_checkpoints")._run(
        "UPDATE {t} SET head = ? WHERE position = ?", ("0" * 64, latest.position)
    )
    with pytest.raises(ConfigError) as refused:
        store.checkpoints.check_key()
    message = str(refused.value)
    assert f"position {latest.position}" in message, message
    assert "changed outside the ledger" in message, message
    assert "signed with key" not in message, message
    assert store.divergence().kind == "bad_signature"


def test_any_signing_key_starts_an_empty_store(tmp_path: Path) -> None:
    with store_environment("sqlite", tmp_path) as store_env:
        ledger = Ledger(reference(), env=store_env, sealer=Sealer(KEY))
        checkpoints = Checkpoints(ledger.recorder, store_env, Ed25519PrivateKey.generate())
        try:
            checkpoints.check_key()
        finally:
            checkpoints.close()
            ledger.close()


def test_the_periodic_thread_makes_checkpoints_until_stopped(store: Store) -> None:
    made = threading.Event()
    checkpoints = Checkpoints(
        store.ledger.recorder,
        store.env,
        KEY,
        interval_seconds=0.05,
        on_checkpoint=lambda _: made.set(),
    )
    try:
        checkpoints.start()
        assert made.wait(30), "no checkpoint was made"
    finally:
        checkpoints.stop()
    assert checkpoints.latest() is not None
    checkpoints.close()


# ---------------------------------------------------------------- alterations


def test_one_changed_byte_in_a_middle_event_is_named(store: Store) -> None:
    store.checkpoints.create()
    rows = store.rows.rows(store.history.lifecycle)
    target = rows[5]  # version 6: the decision
    assert b'"forum":"Rapat Forkopimda"' in target.state
    store.rows.set_state(target.position, target.state.replace(b"Rapat", b"Rapet"))
    assert store.divergence() == Divergence(
        "modified",
        _name(store.history.lifecycle),
        6,
        target.position,
        store.divergence().detail,
    )


def test_a_changed_byte_that_breaks_the_encoding_is_modified_and_never_crashes(
    store: Store,
) -> None:
    rows = store.rows.rows(store.history.lifecycle)
    target = rows[-1]  # the latest event: no successor, but it no longer decodes
    store.rows.set_state(target.position, b"X" + target.state[1:])
    found = store.divergence()
    assert (found.kind, found.incident, found.version, found.position) == (
        "modified",
        _name(store.history.lifecycle),
        target.version,
        target.position,
    )


def test_a_changed_previous_hash_names_its_own_event(store: Store) -> None:
    rows = store.rows.rows(store.history.lifecycle)
    target = rows[3]  # version 4
    state = json.loads(target.state)
    first = state["previous_hash"][0]
    state["previous_hash"] = ("0" if first != "0" else "1") + state["previous_hash"][1:]
    store.rows.set_state(target.position, json.dumps(state).encode())
    found = store.divergence()
    assert (found.kind, found.version, found.position) == ("modified", 4, target.position)


def test_a_change_to_the_latest_event_of_an_incident_is_caught_by_the_checkpoint(
    store: Store,
) -> None:
    checkpoint = store.checkpoints.create()
    rows = store.rows.rows(store.history.lifecycle)
    target = rows[-1]
    assert b"second patrol" in target.state
    store.rows.set_state(target.position, target.state.replace(b"second", b"fourth"))
    found = store.divergence()
    # The checkpoint is passed while reading, the seals are checked at the end
    # (docs/hash-chain.md, section 8): the checkpoint is named, and the seal that fails too.
    assert checkpoint.position > target.position
    assert (found.kind, found.incident, found.position) == ("modified", None, checkpoint.position)
    assert "differs from the signed checkpoint" in found.detail
    assert f"{_name(store.history.lifecycle)}, position {target.position}: " in found.detail
    assert "no longer matches its seal" in found.detail
    # Without the checkpoint (removed by the intruder), the seal names the event.
    Surgery(store.kind, store.env, "ledger_checkpoints")._run("DELETE FROM {t}")
    found = store.divergence()
    assert (found.kind, found.incident, found.version, found.position) == (
        "modified",
        _name(store.history.lifecycle),
        target.version,
        target.position,
    )
    assert "no longer matches its seal" in found.detail


def _reopened(store: Store) -> Ledger:
    """The ledger as a restarted process sees the store: nothing cached."""
    return Ledger(reference(), env=store.env, sealer=Sealer(KEY))


def _assert_data_loss(store: Store, incident: UUID, check: str) -> None:
    """Reads and commands on the incident answer DATA_LOSS / HASH_CHAIN_BROKEN, naming it."""
    ledger = _reopened(store)
    try:
        for attempt in (
            lambda: ledger.get_incident(incident),
            lambda: ledger.incident_events(incident, after_version=0, limit=100),
            lambda: ledger.execute(
                envelope_for("polres"), EscalateIncident(incident, 0, "still growing")
            ),
        ):
            with pytest.raises(DataLoss) as caught:
                attempt()
            assert caught.value.reason == "HASH_CHAIN_BROKEN"
            assert caught.value.metadata["incident"] == _name(incident)
            assert caught.value.metadata["check"] == check
    finally:
        ledger.close()


def _rewrite_latest_two(store: Store, incident: UUID) -> int:
    """An intruder's careful edit after the last checkpoint: change the second newest event
    of the incident and recompute the hash link above it, so that the chain agrees."""
    rows = store.rows.rows(incident)
    before, head = rows[-2], rows[-1]
    decoder = RawDecoder(store.ledger.mapper)
    old = body_hash(decoder.body(before.topic, incident, before.version, before.state))
    forged = re.sub(rb'"reason"\s*:\s*"', b'"reason":"forged ', before.state, count=1)
    assert forged != before.state
    new = body_hash(decoder.body(before.topic, incident, before.version, forged))
    assert old.encode() in head.state
    store.rows.set_state(before.position, forged)
    store.rows.set_state(head.position, head.state.replace(old.encode(), new.encode()))
    return head.position


@pytest.mark.parametrize("alteration", ["edit", "rewrite", "strip_seal", "copied_seal"])
def test_any_change_after_the_last_checkpoint_is_found_and_never_signed(
    store: Store, alteration: str
) -> None:
    """No checkpoint covers these events: each incident's newest seal must catch them."""
    store.checkpoints.create()
    after = build_history(store.ledger, extra=0)  # events after the checkpoint
    incident = after.lifecycle
    rows = store.rows.rows(incident)
    head = rows[-1]
    if alteration == "edit":  # the incident's newest event, hashes left as they are
        assert b"second patrol" in head.state
        store.rows.set_state(head.position, head.state.replace(b"second", b"fourth"))
    elif alteration == "rewrite":  # an older event, every hash above it recomputed
        _rewrite_latest_two(store, incident)
    elif alteration == "strip_seal":
        stripped = re.sub(rb',\s*"seal"\s*:\s*"[^"]*"', b"", head.state)
        assert stripped != head.state
        store.rows.set_state(head.position, stripped)
    else:  # the seal of another event pasted over this one's
        seal = re.compile(rb'"seal"\s*:\s*"[^"]*"')
        other = seal.search(rows[-2].state)
        assert other is not None
        store.rows.set_state(head.position, seal.sub(other.group(0), head.state))
    found = store.divergence()
    assert (found.kind, found.incident, found.version, found.position) == (
        "modified",
        _name(incident),
        head.version,
        head.position,
    )
    with pytest.raises(CheckpointError, match=f"version {head.version}"):
        store.checkpoints.create()
    assert store.verify().divergence == found  # nothing was signed over it
    _assert_data_loss(store, incident, "seal")


def test_a_deleted_or_undecodable_event_is_data_loss_naming_the_incident(store: Store) -> None:
    rows = store.rows.rows(store.history.lifecycle)
    store.rows.delete(rows[4].position)
    _assert_data_loss(store, store.history.lifecycle, "decode")
    other = store.history.others[0]
    target = store.rows.rows(other)[-1]
    store.rows.set_state(target.position, b"\xff not json")
    _assert_data_loss(store, other, "decode")


def test_a_changed_middle_event_is_data_loss_naming_the_incident_and_the_chain(
    store: Store,
) -> None:
    """A load finds the broken link (the next event no longer names the changed one's
    hash): DATA_LOSS with the incident as a resource name and the check, as the API says."""
    target = store.rows.rows(store.history.lifecycle)[5]
    store.rows.set_state(target.position, target.state.replace(b"Rapat", b"Rapet"))
    _assert_data_loss(store, store.history.lifecycle, "chain")


def _foreign_topic(store: Store) -> str:
    """The topic of a record of the log that is not an incident event (a request's)."""
    found = store.rows._run("SELECT DISTINCT topic FROM {t}")
    return next(str(t) for (t,) in found if "RequestRecord" in str(t))


@pytest.mark.parametrize("which", ["middle", "newest"])
def test_an_event_given_another_records_topic_is_data_loss_and_looks_deleted(
    store: Store, which: str
) -> None:
    """An intruder relabels an incident's event as another kind of record of the log (a
    request's): the audit, which reads incident events only, sees it missing; loading
    the incident answers DATA_LOSS naming it, never an internal error."""
    checkpoint = store.checkpoints.create()
    rows = store.rows.rows(store.history.lifecycle)
    target = rows[4] if which == "middle" else rows[-1]
    store.rows._run(
        "UPDATE {t} SET topic = ? WHERE {pos} = ?", (_foreign_topic(store), target.position)
    )
    found = store.divergence()
    if which == "middle":
        assert (found.kind, found.incident, found.version) == (
            "deleted",
            _name(store.history.lifecycle),
            target.version,
        )
    else:
        assert (found.kind, found.position) == ("deleted", checkpoint.position)
    _assert_data_loss(store, store.history.lifecycle, "decode")


def _record_rows(store: Store, kind: str, needle: bytes) -> list[tuple[int, bytes]]:
    """The log's records of ``kind`` (a topic's part: RequestRecord, ReferenceClaim) whose
    state holds ``needle``: outside the chain, the intruder's way to misdirect."""
    found = store.rows._run("SELECT {pos}, topic, state FROM {t}")
    return [(int(p), bytes(s)) for p, t, s in found if kind in str(t) and needle in bytes(s)]


def test_a_request_record_pointed_at_another_event_is_data_loss_on_retry(store: Store) -> None:
    """The intruder points a report's request record at another incident's event: a retry of
    the report would be answered with it. The event names its request (agency and request
    id, sealed in the chain): the retry answers DATA_LOSS instead."""
    envelope = envelope_for("kesbangpol")
    command = ReportIncident(
        title="Massa berkumpul",
        description="",
        category="crowd_gathering",
        severity="low",
        location={"kecamatan": "ipuh"},
    )
    first = store.ledger.execute(envelope, command)
    (position, state), *_ = _record_rows(store, "RequestRecord", str(first.incident_id).encode())
    other = store.rows.rows(store.history.lifecycle)[3]
    forged = state.replace(
        f"{first.incident_id}@1".encode(), f"{store.history.lifecycle}@{other.version}".encode()
    )
    assert forged != state
    store.rows.set_state(position, forged)
    ledger = _reopened(store)
    try:
        with pytest.raises(DataLoss) as caught:
            ledger.execute(envelope, command)
        assert caught.value.reason == "STORED_RECORD_CHANGED"
        assert caught.value.metadata["record"] == "request"
        assert caught.value.metadata["incident"] == _name(store.history.lifecycle)
    finally:
        ledger.close()


def test_a_reference_claim_pointed_at_another_incident_is_data_loss(store: Store) -> None:
    """The intruder points a reference code's claim at another incident: a caller who reads
    the code out would get that incident (and read its people's data). The incident's
    report records its code (in the chain): the lookup answers DATA_LOSS instead."""
    owner, other = store.history.lifecycle, store.history.others[1]
    code = store.ledger.get_incident(owner).reference
    assert code and store.ledger.incident_by_reference(code) == owner
    (position, state), *_ = _record_rows(store, "ReferenceClaim", code.encode())
    forged = state.replace(owner.hex.encode(), other.hex.encode())
    assert forged != state
    store.rows.set_state(position, forged)
    ledger = _reopened(store)
    try:
        with pytest.raises(DataLoss) as caught:
            ledger.incident_by_reference(code)
        assert caught.value.reason == "STORED_RECORD_CHANGED"
        assert caught.value.metadata["record"] == "reference"
        assert caught.value.metadata["incident"] == _name(other)
    finally:
        ledger.close()


def test_a_deleted_middle_event_is_named(store: Store) -> None:
    rows = store.rows.rows(store.history.lifecycle)
    store.rows.delete(rows[4].position)  # version 5
    found = store.divergence()
    assert (found.kind, found.incident, found.version, found.position) == (
        "deleted",
        _name(store.history.lifecycle),
        5,
        rows[5].position,
    )


def test_deleting_the_last_events_after_a_checkpoint_is_truncation(store: Store) -> None:
    checkpoint = store.checkpoints.create()
    for position in store.rows.last_positions(3):
        store.rows.delete(position)
    found = store.divergence()
    assert (found.kind, found.position) == ("truncated", checkpoint.position)
    assert "3 later event(s)" in found.detail


def test_an_export_of_a_cut_log_carries_the_checkpoint_that_shows_it(
    store: Store, tmp_path: Path
) -> None:
    """The store's checkpoint past the log's end was left out of its export (the range ended
    at the log's end): the export of a truncated, or emptied, store verified clean offline."""
    checkpoint = store.checkpoints.create()
    # Every row from the checkpoint's last three events on (request records and all), as
    # `DELETE ... WHERE rowid > N` cuts a log: its end is then before the checkpoint.
    cut_from = sorted(store.rows.last_positions(3))[0]
    for position in store.rows.last_rows(10_000):
        if position >= cut_from:
            store.rows.delete(position)
    out = tmp_path / "cut.jsonl"
    assert export_jsonl(store.ledger, out).checkpoints >= 1
    found = verify_file(out).divergence
    assert found is not None
    assert (found.kind, found.position) == ("truncated", checkpoint.position), found
    for position in store.rows.last_rows(10_000):
        store.rows.delete(position)
    emptied = tmp_path / "empty.jsonl"
    export_jsonl(store.ledger, emptied)
    found = verify_file(emptied).divergence
    assert found is not None and found.kind == "truncated", found


def test_swapped_states_of_two_versions_are_reordered(store: Store) -> None:
    rows = store.rows.rows(store.history.lifecycle)
    a, b = rows[6], rows[7]  # versions 7 (Escalated) and 8 (SeverityAssessed)
    store.rows.set_state(a.position, b.state)
    store.rows.set_state(b.position, a.state)
    found = store.divergence()
    assert (found.kind, found.incident, found.version, found.position) == (
        "reordered",
        _name(store.history.lifecycle),
        7,
        a.position,
    )


def test_swapped_version_numbers_are_reordered(store: Store) -> None:
    rows = store.rows.rows(store.history.lifecycle)
    a, b = rows[6], rows[7]
    store.rows.set_version(a.position, 1000)
    store.rows.set_version(b.position, a.version)
    store.rows.set_version(a.position, b.version)
    found = store.divergence()
    assert (found.kind, found.incident, found.version, found.position) == (
        "reordered",
        _name(store.history.lifecycle),
        b.version,
        a.position,
    )


def test_a_forged_event_inserted_into_an_incident_is_named(store: Store) -> None:
    incident = store.history.lifecycle
    rows = store.rows.rows(incident)
    # The intruder makes room at version 3 and forges an event linked to version 2.
    for row in reversed(rows[2:]):
        store.rows.set_version(row.position, row.version + 1)
    forged = json.loads(rows[2].state)
    forged["reason"] = "forged order"
    forged["previous_hash"] = json.loads(rows[2].state)["previous_hash"]
    position = store.rows.insert(incident, 3, rows[2].topic, json.dumps(forged).encode())
    found = store.divergence()
    assert (found.kind, found.incident, found.version, found.position) == (
        "inserted",
        _name(incident),
        3,
        position,
    )


def test_a_genuine_event_copied_onto_another_incident_is_the_forgery_not_its_predecessor(
    store: Store, tmp_path: Path
) -> None:
    """A genuine row copied into another incident as its next version: its previous_hash
    does not link to that incident's head, and it was the head (authentic, its seal holds)
    that was named as changed; the copy, whose seal does not hold, is the forgery."""
    source = store.rows.rows(store.history.lifecycle)[3]
    incident = next(i for i in store.history.others if len(store.rows.rows(i)) > 1)
    head = store.rows.rows(incident)[-1]
    position = store.rows.insert(incident, head.version + 1, source.topic, source.state)
    expected = ("modified", _name(incident), head.version + 1, position)
    found = store.divergence()
    assert (found.kind, found.incident, found.version, found.position) == expected, found
    assert f"does not link to version {head.version}" in found.detail, found.detail
    assert "its own seal does not verify" in found.detail, found.detail
    out = tmp_path / "forged.jsonl"
    export_jsonl(store.ledger, out)
    offline = verify_file(out).divergence
    assert offline is not None
    assert (offline.kind, offline.incident, offline.version, offline.position) == expected


def test_a_checkpoint_signed_by_another_key_is_a_bad_signature(store: Store) -> None:
    mine = store.checkpoints.create()
    forger = Ed25519PrivateKey.generate()
    forged = Checkpoint(
        mine.position,
        mine.head,
        mine.events,
        mine.created_at,
        mine.key_id,
        forger.sign(mine.signed_bytes()),
    )
    found = store.divergence([forged])
    assert (found.kind, found.position) == ("bad_signature", mine.position)
    altered = Checkpoint(mine.position, "0" * 64, mine.events, mine.created_at, "", mine.signature)
    assert store.divergence([altered]).kind == "bad_signature"


def test_a_witness_copy_changed_but_keeping_its_signature_is_a_bad_signature(
    store: Store, tmp_path: Path
) -> None:
    """A witness's checkpoint with a field changed and the genuine signature kept, at the
    position of one the export holds, passed as a copy of it, never checked: a forged
    witness file verified ``ok``."""
    genuine = store.checkpoints.create()
    out = tmp_path / "export.jsonl"
    export_jsonl(store.ledger, out)
    assert verify_file(out, [genuine]).ok
    for changed in (
        Checkpoint(
            genuine.position,
            "0" * 64,
            genuine.events,
            genuine.created_at,
            genuine.key_id,
            genuine.signature,
        ),
        Checkpoint(
            genuine.position,
            genuine.head,
            genuine.events + 1,
            genuine.created_at,
            genuine.key_id,
            genuine.signature,
        ),
    ):
        for report in (verify_file(out, [changed]), store.verify([changed])):
            assert report.divergence is not None, changed
            assert (report.divergence.kind, report.divergence.position) == (
                "bad_signature",
                genuine.position,
            )


def test_a_witness_catches_a_deleted_checkpoint_and_truncation(store: Store) -> None:
    witness = [store.checkpoints.create()]
    for position in store.rows.last_positions(2):
        store.rows.delete(position)
    # The intruder also removes the stored checkpoint; the witness still has it.
    Surgery(store.kind, store.env, "ledger_checkpoints")._run("DELETE FROM {t}")
    assert store.verify().ok  # without the witness, nothing says the log was longer
    assert store.divergence(witness).kind == "truncated"


# ---------------------------------------------------------------- exports


def test_an_export_verifies_offline_and_a_hand_edit_is_caught(store: Store, tmp_path: Path) -> None:
    checkpoint = store.checkpoints.create()
    out = tmp_path / "export.jsonl"
    export_jsonl(store.ledger, out)
    lines = out.read_bytes().splitlines(keepends=True)
    assert json.loads(lines[0])["record"] == "header"
    assert json.loads(lines[-1])["record"] == "end"
    events = [(n, json.loads(line)) for n, line in enumerate(lines) if b'"canonical"' in line]
    assert len(events) == checkpoint.events

    # A title changed in the envelope's payload only.
    n, record = next((n, r) for n, r in events if r["type"] == "Reported")
    edited = tmp_path / "edited.jsonl"
    edited.write_bytes(
        b"".join([*lines[:n], lines[n].replace(b"Massa", b"Masse"), *lines[n + 1 :]])
    )
    found = verify_file(edited).divergence
    assert found is not None
    assert (found.kind, found.position) == ("modified", int(record["position"]))

    # The same edit made consistently (canonical body and hash recomputed): the chain
    # of the incident and the checkpoint still show it.
    n, record = events[5]
    canonical = record["canonical"]
    canonical["reason"] = "rewritten"
    from services.ledger.audit import body_hash, envelope_from_body

    rewritten = envelope_from_body(canonical, int(record["position"]), body_hash(canonical))
    rewritten["canonical"] = canonical
    line = (json.dumps(rewritten, ensure_ascii=False) + "\n").encode()
    edited.write_bytes(b"".join([*lines[:n], line, *lines[n + 1 :]]))
    report = verify_file(edited)
    assert report.divergence is not None and report.divergence.kind == "modified"

    # A line removed, and the file cut short.
    middle = events[len(events) // 2][0]
    edited.write_bytes(b"".join(lines[:middle] + lines[middle + 1 :]))
    assert not verify_file(edited).ok
    edited.write_bytes(b"".join(lines[:-3]))
    cut = verify_file(edited).divergence
    assert cut is not None and cut.kind == "truncated"

    # A line that is not JSON (blank lines are allowed), and a line after the end record.
    edited.write_bytes(b"".join([*lines[:middle], b"\n", b"{oops\n", *lines[middle:]]))
    garbled = verify_file(edited).divergence
    assert garbled is not None and garbled.kind == "modified"
    assert f"line {middle + 2} " in garbled.detail
    edited.write_bytes(b"".join([*lines, lines[middle]]))
    after_end = verify_file(edited).divergence
    assert after_end is not None and after_end.kind == "inserted"


def test_a_failed_export_leaves_no_file_behind(store: Store, tmp_path: Path) -> None:
    """An export that fails (a row that no longer decodes) left a file holding its header
    only, which verify then read as a log whose every event was deleted. Now the file
    appears only once whole; an earlier file of the same name is left as it was."""
    folder = tmp_path / "exports"
    folder.mkdir()
    out = folder / "export.jsonl"
    export_jsonl(store.ledger, out)
    whole = out.read_bytes()
    garbled = store.rows.rows(store.history.others[0])[-1]
    store.rows.set_state(garbled.position, b"\xff not json")
    for target in (out, folder / "again.jsonl"):
        with pytest.raises(ExportError, match=f"position {garbled.position} "):
            export_jsonl(store.ledger, target, workers=0)
    assert sorted(p.name for p in folder.iterdir()) == ["export.jsonl"]
    assert out.read_bytes() == whole


def test_a_partial_export_verifies_from_its_start(store: Store, tmp_path: Path) -> None:
    store.checkpoints.create()
    build_history(store.ledger, extra=0)
    last = store.checkpoints.create()
    rows = store.rows.rows(store.history.lifecycle)
    out = tmp_path / "part.jsonl"
    stats = export_jsonl(store.ledger, out, start=rows[8].position, stop=last.position)
    assert stats.first_position == rows[8].position
    report = verify_file(out, [last])
    assert report.ok, report.divergence
    assert report.checkpoints_checked >= 1


def test_an_exports_stop_is_the_last_position_it_covers(store: Store, tmp_path: Path) -> None:
    """With or without --to, the header's stop is the last position the file covers: a
    range asked beyond the log's end ends where the log did, so that a checkpoint made
    later is after the export, not missing from it."""
    last = store.ledger.recorder.max_notification_id() or 0
    beyond, whole = tmp_path / "beyond.jsonl", tmp_path / "whole.jsonl"
    export_jsonl(store.ledger, beyond, 0, last + 1000)
    export_jsonl(store.ledger, whole)
    for path in (beyond, whole):
        header = json.loads(path.read_bytes().split(b"\n", 1)[0])
        assert (header["start"], header["stop"]) == (0, last)
    build_history(store.ledger, extra=0)
    later = store.checkpoints.create()
    assert last < later.position < last + 1000
    for path in (beyond, whole):
        report = verify_file(path, [later])
        assert report.ok, report.divergence
        assert report.checkpoints_after == (later.position,)
    with pytest.raises(ValueError, match="the range is empty"):
        export_jsonl(store.ledger, tmp_path / "empty.jsonl", 20, 10)


def test_an_export_encoded_by_worker_processes_is_the_same_file(
    store: Store, tmp_path: Path
) -> None:
    store.checkpoints.create()
    build_history(store.ledger, extra=0)
    last = store.checkpoints.create()
    rows = store.rows.rows(store.history.lifecycle)

    def body(path: Path) -> list[bytes]:  # without the header (its exported_at differs)
        return path.read_bytes().splitlines()[1:]

    for start, stop in ((0, None), (rows[8].position, last.position)):
        serial, parallel = tmp_path / "serial.jsonl", tmp_path / "parallel.jsonl"
        one = export_jsonl(store.ledger, serial, start, stop, workers=0)
        two = export_jsonl(store.ledger, parallel, start, stop, workers=2)
        assert body(parallel) == body(serial)
        assert (two.events, two.head, two.checkpoints) == (one.events, one.head, one.checkpoints)
        assert verify_file(parallel, [last]).ok

    # A row that no longer decodes is named as the exporter in this process names it.
    row = rows[3]
    store.rows.set_state(row.position, b"{not json")
    errors = []
    for workers in (0, 2):
        with pytest.raises(ExportError) as caught:
            export_jsonl(store.ledger, tmp_path / "broken.jsonl", workers=workers)
        errors.append(str(caught.value))
    assert errors[0] == errors[1]
    assert f"position {row.position}" in errors[0]


# ---------------------------------------------------------------- the command line


def _cli(args: list[str], env: dict[str, str], data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.ledger.audit", *args],
        env={
            **os.environ,
            **env,
            "LEDGER_DATA_DIR": str(data),
            "LEDGER_REFERENCE_FILE": str(REFERENCE_FILE),
            "LEDGER_LOG_FORMAT": "json",
            "PYTHONPATH": f"{PROJECT_ROOT}:{PROJECT_ROOT / 'gen'}",
        },
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _events(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_the_command_line_checkpoints_exports_and_verifies(tmp_path: Path) -> None:
    with store_environment("sqlite", tmp_path) as store_env:
        data = tmp_path / "data"
        # The development key the command line generates (and the ledger would seal with).
        signing_key = load_signing_key(AuditSettings(data_dir=data))
        ledger = Ledger(reference(), env=store_env, sealer=Sealer(signing_key))
        history = build_history(ledger)
        ledger.close()
        made = _cli(["checkpoint"], store_env, data)
        assert made.returncode == 0, made.stdout + made.stderr
        public = data / "keys" / "ledger-signing.pub"
        assert public.exists()
        witness = tmp_path / "witness.jsonl"
        line = next(e for e in _events(made) if e["event"] == "audit.checkpoint")
        keys = ("position", "head", "events", "created_at", "key_id", "signature")
        witness.write_text(json.dumps({k: line[k] for k in keys}) + "\n")
        out = tmp_path / "export.jsonl"
        assert _cli(["export", "--out", str(out)], store_env, data).returncode == 0
        for source in (["--store"], ["--export", str(out)]):
            args = ["verify", *source, "--public-key", str(public), "--checkpoints", str(witness)]
            clean = _cli(args, store_env, data)
            assert clean.returncode == 0, clean.stdout + clean.stderr
            report = next(e for e in _events(clean) if e["event"] == "audit.verify.clean")
            assert report["checkpoints_checked"] >= 1
        # Ranges that hold nothing are usage errors, and no file is written.
        for bounds, says in (
            (["--from", "50", "--to", "20"], "--from 50 is after --to 20"),
            (["--from", "-5"], "a position is not negative: -5"),
            (["--from", "100000"], "nothing to export from position 100000"),
        ):
            empty = tmp_path / "empty.jsonl"
            refused = _cli(["export", "--out", str(empty), *bounds], store_env, data)
            assert refused.returncode == 2, (bounds, refused.stdout + refused.stderr)
            assert says in refused.stdout + refused.stderr
            assert not empty.exists()
        # A range that ends before the witness's checkpoint: clean, the checkpoint shown.
        ranged = tmp_path / "ranged.jsonl"
        to = str(line["position"] - 1)
        assert _cli(["export", "--out", str(ranged), "--to", to], store_env, data).returncode == 0
        args = ["verify", "--export", str(ranged), "--public-key", str(public)]
        clean = _cli([*args, "--checkpoints", str(witness)], store_env, data)
        assert clean.returncode == 0, clean.stdout + clean.stderr
        after = next(
            e for e in _events(clean) if e["event"] == "audit.verify.checkpoints_after_export"
        )
        assert (after["positions"], after["stop"]) == ([line["position"]], line["position"] - 1)
        assert "after this export: not checked" in after["detail"]

        surgery = Surgery("sqlite", store_env, "stored_events")
        rows = surgery.rows(history.lifecycle)
        surgery.delete(rows[2].position)
        broken = _cli(["verify", "--store", "--public-key", str(public)], store_env, data)
        assert broken.returncode == 1, broken.stdout + broken.stderr
        line = next(e for e in _events(broken) if e["event"] == "audit.verify.divergence")
        assert line["divergence_kind"] == "deleted"
        assert line["divergence_version"] == 3

        other = tmp_path / "other.pub"
        other.write_bytes(public_key_pem(public_key_bytes(Ed25519PrivateKey.generate())))
        for source in (["--store"], ["--export", str(out)]):
            wrong = _cli(["verify", *source, "--public-key", str(other)], store_env, data)
            assert wrong.returncode == 3, wrong.stdout + wrong.stderr
            line = next(e for e in _events(wrong) if e["event"] == "audit.verify.divergence")
            assert line["divergence_kind"] == "wrong_key"
        assert _cli(["verify", "--store"], store_env, data).returncode == 2
        missing = _cli(["verify", "--store", "--public-key", str(tmp_path / "no")], store_env, data)
        assert missing.returncode == 2
        assert (
            _cli(
                ["verify", "--export", str(public), "--public-key", str(public)], store_env, data
            ).returncode
            == 2
        )
        production = _cli(["checkpoint"], {**store_env, "LEDGER_ENVIRONMENT": "production"}, data)
        assert production.returncode == 2


def test_the_command_line_calls_itself_ledger_audit(tmp_path: Path) -> None:
    shown = _cli(["--help"], {}, tmp_path / "data")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: ledger-audit "), shown.stdout
    export = _cli(["export", "--help"], {}, tmp_path / "data")
    assert export.stdout.startswith("usage: ledger-audit export "), export.stdout


def test_postgres_is_reachable_or_skipped() -> None:
    # Keeps psycopg imported for the type checker when PostgreSQL tests are skipped.
    assert psycopg.__version__


def _escalated_twice(client: Client, count: int) -> list[str]:
    """The names of ``count`` incidents reported, each then escalated twice (reasons "crowd
    growing 0" and "crowd growing 1"): three events each."""
    names = []
    for _ in range(count):
        name = client.report().incident
        for step in range(2):
            client.stub.EscalateIncident(
                api.EscalateIncidentRequest(
                    request_id=rid(), name=name, reason=f"crowd growing {step}"
                ),
                metadata=client.md("kesbangpol"),
            )
        names.append(name)
    return names


def test_ledgerctl_says_a_checkpoints_divergence_at_its_position_from_the_start_of_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A divergence no one incident shows (an event gone under the first checkpoint): it
    said "(incident -, version 0, position P)" and "after the checkpoint at position 0",
    and its --json "incident": "" and "version": 0 where ledger-audit says null."""
    with (
        store_environment("sqlite", tmp_path) as store_env,
        running_ledger(settings_for(tmp_path, store_env)) as client,
    ):
        names = _escalated_twice(client, 2)
        checkpoint = client.server.checkpoints.create()
        table = client.server.ledger.recorder.events_table_name  # type: ignore[attr-defined]
        surgery = Surgery("sqlite", store_env, table)
        surgery.delete(surgery.rows(UUID(names[0].removeprefix("incidents/")))[-1].position)
        ctl = Ctl(client, capsys)
        code, out, err = ctl.run("inspektorat", "audit", "verify")
        said = " ".join(out.split())
        assert code == 1, (out, err)
        assert (
            f"an event was deleted (at position {checkpoint.position}): 1 event(s) up to "
            f"position {checkpoint.position} (from the start of the log) are missing"
        ) in said, said
        assert "incident -" not in said and "version 0" not in said, said
        code, out, err = ctl.run("inspektorat", "--json", "audit", "verify")
        assert code == 1, (out, err)
        divergence = json.loads(out)["divergence"]
        public = client.server.checkpoints.public_key
        audit = verify_store(client.server.ledger, public).to_log()["divergence"]
        for said_by in (divergence, audit):
            assert (
                said_by["kind"],
                said_by["incident"],
                said_by["version"],
                said_by["position"],
            ) == ("deleted", None, None, checkpoint.position), said_by
        assert divergence["detail"] == audit["detail"]


def test_ledgerctl_keeps_a_witness_file_the_verifiers_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`audit checkpoints --witness FILE` appends the checkpoints FILE does not hold yet, in
    the verifiers' form: its --json (a JSON array, the signature in hex, "chain_head",
    "create_time") said it was to keep with a witness, and no verifier read it. An export
    verifies against the file, which shows the newest events and checkpoint deleted from
    the store; a file that holds another checkpoint at a position is left as it was."""
    witness = tmp_path / "witness.jsonl"
    with (
        store_environment("sqlite", tmp_path) as store_env,
        running_ledger(settings_for(tmp_path, store_env)) as client,
    ):
        ctl = Ctl(client, capsys)
        keep = ("inspektorat", "audit", "checkpoints", "--witness", str(witness))
        _escalated_twice(client, 2)
        first = client.server.checkpoints.create()
        assert "appended 1 checkpoint to " in ctl.ok(*keep)
        names = _escalated_twice(client, 2)
        second = client.server.checkpoints.create()
        said = " ".join(ctl.ok(*keep).split())
        assert f"appended 1 checkpoint to {witness} (1 held already)" in said, said
        assert ctl.json(*keep) == {"path": str(witness), "appended": [], "held": 2, "differ": []}
        # Byte for byte what the ledger publishes (NATS, the export's lines).
        assert witness.read_bytes() == first.to_bytes() + b"\n" + second.to_bytes() + b"\n"
        public = client.server.checkpoints.public_key
        clean = tmp_path / "clean.jsonl"
        export_jsonl(client.server.ledger, clean)
        kept = read_checkpoints_file(witness)
        report = verify_export(clean, public, kept)
        assert report.ok and report.checkpoints_checked == 2, report
        node = shutil.which("node")
        if node is not None:  # the Node verifier reads it too
            key_file = tmp_path / "ledger.pub"
            key_file.write_bytes(public_key_pem(public))
            command = [node, str(NODE_VERIFIER), "--public-key", str(key_file)]
            done = subprocess.run(
                [*command, "--checkpoints", str(witness), str(clean)],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, (done.stdout, done.stderr)
            assert json.loads(done.stdout)["checkpoints_checked"] == 2
        # The newest events and the checkpoint over them deleted: alone, the export verifies.
        table = client.server.ledger.recorder.events_table_name  # type: ignore[attr-defined]
        surgery = Surgery("sqlite", store_env, table)
        for name in names:
            for row in surgery.rows(UUID(name.removeprefix("incidents/"))):
                surgery.delete(row.position)
        Surgery("sqlite", store_env, "ledger_checkpoints")._run(
            "DELETE FROM {t} WHERE position = ?", (second.position,)
        )
        cut = tmp_path / "cut.jsonl"
        export_jsonl(client.server.ledger, cut)
        assert verify_export(cut, public).ok
        report = verify_export(cut, public, kept)
        assert report.divergence is not None, report
        assert (report.divergence.kind, report.divergence.position) == (
            "truncated",
            second.position,
        )
        # A file holding another checkpoint at a position: said, and nothing written.
        changed = witness.read_bytes().replace(first.head.encode(), b"0" * 64)
        witness.write_bytes(changed)
        code, out, err = ctl.run(*keep)
        assert code == 7, (out, err)
        assert f"checkpoint at position {first.position} differs" in " ".join(err.split()), err
        assert witness.read_bytes() == changed
        witness.write_text("not json\n")
        code, out, err = ctl.run(*keep)
        assert code == 2 and "line 1: not a checkpoint" in " ".join(err.split()), (out, err)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_the_api_answers_data_loss_for_a_forged_deleted_or_undecodable_event(
    kind: str, tmp_path: Path
) -> None:
    """Over gRPC: DATA_LOSS / HASH_CHAIN_BROKEN naming the incident, never INTERNAL."""
    if kind == "postgres":
        require_postgres()
    with (
        store_environment(kind, tmp_path) as store_env,
        running_ledger(settings_for(tmp_path, store_env)) as client,
    ):
        names = _escalated_twice(client, 4)
        incidents = [UUID(n.removeprefix("incidents/")) for n in names[:3]]
        table = client.server.ledger.recorder.events_table_name  # type: ignore[attr-defined]
        surgery = Surgery(kind, store_env, table)
        forged, deleted, garbled = (surgery.rows(i) for i in incidents)
        audit_stub = audit_grpc.AuditServiceStub(client.channel)

        def replay(name: str) -> list[str]:
            """One incident's replay (ledgerctl audit export --incident)."""
            request = audit_api.StreamEventsRequest(incident=name)
            responses = audit_stub.StreamEvents(request, metadata=client.md("inspektorat"))
            return [r.event.type for r in responses]

        surgery.set_state(forged[-1].position, forged[-1].state.replace(b"growing 1", b"calm 1"))
        surgery.delete(deleted[1].position)
        surgery.set_state(garbled[-1].position, b"\xff not json")
        for incident, check in zip(incidents, ("seal", "decode", "decode"), strict=True):
            name = _name(incident)
            for call in (
                lambda n=name: client.stub.GetIncident(
                    api.GetIncidentRequest(name=n), metadata=client.md("polres")
                ),
                lambda n=name: client.stub.ListIncidentEvents(
                    api.ListIncidentEventsRequest(parent=n), metadata=client.md("polres")
                ),
                # Before, a changed event was streamed as the store held it.
                lambda n=name: replay(n),
            ):
                with pytest.raises(grpc.RpcError) as caught:
                    call()
                assert caught.value.code() is grpc.StatusCode.DATA_LOSS, caught.value.details()
                info = error_info(caught.value)  # type: ignore[arg-type]
                assert info is not None and info.reason == "HASH_CHAIN_BROKEN"
                assert info.metadata["incident"] == name
                assert info.metadata["check"] == check
                words = {  # what broke, in words (before: the library's error class only)
                    incidents[1]: "a version is missing from its sequence",
                    incidents[2]: "bytes no longer decode",
                }.get(incident)
                assert words is None or words in (caught.value.details() or ""), words
        # An intact incident's replay reads its own events only: another's garbled row (before,
        # DATA_LOSS for every incident's replay) is not in its way.
        assert replay(names[3]) == ["Reported", "Escalated", "Escalated"]
        with pytest.raises(grpc.RpcError) as caught:
            replay(_name(UUID(int=7)))
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_list_flags_an_incident_that_fails_its_chain_and_shows_every_other(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One changed incident no longer hides the board from every agency: ListIncidents sends
    it in its place with only its name and the failed check (nothing of the changed
    history), the others as they are; ledgerctl's list and board name it apart."""
    if kind == "postgres":
        require_postgres()
    with (
        store_environment(kind, tmp_path) as store_env,
        running_ledger(settings_for(tmp_path, store_env)) as client,
    ):
        names = _escalated_twice(client, 5)
        listed = client.stub.ListIncidents(
            api.ListIncidentsRequest(page_size=10), metadata=client.md("polres")
        ).incidents
        assert len(listed) == 5  # the read side has folded every report
        table = client.server.ledger.recorder.events_table_name  # type: ignore[attr-defined]
        surgery = Surgery(kind, store_env, table)
        middle, last, garbled, intact, deleted = (
            surgery.rows(UUID(n.removeprefix("incidents/"))) for n in names
        )
        # Version 2's reason changed: version 3's link to it no longer matches.
        surgery.set_state(middle[1].position, middle[1].state.replace(b"growing 0", b"calm 0"))
        surgery.set_state(last[-1].position, last[-1].state.replace(b"growing 1", b"calm 1"))
        surgery.set_state(garbled[-1].position, b"\xff not json")
        for row in deleted:  # every event of the incident: before, the list was NOT_FOUND
            surgery.delete(row.position)
        names = [*names[:3], names[4], names[3]]  # the intact incident last, as below
        expected = {
            names[0]: ("chain", 3),
            names[1]: ("seal", 3),
            names[2]: ("decode", 0),
            names[3]: ("decode", 0),
        }

        listed = client.stub.ListIncidents(
            api.ListIncidentsRequest(page_size=10), metadata=client.md("polres")
        ).incidents
        assert sorted(i.name for i in listed) == sorted(names)
        for incident in listed:
            if incident.name == names[4]:
                assert not incident.HasField("chain_failure")
                assert (incident.version, incident.title) == (
                    len(intact),
                    "Planned mass gathering at the town square",
                )
                continue
            failure = incident.chain_failure
            assert (failure.check, failure.version) == expected[incident.name], failure
            assert incident.name.removeprefix("incidents/") in failure.message
            # Nothing of the changed history: every other field is empty.
            shown = {field.name for field, _value in incident.ListFields()}
            assert shown == {"name", "chain_failure"}, shown
            with pytest.raises(grpc.RpcError) as caught:
                client.stub.GetIncident(
                    api.GetIncidentRequest(name=incident.name), metadata=client.md("polres")
                )
            gone = incident.name == names[3]  # the store no longer holds any of it
            assert caught.value.code() is (
                grpc.StatusCode.NOT_FOUND if gone else grpc.StatusCode.DATA_LOSS
            )
        assert "recorded events are gone" in next(
            i.chain_failure.message for i in listed if i.name == names[3]
        )

        ctl = Ctl(client, capsys)
        out = ctl.ok("polres", "list")
        assert "4 incidents cannot be shown" in out, out
        assert out.count("fails its hash chain at version 3") == 2, out
        assert names[4].removeprefix("incidents/")[:8] in out, out
        board = ctl.json("polres", "board")
        assert sorted(i["name"] for i in board["chain_failures"]) == sorted(names[:4])
        assert [i["name"] for i in board["incidents"]] == [names[4]]
        # An id's first characters are found again: the list behind them answers.
        assert (
            ctl.json("polres", "show", names[4].removeprefix("incidents/")[:8])["incident"]["name"]
            == (names[4])
        )


def test_the_read_side_and_the_relay_pass_over_events_they_cannot_read(store: Store) -> None:
    """A row garbled before the projections or the relay read it stopped them there for
    good: every later query of the board failed (INTERNAL), every later event of every
    incident went unpublished. Both now leave out what they cannot read, log it, and go on;
    the relay also leaves out the events after a broken link, which it cannot fold."""
    garbled = store.rows.rows(store.history.others[0])[-1]
    store.rows.set_state(garbled.position, b"\xff not json")
    changed = store.rows.rows(store.history.lifecycle)[5]
    store.rows.set_state(changed.position, changed.state.replace(b"Rapat", b"Rapet"))
    after_link = [r.position for r in store.rows.rows(store.history.lifecycle)[6:]]
    everyone = {store.history.lifecycle, *store.history.others}
    last = store.ledger.recorder.max_notification_id()

    projections = Projections(store.ledger, store.env, reference())
    with capture_logs() as logs:
        assert projections.catch_up() == last
    listed = projections.list_incidents(BoardFilter.parse("", reference()), 0, 1000)
    assert {incident for _, incident in listed} == everyone
    skipped = [e for e in logs if e["event"] == "projections.event_undecodable"]
    assert [e["position"] for e in skipped] == [garbled.position], skipped

    notifications = store.ledger.recorder.select_notifications(1, 10_000, topics=_topics())
    encoder = EventEncoder(store.ledger, "ledger.events")
    with capture_logs() as logs:
        published = [e.position for e in encoder.encode_batch(notifications)]
    left_out = sorted({n.id for n in notifications} - set(published))
    assert left_out == sorted([garbled.position, *after_link])
    assert published == sorted(published)  # the rest in the log's order
    unpublishable = [e for e in logs if e["event"] == "relay.event_unpublishable"]
    assert [e["position"] for e in unpublishable] == left_out

    # The replay stops at the row it cannot read, names it, and reads on past it.
    with pytest.raises(DataLoss) as caught:
        list(store.ledger.history())
    assert caught.value.metadata["position"] == str(garbled.position)
    assert caught.value.metadata["incident"] == _name(store.history.others[0])
    assert f"from after_position {garbled.position}" in caught.value.message
    after = [s.position for s in store.ledger.history(after=garbled.position)]
    assert after and min(after) > garbled.position


def test_the_read_side_passes_over_only_what_the_library_cannot_read_either(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row the fast decoder fails on but the library's own mapper reads is the decoder's
    fault, not a change in the store: raised, never left out in silence."""

    def broken(self: FastDecoder, row: RawRow) -> None:
        raise KeyError("a field the decoder expected")

    monkeypatch.setattr(FastDecoder, "decode", broken)
    projections = Projections(store.ledger, store.env, reference())
    with pytest.raises(KeyError, match="a field the decoder expected"):
        projections.catch_up()


def _stripped(state: bytes, field: str) -> bytes:
    """The stored state less one field: still JSON, no longer the event."""
    values = json.loads(state)
    assert field in values, sorted(values)
    del values[field]
    return json.dumps(values).encode()


def test_an_event_stripped_of_a_field_is_data_loss_and_passed_over_like_garbled_bytes(
    store: Store,
) -> None:
    """A stored event whose JSON still decodes but lacks a field its fold reads failed the
    relay's session at it (AttributeError) and, stripped from a report, stopped the read
    side at the incident's next event (an event for an incident it never made): every
    agency's fan-out and board, for good. Now it is DATA_LOSS (check "decode") like any
    other change: the incident's reads refuse it, the relay and the read side leave out
    that incident's events from there and go on with everyone else's."""
    report = store.rows.rows(store.history.others[0])[0]
    store.rows.set_state(report.position, _stripped(report.state, "title"))
    others = store.rows.rows(store.history.others[0])[1:]
    assert others, "the stripped report's incident has later events"
    everyone = {store.history.lifecycle, *store.history.others}

    with pytest.raises(DataLoss) as caught:
        store.ledger.load_incident(store.history.others[0])
    assert caught.value.metadata["check"] == "decode"
    assert caught.value.metadata["version"] == "1"
    assert "lacks title" in caught.value.message

    notifications = store.ledger.recorder.select_notifications(1, 10_000, topics=_topics())
    encoder = EventEncoder(store.ledger, "ledger.events")
    with capture_logs() as logs:
        published = [e.position for e in encoder.encode_batch(notifications)]
    left_out = sorted({n.id for n in notifications} - set(published))
    assert left_out == sorted([report.position, *(r.position for r in others)])
    unpublishable = [e for e in logs if e["event"] == "relay.event_unpublishable"]
    assert [e["position"] for e in unpublishable] == left_out

    projections = Projections(store.ledger, store.env, reference())
    with capture_logs() as logs:
        assert projections.catch_up() == store.ledger.recorder.max_notification_id()
    listed = projections.list_incidents(BoardFilter.parse("", reference()), 0, 1000)
    assert {incident for _, incident in listed} == everyone - {store.history.others[0]}
    skipped = [e["position"] for e in logs if e["event"] == "projections.event_undecodable"]
    orphaned = [e["position"] for e in logs if e["event"] == "projections.event_orphaned"]
    assert skipped == [report.position], logs
    assert orphaned == [r.position for r in others], logs

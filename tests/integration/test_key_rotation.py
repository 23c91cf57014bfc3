"""Rotating the ledger's signing key through the real start-up (docs/operations.md): a ledger
started with a new key, the old one listed as retired, rotates and signs the whole log with
the new key; the audit verifies the history with both public keys, names the old key's
checkpoints with the new key alone, and refuses whatever the retired key signs afterwards.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from eventsourcing.utils import get_topic
from grpc_health.v1 import health_pb2, health_pb2_grpc
from structlog.testing import capture_logs

from incidentledger.v1 import audit_service_pb2 as audit
from incidentledger.v1 import audit_service_pb2_grpc as audit_grpc
from incidentledger.v1 import ledger_service_pb2 as api
from services.common.config import PROJECT_ROOT, ConfigError, LedgerSettings
from services.common.grpc_errors import error_info
from services.common.sql import open_database
from services.ledger.application import Ledger
from services.ledger.audit import (
    CheckpointError,
    Checkpoints,
    export_jsonl,
    verify_export,
    verify_store,
)
from services.ledger.audit.checkpoints import ChainState, Checkpoint, extend_chain, signing_payload
from services.ledger.audit.encoding import RawDecoder
from services.ledger.audit.keys import load_public_key, load_signing_key
from services.ledger.domain.commands import ReportIncident
from services.ledger.domain.rotations import KeyRotation
from services.ledger.seals import Sealer
from services.ledger.server import build
from tests.fanout_support import wait_until
from tests.support import (
    REFERENCE_FILE,
    Client,
    reference,
    rid,
    running_ledger,
    settings_for,
    store_environment,
)
from tests.unit.incident_builders import envelope_for
from tests.unit.test_audit_encoding import LOCATION

AUDITOR = "inspektorat"
STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@dataclass
class Keys:
    """Two key pairs made as an operator makes them, and the file of retired public keys."""

    old: Path
    new: Path
    retired: Path

    def public(self, path: Path) -> bytes:
        return load_public_key(path.with_suffix(".pub"))

    def private(self, path: Path) -> Ed25519PrivateKey:
        return load_signing_key(LedgerSettings(signing_key_file=path).audit())


def _generate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.ledger", "generate-signing-key", "--out", str(path)],
        env={**os.environ, "PYTHONPATH": f"{PROJECT_ROOT}:{PROJECT_ROOT / 'gen'}"},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("keys")
    for name in ("old", "new"):
        made = _generate(folder / f"{name}.key")
        assert made.returncode == 0, made.stdout + made.stderr
    retired = folder / "retired.pub"
    retired.write_bytes((folder / "old.pub").read_bytes())
    return Keys(folder / "old.key", folder / "new.key", retired)


def test_generating_a_key_never_overwrites_one(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "ledger-signing.key"
    first = _generate(path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_public_key(path.with_suffix(".pub"))
    before = path.read_bytes(), path.with_suffix(".pub").read_bytes()
    again = _generate(path)
    assert again.returncode == 2, again.stdout + again.stderr
    assert "ledger.signing_key_exists" in again.stdout + again.stderr
    assert (path.read_bytes(), path.with_suffix(".pub").read_bytes()) == before


def _escalate(client: Client, name: str) -> None:
    client.stub.EscalateIncident(
        api.EscalateIncidentRequest(request_id=rid(), name=name, reason="crowd growing"),
        metadata=client.md("kesbangpol"),
    )


@dataclass
class Rotated:
    env: dict[str, str]
    tmp_path: Path
    keys: Keys
    old_checkpoint: int  # the old key's checkpoint
    rotation: int  # the new key's first checkpoint
    first: str  # an incident recorded under the old key
    second: str = ""  # and one under it after its checkpoint, not changed since

    def settings(self, key: Path, retired: Path | None = None) -> LedgerSettings:
        return settings_for(
            self.tmp_path,
            self.env,
            signing_key_file=key,
            retired_signing_keys_file=retired,
            checkpoint_seconds=0.0,
        )

    def ledger(self) -> Ledger:
        sealer = Sealer(self.keys.private(self.keys.new), (self.keys.public(self.keys.old),))
        return Ledger(reference(), env=self.env, sealer=sealer)


@pytest.fixture(params=["sqlite", "postgres"])
def rotated(request: pytest.FixtureRequest, tmp_path: Path, keys: Keys) -> Iterator[Rotated]:
    """A ledger that recorded and checkpointed with the old key, recorded more after its
    checkpoint, then was started with the new key and the old one retired."""
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
    with store_environment(request.param, tmp_path) as env:
        state = Rotated(env, tmp_path, keys, 0, 0, "")
        with running_ledger(state.settings(keys.old)) as client:
            state.first = client.report().incident
            _escalate(client, state.first)
            state.old_checkpoint = client.server.checkpoints.create().position
            second = client.report().incident  # sealed with the old key, no checkpoint
            _escalate(client, second)
            state.second = second
        with running_ledger(state.settings(keys.new, keys.retired)) as client:
            latest = client.server.checkpoints.latest()
            assert latest is not None
            assert latest.key_id == Sealer(keys.private(keys.new)).key_id
            assert latest.position > state.old_checkpoint  # it covers the old key's seals
            state.rotation = latest.position
            # At the newest event the old key sealed: the log holds no record of the rotation.
            assert _rotation_records(client.server.ledger) == []
            # An incident last sealed with the old key loads and takes a new event.
            _escalate(client, state.first)
            client.report()
            assert client.server.checkpoints.create().position > state.rotation
            # The ledger's own verification checks the old key's checkpoint with its key.
            stub = audit_grpc.AuditServiceStub(client.channel)
            report = stub.VerifyLedger(audit.VerifyLedgerRequest(), metadata=client.md(AUDITOR))
            assert report.ok, report
            assert report.checkpoints_checked == 3
        yield state


def test_a_rotated_ledger_verifies_with_both_keys_and_not_with_the_new_one_alone(
    rotated: Rotated,
) -> None:
    keys = rotated.keys
    old, new = keys.public(keys.old), keys.public(keys.new)
    ledger = rotated.ledger()
    try:
        export = rotated.tmp_path / "export.jsonl"
        export_jsonl(ledger, export)
        for report in (
            verify_store(ledger, [new, old]),
            verify_export(export, [new, old]),
        ):
            assert report.ok, report.divergence
            used = {use.key_id: use for use in report.keys}
            old_use = used[Sealer(keys.private(keys.old)).key_id]
            new_use = used[Sealer(keys.private(keys.new)).key_id]
            assert (old_use.checkpoints, old_use.last_checkpoint) == (1, rotated.old_checkpoint)
            assert (new_use.first_checkpoint, new_use.checkpoints) == (rotated.rotation, 2)
            assert old_use.seals == 0  # every old seal lies under the new key's checkpoint
        for report in (verify_store(ledger, new), verify_export(export, new)):
            assert report.divergence is not None
            assert report.divergence.kind == "bad_signature"
            assert report.divergence.position == rotated.old_checkpoint
    finally:
        ledger.close()


def test_the_command_line_verifies_with_several_public_keys(rotated: Rotated) -> None:
    if rotated.env["PERSISTENCE_MODULE"] != "eventsourcing.sqlite":
        pytest.skip("the command line reads the store as the functions above do")
    keys = rotated.keys
    export = rotated.tmp_path / "cli.jsonl"
    both = ["--public-key", str(keys.new.with_suffix(".pub")), "--public-key", str(keys.retired)]
    new_only = ["--public-key", str(keys.new.with_suffix(".pub"))]
    assert _audit(["export", "--out", str(export)], rotated).returncode == 0
    for source in (["--store"], ["--export", str(export)]):
        clean = _audit(["verify", *source, *both], rotated)
        assert clean.returncode == 0, clean.stdout + clean.stderr
        line = next(e for e in _events(clean) if e["event"] == "audit.verify.clean")
        assert sorted(use["checkpoints"] for use in line["keys"]) == [1, 2]
        found = _audit(["verify", *source, *new_only], rotated)
        assert found.returncode == 1, found.stdout + found.stderr
        line = next(e for e in _events(found) if e["event"] == "audit.verify.divergence")
        assert line["divergence_kind"] == "bad_signature"


def _open_sockets() -> int:
    """This process's open TCP connections and SQLite files: what a ledger left open."""
    me = psutil.Process()
    return len(me.net_connections(kind="tcp")) + sum(
        1 for f in me.open_files() if f.path.endswith(".sqlite")
    )


def test_the_retired_key_and_an_unlisted_key_are_refused_at_start(rotated: Rotated) -> None:
    keys = rotated.keys
    before = _open_sockets()
    with pytest.raises(ConfigError, match="retired"):
        build(rotated.settings(keys.old, keys.retired))
    with pytest.raises(ConfigError, match="retired"):
        build(rotated.settings(keys.old))
    stranger = rotated.tmp_path / "stranger.key"
    assert _generate(stranger).returncode == 0
    with pytest.raises(ConfigError, match="LEDGER_RETIRED_SIGNING_KEYS_FILE"):
        build(rotated.settings(stranger, keys.retired))
    # A refused start closes what it opened: in-process, each refusal kept 10-15 connections
    # to PostgreSQL, and the suite's later tests found the server out of them.
    assert _open_sockets() == before


def test_a_replica_left_running_with_the_retired_key_is_refused(rotated: Rotated) -> None:
    keys = rotated.keys
    # It records a new incident, sealed with the old key, after the rotation.
    stale = Ledger(reference(), env=rotated.env, sealer=Sealer(keys.private(keys.old)))
    try:
        stale.execute(envelope_for("kesbangpol"), _report())
        with pytest.raises(CheckpointError, match="retired"):
            Checkpoints(stale.recorder, rotated.env, keys.private(keys.old)).create()
    finally:
        stale.close()
    ledger = rotated.ledger()
    checkpoints = Checkpoints(
        ledger.recorder, rotated.env, keys.private(keys.new), retired=(keys.public(keys.old),)
    )
    try:
        with pytest.raises(CheckpointError):  # the new key never signs over its seal
            checkpoints.create()
        report = verify_store(ledger, [keys.public(keys.new), keys.public(keys.old)])
        assert report.divergence is not None
        assert report.divergence.kind == "modified"
        assert "replaced" in report.divergence.detail
    finally:
        checkpoints.close()
        ledger.close()
    with pytest.raises(ConfigError, match="still runs with the retired key"):
        build(rotated.settings(keys.new, keys.retired))


def test_what_a_replica_on_the_retired_key_records_while_the_new_one_runs_is_refused(
    rotated: Rotated,
) -> None:
    keys = rotated.keys
    with running_ledger(rotated.settings(keys.new, keys.retired)) as client:
        stale = Ledger(reference(), env=rotated.env, sealer=Sealer(keys.private(keys.old)))
        try:
            late = stale.execute(envelope_for("kesbangpol"), _report()).incident_id
        finally:
            stale.close()
        with pytest.raises(grpc.RpcError) as refused:
            client.stub.GetIncident(
                api.GetIncidentRequest(name=f"incidents/{late}"), metadata=client.md("kesbangpol")
            )
        assert refused.value.code() == grpc.StatusCode.DATA_LOSS
        assert "retired at position" in str(refused.value.details())
        # What the old key sealed before the rotation still loads.
        client.stub.GetIncident(
            api.GetIncidentRequest(name=rotated.second), metadata=client.md("kesbangpol")
        )


def _report() -> ReportIncident:
    return ReportIncident(
        title="Massa berkumpul",
        description="",
        category="crowd_gathering",
        severity="low",
        location=dict(LOCATION),
    )


def _rotation_records(ledger: Ledger) -> list[int]:
    """The positions of the log's records of rotations (KeyRotation)."""
    topic = get_topic(KeyRotation.Recorded)
    return [n.id for n in ledger.recorder.select_notifications(0, 100, topics=[topic])]


def _rotate_as_before(env: dict[str, str], keys: Keys, position: int) -> None:
    """What a rotation with nothing new to sign left before it recorded itself in the log:
    the old key recorded as retired at ``position`` (the newest event), its checkpoint still
    the latest, no checkpoint of the new key."""
    db = open_database(env)
    try:
        with db.transaction() as cur:
            cur.execute(
                db.q(
                    "INSERT INTO ledger_retired_keys (key_id, retired_at, successor, position) "
                    "VALUES (?, ?, ?, ?)"
                ),
                (
                    Sealer(keys.private(keys.old)).key_id,
                    datetime.now(UTC).isoformat(timespec="microseconds"),
                    Sealer(keys.private(keys.new)).key_id,
                    position,
                ),
            )
    finally:
        db.close()


def _seal_late_with_the_old_key(env: dict[str, str], keys: Keys) -> str:
    """An incident recorded with the old key after the rotation, straight into the store
    (a leaked key with write access to the database, or a replica left on the old key where
    the commit's own check does not run): its name."""
    stale = Ledger(reference(), env=env, sealer=Sealer(keys.private(keys.old)))
    try:
        return f"incidents/{stale.execute(envelope_for('kesbangpol'), _report()).incident_id}"
    finally:
        stale.close()


def _verify_export_cli(state: Rotated, name: str) -> subprocess.CompletedProcess[str]:
    """`ledger-audit export` then `ledger-audit verify --export` with both public keys."""
    export = state.tmp_path / name
    made = _audit(["export", "--out", str(export)], state)
    assert made.returncode == 0, made.stdout + made.stderr
    keys = state.keys
    both = ["--public-key", str(keys.new.with_suffix(".pub")), "--public-key", str(keys.retired)]
    return _audit(["verify", "--export", str(export), *both], state)


def _export_refuses_a_late_old_key_seal(
    env: dict[str, str], state: Rotated
) -> tuple[str, dict[str, Any]]:
    """An incident sealed with the old key after the rotation, written straight into the
    store (:func:`_seal_late_with_the_old_key`), then `verify --export` on a fresh export:
    refused, *modified*, naming it. Its name and the divergence line."""
    late = _seal_late_with_the_old_key(env, state.keys)
    found = _verify_export_cli(state, "late.jsonl")
    assert found.returncode == 1, found.stdout + found.stderr
    line = next(e for e in _events(found) if e["event"] == "audit.verify.divergence")
    assert (line["divergence_kind"], line["divergence_incident"]) == ("modified", late), line
    return late, line


@pytest.mark.parametrize("store", STORES)
def test_a_rotation_with_nothing_new_signs_the_new_keys_first_checkpoint_at_once(
    store: str, tmp_path: Path, keys: Keys
) -> None:
    """docs/hash-chain.md, section 6: with nothing recorded since the old key's checkpoint,
    the rotation records itself in the log and the new key signs its first checkpoint at
    that record's position (the same count and head); an event the old key seals after it,
    written straight into the store, is then refused by `verify --export` on a fresh export
    too, not only by the store's verification."""
    with store_environment(store, tmp_path) as env:
        state = Rotated(env, tmp_path, keys, 0, 0, "")
        with running_ledger(state.settings(keys.old)) as client:
            state.first = client.report().incident
            old = client.server.checkpoints.create()
            state.old_checkpoint = old.position
        new_id = Sealer(keys.private(keys.new)).key_id
        with running_ledger(state.settings(keys.new, keys.retired)) as client:
            latest = client.server.checkpoints.latest()
            assert latest is not None and latest.key_id == new_id
            assert latest.position > state.old_checkpoint
            assert (latest.events, latest.head) == (old.events, old.head)
            assert _rotation_records(client.server.ledger) == [latest.position]
            state.rotation = latest.position
        # A restart finds the rotation done: no second record, no second checkpoint for it.
        with running_ledger(state.settings(keys.new, keys.retired)) as client:
            assert _rotation_records(client.server.ledger) == [state.rotation]
            assert [c.position for c in client.server.checkpoints.iterate()] == [
                state.old_checkpoint,
                state.rotation,
            ]
        with pytest.raises(ConfigError, match="retired"):
            build(state.settings(keys.old))
        clean = _verify_export_cli(state, "clean.jsonl")
        assert clean.returncode == 0, clean.stdout + clean.stderr

        late, line = _export_refuses_a_late_old_key_seal(env, state)
        assert f"which the checkpoint at position {state.rotation}" in line["divergence_detail"]
        ledger = state.ledger()
        try:
            report = verify_store(ledger, [keys.public(keys.new), keys.public(keys.old)])
            assert report.divergence is not None and report.divergence.incident == late
            assert report.divergence.kind == "modified"
        finally:
            ledger.close()


def test_replicas_rotating_at_once_record_one_rotation(tmp_path: Path, keys: Keys) -> None:
    """Two starts on the new key racing over a store with nothing new since the old key's
    checkpoint: one record of the rotation, one checkpoint at its position."""
    with store_environment("sqlite", tmp_path) as env:
        state = Rotated(env, tmp_path, keys, 0, 0, "")
        with running_ledger(state.settings(keys.old)) as client:
            client.report()
            state.old_checkpoint = client.server.checkpoints.create().position
        ledgers = [state.ledger() for _ in range(2)]
        probes = [
            Checkpoints(
                ledger.recorder, env, keys.private(keys.new), retired=(keys.public(keys.old),)
            )
            for ledger in ledgers
        ]
        try:
            ready = threading.Barrier(2)
            made: list[Checkpoint | None] = [None, None]

            def rotate(n: int) -> None:
                ready.wait(timeout=60)
                made[n] = probes[n].rotate_key(ledgers[n].record_key_rotation)

            threads = [threading.Thread(target=rotate, args=(n,)) for n in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
            # Both made the same, or (one start scheduled only after the other was done
            # rotating, as on a busy machine) the later one found nothing left to rotate.
            (checkpoint, *others) = [c for c in made if c is not None]
            assert all(other == checkpoint for other in others)
            assert _rotation_records(ledgers[0]) == [checkpoint.position]
            assert [c.position for c in probes[0].iterate()] == [
                state.old_checkpoint,
                checkpoint.position,
            ]
        finally:
            for probe in probes:
                probe.close()
            for ledger in ledgers:
                ledger.close()


@pytest.mark.parametrize("store", STORES)
def test_a_store_rotated_before_rotations_were_recorded_gets_the_checkpoint_at_its_next_start(
    store: str, tmp_path: Path, keys: Keys
) -> None:
    """A store an earlier version rotated with nothing new to sign (the old key's checkpoint
    still the latest, the rotation in ledger_retired_keys only) verifies as before; its next
    start on the new key records the rotation and signs the new key's first checkpoint, which
    closes the gap for the exports made from then on."""
    with store_environment(store, tmp_path) as env:
        state = Rotated(env, tmp_path, keys, 0, 0, "")
        with running_ledger(state.settings(keys.old)) as client:
            state.first = client.report().incident
            state.old_checkpoint = client.server.checkpoints.create().position
        _rotate_as_before(env, keys, state.old_checkpoint)
        before = _verify_export_cli(state, "before.jsonl")
        assert before.returncode == 0, before.stdout + before.stderr
        with running_ledger(state.settings(keys.new, keys.retired)) as client:
            latest = client.server.checkpoints.latest()
            assert latest is not None and latest.key_id == Sealer(keys.private(keys.new)).key_id
            assert _rotation_records(client.server.ledger) == [latest.position]
            assert latest.position > state.old_checkpoint
            state.rotation = latest.position
        after = _verify_export_cli(state, "after.jsonl")
        assert after.returncode == 0, after.stdout + after.stderr
        _export_refuses_a_late_old_key_seal(env, state)


def test_a_second_rotation_with_nothing_new_retires_the_key_at_its_own_checkpoint(
    tmp_path: Path, keys: Keys
) -> None:
    """A key whose only checkpoint stands at the record of the rotation that brought it in
    is retired at that checkpoint's position, not at the newest incident event before it:
    its checkpoint stays valid, and the history verifies with the three keys."""
    third = Ed25519PrivateKey.generate()
    old, new = keys.public(keys.old), keys.public(keys.new)
    with store_environment("sqlite", tmp_path) as env:
        state = Rotated(env, tmp_path, keys, 0, 0, "")
        with running_ledger(state.settings(keys.old)) as client:
            client.report()
            state.old_checkpoint = client.server.checkpoints.create().position
        with running_ledger(state.settings(keys.new, keys.retired)) as client:
            first = client.server.checkpoints.latest()
            assert first is not None and first.position > state.old_checkpoint
        ledger = Ledger(reference(), env=env, sealer=Sealer(third, (new, old)))
        checkpoints = Checkpoints(ledger.recorder, env, third, retired=(new, old))
        try:
            second = checkpoints.rotate_key(ledger.record_key_rotation)
            assert second is not None and second.key_id == Sealer(third).key_id
            assert second.position > first.position
            assert _rotation_records(ledger) == [first.position, second.position]
            retired = checkpoints.retirement(Sealer(keys.private(keys.new)).key_id)
            assert retired is not None and retired[2] == first.position
            export = tmp_path / "twice.jsonl"
            export_jsonl(ledger, export)
            given = [Sealer(third).public_key, new, old]
            for report in (verify_store(ledger, given), verify_export(export, given)):
                assert report.ok, report.divergence
                assert [use.checkpoints for use in report.keys] == [1, 1, 1]
        finally:
            checkpoints.close()
            ledger.close()


def test_an_export_after_a_rotation_with_nothing_new_verifies_with_both_keys(
    tmp_path: Path, keys: Keys
) -> None:
    """The rotation's checkpoint stands at the position of the rotation's record, which is
    not an incident event: an export verifies offline with both public keys, and with
    either alone names the other's checkpoint."""
    with store_environment("sqlite", tmp_path) as env:
        state = Rotated(env, tmp_path, keys, 0, 0, "")
        with running_ledger(state.settings(keys.old)) as client:
            state.first = client.report().incident
            state.old_checkpoint = client.server.checkpoints.create().position
        with running_ledger(state.settings(keys.new, keys.retired)) as client:
            latest = client.server.checkpoints.latest()
            assert latest is not None and latest.position > state.old_checkpoint
            state.rotation = latest.position
            _escalate(client, state.first)
            client.report()
        old, new = keys.public(keys.old), keys.public(keys.new)
        ledger = state.ledger()
        try:
            export = tmp_path / "window.jsonl"
            export_jsonl(ledger, export)
            for report in (verify_export(export, [new, old]), verify_store(ledger, [new, old])):
                assert report.ok, report.divergence
                used = {use.key_id: use for use in report.keys}
                new_use = used[Sealer(keys.private(keys.new)).key_id]
                assert (new_use.seals, new_use.first_checkpoint) == (2, state.rotation)
                assert used[Sealer(keys.private(keys.old)).key_id].checkpoints == 1
            for given, position in (([old], state.rotation), ([new], state.old_checkpoint)):
                report = verify_export(export, given)
                assert report.divergence is not None
                assert (report.divergence.kind, report.divergence.position) == (
                    "bad_signature",
                    position,
                )
        finally:
            ledger.close()


def _audit(
    args: list[str], rotated: Rotated, settings: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.ledger.audit", *args],
        env={
            **os.environ,
            **rotated.env,
            "LEDGER_DATA_DIR": str(rotated.tmp_path / "data"),
            "LEDGER_REFERENCE_FILE": str(REFERENCE_FILE),
            "LEDGER_LOG_FORMAT": "json",
            "PYTHONPATH": f"{PROJECT_ROOT}:{PROJECT_ROOT / 'gen'}",
            **(settings or {}),
        },
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _events(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("before", ["seals_after_checkpoint", "nothing_new", "no_checkpoint"])
@pytest.mark.parametrize("listed", [True, False], ids=["retired_listed", "retired_not_listed"])
def test_the_audit_signs_with_the_new_key_only_once_the_ledger_rotated(
    tmp_path: Path, keys: Keys, before: str, listed: bool
) -> None:
    """`ledger-audit checkpoint` with the new key before any ledger started with it: a
    refusal that says what to do, nothing signed; once the ledger rotated, it signs."""
    with store_environment("sqlite", tmp_path) as env:
        state = Rotated(env, tmp_path, keys, 0, 0, "")
        with running_ledger(state.settings(keys.old)) as client:
            state.first = client.report().incident
            if before != "no_checkpoint":
                state.old_checkpoint = client.server.checkpoints.create().position
            if before != "nothing_new":
                _escalate(client, state.first)
                client.report()
        new_key = {"LEDGER_SIGNING_KEY_FILE": str(keys.new)}
        if listed:
            new_key["LEDGER_RETIRED_SIGNING_KEYS_FILE"] = str(keys.retired)
        ledger = state.ledger()
        checkpoints = Checkpoints(ledger.recorder, env, keys.private(keys.old))
        try:
            stored = list(checkpoints.iterate())
        finally:
            checkpoints.close()
            ledger.close()
        refused = _audit(["checkpoint"], state, new_key)
        said = refused.stdout + refused.stderr
        assert refused.returncode == 2, said
        line = next(e for e in _events(refused) if e["event"] == "audit.error")
        if listed:
            assert "start the ledger with this key first" in line["error"], line
        else:
            assert "LEDGER_RETIRED_SIGNING_KEYS_FILE" in line["error"], line
        assert "Traceback" not in said and "changed outside the ledger" not in said
        ledger = state.ledger()
        checkpoints = Checkpoints(ledger.recorder, env, keys.private(keys.old))
        try:  # nothing signed, nothing recorded as retired
            assert list(checkpoints.iterate()) == stored
            assert checkpoints.retirement(Sealer(keys.private(keys.old)).key_id) is None
        finally:
            checkpoints.close()
            ledger.close()

        # The ledger started with the new key rotates; then the audit signs with it.
        with running_ledger(state.settings(keys.new, keys.retired)):
            pass
        new_key["LEDGER_RETIRED_SIGNING_KEYS_FILE"] = str(keys.retired)
        made = _audit(["checkpoint"], state, new_key)
        assert made.returncode == 0, made.stdout + made.stderr
        with running_ledger(state.settings(keys.new, keys.retired)) as client:
            _escalate(client, state.first)
        made = _audit(["checkpoint"], state, new_key)
        assert made.returncode == 0, made.stdout + made.stderr
        line = next(e for e in _events(made) if e["event"] == "audit.checkpoint")
        assert line["key_id"] == Sealer(keys.private(keys.new)).key_id
        public = ["--public-key", str(keys.new.with_suffix(".pub"))]
        clean = _audit(["verify", "--store", *public, "--public-key", str(keys.retired)], state)
        assert clean.returncode == 0, clean.stdout + clean.stderr


def test_a_store_migrated_before_rotations_asks_for_migrate(tmp_path: Path, keys: Keys) -> None:
    with store_environment("sqlite", tmp_path) as env:
        state = Rotated(env, tmp_path, keys, 0, 0, "")
        with running_ledger(state.settings(keys.old)) as client:
            client.report()
        with closing(sqlite3.connect(env["SQLITE_DBNAME"])) as lite, lite:
            lite.execute("DROP TABLE ledger_retired_keys")
        state.env = {**env, "CREATE_TABLE": "n"}  # replicas that leave the tables to migrate
        with pytest.raises(ConfigError, match=r"services\.ledger migrate"):
            build(state.settings(keys.new, keys.retired))
        state.env = env
        with running_ledger(state.settings(keys.new, keys.retired)) as client:
            client.report()  # made by the start (as `migrate` would): the rotation runs


@contextmanager
def _two_replicas(
    store: str, tmp_path: Path, keys: Keys, check_seconds: float
) -> Iterator[tuple[Client, Client, str, Callable[[], int]]]:
    """A replica on the old key, which recorded an incident, and a second replica started
    on the new key beside it, which rotated; then every event in the store verified with
    both keys (nothing the old key sealed after the rotation)."""
    with store_environment(store, tmp_path) as env:
        state = Rotated(env, tmp_path, keys, 0, 0, "")

        def settings(key: Path, retired: Path | None = None) -> LedgerSettings:
            return replace(state.settings(key, retired), store_check_seconds=check_seconds)

        with running_ledger(settings(keys.old)) as stale:
            first = stale.report().incident
            health = health_pb2_grpc.HealthStub(stale.channel)

            def status() -> int:
                return int(health.Check(health_pb2.HealthCheckRequest(service="")).status)

            assert status() == health_pb2.HealthCheckResponse.SERVING
            with running_ledger(settings(keys.new, keys.retired)) as current:
                yield stale, current, first, status
                # The replica on the current key records, and signs over everything stored.
                _escalate(current, first)
                current.report()
                current.server.checkpoints.create()
        ledger = state.ledger()
        try:
            report = verify_store(ledger, [keys.public(keys.new), keys.public(keys.old)])
            assert report.ok, report.divergence
        finally:
            ledger.close()


def _triage(client: Client, name: str) -> None:
    client.stub.TriageIncidents(
        api.TriageIncidentsRequest(
            request_id=rid(),
            items=[api.TriageItem(name=name, verify=api.TriageVerify(comment="checked"))],
        ),
        metadata=client.md("desk_pilkada"),  # the coordinator triages
    )


def _refused_as_retired(stale: Client, first: str, keys: Keys) -> None:
    attempts = (
        lambda: stale.report(),
        lambda: _escalate(stale, first),
        lambda: _triage(stale, first),
    )
    for attempt in attempts:
        with pytest.raises(grpc.RpcError) as refused:
            attempt()
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        info = error_info(refused.value)  # type: ignore[arg-type]
        assert info is not None and info.reason == "SIGNING_KEY_RETIRED", refused.value
        assert info.metadata["successor"] == Sealer(keys.private(keys.new)).key_id


def _wait_not_serving(status: Callable[[], int]) -> None:
    wait_until(
        lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING,
        timeout=30,
        what="the replica on the retired key to report NOT_SERVING",
    )


@pytest.mark.parametrize("store", STORES)
def test_a_replica_left_running_notices_the_rotation_by_itself(
    store: str, tmp_path: Path, keys: Keys
) -> None:
    """Without any command: within its store check the replica on the old key answers
    NOT_SERVING (a load balancer drops it), then refuses commands, recording nothing."""
    with _two_replicas(store, tmp_path, keys, check_seconds=0.05) as (
        stale,
        current,
        first,
        status,
    ):
        _wait_not_serving(status)
        _refused_as_retired(stale, first, keys)
        # An incident the new key sealed is unknown to it: refused the same way, not as
        # a broken history.
        changed = current.report().incident
        with pytest.raises(grpc.RpcError) as refused:
            stale.stub.GetIncident(
                api.GetIncidentRequest(name=changed), metadata=stale.md("kesbangpol")
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value


@pytest.mark.parametrize("store", STORES)
def test_a_commit_after_the_rotation_is_refused_before_the_check_comes_round(
    store: str, tmp_path: Path, keys: Keys
) -> None:
    """The replica's periodic check far away (an hour): its first commit after the
    rotation finds the key retired inside its own transaction and is rolled back; the
    health follows at once."""
    with _two_replicas(store, tmp_path, keys, check_seconds=3600) as (stale, _, first, status):
        with capture_logs() as logs:
            _refused_as_retired(stale, first, keys)
            _wait_not_serving(status)
            _refused_as_retired(stale, first, keys)
        said = [x for x in list(logs) if x["event"] == "ledger.signing_key_retired"]
        assert len(said) == 1, said  # one line, an error, saying what to do
        assert said[0]["log_level"] == "error"
        assert "restart it with the current signing key" in str(said[0]["note"])


@pytest.mark.parametrize("store", STORES)
def test_commands_racing_the_rotation_are_recorded_before_it_or_refused(
    store: str, tmp_path: Path, keys: Keys
) -> None:
    """Four callers keep recording on the replica with the old key while the second
    replica starts and rotates: each command is recorded below the position the rotation
    records (every incident loads on the new replica) or refused. The rotation reads that
    position and records the key under the store's write lock; without the lock, with
    50 ms between the two, 20-28 incidents of each PostgreSQL run were refused at load."""
    with store_environment(store, tmp_path) as env:
        state = Rotated(env, tmp_path, keys, 0, 0, "")

        def settings(key: Path, retired: Path | None = None) -> LedgerSettings:
            # The periodic check an hour away: the commits' own check is what refuses.
            return replace(state.settings(key, retired), store_check_seconds=3600)

        recorded: list[str] = []
        with running_ledger(settings(keys.old)) as stale:
            recorded.append(stale.report().incident)
            refused = threading.Barrier(5)

            def record() -> None:
                while True:
                    try:
                        recorded.append(stale.report().incident)
                    except grpc.RpcError as error:
                        info = error_info(error)  # type: ignore[arg-type]
                        assert info is not None and info.reason == "SIGNING_KEY_RETIRED"
                        refused.wait(timeout=60)
                        return

            callers = [threading.Thread(target=record) for _ in range(4)]
            for caller in callers:
                caller.start()
            with running_ledger(settings(keys.new, keys.retired)) as current:
                refused.wait(timeout=60)
                for caller in callers:
                    caller.join(timeout=60)
                for name in recorded:
                    current.stub.GetIncident(
                        api.GetIncidentRequest(name=name), metadata=current.md("kesbangpol")
                    )


@pytest.mark.parametrize("store", STORES)
def test_a_rotation_never_signs_over_what_the_retired_key_sealed_after_it(
    store: str, tmp_path: Path, keys: Keys
) -> None:
    """A rotation with nothing new since the old key's checkpoint, made by an earlier
    version, left that checkpoint the latest; a replica on the old key without the commit's
    own check (started on a store without ledger_retired_keys, or on PostgreSQL's insert
    function) then records an incident past the rotation's position. The next start on the
    new key, finding the old key's checkpoint the latest, signs the rotation's checkpoint
    again: it must not vouch for that incident, which the ledger refuses at load, so the
    start is refused, naming it, and records no rotation in the log."""
    with store_environment(store, tmp_path) as env:
        state = Rotated(env, tmp_path, keys, 0, 0, "")
        with running_ledger(state.settings(keys.old)) as client:
            state.first = client.report().incident
            state.old_checkpoint = client.server.checkpoints.create().position
            latest = client.server.checkpoints.latest()
        assert latest is not None
        _rotate_as_before(env, keys, state.old_checkpoint)
        late = _seal_late_with_the_old_key(env, keys)
        with pytest.raises(
            ConfigError, match=rf"{late}, .*retired at position {state.old_checkpoint}\b"
        ):
            build(state.settings(keys.new, keys.retired))
        ledger = state.ledger()
        checkpoints = Checkpoints(
            ledger.recorder, env, keys.private(keys.new), retired=(keys.public(keys.old),)
        )
        try:
            assert checkpoints.latest() == latest  # nothing signed over it
            with pytest.raises(CheckpointError, match=late):
                checkpoints.rotate_key(ledger.record_key_rotation)
            assert _rotation_records(ledger) == []
            # No checkpoint of the new key shows the retirement: the store's table does.
            report = verify_store(ledger, [keys.public(keys.new), keys.public(keys.old)])
            assert report.divergence is not None, "verify passed what the ledger refuses"
            assert report.divergence.kind == "modified"
            assert report.divergence.incident == late
            assert "records as retired at position" in report.divergence.detail
            # Nor does a checkpoint of the old key after that position count, signed by hand
            # (the ledger's own refuses) over the log as it stands.
            state_now = extend_chain(
                ledger.recorder,
                RawDecoder(ledger.mapper),
                ChainState(latest.position, latest.head, latest.events),
            )
            created_at = datetime.now(UTC).isoformat(timespec="microseconds")
            old_key = keys.private(keys.old)
            forged = Checkpoint(
                state_now.position,
                state_now.head,
                state_now.events,
                created_at,
                latest.key_id,
                old_key.sign(
                    signing_payload(
                        state_now.position, state_now.head, state_now.events, created_at
                    )
                ),
            )
            report = verify_store(ledger, [keys.public(keys.new), keys.public(keys.old)], [forged])
            assert report.divergence is not None
            assert report.divergence.kind == "bad_signature"
            assert report.divergence.position == state_now.position
            assert "records as retired at position" in report.divergence.detail
        finally:
            checkpoints.close()
            ledger.close()

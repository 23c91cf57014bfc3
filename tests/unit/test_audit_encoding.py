"""Audit encodings: hashing from the raw stored state, the export envelope, keys, settings."""

from __future__ import annotations

import base64
import json
import re
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from google.protobuf.json_format import MessageToDict

from services.common.config import AuditSettings, ConfigError
from services.common.jsoncodec import loads
from services.ledger.application import IngestItem, Ledger, StoredIncidentEvent
from services.ledger.audit import (
    Checkpoint,
    ExportFormatError,
    RawDecoder,
    body_hash,
    chain_step,
    envelope_from_body,
    key_id,
    load_public_key,
    load_signing_key,
    public_key_bytes,
    verify_export,
)
from services.ledger.audit.checkpoints import signing_payload
from services.ledger.audit.encoding import export_line
from services.ledger.audit.keys import DEVELOPMENT_KEY_MARK, generate_key_pair, load_public_keys
from services.ledger.audit.verify_exported import check_event_line, exported_as_is
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
from services.ledger.domain.evidence import UploadEvidence
from services.ledger.domain.incident import (
    GENESIS_HASH,
    Envelope,
    Incident,
    RejectionReason,
    _canonical,
    event_fields,
    event_hash,
    incident_event_classes,
)
from services.ledger.wire import event_to_proto
from tests.support import reference, store_environment
from tests.unit.incident_builders import envelope_for, personal_data_history

LOCATION = {"kecamatan": "kota_mukomuko", "desa": "Koto Jaya"}
ON_THE_SECOND = datetime(2026, 11, 28, 1, 2, 3, tzinfo=UTC)  # no microseconds


@dataclass
class History:
    """What :func:`build_history` recorded: incidents by role, with their command results."""

    lifecycle: UUID  # goes through every stage: 16 events
    others: list[UUID] = field(default_factory=list)
    decision_event: UUID | None = None


def coord() -> Envelope:
    """The coordinator, with a fresh request id."""
    return envelope_for("desk_pilkada")


def build_history(ledger: Ledger, *, extra: int = 2) -> History:
    """A history with every incident event type, recorded by real commands."""
    first = ledger.execute(
        envelope_for("kesbangpol", occurred_at=ON_THE_SECOND),
        ReportIncident(
            title="Massa berkumpul di Lapangan Merdeka",
            description="Ratusan orang tanpa izin — ünïcode ✓",
            category="crowd_gathering",
            severity="low",
            location={**LOCATION, "tps": "TPS 03", "latitude": -2.58, "longitude": 101.11},
        ),
    )
    i = first.incident_id
    ledger.execute(coord(), VerifyIncident(i, 0, "checked on site"))
    ledger.execute(coord(), AssignLeadAgency(i, 0, "polres", "police lead"))
    ledger.execute(coord(), AddSupportingAgency(i, 0, "kodim", "military support"))
    ledger.execute(
        envelope_for("polres"), LogAction(i, 0, "patrol sent", {**LOCATION, "latitude": -2.5})
    )
    decision = ledger.execute(
        coord(),
        RecordDecision(
            i,
            0,
            deciding_agencies=("polres", "desk_pilkada"),
            forum="Rapat Forkopimda",
            summary="Larangan kumpul tiga hari",
            rationale="risk of clashes",
            scope=dict(LOCATION),
            valid_from=ON_THE_SECOND,
            valid_until=ON_THE_SECOND + timedelta(days=3, microseconds=250_000),
        ),
    )
    ledger.execute(envelope_for("polres"), EscalateIncident(i, 0, "crowd growing"))
    ledger.execute(coord(), AssessSeverity(i, 0, "high", "escalated"))
    ledger.execute(envelope_for("polres"), ProposeHandover(i, 0, "kodim", "military takes over"))
    ledger.execute(envelope_for("kodim"), AcceptHandover(i, 0, "accepted"))
    ledger.execute(envelope_for("kodim"), ResolveIncident(i, 0, "crowd dispersed"))
    ledger.execute(envelope_for("kodim"), RequestClosure(i, 0, "done"))
    ledger.execute(coord(), ApproveClosure(i, 0, "approved"))
    ledger.execute(coord(), ReopenIncident(i, 0, "crowd came back"))
    ledger.execute(
        coord(),
        RecordCorrection(
            i,
            0,
            event_id=decision.event_id,
            field="summary",
            old_value="Larangan kumpul tiga hari",
            new_value="Larangan kumpul 3 hari",
            reason="typo",
        ),
    )
    # Evidence: its digest, size and type enter the chain, never its bytes.
    ledger.execute(
        envelope_for("kodim"),
        UploadEvidence(i, 0, "ab" * 32, 48213, "image/jpeg", "amplop.jpg", "amplop di Ipuh"),
    )
    # The incident's latest event (the tamper tests change it).
    ledger.execute(envelope_for("kodim"), LogAction(i, 0, "second patrol", None))
    history = History(i, decision_event=decision.event_id)
    hoax = ledger.execute(
        envelope_for("bawaslu"),
        ReportIncident(
            title="Hoaks", description="", category="hoax", severity="", location=dict(LOCATION)
        ),
    )
    ledger.execute(coord(), RejectIncident(hoax.incident_id, 0, RejectionReason.HOAX, "a hoax"))
    target = ledger.execute(
        envelope_for("kpu"),
        ReportIncident(
            title="Logistik",
            description="",
            category="hoax",
            severity="",
            location={"kecamatan": "ipuh"},
        ),
    )
    duplicate = ledger.execute(
        envelope_for("kpu"),
        ReportIncident(
            title="Logistik 2",
            description="",
            category="hoax",
            severity="",
            location={"kecamatan": "ipuh"},
        ),
    )
    ledger.execute(
        coord(), MergeIncident(duplicate.incident_id, 0, target.incident_id, "duplicate")
    )
    history.others += [hoax.incident_id, target.incident_id, duplicate.incident_id]
    # A report a field device handed over: the device's fields of its Reported event.
    (ingested,) = ledger.ingest(
        envelope_for("bawaslu").actor,
        [
            IngestItem(
                device_id="hp-panwascam-07",
                report_id=UUID("7d444840-9dc0-11d1-b245-5ffdce74fad2"),
                record_time=ON_THE_SECOND - timedelta(hours=20, microseconds=1),
                command=ReportIncident(
                    title="Kotak suara dibawa pergi",
                    description="dicatat tanpa sinyal",
                    category="hoax",
                    severity="",
                    location={"kecamatan": "ipuh", "tps": "TPS 07"},
                ),
                occurred_at=ON_THE_SECOND - timedelta(hours=21),
            )
        ],
        send_time=datetime.now(UTC) + timedelta(seconds=95),
    )
    assert ingested.result is not None
    history.others.append(ingested.result.incident_id)
    history.others.append(personal_data_history(ledger))
    for n in range(extra):
        other = ledger.execute(
            envelope_for("polres"),
            ReportIncident(
                title=f"Bentrokan {n}",
                description="",
                category="crowd_gathering",
                severity="medium",
                location=dict(LOCATION),
            ),
        )
        ledger.execute(coord(), VerifyIncident(other.incident_id, 0, "ok"))
        ledger.execute(coord(), AssignLeadAgency(other.incident_id, 0, "polres", ""))
        ledger.execute(envelope_for("polres"), LogAction(other.incident_id, 0, f"action {n}", None))
        history.others.append(other.incident_id)
    return history


@pytest.fixture(params=["popo", "sqlite"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    with store_environment(request.param, tmp_path) as store_env:
        app = Ledger(reference(), env=store_env)
        try:
            yield app
        finally:
            app.close()


def _stored(ledger: Ledger) -> list[tuple[StoredIncidentEvent, dict[str, object]]]:
    decoder = RawDecoder(ledger.mapper)
    result = []
    for n in ledger.recorder.select_notifications(1, 10_000, topics=decoder.topics):
        event = ledger.mapper.to_domain_event(n)
        assert isinstance(event, Incident.Event)
        body = decoder.body(n.topic, n.originator_id, n.originator_version, n.state)
        result.append((StoredIncidentEvent(event, n.id), body))
    return result


def test_hash_from_the_raw_state_equals_event_hash_for_every_event_type(ledger: Ledger) -> None:
    build_history(ledger)
    stored = _stored(ledger)
    seen = set()
    for item, body in stored:
        assert body_hash(body) == event_hash(item.event), type(item.event).__name__
        seen.add(type(item.event).__name__)
    assert seen == {cls.__name__ for cls in incident_event_classes()}


def test_direct_envelope_equals_the_protobuf_json_of_event_to_proto(ledger: Ledger) -> None:
    build_history(ledger)
    for item, body in _stored(ledger):
        expected = MessageToDict(event_to_proto(item), preserving_proto_field_name=True)
        digest = body_hash(body)
        assert envelope_from_body(body, item.position, digest) == expected
        line, line_hash = export_line(body, item.position)
        assert line_hash == digest
        assert json.loads(line) == {**expected, "canonical": json.loads(json.dumps(body))}


def _reference_line(item: StoredIncidentEvent) -> bytes:
    """An export line computed without the exporter: the protobuf JSON of the event (in
    field order, compact, by the standard library) with its canonical body (the domain's
    fields, sorted, by the standard library) added as ``"canonical"``."""
    envelope = MessageToDict(event_to_proto(item), preserving_proto_field_name=True)
    body = event_fields(item.event)
    body["type"] = type(item.event).__name__
    body["schema_version"] = getattr(type(item.event), "class_version", 1)
    canonical = _compact(body, sort_keys=True, default=_canonical)
    return f'{_compact(envelope)[:-1]},"canonical":{canonical}}}'.encode()


def _compact(value: Any, *, sort_keys: bool = False, default: Any = None) -> str:
    return json.dumps(
        value, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys, default=default
    )


def test_export_lines_are_byte_for_byte_the_independently_computed_ones(ledger: Ledger) -> None:
    build_history(ledger)
    decoder = RawDecoder(ledger.mapper)
    stored = ledger.recorder.select_notifications(1, 10_000, topics=decoder.topics)
    assert len(stored) > 30
    for n in stored:
        event = ledger.mapper.to_domain_event(n)
        assert isinstance(event, Incident.Event)
        body, seal = decoder.sealed_body(n.topic, n.originator_id, n.originator_version, n.state)
        line, _ = export_line(body, n.id, seal)
        assert line == _reference_line(StoredIncidentEvent(event, n.id)), type(event).__name__


@pytest.mark.parametrize(
    "scope",
    [
        {"kecamatan": "ipuh", "latitude": 1e-05},  # orjson alone writes 0.00001
        {"kecamatan": "ipuh", "latitude": -2.5e-07},  # orjson alone writes -2.5e-7
        {"kecamatan": "ipuh", "latitude": -2.58},
    ],
)
def test_payload_json_writes_small_floats_as_the_standard_library(scope: dict[str, Any]) -> None:
    body = _reported_body({"summary": "x", "scope": scope})
    line, digest = export_line(body, 3)
    payload = {"scope": scope, "summary": "x", "title": "t"}
    assert json.loads(line)["payload_json"] == _compact(payload, sort_keys=True)
    assert line.endswith(f',"canonical":{_compact(body, sort_keys=True)}}}'.encode())
    assert digest == body_hash(body)


def test_times_without_microseconds_and_in_other_zones_hash_like_the_domain() -> None:
    decoder = RawDecoder()
    topic = next(iter(decoder.classes))  # Reported
    state = {
        "timestamp": {"_type_": "datetime_iso", "_data_": "2026-11-28T08:02:03+07:00"},
        "originator_topic": "services.ledger.domain.incident:Incident",
        "event_id": {"_type_": "uuid_hex", "_data_": "06fce68956ac4007979f1995e947dd58"},
        "occurred_at": {"_type_": "datetime_iso", "_data_": "2026-11-28T01:02:03+00:00"},
        "previous_hash": GENESIS_HASH,
        "title": "t",
    }
    body = decoder.body(topic, UUID(int=7), 1, json.dumps(state).encode())
    assert body["timestamp"] == "2026-11-28T01:02:03.000000+00:00"
    assert body["occurred_at"] == "2026-11-28T01:02:03.000000+00:00"
    assert body["event_id"] == "06fce689-56ac-4007-979f-1995e947dd58"
    assert body["type"] == decoder.classes[topic].__name__


@pytest.mark.parametrize(
    "state",
    [b"\xff{", b"[1]", b'{"previous_hash": 1}', b'{"x": {"_type_": "decimal_str", "_data_": "1"}}'],
)
def test_undecodable_states_are_refused(state: bytes) -> None:
    from services.ledger.audit.encoding import EventDecodeError

    decoder = RawDecoder()
    with pytest.raises(EventDecodeError):
        decoder.body(next(iter(decoder.classes)), UUID(int=1), 1, state)


def test_the_chain_step_has_the_documented_layout() -> None:
    digest = "ab" * 32
    expected = __import__("hashlib").sha256(f"{GENESIS_HASH}:17:{digest}".encode()).hexdigest()
    assert chain_step(GENESIS_HASH, 17, digest) == expected


def test_checkpoints_sign_the_documented_payload_and_round_trip() -> None:
    key = Ed25519PrivateKey.generate()
    public = public_key_bytes(key)
    created = "2026-11-28T06:22:43.201375+00:00"
    payload = signing_payload(5, "cd" * 32, 3, created)
    assert payload == (
        b'{"created_at":"2026-11-28T06:22:43.201375+00:00","events":3,'
        b'"format":"incidentledger.checkpoint.v1","head":"' + b"cd" * 32 + b'","position":5}'
    )
    checkpoint = Checkpoint(5, "cd" * 32, 3, created, key_id(public), key.sign(payload))
    assert checkpoint.verify(public)
    again = Checkpoint.from_json(json.loads(checkpoint.to_bytes()))
    assert again == checkpoint
    assert not Checkpoint(6, "cd" * 32, 3, created, "", checkpoint.signature).verify(public)
    assert not checkpoint.verify(public_key_bytes(Ed25519PrivateKey.generate()))


def test_development_generates_a_key_pair_once_with_a_private_mode(tmp_path: Path) -> None:
    settings = AuditSettings.from_env({"LEDGER_DATA_DIR": str(tmp_path)})
    key = load_signing_key(settings)
    private = tmp_path / "keys" / "ledger-signing.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert load_public_key(tmp_path / "keys" / "ledger-signing.pub") == public_key_bytes(key)
    assert public_key_bytes(load_signing_key(settings)) == public_key_bytes(key)


def test_production_refuses_the_development_key_whatever_its_file(tmp_path: Path) -> None:
    """make run's key, copied or pointed at, sealed a production ledger's history."""
    key = load_signing_key(AuditSettings.from_env({"LEDGER_DATA_DIR": str(tmp_path)}))
    generated = tmp_path / "keys" / "ledger-signing.key"
    assert generated.read_bytes().startswith(DEVELOPMENT_KEY_MARK)
    copied = tmp_path / "production.key"
    copied.write_bytes(generated.read_bytes())
    production = {"LEDGER_ENVIRONMENT": "production", "LEDGER_SIGNING_KEY_FILE": str(copied)}
    with pytest.raises(ConfigError, match="is a development key the ledger generated"):
        load_signing_key(AuditSettings.from_env(production))
    # The same file read as a configured key outside production: the same key.
    configured = {"LEDGER_SIGNING_KEY_FILE": str(copied)}
    assert public_key_bytes(load_signing_key(AuditSettings.from_env(configured))) == (
        public_key_bytes(key)
    )
    # A key made for production (generate-signing-key) is taken.
    made = tmp_path / "made.key"
    assert generate_key_pair(made) is not None
    assert not made.read_bytes().startswith(b"#")
    load_signing_key(AuditSettings.from_env({**production, "LEDGER_SIGNING_KEY_FILE": str(made)}))


def test_keys_load_from_pem_or_base64(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes_raw()
    (tmp_path / "k.b64").write_text(base64.b64encode(seed).decode())
    (tmp_path / "p.b64").write_text(base64.b64encode(public_key_bytes(key)).decode())
    settings = AuditSettings.from_env({"LEDGER_SIGNING_KEY_FILE": str(tmp_path / "k.b64")})
    assert public_key_bytes(load_signing_key(settings)) == public_key_bytes(key)
    assert load_public_key(tmp_path / "p.b64") == public_key_bytes(key)
    (tmp_path / "bad").write_text("not a key")
    with pytest.raises(ConfigError):
        load_public_key(tmp_path / "bad")
    # The signing key given where its public key belongs: said so, never echoed.
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    (tmp_path / "k.pem").write_bytes(b"# a comment first\n" + pem)
    with pytest.raises(ConfigError, match=r"k\.pem:2 is a private key, not a public key") as c:
        load_public_keys(tmp_path / "k.pem")
    assert pem.decode().splitlines()[1] not in str(c.value)


def test_production_requires_a_signing_key_and_never_generates(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="LEDGER_SIGNING_KEY_FILE is required"):
        AuditSettings.from_env({"LEDGER_ENVIRONMENT": "production"})
    settings = AuditSettings.from_env(
        {"LEDGER_ENVIRONMENT": "production", "LEDGER_SIGNING_KEY_FILE": str(tmp_path / "none")}
    )
    with pytest.raises(ConfigError, match="cannot read"):
        load_signing_key(settings)
    assert not (tmp_path / "none").exists()


def test_audit_settings_defaults_and_checks(tmp_path: Path) -> None:
    settings = AuditSettings.from_env({"LEDGER_DATA_DIR": str(tmp_path)})
    assert settings.checkpoint_seconds == 300
    assert settings.resolved_signing_key_file == tmp_path / "keys" / "ledger-signing.key"
    assert AuditSettings.from_env({"LEDGER_CHECKPOINT_SECONDS": "0"}).checkpoint_seconds == 0
    with pytest.raises(ConfigError):
        AuditSettings.from_env({"LEDGER_CHECKPOINT_SECONDS": "-1"})
    with pytest.raises(ConfigError):
        AuditSettings.from_env({"LEDGER_CHECKPOINT_SECONDS": "often"})


@pytest.mark.parametrize(
    ("first_line", "message"),
    [
        (
            '{"event_id": "e", "incident": "incidents/x", "hash": "ab", "previous_hash": ""}',
            "a replay file such as `ledgerctl audit export` writes",
        ),
        ('{"title": "not an export"}', "the first line is not its header"),
        ("not json", "the first line is not its header"),
    ],
)
def test_verify_export_names_a_file_that_is_not_an_export(
    tmp_path: Path, first_line: str, message: str
) -> None:
    path = tmp_path / "file.jsonl"
    path.write_text(first_line + "\n")
    with pytest.raises(ExportFormatError, match=re.escape(message)):
        verify_export(path, bytes(32))


def _reported_body(extra: dict[str, Any]) -> dict[str, Any]:
    decoder = RawDecoder()
    state = {
        "timestamp": {"_type_": "datetime_iso", "_data_": "2026-11-28T01:02:03.000001+00:00"},
        "event_id": {"_type_": "uuid_hex", "_data_": "06fce68956ac4007979f1995e947dd58"},
        "previous_hash": GENESIS_HASH,
        "title": "t",
        **extra,
    }
    return decoder.body(next(iter(decoder.classes)), UUID(int=7), 1, json.dumps(state).encode())


def test_an_export_line_as_the_exporter_writes_it_is_taken_as_is() -> None:
    body = _reported_body({"latitude": -2.58})
    line, digest = export_line(body, 6, "key:seal")
    record = loads(line)
    exact = check_event_line(record, line)
    assert exact == (str(UUID(int=7)), 1, 6, GENESIS_HASH, digest, None, "key:seal")
    assert exported_as_is(line + b"\n") == (exact, record["canonical"])
    # Anything else is read by check_event_line: another hash, a changed envelope.
    assert exported_as_is(line.replace(digest.encode(), b"0" * 64, 1)) is None
    assert exported_as_is(line.replace(b'"version":"1"', b'"version":"2"')) is None


def test_an_integer_orjson_alone_would_read_as_a_float_is_read_exactly() -> None:
    body = _reported_body({"size": 2**70})
    assert body["size"] == 2**70
    line, digest = export_line(body, 5)
    assert b'"size":1180591620717411303424' in line
    # orjson reads 2**70 as a float: written again, the line differs, so it is not taken.
    assert exported_as_is(line) is None
    checked = check_event_line(loads(line), line)
    assert checked == (str(UUID(int=7)), 1, 5, GENESIS_HASH, digest, None, None)
    assert digest == body_hash(body)


def test_the_audit_commands_run_with_the_reading_threads_switch_interval(tmp_path: Path) -> None:
    """The audit commands' process lets its reading thread take the interpreter lock
    sooner than a server's (docs/performance.md, "Verify and export"); a failing command
    (an export file that is not there) has set it all the same."""
    from services.ledger.audit.__main__ import main
    from services.ledger.audit.encoding import READING_SWITCH_INTERVAL

    before = sys.getswitchinterval()
    key = tmp_path / "key.pub"
    key.write_text(base64.b64encode(b"k" * 32).decode())
    try:
        sys.setswitchinterval(0.005)  # the interpreter's default, whatever ran before
        code = main(
            ["verify", "--export", str(tmp_path / "absent.jsonl"), "--public-key", str(key)]
        )
        assert code == 2
        assert sys.getswitchinterval() == pytest.approx(READING_SWITCH_INTERVAL)
    finally:
        sys.setswitchinterval(before)

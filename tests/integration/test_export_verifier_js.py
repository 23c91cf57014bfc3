"""An export verified by an outside verifier written from docs/hash-chain.md in another language.

tests/js/verify_export.mjs (plain Node.js, no packages, no code shared with the ledger)
verifies a real export of a ledger with every event type, Indonesian text with accents,
combining marks, emoji, quotes, backslashes and control characters, coordinates whose
canonical form is the hardest (``1e-05``, ``-0.0``, ``100.0``, 17 significant digits), and
signed checkpoints with events after them (so that seals count); then it must reject the same
file with one byte changed, wherever the change is. The ledger's own verifier agrees each time.

Skipped only when ``node`` is missing outside CI; in CI (``CI=true``) a missing node fails.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.ledger.application import Ledger
from services.ledger.audit import (
    Checkpoint,
    Checkpoints,
    ExportStats,
    body_hash,
    chain_step,
    envelope_from_body,
    export_jsonl,
    key_id,
    read_checkpoints_file,
    verify_export,
)
from services.ledger.audit.keys import public_key_pem
from services.ledger.domain.commands import EscalateIncident, ReportIncident, VerifyIncident
from services.ledger.seals import Sealer, public_key_bytes
from tests.support import reference, store_environment
from tests.unit.incident_builders import envelope_for
from tests.unit.test_audit_encoding import build_history

VERIFIER = Path(__file__).resolve().parents[1] / "js" / "verify_export.mjs"

# A woman farmer, medium skin tone: four code points joined by U+200D, two beyond U+FFFF.
FARMER = "\U0001f469\U0001f3fd\u200d\U0001f33e"
TITLE = "Kerumunan di Pasar Mukomuko — Bu Dédé & Pak Sutrisno 🎉"
DESCRIPTION = (
    'Warga "Siti Nurhaliza" melapor: spanduk\\baliho dirobek;\n'
    "jam\t14.30 WIB, e\u0301 (NFD), \u2028 pemisah baris, \u001f kontrol, "
    f"{FARMER} petani, \U0001d538"
)
TRICKY_LOCATIONS: list[dict[str, Any]] = [
    {"kecamatan": "ipuh", "desa": "Pasar Ipuh", "tps": "TPS 07", "latitude": 1e-05},
    {"kecamatan": "ipuh", "desa": "", "tps": "", "latitude": -0.0, "longitude": 100.0},
    {
        "kecamatan": "kota_mukomuko",
        "desa": "Ujung Padang",
        "tps": "",
        "latitude": -89.99999999999999,
        "longitude": 179.99999999999997,
    },
    {"kecamatan": "v_koto", "desa": "", "tps": "", "latitude": 0.00011, "longitude": -1.5e-07},
]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    if found is None:
        if _in_ci():
            pytest.fail("CI requires node (Node.js 18 or later) for the independent verifier")
        pytest.skip("node is not installed: the independent export verifier cannot run")
    return found


@dataclass(frozen=True)
class Exported:
    path: Path
    public_key: Path
    witness: Path
    stats: ExportStats
    checkpoints: int
    partial: Path  # from just after the first checkpoint
    partial_stats: ExportStats
    ranged: Path  # from just after the first checkpoint to just before the second
    older: Path  # the whole log as it was before the second checkpoint's events
    second: int  # the second checkpoint's position


def _record(ledger: Ledger) -> None:
    """Incidents with the texts and numbers hardest to encode, beyond build_history's."""
    for n, location in enumerate(TRICKY_LOCATIONS):
        reported = ledger.execute(
            envelope_for("kesbangpol"),
            ReportIncident(
                title=f"{TITLE} #{n}",
                description=DESCRIPTION,
                category="crowd_gathering",
                severity="medium",
                location=location,
            ),
        )
        incident = reported.incident_id
        ledger.execute(
            envelope_for("desk_pilkada"),
            VerifyIncident(incident, 0, "dicek di lapangan ✓ — «benar»"),
        )
        for level in range(3):
            ledger.execute(
                envelope_for("kesbangpol"),
                EscalateIncident(incident, 0, f"eskalasi ke-{level + 1} 🚨"),
            )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    tmp = tmp_path_factory.mktemp("export")
    key = Ed25519PrivateKey.generate()
    public = tmp / "ledger-signing.pub"
    public.write_bytes(public_key_pem(public_key_bytes(key)))
    with store_environment("sqlite", tmp) as store_env:
        ledger = Ledger(reference(), env=store_env, sealer=Sealer(key))
        checkpoints = Checkpoints(ledger.recorder, store_env, key)
        try:
            build_history(ledger, extra=1)
            first = checkpoints.create()
            older = tmp / "older.jsonl"
            export_jsonl(ledger, older)
            _record(ledger)
            second = checkpoints.create()
            # Events after the last checkpoint: only their seals vouch for the newest ones.
            build_history(ledger, extra=0)
            _record(ledger)
            path = tmp / "ledger.jsonl"
            stats = export_jsonl(ledger, path)
            partial = tmp / "partial.jsonl"
            partial_stats = export_jsonl(ledger, partial, start=first.position + 1)
            ranged = tmp / "ranged.jsonl"
            export_jsonl(ledger, ranged, first.position + 1, second.position - 1)
        finally:
            checkpoints.close()
            ledger.close()
    witness = tmp / "witness.jsonl"
    witness.write_text("".join(json.dumps(c.to_json()) + "\n" for c in (first, second)))
    assert stats.checkpoints == 2
    return Exported(
        path, public, witness, stats, 2, partial, partial_stats, ranged, older, second.position
    )


def run_node(node: str, export: Path, public_key: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [node, str(VERIFIER), "--public-key", str(public_key), *extra, str(export)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode in {0, 1, 3}, (done.returncode, done.stdout, done.stderr)
    report: dict[str, Any] = json.loads(done.stdout)
    return done.returncode, report


def test_the_export_holds_what_is_hardest_to_encode(exported: Exported) -> None:
    text = exported.path.read_text(encoding="utf-8")
    for needle in (
        '"latitude":1e-05',
        '"latitude":-0.0',
        '"longitude":100.0',
        "179.99999999999997",
    ):
        assert needle in text
    assert "e\u0301" in text and FARMER in text and "\\u001f" in text and "\u2028" in text


def test_the_independent_verifier_accepts_the_export(node: str, exported: Exported) -> None:
    code, report = run_node(node, exported.path, exported.public_key)
    assert code == 0, report
    assert report["ok"] is True
    assert report["events"] == exported.stats.events
    assert report["head"] == exported.stats.head
    assert int(report["last_position"]) == exported.stats.last_position
    assert report["checkpoints_checked"] == exported.checkpoints
    # With a witness's copy of the same checkpoints, too.
    code, report = run_node(
        node, exported.path, exported.public_key, "--checkpoints", str(exported.witness)
    )
    assert code == 0, report
    # And the ledger's own verifier agrees.
    assert verify_export(exported.path, _public_bytes(exported)).ok


def test_the_independent_verifier_accepts_a_partial_export(node: str, exported: Exported) -> None:
    header = json.loads(exported.partial.read_bytes().split(b"\n", 1)[0])
    assert header["start_events"] > 0  # the chain starts from the first checkpoint's state
    code, report = run_node(node, exported.partial, exported.public_key)
    assert code == 0, report
    assert report["events"] == exported.partial_stats.events
    assert report["head"] == exported.stats.head == exported.partial_stats.head
    # The first checkpoint, at the chain state the file starts from, is checked too.
    python = verify_export(exported.partial, _public_bytes(exported))
    assert python.ok
    assert report["checkpoints_checked"] == python.checkpoints_checked == exported.checkpoints


def _cut(source: Path, target: Path, through: int, stop: int | None = None) -> Path:
    """``source`` without its events and checkpoints after position ``through``, its end
    record made to agree, and its header's stop set to ``stop`` when given: what someone
    who removes the newest history and covers the traces writes (no signature involved)."""
    lines = source.read_bytes().splitlines()
    header = json.loads(lines[0])
    if stop is not None:
        header["stop"] = stop
    kept = [json.dumps(header).encode()]
    kept += [line for line in lines[1:-1] if int(json.loads(line)["position"]) <= through]
    target.write_bytes(_with_end(kept))
    return target


def _with_end(lines: list[bytes]) -> bytes:
    """The header and the event and checkpoint lines, and an end record that agrees."""
    header, count = json.loads(lines[0]), 0
    head, last = header["start_head"], header["start_position"]
    for line in lines[1:]:
        record = json.loads(line)
        if "canonical" in record:
            head = chain_step(head, int(record["position"]), record["hash"])
            count, last = count + 1, int(record["position"])
    end = {"record": "end", "events": count, "last_position": last, "head": head}
    return b"\n".join([*lines, json.dumps(end).encode()]) + b"\n"


def test_a_forged_event_under_a_checkpoint_is_named_by_the_checkpoint_in_both(
    node: str, exported: Exported, tmp_path: Path
) -> None:
    """The event at the second checkpoint's position, the newest of its incident, rewritten
    with its hash, envelope and the end record recomputed: the checkpoint, passed while
    reading, is the first divergence; the seals come at the end (section 8)."""
    lines = exported.path.read_bytes().splitlines()
    index = next(
        i for i in _event_lines(lines) if json.loads(lines[i])["position"] == str(exported.second)
    )
    record = json.loads(lines[index])
    body = record["canonical"]
    body["reason"] = "forged " + body["reason"]
    forged = envelope_from_body(body, exported.second, body_hash(body), record["seal"])
    lines[index] = json.dumps({**forged, "canonical": body}, ensure_ascii=False).encode()
    tampered = tmp_path / "forged.jsonl"
    tampered.write_bytes(_with_end(lines[:-1]))
    code, report = run_node(node, tampered, exported.public_key)
    assert code == 1, report
    divergence = report["divergence"]
    assert (divergence["kind"], divergence["position"]) == ("modified", str(exported.second))
    assert "differs from the signed checkpoint" in divergence["detail"]
    python = verify_export(tampered, _public_bytes(exported))
    assert python.divergence is not None
    assert (python.divergence.kind, python.divergence.position) == ("modified", exported.second)
    assert "differs from the signed checkpoint" in python.divergence.detail
    assert python.checkpoints_checked == 1  # the first checkpoint, before the forged event


def test_checkpoints_after_an_exports_range_are_listed_not_checked(
    node: str, exported: Exported
) -> None:
    """A range asked for, and a whole export made before the second checkpoint: neither
    reaches it, so it is no evidence of truncation; both verifiers say where it lies."""
    first_position = json.loads(exported.partial.read_bytes().split(b"\n", 1)[0])["start"]
    for export, start, stop in (
        (exported.ranged, first_position, exported.second - 1),
        (exported.older, 0, None),
    ):
        header = json.loads(export.read_bytes().split(b"\n", 1)[0])
        assert header["start"] == start
        assert stop is None or header["stop"] == stop
        code, report = run_node(
            node, export, exported.public_key, "--checkpoints", str(exported.witness)
        )
        assert code == 0, report
        assert report["range"] == {"start": str(start), "stop": str(header["stop"])}
        assert report["checkpoints_after"] == [str(exported.second)]
        python = verify_export(export, _public_bytes(exported), _witness(exported))
        assert python.ok, python.divergence
        assert (python.start, python.stop) == (start, header["stop"])
        assert python.checkpoints_after == (exported.second,)


def test_a_cut_export_is_truncated_within_its_range_and_shows_a_moved_stop(
    node: str, exported: Exported, tmp_path: Path
) -> None:
    """Events removed from the end of a whole export: the witness's checkpoint within the
    stated range shows it. With the header's stop moved back as well (nothing signs it),
    the file verifies, and the report shows the stop and the later checkpoint."""
    through = exported.second - 5
    cut = _cut(exported.path, tmp_path / "cut.jsonl", through)
    witness = ("--checkpoints", str(exported.witness))
    code, report = run_node(node, cut, exported.public_key, *witness)
    assert code == 1, report
    assert (report["divergence"]["kind"], report["divergence"]["position"]) == (
        "truncated",
        str(exported.second),
    )
    python = verify_export(cut, _public_bytes(exported), _witness(exported)).divergence
    assert python is not None
    assert (python.kind, python.position) == ("truncated", exported.second)

    moved = _cut(exported.path, tmp_path / "moved.jsonl", through, stop=through)
    code, report = run_node(node, moved, exported.public_key, *witness)
    assert code == 0, report
    assert report["range"]["stop"] == str(through)
    assert report["checkpoints_after"] == [str(exported.second)]
    python_report = verify_export(moved, _public_bytes(exported), _witness(exported))
    assert python_report.ok
    assert (python_report.stop, python_report.checkpoints_after) == (through, (exported.second,))


def test_an_export_of_a_cut_log_with_its_checkpoint_past_the_end_is_truncated_in_both(
    node: str, exported: Exported, tmp_path: Path
) -> None:
    """What the exporter writes for a store whose newest events were deleted: the events up
    to the log's end (the header's stop), then the store's checkpoint past it. That
    checkpoint is the file's own: truncated for both verifiers, with only the public key
    (a witness's after the range stays "not checked")."""
    through = exported.second - 5
    lines = _cut(exported.path, tmp_path / "base.jsonl", through, stop=through)
    body = lines.read_bytes().splitlines()[:-1]  # without its end record
    (second,) = [
        line
        for line in exported.path.read_bytes().splitlines()
        if b'"checkpoint"' in line and int(json.loads(line)["position"]) == exported.second
    ]
    cut = tmp_path / "cut-log.jsonl"
    cut.write_bytes(_with_end([*body, second]))
    code, report = run_node(node, cut, exported.public_key)
    assert code == 1, report
    assert (report["divergence"]["kind"], report["divergence"]["position"]) == (
        "truncated",
        str(exported.second),
    )
    python = verify_export(cut, _public_bytes(exported)).divergence
    assert python is not None
    assert (python.kind, python.position) == ("truncated", exported.second)


def test_a_deleted_and_a_reordered_event_are_named_on_the_same_line_by_both(
    node: str, exported: Exported, tmp_path: Path
) -> None:
    """After the last checkpoint (no count to compare): a middle event of an incident taken
    out, and two events of incidents with nothing after them swapped. The line is the
    file's, counted from 1 for the header."""
    lines = exported.path.read_bytes().split(b"\n")
    events = [i for i in _event_lines(lines) if i > _checkpoint_lines(lines)[-1]]
    incident = {i: json.loads(lines[i])["incident"] for i in events}
    later = {i: [j for j in events if j > i and incident[j] == incident[i]] for i in events}
    # A middle event: its incident goes on; the next event of it shows the hole.
    gone = next(
        i for i in events if later[i] and any(incident[j] == incident[i] for j in events if j < i)
    )
    deleted = tmp_path / "deleted.jsonl"
    deleted.write_bytes(b"\n".join(lines[:gone] + lines[gone + 1 :]))
    shown = later[gone][0]  # its index in the original; one line up in the new file
    # Two neighbours of other incidents, the first the last of its own: swapped, it comes
    # second and is out of order, with nothing after it to miss it.
    first = next(
        i for i in events if i + 1 in incident and incident[i] != incident[i + 1] and not later[i]
    )
    swapped = list(lines)
    swapped[first], swapped[first + 1] = lines[first + 1], lines[first]
    reordered = tmp_path / "reordered.jsonl"
    reordered.write_bytes(b"\n".join(swapped))
    for path, kind, index in ((deleted, "deleted", shown - 1), (reordered, "reordered", first + 1)):
        code, report = run_node(node, path, exported.public_key)
        assert code == 1, report
        assert (report["divergence"]["kind"], report["divergence"]["line"]) == (kind, index + 1)
        python = verify_export(path, _public_bytes(exported)).divergence
        assert python is not None
        assert (python.kind, python.line) == (kind, index + 1), python


def _witness(exported: Exported) -> list[Checkpoint]:
    return read_checkpoints_file(exported.witness)


def test_another_key_is_named_as_such_by_both_verifiers(
    node: str, exported: Exported, tmp_path: Path
) -> None:
    """A valid key that is not the ledger's: neither tampering nor clean, its own answer."""
    other_key = Ed25519PrivateKey.generate()
    other = tmp_path / "other.pub"
    other.write_bytes(public_key_pem(public_key_bytes(other_key)))
    ledger_id = json.loads(exported.witness.read_text().splitlines()[0])["key_id"]
    given_id = key_id(public_key_bytes(other_key))
    for extra in ((), ("--checkpoints", str(exported.witness))):
        code, report = run_node(node, exported.path, other, *extra)
        assert code == 3, report
        assert report["divergence"]["kind"] == "wrong_key"
        assert (
            f"sealed with key {ledger_id}; the given public key is {given_id}"
            in (report["divergence"]["detail"])
        )
    witness = _witness(exported)
    for checkpoints in (None, witness):
        python = verify_export(exported.path, public_key_bytes(other_key), checkpoints)
        assert python.divergence is not None
        assert python.divergence.kind == "wrong_key"
        assert f"sealed with key {ledger_id}; the given public key is {given_id}" in (
            python.divergence.detail
        )


@pytest.mark.parametrize("field", ["events", "head"])
def test_a_checkpoint_changed_in_the_file_is_refused_beside_the_witness_genuine_copy(
    node: str, exported: Exported, tmp_path: Path, field: str
) -> None:
    """The file's checkpoint with its count or head changed and the genuine signature kept,
    verified with a witness holding the genuine one: the same position and signature made
    it a copy of the witness's, never checked, and the file verified."""
    lines = exported.path.read_bytes().split(b"\n")
    index = _checkpoint_lines(lines)[-1]
    record = json.loads(lines[index])
    record[field] = record["events"] + 1 if field == "events" else "0" * 64
    lines[index] = json.dumps(record, separators=(",", ":")).encode()
    tampered = tmp_path / "changed-checkpoint.jsonl"
    tampered.write_bytes(b"\n".join(lines))
    witness = ("--checkpoints", str(exported.witness))
    code, report = run_node(node, tampered, exported.public_key, *witness)
    assert code == 1, report
    divergence = report["divergence"]
    assert (divergence["kind"], divergence["position"]) == (
        "bad_signature",
        str(record["position"]),
    )
    assert divergence["line"] == index + 1, divergence
    python = verify_export(tampered, _public_bytes(exported), _witness(exported)).divergence
    assert python is not None
    assert (python.kind, python.position) == ("bad_signature", int(record["position"]))


def test_a_seal_made_with_another_key_among_the_ledgers_is_tampering(
    node: str, exported: Exported, tmp_path: Path
) -> None:
    """The newest event re-sealed by someone else (their key and its id): the ledger's key
    still signs the rest, so this is a forgery, not a wrong key."""
    forger = Ed25519PrivateKey.generate()
    lines = exported.path.read_bytes().split(b"\n")
    index = _event_lines(lines)[-1]
    record = json.loads(lines[index])
    signature = forger.sign(f"incidentledger.seal.v1:{record['hash']}".encode("ascii"))
    forged = f"{key_id(public_key_bytes(forger))}:{base64.b64encode(signature).decode('ascii')}"
    lines[index] = lines[index].replace(record["seal"].encode(), forged.encode())
    tampered = tmp_path / "forged-seal.jsonl"
    tampered.write_bytes(b"\n".join(lines))
    code, report = run_node(node, tampered, exported.public_key)
    assert code == 1, report
    assert report["divergence"]["kind"] == "modified", report
    python = verify_export(tampered, _public_bytes(exported)).divergence
    assert python is not None
    assert (python.kind, python.position) == ("modified", int(record["position"]))


def _public_bytes(exported: Exported) -> bytes:
    from services.ledger.audit import load_public_key

    return load_public_key(exported.public_key)


# --------------------------------------------------------------------- one byte changed


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def _event_lines(lines: list[bytes]) -> list[int]:
    return [i for i, line in enumerate(lines) if b'"canonical":' in line]


def _checkpoint_lines(lines: list[bytes]) -> list[int]:
    return [i for i, line in enumerate(lines) if line.startswith(b'{"record":"checkpoint"')]


def _flip(line: bytes, at: int) -> bytes:
    """``line`` with the ASCII byte at ``at`` replaced by another ASCII byte of its kind."""
    old = line[at : at + 1]
    assert old.isascii() and old not in b'"\\', old
    if old.isdigit():
        new = b"7" if old != b"7" else b"3"
    elif old.isalpha():
        new = b"x" if old.lower() != b"x" else b"y"
    else:
        new = b"0"
    return line[:at] + new + line[at + 1 :]


# A change: which line (an index into the file's lines) and which byte of it, by a function
# of the lines; and the kinds of failure that may name it.
Change = Callable[[list[bytes]], tuple[int, int]]


def canonical_text(lines: list[bytes]) -> tuple[int, int]:
    """A letter of an Indonesian title inside the hashed body."""
    i = next(i for i in _event_lines(lines) if TITLE.encode() in lines[i])
    return i, lines[i].rindex(b"Kerumunan") + 3


def canonical_float(lines: list[bytes]) -> tuple[int, int]:
    """A digit of ``1e-05`` inside the hashed body."""
    i = next(i for i in _event_lines(lines) if b'"latitude":1e-05' in lines[i])
    return i, lines[i].rindex(b'"latitude":1e-05') + len(b'"latitude":1e-0')


def canonical_previous_hash(lines: list[bytes]) -> tuple[int, int]:
    """A hex digit of the link to the previous event, inside the hashed body."""
    i = _event_lines(lines)[3]
    return i, lines[i].rindex(b'"previous_hash":"') + len(b'"previous_hash":"') + 5


def envelope_reason(lines: list[bytes]) -> tuple[int, int]:
    """A letter of the envelope's reason (outside the hashed body)."""
    i = next(i for i in _event_lines(lines) if b'"reason":"dicek' in lines[i])
    return i, lines[i].index(b'"reason":"dicek') + len(b'"reason":"di')


def envelope_position(lines: list[bytes]) -> tuple[int, int]:
    """The position of the first event (outside the hashed body, in the ledger-wide chain)."""
    i = _event_lines(lines)[0]
    return i, lines[i].index(b'"position":"') + len(b'"position":"')


def envelope_hash(lines: list[bytes]) -> tuple[int, int]:
    """A digit of the hash written in an envelope."""
    i = _event_lines(lines)[7]
    return i, lines[i].index(b'"hash":"') + len(b'"hash":"') + 10


def newest_seal(lines: list[bytes]) -> tuple[int, int]:
    """A character of the seal of the file's last event (after the last checkpoint)."""
    i = _event_lines(lines)[-1]
    return i, lines[i].index(b'"seal":"') + len(b'"seal":"') + 20


def checkpoint_signature(lines: list[bytes]) -> tuple[int, int]:
    i = _checkpoint_lines(lines)[0]
    return i, lines[i].index(b'"signature":"') + len(b'"signature":"') + 4


def checkpoint_head(lines: list[bytes]) -> tuple[int, int]:
    i = _checkpoint_lines(lines)[-1]
    return i, lines[i].index(b'"head":"') + len(b'"head":"') + 1


def end_head(lines: list[bytes]) -> tuple[int, int]:
    i = next(i for i, line in enumerate(lines) if line.startswith(b'{"record":"end"'))
    return i, lines[i].index(b'"head":"') + len(b'"head":"') + 2


CHANGES: dict[str, tuple[Change, set[str]]] = {
    "canonical text": (canonical_text, {"modified"}),
    "canonical float": (canonical_float, {"modified"}),
    "canonical previous_hash": (canonical_previous_hash, {"modified"}),
    "envelope reason": (envelope_reason, {"modified"}),
    "envelope position": (envelope_position, {"modified", "reordered", "inserted"}),
    "envelope hash": (envelope_hash, {"modified"}),
    "newest seal": (newest_seal, {"modified"}),
    "checkpoint signature": (checkpoint_signature, {"bad_signature"}),
    "checkpoint head": (checkpoint_head, {"bad_signature"}),
    "end record head": (end_head, {"modified"}),
}


@pytest.mark.parametrize("where", list(CHANGES))
def test_the_independent_verifier_finds_one_changed_byte(
    node: str, exported: Exported, tmp_path: Path, where: str
) -> None:
    change, kinds = CHANGES[where]
    original = exported.path.read_bytes()
    lines = _lines(original)
    index, at = change(lines)
    lines[index] = _flip(lines[index], at)
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_bytes(b"\n".join(lines))
    data = tampered.read_bytes()
    assert len(data) == len(original)
    assert sum(a != b for a, b in zip(data, original, strict=True)) == 1

    code, report = run_node(node, tampered, exported.public_key)
    assert code == 1, report
    assert report["ok"] is False
    assert report["divergence"]["kind"] in kinds, report
    # The ledger's own verifier finds it too.
    assert not verify_export(tampered, _public_bytes(exported)).ok


# --------------------------------------------------------------------- a rotated key


def _old_key_history(
    store_env: dict[str, str], old_key: Ed25519PrivateKey, *, then_record: bool
) -> Checkpoint:
    """A history sealed with ``old_key`` and its checkpoint; with ``then_record``, one more
    event sealed with it above the checkpoint."""
    ledger = Ledger(reference(), env=store_env, sealer=Sealer(old_key))
    checkpoints = Checkpoints(ledger.recorder, store_env, old_key)
    try:
        build_history(ledger, extra=0)
        checkpoint = checkpoints.create()
        if then_record:
            _record(ledger)
        return checkpoint
    finally:
        checkpoints.close()
        ledger.close()


def _forged_by_the_old_key(
    store_env: dict[str, str], old_key: Ed25519PrivateKey, export: Path
) -> Path:
    """An event sealed with ``old_key`` after the rotation, straight into the store (a
    replica left running with the old key), then the store exported to ``export``."""
    stale = Ledger(reference(), env=store_env, sealer=Sealer(old_key))
    try:
        _record(stale)
        export_jsonl(stale, export)
    finally:
        stale.close()
    return export


def test_a_rotated_history_verifies_with_both_keys_and_a_retired_keys_seal_after_is_forged(
    node: str, tmp_path: Path
) -> None:
    """docs/hash-chain.md, sections 6 and 8: the old key's checkpoint and the new key's, in
    one export; both verifiers accept it with both public keys (a file of several counts as
    several), name the old checkpoint with the new key alone, and refuse an event sealed with
    the old key after the new key's first checkpoint."""
    old_key, new_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    old, new = public_key_bytes(old_key), public_key_bytes(new_key)
    both = tmp_path / "both.pub"
    both.write_bytes(public_key_pem(new) + public_key_pem(old))
    new_file = tmp_path / "new.pub"
    new_file.write_bytes(public_key_pem(new))
    with store_environment("sqlite", tmp_path) as store_env:
        old_checkpoint = _old_key_history(store_env, old_key, then_record=True).position
        ledger = Ledger(reference(), env=store_env, sealer=Sealer(new_key, (old,)))
        checkpoints = Checkpoints(ledger.recorder, store_env, new_key, retired=(old,))
        try:
            rotation = checkpoints.rotate_key(ledger.record_key_rotation)
            assert rotation is not None and rotation.position > old_checkpoint
            _record(ledger)
            checkpoints.create()
            clean = tmp_path / "rotated.jsonl"
            export_jsonl(ledger, clean)
        finally:
            checkpoints.close()
            ledger.close()
        forged = _forged_by_the_old_key(store_env, old_key, tmp_path / "stale.jsonl")
    code, report = run_node(node, clean, both)
    assert code == 0, report
    assert verify_export(clean, [new, old]).ok
    code, report = run_node(node, clean, new_file)
    assert (code, report["divergence"]["kind"]) == (1, "bad_signature"), report
    assert report["divergence"]["position"] == str(old_checkpoint)
    python = verify_export(clean, new).divergence
    assert python is not None
    assert (python.kind, python.position) == ("bad_signature", old_checkpoint)
    code, report = run_node(node, forged, new_file, "--public-key", str(both))
    assert (code, report["divergence"]["kind"]) == (1, "modified"), report
    assert "retired at position" in report["divergence"]["detail"]
    python = verify_export(forged, [new, old]).divergence
    assert python is not None and python.kind == "modified" and "replaced" in python.detail


def test_a_rotation_with_nothing_new_closes_the_old_keys_run_in_the_export(
    node: str, tmp_path: Path
) -> None:
    """docs/hash-chain.md, section 6: a rotation with nothing recorded since the old key's
    checkpoint signs the new key's first checkpoint at once, at the position of its record
    in the log (not an incident event: the same count and head). Both verifiers accept an
    export holding it, and refuse an event the old key seals after it, written straight into
    the store, from the export alone."""
    old_key, new_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    old, new = public_key_bytes(old_key), public_key_bytes(new_key)
    both = tmp_path / "both.pub"
    both.write_bytes(public_key_pem(new) + public_key_pem(old))
    with store_environment("sqlite", tmp_path) as store_env:
        old_checkpoint = _old_key_history(store_env, old_key, then_record=False)
        ledger = Ledger(reference(), env=store_env, sealer=Sealer(new_key, (old,)))
        checkpoints = Checkpoints(ledger.recorder, store_env, new_key, retired=(old,))
        try:
            rotation = checkpoints.rotate_key(ledger.record_key_rotation)
            assert rotation is not None and rotation.key_id == key_id(new)
            assert rotation.position > old_checkpoint.position
            assert (rotation.events, rotation.head) == (old_checkpoint.events, old_checkpoint.head)
            clean = tmp_path / "rotated.jsonl"
            assert export_jsonl(ledger, clean).checkpoints == 2
        finally:
            checkpoints.close()
            ledger.close()
        forged = _forged_by_the_old_key(store_env, old_key, tmp_path / "stale.jsonl")
    code, report = run_node(node, clean, both)
    assert code == 0, report
    assert report["checkpoints_checked"] == 2, report
    assert verify_export(clean, [new, old]).ok
    code, report = run_node(node, forged, both)
    assert (code, report["divergence"]["kind"]) == (1, "modified"), report
    assert f"retired at position {rotation.position}" in report["divergence"]["detail"], report
    python = verify_export(forged, [new, old]).divergence
    assert python is not None and python.kind == "modified", python
    assert f"which the checkpoint at position {rotation.position}" in python.detail

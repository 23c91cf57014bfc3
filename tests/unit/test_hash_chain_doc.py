"""docs/hash-chain.md says what the code does: its examples, key lists and orders are checked.

The specification is what an outside verifier is written from (tests/js/verify_export.mjs
was); these tests keep it true when the code changes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.common.jsoncodec import canonical_dumps
from services.ledger.application import Ledger
from services.ledger.audit import RawDecoder, export_jsonl
from services.ledger.audit.checkpoints import signing_payload
from services.ledger.audit.encoding import _proto_time, chain_step
from services.ledger.domain.incident import ENVELOPE_FIELDS
from services.ledger.seals import Sealer, key_id, public_key_bytes, sealed_bytes
from tests.support import reference, store_environment
from tests.unit.test_audit_encoding import build_history

DOC = Path(__file__).resolve().parents[2] / "docs" / "hash-chain.md"
EVENTS_DOC = DOC.parent / "events.md"


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _section(doc: str, number: int) -> str:
    start = doc.index(f"\n## {number}. ")
    end = doc.find("\n## ", start + 1)
    return doc[start : end if end >= 0 else len(doc)]


def _json_blocks(text: str) -> list[str]:
    return re.findall(r"```json\n(.*?)\n```", text, re.S)


def test_the_example_event_is_canonical_and_hashes_as_stated(doc: str) -> None:
    section = _section(doc, 2)
    (block,) = _json_blocks(section)
    body = json.loads(block)
    assert canonical_dumps(body) == block.encode("utf-8")
    digest = hashlib.sha256(block.encode("utf-8")).hexdigest()
    assert f"hash: `{digest}`" in section
    head = chain_step("0" * 64, 1, digest)
    assert f"= `{head}`" in _section(doc, 5)


def test_the_float_table_is_what_canonical_json_writes(doc: str) -> None:
    values = [5.0, -0.0, 0.1, 0.0001, 0.00001, 0.00000015, 1e15, 1e16, 2.0**60, 1 / 3, -2.5833]
    table = re.findall(r"^\| [^|`]+ \| `([^`]+)` \|$", _section(doc, 1), re.M)
    assert table == [canonical_dumps(v).decode("ascii") for v in values]


def test_the_checkpoint_example_is_its_signing_payload(doc: str) -> None:
    (block,) = _json_blocks(_section(doc, 6))
    fields = json.loads(block)
    assert fields.pop("format") == "incidentledger.checkpoint.v1"
    assert signing_payload(**fields) == block.encode("utf-8")


def test_seal_and_key_id_sizes() -> None:
    assert len(sealed_bytes("0" * 64)) == 87
    key = Ed25519PrivateKey.generate()
    seal = Sealer(key).seal("0" * 64)
    kid, _, signature = seal.partition(":")
    assert (
        kid
        == hashlib.sha256(public_key_bytes(key)).hexdigest()[:16]
        == key_id(public_key_bytes(key))
    )
    assert len(signature) == 88 and len(base64.b64decode(signature)) == 64


def test_the_protobuf_time_examples(doc: str) -> None:
    examples = re.findall(r"`(\d{4}-[^`]{21}\+00:00)` → `([^`]+)`", _section(doc, 7))
    assert len(examples) == 3
    for canonical, proto in examples:
        assert _proto_time(canonical) == proto


def test_the_payload_is_the_body_without_the_listed_keys(doc: str) -> None:
    row = next(
        line for line in _section(doc, 7).splitlines() if line.startswith("| `payload_json`")
    )
    listed = row.split("the body without the keys", 1)[1].split(";", 1)[0]
    keys = set(re.findall(r"`(\w+)`", listed))
    assert keys == (ENVELOPE_FIELDS | {"type", "schema_version"}) - {"originator_topic", "seal"}


def _payload_fields() -> set[str]:
    text = EVENTS_DOC.read_text(encoding="utf-8").split("## Types", 1)[1]
    return set(re.findall(r"^\| `(\w+)` \|", text, re.M))


def test_the_body_table_and_the_export_line_order_match_real_events(
    doc: str, tmp_path: Path
) -> None:
    body_table = _section(doc, 2).split("| Key | Value |", 1)[1].split("\n\n", 1)[0]
    body_keys = {
        k
        for cell in re.findall(r"^\| ([^|]+) \|", body_table, re.M)
        for k in re.findall(r"`(\w+)`", cell)
    }
    members = re.findall(r"^\| `(\w+)`", _section(doc, 7).split("| Member | Value |", 1)[1], re.M)
    with store_environment("sqlite", tmp_path) as store_env:
        key = Ed25519PrivateKey.generate()
        ledger = Ledger(reference(), env=store_env, sealer=Sealer(key))
        try:
            build_history(ledger, extra=0)
            out = io.BytesIO()
            export_jsonl(ledger, out, workers=0)
            decoder = RawDecoder(ledger.mapper)
            bodies = [
                decoder.body(n.topic, n.originator_id, n.originator_version, n.state)
                for n in ledger.recorder.select_notifications(1, 10_000, topics=decoder.topics)
            ]
        finally:
            ledger.close()
    payload = _payload_fields()
    for body in bodies:
        assert set(body) - payload == body_keys, body["type"]
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    events = [line for line in lines if "canonical" in line]
    assert len(events) == len(bodies)
    # Keys of every event line in the documented order (those left out skipped), canonical last.
    expanded = [
        m
        for member in members
        for m in (
            [member]
            if member != "correlation_id"
            else ["correlation_id", "causation_id", "request_id", "previous_hash"]
        )
    ]
    for line in events:
        keys = list(line)
        assert keys[-1] == "canonical"
        assert keys[:-1] == [m for m in expanded if m in line]
        assert set(keys[:-1]) <= set(expanded)

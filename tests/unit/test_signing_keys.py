"""Files of public keys (LEDGER_RETIRED_SIGNING_KEYS_FILE, ledger-audit verify --public-key)
and a sealer that still trusts retired keys: services/ledger/audit/keys.py, seals.py."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.common.config import AuditSettings, ConfigError
from services.ledger.audit.keys import (
    load_public_keys,
    load_retired_keys,
    parse_public_keys,
    public_key_pem,
)
from services.ledger.seals import Sealer, key_id, public_key_bytes

OLD, OLDER, NEW = (Ed25519PrivateKey.generate() for _ in range(3))


def test_a_file_holds_pem_blocks_and_base64_lines_in_any_mix() -> None:
    old, older = public_key_bytes(OLD), public_key_bytes(OLDER)
    text = (
        b"# retired 2026-12-05, the yearly change\n"
        + public_key_pem(old)
        + b"\n"
        + base64.b64encode(older)
        + b"\n"
        + public_key_pem(old)  # listed twice: once
    )
    assert parse_public_keys(text) == (old, older)


@pytest.mark.parametrize(
    "text",
    [
        b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n",  # no end
        b"not a key\n",
        base64.b64encode(b"x" * 31) + b"\n",
    ],
)
def test_a_damaged_file_is_a_configuration_error(text: bytes) -> None:
    with pytest.raises(ConfigError):
        parse_public_keys(text)


def test_an_empty_file_and_a_missing_one_name_the_setting(tmp_path: Path) -> None:
    empty = tmp_path / "retired.pub"
    empty.write_bytes(b"# none yet\n")
    with pytest.raises(ConfigError, match="holds no public key"):
        load_public_keys(empty)
    missing = AuditSettings(retired_signing_keys_file=tmp_path / "nowhere.pub")
    with pytest.raises(ConfigError, match="LEDGER_RETIRED_SIGNING_KEYS_FILE"):
        load_retired_keys(missing)
    assert load_retired_keys(AuditSettings()) == ()


def test_a_sealer_seals_with_its_key_and_accepts_the_retired_keys_seals() -> None:
    digest = "ab" * 32
    old_seal = Sealer(OLD).seal(digest)
    sealer = Sealer(NEW, (public_key_bytes(OLD), public_key_bytes(NEW)))
    assert sealer.checker.retired == (public_key_bytes(OLD),)  # its own key is not retired
    assert sealer.seal(digest).startswith(f"{sealer.key_id}:")
    assert sealer.checker.signer(digest, sealer.seal(digest)) == sealer.key_id
    assert sealer.checker.signer(digest, old_seal) == key_id(public_key_bytes(OLD))
    assert sealer.checker.problem(digest, old_seal) is None
    # The key id a seal names proves nothing: the key that made it is the one reported.
    forged = f"{sealer.key_id}:{old_seal.partition(':')[2]}"
    assert sealer.checker.signer(digest, forged) == key_id(public_key_bytes(OLD))
    stranger = Sealer(OLDER).seal(digest)
    assert sealer.checker.signer(digest, stranger) is None
    assert "not any of the given keys" in str(sealer.checker.problem(digest, stranger))
    assert Sealer(NEW).checker.problem(digest, old_seal) is not None

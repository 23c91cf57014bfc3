"""Where ``ledgerctl --agency`` finds the development tokens when no file is named: in
``$LEDGER_DATA_DIR`` (where the services write them), else in ``data/`` of the current
directory or the nearest one above it (so it works from anywhere in a checkout)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from incidentledger_client.cli.config import (
    DEFAULT_TOKENS_FILE,
    ConfigError,
    default_tokens_file,
    resolve,
    token_for_agency,
)


def tokens_in(root: Path) -> Path:
    path = root / "data" / "credentials" / "dev-tokens.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("polres: {token: t}\n", encoding="utf-8")
    return path


def test_the_data_directory_setting_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEDGER_DATA_DIR", str(tmp_path / "elsewhere"))
    tokens_in(tmp_path)  # a checkout's file, which the setting overrides
    expected = tmp_path / "elsewhere" / "credentials" / "dev-tokens.yaml"
    assert default_tokens_file(tmp_path) == expected


def test_from_a_directory_of_the_checkout_the_checkouts_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LEDGER_DATA_DIR", raising=False)
    path = tokens_in(tmp_path)
    inner = tmp_path / "docs" / "examples"
    inner.mkdir(parents=True)
    assert default_tokens_file(inner) == path.resolve()
    assert default_tokens_file(tmp_path) == path.resolve()


def test_nowhere_found_the_current_directorys_path_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LEDGER_DATA_DIR", raising=False)
    # The error then names data/credentials/dev-tokens.yaml, as before.
    assert default_tokens_file(tmp_path) == DEFAULT_TOKENS_FILE


def test_the_services_file_of_token_hashes_is_named_as_such(tmp_path: Path) -> None:
    # A shell with the services' environment hands ledgerctl their LEDGER_TOKENS_FILE.
    hashes = tmp_path / "tokens.yaml"
    hashes.write_text(
        "users:\n- agency: polres\n  officer: duty\n  token_sha256: " + "a" * 64 + "\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="file of token hashes") as refused:
        token_for_agency("polres", hashes, "env LEDGER_TOKENS_FILE")
    assert "--tokens-file" in str(refused.value) and "LEDGER_TOKEN" in str(refused.value)


def refusal_with_a_token_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token: str, agency: str
) -> str:
    """ledgerctl --agency AGENCY in a shell with the services' environment: LEDGER_TOKEN set
    and LEDGER_TOKENS_FILE naming their file of token hashes."""
    hashes = tmp_path / "tokens.yaml"
    digest = hashlib.sha256(b"polres-token").hexdigest()
    hashes.write_text(
        f"users:\n- agency: polres\n  officer: aiptu.rahman\n  token_sha256: {digest}\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("HOME", str(tmp_path))  # no config file of the user's
    for name in ("LEDGERCTL_CONFIG", "LEDGERCTL_CONTEXT", "LEDGER_AGENCY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LEDGER_TOKEN", token)
    monkeypatch.setenv("LEDGER_TOKENS_FILE", str(hashes))
    with pytest.raises(ConfigError) as refused:
        resolve(
            address=None,
            notifier_address=None,
            token=None,
            agency=agency,
            tokens_file=None,
            config=None,
            timeout=None,
        )
    message = str(refused.value)
    # Before: 'give ledgerctl ... a token (--token, LEDGER_TOKEN)', which was set already.
    assert "a token (--token, LEDGER_TOKEN)" not in message
    assert "(env LEDGER_TOKEN)" in message and "file of token hashes" in message
    return message


def test_an_agency_with_its_own_token_set_is_told_to_drop_the_agency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = refusal_with_a_token_set(tmp_path, monkeypatch, "polres-token", "POLRES")
    assert "already a token of POLRES (officer aiptu.rahman)" in message
    assert "drop the agency (flag --agency) to act with it" in message


def test_an_agency_with_another_agency_s_token_set_is_told_whose_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = refusal_with_a_token_set(tmp_path, monkeypatch, "polres-token", "kpu")
    assert "is a token of polres (officer aiptu.rahman), not of kpu" in message
    assert "to act as polres, or give ledgerctl a token of kpu (--token)" in message


def test_an_agency_with_an_unlisted_token_set_is_told_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = refusal_with_a_token_set(tmp_path, monkeypatch, "someone-else", "polres")
    assert "is not listed there either" in message
    assert "--tokens-file data/credentials/dev-tokens.yaml" in message

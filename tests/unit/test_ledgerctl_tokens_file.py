"""Where ``ledgerctl --agency`` finds the development tokens when no file is named: in
``$LEDGER_DATA_DIR`` (where the services write them), else in ``data/`` of the current
directory or the nearest one above it (so it works from anywhere in a checkout)."""

from __future__ import annotations

from pathlib import Path

import pytest

from incidentledger_client.cli.config import (
    DEFAULT_TOKENS_FILE,
    ConfigError,
    default_tokens_file,
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

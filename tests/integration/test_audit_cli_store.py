"""``ledger-audit`` on a store it cannot reach or open: one line and exit status 2, no
verdict. It was a traceback and exit status 1, which ``verify`` otherwise means for a
history that diverges (docs/read-side-and-audit.md): an auditor's script took a database
that was down for tampering."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from services.common.natsserver import free_port
from services.ledger.audit.keys import generate_key_pair
from tests.support import module_env, run_module, store_environment


def audit(tmp_path: Path, store: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = module_env(LEDGER_DATA_DIR=str(tmp_path / "data"), LEDGER_LOG_FORMAT="json", **store)
    return run_module(["services.ledger.audit", *args], env)


@pytest.mark.parametrize("store", ["postgres", "sqlite"])
@pytest.mark.parametrize("command", ["verify", "export", "checkpoint"])
def test_a_store_the_audit_cannot_reach_gives_no_verdict_and_one_line(
    tmp_path: Path, store: str, command: str
) -> None:
    key = tmp_path / "keys" / "signing.key"
    key.parent.mkdir(mode=0o700)
    assert generate_key_pair(key) is not None
    if store == "postgres":  # a port nothing listens on
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_HOST": "127.0.0.1",
            "POSTGRES_PORT": str(free_port()),
            "POSTGRES_DBNAME": "ledger",
            "POSTGRES_USER": "ledger",
            "POSTGRES_PASSWORD": "none",
        }
    else:  # a path SQLite cannot open as a database: a directory
        (tmp_path / "ledger.sqlite").mkdir()
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(tmp_path / "ledger.sqlite"),
        }
    args = {
        "verify": ["verify", "--store", "--public-key", str(key.with_suffix(".pub"))],
        "export": ["export", "--out", str(tmp_path / "ledger.jsonl")],
        "checkpoint": ["checkpoint"],
    }[command]
    if command == "checkpoint":
        env["LEDGER_SIGNING_KEY_FILE"] = str(key)
    done = audit(tmp_path, env, *args)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stdout + done.stderr
    failed = [json.loads(line) for line in done.stdout.splitlines() if '"level": "error"' in line]
    assert [f["event"] for f in failed] == ["audit.store_unreachable"], done.stdout
    assert "POSTGRES_" in failed[0]["hint"] and "SQLITE_DBNAME" in failed[0]["hint"]


@pytest.mark.parametrize("store", ["postgres", "sqlite"])
@pytest.mark.parametrize("command", ["verify", "export"])
def test_a_store_that_is_not_there_is_not_made_and_gets_no_verdict(
    tmp_path: Path, store: str, command: str
) -> None:
    """A typo in the data directory or the schema: verify said "clean, 0 events" (exit 0)
    of an empty store it had just made, and export wrote an empty file."""
    key = tmp_path / "keys" / "signing.key"
    key.parent.mkdir(mode=0o700)
    assert generate_key_pair(key) is not None
    missing = tmp_path / "no-such-dir"
    out = tmp_path / "ledger.jsonl"
    args = {
        "verify": ["verify", "--store", "--public-key", str(key.with_suffix(".pub"))],
        "export": ["export", "--out", str(out)],
    }[command]
    with store_environment(store, tmp_path) as env:
        # SQLite: the data directory's default file, in a directory that is not there;
        # PostgreSQL: a schema no ledger ever ran in (made empty by the fixture).
        env = {k: v for k, v in env.items() if k != "SQLITE_DBNAME"}
        run_env = module_env(LEDGER_DATA_DIR=str(missing), LEDGER_LOG_FORMAT="json", **env)
        done = run_module(["services.ledger.audit", *args], run_env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "audit.verify.clean" not in done.stdout and "audit.exported" not in done.stdout
    assert not missing.exists() and not out.exists()
    failed = [json.loads(line) for line in done.stdout.splitlines() if '"level": "error"' in line]
    assert len(failed) == 1 and "SQLITE_DBNAME" in failed[0]["hint"], done.stdout

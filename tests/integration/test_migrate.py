"""``python -m services.ledger migrate`` on PostgreSQL: once before the replicas, and safe
when run twice at the same time (the schema lock makes concurrent runs take turns).

The processes run as the deployment runs them (deploy/): production settings, secrets
given as files (``*_FILE``), ``CREATE_TABLE=n`` left to the replicas.
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.common.config import PROJECT_ROOT
from services.common.sql import postgres_connect, schema_lock_key
from tests.fanout_support import wait_until
from tests.support import store_environment

pytestmark = pytest.mark.postgres

#: Tables that exist only once migrate has run (the event store's own tables come with them).
LEDGER_TABLES = {"relay_position", "ledger_checkpoints", "projection_position"}


@pytest.fixture
def pg_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    with store_environment("postgres", tmp_path) as env:
        yield env


def migrate_env(tmp_path: Path, store_env: dict[str, str]) -> dict[str, str]:
    """The migrate Job's environment: production, secrets in files, PostgreSQL."""
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir(exist_ok=True)
    key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (secret_dir / "signing.key").write_bytes(key)
    (secret_dir / "page-token-secret").write_text(secrets.token_hex(32) + "\n")
    kek = base64.b64encode(secrets.token_bytes(32)).decode()
    (secret_dir / "personal-data-keys").write_text(f"kek-test:{kek}\n")
    # Any password passes the test server's trust authentication; a real one is used if set.
    password = store_env.get("POSTGRES_PASSWORD") or secrets.token_hex(8)
    (secret_dir / "postgres-password").write_text(password + "\n")
    for key_file in ("signing.key", "personal-data-keys"):
        (secret_dir / key_file).chmod(0o600)  # production refuses a key others may read
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LEDGER_", "NOTIFIER_", "NATS_", "PERSISTENCE_", "SQLITE_"))
        and not k.startswith(("POSTGRES_", "CREATE_TABLE"))
    }
    store = {k: v for k, v in store_env.items() if k != "POSTGRES_PASSWORD"}
    return {
        **base,
        **store,
        "PYTHONPATH": os.pathsep.join(str(PROJECT_ROOT / p) for p in (".", "gen")),
        "LEDGER_ENVIRONMENT": "production",
        "LEDGER_DATA_DIR": str(tmp_path / "data"),
        "LEDGER_TOKENS_FILE": str(secret_dir / "tokens.yaml"),  # migrate does not read it
        "LEDGER_SIGNING_KEY_FILE": str(secret_dir / "signing.key"),
        "LEDGER_PAGE_TOKEN_SECRET_FILE": str(secret_dir / "page-token-secret"),
        "LEDGER_PERSONAL_DATA_KEYS_FILE": str(secret_dir / "personal-data-keys"),
        "POSTGRES_PASSWORD_FILE": str(secret_dir / "postgres-password"),
        "CREATE_TABLE": "n",
        "LEDGER_LOG_FORMAT": "json",
    }


def start_migrate(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.ledger", "migrate"],
        env=env,
        cwd=PROJECT_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"migrate did not finish: {output}")
    return process.returncode, output


def tables(store_env: dict[str, str]) -> set[str]:
    with postgres_connect(store_env, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (store_env["POSTGRES_SCHEMA"],),
        ).fetchall()
    return {str(row[0]) for row in rows}


def test_two_concurrent_migrations_both_succeed(tmp_path: Path, pg_env: dict[str, str]) -> None:
    env = migrate_env(tmp_path, pg_env)
    assert not tables(pg_env)
    first, second = start_migrate(env), start_migrate(env)
    for process in (first, second):
        code, output = finish(process)
        assert code == 0, output
        assert "ledger.migrated" in output
    created = tables(pg_env)
    assert created >= LEDGER_TABLES
    # The event store's tables too (their names are the eventsourcing library's).
    assert len(created) > len(LEDGER_TABLES)
    # Running it again changes nothing and succeeds.
    code, output = finish(start_migrate(env))
    assert code == 0, output
    assert tables(pg_env) == created


def waiting_for_advisory_lock(conn: psycopg.Connection[tuple[object, ...]], key: int) -> bool:
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND classid = %s AND objid = %s AND objsubid = 1",
        (unsigned >> 32, unsigned & 0xFFFF_FFFF),
    ).fetchone()
    return bool(row and int(str(row[0])) > 0)


def test_migrate_waits_for_the_schema_lock(tmp_path: Path, pg_env: dict[str, str]) -> None:
    """While another holder has the schema lock, migrate creates nothing; then it goes on."""
    env = migrate_env(tmp_path, pg_env)
    key = schema_lock_key(pg_env)
    with postgres_connect(pg_env, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        process = start_migrate(env)
        try:
            wait_until(
                lambda: waiting_for_advisory_lock(holder, key) or process.poll() is not None,
                60,
                "migrate to wait for the schema lock",
            )
            assert process.poll() is None, finish(process)[1]
            assert not tables(pg_env)
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", (key,))
        code, output = finish(process)
    assert code == 0, output
    assert "schema.lock_waiting" in output
    assert tables(pg_env) >= LEDGER_TABLES


def test_a_ledger_that_creates_its_tables_takes_the_schema_lock_first(
    tmp_path: Path, pg_env: dict[str, str]
) -> None:
    """Replicas started together on a new schema (CREATE_TABLE unset) take turns."""
    env = {
        **os.environ,
        **pg_env,
        "PYTHONPATH": os.pathsep.join(str(PROJECT_ROOT / p) for p in (".", "gen")),
        "LEDGER_DATA_DIR": str(tmp_path / "data"),
        "LEDGER_LISTEN": "127.0.0.1:0",
        "LEDGER_LOG_FORMAT": "json",
    }
    env.pop("CREATE_TABLE", None)
    env.pop("NATS_URL", None)
    log = tmp_path / "ledger.log"
    key = schema_lock_key(pg_env)

    def said_or_ended(event: bytes) -> bool:
        return event in log.read_bytes() or process.poll() is not None

    with postgres_connect(pg_env, autocommit=True) as holder, log.open("wb") as out:
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        process = subprocess.Popen(
            [sys.executable, "-m", "services.ledger"],
            env=env,
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            try:
                wait_until(
                    lambda: said_or_ended(b"schema.lock_waiting"),
                    60,
                    "the ledger to wait for the schema lock",
                )
                assert process.poll() is None, log.read_text()
                assert not tables(pg_env)  # nothing created while another holds the lock
            finally:
                holder.execute("SELECT pg_advisory_unlock(%s)", (key,))
            wait_until(
                lambda: said_or_ended(b"ledger.started"),
                60,
                "the ledger to start",
            )
            assert process.poll() is None, log.read_text()
            assert tables(pg_env) >= LEDGER_TABLES
        finally:
            process.terminate()
            process.wait(30)

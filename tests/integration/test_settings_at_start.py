"""A service started with invalid settings exits 2 at once with one structured log line."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path
from typing import cast

import pytest

from tests.integration.test_personal_keys_upgrade import FORMER
from tests.support import module_env, run_module, service_process


def start(module: list[str], tmp_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    return run_module(module, module_env(LEDGER_DATA_DIR=str(tmp_path / "data"), **settings))


@pytest.mark.parametrize(
    ("module", "settings", "event", "problems"),
    [
        (
            ["services.ledger"],
            {"LEDGER_GRACE_SECONDS": "-1", "LEDGER_STREAM_REPLICAS": "nine"},
            "ledger.config_error",
            [
                "LEDGER_STREAM_REPLICAS must be an integer (from 1 to 5), got 'nine'",
                "LEDGER_GRACE_SECONDS must not be negative, got '-1'",
            ],
        ),
        (
            ["services.ledger", "migrate"],
            {"PERSISTENCE_MODULE": "eventsourcing.mysql"},
            "ledger.config_error",
            [
                "PERSISTENCE_MODULE must be one of ['eventsourcing.popo', "
                "'eventsourcing.postgres', 'eventsourcing.sqlite'], got 'eventsourcing.mysql'"
            ],
        ),
        (
            ["services.notifier"],
            {"NATS_URL": "nats://127.0.0.1:1", "NOTIFIER_WEBHOOK_TIMEOUT_SECONDS": "-5"},
            "notifier.config_error",
            ["NOTIFIER_WEBHOOK_TIMEOUT_SECONDS must be positive, got '-5'"],
        ),
        (
            ["services.run"],
            {"LEDGER_NATS_PORT": "70000"},
            "run.config_error",
            ["LEDGER_NATS_PORT must be from 0 to 65535, got '70000'"],
        ),
    ],
)
def test_an_invalid_setting_stops_the_start_with_one_log_line(
    tmp_path: Path, module: list[str], settings: dict[str, str], event: str, problems: list[str]
) -> None:
    done = start(module, tmp_path, **settings)
    assert done.returncode == 2, done.stderr
    (line,) = done.stdout.splitlines()
    logged = json.loads(line)
    assert (logged["event"], logged["level"]) == (event, "error")
    assert logged["error"] == "; ".join(problems)
    assert not (tmp_path / "data").exists(), "nothing is created before the settings are checked"


def test_a_misspelt_setting_is_named_in_one_warning_and_the_ledger_starts(tmp_path: Path) -> None:
    """LEDGER_GRACE_SECOND=3 was ignored without a word: the grace period stayed 10 s."""
    env = {
        "LEDGER_DATA_DIR": str(tmp_path / "data"),
        "LEDGER_GRACE_SECOND": "3",
        "LEDGER_RATELIMIT_PER_SECOND": "5",
    }
    with service_process("services.ledger", env) as ledger:
        lines = ledger.log_lines()
    (warning,) = [line for line in lines if line["event"] == "config.unknown_variables"]
    assert warning["level"] == "warning"
    named, closest = cast(list[str], warning["variables"]), cast(dict[str, str], warning["closest"])
    assert {"LEDGER_GRACE_SECOND", "LEDGER_RATELIMIT_PER_SECOND"} <= set(named)
    assert closest["LEDGER_GRACE_SECOND"] == "LEDGER_GRACE_SECONDS"
    assert closest["LEDGER_RATELIMIT_PER_SECOND"] == "LEDGER_RATE_LIMIT_PER_SECOND"
    assert any(line["event"] == "ledger.started" for line in lines)


@pytest.mark.parametrize(
    ("module", "settings", "misspelt", "closest", "error"),
    [
        (
            ["services.ledger", "migrate"],
            {"LEDGER_SNAPSHOT_INTERVALS": "50"},
            "LEDGER_SNAPSHOT_INTERVALS",
            "LEDGER_SNAPSHOT_INTERVAL",
            None,
        ),
        (
            ["services.notifier"],
            {"NATS_ULR": "nats://127.0.0.1:1"},
            "NATS_ULR",
            "NATS_URL",
            "notifier.config_error",
        ),
        (
            ["services.situation_room"],
            {
                "LEDGER_ENVIRONMENT": "production",
                "SITUATION_ROOM_TOKEN": "a-token-of-the-coordinator",
                "SITUATION_ROOM_SESION_KEY_FILE": "/run/secrets/session-key",
            },
            "SITUATION_ROOM_SESION_KEY_FILE",
            "SITUATION_ROOM_SESSION_KEY_FILE",
            "situation_room.config_error",
        ),
    ],
)
def test_a_misspelt_setting_is_named_before_the_start_goes_on_or_is_refused(
    tmp_path: Path,
    module: list[str],
    settings: dict[str, str],
    misspelt: str,
    closest: str,
    error: str | None,
) -> None:
    """A required setting refused as missing is often one given under a misspelt name: the
    warning comes before the refusal, in a start that is refused too."""
    done = start(module, tmp_path, **settings)
    assert done.returncode == (0 if error is None else 2), done.stdout + done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    (warning,) = [line for line in lines if line["event"] == "config.unknown_variables"]
    assert warning["level"] == "warning"
    assert (warning["variables"], warning["closest"]) == ([misspelt], {misspelt: closest})
    if error is not None:
        assert [line["event"] for line in lines] == ["config.unknown_variables", error]


def test_a_secret_file_that_cannot_be_read_stops_the_start_naming_the_variable(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "nowhere"
    done = start(["services.ledger"], tmp_path, POSTGRES_PASSWORD_FILE=str(missing))
    assert done.returncode == 2, done.stderr
    (line,) = done.stdout.splitlines()
    assert json.loads(line)["error"] == (
        f"POSTGRES_PASSWORD_FILE: cannot read {missing}: No such file or directory"
    )


def _key_file(tmp_path: Path, name: str, text: str, mode: int) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    ("module", "variable", "event"),
    [
        (["services.ledger"], "LEDGER_SIGNING_KEY_FILE", "ledger.config_error"),
        (["services.ledger", "migrate"], "LEDGER_PERSONAL_DATA_KEYS_FILE", "ledger.config_error"),
        (["services.notifier"], "NOTIFIER_WEBHOOK_KEY_FILE", "notifier.config_error"),
        (["services.notifier"], "LEDGER_TOKENS_FILE", "notifier.config_error"),
    ],
)
def test_production_refuses_a_key_file_others_may_read(
    tmp_path: Path, module: list[str], variable: str, event: str
) -> None:
    files = {
        name: str(_key_file(tmp_path, name.lower(), "k" * 32 + "\n", 0o600))
        for name in (
            "LEDGER_TOKENS_FILE",
            "LEDGER_SIGNING_KEY_FILE",
            "LEDGER_PERSONAL_DATA_KEYS_FILE",
            "NOTIFIER_WEBHOOK_KEY_FILE",
            "LEDGER_PAGE_TOKEN_SECRET_FILE",
        )
    }
    open_file = Path(files[variable])
    open_file.chmod(0o644)
    done = start(
        module,
        tmp_path,
        LEDGER_ENVIRONMENT="production",
        NATS_URL="nats://127.0.0.1:1",
        **files,
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stdout.splitlines()
    logged = json.loads(line)
    assert logged["event"] == event
    assert logged["error"] == (
        f"{variable}: {open_file} is mode 0644, readable by others than the service's user: "
        f"chmod 600 {open_file}"
    )


@pytest.mark.parametrize(
    ("module", "event"),
    [
        (["services.ledger"], "ledger.store_unreachable"),
        (["services.ledger", "migrate"], "ledger.store_unreachable"),
        (["services.notifier"], "notifier.store_unreachable"),
    ],
)
def test_a_store_that_cannot_be_reached_stops_the_start_with_one_log_line(
    tmp_path: Path, module: list[str], event: str
) -> None:
    # Port 1 of loopback: nothing listens there (the machine's own PostgreSQL is not used).
    done = start(
        module,
        tmp_path,
        PERSISTENCE_MODULE="eventsourcing.postgres",
        NOTIFIER_STORE="postgres",
        POSTGRES_HOST="127.0.0.1",
        POSTGRES_PORT="1",
        POSTGRES_DBNAME="none",
        POSTGRES_USER="none",
        POSTGRES_PASSWORD="none",
        NATS_URL="nats://127.0.0.1:1",
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    failed = [json.loads(line) for line in done.stdout.splitlines() if '"level": "error"' in line]
    assert [(f["event"], f["level"]) for f in failed] == [(event, "error")], done.stdout
    assert "port 1 failed" in failed[0]["error"] and "POSTGRES_" in failed[0]["hint"]


@pytest.mark.parametrize("store", ["empty", "former_key_table"])
def test_a_store_not_migrated_stops_a_replica_with_one_log_line(tmp_path: Path, store: str) -> None:
    """A replica (CREATE_TABLE=n) started before `migrate`: on a new store its tables are
    missing; on a store of a version before the key table's current layout, that table is
    in its former one. Either way one line, store_not_migrated, naming migrate, and exit 1
    (the second was ledger.config_error, exit 2, as for a wrong setting)."""
    database = tmp_path / "ledger.sqlite"
    if store == "former_key_table":
        with closing(sqlite3.connect(database)) as db, db:
            for statement in FORMER:
                db.execute(statement)
    done = start(
        ["services.ledger"],
        tmp_path,
        SQLITE_DBNAME=str(database),
        CREATE_TABLE="n",
        NATS_URL="nats://127.0.0.1:1",
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    failed = [json.loads(line) for line in done.stdout.splitlines() if '"level": "error"' in line]
    assert [f["event"] for f in failed] == ["ledger.store_not_migrated"], done.stdout
    assert "incident-ledger migrate" in failed[0]["hint"]


def _without_root_powers() -> list[str]:
    """A prefix that runs a command as this user without root's power to ignore file modes
    (where the tests run as root), so that a mode-000 file refuses it as it refuses a
    service's own user."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: file modes would not apply")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


@pytest.mark.parametrize(
    ("module", "unreadable"),
    [
        (["services.ledger"], "data"),
        (["services.notifier"], "data"),
        (["services.ledger"], "data/keys/ledger-signing.key"),
        (["services.ledger"], "data/keys/personal-data.keys"),
        (["services.ledger"], "data/page-token.secret"),
        (["services.ledger", "migrate"], "data/ledger.sqlite"),
        (["services.run", "--services=services.ledger"], "data"),
    ],
)
def test_a_data_file_its_user_may_not_read_stops_the_start_with_one_log_line(
    tmp_path: Path, module: list[str], unreadable: str
) -> None:
    """A data directory or a file in it that the service's user may not read (made by root
    before the service ran as its own user, restored from a backup with the wrong owner):
    the start ended in a traceback and exit status 1. Now one line naming the path and
    what to check, and exit status 2, as for an unreadable secret file named by a setting."""
    data = tmp_path / "data"
    (data / "keys").mkdir(parents=True, mode=0o700)
    path = tmp_path / unreadable
    if path != data:
        path.write_text("")  # never read: opening it fails
    path.chmod(0)
    try:
        env = module_env(
            LEDGER_DATA_DIR=str(data),
            LEDGER_LOG_FORMAT="json",
            NATS_URL="nats://127.0.0.1:1",
            LEDGER_LISTEN="127.0.0.1:0",
            NOTIFIER_LISTEN="127.0.0.1:0",
        )
        if module[0] == "services.run":  # its own NATS, whose store is in the data directory
            del env["NATS_URL"]
            env["LEDGER_NATS_PORT"] = "0"
        done = run_module(module, env, prefix=_without_root_powers())
    finally:
        path.chmod(0o700)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stdout + done.stderr
    failed = [json.loads(line) for line in done.stdout.splitlines() if '"level": "error"' in line]
    service = module[0].split(".")[1]  # ledger, notifier, run (make run's supervisor)
    assert [f["event"] for f in failed] == [f"{service}.file_not_accessible"], done.stdout
    assert failed[0]["path"].startswith(str(path)), failed[0]
    assert failed[0]["error"] == "Permission denied"
    assert "chmod" in failed[0]["hint"] and str(os.geteuid()) in failed[0]["hint"]


def _layout(database: Path, service: str, version: int | None = None) -> int | None:
    """The layout of ``service``'s tables the store records (and, given ``version``, the
    one a later version's migrate leaves there)."""
    with closing(sqlite3.connect(database)) as db, db:
        if version is not None:
            db.execute(
                "CREATE TABLE IF NOT EXISTS incidentledger_store_format ("
                "service TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
            db.execute(
                "INSERT INTO incidentledger_store_format (service, version) VALUES (?, ?) "
                "ON CONFLICT (service) DO UPDATE SET version = excluded.version",
                (service, version),
            )
        row = db.execute(
            "SELECT version FROM incidentledger_store_format WHERE service = ?", (service,)
        ).fetchone()
    return None if row is None else int(row[0])


@pytest.mark.parametrize(
    ("service", "commands"),
    [
        ("ledger", [["services.ledger"], ["services.ledger", "migrate"]]),
        ("notifier", [["services.notifier"]]),
    ],
)
def test_a_store_a_later_version_migrated_stops_the_start_with_one_log_line(
    tmp_path: Path, service: str, commands: list[list[str]]
) -> None:
    """An older version started on a store that a later one migrated read the newer tables
    as it knew them and wrote rows the newer version refuses, and nothing stopped it. Each
    service now records the layout of its tables, and one that finds a later layout stops
    before it reads or writes anything: one line, store_too_new, exit 1."""
    database = tmp_path / "data" / f"{service}.sqlite"
    database.parent.mkdir(mode=0o700)
    settings = {
        "SQLITE_DBNAME": str(database),
        "NOTIFIER_SQLITE_DBNAME": str(database),
        "NATS_URL": "nats://127.0.0.1:1",
    }
    if service == "ledger":  # a store this version made: it records its layout
        made = start(["services.ledger", "migrate"], tmp_path, **settings)
        assert made.returncode == 0, made.stdout + made.stderr
        assert _layout(database, service) == 1
    assert _layout(database, service, version=2) == 2  # as a later version's migrate leaves it
    for command in commands:
        done = start(command, tmp_path, **settings)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        failed = [json.loads(x) for x in done.stdout.splitlines() if '"level": "error"' in x]
        assert [f["event"] for f in failed] == [f"{service}.store_too_new"], done.stdout
        assert "layout 2" in failed[0]["error"] and "restore the backup" in failed[0]["hint"]
        assert _layout(database, service) == 2  # not written back to this version's

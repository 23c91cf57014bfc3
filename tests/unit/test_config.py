"""Settings from the environment and the credentials policy at start."""

from __future__ import annotations

import os
import re
import socket
import stat
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import structlog

from services.common import config
from services.common.auth import generate_dev_credentials, shared_secret, token_hash
from services.common.config import (
    ConfigError,
    LedgerSettings,
    NotifierSettings,
    SituationRoomSettings,
    check_ledger_production,
    nats_servers,
)
from services.common.sql import postgres_connect
from services.common.started import STARTED_FILE_VARIABLE
from services.ledger.personal_keys import KeyRing
from services.ledger.server import load_tokens, open_personal_keys
from tests.support import REFERENCE_FILE, reference


def test_defaults_use_sqlite_in_the_data_directory(tmp_path: Path) -> None:
    settings = LedgerSettings.from_env({"LEDGER_DATA_DIR": str(tmp_path)})
    assert settings.listen == "127.0.0.1:50051"
    assert settings.store_env["PERSISTENCE_MODULE"] == "eventsourcing.sqlite"
    assert settings.store_env["SQLITE_DBNAME"] == str(tmp_path / "ledger.sqlite")
    assert settings.resolved_tokens_file == tmp_path / "credentials" / "tokens.yaml"


def test_the_write_cache_size_is_a_setting() -> None:
    assert LedgerSettings.from_env({}).cache_size == 3000
    assert LedgerSettings.from_env({"LEDGER_CACHE_SIZE": "0"}).cache_size == 0
    assert LedgerSettings.from_env({"LEDGER_CACHE_SIZE": "20000"}).cache_size == 20000


def test_the_times_callers_may_state_are_settings() -> None:
    default = LedgerSettings.from_env({})
    assert default.earliest_time == datetime(2000, 1, 1, tzinfo=UTC)
    assert (default.max_clock_skew_seconds, default.max_decision_days) == (300, 366)
    given = LedgerSettings.from_env(
        {
            "LEDGER_EARLIEST_TIME": "2024-01-01",
            "LEDGER_MAX_CLOCK_SKEW_SECONDS": "30",
            "LEDGER_MAX_DECISION_DAYS": "90",
        }
    )
    assert given.earliest_time == datetime(2024, 1, 1, tzinfo=UTC)  # UTC unless it says
    assert (given.max_clock_skew_seconds, given.max_decision_days) == (30, 90)


def test_store_variables_pass_through() -> None:
    settings = LedgerSettings.from_env(
        {"PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_HOST": "db", "HOME": "/x"}
    )
    assert settings.store_env == {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_HOST": "db",
        "POSTGRES_CONNECT_TIMEOUT": "3",  # the default: the library's 30 s is far too long
    }
    given = LedgerSettings.from_env(
        {"PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_CONNECT_TIMEOUT": "2"}
    )
    assert given.store_env["POSTGRES_CONNECT_TIMEOUT"] == "2"


def test_nats_url_names_one_server_or_the_nodes_of_a_cluster() -> None:
    assert nats_servers("nats://127.0.0.1:4222") == ["nats://127.0.0.1:4222"]
    assert nats_servers(" nats://a:4222, nats://b:4222,,nats://c:4222 ") == [
        "nats://a:4222",
        "nats://b:4222",
        "nats://c:4222",
    ]
    cluster = {"NATS_URL": "nats://a:4222,nats://b:4222", "LEDGER_STREAM_REPLICAS": "3"}
    ledger = LedgerSettings.from_env(cluster)
    notifier = NotifierSettings.from_env(cluster)
    assert nats_servers(ledger.relay.nats_url) == ["nats://a:4222", "nats://b:4222"]
    assert nats_servers(notifier.nats_url) == ["nats://a:4222", "nats://b:4222"]
    assert ledger.relay.stream.replicas == notifier.stream.replicas == 3


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LEDGER_MAX_WORKERS": "many"}, "LEDGER_MAX_WORKERS must be an integer"),
        ({"LEDGER_MAX_WORKERS": "0"}, "LEDGER_MAX_WORKERS must be at least 1"),
        ({"LEDGER_CACHE_SIZE": "-1"}, "LEDGER_CACHE_SIZE must be at least 0"),
        ({"LEDGER_EARLIEST_TIME": "long ago"}, "LEDGER_EARLIEST_TIME must be an ISO-8601"),
        ({"LEDGER_MAX_CLOCK_SKEW_SECONDS": "-1"}, "LEDGER_MAX_CLOCK_SKEW_SECONDS must not be"),
        ({"LEDGER_ENVIRONMENT": "staging"}, "LEDGER_ENVIRONMENT must be one of"),
        ({"LEDGER_LOG_LEVEL": "LOUD"}, "LEDGER_LOG_LEVEL must be one of"),
        (
            {"LEDGER_ENVIRONMENT": "production", "LEDGER_TOKENS_FILE": "/t.yaml"},
            "LEDGER_PAGE_TOKEN_SECRET is required in production",
        ),
        (
            {"LEDGER_ENVIRONMENT": "production", "LEDGER_PAGE_TOKEN_SECRET": "s" * 32},
            "LEDGER_TOKENS_FILE is required in production",
        ),
        (
            {
                "LEDGER_ENVIRONMENT": "production",
                "LEDGER_PAGE_TOKEN_SECRET": "s" * 32,
                "LEDGER_TOKENS_FILE": "/t.yaml",
            },
            "LEDGER_SIGNING_KEY_FILE is required in production",
        ),
        (
            {
                "LEDGER_ENVIRONMENT": "production",
                "LEDGER_PAGE_TOKEN_SECRET": "s" * 32,
                "LEDGER_TOKENS_FILE": "/t.yaml",
                "LEDGER_SIGNING_KEY_FILE": "/k.pem",
                "PERSISTANCE_MODULE": "eventsourcing.postgres",  # misspelt: SQLite it would be
                "POSTGRES_HOST": "db",
                "POSTGRES_DBNAME": "ledger",
            },
            "POSTGRES_DBNAME, POSTGRES_HOST set, but PERSISTENCE_MODULE does not choose",
        ),
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LedgerSettings.from_env(env)


def test_a_production_start_names_every_missing_setting_at_once() -> None:
    with pytest.raises(ConfigError) as refused:
        check_ledger_production({"LEDGER_ENVIRONMENT": "production"})
    assert [p.split(" ")[0] for p in refused.value.problems] == [
        "LEDGER_PAGE_TOKEN_SECRET",
        "LEDGER_TOKENS_FILE",
        "LEDGER_SIGNING_KEY_FILE",
        "LEDGER_PERSONAL_DATA_KEYS",
    ]
    assert str(refused.value).count("; ") == 3
    given = {
        "LEDGER_ENVIRONMENT": "production",
        "LEDGER_PAGE_TOKEN_SECRET": "s" * 32,
        "LEDGER_TOKENS_FILE": "/t.yaml",
        "LEDGER_SIGNING_KEY_FILE": "/k.pem",
        "LEDGER_PERSONAL_DATA_KEYS": "kek-1:" + "A" * 43 + "=",
    }
    check_ledger_production(given)  # all there: nothing to say
    check_ledger_production({})  # development: nothing is required


def test_first_development_start_generates_credentials(tmp_path: Path) -> None:
    settings = LedgerSettings(data_dir=tmp_path, reference_file=REFERENCE_FILE)
    tokens = load_tokens(settings, reference())
    assert tokens.development
    assert tokens.agencies() == set(reference().agencies)
    text = (tmp_path / "credentials" / "tokens.yaml").read_text()
    plain = (tmp_path / "credentials" / "dev-tokens.yaml").read_text()
    assert "token_sha256" in text
    token = plain.split("token: ")[1].split()[0]
    assert token not in text
    assert token_hash(token) in text
    # A second start keeps the same credentials.
    assert load_tokens(settings, reference()).agencies() == tokens.agencies()
    assert (tmp_path / "credentials" / "dev-tokens.yaml").read_text() == plain


def test_production_refuses_development_credentials(tmp_path: Path) -> None:
    tokens_file = generate_dev_credentials(tmp_path, reference().agencies)
    settings = LedgerSettings.from_env(
        {
            "LEDGER_ENVIRONMENT": "production",
            "LEDGER_TOKENS_FILE": str(tokens_file),
            "LEDGER_PAGE_TOKEN_SECRET": "a-long-enough-secret-for-tokens",
            "LEDGER_SIGNING_KEY_FILE": str(tmp_path / "signing.key"),
            "LEDGER_DATA_DIR": str(tmp_path),
        }
    )
    with pytest.raises(ConfigError, match="development credentials"):
        load_tokens(settings, reference())


def test_production_refuses_the_development_page_token_secret_whatever_its_file(
    tmp_path: Path,
) -> None:
    """make run's page-token.secret, copied or pointed at, signed a production service's
    page tokens with a secret the development machine keeps too."""
    generated = tmp_path / "data" / "page-token.secret"
    secret = shared_secret(generated)
    copied = tmp_path / "page-token-secret"
    copied.write_bytes(generated.read_bytes())
    production = {
        "LEDGER_ENVIRONMENT": "production",
        "LEDGER_TOKENS_FILE": "/t.yaml",
        "LEDGER_SIGNING_KEY_FILE": "/k.pem",
        "NOTIFIER_WEBHOOK_KEY_FILE": "/w.key",
        "NATS_URL": "nats://127.0.0.1:4222",
    }
    for named in (copied, generated):
        given = {**production, "LEDGER_PAGE_TOKEN_SECRET_FILE": str(named)}
        for service in (LedgerSettings, NotifierSettings):
            with pytest.raises(
                ConfigError,
                match=f"LEDGER_PAGE_TOKEN_SECRET_FILE {named} is a development secret",
            ):
                service.from_env(given)
    # Given in the clear, it is refused under that name.
    with pytest.raises(ConfigError, match=r"^LEDGER_PAGE_TOKEN_SECRET is a development secret"):
        LedgerSettings.from_env({**production, "LEDGER_PAGE_TOKEN_SECRET": secret.decode()})
    # Outside production the file gives the secret the services keep for themselves.
    configured = LedgerSettings.from_env({"LEDGER_PAGE_TOKEN_SECRET_FILE": str(copied)})
    assert configured.page_token_secret == secret == shared_secret(generated)
    # A secret made for production (openssl rand -hex 32) is taken.
    made = tmp_path / "made"
    made.write_text(os.urandom(32).hex() + "\n")
    LedgerSettings.from_env({**production, "LEDGER_PAGE_TOKEN_SECRET_FILE": str(made)})


def test_production_refuses_the_development_session_key_of_the_situation_room(
    tmp_path: Path,
) -> None:
    generated = tmp_path / "data" / "situation-room-session.secret"
    shared_secret(generated)
    production = {
        "LEDGER_ENVIRONMENT": "production",
        "SITUATION_ROOM_TOKEN": "a-token-of-the-coordinator",
        "SITUATION_ROOM_SESSION_KEY_FILE": str(generated),
    }
    with pytest.raises(
        ConfigError, match=f"SITUATION_ROOM_SESSION_KEY_FILE {generated} is a development secret"
    ):
        SituationRoomSettings.from_env(production)
    made = tmp_path / "made"
    made.write_text(os.urandom(32).hex() + "\n")
    SituationRoomSettings.from_env({**production, "SITUATION_ROOM_SESSION_KEY_FILE": str(made)})


def test_production_never_generates_credentials(tmp_path: Path) -> None:
    settings = LedgerSettings.from_env(
        {
            "LEDGER_ENVIRONMENT": "production",
            "LEDGER_TOKENS_FILE": str(tmp_path / "missing.yaml"),
            "LEDGER_PAGE_TOKEN_SECRET": "a-long-enough-secret-for-tokens",
            "LEDGER_SIGNING_KEY_FILE": str(tmp_path / "signing.key"),
            "LEDGER_DATA_DIR": str(tmp_path),
        }
    )
    with pytest.raises(ConfigError, match="does not exist"):
        load_tokens(settings, reference())
    assert not (tmp_path / "credentials").exists()


def test_tokens_naming_unknown_agencies_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(f"users:\n  - {{agency: fbi, officer: x, token_sha256: {'a' * 64}}}\n")
    settings = LedgerSettings(data_dir=tmp_path, tokens_file=path, reference_file=REFERENCE_FILE)
    with pytest.raises(ConfigError, match="unknown agency 'fbi'"):
        load_tokens(settings, reference())


@pytest.mark.parametrize(
    "digest",
    ["z" * 64, "q2hhbmdlIG1lIHBsZWFzZSwgdGhpcyBpcyBub3QgYSBzaGEyNTYgaGV4IGRpZ2Vz", "ab" * 31, 1234],
)
def test_a_token_hash_that_is_not_sha256_hex_is_refused(tmp_path: Path, digest: object) -> None:
    """64 characters of base64 (or any non-hex) would match no token at all."""
    path = tmp_path / "tokens.yaml"
    path.write_text(
        f"users:\n  - {{agency: polres, officer: aiptu.rahman, token_sha256: {digest}}}\n"
    )
    settings = LedgerSettings(data_dir=tmp_path, tokens_file=path, reference_file=REFERENCE_FILE)
    with pytest.raises(ConfigError, match=r"users\[0\]\.token_sha256 is not a SHA-256 hex"):
        load_tokens(settings, reference())


@pytest.mark.parametrize(
    ("entry", "refusal"),
    [
        (
            "{agency: polres, officer: aiptu.rahman, token: a-bearer-token-of-his}",
            "users[1] (agency polres, officer aiptu.rahman) has no token_sha256: the SHA-256 "
            "hex of the officer's bearer token (printf %s TOKEN | sha256sum), never the token "
            "itself; it has `token` instead, which this file never holds: replace it by its "
            "token_sha256",
        ),
        (
            f"{{agency: polres, token_sha256: {'ab' * 32}}}",
            "users[1] (agency polres) has no officer: the officer's name",
        ),
        (
            f"{{officer: aiptu.rahman, token_sha256: {'ab' * 32}}}",
            "users[1] (officer aiptu.rahman) has no agency: the agency's code in the reference "
            "data",
        ),
        ("aiptu.rahman", "users[1] is not an entry of keys: agency: the agency's code"),
    ],
)
def test_a_malformed_tokens_entry_is_named_with_the_key_it_lacks(
    tmp_path: Path, entry: str, refusal: str
) -> None:
    """Before: "malformed tokens file …: KeyError('token_sha256')", whichever entry it was."""
    path = tmp_path / "tokens.yaml"
    path.write_text(
        f"users:\n  - {{agency: kpu, officer: operator.dewi, token_sha256: {'cd' * 32}}}\n"
        f"  - {entry}\n"
    )
    settings = LedgerSettings(data_dir=tmp_path, tokens_file=path, reference_file=REFERENCE_FILE)
    with pytest.raises(ConfigError) as refused:
        load_tokens(settings, reference())
    assert str(refused.value).startswith(f"{path}: {refusal}")
    assert "a-bearer-token-of-his" not in str(refused.value)


@pytest.mark.parametrize("text", ["", "users: polres\n", "- {agency: polres}\n"])
def test_a_tokens_file_without_a_list_of_users_says_what_it_holds(
    tmp_path: Path, text: str
) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(text)
    settings = LedgerSettings(data_dir=tmp_path, tokens_file=path, reference_file=REFERENCE_FILE)
    with pytest.raises(ConfigError, match=r"holds `users:`, a list with one entry per officer"):
        load_tokens(settings, reference())


def test_a_token_hash_given_to_two_users_is_refused(tmp_path: Path) -> None:
    """Two lines with one hash (a rotation that copied a line and kept the old hash): the
    token would act as whichever line came last, so the file is refused, naming both."""
    path = tmp_path / "tokens.yaml"
    digest = "ab" * 32
    path.write_text(
        "users:\n"
        f"  - {{agency: polres, officer: aiptu.rahman, token_sha256: {digest}}}\n"
        f"  - {{agency: kpu, officer: operator.dewi, token_sha256: {digest.upper()}}}\n"
    )
    settings = LedgerSettings(data_dir=tmp_path, tokens_file=path, reference_file=REFERENCE_FILE)
    with pytest.raises(
        ConfigError, match=r"users\[1\].*same token_sha256 as users\[0\]"
    ) as refused:
        load_tokens(settings, reference())
    assert digest not in str(refused.value).lower()


@pytest.mark.timeout(30)  # psycopg's own default would wait 130 s
def test_a_postgres_server_that_never_answers_fails_within_the_connect_timeout() -> None:
    # A socket that accepts connections (the kernel's backlog) and never speaks.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        env = LedgerSettings.from_env(
            {
                "PERSISTENCE_MODULE": "eventsourcing.postgres",
                "POSTGRES_HOST": "127.0.0.1",
                "POSTGRES_PORT": str(silent.getsockname()[1]),
                "POSTGRES_CONNECT_TIMEOUT": "1",
            }
        ).store_env
        with pytest.raises(psycopg.OperationalError):
            postgres_connect(env)


def test_the_notifier_s_postgres_store_gets_the_connect_timeout_default() -> None:
    settings = NotifierSettings.from_env(
        {"NATS_URL": "nats://n:4222", "NOTIFIER_STORE": "postgres", "POSTGRES_PORT": "6543"}
    )
    assert settings.store_env["POSTGRES_CONNECT_TIMEOUT"] == "3"
    assert settings.store_env["POSTGRES_PORT"] == "6543"


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_a_number_setting_must_be_finite(value: str) -> None:
    with pytest.raises(ConfigError, match="LEDGER_RATE_LIMIT_PER_SECOND must be a finite number"):
        LedgerSettings.from_env({"LEDGER_RATE_LIMIT_PER_SECOND": value})


@pytest.mark.parametrize("value", [",", " , "])
def test_a_nats_url_that_names_no_server_is_refused_not_ignored(value: str) -> None:
    with pytest.raises(ConfigError, match="NATS_URL names no server"):
        LedgerSettings.from_env({"NATS_URL": value})


def test_a_blank_nats_url_is_unset_and_the_ledger_runs_without_a_relay() -> None:
    assert LedgerSettings.from_env({"NATS_URL": "  "}).relay.nats_url == ""


def test_a_production_notifier_given_postgres_settings_must_choose_its_store() -> None:
    env = {
        "LEDGER_ENVIRONMENT": "production",
        "LEDGER_PAGE_TOKEN_SECRET": "s" * 32,
        "LEDGER_TOKENS_FILE": "/t.yaml",
        "NATS_URL": "nats://nats:4222",
        "POSTGRES_HOST": "db",
    }
    with pytest.raises(ConfigError, match="NOTIFIER_STORE does not choose PostgreSQL"):
        NotifierSettings.from_env(env)
    # In development the same environment is taken (a developer's shell may hold POSTGRES_
    # variables for the PostgreSQL tests while running SQLite).
    development = {k: v for k, v in env.items() if k != "LEDGER_ENVIRONMENT"}
    assert NotifierSettings.from_env(development).store_env["PERSISTENCE_MODULE"] == (
        "eventsourcing.sqlite"
    )


@pytest.mark.parametrize(
    "url", ["nats//127.0.0.1:4222", "http://nats:4222", "nats://nats:99999", "nats://:4222"]
)
def test_a_nats_url_that_names_no_nats_server_is_refused_without_quoting_it(url: str) -> None:
    with pytest.raises(ConfigError, match="NATS_URL: server 1 is not a NATS address") as refused:
        LedgerSettings.from_env({"NATS_URL": url})
    assert url not in str(refused.value)  # it may embed a password
    with pytest.raises(ConfigError, match="server 2 is not"):
        nats_servers(f"nats://a:4222,{url}")
    assert nats_servers("nats://a:4222, tls://u:p@b:4222,127.0.0.1:4222") == [
        "nats://a:4222",
        "tls://u:p@b:4222",
        "127.0.0.1:4222",
    ]


def _stat(mode: int, uid: int) -> os.stat_result:
    return os.stat_result((stat.S_IFREG | mode, 0, 0, 1, uid, 0, 32, 0, 0, 0))


@pytest.mark.parametrize(
    ("mode", "own", "refused"),
    [
        (0o600, True, False),
        (0o400, True, False),
        (0o640, True, True),  # the group of the service's own file: ssh refuses it too
        (0o604, True, True),
        (0o644, False, True),  # others may read it, whoever owns it
        (0o440, False, False),  # a Kubernetes Secret: root's, the pod's fsGroup, 0440
    ],
)
def test_which_key_file_modes_are_open_to_others(mode: int, own: bool, refused: bool) -> None:
    uid = os.geteuid() if own else os.geteuid() + 1
    assert config._open_to_others(_stat(mode, uid)) is refused


def test_development_warns_of_a_key_file_others_may_read(tmp_path: Path) -> None:
    key = tmp_path / "signing.key"
    key.write_text("k" * 32)
    key.chmod(0o644)
    webhook_key = tmp_path / "webhook.key"
    webhook_key.write_text("k" * 32)
    webhook_key.chmod(0o644)  # the notifier's: the ledger does not read it
    settings = LedgerSettings.from_env(
        {
            "LEDGER_DATA_DIR": str(tmp_path),
            "LEDGER_SIGNING_KEY_FILE": str(key),
            "NOTIFIER_WEBHOOK_KEY_FILE": str(webhook_key),
        }
    )
    with structlog.testing.capture_logs() as logs:
        config.warn_open_key_files(settings, structlog.get_logger("services.ledger"))
    assert logs == [
        {
            "event": "config.key_file_readable",
            "log_level": "warning",
            "variable": "LEDGER_SIGNING_KEY_FILE",
            "file": str(key),
            "mode": "0644",
            "fix": f"chmod 600 {key}",
        }
    ]


def test_variables_with_the_project_s_prefixes_that_nothing_reads_are_found() -> None:
    given = {
        "LEDGER_GRACE_SECOND": "3",
        "LEDGER_RATELIMIT_PER_SECOND": "5",
        "NOTIFIER_WEBHOOK_KEY": "/run/secrets/key",  # the _FILE left out
        "LEDGER_ZZZ": "1",  # close to nothing
        # Read: declared, a secret's _FILE, the library's own, the client's, the supervisor's.
        "LEDGER_GRACE_SECONDS": "3",
        "POSTGRES_PASSWORD_FILE": "/p",
        "POSTGRES_PRE_PING": "y",
        "LEDGER_TOKEN": "t",
        "LEDGER_RUN_STARTED_FILE": "/s",
        # Other prefixes are not the project's.
        "HOME": "/root",
        "LEDGERCTL_ZONE": "Asia/Jakarta",
        "PERSISTENCE_MODULEX": "x",
    }
    assert config.unknown_variables(given) == {
        "LEDGER_GRACE_SECOND": "LEDGER_GRACE_SECONDS",
        "LEDGER_RATELIMIT_PER_SECOND": "LEDGER_RATE_LIMIT_PER_SECOND",
        "LEDGER_ZZZ": None,
        "NOTIFIER_WEBHOOK_KEY": "NOTIFIER_WEBHOOK_KEY_FILE",
    }
    assert config.unknown_variables({"LEDGER_DATA_DIR": "/d"}) == {}
    logged: list[tuple[str, dict[str, object]]] = []

    class Log:
        def warning(self, event: str, **fields: object) -> None:
            logged.append((event, fields))

    config.warn_unknown_variables(Log(), {"LEDGER_DATA_DIR": "/d"})
    assert logged == []
    config.warn_unknown_variables(Log(), given)
    ((event, fields),) = logged
    assert event == "config.unknown_variables"
    assert fields["variables"] == [
        "LEDGER_GRACE_SECOND",
        "LEDGER_RATELIMIT_PER_SECOND",
        "LEDGER_ZZZ",
        "NOTIFIER_WEBHOOK_KEY",
    ]
    assert "LEDGER_ZZZ" not in fields["closest"]  # type: ignore[operator]


def test_the_variables_read_elsewhere_are_those_the_project_reads() -> None:
    """Every variable with the project's prefixes that the client library (and ledgerctl)
    or the NATS configuration names is known, and each known only as read elsewhere is
    named there (or is the supervisor's): the list neither misses one nor keeps a stale one."""
    pattern = "(?:" + "|".join(config.PREFIXES) + r")[A-Z0-9_]*[A-Z0-9]"
    client = Path(config.PROJECT_ROOT / "clients" / "python" / "incidentledger_client")
    in_client = {
        name
        for path in client.rglob("*.py")
        for name in re.findall(rf"[\"']({pattern})[\"']", path.read_text(encoding="utf-8"))
    }
    nats_conf = (config.PROJECT_ROOT / "deploy" / "nats" / "nats.conf").read_text("utf-8")
    in_nats = set(re.findall(rf"\$({pattern})", nats_conf))
    known = config.known_variable_names()
    assert in_client - known == set()
    assert in_nats - known == set()
    read_elsewhere = (in_client | in_nats) - config.variable_names() | {STARTED_FILE_VARIABLE}
    assert read_elsewhere == config.READ_ELSEWHERE


def test_personal_data_keys_from_a_file_are_refused_under_the_variable_set(
    tmp_path: Path,
) -> None:
    """A refusal named LEDGER_PERSONAL_DATA_KEYS, which the operator had not set, when they
    had set LEDGER_PERSONAL_DATA_KEYS_FILE: now the variable they set, and its file."""
    keys = tmp_path / "personal-data-keys"
    keys.write_text(KeyRing.generate_text("dev-1234abcd"))
    keys.chmod(0o600)
    production = {
        "LEDGER_ENVIRONMENT": "production",
        "LEDGER_PAGE_TOKEN_SECRET": "a-long-enough-secret-for-tokens",
        "LEDGER_TOKENS_FILE": "/t.yaml",
        "LEDGER_SIGNING_KEY_FILE": "/k.pem",
        "LEDGER_DATA_DIR": str(tmp_path / "data"),
    }
    from_file = LedgerSettings.from_env({**production, "LEDGER_PERSONAL_DATA_KEYS_FILE": str(keys)})
    with pytest.raises(ConfigError) as refused:
        open_personal_keys(from_file, create=True)
    assert str(refused.value) == (
        f"LEDGER_PERSONAL_DATA_KEYS_FILE {keys}: development key-encryption keys "
        "['dev-1234abcd'] are refused in production"
    )
    keys.write_text("kek-2026")  # no key after the id
    from_file = LedgerSettings.from_env({**production, "LEDGER_PERSONAL_DATA_KEYS_FILE": str(keys)})
    with pytest.raises(ConfigError) as refused:
        open_personal_keys(from_file, create=True)
    assert str(refused.value) == (
        f"LEDGER_PERSONAL_DATA_KEYS_FILE {keys}: each key is written id:base64key"
    )
    given = {**production, "LEDGER_PERSONAL_DATA_KEYS": KeyRing.generate_text("dev-1234abcd")}
    with pytest.raises(ConfigError, match=r"^LEDGER_PERSONAL_DATA_KEYS: development"):
        open_personal_keys(LedgerSettings.from_env(given), create=True)

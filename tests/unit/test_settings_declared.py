"""The settings declared once: defaults unchanged, bad values refused by name, secrets from files.

The expected values below were written from the hand-written parser that the declarations
replaced (services/common/config.py before them), not from the declarations themselves.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.common import config
from services.common.config import (
    PROJECT_ROOT,
    AuditSettings,
    ConfigError,
    LedgerSettings,
    LimitSettings,
    NatsClientSettings,
    NotifierSettings,
    RelaySettings,
    RunSettings,
    ServiceSettings,
    SituationRoomSettings,
    StreamSettings,
    WebhookSettings,
)
from tests.tls_support import CertificateAuthority

DATA = PROJECT_ROOT / "data"
NATS = {"NATS_URL": "nats://127.0.0.1:4222"}  # the notifier requires it

#: Every variable the services read before the declarations, with its default then (None:
#: worked out at start, or left to the library). Secrets also had their ``_FILE`` variant.
OLD_DEFAULTS: dict[str, object] = {
    "LEDGER_ENVIRONMENT": "development",
    "LEDGER_DATA_DIR": DATA,
    "LEDGER_REFERENCE_FILE": PROJECT_ROOT / "config" / "mukomuko-pilkada.yaml",
    "LEDGER_TOKENS_FILE": None,
    "LEDGER_PAGE_TOKEN_SECRET": None,
    "LEDGER_MAX_MESSAGE_BYTES": 1048576,
    "LEDGER_LOG_LEVEL": "INFO",
    "LEDGER_LOG_FORMAT": "auto",
    "LEDGER_ALLOW_PLAINTEXT": False,
    "LEDGER_RATE_LIMIT_PER_SECOND": None,  # 0 in development, 200 in production
    "LEDGER_RATE_LIMIT_BURST": None,  # twice the rate
    "LEDGER_MAX_STREAMS_PER_AGENCY": 16,
    "LEDGER_AUTH_MAX_FAILURES": 30,
    "LEDGER_AUTH_WINDOW_SECONDS": 60.0,
    "LEDGER_AUTH_THROTTLE_KEYS": 10000,
    "LEDGER_TLS_CERT_FILE": None,
    "LEDGER_TLS_KEY_FILE": None,
    "LEDGER_TLS_CLIENT_CA_FILE": None,
    "LEDGER_TLS_CLIENT_AUTH": None,  # require with a client CA, else none
    "NATS_URL": "",
    "NATS_TLS_CA_FILE": None,
    "NATS_TLS_CERT_FILE": None,
    "NATS_TLS_KEY_FILE": None,
    "NATS_TLS_HANDSHAKE_FIRST": False,
    "NATS_USER": "",
    "NATS_PASSWORD": "",
    "NATS_TOKEN": "",
    "LEDGER_STREAM": "LEDGER_EVENTS",
    "LEDGER_STREAM_SUBJECT_PREFIX": "ledger.v1.events",
    "LEDGER_STREAM_CHECKPOINT_SUBJECT": "ledger.v1.checkpoints",
    "LEDGER_STREAM_REPLICAS": 1,
    "LEDGER_STREAM_STORAGE": "file",
    "LEDGER_STREAM_MAX_AGE_DAYS": 0.0,
    "LEDGER_STREAM_DUPLICATE_WINDOW_SECONDS": 120.0,
    "LEDGER_LISTEN": "127.0.0.1:50051",
    "LEDGER_METRICS_LISTEN": "",
    "LEDGER_MAX_WORKERS": 32,
    "LEDGER_CACHE_SIZE": 3000,
    "LEDGER_TRIAGE_MAX_ITEMS": 500,
    "LEDGER_SNAPSHOT_INTERVAL": 100,
    "LEDGER_GRACE_SECONDS": 10.0,
    "LEDGER_EARLIEST_TIME": datetime(2000, 1, 1, tzinfo=UTC),
    "LEDGER_MAX_CLOCK_SKEW_SECONDS": 300.0,
    "LEDGER_MAX_DECISION_DAYS": 366.0,
    "LEDGER_STORE_CHECK_SECONDS": 1.0,
    "LEDGER_SIGNING_KEY_FILE": None,
    "LEDGER_RETIRED_SIGNING_KEYS_FILE": None,
    "LEDGER_CHECKPOINT_SECONDS": 300.0,
    "LEDGER_INGEST_MAX_REPORTS": 500,
    "LEDGER_INGEST_MAX_BYTES": 1024 * 1024,
    "LEDGER_INGEST_PROCESS": True,
    "LEDGER_RELAY_BATCH": 2000,
    "LEDGER_RELAY_POLL_SECONDS": 0.5,
    "LEDGER_RELAY_UNRESPONSIVE_SECONDS": 15.0,
    "LEDGER_PERSONAL_DATA_KEYS": None,
    "LEDGER_PERSONAL_DATA_RETENTION_DAYS": 0.0,
    "LEDGER_PERSONAL_DATA_SWEEP_GRACE_SECONDS": 3600.0,
    "LEDGER_EVIDENCE_BUCKET": "evidence",
    "LEDGER_EVIDENCE_REPLICAS": 1,
    "LEDGER_EVIDENCE_MAX_MB": 25.0,
    "LEDGER_EVIDENCE_MEDIA_TYPES": (
        "image/jpeg",
        "image/png",
        "application/pdf",
        "video/mp4",
        "audio/mp4",
        "audio/aac",
        "audio/wav",
    ),
    "LEDGER_EVIDENCE_SWEEP_SECONDS": 600.0,
    "LEDGER_EVIDENCE_SWEEP_GRACE_SECONDS": 3600.0,
    "NOTIFIER_LISTEN": "127.0.0.1:50052",
    "NOTIFIER_METRICS_LISTEN": "",
    "NOTIFIER_STORE": "sqlite",
    "NOTIFIER_SQLITE_DBNAME": None,  # <data dir>/notifier.sqlite
    "NOTIFIER_CONSUMER": "notifier",
    "NOTIFIER_ACK_WAIT_SECONDS": 10.0,
    "NOTIFIER_WEBHOOK_MAX_ATTEMPTS": 20,
    "NOTIFIER_WEBHOOK_TIMEOUT_SECONDS": 5.0,
    "NOTIFIER_WEBHOOK_BACKOFF_SECONDS": 1.0,
    "NOTIFIER_WEBHOOK_MAX_BACKOFF_SECONDS": 300.0,
    "NOTIFIER_WEBHOOK_ALLOW_NETWORKS": (),
    "NOTIFIER_WEBHOOK_CA_FILE": None,
    "NOTIFIER_WEBHOOK_KEY_FILE": None,
    "NOTIFIER_MAX_WORKERS": 64,
    "NOTIFIER_GRACE_SECONDS": 5.0,
    "PERSISTENCE_MODULE": "eventsourcing.sqlite",
    "SQLITE_DBNAME": None,  # <data dir>/ledger.sqlite
    "SQLITE_LOCK_TIMEOUT": 10,
    "CREATE_TABLE": True,  # the library's default, "y"
    "POSTGRES_HOST": None,
    "POSTGRES_PORT": None,
    "POSTGRES_DBNAME": None,
    "POSTGRES_USER": None,
    "POSTGRES_PASSWORD": None,
    "POSTGRES_SCHEMA": None,
    "POSTGRES_CONNECT_TIMEOUT": 3,
    "POSTGRES_TCP_USER_TIMEOUT": 10,
    "POSTGRES_LOCK_TIMEOUT": 2,  # services/common/sql.py
    "POSTGRES_STATEMENT_TIMEOUT": 15,
    "POSTGRES_POOL_SIZE": 5,
    "POSTGRES_MAX_OVERFLOW": 10,
    "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": 5,
    "LEDGER_NATS_PORT": 14222,
    # The situation room (new with it, so no old parser to compare with).
    "SITUATION_ROOM_LISTEN": "127.0.0.1:8080",
    "SITUATION_ROOM_LEDGER_ADDRESS": "127.0.0.1:50051",
    "SITUATION_ROOM_NOTIFIER_ADDRESS": "127.0.0.1:50052",
    "SITUATION_ROOM_TOKEN": "",
    "SITUATION_ROOM_SESSION_MINUTES": 720.0,
    "SITUATION_ROOM_SESSION_IDLE_MINUTES": 15.0,
    "SITUATION_ROOM_SESSION_KEY": None,
    "SITUATION_ROOM_MAP_FILE": PROJECT_ROOT / "config" / "mukomuko-kecamatan.geojson",
    "SITUATION_ROOM_LEAFLET_DIR": PROJECT_ROOT / "tools" / "node_modules" / "leaflet" / "dist",
}
SECRETS = {
    "LEDGER_PAGE_TOKEN_SECRET",
    "LEDGER_PERSONAL_DATA_KEYS",
    "NATS_PASSWORD",
    "NATS_TOKEN",
    "POSTGRES_PASSWORD",
    "SITUATION_ROOM_TOKEN",
    "SITUATION_ROOM_SESSION_KEY",
}


def test_every_variable_is_declared_once_with_its_old_default() -> None:
    declared = list(config.variables())
    names = [v.name for v in declared]
    assert len(names) == len(set(names)), "a variable declared twice"
    assert set(names) == set(OLD_DEFAULTS)
    assert {v.name: v.default for v in declared} == OLD_DEFAULTS
    assert {v.name for v in declared if v.secret} == SECRETS
    assert config.variable_names() == set(OLD_DEFAULTS) | {f"{s}_FILE" for s in SECRETS}
    for variable in declared:
        assert variable.description, variable.name
        assert "|" not in variable.description, f"{variable.name}: breaks the docs' table"


def old_stream() -> StreamSettings:
    return StreamSettings(
        name="LEDGER_EVENTS",
        subject_prefix="ledger.v1.events",
        checkpoint_subject="ledger.v1.checkpoints",
        replicas=1,
        storage="file",
        max_age_days=0.0,
        duplicate_window_seconds=120.0,
    )


def old_nats() -> NatsClientSettings:
    return NatsClientSettings(
        tls_ca_file=None,
        tls_cert_file=None,
        tls_key_file=None,
        tls_handshake_first=False,
        user="",
        password="",
        token="",
    )


def old_limits(rate: float = 0.0, burst: int = 0) -> LimitSettings:
    return LimitSettings(
        rate_per_second=rate,
        burst=burst,
        max_streams_per_agency=16,
        auth_max_failures=30,
        auth_window_seconds=60.0,
        auth_max_keys=10000,
    )


def old_common() -> dict[str, object]:
    return {
        "environment": "development",
        "data_dir": DATA,
        "reference_file": PROJECT_ROOT / "config" / "mukomuko-pilkada.yaml",
        "tokens_file": None,
        "page_token_secret": None,
        "max_message_bytes": 1048576,
        "limits": old_limits(),
        "log_level": "INFO",
        "log_format": "auto",
        "tls": None,
        "allow_plaintext": False,
    }


def old_ledger(store_env: dict[str, str], relay: RelaySettings) -> LedgerSettings:
    return LedgerSettings(
        **old_common(),  # type: ignore[arg-type]
        listen="127.0.0.1:50051",
        max_workers=32,
        cache_size=3000,
        grace_seconds=10.0,
        store_env=store_env,
        relay=relay,
        signing_key_file=None,
        checkpoint_seconds=300.0,
        metrics_listen="",
        earliest_time=datetime(2000, 1, 1, tzinfo=UTC),
        max_clock_skew_seconds=300.0,
        max_decision_days=366.0,
        store_check_seconds=1.0,
    )


def old_relay(nats_url: str = "") -> RelaySettings:
    return RelaySettings(
        nats_url=nats_url,
        nats=old_nats(),
        stream=old_stream(),
        batch_size=2000,  # 500 until the relay's encoder (docs/performance.md)
        poll_seconds=0.5,
        publish_timeout_seconds=1.0,
        leader_retry_seconds=2.0,
        unresponsive_seconds=15.0,
    )


def old_webhooks() -> WebhookSettings:
    return WebhookSettings(
        max_attempts=20,
        timeout_seconds=5.0,
        backoff_seconds=1.0,
        max_backoff_seconds=300.0,
        concurrency=32,
        per_endpoint_concurrency=16,  # 4 until the webhook deliveries were measured (issue 20)
        allow_networks=(),
    )


def old_notifier(nats_url: str, store_env: dict[str, str]) -> NotifierSettings:
    return NotifierSettings(
        **old_common(),  # type: ignore[arg-type]
        listen="127.0.0.1:50052",
        nats_url=nats_url,
        nats=old_nats(),
        stream=old_stream(),
        consumer="notifier",
        ack_wait_seconds=10.0,
        webhooks=old_webhooks(),
        max_workers=64,
        grace_seconds=5.0,
        store_env=store_env,
        metrics_listen="",
        webhook_key_file=None,
    )


def test_an_empty_environment_gives_the_ledger_its_old_settings() -> None:
    store_env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(DATA / "ledger.sqlite"),
        "SQLITE_LOCK_TIMEOUT": "10",
        "POSTGRES_CONNECT_TIMEOUT": "3",
    }
    assert LedgerSettings.from_env({}) == old_ledger(store_env, old_relay())
    assert LedgerSettings() == old_ledger({}, old_relay())


def test_an_environment_with_only_nats_gives_the_notifier_its_old_settings() -> None:
    store_env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(DATA / "notifier.sqlite"),
    }
    url = NATS["NATS_URL"]
    assert NotifierSettings.from_env(NATS) == old_notifier(url, store_env)
    assert NotifierSettings(nats_url=url) == old_notifier(url, {})
    postgres = NotifierSettings.from_env({**NATS, "NOTIFIER_STORE": "postgres"}).store_env
    assert postgres == {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_CONNECT_TIMEOUT": "3",
    }


def test_the_other_settings_keep_their_old_defaults() -> None:
    run = RunSettings(
        nats_url=None,
        nats_port=14222,
        ledger_listen="127.0.0.1:50051",
        notifier_listen="127.0.0.1:50052",
        data_dir=DATA,
        log_level="INFO",
        log_format="auto",
    )
    assert RunSettings.from_env({}) == RunSettings() == run
    audit = AuditSettings(
        environment="development", data_dir=DATA, signing_key_file=None, checkpoint_seconds=300.0
    )
    assert AuditSettings.from_env({}) == AuditSettings() == audit
    assert ServiceSettings() == ServiceSettings(**old_common())  # type: ignore[arg-type]
    assert LimitSettings.from_env({}, production=False) == LimitSettings() == old_limits()
    assert LimitSettings.from_env({}, production=True) == old_limits(200.0, 400)
    assert LimitSettings.from_env({"LEDGER_RATE_LIMIT_PER_SECOND": "0.2"}, production=False) == (
        old_limits(0.2, 1)  # the burst is at least 1
    )
    assert StreamSettings.from_env({}) == StreamSettings() == old_stream()
    assert NatsClientSettings.from_env({}) == NatsClientSettings() == old_nats()
    assert RelaySettings.from_env({}) == RelaySettings() == old_relay()
    assert WebhookSettings() == old_webhooks()


# --- refused values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "variable", "value", "allowed"),
    [
        # a negative timeout or duration
        ("ledger", "LEDGER_GRACE_SECONDS", "-1", "must not be negative"),
        ("notifier", "NOTIFIER_WEBHOOK_TIMEOUT_SECONDS", "-5", "must be positive"),
        ("notifier", "NOTIFIER_GRACE_SECONDS", "-0.5", "must not be negative"),
        ("ledger", "POSTGRES_CONNECT_TIMEOUT", "-1", "must be at least 0"),
        ("ledger", "POSTGRES_STATEMENT_TIMEOUT", "-15", "must be at least 0"),
        ("ledger", "LEDGER_STREAM_MAX_AGE_DAYS", "-7", "must not be negative"),
        # zero where zero means nothing
        ("notifier", "NOTIFIER_ACK_WAIT_SECONDS", "0", "must be positive"),
        ("ledger", "LEDGER_RELAY_POLL_SECONDS", "0", "must be positive"),
        ("ledger", "LEDGER_STORE_CHECK_SECONDS", "0", "must be positive"),
        # not a number
        ("ledger", "LEDGER_RELAY_POLL_SECONDS", "soon", "must be a number"),
        ("ledger", "LEDGER_RELAY_BATCH", "lots", "must be an integer (at least 1)"),
        ("ledger", "LEDGER_MAX_WORKERS", "2.5", "must be an integer"),
        ("ledger", "LEDGER_GRACE_SECONDS", "nan", "must be a finite number"),
        ("notifier", "NOTIFIER_WEBHOOK_MAX_ATTEMPTS", "eight", "must be an integer"),
        ("ledger", "SQLITE_LOCK_TIMEOUT", "10s", "must be an integer"),
        # a port out of range
        ("run", "LEDGER_NATS_PORT", "70000", "must be from 0 to 65535"),
        ("run", "LEDGER_NATS_PORT", "-1", "must be from 0 to 65535"),
        ("ledger", "POSTGRES_PORT", "65536", "must be from 1 to 65535"),
        ("notifier", "POSTGRES_PORT", "-1", "must be from 1 to 65535"),
        ("ledger", "LEDGER_LISTEN", "127.0.0.1:65536", "must be host:port"),
        ("run", "NOTIFIER_LISTEN", "localhost", "must be host:port"),
        ("ledger", "LEDGER_METRICS_LISTEN", "0.0.0.0:http", "must be host:port"),
        ("ledger", "LEDGER_STREAM_REPLICAS", "7", "must be from 1 to 5"),
        # an unknown choice
        ("ledger", "LEDGER_STREAM_STORAGE", "disk", "must be one of ['file', 'memory']"),
        ("notifier", "NOTIFIER_STORE", "mysql", "must be one of ['postgres', 'sqlite']"),
        ("ledger", "PERSISTENCE_MODULE", "eventsourcing.mysql", "must be one of"),
        ("run", "LEDGER_LOG_FORMAT", "xml", "must be one of ['auto', 'console', 'json']"),
        ("ledger", "LEDGER_TLS_CLIENT_AUTH", "optional", "must be one of ['none', 'require']"),
        ("ledger", "CREATE_TABLE", "maybe", "must be y or n"),
        ("notifier", "NATS_TLS_HANDSHAKE_FIRST", "sure", "must be true or false"),
        ("ledger", "LEDGER_EARLIEST_TIME", "yesterday", "must be an ISO-8601 date or time"),
    ],
)
def test_a_bad_value_is_refused_in_one_line_naming_the_variable_value_and_what_is_allowed(
    build: str, variable: str, value: str, allowed: str
) -> None:
    builders: dict[str, Callable[[dict[str, str]], object]] = {
        "ledger": LedgerSettings.from_env,
        "notifier": lambda env: NotifierSettings.from_env({**NATS, **env}),
        "run": RunSettings.from_env,
    }
    with pytest.raises(ConfigError) as error:
        builders[build]({variable: value})
    (line,) = error.value.problems
    assert line.startswith(f"{variable} {allowed}")
    assert line.endswith(f", got {value!r}")
    assert "\n" not in str(error.value)


def test_every_bad_value_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as error:
        LedgerSettings.from_env(
            {
                "LEDGER_GRACE_SECONDS": "-1",
                "LEDGER_MAX_WORKERS": "0",
                "LEDGER_STREAM_STORAGE": "disk",
                "POSTGRES_PORT": "99999",
            }
        )
    assert [line.split()[0] for line in error.value.problems] == [
        "LEDGER_STREAM_STORAGE",
        "LEDGER_MAX_WORKERS",
        "LEDGER_GRACE_SECONDS",
        "POSTGRES_PORT",
    ]
    assert str(error.value) == "; ".join(error.value.problems)


def test_a_service_checks_only_the_variables_it_reads() -> None:
    ledger_only = {"LEDGER_MAX_WORKERS": "0", "PERSISTENCE_MODULE": "nope"}
    assert NotifierSettings.from_env({**NATS, **ledger_only}).max_workers == 64
    assert RunSettings.from_env({**ledger_only, "NOTIFIER_MAX_WORKERS": "1"}).nats_port == 14222
    with pytest.raises(ConfigError, match="NOTIFIER_MAX_WORKERS must be at least 4"):
        NotifierSettings.from_env({**NATS, "NOTIFIER_MAX_WORKERS": "1"})


def test_a_short_page_token_secret_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigError) as error:
        LedgerSettings.from_env({"LEDGER_PAGE_TOKEN_SECRET": "hunter2"})
    assert str(error.value) == (
        "LEDGER_PAGE_TOKEN_SECRET must be at least 16 bytes, got (a secret: not shown)"
    )


# --- secrets from files -----------------------------------------------------------------------


def secret_of(name: str, env: dict[str, str]) -> object:
    """Where each secret ends up, read by the service that reads it."""
    if name == "LEDGER_PAGE_TOKEN_SECRET":
        return LedgerSettings.from_env(env).page_token_secret
    if name == "NATS_PASSWORD":
        return LedgerSettings.from_env({"NATS_USER": "u", **env}).relay.nats.password
    if name == "NATS_TOKEN":
        return NotifierSettings.from_env({**NATS, **env}).nats.token
    if name == "SITUATION_ROOM_TOKEN":
        return SituationRoomSettings.from_env(env).token
    if name == "SITUATION_ROOM_SESSION_KEY":
        return SituationRoomSettings.from_env(env).session_key
    if name == "LEDGER_PERSONAL_DATA_KEYS":
        return LedgerSettings.from_env(env).personal_data_keys
    return LedgerSettings.from_env(env).store_env.get("POSTGRES_PASSWORD")


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_every_secret_may_come_from_its_file(tmp_path: Path, name: str) -> None:
    value = "a-secret-of-more-than-16-bytes"
    as_bytes = {"LEDGER_PAGE_TOKEN_SECRET", "SITUATION_ROOM_SESSION_KEY"}
    expected: object = value.encode() if name in as_bytes else value
    (tmp_path / "secret").write_text(value + "\r\n")  # the trailing line break is not part of it
    assert secret_of(name, {f"{name}_FILE": str(tmp_path / "secret")}) == expected
    assert secret_of(name, {name: value}) == expected
    assert secret_of(name, {name: value, f"{name}_FILE": ""}) == expected

    (tmp_path / "empty").write_text("\n")
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    refusals = {
        f"{name}_FILE: cannot read {tmp_path / 'missing'}: No such file or directory": {
            f"{name}_FILE": str(tmp_path / "missing")
        },
        f"{name}_FILE: {tmp_path / 'empty'} is empty": {f"{name}_FILE": str(tmp_path / "empty")},
        f"{name}_FILE: {tmp_path / 'binary'} is not UTF-8 text": {
            f"{name}_FILE": str(tmp_path / "binary")
        },
        f"set {name} or {name}_FILE, not both": {
            name: value,
            f"{name}_FILE": str(tmp_path / "secret"),
        },
    }
    for message, env in refusals.items():
        with pytest.raises(ConfigError) as error:
            secret_of(name, env)
        assert error.value.problems == (message,)
        assert value not in str(error.value)


# --- each variable is read by the services its declaration says ----------------------------


def changes(tmp_path: Path) -> dict[str, dict[str, str]]:
    """For each variable, a valid environment that sets it to something else than its
    default (with what it needs beside it)."""
    ca = CertificateAuthority(tmp_path / "pki")
    server, client = ca.server(), ca.client("ledger", "relay")
    secret = tmp_path / "secret"
    secret.write_text("s" * 32)
    production = {
        "LEDGER_ENVIRONMENT": "production",
        "LEDGER_TOKENS_FILE": str(tmp_path / "tokens.yaml"),
        "LEDGER_PAGE_TOKEN_SECRET": "s" * 32,
        "LEDGER_SIGNING_KEY_FILE": str(tmp_path / "signing.key"),
        "NOTIFIER_WEBHOOK_KEY_FILE": str(tmp_path / "webhook.key"),
        "SITUATION_ROOM_SESSION_KEY": "s" * 32,
        "SITUATION_ROOM_TOKEN": "t" * 32,
    }
    tls = {
        "LEDGER_TLS_CERT_FILE": str(server.cert_file),
        "LEDGER_TLS_KEY_FILE": str(server.key_file),
    }
    return {
        "LEDGER_ENVIRONMENT": production,
        "LEDGER_DATA_DIR": {"LEDGER_DATA_DIR": str(tmp_path)},
        "LEDGER_REFERENCE_FILE": {"LEDGER_REFERENCE_FILE": str(tmp_path / "reference.yaml")},
        "LEDGER_TOKENS_FILE": {"LEDGER_TOKENS_FILE": str(tmp_path / "tokens.yaml")},
        "LEDGER_PAGE_TOKEN_SECRET": {"LEDGER_PAGE_TOKEN_SECRET": "p" * 16},
        "LEDGER_MAX_MESSAGE_BYTES": {"LEDGER_MAX_MESSAGE_BYTES": "2048"},
        "LEDGER_LOG_LEVEL": {"LEDGER_LOG_LEVEL": "DEBUG"},
        "LEDGER_LOG_FORMAT": {"LEDGER_LOG_FORMAT": "json"},
        "LEDGER_ALLOW_PLAINTEXT": {"LEDGER_ALLOW_PLAINTEXT": "yes"},
        "LEDGER_RATE_LIMIT_PER_SECOND": {"LEDGER_RATE_LIMIT_PER_SECOND": "5"},
        # Beside a rate (the production default would also change what the page reads).
        "LEDGER_RATE_LIMIT_BURST": {"LEDGER_RATE_LIMIT_PER_SECOND": "5"}
        | {"LEDGER_RATE_LIMIT_BURST": "3"},
        "LEDGER_MAX_STREAMS_PER_AGENCY": {"LEDGER_MAX_STREAMS_PER_AGENCY": "0"},
        "LEDGER_AUTH_MAX_FAILURES": {"LEDGER_AUTH_MAX_FAILURES": "3"},
        "LEDGER_AUTH_WINDOW_SECONDS": {"LEDGER_AUTH_WINDOW_SECONDS": "0.5"},
        "LEDGER_AUTH_THROTTLE_KEYS": {"LEDGER_AUTH_THROTTLE_KEYS": "1"},
        "LEDGER_TLS_CERT_FILE": tls,
        "LEDGER_TLS_KEY_FILE": tls,
        "LEDGER_TLS_CLIENT_CA_FILE": tls | {"LEDGER_TLS_CLIENT_CA_FILE": str(ca.ca_file)},
        "LEDGER_TLS_CLIENT_AUTH": tls | {"LEDGER_TLS_CLIENT_AUTH": "none"},
        "NATS_URL": {"NATS_URL": "nats://other:4222"},
        "NATS_TLS_CA_FILE": {"NATS_TLS_CA_FILE": str(ca.ca_file)},
        "NATS_TLS_CERT_FILE": {
            "NATS_TLS_CERT_FILE": str(client.cert_file),
            "NATS_TLS_KEY_FILE": str(client.key_file),
        },
        "NATS_TLS_KEY_FILE": {
            "NATS_TLS_CERT_FILE": str(client.cert_file),
            "NATS_TLS_KEY_FILE": str(client.key_file),
        },
        "NATS_TLS_HANDSHAKE_FIRST": {"NATS_TLS_HANDSHAKE_FIRST": "on"},
        "NATS_USER": {"NATS_USER": "u", "NATS_PASSWORD": "p"},
        "NATS_PASSWORD": {"NATS_USER": "u", "NATS_PASSWORD_FILE": str(secret)},
        "NATS_TOKEN": {"NATS_TOKEN": "t"},
        "LEDGER_STREAM": {"LEDGER_STREAM": "OTHER"},
        "LEDGER_STREAM_SUBJECT_PREFIX": {"LEDGER_STREAM_SUBJECT_PREFIX": "other.events"},
        "LEDGER_STREAM_CHECKPOINT_SUBJECT": {"LEDGER_STREAM_CHECKPOINT_SUBJECT": "other.cp"},
        "LEDGER_STREAM_REPLICAS": {"LEDGER_STREAM_REPLICAS": "3"},
        "LEDGER_STREAM_STORAGE": {"LEDGER_STREAM_STORAGE": "memory"},
        "LEDGER_STREAM_MAX_AGE_DAYS": {"LEDGER_STREAM_MAX_AGE_DAYS": "30"},
        "LEDGER_STREAM_DUPLICATE_WINDOW_SECONDS": {"LEDGER_STREAM_DUPLICATE_WINDOW_SECONDS": "60"},
        "LEDGER_LISTEN": {"LEDGER_LISTEN": "127.0.0.1:0"},
        "LEDGER_METRICS_LISTEN": {"LEDGER_METRICS_LISTEN": "127.0.0.1:0"},
        "LEDGER_MAX_WORKERS": {"LEDGER_MAX_WORKERS": "4"},
        "LEDGER_CACHE_SIZE": {"LEDGER_CACHE_SIZE": "0"},
        "LEDGER_TRIAGE_MAX_ITEMS": {"LEDGER_TRIAGE_MAX_ITEMS": "20"},
        "LEDGER_SNAPSHOT_INTERVAL": {"LEDGER_SNAPSHOT_INTERVAL": "20"},
        "LEDGER_GRACE_SECONDS": {"LEDGER_GRACE_SECONDS": "0"},
        "LEDGER_EARLIEST_TIME": {"LEDGER_EARLIEST_TIME": "2024-01-01T07:00+07:00"},
        "LEDGER_MAX_CLOCK_SKEW_SECONDS": {"LEDGER_MAX_CLOCK_SKEW_SECONDS": "0"},
        "LEDGER_MAX_DECISION_DAYS": {"LEDGER_MAX_DECISION_DAYS": "30"},
        "LEDGER_STORE_CHECK_SECONDS": {"LEDGER_STORE_CHECK_SECONDS": "0.25"},
        "LEDGER_SIGNING_KEY_FILE": {"LEDGER_SIGNING_KEY_FILE": str(tmp_path / "signing.key")},
        "LEDGER_RETIRED_SIGNING_KEYS_FILE": {
            "LEDGER_RETIRED_SIGNING_KEYS_FILE": str(tmp_path / "retired.pub")
        },
        "LEDGER_CHECKPOINT_SECONDS": {"LEDGER_CHECKPOINT_SECONDS": "0"},
        "LEDGER_INGEST_MAX_REPORTS": {"LEDGER_INGEST_MAX_REPORTS": "100"},
        "LEDGER_INGEST_MAX_BYTES": {"LEDGER_INGEST_MAX_BYTES": "65536"},
        "LEDGER_INGEST_PROCESS": {"LEDGER_INGEST_PROCESS": "false"},
        "LEDGER_RELAY_BATCH": {"LEDGER_RELAY_BATCH": "1"},
        "LEDGER_RELAY_POLL_SECONDS": {"LEDGER_RELAY_POLL_SECONDS": "0.1"},
        "LEDGER_RELAY_UNRESPONSIVE_SECONDS": {"LEDGER_RELAY_UNRESPONSIVE_SECONDS": "5"},
        "LEDGER_PERSONAL_DATA_KEYS": {
            "LEDGER_PERSONAL_DATA_KEYS": "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        },
        "LEDGER_PERSONAL_DATA_RETENTION_DAYS": {"LEDGER_PERSONAL_DATA_RETENTION_DAYS": "365"},
        "LEDGER_PERSONAL_DATA_SWEEP_GRACE_SECONDS": {
            "LEDGER_PERSONAL_DATA_SWEEP_GRACE_SECONDS": "600"
        },
        "LEDGER_EVIDENCE_BUCKET": {"LEDGER_EVIDENCE_BUCKET": "other"},
        "LEDGER_EVIDENCE_REPLICAS": {"LEDGER_EVIDENCE_REPLICAS": "3"},
        "LEDGER_EVIDENCE_MAX_MB": {"LEDGER_EVIDENCE_MAX_MB": "2.5"},
        "LEDGER_EVIDENCE_MEDIA_TYPES": {"LEDGER_EVIDENCE_MEDIA_TYPES": "image/png"},
        "LEDGER_EVIDENCE_SWEEP_SECONDS": {"LEDGER_EVIDENCE_SWEEP_SECONDS": "30"},
        "LEDGER_EVIDENCE_SWEEP_GRACE_SECONDS": {"LEDGER_EVIDENCE_SWEEP_GRACE_SECONDS": "120"},
        "NOTIFIER_LISTEN": {"NOTIFIER_LISTEN": "[::1]:0"},
        "NOTIFIER_METRICS_LISTEN": {"NOTIFIER_METRICS_LISTEN": ":9465"},
        "NOTIFIER_STORE": {"NOTIFIER_STORE": "postgres"},
        "NOTIFIER_SQLITE_DBNAME": {"NOTIFIER_SQLITE_DBNAME": str(tmp_path / "n.sqlite")},
        "NOTIFIER_CONSUMER": {"NOTIFIER_CONSUMER": "other"},
        "NOTIFIER_ACK_WAIT_SECONDS": {"NOTIFIER_ACK_WAIT_SECONDS": "30"},
        "NOTIFIER_WEBHOOK_MAX_ATTEMPTS": {"NOTIFIER_WEBHOOK_MAX_ATTEMPTS": "1"},
        "NOTIFIER_WEBHOOK_TIMEOUT_SECONDS": {"NOTIFIER_WEBHOOK_TIMEOUT_SECONDS": "0.5"},
        "NOTIFIER_WEBHOOK_BACKOFF_SECONDS": {"NOTIFIER_WEBHOOK_BACKOFF_SECONDS": "0"},
        "NOTIFIER_WEBHOOK_MAX_BACKOFF_SECONDS": {"NOTIFIER_WEBHOOK_MAX_BACKOFF_SECONDS": "5"},
        "NOTIFIER_WEBHOOK_ALLOW_NETWORKS": {"NOTIFIER_WEBHOOK_ALLOW_NETWORKS": "10.0.0.0/8"},
        "NOTIFIER_WEBHOOK_CA_FILE": {"NOTIFIER_WEBHOOK_CA_FILE": str(ca.ca_file)},
        "NOTIFIER_WEBHOOK_KEY_FILE": {"NOTIFIER_WEBHOOK_KEY_FILE": str(tmp_path / "w.key")},
        "NOTIFIER_MAX_WORKERS": {"NOTIFIER_MAX_WORKERS": "4"},
        "NOTIFIER_GRACE_SECONDS": {"NOTIFIER_GRACE_SECONDS": "0"},
        "PERSISTENCE_MODULE": {"PERSISTENCE_MODULE": "eventsourcing.popo"},
        "SQLITE_DBNAME": {"SQLITE_DBNAME": str(tmp_path / "l.sqlite")},
        "SQLITE_LOCK_TIMEOUT": {"SQLITE_LOCK_TIMEOUT": "0"},
        "CREATE_TABLE": {"CREATE_TABLE": "n"},
        "POSTGRES_HOST": {"POSTGRES_HOST": "db"},
        "POSTGRES_PORT": {"POSTGRES_PORT": "6543"},
        "POSTGRES_DBNAME": {"POSTGRES_DBNAME": "ledger"},
        "POSTGRES_USER": {"POSTGRES_USER": "ledger"},
        "POSTGRES_PASSWORD": {"POSTGRES_PASSWORD_FILE": str(secret)},
        "POSTGRES_SCHEMA": {"POSTGRES_SCHEMA": "other"},
        "POSTGRES_CONNECT_TIMEOUT": {"POSTGRES_CONNECT_TIMEOUT": "1"},
        "POSTGRES_TCP_USER_TIMEOUT": {"POSTGRES_TCP_USER_TIMEOUT": "0"},
        "POSTGRES_LOCK_TIMEOUT": {"POSTGRES_LOCK_TIMEOUT": "0"},
        "POSTGRES_STATEMENT_TIMEOUT": {"POSTGRES_STATEMENT_TIMEOUT": "0"},
        "POSTGRES_POOL_SIZE": {"POSTGRES_POOL_SIZE": "2"},
        "POSTGRES_MAX_OVERFLOW": {"POSTGRES_MAX_OVERFLOW": "3"},
        "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": {
            "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "60"
        },
        "LEDGER_NATS_PORT": {"LEDGER_NATS_PORT": "4333"},
        "SITUATION_ROOM_LISTEN": {"SITUATION_ROOM_LISTEN": "127.0.0.1:0"},
        "SITUATION_ROOM_LEDGER_ADDRESS": {"SITUATION_ROOM_LEDGER_ADDRESS": "ledger:50051"},
        "SITUATION_ROOM_NOTIFIER_ADDRESS": {"SITUATION_ROOM_NOTIFIER_ADDRESS": "notifier:50052"},
        "SITUATION_ROOM_TOKEN": {"SITUATION_ROOM_TOKEN_FILE": str(secret)},
        "SITUATION_ROOM_SESSION_MINUTES": {"SITUATION_ROOM_SESSION_MINUTES": "30"},
        "SITUATION_ROOM_SESSION_IDLE_MINUTES": {"SITUATION_ROOM_SESSION_IDLE_MINUTES": "5"},
        "SITUATION_ROOM_SESSION_KEY": {"SITUATION_ROOM_SESSION_KEY_FILE": str(secret)},
        "SITUATION_ROOM_MAP_FILE": {"SITUATION_ROOM_MAP_FILE": str(tmp_path / "other.geojson")},
        "SITUATION_ROOM_LEAFLET_DIR": {"SITUATION_ROOM_LEAFLET_DIR": str(tmp_path / "leaflet")},
    }


def test_each_variable_changes_what_the_services_that_read_it_build_and_nothing_else(
    tmp_path: Path,
) -> None:
    samples = changes(tmp_path)
    assert set(samples) == set(OLD_DEFAULTS)
    for variable in config.variables():
        # The notifier reads the POSTGRES_* variables with its PostgreSQL store only.
        postgres = {"NOTIFIER_STORE": "postgres"} if variable.name.startswith("POSTGRES_") else {}
        bases: dict[str, dict[str, str]] = {
            "ledger": {},
            "notifier": NATS | postgres,
            "run": {},
            "situation-room": {},
        }
        builders: dict[str, Callable[[dict[str, str]], object]] = {
            "ledger": LedgerSettings.from_env,
            "notifier": NotifierSettings.from_env,
            "run": RunSettings.from_env,
            "situation-room": SituationRoomSettings.from_env,
        }
        for reader, build in builders.items():
            base = bases[reader]
            changed = build(base | samples[variable.name]) != build(base)
            assert changed == (reader in variable.read_by), (variable.name, reader)


def test_the_allow_list_and_the_earliest_time_are_parsed_as_before() -> None:
    settings = NotifierSettings.from_env(
        {**NATS, "NOTIFIER_WEBHOOK_ALLOW_NETWORKS": " 10.20.0.0/16, ,::1"}
    )
    assert settings.webhooks.allow_networks == (
        ipaddress.ip_network("10.20.0.0/16"),
        ipaddress.ip_network("::1/128"),
    )
    ledger = LedgerSettings.from_env({"LEDGER_EARLIEST_TIME": "2024-01-01T07:00+07:00"})
    assert ledger.earliest_time == datetime(2024, 1, 1, tzinfo=UTC)

"""TLS and NATS settings, the production rule, URL redaction, identity from certificates."""

from __future__ import annotations

import re
import ssl
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from incidentledger_client._transport import ClientCertificate, make_channel
from incidentledger_client.cli import config as ctl_config
from services.common.auth import Principal, TokenStore, authenticate, token_hash
from services.common.config import (
    ConfigError,
    LedgerSettings,
    NatsClientSettings,
    NotifierSettings,
    ServerTls,
    is_loopback,
)
from services.common.errors import Unauthenticated
from services.common.natsconn import connect_options, redact_url
from services.common.serving import listen
from tests.tls_support import CertificateAuthority

SECRET_LOOKING = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n"
PRODUCTION = {
    "LEDGER_ENVIRONMENT": "production",
    "LEDGER_PAGE_TOKEN_SECRET": "p" * 32,
    "LEDGER_TOKENS_FILE": "/etc/ledger/tokens.yaml",
    "LEDGER_SIGNING_KEY_FILE": "/etc/ledger/signing.key",
    "NOTIFIER_WEBHOOK_KEY_FILE": "/etc/ledger/notifier-webhook.key",
}


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "pki")


def tls_env(ca: CertificateAuthority, **extra: str) -> dict[str, str]:
    server = ca.server()
    return {
        "LEDGER_TLS_CERT_FILE": str(server.cert_file),
        "LEDGER_TLS_KEY_FILE": str(server.key_file),
        **extra,
    }


# --- gRPC server TLS settings ---------------------------------------------------------


def test_tls_settings_are_read_at_start(ca: CertificateAuthority) -> None:
    settings = LedgerSettings.from_env(tls_env(ca))
    assert settings.tls is not None
    assert settings.tls.client_auth == "none"
    assert settings.tls.client_ca is None
    assert b"PRIVATE KEY" not in repr(settings).encode()

    mutual = LedgerSettings.from_env(tls_env(ca, LEDGER_TLS_CLIENT_CA_FILE=str(ca.ca_file)))
    assert mutual.tls is not None
    assert mutual.tls.client_auth == "require", "a client CA means client certificates"
    assert mutual.tls.client_ca == ca.ca_file.read_bytes()
    assert LedgerSettings.from_env({}).tls is None


def test_a_missing_tls_file_names_the_setting(ca: CertificateAuthority, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    for key in ("LEDGER_TLS_CERT_FILE", "LEDGER_TLS_KEY_FILE", "LEDGER_TLS_CLIENT_CA_FILE"):
        env = tls_env(ca, LEDGER_TLS_CLIENT_CA_FILE=str(ca.ca_file))
        env[key] = str(missing)
        with pytest.raises(ConfigError, match=rf"^{key}: cannot read {missing}"):
            LedgerSettings.from_env(env)


@pytest.mark.parametrize("key", ["LEDGER_TLS_CERT_FILE", "LEDGER_TLS_KEY_FILE"])
def test_an_invalid_tls_file_names_the_setting_and_never_its_content(
    ca: CertificateAuthority, tmp_path: Path, key: str
) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text(SECRET_LOOKING)
    env = tls_env(ca)
    env[key] = str(bad)
    with pytest.raises(ConfigError) as error:
        LedgerSettings.from_env(env)
    assert str(error.value).startswith(f"{key}: {bad}")
    assert "c2VjcmV0" not in str(error.value)


def test_a_key_of_another_certificate_is_refused(ca: CertificateAuthority) -> None:
    env = tls_env(ca, LEDGER_TLS_KEY_FILE=str(ca.client("polres", "x").key_file))
    with pytest.raises(ConfigError, match=r"LEDGER_TLS_KEY_FILE: .* is not the key of the first"):
        LedgerSettings.from_env(env)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"LEDGER_TLS_KEY_FILE": ""}, "LEDGER_TLS_CERT_FILE and LEDGER_TLS_KEY_FILE go together"),
        ({"LEDGER_TLS_CLIENT_AUTH": "require"}, "require needs LEDGER_TLS_CLIENT_CA_FILE"),
        ({"LEDGER_TLS_CLIENT_AUTH": "optional"}, "must be one of \\['none', 'require'\\]"),
        ({"LEDGER_TLS_CLIENT_AUTH": "none", "LEDGER_TLS_CLIENT_CA_FILE": "CA"}, "unset one"),
    ],
)
def test_inconsistent_tls_settings_are_refused(
    ca: CertificateAuthority, change: dict[str, str], message: str
) -> None:
    env = {k: (str(ca.ca_file) if v == "CA" else v) for k, v in {**tls_env(ca), **change}.items()}
    with pytest.raises(ConfigError, match=message):
        LedgerSettings.from_env(env)


def test_client_certificate_settings_need_a_server_certificate(ca: CertificateAuthority) -> None:
    with pytest.raises(ConfigError, match="need LEDGER_TLS_CERT_FILE"):
        LedgerSettings.from_env({"LEDGER_TLS_CLIENT_CA_FILE": str(ca.ca_file)})


# --- the production rule ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("127.0.0.1:50051", True),
        ("127.0.0.2:1", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("unix:/run/ledger.sock", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        (":50051", False),
        ("10.0.0.5:50051", False),
        ("ledger.example.go.id:50051", False),
    ],
)
def test_loopback_addresses(address: str, local: bool) -> None:
    assert is_loopback(address) is local


def test_production_refuses_plaintext_off_loopback(ca: CertificateAuthority) -> None:
    public = {**PRODUCTION, "LEDGER_LISTEN": "0.0.0.0:50051"}
    with pytest.raises(
        ConfigError, match=re.escape("LEDGER_LISTEN '0.0.0.0:50051' is not a loopback")
    ):
        LedgerSettings.from_env(public)
    with pytest.raises(ConfigError, match="NOTIFIER_LISTEN"):
        NotifierSettings.from_env(
            {**PRODUCTION, "NATS_URL": "nats://n:4222", "NOTIFIER_LISTEN": "0.0.0.0:50052"}
        )
    assert LedgerSettings.from_env({**public, "LEDGER_ALLOW_PLAINTEXT": "true"}).allow_plaintext
    assert LedgerSettings.from_env({**public, **tls_env(ca)}).tls is not None
    assert LedgerSettings.from_env(PRODUCTION).listen == "127.0.0.1:50051"
    with pytest.raises(ConfigError, match="LEDGER_ALLOW_PLAINTEXT must be true or false"):
        LedgerSettings.from_env({**public, "LEDGER_ALLOW_PLAINTEXT": "perhaps"})


def test_listen_applies_the_production_rule_too() -> None:
    settings = LedgerSettings(environment="production")
    with ThreadPoolExecutor(1) as pool:
        server = grpc.server(pool)
        with pytest.raises(ConfigError, match="not a loopback address"):
            listen(server, "0.0.0.0:0", settings)
        assert listen(server, "127.0.0.1:0", settings) > 0
        server.stop(None)


# --- NATS settings -----------------------------------------------------------------------


def test_nats_password_from_a_file_and_never_in_repr(tmp_path: Path) -> None:
    secret_file = tmp_path / "nats-password"
    secret_file.write_text("correct horse battery staple\n")
    settings = NatsClientSettings.from_env(
        {"NATS_USER": "ledger", "NATS_PASSWORD_FILE": str(secret_file)}
    )
    assert settings.password == "correct horse battery staple"
    assert "staple" not in repr(settings)
    assert connect_options(settings) == {
        "user": "ledger",
        "password": "correct horse battery staple",
    }
    relay = LedgerSettings.from_env(
        {
            "NATS_URL": "nats://ledger:hunter2@nats:4222",
            "NATS_TOKEN": "tok-123456",
            "LEDGER_PAGE_TOKEN_SECRET": "page-secret-1234",
            "POSTGRES_PASSWORD": "pg-secret",
        }
    )
    assert relay.relay.nats.token == "tok-123456"
    for secret in ("hunter2", "tok-123456", "page-secret-1234", "pg-secret"):
        assert secret not in repr(relay)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NATS_USER": "u"}, "NATS_USER and NATS_PASSWORD .* go together"),
        ({"NATS_PASSWORD": "p"}, "NATS_USER and NATS_PASSWORD .* go together"),
        ({"NATS_PASSWORD": "p", "NATS_PASSWORD_FILE": "/f"}, "NATS_PASSWORD or NATS_PASSWORD_FILE"),
        ({"NATS_USER": "u", "NATS_PASSWORD": "p", "NATS_TOKEN": "t"}, "not both"),
        ({"NATS_TOKEN_FILE": "MISSING"}, "^NATS_TOKEN_FILE: cannot read"),
        ({"NATS_TLS_CA_FILE": "MISSING"}, "^NATS_TLS_CA_FILE: cannot read"),
        ({"NATS_TLS_CERT_FILE": "MISSING"}, "^NATS_TLS_CERT_FILE: cannot read"),
        ({"NATS_TLS_CA_FILE": "BAD"}, "^NATS_TLS_CA_FILE: .* holds no valid PEM certificate"),
        ({"NATS_TOKEN_FILE": "EMPTY"}, "^NATS_TOKEN_FILE: .* is empty"),
    ],
)
def test_bad_nats_settings_name_the_variable_and_not_the_secret(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    files = {
        "MISSING": tmp_path / "missing",
        "BAD": tmp_path / "bad.pem",
        "EMPTY": tmp_path / "empty",
    }
    files["BAD"].write_text(SECRET_LOOKING)
    files["EMPTY"].write_text("\n")
    resolved = {k: str(files[v]) if v in files else v for k, v in env.items()}
    with pytest.raises(ConfigError, match=message) as error:
        NatsClientSettings.from_env(resolved)
    assert "c2VjcmV0" not in str(error.value)


def test_nats_tls_context_verifies_the_server_and_presents_the_client_certificate(
    ca: CertificateAuthority,
) -> None:
    client = ca.client("ledger", "relay")
    settings = NatsClientSettings.from_env(
        {
            "NATS_TLS_CA_FILE": str(ca.ca_file),
            "NATS_TLS_CERT_FILE": str(client.cert_file),
            "NATS_TLS_KEY_FILE": str(client.key_file),
            "NATS_TLS_HANDSHAKE_FIRST": "true",
        }
    )
    options = connect_options(settings)
    context = options["tls"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert options["tls_handshake_first"] is True
    assert connect_options(NatsClientSettings()) == {}
    with pytest.raises(ConfigError, match="NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE go together"):
        NatsClientSettings.from_env({"NATS_TLS_CERT_FILE": str(client.cert_file)})


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("nats://ledger:s3cret@nats:4222", "nats://ledger:***@nats:4222"),
        ("tls://tok3n@nats:4222", "tls://***@nats:4222"),
        ("ledger:s3cret@nats:4222", "ledger:***@nats:4222"),
        (
            "nats://a:s3cret@n1:4222, nats://a:s3cret@n2:4222",
            "nats://a:***@n1:4222,nats://a:***@n2:4222",
        ),
        ("", ""),
    ],
)
def test_secrets_in_nats_urls_are_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# --- identity from client certificates ----------------------------------------------------


def tokens() -> TokenStore:
    entries = {
        token_hash("polres-token"): Principal("polres", "aiptu.rahman"),
        token_hash("kpu-token"): Principal("kpu", "staff"),
    }
    return TokenStore(entries, development=False, known_agencies={"polres", "kpu", "bpbd"})


def test_a_certificate_alone_identifies_its_agency_and_officer(
    ca: CertificateAuthority,
) -> None:
    # bpbd has no token user: the reference data's agencies are what certificates may name.
    pem = ca.client("bpbd", "ops.desk").cert_pem
    assert authenticate(tokens(), None, pem) == Principal("bpbd", "ops.desk")
    assert authenticate(tokens(), "", pem) == Principal("bpbd", "ops.desk")


def test_a_certificate_and_a_token_must_name_the_same_agency(ca: CertificateAuthority) -> None:
    pem = ca.client("polres", "patrol-unit-7").cert_pem
    # The token's principal, with its officer, is the caller.
    assert authenticate(tokens(), "Bearer polres-token", pem) == Principal("polres", "aiptu.rahman")
    with pytest.raises(Unauthenticated) as mismatch:
        authenticate(tokens(), "Bearer kpu-token", pem)
    assert mismatch.value.reason == "CREDENTIALS_MISMATCH"
    with pytest.raises(Unauthenticated) as invalid:
        authenticate(tokens(), "Bearer forged", pem)
    assert invalid.value.reason == "CREDENTIALS_INVALID"


def test_a_certificate_is_read_once_and_a_refused_one_every_time(ca: CertificateAuthority) -> None:
    store = tokens()
    pem = ca.client("polres", "patrol-unit-7").cert_pem
    for _ in range(3):
        assert authenticate(store, None, pem) == Principal("polres", "patrol-unit-7")
        assert authenticate(store, "Bearer polres-token", None).agency == "polres"
    assert store.certificate_principal.cache_info().misses == 1
    stranger = ca.client("fbi", "agent").cert_pem
    for _ in range(2):
        with pytest.raises(Unauthenticated) as refused:
            authenticate(store, None, stranger)
        assert refused.value.reason == "CERTIFICATE_AGENCY_UNKNOWN"
    assert store.certificate_principal.cache_info().misses == 3


def test_without_a_certificate_tokens_work_as_before() -> None:
    assert authenticate(tokens(), "Bearer kpu-token", None) == Principal("kpu", "staff")
    with pytest.raises(Unauthenticated) as missing:
        authenticate(tokens(), None, None)
    assert missing.value.reason == "CREDENTIALS_MISSING"


@pytest.mark.parametrize(
    ("issue", "reason"),
    [
        ("unknown_agency", "CERTIFICATE_AGENCY_UNKNOWN"),
        ("server_certificate", "CERTIFICATE_INVALID"),
        ("garbage", "CERTIFICATE_INVALID"),
    ],
)
def test_certificates_that_name_no_known_caller_are_refused(
    ca: CertificateAuthority, issue: str, reason: str
) -> None:
    if issue == "unknown_agency":
        pem = ca.client("nowhere", "someone").cert_pem
    elif issue == "server_certificate":
        pem = ca.server().cert_pem  # no O, and not for client authentication
    else:
        pem = b"not a certificate"
    with pytest.raises(Unauthenticated) as refused:
        authenticate(tokens(), "Bearer polres-token", pem)
    assert refused.value.reason == reason


def test_a_loaded_token_store_knows_every_agency_of_the_reference_data(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text("users:\n  - {agency: polres, officer: a, token_sha256: " + "a" * 64 + "}\n")
    store = TokenStore.load(path, ["polres", "kpu", "bpbd"])
    assert store.known_agencies == {"polres", "kpu", "bpbd"}
    assert store.agencies() == {"polres"}


def test_server_tls_load_is_usable_directly(ca: CertificateAuthority) -> None:
    server = ca.server()
    tls = ServerTls.load(server.cert_file, server.key_file, ca.ca_file, "require")
    assert tls.certificate_chain == server.cert_pem
    assert "client_auth='require'" in repr(tls)
    assert "BEGIN" not in repr(tls)


def test_the_page_token_secret_and_the_postgres_password_may_come_from_files(
    tmp_path: Path,
) -> None:
    page, pg = tmp_path / "page-secret", tmp_path / "pg-password"
    page.write_text("a-page-token-secret-of-32-bytes!\n")
    pg.write_text("pg-password-from-a-file\n")
    env = {
        "LEDGER_PAGE_TOKEN_SECRET_FILE": str(page),
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_PASSWORD_FILE": str(pg),
    }
    ledger = LedgerSettings.from_env(env)
    assert ledger.page_token_secret == b"a-page-token-secret-of-32-bytes!"
    assert ledger.store_env["POSTGRES_PASSWORD"] == "pg-password-from-a-file"
    assert "POSTGRES_PASSWORD_FILE" not in ledger.store_env
    notifier = NotifierSettings.from_env(
        {**env, "NATS_URL": "nats://n:4222", "NOTIFIER_STORE": "postgres"}
    )
    assert notifier.store_env["POSTGRES_PASSWORD"] == "pg-password-from-a-file"
    with pytest.raises(ConfigError, match=r"^POSTGRES_PASSWORD_FILE: cannot read"):
        LedgerSettings.from_env({"POSTGRES_PASSWORD_FILE": str(tmp_path / "none")})


# --- clients ------------------------------------------------------------------------------


def test_client_certificate_arguments_are_checked(
    ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = ca.client("polres", "a")
    with pytest.raises(ValueError, match="needs TLS, but tls=False"):
        make_channel(
            "127.0.0.1:1", False, (), (), ClientCertificate(client.cert_file, client.key_file)
        )
    with pytest.raises(ValueError, match="certificate and its private key go together"):
        make_channel("127.0.0.1:1", None, (), (), ClientCertificate(client.cert_file))
    # tls=False wins over a certificate named by the environment.
    monkeypatch.setenv("LEDGER_TLS_CLIENT_CERT", str(client.cert_file))
    make_channel(
        "127.0.0.1:1", False, (), (), ClientCertificate(cert_env=("LEDGER_TLS_CLIENT_CERT",))
    ).close()


def test_ledgerctl_tls_flags_are_checked(ca: CertificateAuthority, tmp_path: Path) -> None:
    client = ca.client("polres", "a")
    common: dict[str, Any] = {
        "address": None,
        "notifier_address": None,
        "token": None,
        "agency": None,
        "tokens_file": None,
        "config": tmp_path / "none.toml",
        "timeout": None,
    }
    (tmp_path / "none.toml").write_text(f'tls_ca = "{ca.ca_file}"\n')
    settings = ctl_config.resolve(**common, tls_cert=client.cert_file, tls_key=client.key_file)
    assert (settings.tls_ca, settings.tls_cert) == (str(ca.ca_file), str(client.cert_file))
    with pytest.raises(ctl_config.ConfigError, match="--tls-cert and --tls-key go together"):
        ctl_config.resolve(**common, tls_cert=client.cert_file)
    with pytest.raises(ctl_config.ConfigError, match="tls-key file not found"):
        ctl_config.resolve(**common, tls_cert=client.cert_file, tls_key=tmp_path / "nope")

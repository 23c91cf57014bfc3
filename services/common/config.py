"""Configuration from the environment, with documented defaults.

Every setting the services read is declared here (and in the README's table).
The event store is configured with the eventsourcing library's own variables
(PERSISTENCE_MODULE, SQLITE_DBNAME, POSTGRES_*); the ledger only fills in the
embedded default (SQLite in the data directory) when nothing is set.
"""

from __future__ import annotations

import ipaddress
import math
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ConfigError(ValueError):
    """A setting is missing or malformed; the service refuses to start."""


def _int(env: Mapping[str, str], key: str, default: int, minimum: int = 0) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{key} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{key} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {raw!r}")
    return value


def _time(env: Mapping[str, str], key: str, default: datetime) -> datetime:
    """An ISO-8601 date or time (UTC unless it names its offset)."""
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ConfigError(f"{key} must be an ISO-8601 date or time, got {raw!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _non_negative(env: Mapping[str, str], key: str, default: float) -> float:
    value = _float(env, key, default)
    if value < 0:
        raise ConfigError(f"{key} must not be negative, got {value:g}")
    return value


def _choice(env: Mapping[str, str], key: str, default: str, choices: set[str]) -> str:
    value = env.get(key) or default
    if value not in choices:
        raise ConfigError(f"{key} must be one of {sorted(choices)}, got {value!r}")
    return value


def nats_servers(nats_url: str) -> list[str]:
    """``NATS_URL`` as the list of servers ``nats.connect`` takes.

    ``NATS_URL`` names one server or, for a cluster, several separated by commas
    (``nats://10.0.0.1:4222,nats://10.0.0.2:4222``): the client connects to any one
    of them and, when that one goes away, reconnects to another.
    """
    return [url.strip() for url in nats_url.split(",") if url.strip()]


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = (env.get(key) or "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{key} must be true or false, got {raw!r}")


def _path(env: Mapping[str, str], key: str) -> Path | None:
    raw = env.get(key)
    return Path(raw) if raw else None


def read_setting_file(key: str, path: Path) -> bytes:
    """The bytes of the file a setting names; a ConfigError names the setting and the path.

    Error messages never quote the content: the file may hold a key or a password.
    """
    try:
        return path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{key}: cannot read {path}: {reason}") from None


def _readable_file(env: Mapping[str, str], key: str) -> Path | None:
    """The path a setting names, checked to be a readable file (content not checked)."""
    path = _path(env, key)
    if path is not None:
        read_setting_file(key, path)
    return path


def _secret(env: Mapping[str, str], key: str) -> str:
    """A secret from ``key`` or from the file named by ``key_FILE`` (not both); "" if unset.

    A file's content is taken without its trailing line break.
    """
    file_key = f"{key}_FILE"
    value, path = env.get(key, ""), _path(env, file_key)
    if value and path is not None:
        raise ConfigError(f"set {key} or {file_key}, not both")
    if path is None:
        return value
    try:
        text = read_setting_file(file_key, path).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{file_key}: {path} is not UTF-8 text") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise ConfigError(f"{file_key}: {path} is empty")
    return secret


def is_loopback(address: str) -> bool:
    """Whether a gRPC listen address (``host:port``, ``[v6]:port``, ``unix:``) is local only."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rpartition(":")[0].strip("[]") if ":" in address else address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a wildcard ("") or a name, which may resolve to anything


def _pem_certificates(key: str, path: Path) -> tuple[bytes, list[x509.Certificate]]:
    """The file's bytes and the certificates in it (at least one)."""
    data = read_setting_file(key, path)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"{key}: {path} holds no valid PEM certificate") from None
    return data, certificates


#: ``LEDGER_TLS_CLIENT_AUTH`` values. grpcio can either not ask for a client certificate or
#: require (and verify) one; it has no "ask but accept none".
CLIENT_AUTH_MODES = {"none", "require"}


@dataclass(frozen=True)
class ServerTls:
    """TLS of a service's gRPC port, read and checked at start (see README, "Security").

    ``client_auth="require"``: every client presents a certificate signed by ``client_ca``;
    its subject names the caller's agency (see :mod:`services.common.auth`).
    """

    certificate_chain: bytes = field(repr=False)
    private_key: bytes = field(repr=False)
    client_ca: bytes | None = field(default=None, repr=False)
    client_auth: str = "none"
    cert_file: Path | None = None
    client_ca_file: Path | None = None

    @classmethod
    def load(
        cls,
        cert_file: Path,
        key_file: Path,
        client_ca_file: Path | None = None,
        client_auth: str | None = None,
    ) -> ServerTls:
        """Read and check the files (``LEDGER_TLS_*``); errors name the setting, never content.

        ``client_auth`` defaults to ``require`` when a client CA is given, else ``none``.
        """
        mode = client_auth or ("require" if client_ca_file is not None else "none")
        if mode not in CLIENT_AUTH_MODES:
            raise ConfigError(
                f"LEDGER_TLS_CLIENT_AUTH must be one of {sorted(CLIENT_AUTH_MODES)}, got {mode!r}"
            )
        if mode == "require" and client_ca_file is None:
            raise ConfigError("LEDGER_TLS_CLIENT_AUTH=require needs LEDGER_TLS_CLIENT_CA_FILE")
        if mode == "none" and client_ca_file is not None:
            raise ConfigError(
                "LEDGER_TLS_CLIENT_CA_FILE is set but LEDGER_TLS_CLIENT_AUTH=none: "
                "unset one of them"
            )
        chain_pem, chain = _pem_certificates("LEDGER_TLS_CERT_FILE", cert_file)
        key_pem = read_setting_file("LEDGER_TLS_KEY_FILE", key_file)
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError):
            raise ConfigError(
                f"LEDGER_TLS_KEY_FILE: {key_file} holds no unencrypted PEM private key"
            ) from None
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if chain[0].public_key().public_bytes(der, spki) != key.public_key().public_bytes(
            der, spki
        ):
            raise ConfigError(
                f"LEDGER_TLS_KEY_FILE: {key_file} is not the key of the first certificate "
                f"in LEDGER_TLS_CERT_FILE ({cert_file})"
            )
        client_ca = None
        if client_ca_file is not None:
            client_ca = _pem_certificates("LEDGER_TLS_CLIENT_CA_FILE", client_ca_file)[0]
        return cls(
            certificate_chain=chain_pem,
            private_key=key_pem,
            client_ca=client_ca,
            client_auth=mode,
            cert_file=cert_file,
            client_ca_file=client_ca_file,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServerTls | None:
        cert, key = _path(env, "LEDGER_TLS_CERT_FILE"), _path(env, "LEDGER_TLS_KEY_FILE")
        client_ca = _path(env, "LEDGER_TLS_CLIENT_CA_FILE")
        client_auth = env.get("LEDGER_TLS_CLIENT_AUTH") or None
        if cert is None or key is None:
            if cert is not None or key is not None:
                raise ConfigError("LEDGER_TLS_CERT_FILE and LEDGER_TLS_KEY_FILE go together")
            if client_ca is not None or client_auth is not None:
                raise ConfigError(
                    "LEDGER_TLS_CLIENT_CA_FILE and LEDGER_TLS_CLIENT_AUTH need "
                    "LEDGER_TLS_CERT_FILE and LEDGER_TLS_KEY_FILE"
                )
            return None
        return cls.load(cert, key, client_ca, client_auth)


@dataclass(frozen=True)
class NatsClientSettings:
    """TLS and credentials of the services' NATS connections (see README, "Security").

    Secrets come from ``NATS_PASSWORD`` / ``NATS_TOKEN`` or from the files named by
    ``NATS_PASSWORD_FILE`` / ``NATS_TOKEN_FILE``; they are kept out of ``repr``.
    """

    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_handshake_first: bool = False
    user: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)

    @property
    def tls(self) -> bool:
        """Whether TLS is configured on the client side (else only if the server asks)."""
        return bool(self.tls_ca_file or self.tls_cert_file or self.tls_handshake_first)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context, or None when no TLS setting is given.

        The server is verified against ``NATS_TLS_CA_FILE`` (else the system's roots), its
        name checked against the URL's host; the client certificate is presented if given.
        """
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(
                cafile=str(self.tls_ca_file) if self.tls_ca_file else None
            )
        except (ssl.SSLError, OSError):
            raise ConfigError(
                f"NATS_TLS_CA_FILE: {self.tls_ca_file} holds no valid PEM certificate"
            ) from None
        if self.tls_cert_file is not None and self.tls_key_file is not None:
            try:
                context.load_cert_chain(self.tls_cert_file, self.tls_key_file, password="")
            except (ssl.SSLError, OSError):
                raise ConfigError(
                    f"NATS_TLS_CERT_FILE / NATS_TLS_KEY_FILE: {self.tls_cert_file} and "
                    f"{self.tls_key_file} are not a PEM certificate and its unencrypted key"
                ) from None
        return context

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> NatsClientSettings:
        cert = _readable_file(env, "NATS_TLS_CERT_FILE")
        key = _readable_file(env, "NATS_TLS_KEY_FILE")
        if (cert is None) != (key is None):
            raise ConfigError("NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE go together")
        user, password = env.get("NATS_USER", ""), _secret(env, "NATS_PASSWORD")
        token = _secret(env, "NATS_TOKEN")
        if bool(user) != bool(password):
            raise ConfigError("NATS_USER and NATS_PASSWORD (or NATS_PASSWORD_FILE) go together")
        if token and user:
            raise ConfigError("set NATS_USER/NATS_PASSWORD or NATS_TOKEN, not both")
        settings = cls(
            tls_ca_file=_readable_file(env, "NATS_TLS_CA_FILE"),
            tls_cert_file=cert,
            tls_key_file=key,
            tls_handshake_first=_bool(env, "NATS_TLS_HANDSHAKE_FIRST", False),
            user=user,
            password=password,
            token=token,
        )
        settings.ssl_context()  # fails now, with the setting's name, rather than at connect
        return settings


@dataclass(frozen=True)
class StreamSettings:
    """The JetStream stream the ledger's events are published to (see README, "Fan-out")."""

    name: str = "LEDGER_EVENTS"
    subject_prefix: str = "ledger.v1.events"
    checkpoint_subject: str = "ledger.v1.checkpoints"
    replicas: int = 1
    storage: str = "file"
    max_age_days: float = 0.0  # 0 = keep events as long as the stream's other limits allow
    duplicate_window_seconds: float = 120.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StreamSettings:
        return cls(
            name=env.get("LEDGER_STREAM") or cls.name,
            subject_prefix=env.get("LEDGER_STREAM_SUBJECT_PREFIX") or cls.subject_prefix,
            checkpoint_subject=env.get("LEDGER_STREAM_CHECKPOINT_SUBJECT")
            or cls.checkpoint_subject,
            replicas=_int(env, "LEDGER_STREAM_REPLICAS", cls.replicas, minimum=1),
            storage=_choice(env, "LEDGER_STREAM_STORAGE", cls.storage, {"file", "memory"}),
            max_age_days=_float(env, "LEDGER_STREAM_MAX_AGE_DAYS", cls.max_age_days),
            duplicate_window_seconds=_float(
                env, "LEDGER_STREAM_DUPLICATE_WINDOW_SECONDS", cls.duplicate_window_seconds
            ),
        )


@dataclass(frozen=True)
class RelaySettings:
    """The outbox relay: store -> NATS JetStream. Disabled when ``nats_url`` is empty."""

    nats_url: str = field(default="", repr=False)  # may embed user:password
    nats: NatsClientSettings = field(default_factory=NatsClientSettings)
    stream: StreamSettings = field(default_factory=StreamSettings)
    batch_size: int = 500
    poll_seconds: float = 0.5
    # Also each JetStream request's: a request sent while a stream elects its leader gets no
    # answer, so a short timeout and a retry resume publishing soon after the election
    # (5 s made a stream leader's loss pause publishing 11.5 s; README, "A NATS cluster").
    publish_timeout_seconds: float = 1.0
    leader_retry_seconds: float = 2.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RelaySettings:
        nats_url = env.get("NATS_URL", "").strip()
        if nats_url and not nats_servers(nats_url):
            raise ConfigError("NATS_URL names no server; leave it unset to run without NATS")
        return cls(
            nats_url=nats_url,
            nats=NatsClientSettings.from_env(env),
            stream=StreamSettings.from_env(env),
            batch_size=_int(env, "LEDGER_RELAY_BATCH", cls.batch_size, minimum=1),
            poll_seconds=_float(env, "LEDGER_RELAY_POLL_SECONDS", cls.poll_seconds),
        )


@dataclass(frozen=True)
class LimitSettings:
    """Per-agency limits of a gRPC server (see README, "Limits"); 0 = no limit.

    The rate limit is off in development (``make run``, tests, benchmarks) and on in
    production unless set: ``PRODUCTION_RATE_PER_SECOND`` with a burst of twice that.
    """

    rate_per_second: float = 0.0
    burst: int = 0
    max_streams_per_agency: int = 16
    # Failed authentications (an unknown bearer token) per peer address and per token
    # prefix: after this many within the window, that peer or prefix is refused for a
    # window. 30 a minute is far more than a mistyped token produces and leaves a guesser
    # 0.5 tries a second instead of the ~900 measured without it. 0 = no throttle.
    auth_max_failures: int = 30
    auth_window_seconds: float = 60.0
    # Peers and prefixes remembered at once (least recently seen forgotten first); about
    # 200 bytes each.
    auth_max_keys: int = 10_000

    PRODUCTION_RATE_PER_SECOND: ClassVar[float] = 200.0

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, production: bool) -> LimitSettings:
        default_rate = cls.PRODUCTION_RATE_PER_SECOND if production else 0.0
        rate = _float(env, "LEDGER_RATE_LIMIT_PER_SECOND", default_rate)
        if rate < 0:
            raise ConfigError(f"LEDGER_RATE_LIMIT_PER_SECOND must not be negative, got {rate}")
        burst = _int(env, "LEDGER_RATE_LIMIT_BURST", max(1, round(2 * rate)), minimum=1)
        window = _float(env, "LEDGER_AUTH_WINDOW_SECONDS", cls.auth_window_seconds)
        if window <= 0:
            raise ConfigError(f"LEDGER_AUTH_WINDOW_SECONDS must be positive, got {window:g}")
        return cls(
            rate_per_second=rate,
            burst=burst if rate > 0 else 0,
            max_streams_per_agency=_int(
                env, "LEDGER_MAX_STREAMS_PER_AGENCY", cls.max_streams_per_agency
            ),
            auth_max_failures=_int(env, "LEDGER_AUTH_MAX_FAILURES", cls.auth_max_failures),
            auth_window_seconds=window,
            auth_max_keys=_int(env, "LEDGER_AUTH_THROTTLE_KEYS", cls.auth_max_keys, minimum=1),
        )


@dataclass(frozen=True)
class ServiceSettings:
    """What every service reads the same way: environment, data, credentials, logging."""

    environment: str = "development"
    data_dir: Path = PROJECT_ROOT / "data"
    reference_file: Path = PROJECT_ROOT / "config" / "mukomuko-pilkada.yaml"
    tokens_file: Path | None = None
    page_token_secret: bytes | None = field(default=None, repr=False)
    max_message_bytes: int = 1024 * 1024
    limits: LimitSettings = field(default_factory=LimitSettings)
    log_level: str = "INFO"
    log_format: str = "auto"
    tls: ServerTls | None = None
    allow_plaintext: bool = False

    @property
    def production(self) -> bool:
        return self.environment == "production"

    @property
    def resolved_tokens_file(self) -> Path:
        return self.tokens_file or self.data_dir / "credentials" / "tokens.yaml"

    def check_transport(self, address: str, variable: str = "the listen address") -> None:
        """Production serves gRPC in plaintext only on loopback, or when explicitly allowed.

        ``LEDGER_ALLOW_PLAINTEXT=true`` is for a service behind a TLS-terminating proxy or
        mesh that reaches it over a private link.
        """
        plaintext = self.tls is None and not self.allow_plaintext
        if plaintext and self.production and not is_loopback(address):
            raise ConfigError(
                f"{variable} {address!r} is not a loopback address and production serves "
                "gRPC there only over TLS: set LEDGER_TLS_CERT_FILE and "
                "LEDGER_TLS_KEY_FILE, or LEDGER_ALLOW_PLAINTEXT=true behind a "
                "TLS-terminating proxy"
            )

    @staticmethod
    def common_from_env(env: Mapping[str, str]) -> dict[str, Any]:
        """The shared fields, read from ``env`` and checked (production needs real secrets)."""
        secret = _secret(env, "LEDGER_PAGE_TOKEN_SECRET")
        environment = _choice(
            env, "LEDGER_ENVIRONMENT", "development", {"development", "production"}
        )
        common: dict[str, Any] = {
            "environment": environment,
            "data_dir": Path(env.get("LEDGER_DATA_DIR") or PROJECT_ROOT / "data"),
            "reference_file": Path(
                env.get("LEDGER_REFERENCE_FILE") or ServiceSettings.reference_file
            ),
            "tokens_file": Path(env["LEDGER_TOKENS_FILE"])
            if env.get("LEDGER_TOKENS_FILE")
            else None,
            "page_token_secret": secret.encode() if secret else None,
            "max_message_bytes": _int(
                env, "LEDGER_MAX_MESSAGE_BYTES", ServiceSettings.max_message_bytes, minimum=1024
            ),
            "limits": LimitSettings.from_env(env, production=environment == "production"),
            "log_level": _choice(
                env, "LEDGER_LOG_LEVEL", "INFO", {"DEBUG", "INFO", "WARNING", "ERROR"}
            ),
            "log_format": _choice(env, "LEDGER_LOG_FORMAT", "auto", {"auto", "json", "console"}),
            "tls": ServerTls.from_env(env),
            "allow_plaintext": _bool(env, "LEDGER_ALLOW_PLAINTEXT", False),
        }
        if common["environment"] == "production":
            if common["page_token_secret"] is None:
                raise ConfigError(
                    "LEDGER_PAGE_TOKEN_SECRET is required in production "
                    "(or LEDGER_PAGE_TOKEN_SECRET_FILE)"
                )
            if common["tokens_file"] is None:
                raise ConfigError("LEDGER_TOKENS_FILE is required in production")
        return common


@dataclass(frozen=True)
class LedgerSettings(ServiceSettings):
    """Settings of the ledger service (see README, "Configuration")."""

    listen: str = "127.0.0.1:50051"
    max_workers: int = 32
    cache_size: int = 3000  # incidents kept in memory for the write path (a few KB each)
    grace_seconds: float = 10.0
    store_env: dict[str, str] = field(default_factory=dict, repr=False)  # POSTGRES_PASSWORD
    relay: RelaySettings = field(default_factory=RelaySettings)
    signing_key_file: Path | None = None
    checkpoint_seconds: float = 300.0
    metrics_listen: str = ""  # host:port of the Prometheus endpoint; empty = off
    # Times callers state (see services/ledger/domain/times.py): nothing the ledger records
    # happened before its era; a report may be ahead of the server's clock by the skew of
    # an agency system without NTP (minutes; five is also Kerberos's default tolerance); a
    # decision is planned at most a year ahead (they cover days or weeks of an election).
    earliest_time: datetime = datetime(2000, 1, 1, tzinfo=UTC)
    max_clock_skew_seconds: float = 300.0
    max_decision_days: float = 366.0
    store_check_seconds: float = 1.0  # how often health asks PostgreSQL whether it answers

    def audit(self) -> AuditSettings:
        return AuditSettings(
            environment=self.environment,
            data_dir=self.data_dir,
            signing_key_file=self.signing_key_file,
            checkpoint_seconds=self.checkpoint_seconds,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LedgerSettings:
        env = dict(os.environ if env is None else env)
        common = cls.common_from_env(env)
        audit = AuditSettings.from_env(env)
        settings = cls(
            **common,
            signing_key_file=audit.signing_key_file,
            checkpoint_seconds=audit.checkpoint_seconds,
            listen=env.get("LEDGER_LISTEN") or cls.listen,
            metrics_listen=env.get("LEDGER_METRICS_LISTEN", ""),
            max_workers=_int(env, "LEDGER_MAX_WORKERS", cls.max_workers, minimum=1),
            cache_size=_int(env, "LEDGER_CACHE_SIZE", cls.cache_size, minimum=0),
            grace_seconds=_float(env, "LEDGER_GRACE_SECONDS", cls.grace_seconds),
            earliest_time=_time(env, "LEDGER_EARLIEST_TIME", cls.earliest_time),
            max_clock_skew_seconds=_non_negative(
                env, "LEDGER_MAX_CLOCK_SKEW_SECONDS", cls.max_clock_skew_seconds
            ),
            max_decision_days=_non_negative(env, "LEDGER_MAX_DECISION_DAYS", cls.max_decision_days),
            store_check_seconds=_float(env, "LEDGER_STORE_CHECK_SECONDS", cls.store_check_seconds),
            store_env=store_environment(env, common["data_dir"]),
            relay=RelaySettings.from_env(env),
        )
        settings.check_transport(settings.listen, "LEDGER_LISTEN")
        if settings.store_check_seconds <= 0:
            raise ConfigError("LEDGER_STORE_CHECK_SECONDS must be more than 0")
        return settings


def postgres_password(env: Mapping[str, str]) -> dict[str, str]:
    """``POSTGRES_PASSWORD`` for the store, from itself or from ``POSTGRES_PASSWORD_FILE``."""
    password = _secret(env, "POSTGRES_PASSWORD")
    return {"POSTGRES_PASSWORD": password} if password else {}


def postgres_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The ``POSTGRES_*`` settings of a store: the password read (from its file too), and
    ``POSTGRES_CONNECT_TIMEOUT`` 3 s unless set: the longest a connection attempt, or a
    wait for a pooled connection, lasts (the library's default, 30 s, is far longer
    than a caller's deadline)."""
    keys = {k: v for k, v in env.items() if k.startswith("POSTGRES_")}
    keys.pop("POSTGRES_PASSWORD_FILE", None)
    keys.update(postgres_password(env))
    keys.setdefault("POSTGRES_CONNECT_TIMEOUT", "3")
    return keys


def store_environment(env: Mapping[str, str], data_dir: Path) -> dict[str, str]:
    """The eventsourcing library's variables, with SQLite in the data dir as default."""
    keys = {
        k: v
        for k, v in env.items()
        if k.startswith(("PERSISTENCE_MODULE", "SQLITE_", "CREATE_TABLE"))
    }
    keys.update(postgres_environment(env))
    module = keys.get("PERSISTENCE_MODULE", "eventsourcing.sqlite")
    keys["PERSISTENCE_MODULE"] = module
    if module == "eventsourcing.sqlite":
        keys.setdefault("SQLITE_DBNAME", str(data_dir / "ledger.sqlite"))
        keys.setdefault("SQLITE_LOCK_TIMEOUT", "10")
    return keys


@dataclass(frozen=True)
class RunSettings:
    """Settings of the ``make run`` supervisor, ``python -m services.run`` (see README).

    ``NATS_URL`` set: use that NATS server and start none. Unset: start the bundled
    nats-server on 127.0.0.1:``LEDGER_NATS_PORT`` (never 4222, which the machine's own
    NATS may hold) with its JetStream store in ``$LEDGER_DATA_DIR/nats``.
    """

    nats_url: str | None = field(default=None, repr=False)  # may embed user:password
    nats_port: int = 14222
    ledger_listen: str = "127.0.0.1:50051"
    notifier_listen: str = "127.0.0.1:50052"
    data_dir: Path = PROJECT_ROOT / "data"
    log_level: str = "INFO"
    log_format: str = "auto"

    @property
    def nats_store_dir(self) -> Path:
        return self.data_dir / "nats"

    @property
    def nats_log_file(self) -> Path:
        return self.data_dir / "nats-server.log"

    @property
    def dev_tokens_file(self) -> Path:
        return self.data_dir / "credentials" / "dev-tokens.yaml"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RunSettings:
        env = dict(os.environ if env is None else env)
        nats_port = _int(env, "LEDGER_NATS_PORT", cls.nats_port, minimum=1)
        if nats_port > 65535:
            raise ConfigError(f"LEDGER_NATS_PORT must be at most 65535, got {nats_port}")
        return cls(
            nats_url=env.get("NATS_URL") or None,
            nats_port=nats_port,
            ledger_listen=env.get("LEDGER_LISTEN") or cls.ledger_listen,
            notifier_listen=env.get("NOTIFIER_LISTEN") or cls.notifier_listen,
            data_dir=Path(env.get("LEDGER_DATA_DIR") or PROJECT_ROOT / "data"),
            log_level=_choice(
                env, "LEDGER_LOG_LEVEL", "INFO", {"DEBUG", "INFO", "WARNING", "ERROR"}
            ),
            log_format=_choice(env, "LEDGER_LOG_FORMAT", "auto", {"auto", "json", "console"}),
        )


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(env: Mapping[str, str], key: str) -> tuple[IPNetwork, ...]:
    """Comma-separated CIDRs (``10.20.0.0/16,fd00::/8``); a bare address is one host."""
    networks = []
    for item in (env.get(key) or "").split(","):
        if item.strip():
            try:
                networks.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                raise ConfigError(f"{key}: {item.strip()!r} is not a network (CIDR)") from None
    return tuple(networks)


@dataclass(frozen=True)
class WebhookSettings:
    max_attempts: int = 8
    timeout_seconds: float = 5.0
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 300.0
    concurrency: int = 32
    per_endpoint_concurrency: int = 4
    # Targets on non-public addresses (loopback, private, link-local, ...) are refused
    # unless they fall in one of these networks (NOTIFIER_WEBHOOK_ALLOW_NETWORKS).
    allow_networks: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class NotifierSettings(ServiceSettings):
    """Settings of the notifier service (see README, "Configuration")."""

    listen: str = "127.0.0.1:50052"
    nats_url: str = field(default="", repr=False)  # may embed user:password
    nats: NatsClientSettings = field(default_factory=NatsClientSettings)
    stream: StreamSettings = field(default_factory=StreamSettings)
    consumer: str = "notifier"
    ack_wait_seconds: float = 10.0
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    max_workers: int = 64
    grace_seconds: float = 5.0
    store_env: dict[str, str] = field(default_factory=dict, repr=False)  # POSTGRES_PASSWORD
    metrics_listen: str = ""  # host:port of the Prometheus endpoint; empty = off
    # The AES-256-GCM key that seals webhook secrets at rest (32 bytes, base64 or raw).
    # Unset in development: generated on first use as <data_dir>/keys/notifier-webhook.key.
    webhook_key_file: Path | None = None

    @property
    def resolved_webhook_key_file(self) -> Path:
        return self.webhook_key_file or self.data_dir / "keys" / "notifier-webhook.key"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> NotifierSettings:
        env = dict(os.environ if env is None else env)
        common = cls.common_from_env(env)
        nats_url = env.get("NATS_URL", "")
        if not nats_servers(nats_url):
            raise ConfigError("NATS_URL is required: the notifier consumes the ledger's stream")
        store = _choice(env, "NOTIFIER_STORE", "sqlite", {"sqlite", "postgres"})
        if store == "postgres":
            store_env = {
                **postgres_environment(env),
                "PERSISTENCE_MODULE": "eventsourcing.postgres",
            }
        else:
            store_env = {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": env.get("NOTIFIER_SQLITE_DBNAME")
                or str(common["data_dir"] / "notifier.sqlite"),
            }
        settings = cls(
            **common,
            listen=env.get("NOTIFIER_LISTEN") or cls.listen,
            metrics_listen=env.get("NOTIFIER_METRICS_LISTEN", ""),
            nats_url=nats_url,
            nats=NatsClientSettings.from_env(env),
            stream=StreamSettings.from_env(env),
            consumer=env.get("NOTIFIER_CONSUMER") or cls.consumer,
            ack_wait_seconds=_float(env, "NOTIFIER_ACK_WAIT_SECONDS", cls.ack_wait_seconds),
            webhooks=WebhookSettings(
                max_attempts=_int(env, "NOTIFIER_WEBHOOK_MAX_ATTEMPTS", 8, minimum=1),
                timeout_seconds=_float(env, "NOTIFIER_WEBHOOK_TIMEOUT_SECONDS", 5.0),
                backoff_seconds=_float(env, "NOTIFIER_WEBHOOK_BACKOFF_SECONDS", 1.0),
                max_backoff_seconds=_float(env, "NOTIFIER_WEBHOOK_MAX_BACKOFF_SECONDS", 300.0),
                allow_networks=_networks(env, "NOTIFIER_WEBHOOK_ALLOW_NETWORKS"),
            ),
            max_workers=_int(env, "NOTIFIER_MAX_WORKERS", cls.max_workers, minimum=4),
            grace_seconds=_float(env, "NOTIFIER_GRACE_SECONDS", cls.grace_seconds),
            store_env=store_env,
            webhook_key_file=_path(env, "NOTIFIER_WEBHOOK_KEY_FILE"),
        )
        if settings.production and settings.webhook_key_file is None:
            # Replicas must share the key, and a production data directory may be
            # read-only or per-replica: a generated key would not do.
            raise ConfigError("NOTIFIER_WEBHOOK_KEY_FILE is required in production")
        settings.check_transport(settings.listen, "NOTIFIER_LISTEN")
        return settings


@dataclass(frozen=True)
class AuditSettings:
    """Tamper evidence: the checkpoint signing key and how often checkpoints are made.

    ``LEDGER_SIGNING_KEY_FILE`` names an Ed25519 private key (PEM PKCS#8, or the raw 32-byte
    seed in base64). Unset in development, a key pair is generated on first use in
    ``<LEDGER_DATA_DIR>/keys/`` (``ledger-signing.key``, mode 0600, and
    ``ledger-signing.pub``); in production the key must be given.
    ``LEDGER_CHECKPOINT_SECONDS`` (default 300) is the checkpoint period; 0 = only on demand.
    """

    environment: str = "development"
    data_dir: Path = PROJECT_ROOT / "data"
    signing_key_file: Path | None = None
    checkpoint_seconds: float = 300.0

    @property
    def production(self) -> bool:
        return self.environment == "production"

    @property
    def key_dir(self) -> Path:
        """Where development keys are generated."""
        return self.data_dir / "keys"

    @property
    def resolved_signing_key_file(self) -> Path:
        return self.signing_key_file or self.key_dir / "ledger-signing.key"

    @property
    def public_key_file(self) -> Path:
        """The public key beside the private key (written when the pair is generated)."""
        return self.resolved_signing_key_file.with_suffix(".pub")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AuditSettings:
        env = dict(os.environ if env is None else env)
        environment = _choice(
            env, "LEDGER_ENVIRONMENT", "development", {"development", "production"}
        )
        key_file = env.get("LEDGER_SIGNING_KEY_FILE")
        if environment == "production" and not key_file:
            raise ConfigError("LEDGER_SIGNING_KEY_FILE is required in production")
        seconds = _float(env, "LEDGER_CHECKPOINT_SECONDS", cls.checkpoint_seconds)
        if seconds < 0:
            raise ConfigError(f"LEDGER_CHECKPOINT_SECONDS must not be negative, got {seconds}")
        return cls(
            environment=environment,
            data_dir=Path(env.get("LEDGER_DATA_DIR") or PROJECT_ROOT / "data"),
            signing_key_file=Path(key_file) if key_file else None,
            checkpoint_seconds=seconds,
        )

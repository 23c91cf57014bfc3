"""Configuration from the environment: every variable declared once, checked at start.

Each variable the services read is declared below, once, in a group of its topic: its
name, type, default, bounds and description, and which service reads it.
docs/configuration.md is generated from these declarations
(``python -m services.common.configdoc``; a unit test fails when it is stale). A value that
does not fit is refused at start, one line per variable naming it, the value (never a
secret's) and what is allowed: the service logs the lines and exits with status 2. A
secret may also come from the file named by its ``_FILE`` variable.

The rest of the code uses the frozen dataclasses further down (:class:`LedgerSettings`,
:class:`NotifierSettings`, ...), built from the checked values; their defaults are the
declarations'. The event store is configured with the eventsourcing library's own
variables (PERSISTENCE_MODULE, SQLITE_*, POSTGRES_*): the declared ones are checked here,
and all of them pass through unchanged; the ledger only fills in the embedded default
(SQLite in the data directory) when nothing is set.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import ssl
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, cast, get_args, get_origin
from urllib.parse import urlsplit

from annotated_types import Ge, Gt, Le
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from eventsourcing.utils import strtobool
from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict

from services.common.started import STARTED_FILE_VARIABLE

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ConfigError(ValueError):
    """A setting is missing or malformed; the service refuses to start.

    ``problems`` holds one line per problem; the message joins them with "; ".
    """

    def __init__(self, *problems: str) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


# --- how a value is read ----------------------------------------------------------------------

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Rule:
    """What a variable's type allows, as in "must be <text>" (in errors and in the docs)."""

    kind: str  # the docs' "Type" column
    text: str


def _refuse(rule: str) -> PydanticCustomError:
    return PydanticCustomError("setting", "must be {rule}", {"rule": rule})


def _integer(value: object) -> object:
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise _refuse("an integer") from None
    return value


def _number(value: object) -> object:
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise _refuse("a number") from None
        if not math.isfinite(number):
            raise _refuse("a finite number")
        return number
    return value


def _boolean(value: object) -> object:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise _refuse(_BOOLEAN_TEXT)
    return value


def _library_boolean(value: object) -> object:
    """The eventsourcing library's reading (``y``/``n``, ``t``/``f`` too)."""
    if isinstance(value, str):
        try:
            return bool(strtobool(value))
        except ValueError:
            raise _refuse(_LIBRARY_BOOLEAN_TEXT) from None
    return value


def _time(value: object) -> object:
    """An ISO-8601 date or time (UTC unless it names its offset)."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise _refuse(_TIME_TEXT) from None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return value


def _networks(value: object) -> object:
    """Comma-separated CIDRs (``10.20.0.0/16,fd00::/8``); a bare address is one host."""
    if isinstance(value, str):
        networks = []
        for item in value.split(","):
            if item.strip():
                try:
                    networks.append(ipaddress.ip_network(item.strip(), strict=False))
                except ValueError:
                    raise _refuse(f"{_NETWORKS_TEXT} ({item.strip()!r} is not one)") from None
        return tuple(networks)
    return value


def _listen_address(value: str) -> str:
    """``host:port``, ``[v6]:port`` (port 0 to 65535, 0 = any free one) or a Unix socket."""
    if value and not value.startswith(("unix:", "unix-abstract:")):
        port = value.rpartition(":")[2]
        if ":" not in value or not port.isdigit() or int(port) > 65535:
            raise _refuse(_LISTEN_TEXT)
    return value


def _http_address(value: str) -> str:
    """``host:port`` of an HTTP endpoint; empty = off."""
    if value:
        port = value.rpartition(":")[2]
        if ":" not in value or not port.isdigit() or int(port) > 65535:
            raise _refuse(_HTTP_TEXT)
    return value


def _sixteen_bytes(value: str | None) -> str | None:
    if value is not None and len(value.encode()) < 16:
        raise _refuse("at least 16 bytes")
    return value


def _media_types(value: object) -> object:
    """Comma-separated media types (``image/jpeg,application/pdf``), each one the ledger can
    recognise in a file's content (:data:`EVIDENCE_MEDIA_TYPES`)."""
    if isinstance(value, str):
        types = tuple(item.strip().lower() for item in value.split(",") if item.strip())
    elif isinstance(value, tuple | list):
        types = tuple(str(item) for item in value)
    else:
        return value
    for item in types:
        if item not in EVIDENCE_MEDIA_TYPES:
            raise _refuse(f"{_MEDIA_TYPES_TEXT} ({item!r} is not one)")
    return types


#: The media types the ledger recognises in evidence by their first bytes (the sniffing is
#: services/ledger/domain/evidence.py's; this list is what a setting may allow).
EVIDENCE_MEDIA_TYPES = (
    "image/jpeg",
    "image/png",
    "application/pdf",
    "video/mp4",
    "audio/mp4",
    "audio/aac",
    "audio/wav",
)
_MEDIA_TYPES_TEXT = "media types separated by commas, among " + ", ".join(EVIDENCE_MEDIA_TYPES)

_BOOLEAN_TEXT = "true or false (also yes/no, on/off, 1/0)"
_LIBRARY_BOOLEAN_TEXT = "y or n (also yes/no, true/false, t/f, on/off, 1/0)"
_TIME_TEXT = "an ISO-8601 date or time (UTC unless it names its offset)"
_NETWORKS_TEXT = "networks (CIDR, such as 10.0.0.0/8 or fd00::/8) separated by commas"
_LISTEN_TEXT = "host:port or [v6]:port (port 0 to 65535) or unix:path"
_HTTP_TEXT = "host:port (port 0 to 65535)"

Integer = Annotated[int, BeforeValidator(_integer), Rule("integer", "an integer")]
Number = Annotated[float, BeforeValidator(_number), Rule("number", "a number")]
Boolean = Annotated[bool, BeforeValidator(_boolean), Rule("boolean", _BOOLEAN_TEXT)]
LibraryBoolean = Annotated[
    bool, BeforeValidator(_library_boolean), Rule("boolean", _LIBRARY_BOOLEAN_TEXT)
]
Time = Annotated[datetime, BeforeValidator(_time), Rule("time", _TIME_TEXT)]
Networks = Annotated[
    tuple[IPNetwork, ...], NoDecode, BeforeValidator(_networks), Rule("CIDR list", _NETWORKS_TEXT)
]
MediaTypes = Annotated[
    tuple[str, ...], NoDecode, BeforeValidator(_media_types), Rule("list", _MEDIA_TYPES_TEXT)
]
ListenAddress = Annotated[str, AfterValidator(_listen_address), Rule("address", _LISTEN_TEXT)]
HttpAddress = Annotated[str, AfterValidator(_http_address), Rule("address", _HTTP_TEXT)]
FilePath = Annotated[Path, Rule("path", "a path")]
Text = Annotated[str, Rule("string", "a string")]
Secret = Annotated[str, Rule("secret", "a string")]

LEDGER, NOTIFIER, RUN, ROOM = "ledger", "notifier", "run", "situation-room"
#: Who reads the variables: the ledger (with its tools ``python -m services.ledger.audit`` and
#: ``python -m services.ledger.projections``), the notifier, ``make run``'s supervisor and the
#: situation room (the web page, ``services/situation_room``).
READERS = (LEDGER, NOTIFIER, RUN, ROOM)
_SERVICES = (LEDGER, NOTIFIER)


def _setting(
    name: str,
    default: Any,
    description: str,
    *,
    read_by: tuple[str, ...] | None = None,
    secret: bool = False,
    shown_default: str | None = None,
    **bounds: Any,
) -> Any:
    """One variable: ``name`` in the environment, its default (``shown_default`` in the docs
    when it is worked out at start), description, readers (else its group's) and bounds."""
    extra: dict[str, Any] = {}
    if read_by is not None:
        extra["read_by"] = list(read_by)
    if secret:
        extra["secret"] = True
    if shown_default is not None:
        extra["shown_default"] = shown_default
    return Field(
        default, alias=name, description=description, json_schema_extra=extra or None, **bounds
    )


class Group(BaseSettings):
    """The variables of one topic (a section of docs/configuration.md)."""

    model_config = SettingsConfigDict(
        case_sensitive=True, env_ignore_empty=True, extra="ignore", frozen=True
    )
    heading: ClassVar[str]
    read_by: ClassVar[tuple[str, ...]] = _SERVICES


# --- the declarations ---------------------------------------------------------------------------

#: The rate limit per agency when ``LEDGER_RATE_LIMIT_PER_SECOND`` is unset in production.
PRODUCTION_RATE_PER_SECOND = 200.0


class ServiceVariables(Group):
    """What the ledger and the notifier read the same way (``make run`` some of it too)."""

    heading = "Both services"

    environment: Literal["development", "production"] = _setting(
        "LEDGER_ENVIRONMENT",
        "development",
        "`production` refuses development credentials, requires `LEDGER_TOKENS_FILE`, "
        "`LEDGER_PAGE_TOKEN_SECRET`, `LEDGER_SIGNING_KEY_FILE` (ledger) and "
        "`NOTIFIER_WEBHOOK_KEY_FILE` (notifier), serves plaintext gRPC only on loopback, "
        "refuses SQLite while `POSTGRES_*` variables are set (a misspelt "
        "`PERSISTENCE_MODULE` or `NOTIFIER_STORE`) and turns the rate limit on; the situation "
        "room then requires `SITUATION_ROOM_SESSION_KEY` and `SITUATION_ROOM_TOKEN`",
        read_by=(LEDGER, NOTIFIER, ROOM),
    )
    data_dir: FilePath = _setting(
        "LEDGER_DATA_DIR",
        PROJECT_ROOT / "data",
        "where the embedded stores, credentials, keys and secrets live (and `make run`'s "
        "NATS store)",
        read_by=(LEDGER, NOTIFIER, RUN, ROOM),
    )
    reference_file: FilePath = _setting(
        "LEDGER_REFERENCE_FILE",
        PROJECT_ROOT / "config" / "mukomuko-pilkada.yaml",
        "reference data: agencies, kecamatan/desa, categories, severities",
        read_by=(LEDGER, NOTIFIER, ROOM),
    )
    tokens_file: FilePath | None = _setting(
        "LEDGER_TOKENS_FILE",
        None,
        "users: `agency`, `officer`, `token_sha256` (SHA-256 of the bearer token); required "
        "in production",
        shown_default="`$LEDGER_DATA_DIR/credentials/tokens.yaml`, generated (development)",
    )
    page_token_secret: Annotated[Secret | None, AfterValidator(_sixteen_bytes)] = _setting(
        "LEDGER_PAGE_TOKEN_SECRET",
        None,
        "key that signs page tokens (at least 16 bytes; the same on every replica); "
        "required in production, where the generated (development) one is refused",
        secret=True,
        shown_default="random, kept in `$LEDGER_DATA_DIR/page-token.secret` (development)",
    )
    max_message_bytes: Integer = _setting(
        "LEDGER_MAX_MESSAGE_BYTES",
        1024 * 1024,
        "largest request accepted; a larger one is `RESOURCE_EXHAUSTED`",
        ge=1024,
        le=2**31 - 1,
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = _setting(
        "LEDGER_LOG_LEVEL",
        "INFO",
        "the lowest level logged",
        read_by=(LEDGER, NOTIFIER, RUN, ROOM),
    )
    log_format: Literal["auto", "json", "console"] = _setting(
        "LEDGER_LOG_FORMAT",
        "auto",
        "`json` lines, `console` (readable), or `auto`: console on a terminal, else JSON",
        read_by=(LEDGER, NOTIFIER, RUN, ROOM),
    )
    allow_plaintext: Boolean = _setting(
        "LEDGER_ALLOW_PLAINTEXT",
        False,
        "production only: allow plaintext gRPC on a non-loopback address (behind a "
        "TLS-terminating proxy or mesh)",
    )


class LimitVariables(Group):
    """Per agency, on each service, counted after the caller is authenticated (see
    [Limits](operations.md#limits)). The rate limit is off in development and on in
    production unless set."""

    heading = "Limits per agency (both services)"

    rate_per_second: Annotated[Number, Ge(0.0)] | None = _setting(
        "LEDGER_RATE_LIMIT_PER_SECOND",
        None,
        "calls per second per agency (see [Limits](operations.md#limits)); `0` = no limit",
        shown_default=f"`0` (off) in development, `{PRODUCTION_RATE_PER_SECOND:g}` in production",
    )
    burst: Annotated[Integer, Ge(1)] | None = _setting(
        "LEDGER_RATE_LIMIT_BURST",
        None,
        "calls an agency may make at once before the rate applies",
        shown_default="twice the rate (at least 1)",
    )
    max_streams_per_agency: Integer = _setting(
        "LEDGER_MAX_STREAMS_PER_AGENCY",
        16,
        "open server streams per agency, on each service; `0` = no limit",
        ge=0,
    )
    auth_max_failures: Integer = _setting(
        "LEDGER_AUTH_MAX_FAILURES",
        30,
        "failed authentications from one address (or with one token prefix) within the "
        "window after which it is refused for a window; `0` = no throttle",
        ge=0,
    )
    auth_window_seconds: Number = _setting(
        "LEDGER_AUTH_WINDOW_SECONDS", 60.0, "that window", gt=0.0
    )
    auth_max_keys: Integer = _setting(
        "LEDGER_AUTH_THROTTLE_KEYS",
        10_000,
        "addresses and token prefixes remembered at once (least recently seen forgotten "
        "first; about 200 bytes each)",
        ge=1,
    )


class TlsVariables(Group):
    """The files are read once, at start, and checked: readable, valid PEM, the key belongs
    to the certificate (see [security.md](security.md#tls-on-the-grpc-ports))."""

    heading = "TLS on the gRPC ports (both services)"

    cert_file: FilePath | None = _setting(
        "LEDGER_TLS_CERT_FILE",
        None,
        "the server's certificate chain (PEM, its own certificate first); with "
        "`LEDGER_TLS_KEY_FILE`",
        shown_default="unset (plaintext)",
    )
    key_file: FilePath | None = _setting(
        "LEDGER_TLS_KEY_FILE",
        None,
        "its private key (PEM, unencrypted; keep the file mode 0600)",
        shown_default="unset (plaintext)",
    )
    client_ca_file: FilePath | None = _setting(
        "LEDGER_TLS_CLIENT_CA_FILE",
        None,
        "the CA (or CAs) that sign the agencies' client certificates: turns on mutual TLS",
    )
    client_auth: Literal["none", "require"] | None = _setting(
        "LEDGER_TLS_CLIENT_AUTH",
        None,
        "whether clients must present a certificate signed by the client CA",
        shown_default="`require` with a client CA, else `none`",
    )


class NatsVariables(Group):
    """The relay (in the ledger) and the notifier connect to NATS with the same settings
    (see [security.md](security.md#nats-tls-and-credentials))."""

    heading = "NATS connection (the ledger's relay and the notifier)"

    url: Text = _setting(
        "NATS_URL",
        "",
        "NATS server, or the nodes of a cluster separated by commas "
        "(`nats://a:4222,nats://b:4222`, see [A NATS cluster](fan-out.md#a-nats-cluster)); "
        "may embed "
        "`user:password@` (prefer `NATS_USER`). "
        "Unset, the ledger runs without its relay and `make run` starts its own nats-server; "
        "the notifier requires it",
        read_by=(LEDGER, NOTIFIER, RUN),
        shown_default="unset",
    )
    tls_ca_file: FilePath | None = _setting(
        "NATS_TLS_CA_FILE",
        None,
        "CA that signed the NATS server's certificate",
        shown_default="the system's roots",
    )
    tls_cert_file: FilePath | None = _setting(
        "NATS_TLS_CERT_FILE",
        None,
        "client certificate, for a server that verifies clients; with `NATS_TLS_KEY_FILE`",
    )
    tls_key_file: FilePath | None = _setting(
        "NATS_TLS_KEY_FILE", None, "the client certificate's key (PEM, unencrypted)"
    )
    tls_handshake_first: Boolean = _setting(
        "NATS_TLS_HANDSHAKE_FIRST",
        False,
        "TLS from the first byte (the server's `tls` block needs `handshake_first: true`)",
    )
    user: Text = _setting("NATS_USER", "", "NATS user; with `NATS_PASSWORD`", shown_default="unset")
    password: Secret = _setting(
        "NATS_PASSWORD", "", "that user's password", secret=True, shown_default="unset"
    )
    token: Secret = _setting(
        "NATS_TOKEN",
        "",
        "an authorization token, instead of user and password",
        secret=True,
        shown_default="unset",
    )


class StreamVariables(Group):
    """Where the relay publishes the events and where the notifier consumes them."""

    heading = "The JetStream stream (the same on the ledger and the notifier)"

    name: Text = _setting("LEDGER_STREAM", "LEDGER_EVENTS", "the stream's name")
    subject_prefix: Text = _setting(
        "LEDGER_STREAM_SUBJECT_PREFIX",
        "ledger.v1.events",
        "subject prefix of the events (see [fan-out.md](fan-out.md))",
    )
    checkpoint_subject: Text = _setting(
        "LEDGER_STREAM_CHECKPOINT_SUBJECT",
        "ledger.v1.checkpoints",
        "subject of the audit checkpoints",
    )
    replicas: Integer = _setting(
        "LEDGER_STREAM_REPLICAS",
        1,
        "stream replicas: 3 in a three-node NATS cluster (at most the number of nodes)",
        ge=1,
        le=5,
    )
    storage: Literal["file", "memory"] = _setting(
        "LEDGER_STREAM_STORAGE", "file", "where NATS keeps the stream"
    )
    max_age_days: Number = _setting(
        "LEDGER_STREAM_MAX_AGE_DAYS",
        0.0,
        "how long the stream keeps events; `0` = as long as its other limits allow",
        ge=0.0,
    )
    duplicate_window_seconds: Number = _setting(
        "LEDGER_STREAM_DUPLICATE_WINDOW_SECONDS",
        120.0,
        "JetStream's deduplication window",
        ge=0.0,
    )


class LedgerVariables(Group):
    """The ledger service, with its relay and audit checkpoints (and its tools
    ``ledger-audit`` and ``ledger-projections``)."""

    heading = "The ledger"
    read_by = (LEDGER,)

    listen: ListenAddress = _setting(
        "LEDGER_LISTEN",
        "127.0.0.1:50051",
        "gRPC listen address (`0.0.0.0:50051` to serve other machines)",
        read_by=(LEDGER, RUN),
    )
    metrics_listen: HttpAddress = _setting(
        "LEDGER_METRICS_LISTEN",
        "",
        "`host:port` of the Prometheus endpoint (`/metrics`, plain HTTP; see "
        "[Metrics](operations.md#metrics))",
        shown_default="unset (off)",
    )
    max_workers: Integer = _setting("LEDGER_MAX_WORKERS", 32, "request threads", ge=1)
    cache_size: Integer = _setting(
        "LEDGER_CACHE_SIZE",
        3000,
        "incidents whose latest state the write path keeps in memory (the most recently "
        "written; 2-5 KB each, so 6-15 MB when full); a command on another incident loads "
        "it from the store first. `0` = none",
        ge=0,
    )
    snapshot_interval: Integer = _setting(
        "LEDGER_SNAPSHOT_INTERVAL",
        100,
        "events of an incident between two of its sealed snapshots (its state, signed with "
        "the audit signing key): a load replays only the events after the latest one, so a "
        "command on a long incident not in memory costs about the same as on a short one. "
        "`0` = none written (those stored are still read)",
        ge=0,
    )
    triage_max_items: Integer = _setting(
        "LEDGER_TRIAGE_MAX_ITEMS",
        500,
        "items a `TriageIncidents` call may hold (more is refused, `INVALID_ARGUMENT`, before "
        "anything is recorded); each item is one command, run one after the other",
        ge=1,
        le=10000,
    )
    grace_seconds: Number = _setting(
        "LEDGER_GRACE_SECONDS",
        10.0,
        "how long a stop waits for calls in flight (see "
        "[Stopping](operations.md#logs-health-and-stopping))",
        ge=0.0,
    )
    earliest_time: Time = _setting(
        "LEDGER_EARLIEST_TIME",
        datetime(2000, 1, 1, tzinfo=UTC),
        "the ledger's era: an earlier `occur_time`, `valid_from` or `valid_until` is refused",
    )
    max_clock_skew_seconds: Number = _setting(
        "LEDGER_MAX_CLOCK_SKEW_SECONDS",
        300.0,
        "how far an `occur_time` (or a corrected `occurred_at`) may be ahead of the ledger's clock",
        ge=0.0,
    )
    max_decision_days: Number = _setting(
        "LEDGER_MAX_DECISION_DAYS",
        366.0,
        "how far ahead a decision's `valid_from`/`valid_until` may be",
        ge=0.0,
    )
    store_check_seconds: Number = _setting(
        "LEDGER_STORE_CHECK_SECONDS",
        1.0,
        "how often the ledger, and a notifier with `NOTIFIER_STORE=postgres`, ask PostgreSQL "
        "whether it answers; their health is `NOT_SERVING` while it does not. Also how often "
        "a ledger (on any store) asks whether a key rotation retired its signing key: then "
        "it records nothing more and is `NOT_SERVING` until restarted with the new key",
        read_by=(LEDGER, NOTIFIER),
        gt=0.0,
    )
    signing_key_file: FilePath | None = _setting(
        "LEDGER_SIGNING_KEY_FILE",
        None,
        "Ed25519 key that signs checkpoints (PEM PKCS#8, or the raw 32-byte seed in "
        "base64); required in production, where a generated (development) key is refused",
        shown_default="generated in `$LEDGER_DATA_DIR/keys/` (development)",
    )
    retired_signing_keys_file: FilePath | None = _setting(
        "LEDGER_RETIRED_SIGNING_KEYS_FILE",
        None,
        "public keys of signing keys the ledger has retired (PEM, or the raw 32-byte key in "
        "base64, one a line; several in one file): their seals still verify, and a ledger "
        "started with a new key on a store last signed with one of them rotates to it "
        "(docs/operations.md, rotating the signing key)",
        shown_default="unset (no retired key)",
    )
    checkpoint_seconds: Number = _setting(
        "LEDGER_CHECKPOINT_SECONDS",
        300.0,
        "how often a checkpoint is written; `0` = only on demand",
        ge=0.0,
    )
    ingest_max_reports: Integer = _setting(
        "LEDGER_INGEST_MAX_REPORTS",
        500,
        "reports one `IngestReports` call may hold; more is `INVALID_ARGUMENT` "
        "(`INVALID_FIELD`, field `reports`), nothing recorded",
        ge=1,
        le=10_000,
    )
    ingest_max_bytes: Integer = _setting(
        "LEDGER_INGEST_MAX_BYTES",
        1024 * 1024,
        "size of one `IngestReports` request, in bytes; a larger one is "
        "`RESOURCE_EXHAUSTED` (`INGEST_TOO_LARGE`), nothing recorded. A request over "
        "`LEDGER_MAX_MESSAGE_BYTES` is refused by gRPC before",
        ge=1024,
        le=2**31 - 1,
    )
    ingest_process: Boolean = _setting(
        "LEDGER_INGEST_PROCESS",
        True,
        "prepare `IngestReports` batches (checks, events, seals) in a child process of the "
        "ledger, so that single commands do not wait behind their Python; `false`: in the "
        "ledger's own process",
    )
    # 2,000 rather than 500: each batch's acks are awaited before the next is published,
    # and fewer, larger batches left fewer idle gaps; the relay drained 15,900-16,600
    # events/s instead of 13,500-14,600 (docs/performance.md, "The relay's encoder").
    relay_batch: Integer = _setting(
        "LEDGER_RELAY_BATCH", 2000, "events per relay round trip to NATS", ge=1
    )
    relay_poll_seconds: Number = _setting(
        "LEDGER_RELAY_POLL_SECONDS",
        0.5,
        "how often the relay looks for other processes' writes (SQLite)",
        gt=0.0,
    )
    relay_unresponsive_seconds: Number = _setting(
        "LEDGER_RELAY_UNRESPONSIVE_SECONDS",
        15.0,
        "a relay process that has said nothing for this long (it reports every second: "
        "frozen, or hung) is killed and started again, and its leader lock passes on",
        gt=0.0,
    )
    personal_data_keys: Secret | None = _setting(
        "LEDGER_PERSONAL_DATA_KEYS",
        None,
        "key-encryption keys of reporters' and witnesses' personal data: `id:base64key` "
        "(32 bytes), several separated by commas, the first wraps new keys and the others "
        "still open what they wrapped (rotation; see [Personal data](personal-data.md)); "
        "required in production, where generated (`dev-`) keys are refused",
        secret=True,
        shown_default="generated in `$LEDGER_DATA_DIR/keys/personal-data.keys` (development)",
    )
    personal_data_retention_days: Number = _setting(
        "LEDGER_PERSONAL_DATA_RETENTION_DAYS",
        0.0,
        "erase the personal data of an incident this many days after it was closed (unless "
        "a legal hold is in force); `0` = keep until erased on request",
        ge=0.0,
    )
    personal_data_sweep_grace_seconds: Number = _setting(
        "LEDGER_PERSONAL_DATA_SWEEP_GRACE_SECONDS",
        3600.0,
        "how old the keys written for a report must be before the ledger deletes them when "
        "the report was never saved (checked at start and every hour; see "
        '[Personal data](personal-data.md), "Keys of a report that failed")',
        gt=0.0,
    )


class EvidenceVariables(Group):
    """Evidence attached to incidents: files kept in the NATS JetStream object store under
    their SHA-256 (see [evidence.md](evidence.md)). The ledger needs `NATS_URL` for them."""

    heading = "Evidence (the ledger)"
    read_by = (LEDGER,)

    bucket: Text = _setting(
        "LEDGER_EVIDENCE_BUCKET", "evidence", "the object store bucket the files are kept in"
    )
    replicas: Integer = _setting(
        "LEDGER_EVIDENCE_REPLICAS",
        1,
        "the bucket's replicas: 3 in a three-node NATS cluster (at most the number of nodes)",
        ge=1,
        le=5,
    )
    max_mb: Number = _setting(
        "LEDGER_EVIDENCE_MAX_MB",
        25.0,
        "the largest file accepted, in megabytes (10^6 bytes); a larger one is "
        "`RESOURCE_EXHAUSTED`",
        gt=0.0,
    )
    media_types: MediaTypes = _setting(
        "LEDGER_EVIDENCE_MEDIA_TYPES",
        EVIDENCE_MEDIA_TYPES,
        "the media types accepted, as recognised in the content (any other is "
        "`INVALID_ARGUMENT`), separated by commas",
        shown_default=",".join(EVIDENCE_MEDIA_TYPES),
    )
    sweep_seconds: Number = _setting(
        "LEDGER_EVIDENCE_SWEEP_SECONDS",
        600.0,
        "how often the ledger deletes what interrupted uploads left in the object store "
        '(and once at start); see evidence.md, "Leftovers of interrupted uploads"',
        gt=0.0,
    )
    sweep_grace_seconds: Number = _setting(
        "LEDGER_EVIDENCE_SWEEP_GRACE_SECONDS",
        3600.0,
        "how old an object no event names must be before the sweep deletes it; an upload "
        "under way refreshes its pending entry every quarter of this (at most every 60 s)",
        gt=0.0,
    )


class NotifierVariables(Group):
    """The notifier service and its webhook deliveries."""

    heading = "The notifier"
    read_by = (NOTIFIER,)

    listen: ListenAddress = _setting(
        "NOTIFIER_LISTEN",
        "127.0.0.1:50052",
        "the notifier's gRPC listen address",
        read_by=(NOTIFIER, RUN),
    )
    metrics_listen: HttpAddress = _setting(
        "NOTIFIER_METRICS_LISTEN",
        "",
        "`host:port` of the Prometheus endpoint (`/metrics`, plain HTTP; see "
        "[Metrics](operations.md#metrics))",
        shown_default="unset (off)",
    )
    store: Literal["sqlite", "postgres"] = _setting(
        "NOTIFIER_STORE",
        "sqlite",
        "where webhooks, jobs and the delivery log are kept: `postgres` takes the "
        "`POSTGRES_*` variables",
    )
    sqlite_dbname: Text | None = _setting(
        "NOTIFIER_SQLITE_DBNAME",
        None,
        "the SQLite file (with `NOTIFIER_STORE=sqlite`)",
        shown_default="`$LEDGER_DATA_DIR/notifier.sqlite`",
    )
    consumer: Text = _setting(
        "NOTIFIER_CONSUMER",
        "notifier",
        "the durable consumer's name (shared by notifier replicas)",
    )
    ack_wait_seconds: Number = _setting(
        "NOTIFIER_ACK_WAIT_SECONDS",
        10.0,
        "after this, an unacknowledged message is delivered to the notifier again",
        gt=0.0,
    )
    webhook_max_attempts: Integer = _setting(
        "NOTIFIER_WEBHOOK_MAX_ATTEMPTS",
        20,
        "attempts before a dead letter (20: about an hour of retries at the default delays)",
        ge=1,
    )
    webhook_timeout_seconds: Number = _setting(
        "NOTIFIER_WEBHOOK_TIMEOUT_SECONDS",
        5.0,
        "how long an endpoint may take to answer",
        gt=0.0,
    )
    webhook_backoff_seconds: Number = _setting(
        "NOTIFIER_WEBHOOK_BACKOFF_SECONDS",
        1.0,
        "first retry delay, doubling up to the maximum (with jitter)",
        ge=0.0,
    )
    webhook_max_backoff_seconds: Number = _setting(
        "NOTIFIER_WEBHOOK_MAX_BACKOFF_SECONDS", 300.0, "the longest retry delay", ge=0.0
    )
    webhook_allow_networks: Networks = _setting(
        "NOTIFIER_WEBHOOK_ALLOW_NETWORKS",
        (),
        "networks webhooks may reach although not public (loopback, private, link-local; "
        "see [Webhooks](fan-out.md#webhooks)); a bare address is one host",
        shown_default="unset (public addresses only)",
    )
    webhook_ca_file: FilePath | None = _setting(
        "NOTIFIER_WEBHOOK_CA_FILE",
        None,
        "CA certificates (PEM) trusted for `https://` webhooks besides the system's (an "
        "agency's own CA); a certificate is checked against the webhook's host name",
        shown_default="unset (the system's CAs)",
    )
    webhook_key_file: FilePath | None = _setting(
        "NOTIFIER_WEBHOOK_KEY_FILE",
        None,
        "the AES-256 key (32 bytes, raw or base64) that seals webhook secrets at rest; "
        "required in production, where a generated (development) key is refused, the same "
        "file for every replica",
        shown_default="`$LEDGER_DATA_DIR/keys/notifier-webhook.key`, generated (development)",
    )
    max_workers: Integer = _setting(
        "NOTIFIER_MAX_WORKERS",
        64,
        "the notifier's request threads (each live stream holds one)",
        ge=4,
    )
    grace_seconds: Number = _setting(
        "NOTIFIER_GRACE_SECONDS",
        5.0,
        "how long a stop waits for calls in flight (see "
        "[Stopping](operations.md#logs-health-and-stopping))",
        ge=0.0,
    )


class StoreVariables(Group):
    """The eventsourcing library's own variables, handed to it unchanged (the password read
    from its file); those declared here are checked at start, its other ``POSTGRES_*`` and
    ``SQLITE_*`` variables pass through unchecked. The notifier reads the ``POSTGRES_*``
    ones with ``NOTIFIER_STORE=postgres``."""

    heading = "The store (the eventsourcing library's variables, passed through)"
    read_by = (LEDGER,)

    persistence_module: Literal[
        "eventsourcing.sqlite", "eventsourcing.postgres", "eventsourcing.popo"
    ] = _setting(
        "PERSISTENCE_MODULE",
        "eventsourcing.sqlite",
        "the ledger's event store (`eventsourcing.popo` keeps it in memory)",
    )
    sqlite_dbname: Text | None = _setting(
        "SQLITE_DBNAME",
        None,
        "the ledger's SQLite file",
        shown_default="`$LEDGER_DATA_DIR/ledger.sqlite`",
    )
    sqlite_lock_timeout: Integer = _setting(
        "SQLITE_LOCK_TIMEOUT", 10, "seconds a SQLite writer waits for the lock", ge=0
    )
    create_table: LibraryBoolean = _setting(
        "CREATE_TABLE",
        True,
        "create tables at start; set `n` on replicas after `migrate`",
        shown_default="`y`",
    )
    postgres_host: Text | None = _setting(
        "POSTGRES_HOST", None, "PostgreSQL host", read_by=_SERVICES, shown_default="—"
    )
    postgres_port: Integer | None = _setting(
        "POSTGRES_PORT",
        None,
        "PostgreSQL port",
        read_by=_SERVICES,
        shown_default="`5432`",
        ge=1,
        le=65535,
    )
    postgres_dbname: Text | None = _setting(
        "POSTGRES_DBNAME", None, "database", read_by=_SERVICES, shown_default="—"
    )
    postgres_user: Text | None = _setting(
        "POSTGRES_USER", None, "user", read_by=_SERVICES, shown_default="—"
    )
    postgres_password: Secret | None = _setting(
        "POSTGRES_PASSWORD",
        None,
        "that user's password",
        read_by=_SERVICES,
        secret=True,
        shown_default="—",
    )
    postgres_schema: Text | None = _setting(
        "POSTGRES_SCHEMA",
        None,
        "schema of the tables",
        read_by=_SERVICES,
        shown_default="`public`",
    )
    postgres_connect_timeout: Integer = _setting(
        "POSTGRES_CONNECT_TIMEOUT",
        3,
        "seconds a connection attempt may take, and a call may wait for a free pooled "
        "connection: while PostgreSQL is down a command answers `UNAVAILABLE` (reason "
        "`STORE_UNAVAILABLE`; retry with the same request id) within about a second where "
        "the server refuses connections, within this where connecting hangs (the library's "
        "default, 30 s, is longer than a caller's deadline)",
        read_by=_SERVICES,
        ge=0,
    )
    postgres_tcp_user_timeout: Integer = _setting(
        "POSTGRES_TCP_USER_TIMEOUT",
        10,
        "seconds a connection may go without a sign of life from the other end (data "
        "sent and not acknowledged, keepalive probes unanswered) before it is given up, on "
        "the service's side and on PostgreSQL's (12 or newer): a database host that died or "
        "a network cut then fails the call in flight with `UNAVAILABLE` (reason "
        "`STORE_UNAVAILABLE`) within about this, and the server ends the sessions of a "
        "replica cut off from it, releasing their locks (the relay's: another replica's "
        "relay takes over), where the kernels would wait 15 minutes to 2 hours; `0` = the "
        "kernels' defaults",
        read_by=_SERVICES,
        ge=0,
    )
    postgres_lock_timeout: Integer = _setting(
        "POSTGRES_LOCK_TIMEOUT",
        2,
        "seconds any session waits for a lock (also the library's, for its inserts); "
        "`0` = no limit",
        read_by=_SERVICES,
        ge=0,
    )
    postgres_statement_timeout: Integer = _setting(
        "POSTGRES_STATEMENT_TIMEOUT",
        15,
        "seconds a statement may run; `0` = no limit",
        read_by=_SERVICES,
        ge=0,
    )
    postgres_pool_size: Integer = _setting(
        "POSTGRES_POOL_SIZE",
        5,
        "connections each process keeps in its pool (the library's); a ledger replica on "
        "PostgreSQL runs three processes that each have a pool (the ledger, its relay and "
        "the relay's reader), plus the relay's lock: about 25 connections at the defaults "
        "(see [Deploying](deploying.md), connections)",
        read_by=_SERVICES,
        ge=1,
    )
    postgres_max_overflow: Integer = _setting(
        "POSTGRES_MAX_OVERFLOW",
        10,
        "connections a pool may open beyond its size while busy, closed once returned",
        read_by=_SERVICES,
        ge=0,
    )
    postgres_idle_in_transaction_session_timeout: Integer = _setting(
        "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT",
        5,
        "seconds a session may sit idle inside a transaction before PostgreSQL ends it, "
        "releasing its locks (a frozen or hung replica); `0` = no limit",
        read_by=_SERVICES,
        ge=0,
    )


class RunVariables(Group):
    """``make run`` also reads ``NATS_URL``, ``LEDGER_LISTEN``, ``NOTIFIER_LISTEN``,
    ``LEDGER_DATA_DIR`` and the log settings (see their rows)."""

    heading = "`make run` (`ledger-run`)"
    read_by = (RUN,)

    nats_port: Integer = _setting(
        "LEDGER_NATS_PORT",
        14222,
        "port of the nats-server that `make run` starts when `NATS_URL` is unset (not 4222, "
        "which the machine's own NATS may hold); 0: a free port the server picks, named in "
        "`make run`'s `run.started` line",
        ge=0,
        le=65535,
    )


class SituationRoomVariables(Group):
    """The situation room, the web page of ``services/situation_room`` (see
    [situation-room.md](situation-room.md)). It reads the ledger and the notifier over gRPC
    as the signed-in officer; its one live subscription uses its own token."""

    heading = "The situation room"
    read_by = (ROOM,)

    listen: HttpAddress = _setting(
        "SITUATION_ROOM_LISTEN",
        "127.0.0.1:8080",
        "`host:port` of the web page (plain HTTP; put a TLS proxy in front of it beyond loopback)",
        read_by=(ROOM, RUN),
    )
    ledger_address: Text = _setting(
        "SITUATION_ROOM_LEDGER_ADDRESS", "127.0.0.1:50051", "the ledger's gRPC address"
    )
    notifier_address: Text = _setting(
        "SITUATION_ROOM_NOTIFIER_ADDRESS", "127.0.0.1:50052", "the notifier's gRPC address"
    )
    token: Secret = _setting(
        "SITUATION_ROOM_TOKEN",
        "",
        "bearer token of the page's one live subscription to the notifier (any agency may "
        "read every event)",
        secret=True,
        shown_default="the coordinator's token in `$LEDGER_DATA_DIR/credentials/dev-tokens.yaml`"
        " (development); required in production",
    )
    session_minutes: Number = _setting(
        "SITUATION_ROOM_SESSION_MINUTES",
        720.0,
        "how long a sign-in lasts at most, used or not (the absolute end); then the officer "
        "signs in again. A copy of a session cookie taken before signing out and kept in use "
        "stays valid until then",
        gt=0.0,
    )
    session_idle_minutes: Number = _setting(
        "SITUATION_ROOM_SESSION_IDLE_MINUTES",
        15.0,
        "how long a sign-in lasts unused (each page, form or open live tab renews it; at most "
        "SITUATION_ROOM_SESSION_MINUTES): a copy of a session cookie left unused that long is "
        "refused",
        gt=0.0,
    )
    session_key: Annotated[Secret | None, AfterValidator(_sixteen_bytes)] = _setting(
        "SITUATION_ROOM_SESSION_KEY",
        None,
        "key that encrypts and authenticates the session cookies (at least 16 bytes; the same "
        "for every page process behind one address); required in production, where the "
        "generated (development) one is refused",
        secret=True,
        shown_default="random, kept in `$LEDGER_DATA_DIR/situation-room-session.secret` "
        "(development)",
    )
    map_file: FilePath = _setting(
        "SITUATION_ROOM_MAP_FILE",
        PROJECT_ROOT / "config" / "mukomuko-kecamatan.geojson",
        "GeoJSON of the kecamatan polygons (property `code` = the reference data's code)",
    )
    leaflet_dir: FilePath = _setting(
        "SITUATION_ROOM_LEAFLET_DIR",
        PROJECT_ROOT / "tools" / "node_modules" / "leaflet" / "dist",
        "Leaflet's `dist` directory, served under `/vendor/leaflet/` (the image carries its own "
        "copy; `make venv` installs it into `tools/node_modules`)",
    )


#: Every group, in the order of docs/configuration.md.
GROUPS: tuple[type[Group], ...] = (
    ServiceVariables,
    LimitVariables,
    TlsVariables,
    NatsVariables,
    StreamVariables,
    LedgerVariables,
    EvidenceVariables,
    NotifierVariables,
    StoreVariables,
    RunVariables,
    SituationRoomVariables,
)


# --- reading and checking ----------------------------------------------------------------------


@dataclass(frozen=True)
class Variable:
    """One declared variable, as the docs and the checks see it."""

    name: str
    group: type[Group]
    attribute: str
    info: FieldInfo

    @property
    def extra(self) -> Mapping[str, Any]:
        extra = self.info.json_schema_extra
        return extra if isinstance(extra, dict) else {}

    @property
    def secret(self) -> bool:
        return bool(self.extra.get("secret"))

    @property
    def read_by(self) -> tuple[str, ...]:
        return tuple(self.extra.get("read_by", self.group.read_by))

    @property
    def description(self) -> str:
        return self.info.description or ""

    @property
    def default(self) -> Any:
        return self.info.default

    @property
    def rule(self) -> Rule | None:
        """What the type allows (not for Literal choices)."""
        return next((m for m in _metadata(self.info) if isinstance(m, Rule)), None)

    @property
    def choices(self) -> tuple[str, ...]:
        """The allowed values of a choice, in the declared order; () if not a choice."""
        annotation = self.info.annotation
        candidates = get_args(annotation) if get_origin(annotation) is not Literal else ()
        for candidate in (annotation, *candidates):
            if get_origin(candidate) is Literal:
                return tuple(str(choice) for choice in get_args(candidate))
        return ()

    @property
    def bounds(self) -> str:
        """The bounds of a number, as in "must be <bounds>" ("" if none)."""
        found: dict[str, Any] = {}
        for item in _metadata(self.info):
            if isinstance(item, Ge):
                found["ge"] = item.ge
            elif isinstance(item, Gt):
                found["gt"] = item.gt
            elif isinstance(item, Le):
                found["le"] = item.le
        if "ge" in found and "le" in found:
            return f"from {found['ge']} to {found['le']}"
        if "gt" in found:
            return "positive" if found["gt"] == 0 else f"more than {found['gt']}"
        if "ge" in found:  # a float's 0.0 reads "not negative", an integer's "at least 0"
            negative = isinstance(found["ge"], float) and found["ge"] == 0
            return "not negative" if negative else f"at least {found['ge']}"
        if "le" in found:
            return f"at most {found['le']}"
        return ""

    def must(self, what: str) -> str:
        return "must not be negative" if what == "not negative" else f"must be {what}"


def _metadata(info: FieldInfo) -> Iterator[Any]:
    """The field's metadata, also that of a type inside ``X | None``."""
    yield from info.metadata
    for argument in get_args(info.annotation):
        yield from getattr(argument, "__metadata__", ())


def variables() -> Iterator[Variable]:
    """Every declared variable, group by group, in declaration order."""
    for group in GROUPS:
        for attribute, info in group.model_fields.items():
            yield Variable(str(info.alias), group, attribute, info)


def secret_file_variables() -> set[str]:
    """``X_FILE`` of every secret ``X``."""
    return {f"{v.name}_FILE" for v in variables() if v.secret}


def variable_names(reader: str | None = None) -> set[str]:
    """Every declared variable ``reader`` reads (all readers' if None), ``_FILE`` variants
    included (not the library's other ``POSTGRES_*`` variables, which pass through
    undeclared: :func:`known_variable_names`)."""
    read = [v for v in variables() if reader is None or reader in v.read_by]
    return {v.name for v in read} | {f"{v.name}_FILE" for v in read if v.secret}


#: The prefixes of the variables the services read (their own and those they pass to the
#: eventsourcing library): a variable with one of them that nothing reads is most likely a
#: misspelt setting, which would otherwise be ignored without a word.
PREFIXES = ("LEDGER_", "NOTIFIER_", "SITUATION_ROOM_", "NATS_", "POSTGRES_", "SQLITE_")

#: Variables with those prefixes that something of this project other than these settings
#: reads: the client library and ledgerctl (a shell may hold them beside ``make run``), the
#: supervisor's word to its children, and the NATS members' configuration
#: (deploy/nats/nats.conf). They are known, not misspelt.
READ_ELSEWHERE = frozenset(
    {
        "LEDGER_ADDRESS",
        "LEDGER_AGENCY",
        "LEDGER_LANG",
        "LEDGER_TIMEOUT",
        "LEDGER_TLS_CA",
        "LEDGER_TLS_CLIENT_CERT",
        "LEDGER_TLS_CLIENT_KEY",
        "LEDGER_TOKEN",
        "NOTIFIER_ADDRESS",
        "NOTIFIER_TLS_CA",
        "NOTIFIER_TLS_CLIENT_CERT",
        "NOTIFIER_TLS_CLIENT_KEY",
        STARTED_FILE_VARIABLE,
        "NATS_ROUTES",
        "NATS_SERVER_NAME",
    }
)


def known_variable_names() -> set[str]:
    """Every variable with one of :data:`PREFIXES` that is read: the declared ones, the
    eventsourcing library's ``POSTGRES_*`` and ``SQLITE_*`` (they pass through undeclared)
    and :data:`READ_ELSEWHERE`."""
    # Imported here: the situation room reads its settings without a store.
    from eventsourcing.postgres import PostgresFactory
    from eventsourcing.sqlite import SQLiteFactory

    library = {
        value
        for factory in (PostgresFactory, SQLiteFactory)
        for value in (getattr(factory, name) for name in dir(factory) if name.isupper())
        if isinstance(value, str) and value.startswith(PREFIXES)
    }
    return variable_names() | library | READ_ELSEWHERE


def unknown_variables(environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """The variables of ``environ`` (``os.environ`` if None) with one of :data:`PREFIXES`
    that nothing reads, each with the known name closest to it (None when none is close)."""
    given = os.environ if environ is None else environ
    known = sorted(known_variable_names())
    return {
        name: next(iter(difflib.get_close_matches(name, known, n=1, cutoff=0.8)), None)
        for name in sorted(given)
        if name.startswith(PREFIXES) and name not in known
    }


def warn_unknown_variables(log: Any, environ: Mapping[str, str] | None = None) -> None:
    """One warning line naming every variable :func:`unknown_variables` finds (a start goes
    on: other tools may use the same prefixes)."""
    unknown = unknown_variables(environ)
    if unknown:
        log.warning(
            "config.unknown_variables",
            variables=list(unknown),
            closest={name: close for name, close in unknown.items() if close is not None},
            note="no setting reads these: a misspelt one is ignored (docs/configuration.md)",
        )


#: ``LEDGER_TLS_CLIENT_AUTH`` values. grpcio can either not ask for a client certificate or
#: require (and verify) one; it has no "ask but accept none".
CLIENT_AUTH_MODES = set(
    Variable("", TlsVariables, "", TlsVariables.model_fields["client_auth"]).choices
)


def declared(name: str) -> Variable:
    """The declaration of the variable ``name`` (KeyError if there is none)."""
    found = next((v for v in variables() if v.name == name), None)
    if found is None:
        raise KeyError(name)
    return found


def _default(group: type[Group], attribute: str) -> Any:
    """A declared default, for the dataclasses below."""
    return group.model_fields[attribute].default


def read_setting_file(key: str, path: Path) -> bytes:
    """The bytes of the file a setting names; a ConfigError names the setting and the path.

    Error messages never quote the content: the file may hold a key or a password.
    """
    try:
        return path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{key}: cannot read {path}: {reason}") from None


class _Environment(EnvSettingsSource):
    """A group's variables from ``given`` (an empty value is unset), only those ``reader``
    reads (all if None); a secret ``X`` also from the file named by ``X_FILE`` (not both).

    Problems with secret files are collected in ``problems`` (the library wraps what a
    source raises).
    """

    def __init__(self, group: type[Group], given: Mapping[str, str], reader: str | None) -> None:
        self._given = given
        self._group = group
        self._reader = reader
        self.problems: list[str] = []
        super().__init__(group)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {key: value for key, value in self._given.items() if value != ""}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        variable = Variable(str(field.alias), self._group, field_name, field)
        if self._reader is not None and self._reader not in variable.read_by:
            return None, variable.name, False
        if variable.secret:
            return self._secret(variable.name), variable.name, False
        return super().get_field_value(field, field_name)

    def _secret(self, key: str) -> str | None:
        """A file's content is taken without its trailing line break."""
        file_key = f"{key}_FILE"
        value, file = self._given.get(key) or None, self._given.get(file_key) or None
        if value is not None and file is not None:
            self.problems.append(f"set {key} or {file_key}, not both")
            return None
        if file is None:
            return value
        path = Path(file)
        try:
            text = read_setting_file(file_key, path).decode("utf-8")
        except ConfigError as error:
            self.problems.extend(error.problems)
            return None
        except UnicodeDecodeError:
            self.problems.append(f"{file_key}: {path} is not UTF-8 text")
            return None
        secret = text.rstrip("\r\n")
        if not secret:
            self.problems.append(f"{file_key}: {path} is empty")
            return None
        return secret


def _problem(group: type[Group], error: ErrorDetails, given: Mapping[str, Any]) -> str:
    """One line: the variable, what is allowed, the value ``given`` (a secret's never)."""
    name = str(error["loc"][0]) if error["loc"] else "?"
    info = next((f for f in group.model_fields.values() if f.alias == name), None)
    if info is None:  # not a variable's error: cannot happen with these declarations
        return f"{group.__name__}: {error['msg']}"
    variable = Variable(name, group, "", info)
    value = "(a secret: not shown)" if variable.secret else repr(given.get(name, error["input"]))
    if error["type"] == "setting":
        what = error["msg"]
        if variable.bounds and not what.endswith(variable.bounds):
            what += f" ({variable.bounds})"
    elif error["type"] == "literal_error":
        what = f"must be one of {sorted(variable.choices)}"
    elif variable.bounds and error["type"] in {
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
    }:
        what = variable.must(variable.bounds)
    else:
        rule = variable.rule
        what = f"must be {rule.text}" if rule else error["msg"]
    return f"{name} {what}, got {value}"


G = TypeVar("G", bound=Group)


class Values:
    """The checked values of some groups."""

    def __init__(self, values: Mapping[type[Group], Group]) -> None:
        self._values = dict(values)

    def get(self, group: type[G]) -> G:
        return cast(G, self._values[group])


def read(
    environ: Mapping[str, str] | None,
    groups: tuple[type[Group], ...] = GROUPS,
    reader: str | None = None,
) -> Values:
    """The variables of ``groups`` in ``environ`` (``os.environ`` if None), checked: a
    ConfigError lists every problem. With ``reader``, only the variables it reads."""
    given = dict(os.environ if environ is None else environ)
    problems: list[str] = []
    values: dict[type[Group], Group] = {}
    for group in groups:
        source = _Environment(group, given, reader)
        raw = source()
        problems.extend(source.problems)
        try:
            values[group] = group.model_validate(raw)
        except ValidationError as error:
            problems.extend(_problem(group, detail, raw) for detail in error.errors())
    if problems:
        raise ConfigError(*problems)
    return Values(values)


# --- helpers of the settings ------------------------------------------------------------------


def nats_servers(nats_url: str) -> list[str]:
    """``NATS_URL`` as the list of servers ``nats.connect`` takes.

    ``NATS_URL`` names one server or, for a cluster, several separated by commas
    (``nats://10.0.0.1:4222,nats://10.0.0.2:4222``): the client connects to any one
    of them and, when that one goes away, reconnects to another.
    """
    servers = [url.strip() for url in nats_url.split(",") if url.strip()]
    for n, url in enumerate(servers, start=1):
        _check_nats_server(url, n)
    return servers


#: The schemes the NATS client connects with.
NATS_SCHEMES = frozenset({"nats", "tls", "ws", "wss"})


def _check_nats_server(url: str, n: int) -> None:
    """ConfigError unless ``url`` is ``scheme://host[:port]`` (or ``host[:port]``, which the
    client reads as ``nats://``); never quoting it, which may embed a password.

    A mistyped one (``nats//host:4222``) would otherwise be taken for a host named ``nats``,
    and the relay would log a name lookup failure every two seconds."""
    full = url if "://" in url else f"nats://{url}"
    try:
        parts = urlsplit(full)
        port = parts.port
    except ValueError:
        port, parts = -1, None
    if (
        parts is None
        or port == -1
        or parts.scheme not in NATS_SCHEMES
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
    ):
        raise ConfigError(
            f"NATS_URL: server {n} is not a NATS address: scheme://host:port with scheme "
            f"{', '.join(sorted(NATS_SCHEMES))} (nats://127.0.0.1:4222)"
        )


def _readable_file(key: str, path: Path | None) -> Path | None:
    """The path a setting names, checked to be a readable file (content not checked)."""
    if path is not None:
        read_setting_file(key, path)
    return path


#: Files that hold a private key or the users' token hashes (the ``_FILE`` of a secret, or a
#: path setting). Anyone who reads one can sign checkpoints, open personal data or webhook
#: secrets, or pose as the service.
KEY_FILE_VARIABLES = (
    "LEDGER_TOKENS_FILE",
    "LEDGER_SIGNING_KEY_FILE",
    "LEDGER_PERSONAL_DATA_KEYS_FILE",
    "NOTIFIER_WEBHOOK_KEY_FILE",
    "LEDGER_TLS_KEY_FILE",
    "NATS_TLS_KEY_FILE",
)


@dataclass(frozen=True)
class OpenKeyFile:
    """A key file others may read: the variable naming it, its path and its mode bits."""

    variable: str
    path: Path
    mode: int

    @property
    def text(self) -> str:
        return (
            f"{self.variable}: {self.path} is mode {self.mode:04o}, readable by others than "
            f"the service's user: chmod 600 {self.path}"
        )


def _open_to_others(st: os.stat_result) -> bool:
    """As ssh decides for a private key, and stricter: no access at all for others, and none
    for the group on a file of the service's own user. Group access to a file another user
    owns is how Kubernetes mounts a Secret for a non-root pod (root-owned, the pod's
    ``fsGroup``, mode 0440, deploy/k8s/): that group is the service's own."""
    if st.st_mode & 0o007:
        return True
    return bool(st.st_mode & 0o070) and st.st_uid == os.geteuid()


def check_key_files(
    given: Mapping[str, str], reader: str, *, production: bool
) -> tuple[OpenKeyFile, ...]:
    """The key files ``reader`` reads whose mode lets others read them: a ConfigError
    in production, returned otherwise (the service logs a warning for each). A file
    that cannot be read is left to the code that reads it, which names the error."""
    found: list[OpenKeyFile] = []
    secret_files = secret_file_variables()
    for variable in KEY_FILE_VARIABLES:
        name = variable.removesuffix("_FILE") if variable in secret_files else variable
        path = given.get(variable)
        if not path or reader not in declared(name).read_by:
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue
        if _open_to_others(st):
            found.append(OpenKeyFile(variable, Path(path), stat.S_IMODE(st.st_mode)))
    if production and found:
        raise ConfigError(*(f.text for f in found))
    return tuple(found)


def warn_open_key_files(settings: ServiceSettings, log: Any) -> None:
    """One warning line per key file others may read (a development start goes on)."""
    for found in settings.open_key_files:
        log.warning(
            "config.key_file_readable",
            variable=found.variable,
            file=str(found.path),
            mode=f"{found.mode:04o}",
            fix=f"chmod 600 {found.path}",
        )


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


# --- the settings objects ---------------------------------------------------------------------


@dataclass(frozen=True)
class ServerTls:
    """TLS of a service's gRPC port, read and checked at start (see docs/security.md).

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
    def from_env(cls, environ: Mapping[str, str]) -> ServerTls | None:
        return cls.from_variables(read(environ, (TlsVariables,)).get(TlsVariables))

    @classmethod
    def from_variables(cls, v: TlsVariables) -> ServerTls | None:
        cert, key, client_ca, client_auth = v.cert_file, v.key_file, v.client_ca_file, v.client_auth
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
    """TLS and credentials of the services' NATS connections (see docs/security.md).

    Secrets come from ``NATS_PASSWORD`` / ``NATS_TOKEN`` or from the files named by
    ``NATS_PASSWORD_FILE`` / ``NATS_TOKEN_FILE``; they are kept out of ``repr``.
    """

    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_handshake_first: bool = _default(NatsVariables, "tls_handshake_first")
    user: str = _default(NatsVariables, "user")
    password: str = field(default=_default(NatsVariables, "password"), repr=False)
    token: str = field(default=_default(NatsVariables, "token"), repr=False)

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
    def from_env(cls, environ: Mapping[str, str]) -> NatsClientSettings:
        return cls.from_variables(read(environ, (NatsVariables,)).get(NatsVariables))

    @classmethod
    def from_variables(cls, v: NatsVariables) -> NatsClientSettings:
        cert = _readable_file("NATS_TLS_CERT_FILE", v.tls_cert_file)
        key = _readable_file("NATS_TLS_KEY_FILE", v.tls_key_file)
        if (cert is None) != (key is None):
            raise ConfigError("NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE go together")
        if bool(v.user) != bool(v.password):
            raise ConfigError("NATS_USER and NATS_PASSWORD (or NATS_PASSWORD_FILE) go together")
        if v.token and v.user:
            raise ConfigError("set NATS_USER/NATS_PASSWORD or NATS_TOKEN, not both")
        settings = cls(
            tls_ca_file=_readable_file("NATS_TLS_CA_FILE", v.tls_ca_file),
            tls_cert_file=cert,
            tls_key_file=key,
            tls_handshake_first=v.tls_handshake_first,
            user=v.user,
            password=v.password,
            token=v.token,
        )
        settings.ssl_context()  # fails now, with the setting's name, rather than at connect
        return settings


@dataclass(frozen=True)
class StreamSettings:
    """The JetStream stream the ledger's events are published to (see docs/fan-out.md)."""

    name: str = _default(StreamVariables, "name")
    subject_prefix: str = _default(StreamVariables, "subject_prefix")
    checkpoint_subject: str = _default(StreamVariables, "checkpoint_subject")
    replicas: int = _default(StreamVariables, "replicas")
    storage: str = _default(StreamVariables, "storage")
    max_age_days: float = _default(StreamVariables, "max_age_days")  # 0 = no age limit
    duplicate_window_seconds: float = _default(StreamVariables, "duplicate_window_seconds")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> StreamSettings:
        return cls.from_variables(read(environ, (StreamVariables,)).get(StreamVariables))

    @classmethod
    def from_variables(cls, v: StreamVariables) -> StreamSettings:
        return cls(
            name=v.name,
            subject_prefix=v.subject_prefix,
            checkpoint_subject=v.checkpoint_subject,
            replicas=v.replicas,
            storage=v.storage,
            max_age_days=v.max_age_days,
            duplicate_window_seconds=v.duplicate_window_seconds,
        )


@dataclass(frozen=True)
class EvidenceSettings:
    """Where evidence is kept and what is accepted (see docs/evidence.md)."""

    bucket: str = _default(EvidenceVariables, "bucket")
    replicas: int = _default(EvidenceVariables, "replicas")
    max_bytes: int = round(_default(EvidenceVariables, "max_mb") * 1_000_000)
    media_types: tuple[str, ...] = _default(EvidenceVariables, "media_types")
    sweep_seconds: float = _default(EvidenceVariables, "sweep_seconds")
    sweep_grace_seconds: float = _default(EvidenceVariables, "sweep_grace_seconds")

    @property
    def pending_refresh_seconds(self) -> float:
        """How often an upload under way refreshes its pending entry's time: well within
        the sweep's grace period, so that no replica's sweep takes it for a leftover."""
        return min(60.0, self.sweep_grace_seconds / 4)

    @classmethod
    def from_variables(cls, v: EvidenceVariables) -> EvidenceSettings:
        return cls(
            bucket=v.bucket,
            replicas=v.replicas,
            max_bytes=round(v.max_mb * 1_000_000),
            media_types=v.media_types,
            sweep_seconds=v.sweep_seconds,
            sweep_grace_seconds=v.sweep_grace_seconds,
        )


@dataclass(frozen=True)
class RelaySettings:
    """The outbox relay: store -> NATS JetStream. Disabled when ``nats_url`` is empty."""

    nats_url: str = field(default="", repr=False)  # may embed user:password
    nats: NatsClientSettings = field(default_factory=NatsClientSettings)
    stream: StreamSettings = field(default_factory=StreamSettings)
    batch_size: int = _default(LedgerVariables, "relay_batch")
    poll_seconds: float = _default(LedgerVariables, "relay_poll_seconds")
    # Also each JetStream request's: a request sent while a stream elects its leader gets no
    # answer, so a short timeout and a retry resume publishing soon after the election
    # (5 s made a stream leader's loss pause publishing 11.5 s; docs/fan-out.md, "A NATS cluster").
    publish_timeout_seconds: float = 1.0
    leader_retry_seconds: float = 2.0
    unresponsive_seconds: float = _default(LedgerVariables, "relay_unresponsive_seconds")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> RelaySettings:
        groups = (NatsVariables, StreamVariables, LedgerVariables)
        return cls.from_variables(read(environ, groups, LEDGER))

    @classmethod
    def from_variables(cls, values: Values) -> RelaySettings:
        nats, ledger = values.get(NatsVariables), values.get(LedgerVariables)
        nats_url = nats.url.strip()
        if nats_url and not nats_servers(nats_url):
            raise ConfigError("NATS_URL names no server; leave it unset to run without NATS")
        return cls(
            nats_url=nats_url,
            nats=NatsClientSettings.from_variables(nats),
            stream=StreamSettings.from_variables(values.get(StreamVariables)),
            batch_size=ledger.relay_batch,
            poll_seconds=ledger.relay_poll_seconds,
            unresponsive_seconds=ledger.relay_unresponsive_seconds,
        )


@dataclass(frozen=True)
class LimitSettings:
    """Per-agency limits of a gRPC server (see docs/operations.md, "Limits"); 0 = no limit.

    The rate limit is off in development (``make run``, tests, benchmarks) and on in
    production unless set: ``PRODUCTION_RATE_PER_SECOND`` with a burst of twice that.
    """

    rate_per_second: float = 0.0
    burst: int = 0
    max_streams_per_agency: int = _default(LimitVariables, "max_streams_per_agency")
    # Failed authentications (an unknown bearer token) per peer address and per token
    # prefix: after this many within the window, that peer or prefix is refused for a
    # window. 30 a minute is far more than a mistyped token produces and leaves a guesser
    # 0.5 tries a second instead of the ~900 measured without it. 0 = no throttle.
    auth_max_failures: int = _default(LimitVariables, "auth_max_failures")
    auth_window_seconds: float = _default(LimitVariables, "auth_window_seconds")
    # Peers and prefixes remembered at once (least recently seen forgotten first); about
    # 200 bytes each.
    auth_max_keys: int = _default(LimitVariables, "auth_max_keys")

    PRODUCTION_RATE_PER_SECOND: ClassVar[float] = PRODUCTION_RATE_PER_SECOND

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, production: bool) -> LimitSettings:
        return cls.from_variables(read(environ, (LimitVariables,)).get(LimitVariables), production)

    @classmethod
    def from_variables(cls, v: LimitVariables, production: bool) -> LimitSettings:
        default_rate = cls.PRODUCTION_RATE_PER_SECOND if production else 0.0
        rate = default_rate if v.rate_per_second is None else v.rate_per_second
        burst = max(1, round(2 * rate)) if v.burst is None else v.burst
        return cls(
            rate_per_second=rate,
            burst=burst if rate > 0 else 0,
            max_streams_per_agency=v.max_streams_per_agency,
            auth_max_failures=v.auth_max_failures,
            auth_window_seconds=v.auth_window_seconds,
            auth_max_keys=v.auth_max_keys,
        )


@dataclass(frozen=True)
class ServiceSettings:
    """What every service reads the same way: environment, data, credentials, logging."""

    environment: str = _default(ServiceVariables, "environment")
    data_dir: Path = field(default=_default(ServiceVariables, "data_dir"))
    reference_file: Path = field(default=_default(ServiceVariables, "reference_file"))
    tokens_file: Path | None = None
    page_token_secret: bytes | None = field(default=None, repr=False)
    max_message_bytes: int = _default(ServiceVariables, "max_message_bytes")
    limits: LimitSettings = field(default_factory=LimitSettings)
    log_level: str = _default(ServiceVariables, "log_level")
    log_format: str = _default(ServiceVariables, "log_format")
    tls: ServerTls | None = None
    allow_plaintext: bool = _default(ServiceVariables, "allow_plaintext")
    # Key files others may read (development only: production refuses to start).
    open_key_files: tuple[OpenKeyFile, ...] = ()

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
    def check_store_choice(
        common: Mapping[str, Any], given: Mapping[str, str], postgres: bool, variable: str
    ) -> None:
        """Production refuses an embedded store while PostgreSQL's settings are given: a
        misspelt or forgotten ``variable`` (PERSISTENCE_MODULE, NOTIFIER_STORE) would
        otherwise keep the data in a SQLite file of each replica's, without a word."""
        if common["environment"] != "production" or postgres:
            return
        named = sorted(k for k in given if k.startswith("POSTGRES_"))
        if named:
            raise ConfigError(
                f"{', '.join(named)} set, but {variable} does not choose PostgreSQL: "
                f"production would keep its data in SQLite; set {variable} (or leave the "
                "POSTGRES_ variables out)"
            )

    @staticmethod
    def common_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
        """The shared fields, read from ``environ`` and checked (production needs real secrets)."""
        groups = (ServiceVariables, LimitVariables, TlsVariables)
        return ServiceSettings.common_from_variables(read(environ, groups), environ)

    @staticmethod
    def common_from_variables(values: Values, given: Mapping[str, str]) -> dict[str, Any]:
        """The shared fields of ``values``, read from ``given`` (which names the variables
        a refusal names)."""
        v = values.get(ServiceVariables)
        secret = v.page_token_secret
        common: dict[str, Any] = {
            "environment": v.environment,
            "data_dir": v.data_dir,
            "reference_file": v.reference_file,
            "tokens_file": v.tokens_file,
            "page_token_secret": secret.encode() if secret else None,
            "max_message_bytes": v.max_message_bytes,
            "limits": LimitSettings.from_variables(
                values.get(LimitVariables), production=v.environment == "production"
            ),
            "log_level": v.log_level,
            "log_format": v.log_format,
            "tls": ServerTls.from_variables(values.get(TlsVariables)),
            "allow_plaintext": v.allow_plaintext,
        }
        if common["environment"] == "production":
            if common["page_token_secret"] is None:
                raise ConfigError(
                    required_in_production("LEDGER_PAGE_TOKEN_SECRET", from_file=True)
                )
            refuse_development_secret(given, "LEDGER_PAGE_TOKEN_SECRET", secret)
            if common["tokens_file"] is None:
                raise ConfigError(required_in_production("LEDGER_TOKENS_FILE"))
        return common


#: The first line of a secret the services generated for development in their data
#: directory (``page-token.secret``, the situation room's ``situation-room-session.secret``;
#: services.common.auth.shared_secret): production refuses it wherever it is copied, as it
#: does make run's signing key, webhook key, personal-data keys and tokens. It stays part of
#: the secret, so that the file read through its ``_FILE`` variable gives the same bytes.
DEVELOPMENT_FILE_MARK = (
    "# A development secret, generated by the services in their data directory: never for "
    "production (openssl rand -hex 32 > FILE)."
)


def secret_given_as(given: Mapping[str, str], variable: str) -> str:
    """The variable the operator set for the secret ``variable``: ``{variable}_FILE`` and
    its path when they gave the secret as a file, else ``variable`` itself."""
    file = given.get(f"{variable}_FILE")
    return f"{variable}_FILE {file}" if file else variable


def refuse_development_secret(given: Mapping[str, str], variable: str, secret: str | None) -> None:
    """Production refuses a secret made for development (:data:`DEVELOPMENT_FILE_MARK`)."""
    if secret is not None and DEVELOPMENT_FILE_MARK in secret:
        raise ConfigError(
            f"{secret_given_as(given, variable)} is a development secret the services "
            "generated for themselves (its first line says so): make one for production with "
            "`openssl rand -hex 32 > FILE` (docs/deploying.md)"
        )


def required_in_production(variable: str, *, from_file: bool = False) -> str:
    """The refusal of a production start without ``variable``, in one wording wherever it
    is checked (``from_file``: the secret may come from ``{variable}_FILE`` too)."""
    return f"{variable} is required in production" + (f" (or {variable}_FILE)" if from_file else "")


def check_ledger_production(environ: Mapping[str, str] | None = None) -> None:
    """Every setting a production ledger cannot serve without, said at once (one
    ConfigError, a problem each): they were refused one at a time, a restart for each. For
    the server only: the tools (ledger-audit, migrate) need fewer."""
    values = read(dict(os.environ if environ is None else environ), reader=LEDGER)
    service, ledger = values.get(ServiceVariables), values.get(LedgerVariables)
    if service.environment != "production":
        return
    missing = [
        text
        for text, value in (
            (
                required_in_production("LEDGER_PAGE_TOKEN_SECRET", from_file=True),
                service.page_token_secret,
            ),
            (required_in_production("LEDGER_TOKENS_FILE"), service.tokens_file),
            (required_in_production("LEDGER_SIGNING_KEY_FILE"), ledger.signing_key_file),
            (
                required_in_production("LEDGER_PERSONAL_DATA_KEYS", from_file=True),
                ledger.personal_data_keys,
            ),
        )
        if value is None
    ]
    if missing:
        raise ConfigError(*missing)


@dataclass(frozen=True)
class LedgerSettings(ServiceSettings):
    """Settings of the ledger service (see docs/configuration.md)."""

    listen: str = _default(LedgerVariables, "listen")
    max_workers: int = _default(LedgerVariables, "max_workers")
    # incidents kept in memory for the write path (a few KB each)
    cache_size: int = _default(LedgerVariables, "cache_size")
    # events of an incident between two of its snapshots (services/ledger/snapshots.py)
    snapshot_interval: int = _default(LedgerVariables, "snapshot_interval")
    triage_max_items: int = _default(LedgerVariables, "triage_max_items")
    grace_seconds: float = _default(LedgerVariables, "grace_seconds")
    store_env: dict[str, str] = field(default_factory=dict, repr=False)  # POSTGRES_PASSWORD
    relay: RelaySettings = field(default_factory=RelaySettings)
    signing_key_file: Path | None = None
    retired_signing_keys_file: Path | None = None
    checkpoint_seconds: float = _default(LedgerVariables, "checkpoint_seconds")
    # host:port of the Prometheus endpoint; empty = off
    metrics_listen: str = _default(LedgerVariables, "metrics_listen")
    # Times callers state (see services/ledger/domain/times.py): nothing the ledger records
    # happened before its era; a report may be ahead of the server's clock by the skew of
    # an agency system without NTP (minutes; five is also Kerberos's default tolerance); a
    # decision is planned at most a year ahead (they cover days or weeks of an election).
    earliest_time: datetime = field(default=_default(LedgerVariables, "earliest_time"))
    max_clock_skew_seconds: float = _default(LedgerVariables, "max_clock_skew_seconds")
    max_decision_days: float = _default(LedgerVariables, "max_decision_days")
    # how often health asks PostgreSQL whether it answers
    store_check_seconds: float = _default(LedgerVariables, "store_check_seconds")
    # the limits of one IngestReports call (a field device's backlog comes in chunks)
    ingest_max_reports: int = _default(LedgerVariables, "ingest_max_reports")
    ingest_max_bytes: int = _default(LedgerVariables, "ingest_max_bytes")
    ingest_process: bool = _default(LedgerVariables, "ingest_process")
    # Key-encryption keys of personal data (services/ledger/personal_keys.py); None in
    # development: generated in the data directory.
    personal_data_keys: str | None = field(default=None, repr=False)
    # The variable that gave them, as a refusal names it (with the file's path for _FILE).
    personal_data_keys_variable: str = "LEDGER_PERSONAL_DATA_KEYS"
    personal_data_retention_days: float = _default(LedgerVariables, "personal_data_retention_days")
    personal_data_sweep_grace_seconds: float = _default(
        LedgerVariables, "personal_data_sweep_grace_seconds"
    )

    @property
    def key_dir(self) -> Path:
        """Where development keys are generated."""
        return self.data_dir / "keys"

    evidence: EvidenceSettings = field(default_factory=EvidenceSettings)

    def audit(self) -> AuditSettings:
        return AuditSettings(
            environment=self.environment,
            data_dir=self.data_dir,
            signing_key_file=self.signing_key_file,
            retired_signing_keys_file=self.retired_signing_keys_file,
            checkpoint_seconds=self.checkpoint_seconds,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LedgerSettings:
        given = dict(os.environ if environ is None else environ)
        values = read(given, reader=LEDGER)
        common = cls.common_from_variables(values, given)
        audit = AuditSettings.from_variables(values)
        ledger = values.get(LedgerVariables)
        settings = cls(
            **common,
            signing_key_file=audit.signing_key_file,
            retired_signing_keys_file=audit.retired_signing_keys_file,
            checkpoint_seconds=audit.checkpoint_seconds,
            listen=ledger.listen,
            metrics_listen=ledger.metrics_listen,
            max_workers=ledger.max_workers,
            cache_size=ledger.cache_size,
            triage_max_items=ledger.triage_max_items,
            snapshot_interval=ledger.snapshot_interval,
            grace_seconds=ledger.grace_seconds,
            earliest_time=ledger.earliest_time,
            max_clock_skew_seconds=ledger.max_clock_skew_seconds,
            max_decision_days=ledger.max_decision_days,
            store_check_seconds=ledger.store_check_seconds,
            ingest_max_reports=ledger.ingest_max_reports,
            ingest_max_bytes=ledger.ingest_max_bytes,
            ingest_process=ledger.ingest_process,
            personal_data_keys=ledger.personal_data_keys,
            personal_data_keys_variable=secret_given_as(given, "LEDGER_PERSONAL_DATA_KEYS"),
            personal_data_retention_days=ledger.personal_data_retention_days,
            personal_data_sweep_grace_seconds=ledger.personal_data_sweep_grace_seconds,
            open_key_files=check_key_files(
                given, LEDGER, production=common["environment"] == "production"
            ),
            store_env=store_environment(given, common["data_dir"], values),
            relay=RelaySettings.from_variables(values),
            evidence=EvidenceSettings.from_variables(values.get(EvidenceVariables)),
        )
        settings.check_transport(settings.listen, "LEDGER_LISTEN")
        cls.check_store_choice(
            common,
            given,
            settings.store_env["PERSISTENCE_MODULE"] == "eventsourcing.postgres",
            "PERSISTENCE_MODULE",
        )
        return settings


def postgres_environment(
    environ: Mapping[str, str], values: Values | None = None
) -> dict[str, str]:
    """The ``POSTGRES_*`` settings of a store, as given: the password read (from its file
    too), and ``POSTGRES_CONNECT_TIMEOUT`` as declared unless set: the longest a connection
    attempt, or a wait for a pooled connection, lasts (the library's default, 30 s, is far
    longer than a caller's deadline)."""
    store = (values or read(environ, (StoreVariables,))).get(StoreVariables)
    keys = {k: v for k, v in environ.items() if k.startswith("POSTGRES_")}
    keys.pop("POSTGRES_PASSWORD_FILE", None)
    if store.postgres_password:
        keys["POSTGRES_PASSWORD"] = store.postgres_password
    keys.setdefault(
        "POSTGRES_CONNECT_TIMEOUT", str(_default(StoreVariables, "postgres_connect_timeout"))
    )
    return keys


def store_environment(
    environ: Mapping[str, str], data_dir: Path, values: Values | None = None
) -> dict[str, str]:
    """The eventsourcing library's variables, with SQLite in the data dir as default."""
    keys = {
        k: v
        for k, v in environ.items()
        if k.startswith(("PERSISTENCE_MODULE", "SQLITE_", "CREATE_TABLE"))
    }
    keys.update(postgres_environment(environ, values))
    module = keys.get("PERSISTENCE_MODULE", _default(StoreVariables, "persistence_module"))
    keys["PERSISTENCE_MODULE"] = module
    if module == "eventsourcing.sqlite":
        keys.setdefault("SQLITE_DBNAME", str(data_dir / "ledger.sqlite"))
        keys.setdefault("SQLITE_LOCK_TIMEOUT", str(_default(StoreVariables, "sqlite_lock_timeout")))
    return keys


@dataclass(frozen=True)
class RunSettings:
    """Settings of the ``make run`` supervisor, ``python -m services.run`` (see docs/operations.md).

    ``NATS_URL`` set: use that NATS server and start none. Unset: start the bundled
    nats-server on 127.0.0.1:``LEDGER_NATS_PORT`` (never 4222, which the machine's own
    NATS may hold) with its JetStream store in ``$LEDGER_DATA_DIR/nats``.
    """

    nats_url: str | None = field(default=None, repr=False)  # may embed user:password
    nats_port: int = _default(RunVariables, "nats_port")
    ledger_listen: str = _default(LedgerVariables, "listen")
    notifier_listen: str = _default(NotifierVariables, "listen")
    situation_room_listen: str = _default(SituationRoomVariables, "listen")
    data_dir: Path = field(default=_default(ServiceVariables, "data_dir"))
    log_level: str = _default(ServiceVariables, "log_level")
    log_format: str = _default(ServiceVariables, "log_format")

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
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RunSettings:
        values = read(environ, reader=RUN)
        service = values.get(ServiceVariables)
        return cls(
            nats_url=values.get(NatsVariables).url or None,
            nats_port=values.get(RunVariables).nats_port,
            ledger_listen=values.get(LedgerVariables).listen,
            notifier_listen=values.get(NotifierVariables).listen,
            situation_room_listen=values.get(SituationRoomVariables).listen,
            data_dir=service.data_dir,
            log_level=service.log_level,
            log_format=service.log_format,
        )


@dataclass(frozen=True)
class SituationRoomSettings:
    """Settings of the situation room, ``python -m services.situation_room``."""

    listen: str = _default(SituationRoomVariables, "listen")
    ledger_address: str = _default(SituationRoomVariables, "ledger_address")
    notifier_address: str = _default(SituationRoomVariables, "notifier_address")
    token: str = field(default=_default(SituationRoomVariables, "token"), repr=False)
    session_minutes: float = _default(SituationRoomVariables, "session_minutes")
    session_idle_minutes: float = _default(SituationRoomVariables, "session_idle_minutes")
    #: The session cookies' key; None in development (generated in the data directory).
    session_key: bytes | None = field(default=None, repr=False)
    environment: str = _default(ServiceVariables, "environment")
    map_file: Path = field(default=_default(SituationRoomVariables, "map_file"))
    leaflet_dir: Path = field(default=_default(SituationRoomVariables, "leaflet_dir"))
    data_dir: Path = field(default=_default(ServiceVariables, "data_dir"))
    reference_file: Path = field(default=_default(ServiceVariables, "reference_file"))
    log_level: str = _default(ServiceVariables, "log_level")
    log_format: str = _default(ServiceVariables, "log_format")

    @property
    def dev_tokens_file(self) -> Path:
        return self.data_dir / "credentials" / "dev-tokens.yaml"

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SituationRoomSettings:
        given = dict(os.environ if environ is None else environ)
        values = read(given, reader=ROOM)
        room = values.get(SituationRoomVariables)
        service = values.get(ServiceVariables)
        if not room.listen:
            raise ConfigError("SITUATION_ROOM_LISTEN must be host:port (port 0 to 65535)")
        if service.environment == "production" and room.session_key is None:
            raise ConfigError(
                "SITUATION_ROOM_SESSION_KEY is required in production "
                "(or SITUATION_ROOM_SESSION_KEY_FILE)"
            )
        if service.environment == "production":
            refuse_development_secret(given, "SITUATION_ROOM_SESSION_KEY", room.session_key)
        if service.environment == "production" and not room.token:
            # Else the live subscription would fall back to the development tokens file.
            raise ConfigError(
                "SITUATION_ROOM_TOKEN is required in production (or SITUATION_ROOM_TOKEN_FILE): "
                "the development tokens are never used there"
            )
        return cls(
            listen=room.listen,
            ledger_address=room.ledger_address,
            notifier_address=room.notifier_address,
            token=room.token,
            session_minutes=room.session_minutes,
            session_idle_minutes=room.session_idle_minutes,
            session_key=room.session_key.encode() if room.session_key else None,
            environment=service.environment,
            map_file=room.map_file,
            leaflet_dir=room.leaflet_dir,
            data_dir=service.data_dir,
            reference_file=service.reference_file,
            log_level=service.log_level,
            log_format=service.log_format,
        )


@dataclass(frozen=True)
class WebhookSettings:
    max_attempts: int = _default(NotifierVariables, "webhook_max_attempts")
    timeout_seconds: float = _default(NotifierVariables, "webhook_timeout_seconds")
    backoff_seconds: float = _default(NotifierVariables, "webhook_backoff_seconds")
    max_backoff_seconds: float = _default(NotifierVariables, "webhook_max_backoff_seconds")
    concurrency: int = 32
    # POSTs in flight to one endpoint: a slot is taken by the claim and freed when the
    # endpoint answers (the outcome is recorded after). At 500 events/s to one endpoint 4
    # could not keep up (about 100 a second, docs/performance.md); ordering holds per
    # incident whatever the figure.
    per_endpoint_concurrency: int = 16
    # Targets on non-public addresses (loopback, private, link-local, ...) are refused
    # unless they fall in one of these networks (NOTIFIER_WEBHOOK_ALLOW_NETWORKS).
    allow_networks: tuple[IPNetwork, ...] = _default(NotifierVariables, "webhook_allow_networks")
    # CAs trusted for https:// targets besides the system's (NOTIFIER_WEBHOOK_CA_FILE).
    ca_file: Path | None = None

    def ssl_context(self) -> ssl.SSLContext:
        """How ``https://`` deliveries verify their targets (against the webhook's host
        name): the system's CAs, and those of ``ca_file`` (an agency's own CA) when given."""
        context = ssl.create_default_context()
        if self.ca_file is not None:
            try:
                context.load_verify_locations(cafile=self.ca_file)
            except (ssl.SSLError, OSError):
                raise ConfigError(
                    f"NOTIFIER_WEBHOOK_CA_FILE: {self.ca_file} holds no valid PEM certificate"
                ) from None
        return context


@dataclass(frozen=True)
class NotifierSettings(ServiceSettings):
    """Settings of the notifier service (see docs/configuration.md)."""

    listen: str = _default(NotifierVariables, "listen")
    nats_url: str = field(default="", repr=False)  # may embed user:password
    nats: NatsClientSettings = field(default_factory=NatsClientSettings)
    stream: StreamSettings = field(default_factory=StreamSettings)
    consumer: str = _default(NotifierVariables, "consumer")
    ack_wait_seconds: float = _default(NotifierVariables, "ack_wait_seconds")
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    max_workers: int = _default(NotifierVariables, "max_workers")
    grace_seconds: float = _default(NotifierVariables, "grace_seconds")
    store_env: dict[str, str] = field(default_factory=dict, repr=False)  # POSTGRES_PASSWORD
    # On PostgreSQL, how often the store is asked whether it answers (health follows it).
    store_check_seconds: float = _default(LedgerVariables, "store_check_seconds")
    # host:port of the Prometheus endpoint; empty = off
    metrics_listen: str = _default(NotifierVariables, "metrics_listen")
    # The AES-256-GCM key that seals webhook secrets at rest (32 bytes, base64 or raw).
    # Unset in development: generated on first use as <data_dir>/keys/notifier-webhook.key.
    webhook_key_file: Path | None = None

    @property
    def resolved_webhook_key_file(self) -> Path:
        return self.webhook_key_file or self.data_dir / "keys" / "notifier-webhook.key"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> NotifierSettings:
        given = dict(os.environ if environ is None else environ)
        values = read(given, reader=NOTIFIER)
        common = cls.common_from_variables(values, given)
        nats, notifier = values.get(NatsVariables), values.get(NotifierVariables)
        if not nats_servers(nats.url):
            raise ConfigError("NATS_URL is required: the notifier consumes the ledger's stream")
        cls.check_store_choice(common, given, notifier.store == "postgres", "NOTIFIER_STORE")
        if notifier.store == "postgres":
            store_env = {
                **postgres_environment(given, values),
                "PERSISTENCE_MODULE": "eventsourcing.postgres",
            }
        else:
            store_env = {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": notifier.sqlite_dbname
                or str(common["data_dir"] / "notifier.sqlite"),
            }
        settings = cls(
            **common,
            listen=notifier.listen,
            metrics_listen=notifier.metrics_listen,
            nats_url=nats.url,
            nats=NatsClientSettings.from_variables(nats),
            stream=StreamSettings.from_variables(values.get(StreamVariables)),
            consumer=notifier.consumer,
            ack_wait_seconds=notifier.ack_wait_seconds,
            webhooks=WebhookSettings(
                max_attempts=notifier.webhook_max_attempts,
                timeout_seconds=notifier.webhook_timeout_seconds,
                backoff_seconds=notifier.webhook_backoff_seconds,
                max_backoff_seconds=notifier.webhook_max_backoff_seconds,
                allow_networks=notifier.webhook_allow_networks,
                ca_file=_readable_file("NOTIFIER_WEBHOOK_CA_FILE", notifier.webhook_ca_file),
            ),
            max_workers=notifier.max_workers,
            grace_seconds=notifier.grace_seconds,
            store_env=store_env,
            store_check_seconds=values.get(LedgerVariables).store_check_seconds,
            webhook_key_file=notifier.webhook_key_file,
            open_key_files=check_key_files(
                given, NOTIFIER, production=common["environment"] == "production"
            ),
        )
        if settings.production and settings.webhook_key_file is None:
            # Replicas must share the key, and a production data directory may be
            # read-only or per-replica: a generated key would not do.
            raise ConfigError("NOTIFIER_WEBHOOK_KEY_FILE is required in production")
        settings.webhooks.ssl_context()  # fails now, with the setting's name
        settings.check_transport(settings.listen, "NOTIFIER_LISTEN")
        return settings


@dataclass(frozen=True)
class AuditSettings:
    """Tamper evidence: the checkpoint signing key and how often checkpoints are made.

    ``LEDGER_SIGNING_KEY_FILE`` names an Ed25519 private key (PEM PKCS#8, or the raw 32-byte
    seed in base64). Unset in development, a key pair is generated on first use in
    ``<LEDGER_DATA_DIR>/keys/`` (``ledger-signing.key``, mode 0600, and
    ``ledger-signing.pub``); in production the key must be given.
    ``LEDGER_RETIRED_SIGNING_KEYS_FILE`` names the public keys of the signing keys the
    ledger retired (a rotation, docs/operations.md): their seals and checkpoints still count.
    ``LEDGER_CHECKPOINT_SECONDS`` (default 300) is the checkpoint period; 0 = only on demand.
    """

    environment: str = _default(ServiceVariables, "environment")
    data_dir: Path = field(default=_default(ServiceVariables, "data_dir"))
    signing_key_file: Path | None = None
    retired_signing_keys_file: Path | None = None
    checkpoint_seconds: float = _default(LedgerVariables, "checkpoint_seconds")

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
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AuditSettings:
        return cls.from_variables(read(environ, (ServiceVariables, LedgerVariables), LEDGER))

    @classmethod
    def from_variables(cls, values: Values) -> AuditSettings:
        service, ledger = values.get(ServiceVariables), values.get(LedgerVariables)
        if service.environment == "production" and ledger.signing_key_file is None:
            raise ConfigError(required_in_production("LEDGER_SIGNING_KEY_FILE"))
        return cls(
            environment=service.environment,
            data_dir=service.data_dir,
            signing_key_file=ledger.signing_key_file,
            retired_signing_keys_file=ledger.retired_signing_keys_file,
            checkpoint_seconds=ledger.checkpoint_seconds,
        )

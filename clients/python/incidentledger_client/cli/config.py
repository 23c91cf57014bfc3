"""Where ledgerctl finds server addresses and credentials: flags, environment, a config file.

Precedence: a flag, then the environment (``LEDGER_ADDRESS``, ``NOTIFIER_ADDRESS``,
``LEDGER_TOKEN``, ``LEDGER_AGENCY``, ``LEDGER_TOKENS_FILE``, ``LEDGER_TIMEOUT``,
``LEDGER_TLS_CA``, ``LEDGER_TLS_CLIENT_CERT``, ``LEDGER_TLS_CLIENT_KEY``, ``LEDGERCTL_ZONE``),
then the config file's chosen context, then its top level, then the defaults. The config file
(``--config``, ``$LEDGERCTL_CONFIG`` or ``~/.config/ledgerctl.toml``) is TOML with the keys
``address``, ``notifier_address``, ``token``, ``agency``, ``tokens_file``, ``timeout``,
``tls_ca``, ``tls_cert``, ``tls_key`` and ``zone``; a key it does not know is an error (a typo
must not fall back to the default address and talk to whatever listens there)::

    current_context = "training"
    zone = "Asia/Jakarta"                  # times for people are shown in this zone (WIB)

    [contexts.training]
    address = "127.0.0.1:50051"
    agency = "polres"

    [contexts.production]
    address = "ledger.example.go.id:50051"
    notifier_address = "ledger.example.go.id:50052"
    tls_ca = "/etc/ledger/ca.pem"          # TLS: verify the servers with this CA
    tls_cert = "/etc/ledger/polres.pem"    # mutual TLS: the agency's client certificate
    tls_key = "/etc/ledger/polres.key"

The context is ``--context NAME``, else ``$LEDGERCTL_CONTEXT``, else ``current_context``.
Without a CA (and without a client certificate) ledgerctl speaks plaintext, as to
``make run``. The environment's TLS files are read by the client library itself, so
``NOTIFIER_TLS_CA`` and the other ``NOTIFIER_TLS_*`` variables apply to the notifier.

``--agency NAME`` (or ``agency``) picks that agency's token from the development tokens file
(``data/credentials/dev-tokens.yaml``, written by the ledger on its first start; where it is
looked for when ``tokens_file`` is not set: :func:`default_tokens_file`).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import ssl
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from incidentledger_client.i18n import _

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_NOTIFIER_ADDRESS = "127.0.0.1:50052"
DEFAULT_TOKENS_FILE = Path("data/credentials/dev-tokens.yaml")
DEFAULT_CONFIG_FILE = Path("~/.config/ledgerctl.toml")
DEFAULT_TIMEOUT = 10.0
#: The regency's zone (Kabupaten Mukomuko, Bengkulu: WIB); another regency sets ``zone``.
DEFAULT_ZONE = "Asia/Jakarta"

#: Setting -> (flag, environment variable). The config file's key is the setting's name.
SETTINGS: dict[str, tuple[str, str]] = {
    "address": ("--address", "LEDGER_ADDRESS"),
    "notifier_address": ("--notifier-address", "NOTIFIER_ADDRESS"),
    "token": ("--token", "LEDGER_TOKEN"),
    "agency": ("--agency", "LEDGER_AGENCY"),
    "tokens_file": ("--tokens-file", "LEDGER_TOKENS_FILE"),
    "timeout": ("--timeout", "LEDGER_TIMEOUT"),
    "tls_ca": ("--tls-ca", "LEDGER_TLS_CA"),
    "tls_cert": ("--tls-cert", "LEDGER_TLS_CLIENT_CERT"),
    "tls_key": ("--tls-key", "LEDGER_TLS_CLIENT_KEY"),
    "zone": ("--zone", "LEDGERCTL_ZONE"),
}
#: Keys of the config file's top level besides the settings.
FILE_ONLY_KEYS = ("current_context", "contexts")


class ConfigError(Exception):
    """Bad or missing configuration: a usage error (exit code 2)."""


@dataclass(frozen=True)
class Settings:
    address: str
    notifier_address: str
    token: str
    agency: str
    timeout: float
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    zone: str = DEFAULT_ZONE
    tokens_file: str = str(DEFAULT_TOKENS_FILE)
    context: str = ""
    config_file: str = ""
    #: Setting -> where its value came from ("flag --address", "env LEDGER_ADDRESS", ...).
    sources: dict[str, str] = field(default_factory=dict)

    def source(self, name: str) -> str:
        return self.sources.get(name, "default")

    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.zone)


def suggest(value: str, known: Sequence[str]) -> str:
    """`` (did you mean X?)`` for the closest known value, or nothing."""
    close = difflib.get_close_matches(value.lower(), [k.lower() for k in known], n=1, cutoff=0.6)
    if not close:
        return ""
    original = next(k for k in known if k.lower() == close[0])
    return " " + _("(did you mean {value}?)").format(value=repr(original))


@dataclass(frozen=True)
class ConfigFile:
    path: Path | None
    table: dict[str, Any]


def config_path(path: Path | None) -> tuple[Path, bool]:
    """The config file to read and whether it was named (a named file must exist)."""
    explicit = path is not None or "LEDGERCTL_CONFIG" in os.environ
    chosen = path or Path(os.environ.get("LEDGERCTL_CONFIG", str(DEFAULT_CONFIG_FILE)))
    return chosen.expanduser(), explicit


def _check_keys(table: dict[str, Any], where: str, allowed: tuple[str, ...]) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(
                _("unknown key {key} in {where}{suggestion}; known keys: {known}").format(
                    key=repr(key),
                    where=where,
                    suggestion=suggest(key, allowed),
                    known=", ".join(allowed),
                )
            )


def load_config_file(path: Path | None) -> ConfigFile:
    """The config file: the one named, else ``$LEDGERCTL_CONFIG``, else the default."""
    chosen, explicit = config_path(path)
    if not chosen.is_file():
        if explicit:
            raise ConfigError(_("config file not found: {path}").format(path=chosen))
        return ConfigFile(None, {})
    try:
        table = tomllib.loads(chosen.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(
            _("bad config file {path}: {error}").format(path=chosen, error=error)
        ) from None
    _check_keys(table, str(chosen), (*SETTINGS, *FILE_ONLY_KEYS))
    contexts = table.get("contexts", {})
    if not isinstance(contexts, dict) or not all(isinstance(c, dict) for c in contexts.values()):
        raise ConfigError(
            _("bad config file {path}: contexts must be tables ([contexts.NAME])").format(
                path=chosen
            )
        )
    for name, context in contexts.items():
        _check_keys(context, f"{chosen} [contexts.{name}]", tuple(SETTINGS))
    return ConfigFile(chosen, table)


def contexts_of(file: ConfigFile) -> dict[str, dict[str, Any]]:
    contexts: dict[str, dict[str, Any]] = file.table.get("contexts", {})
    return contexts


def default_tokens_file(cwd: Path | None = None) -> Path:
    """The development tokens file when none is named: in ``$LEDGER_DATA_DIR`` when that is
    set (where the services write it), else ``data/credentials/dev-tokens.yaml`` in the
    current directory or the nearest one above it that has one, so that ledgerctl works
    from anywhere in a checkout (``cd docs``) as git does; else the current directory's."""
    data_dir = os.environ.get("LEDGER_DATA_DIR")
    if data_dir:
        return Path(data_dir) / DEFAULT_TOKENS_FILE.relative_to("data")
    here = (cwd or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if (directory / DEFAULT_TOKENS_FILE).is_file():
            return directory / DEFAULT_TOKENS_FILE
    return DEFAULT_TOKENS_FILE


def token_for_agency(
    agency: str,
    tokens_file: Path,
    source: str = "",
    *,
    agency_source: str = "",
    token: str = "",
    token_source: str = "",
) -> str:
    """The agency's token from a development tokens file (``{agency: {token: ...}}``).

    ``token`` is a token set besides (``LEDGER_TOKEN``, the configuration file's; from
    ``token_source``), which the agency (from ``agency_source``) puts aside: when the file is
    the services' file of token hashes, the error says whose that token is there and what
    to do, rather than to set a token."""
    if not tokens_file.is_file():
        where = (
            " " + _("(tokens_file from {source})").format(source=source)
            if source and source != "default"
            else ""
        )
        raise ConfigError(
            _(
                "tokens file not found: {path}{where}. The ledger writes it on its first "
                "start (make run); elsewhere ask your ledger's administrator for a token and "
                "pass it with --token or LEDGER_TOKEN, or use a client certificate (--tls-cert)"
            ).format(path=tokens_file, where=where)
        )
    raw = yaml.safe_load(tokens_file.read_text(encoding="utf-8")) or {}
    if isinstance(raw, dict) and isinstance(raw.get("users"), list):
        # The services' file of the tokens' hashes (their LEDGER_TOKENS_FILE, which a shell
        # with the services' environment hands ledgerctl too): no token can be read there.
        if token:
            raise ConfigError(
                _token_set_besides(
                    agency, agency_source, tokens_file, source, raw["users"], token, token_source
                )
            )
        raise ConfigError(
            _(
                "{path} is the services' file of token hashes ({source}), which holds no "
                "token: give ledgerctl the development tokens file (--tokens-file "
                "data/credentials/dev-tokens.yaml) or a token (--token, LEDGER_TOKEN)"
            ).format(path=tokens_file, source=source or "default")
        )
    # Agency codes are case-insensitive, as everywhere in ledgerctl.
    entry = raw.get(agency) or next(
        (v for k, v in raw.items() if str(k).lower() == agency.lower()), None
    )
    if not isinstance(entry, dict) or "token" not in entry:
        known = sorted(raw)
        raise ConfigError(
            _("no token for agency {agency} in {path}{suggestion} (known: {known})").format(
                agency=repr(agency),
                path=tokens_file,
                suggestion=suggest(agency, known),
                known=", ".join(known),
            )
        )
    return str(entry["token"])


def _token_set_besides(
    agency: str,
    agency_source: str,
    tokens_file: Path,
    source: str,
    users: list[Any],
    token: str,
    token_source: str,
) -> str:
    """Why the agency's token was not found in the services' file of token hashes while
    another token is set: whose that token is in the file (by its hash), and what to do."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    user = next(
        (u for u in users if isinstance(u, dict) and str(u.get("token_sha256", "")) == digest),
        None,
    )
    values = {
        "agency": agency,
        "agency_source": agency_source,
        "path": tokens_file,
        "source": source or "default",
        "token_source": token_source,
    }
    if user is None:
        return _(
            "agency {agency} ({agency_source}) takes its token from a tokens file, but {path} "
            "({source}) is the services' file of token hashes, which holds no token; the token "
            "set ({token_source}) is not listed there either. Drop the agency ({agency_source}) "
            "to act with that token, or give ledgerctl the development tokens file "
            "(--tokens-file data/credentials/dev-tokens.yaml)"
        ).format(**values)
    whose, officer = str(user.get("agency", "")), str(user.get("officer", ""))
    if whose.lower() == agency.lower():
        return _(
            "agency {agency} ({agency_source}) takes its token from a tokens file, but {path} "
            "({source}) is the services' file of token hashes, which holds no token; the token "
            "set ({token_source}) is already a token of {agency} (officer {officer}): drop the "
            "agency ({agency_source}) to act with it"
        ).format(**values, officer=officer)
    return _(
        "agency {agency} ({agency_source}) takes its token from a tokens file, but {path} "
        "({source}) is the services' file of token hashes, which holds no token; the token set "
        "({token_source}) is a token of {whose} (officer {officer}), not of {agency}. Drop the "
        "agency ({agency_source}) to act as {whose}, or give ledgerctl a token of {agency} "
        "(--token)"
    ).format(**values, whose=whose, officer=officer)


def resolve(
    *,
    address: str | None,
    notifier_address: str | None,
    token: str | None,
    agency: str | None,
    tokens_file: Path | None,
    config: Path | None,
    timeout: float | None,
    tls_ca: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    zone: str | None = None,
    context: str | None = None,
) -> Settings:
    """Combine flags, environment and config file (in that order of precedence)."""
    file = load_config_file(config)
    env = os.environ
    contexts = contexts_of(file)
    context_name = context or env.get("LEDGERCTL_CONTEXT") or file.table.get("current_context")
    context_name = str(context_name or "")
    chosen_context: dict[str, Any] = {}
    if context_name:
        if context_name not in contexts:
            known = sorted(contexts)
            raise ConfigError(
                _("no context {context} in {path}{suggestion} (known: {known})").format(
                    context=repr(context_name),
                    path=file.path or config_path(config)[0],
                    suggestion=suggest(context_name, known),
                    known=", ".join(known) or _("none"),
                )
            )
        chosen_context = contexts[context_name]
    flags: dict[str, Any] = {
        "address": address,
        "notifier_address": notifier_address,
        "token": token,
        "agency": agency,
        "tokens_file": tokens_file,
        "timeout": timeout,
        "tls_ca": tls_ca,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "zone": zone,
    }
    sources: dict[str, str] = {}

    def pick(name: str, default: Any) -> Any:
        flag, variable = SETTINGS[name]
        if flags[name] is not None:
            sources[name] = f"flag {flag}"
            return flags[name]
        if env.get(variable):
            sources[name] = f"env {variable}"
            return env[variable]
        if name in chosen_context:
            sources[name] = f"config {file.path} [contexts.{context_name}]"
            return chosen_context[name]
        if name in file.table:
            sources[name] = f"config {file.path}"
            return file.table[name]
        sources[name] = "default"
        return default

    def tls_file(name: str) -> str | None:
        """A flag or file setting; None when the variable is set (the library reads it)."""
        value = pick(name, None)
        if value is None or sources[name].startswith("env "):
            return None
        path = Path(str(value)).expanduser()
        if not path.is_file():
            raise ConfigError(
                _("{setting} file not found: {path} (from {source})").format(
                    setting=name.replace("_", "-"), path=path, source=sources[name]
                )
            )
        return str(path)

    agency_name = str(pick("agency", ""))
    chosen_token = ""
    if flags["token"] is not None or not agency_name:
        chosen_token = str(pick("token", ""))
    path = Path(str(pick("tokens_file", default_tokens_file())))
    if not chosen_token and agency_name:
        # --agency puts aside a token set otherwise (LEDGER_TOKEN, the file's): named if the
        # tokens file turns out to hold none.
        set_besides = str(pick("token", ""))
        chosen_token = token_for_agency(
            agency_name,
            path.expanduser(),
            sources["tokens_file"],
            agency_source=sources["agency"],
            token=set_besides,
            token_source=sources["token"] if set_besides else "",
        )
        sources["token"] = f"tokens file for agency {agency_name} ({sources['agency']})"
    client_cert = tls_file("tls_cert")
    client_key = tls_file("tls_key")
    if (client_cert is None) != (client_key is None) and not (
        env.get("LEDGER_TLS_CLIENT_CERT") or env.get("LEDGER_TLS_CLIENT_KEY")
    ):
        raise ConfigError(_("--tls-cert and --tls-key go together"))
    if client_cert is not None and client_key is not None:
        _check_client_pair(client_cert, client_key, sources)
    zone_name = str(pick("zone", DEFAULT_ZONE))
    try:
        ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            _(
                "unknown time zone {zone} (from {source}); use an IANA name such as "
                "Asia/Jakarta (WIB), Asia/Makassar (WITA), Asia/Jayapura (WIT)"
            ).format(zone=repr(zone_name), source=sources["zone"])
        ) from None
    try:
        seconds = float(pick("timeout", DEFAULT_TIMEOUT))
    except ValueError:
        raise ConfigError(
            _("timeout must be a number of seconds (from {source})").format(
                source=sources["timeout"]
            )
        ) from None
    return Settings(
        address=str(pick("address", DEFAULT_ADDRESS)),
        notifier_address=str(pick("notifier_address", DEFAULT_NOTIFIER_ADDRESS)),
        token=chosen_token,
        agency=agency_name,
        timeout=seconds,
        tls_ca=tls_file("tls_ca"),
        tls_cert=client_cert,
        tls_key=client_key,
        zone=zone_name,
        tokens_file=str(path),
        context=context_name,
        config_file=str(file.path or ""),
        sources=sources,
    )


def set_current_context(path: Path, name: str) -> None:
    """Write ``current_context = "name"`` into the config file (top level, before any table)."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    line = f"current_context = {_toml_string(name)}\n"
    for index, existing in enumerate(lines):
        if existing.lstrip().startswith("["):
            break
        if existing.split("=", 1)[0].strip() == "current_context":
            lines[index] = line
            path.write_text("".join(lines), encoding="utf-8")
            return
    path.write_text(line + "".join(lines), encoding="utf-8")


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_client_pair(cert: str, key: str, sources: dict[str, str]) -> None:
    """Refuse a client key that is not the certificate's (or not PEM) before any call: gRPC
    would only fail to connect, in words that do not say why."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key, password=lambda: b"")
    except (ssl.SSLError, OSError):
        raise ConfigError(
            _(
                "the client certificate {cert} (from {cert_source}) and the key {key} (from "
                "{key_source}) do not go together: the key must be the certificate's own, "
                "unencrypted PEM"
            ).format(
                cert=cert,
                cert_source=sources["tls_cert"],
                key=key,
                key_source=sources["tls_key"],
            )
        ) from None

"""Where ledgerctl finds server addresses and credentials: flags, environment, a config file.

Precedence: a flag, then the environment (``LEDGER_ADDRESS``, ``NOTIFIER_ADDRESS``,
``LEDGER_TOKEN``, ``LEDGER_AGENCY``, ``LEDGER_TOKENS_FILE``, ``LEDGER_TLS_CA``,
``LEDGER_TLS_CLIENT_CERT``, ``LEDGER_TLS_CLIENT_KEY``), then the config file
(``--config``, ``$LEDGERCTL_CONFIG`` or ``~/.config/ledgerctl.toml``), then the defaults.
The config file is TOML with the keys ``address``, ``notifier_address``, ``token``,
``agency``, ``tokens_file``, ``timeout``, ``tls_ca``, ``tls_cert`` and ``tls_key``::

    address = "ledger.example.go.id:50051"
    notifier_address = "ledger.example.go.id:50052"
    agency = "polres"
    tokens_file = "data/credentials/dev-tokens.yaml"
    tls_ca = "/etc/ledger/ca.pem"          # TLS: verify the servers with this CA
    tls_cert = "/etc/ledger/polres.pem"    # mutual TLS: the agency's client certificate
    tls_key = "/etc/ledger/polres.key"

Without a CA (and without a client certificate) ledgerctl speaks plaintext, as to
``make run``. The environment's TLS files are read by the client library itself, so
``NOTIFIER_TLS_CA`` and the other ``NOTIFIER_TLS_*`` variables apply to the notifier.

``--agency NAME`` (or ``agency``) picks that agency's token from the development tokens file
(``data/credentials/dev-tokens.yaml``, written by the ledger on its first start).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_NOTIFIER_ADDRESS = "127.0.0.1:50052"
DEFAULT_TOKENS_FILE = Path("data/credentials/dev-tokens.yaml")
DEFAULT_CONFIG_FILE = Path("~/.config/ledgerctl.toml")


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


def load_config_file(path: Path | None) -> dict[str, Any]:
    """The config file's table: the one named, else ``$LEDGERCTL_CONFIG``, else the default."""
    explicit = path is not None or "LEDGERCTL_CONFIG" in os.environ
    chosen = path or Path(os.environ.get("LEDGERCTL_CONFIG", str(DEFAULT_CONFIG_FILE)))
    chosen = chosen.expanduser()
    if not chosen.is_file():
        if explicit:
            raise ConfigError(f"config file not found: {chosen}")
        return {}
    try:
        return tomllib.loads(chosen.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"bad config file {chosen}: {error}") from None


def token_for_agency(agency: str, tokens_file: Path) -> str:
    """The agency's token from a development tokens file (``{agency: {token: ...}}``)."""
    if not tokens_file.is_file():
        raise ConfigError(
            f"tokens file not found: {tokens_file} (start the ledger once, or pass --token)"
        )
    raw = yaml.safe_load(tokens_file.read_text(encoding="utf-8")) or {}
    entry = raw.get(agency)
    if not isinstance(entry, dict) or "token" not in entry:
        known = ", ".join(sorted(raw))
        raise ConfigError(f"no token for agency {agency!r} in {tokens_file} (known: {known})")
    return str(entry["token"])


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
) -> Settings:
    """Combine flags, environment and config file (in that order of precedence)."""
    file = load_config_file(config)
    env = os.environ

    def tls_file(flag: Path | None, variable: str, key: str) -> str | None:
        """A flag, else None when the variable is set (the library reads it), else the file."""
        if flag is not None:
            path = flag.expanduser()
        elif env.get(variable) or key not in file:
            return None
        else:
            path = Path(str(file[key])).expanduser()
        if not path.is_file():
            raise ConfigError(f"{key.replace('_', '-')} file not found: {path}")
        return str(path)

    def pick(flag: Any, variable: str, key: str, default: Any) -> Any:
        if flag is not None:
            return flag
        if env.get(variable):
            return env[variable]
        return file.get(key, default)

    agency_name = str(pick(agency, "LEDGER_AGENCY", "agency", ""))
    chosen_token = token if token is not None else ""
    if not chosen_token and not agency_name:
        chosen_token = str(env.get("LEDGER_TOKEN") or file.get("token", ""))
    if not chosen_token and agency_name:
        path = Path(
            str(pick(tokens_file, "LEDGER_TOKENS_FILE", "tokens_file", DEFAULT_TOKENS_FILE))
        )
        chosen_token = token_for_agency(agency_name, path.expanduser())
    client_cert = tls_file(tls_cert, "LEDGER_TLS_CLIENT_CERT", "tls_cert")
    client_key = tls_file(tls_key, "LEDGER_TLS_CLIENT_KEY", "tls_key")
    if (client_cert is None) != (client_key is None) and not (
        env.get("LEDGER_TLS_CLIENT_CERT") or env.get("LEDGER_TLS_CLIENT_KEY")
    ):
        raise ConfigError("--tls-cert and --tls-key go together")
    return Settings(
        address=str(pick(address, "LEDGER_ADDRESS", "address", DEFAULT_ADDRESS)),
        notifier_address=str(
            pick(notifier_address, "NOTIFIER_ADDRESS", "notifier_address", DEFAULT_NOTIFIER_ADDRESS)
        ),
        token=chosen_token,
        agency=agency_name,
        timeout=float(pick(timeout, "LEDGER_TIMEOUT", "timeout", 10.0)),
        tls_ca=tls_file(tls_ca, "LEDGER_TLS_CA", "tls_ca"),
        tls_cert=client_cert,
        tls_key=client_key,
    )

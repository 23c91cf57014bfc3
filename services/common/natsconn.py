"""How the services connect to NATS: TLS and credentials, in one place.

:func:`connect_options` turns :class:`~services.common.config.NatsClientSettings` into
keyword arguments of ``nats.connect`` (``tls``, ``tls_handshake_first``, ``user`` and
``password``, or ``token``). The relay and the notifier both use it. :func:`redact_url`
hides a password or token embedded in a NATS URL, for logs.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from services.common.config import NatsClientSettings

REDACTED = "***"


def connect_options(settings: NatsClientSettings) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect``: TLS context and credentials, when configured.

    A TLS context is built from the files at each call (so a renewed certificate is used at
    the next connection); without TLS settings the client still upgrades to TLS with the
    system's roots when the server requires it.
    """
    options: dict[str, Any] = {}
    context = settings.ssl_context()
    if context is not None:
        options["tls"] = context
        if settings.tls_handshake_first:
            options["tls_handshake_first"] = True
    if settings.user:
        options["user"] = settings.user
        options["password"] = settings.password
    if settings.token:
        options["token"] = settings.token
    return options


def redact_url(url: str) -> str:
    """``url`` (one NATS URL, or several separated by commas) without embedded secrets.

    ``nats://user:secret@host:4222`` becomes ``nats://user:***@host:4222`` and
    ``nats://token@host:4222`` becomes ``nats://***@host:4222``.
    """
    return ",".join(_redact_one(part.strip()) for part in url.split(",")) if url else url


def _redact_one(url: str) -> str:
    try:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
    except ValueError:
        return REDACTED  # unparseable: show nothing rather than a secret
    if "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, colon, _secret = userinfo.partition(":")
    shown = f"{user}:{REDACTED}" if colon else REDACTED
    redacted = urlunsplit(parts._replace(netloc=f"{shown}@{hostport}"))
    return redacted if "://" in url else redacted.removeprefix("nats://")

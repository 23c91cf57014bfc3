"""Where webhooks may point: checked when a webhook is registered and again at each delivery.

A webhook is a request the notifier makes on an agency's behalf, so it must not become a
way into the notifier's own network: by default only public addresses are allowed, never
loopback, private, link-local (169.254.169.254, cloud metadata), shared, multicast or
reserved ones, unless an address falls in ``NOTIFIER_WEBHOOK_ALLOW_NETWORKS``. A URL with
credentials in it is refused (they would be echoed back in ``ListWebhooks``).

At delivery the host name is resolved, every address it resolves to is checked, and the
request goes to the checked address (the name stays in ``Host`` and in TLS), so a name
that resolves elsewhere between the check and the request (DNS rebinding) cannot reach
a refused address.
An ``https://`` target's certificate is verified against the host name, by the system's
CAs and those of ``NOTIFIER_WEBHOOK_CA_FILE`` (``WebhookSettings.ssl_context``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from services.common.config import IPNetwork
from services.common.errors import InvalidArgument

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_URL = 2048


class TargetRefusedError(Exception):
    """The webhook's target is not allowed (its address, or its URL)."""


@dataclass(frozen=True)
class Target:
    """A webhook URL taken apart: what the request needs."""

    url: str
    scheme: str
    host: str  # a name, or an address (IPv6 without brackets)
    port: int
    literal: IPAddress | None  # the host, when it is an address


def parse_target(url: str) -> Target:
    """The URL, checked to be a complete http(s) URL; raises ``TargetRefusedError`` with why."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port outside 0-65535 or not a number
        host = parts.hostname
    except ValueError:
        raise TargetRefusedError("is not a valid URL") from None
    if parts.scheme not in {"http", "https"} or not host:
        raise TargetRefusedError("must be an absolute http:// or https:// URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise TargetRefusedError("must not carry credentials (user:password@)")
    if port == 0:
        raise TargetRefusedError("has an invalid port")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise TargetRefusedError("must not contain spaces or control characters")
    return Target(
        url=url,
        scheme=parts.scheme,
        host=host,
        port=port or (443 if parts.scheme == "https" else 80),
        literal=_address(host),
    )


def _address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class TargetPolicy:
    """Which addresses a webhook may reach: public ones, and the allowed networks."""

    def __init__(self, allow_networks: Sequence[IPNetwork] = ()) -> None:
        self._allowed = tuple(allow_networks)

    def allows(self, address: IPAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        if any(address in network for network in self._allowed):
            return True
        return address.is_global and not address.is_multicast

    def check_registration(self, url: str, field: str = "url") -> Target:
        """The target of a new webhook, or ``InvalidArgument`` (naming ``field``).

        A name is resolved now too: one that resolves to a refused address is refused.
        A name that does not resolve yet is accepted: each delivery checks it again.
        """
        if not url:
            raise InvalidArgument(field, "is required")
        if len(url) > MAX_URL:
            raise InvalidArgument(
                field, f"is longer than {MAX_URL} characters", reason="FIELD_TOO_LONG"
            )
        try:
            target = parse_target(url)
            if target.literal is not None:
                self._check(target.literal)
            else:
                for address in _resolve_now(target):
                    self._check(address)
        except TargetRefusedError as refused:
            raise InvalidArgument(field, str(refused)) from None
        return target

    async def resolve(self, target: Target) -> IPAddress:
        """The address to send a delivery to: every address of the host is checked first."""
        if target.literal is not None:
            self._check(target.literal)
            return target.literal
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                target.host, target.port, type=socket.SOCK_STREAM
            )
        except OSError:
            raise TargetRefusedError("the host name does not resolve") from None
        addresses = _addresses(infos)
        if not addresses:
            raise TargetRefusedError("the host name does not resolve")
        for address in addresses:
            self._check(address)
        return addresses[0]

    def _check(self, address: IPAddress) -> None:
        if not self.allows(address):
            raise TargetRefusedError(
                "points to a non-public address (loopback, private, link-local or reserved);"
                " NOTIFIER_WEBHOOK_ALLOW_NETWORKS can allow internal receivers"
            )


def _resolve_now(target: Target) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return _addresses(infos)


def _addresses(infos: Sequence[tuple[object, ...]]) -> list[IPAddress]:
    found: list[IPAddress] = []
    for info in infos:
        sockaddr = info[4]
        if not isinstance(sockaddr, tuple):
            continue
        # A scoped IPv6 address comes as "fe80::1%eth0": the scope is not part of it.
        address = _address(str(sockaddr[0]).split("%", 1)[0])
        if address is not None and address not in found:
            found.append(address)
    return found


def pinned_url(target: Target, address: IPAddress) -> tuple[str, dict[str, str]]:
    """The URL with its host replaced by ``address``, and the ``Host`` header to send.

    The TLS server name stays the host name (the ``sni_hostname`` request extension), so
    certificates are verified against the name, not the address.
    """
    parts: SplitResult = urlsplit(target.url)
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{literal}:{target.port}"
    host_header = parts.netloc
    return parts._replace(netloc=netloc).geturl(), {"Host": host_header}

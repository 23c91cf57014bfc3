"""Opaque, tamper-proof page tokens (AIP-158).

A token is base64url(JSON payload + HMAC-SHA256). It is bound to the query it
continues, so it cannot be replayed with another filter or edited by a client.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from services.common.errors import InvalidArgument

_MAC_BYTES = 16


class PageTokens:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            msg = "the page token secret must be at least 16 bytes"
            raise ValueError(msg)
        self._secret = secret

    def encode(self, query: str, cursor: dict[str, Any]) -> str:
        body = json.dumps({"q": _digest(query), "c": cursor}, separators=(",", ":")).encode()
        mac = hmac.new(self._secret, body, hashlib.sha256).digest()[:_MAC_BYTES]
        return base64.urlsafe_b64encode(mac + body).decode().rstrip("=")

    def decode(self, query: str, token: str, field: str = "page_token") -> dict[str, Any]:
        """The cursor in ``token``; INVALID_ARGUMENT if it was altered or is for another query."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise InvalidArgument(field, "is not a valid page token") from None
        mac, body = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
        expected = hmac.new(self._secret, body, hashlib.sha256).digest()[:_MAC_BYTES]
        if not hmac.compare_digest(mac, expected):
            raise InvalidArgument(field, "is not a valid page token")
        payload = json.loads(body)
        if payload.get("q") != _digest(query):
            raise InvalidArgument(
                field,
                "belongs to a different query: send the request of the page it came from"
                " again (the same filter, order_by, parent, as_of_time), only page_size may"
                " change",
            )
        cursor = payload.get("c")
        if not isinstance(cursor, dict):
            raise InvalidArgument(field, "is not a valid page token")
        return cursor


T = TypeVar("T")


def page_of(
    tokens: PageTokens,
    query: str,
    page_token: str,
    size: int,
    fetch: Callable[[Any, int], Sequence[T]],
    cursor_of: Callable[[T], Any],
    start: Any,
    *,
    weigh: Callable[[T], int] | None = None,
    max_bytes: int = 0,
) -> tuple[list[T], str]:
    """One page of a keyset-paginated query, and the token of the next page ("" at the end).

    ``fetch(after, limit)`` returns the items after the cursor ``after``; ``cursor_of``
    gives an item's cursor; ``start`` is the cursor of the first page. With ``weigh`` (an
    item's size in the response, in bytes) and ``max_bytes``, the page ends before the item
    that would take it past ``max_bytes`` (it holds one item at least), and the next page
    starts with that item: a page of large items would be larger than gRPC sends.
    """
    after = tokens.decode(query, page_token).get("after", start) if page_token else start
    items = list(fetch(after, size + 1))
    if weigh is not None and max_bytes > 0:
        total = 0
        for n, item in enumerate(items[:size]):
            total += weigh(item)
            if n and total > max_bytes:
                return items[:n], tokens.encode(query, {"after": cursor_of(items[n - 1])})
    if len(items) <= size:
        return items, ""
    return items[:size], tokens.encode(query, {"after": cursor_of(items[size - 1])})


def _digest(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()[:16]

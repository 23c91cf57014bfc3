"""Small facts about service addresses (``host:port``) that clients and tools share."""

from __future__ import annotations

import socket


def listening(address: str) -> bool:
    """Whether something accepts TCP connections at ``host:port`` (any of its addresses)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1):
            return True
    except (OSError, ValueError):
        return False

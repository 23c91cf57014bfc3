"""Seals: the ledger's Ed25519 signature over each stored event's hash.

Why: an event's hash and its incident's chain show that history was not changed
*below* the newest event of an incident, and a signed checkpoint covers the log up
to its position; but whoever can write to the database could rewrite an incident's
newest event (or any event after the last checkpoint, recomputing the hashes above
it) and every hash would still agree. A seal cannot be recomputed without the
ledger's signing key, which never enters the database: so each incident's newest
seal vouches for the whole incident chain below it, and every change to a stored
event is found (by loading the incident, by verification, before a checkpoint).

A seal is the text ``<key id>:<base64 signature>``; the signed bytes are
``incidentledger.seal.v1:`` followed by the event's hash (64 lowercase hex digits).
Signing costs about 25-45 us per event on these machines, verifying about 80-170 us,
so verification checks one seal per incident (its newest event after the last
checkpoint), never one per event.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

SEAL_FORMAT = "incidentledger.seal.v1"
#: What a snapshot's seal signs before its digest (services/ledger/snapshots.py): another
#: text than an event's, so that neither seal can pass for the other.
SNAPSHOT_SEAL_FORMAT = "incidentledger.snapshot-seal.v1"


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32-byte public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: bytes) -> str:
    """A short name of a public key: the first 16 hex digits of SHA-256 of its raw bytes."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def sealed_bytes(event_hash: str, seal_format: str = SEAL_FORMAT) -> bytes:
    """What a seal signs."""
    return f"{seal_format}:{event_hash}".encode("ascii")


class Sealer:
    """Seals event hashes with the ledger's signing key."""

    def __init__(self, signing_key: Ed25519PrivateKey) -> None:
        self._key = signing_key
        self.public_key = public_key_bytes(signing_key)
        self.key_id = key_id(self.public_key)
        self.checker = SealChecker(self.public_key)

    def seal(self, event_hash: str, seal_format: str = SEAL_FORMAT) -> str:
        signature = self._key.sign(sealed_bytes(event_hash, seal_format))
        return f"{self.key_id}:{base64.b64encode(signature).decode('ascii')}"


@dataclass(frozen=True)
class SealChecker:
    """Checks seals against one public key (raw 32 bytes)."""

    public_key: bytes

    def problem(
        self, event_hash: str, seal: str | None, seal_format: str = SEAL_FORMAT
    ) -> str | None:
        """Why ``seal`` does not vouch for ``event_hash``; None when it does."""
        if not seal:
            return "it carries no seal"
        kid, _, text = seal.partition(":")
        try:
            signature = base64.b64decode(text, validate=True)
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(
                signature, sealed_bytes(event_hash, seal_format)
            )
        except (InvalidSignature, ValueError, binascii.Error):
            if kid != key_id(self.public_key):
                return f"its seal was made with key {kid[:32]!r}, not the given key"
            return "its content no longer matches its seal"
        return None

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

Key rotation (docs/operations.md): the ledger seals with one key, its current one, and
still accepts seals made with the keys it retired (``LEDGER_RETIRED_SIGNING_KEYS_FILE``),
so that the incidents last changed before the rotation still load; what keeps a retired
key from vouching for anything new is the checkpoint side (services/ledger/audit/
checkpoints.py): a checkpoint is signed only over seals of the current key, and the
audit refuses a seal or checkpoint made with a key after a checkpoint of its successor.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
    """Seals event hashes with the ledger's signing key; its checker also accepts the seals
    of the ``retired`` public keys (raw 32 bytes each)."""

    def __init__(self, signing_key: Ed25519PrivateKey, retired: Sequence[bytes] = ()) -> None:
        self._key = signing_key
        self.public_key = public_key_bytes(signing_key)
        self.key_id = key_id(self.public_key)
        self.checker = SealChecker(
            self.public_key, tuple(k for k in retired if k != self.public_key)
        )

    def seal(self, event_hash: str, seal_format: str = SEAL_FORMAT) -> str:
        signature = self._key.sign(sealed_bytes(event_hash, seal_format))
        return f"{self.key_id}:{base64.b64encode(signature).decode('ascii')}"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled for the ledger's own intake process (services/ledger/intake.py), through
        # the pipe to the child it starts, which seals as the ledger does.
        return (_sealer_of, (self._key.private_bytes_raw(), self.checker.retired))


def _sealer_of(private_key: bytes, retired: tuple[bytes, ...]) -> Sealer:
    return Sealer(Ed25519PrivateKey.from_private_bytes(private_key), retired)


@dataclass(frozen=True)
class SealChecker:
    """Checks seals against a public key (raw 32 bytes) and the ``retired`` ones."""

    public_key: bytes
    retired: tuple[bytes, ...] = ()

    @property
    def keys(self) -> tuple[bytes, ...]:
        return (self.public_key, *self.retired)

    def signer(
        self, event_hash: str, seal: str | None, seal_format: str = SEAL_FORMAT
    ) -> str | None:
        """The id of the key whose signature ``seal`` is over ``event_hash``; None when
        none of the keys made it. The key the seal names is tried first (one verification
        in the ordinary case); the name proves nothing, so the others are tried after it."""
        if not seal:
            return None
        kid, _, text = seal.partition(":")
        try:
            signature = base64.b64decode(text, validate=True)
        except (ValueError, binascii.Error):
            return None
        signed = sealed_bytes(event_hash, seal_format)
        for public in sorted(self.keys, key=lambda k: key_id(k) != kid):
            try:
                Ed25519PublicKey.from_public_bytes(public).verify(signature, signed)
            except (InvalidSignature, ValueError):
                continue
            return key_id(public)
        return None

    def problem(
        self, event_hash: str, seal: str | None, seal_format: str = SEAL_FORMAT
    ) -> str | None:
        """Why ``seal`` does not vouch for ``event_hash``; None when it does."""
        if not seal:
            return "it carries no seal"
        if self.signer(event_hash, seal, seal_format) is not None:
            return None
        kid = seal.partition(":")[0]
        if kid not in {key_id(k) for k in self.keys}:
            given = "the given key" if not self.retired else "any of the given keys"
            return f"its seal was made with key {kid[:32]!r}, not {given}"
        return "its content no longer matches its seal"

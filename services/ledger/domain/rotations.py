"""The record of a signing-key rotation that had nothing new to sign (docs/hash-chain.md,
section 6).

A rotation signs a checkpoint over the whole log with the new key; when no incident event
was recorded since the old key's last checkpoint, that checkpoint's position is taken (one
checkpoint a position). The rotation then records one :class:`KeyRotation` in the log, a
record outside the chains as a request's record is, and the new key signs its first
checkpoint at that record's position: the new key's run of checkpoints starts there, and a
verifier that has only an export refuses whatever the old key signs or seals after it.
"""

from __future__ import annotations

from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

_NAMESPACE = uuid5(NAMESPACE_URL, "urn:incidentledger:key-rotation")


def rotation_key(retired_key: str) -> UUID:
    """The id of the record of the rotation that retired key ``retired_key`` (a key is
    retired once: replicas rotating at once record the same aggregate, and one wins)."""
    return uuid5(_NAMESPACE, retired_key)


class KeyRotation(Aggregate):
    """Key ``retired_key`` retired for ``successor`` at ``position`` (the last position it
    vouches for). Nothing reads it back: it gives the new key's first checkpoint a position
    of its own, and says why that position holds no incident event."""

    class Recorded(Aggregate.Created):
        retired_key: str
        successor: str
        position: int

    @classmethod
    def record(cls, retired_key: str, successor: str, position: int) -> KeyRotation:
        return cls._create(
            cls.Recorded,
            id=rotation_key(retired_key),
            retired_key=retired_key,
            successor=successor,
            position=position,
        )

    def __init__(self, retired_key: str, successor: str, position: int) -> None:
        self.retired_key = retired_key
        self.successor = successor
        self.position = position

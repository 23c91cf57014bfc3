"""Idempotency records (AIP-155): one aggregate per (agency, request_id).

A record is saved atomically with the events of the command it belongs to, so a
command and the memory of having done it are never separated.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import fields
from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from services.ledger.domain.commands import Command, command_name
from services.ledger.domain.created import created_event
from services.ledger.domain.incident import canonical_json
from services.ledger.domain.personal import PersonalData

_NAMESPACE = uuid5(NAMESPACE_URL, "urn:incidentledger:request")
#: Keys of a fingerprint's document that no command field may take.
RESERVED = frozenset({"command", "occurred_at"})


def request_key(agency: str, request_id: str) -> UUID:
    """The id of the record of an agency's request."""
    return uuid5(_NAMESPACE, f"{agency}\n{request_id}")


def request_fingerprint(command: Command, occurred_at: datetime | None) -> str:
    """What a retry of a request must repeat to be answered as the original was.

    The SHA-256 (hex) of the canonical JSON (:func:`canonical_json`) of an object holding
    every field of the command by name (but those it declares ``UNFINGERPRINTED``), the
    command's name as ``command`` and the time the caller says it happened as
    ``occurred_at``. UUIDs are written as strings, times in UTC to the microsecond,
    enumerations as their values, tuples as arrays; ``None`` is ``null`` (but a field
    the command declares ``OMITTED_WHEN_NONE`` is then left out); personal data is its
    keyed digest. These bytes
    are stored in every :class:`RequestRecord`: they never change.
    """
    document: dict[str, Any] = {"command": command_name(command), "occurred_at": occurred_at}
    for spec in fields(command):
        if spec.name in RESERVED:
            raise TypeError(f"{command_name(command)}.{spec.name} is a reserved name")
        if spec.name in command.UNFINGERPRINTED:
            continue
        value = getattr(command, spec.name)
        if value is None and spec.name in command.OMITTED_WHEN_NONE:
            continue
        document[spec.name] = _plain(value)
    return hashlib.sha256(canonical_json(document)).hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, PersonalData):
        # Its keyed digest: a plain hash of a NIK or phone could be reversed.
        return value.fingerprint_value()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


class RequestRecord(Aggregate):
    """The outcome of one command; its id is :func:`request_key` of agency and request id.

    The record is small on purpose: the incident's event at ``incident``
    ("{id}@{version}") carries the rest of the original outcome.
    """

    class Recorded(Aggregate.Created):
        command: str
        fingerprint: str
        incident: str

    @classmethod
    def record(cls, key: UUID, command: str, fingerprint: str, incident: str) -> RequestRecord:
        return cls._create(
            cls.Recorded, id=key, command=command, fingerprint=fingerprint, incident=incident
        )

    @classmethod
    def recorded(cls, key: UUID, command: str, fingerprint: str, incident: str) -> Recorded:
        """The event :meth:`record` records, made without the record (a field device's
        batch stores it and never reads the record back)."""
        return created_event(
            cls, cls.Recorded, key, command=command, fingerprint=fingerprint, incident=incident
        )

    def __init__(self, command: str, fingerprint: str, incident: str) -> None:
        self.command = command
        self.fingerprint = fingerprint
        incident_id, _, version = incident.partition("@")
        self.incident_id = UUID(incident_id)
        self.incident_version = int(version)

"""Idempotency records (AIP-155): one aggregate per (agency, request_id).

A record is saved atomically with the events of the command it belongs to, so a
command and the memory of having done it are never separated.
"""

from __future__ import annotations

from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

_NAMESPACE = uuid5(NAMESPACE_URL, "urn:incidentledger:request")


def request_key(agency: str, request_id: str) -> UUID:
    """The id of the record of an agency's request."""
    return uuid5(_NAMESPACE, f"{agency}\n{request_id}")


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

    def __init__(self, command: str, fingerprint: str, incident: str) -> None:
        self.command = command
        self.fingerprint = fingerprint
        incident_id, _, version = incident.partition("@")
        self.incident_id = UUID(incident_id)
        self.incident_version = int(version)

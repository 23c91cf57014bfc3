"""Idempotency records (AIP-155): one aggregate per (agency, request_id).

A record is saved atomically with the events of the command it belongs to, so a
command and the memory of having done it are never separated.
"""

from __future__ import annotations

from datetime import datetime
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

_NAMESPACE = uuid5(NAMESPACE_URL, "urn:incidentledger:request")


class RequestRecord(Aggregate):
    """The outcome of one command, keyed by the caller's agency and request id."""

    @staticmethod
    def create_id(agency: str, request_id: str) -> UUID:
        return uuid5(_NAMESPACE, f"{agency}\n{request_id}")

    @event("Recorded")
    def __init__(
        self,
        agency: str,
        request_id: str,
        command: str,
        fingerprint: str,
        incident_id: UUID,
        version: int,
        event_id: UUID,
        recorded_at: datetime,
    ) -> None:
        self.agency = agency
        self.request_id = request_id
        self.command = command
        self.fingerprint = fingerprint
        self.incident_id = incident_id
        self.incident_version = version
        self.event_id = event_id
        self.recorded_at = recorded_at

"""The event vocabulary the ledger and the notifier share, and the statuses of an incident.

The type names of the incident events, as ``IncidentEvent.type`` carries them on the wire
and as subscribers name them in ``EventFilter.event_types``. The ledger's aggregate
(:mod:`services.ledger.domain.incident`) defines one event class per name; the notifier,
which must not import the ledger (see ``.importlinter``), checks filters against this set.
A unit test (tests/unit/test_import_layers.py) holds the two equal: a new event type is
added here as well. :data:`STATUSES` are the codes of the aggregate's ``Status``, which the
reference data (:mod:`services.common.reference`) may name in other languages; the same test
holds them equal.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Every incident event type, in the order of an incident's life.
EVENT_TYPES: tuple[str, ...] = (
    "Reported",
    "Verified",
    "Rejected",
    "Merged",
    "DuplicateMerged",
    "SeverityAssessed",
    "LeadAssigned",
    "SupportingAgencyAdded",
    "HandoverProposed",
    "HandoverAccepted",
    "DecisionRecorded",
    "ActionLogged",
    "Escalated",
    "Resolved",
    "ClosureRequested",
    "ClosureApproved",
    "Reopened",
    "EvidenceAttached",
    "Corrected",
    "PersonalDataAccessed",
    "PersonalDataErased",
    "LegalHoldPlaced",
    "LegalHoldLifted",
)

#: Every status of an incident, as ``Incident.status`` carries it, in the order of its life.
STATUSES: tuple[str, ...] = (
    "REPORTED",
    "VERIFIED",
    "ASSIGNED",
    "RESPONDING",
    "RESOLVED",
    "CLOSED",
    "REJECTED",
    "MERGED",
    "REOPENED",
)


def involved_agencies(
    lead: str, reporter: str, supporting: Iterable[str], handover_to: str
) -> set[str]:
    """The agencies an incident involves for a subscriber's filter (``involving_my_agency``,
    ``agencies``): its lead, its reporter, its supporting agencies and the agency asked to
    take over in a pending handover. One rule for the notifier, which reads it off the
    incident after an event, and the relay, which writes it for the incident before one."""
    agencies = {lead, reporter, handover_to, *supporting}
    agencies.discard("")
    return agencies

"""The event vocabulary the ledger and the notifier share.

The type names of the incident events, as ``IncidentEvent.type`` carries them on the wire
and as subscribers name them in ``EventFilter.event_types``. The ledger's aggregate
(:mod:`services.ledger.domain.incident`) defines one event class per name; the notifier,
which must not import the ledger (see ``.importlinter``), checks filters against this set.
A unit test (tests/unit/test_import_layers.py) holds the two equal: a new event type is
added here as well.
"""

from __future__ import annotations

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

"""The codes of the API as people read them: statuses, severities, vulnerability bands,
rejection reasons and event types, in the current language (``docs/glossary-id.md``).

English shows the codes as they are (``REPORTED``, ``high``), as ledgerctl always has; a
code without a label (a newer server's) is shown as it is. ``--json`` never goes through here.
A page read by people rather than scripts (the situation room) asks for ``worded`` labels:
its English shows statuses and rejection reasons in words (``Reported``, ``Out of scope``).

Statuses and roles may also be worded by the regency's reference data (``names`` of
``GetReferenceData``'s statuses and roles): given, its name in the current language wins
over the catalog's, for ledgerctl and the situation room alike.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from incidentledger_client.i18n import current, pgettext

#: Statuses and rejection reasons in English words, for ``worded`` labels (where the catalog's
#: English is the code itself).
WORDS = {
    "REPORTED": "Reported",
    "VERIFIED": "Verified",
    "ASSIGNED": "Assigned",
    "RESPONDING": "Responding",
    "RESOLVED": "Resolved",
    "CLOSED": "Closed",
    "REJECTED": "Rejected",
    "MERGED": "Merged",
    "REOPENED": "Reopened",
    "INVALID": "Invalid",
    "HOAX": "Hoax",
    "OUT_OF_SCOPE": "Out of scope",
}


#: The IKP bands in English words, for ``worded`` labels (the catalog's English is the code,
#: which a page would show as "high" beside a severity's "High").
BAND_WORDS = {
    "low": "Low vulnerability",
    "medium": "Medium vulnerability",
    "high": "High vulnerability",
}


def _worded(code: str, label: str, worded: bool) -> str:
    """The catalog's ``label``, or for ``worded`` its English words where it is the code."""
    return WORDS.get(code, label) if worded and label == code else label


def _named(names: Mapping[str, str] | None) -> str:
    """The reference data's name in the current language ("" when it gives none)."""
    return (names or {}).get(current(), "")


def status(code: str, names: Mapping[str, str] | None = None, *, worded: bool = False) -> str:
    """A status; ``names``: the reference data's names of this status, by language;
    ``worded``: in words in English too (``Reported``, not ``REPORTED``)."""
    labels = {
        "REPORTED": pgettext("status", "REPORTED"),
        "VERIFIED": pgettext("status", "VERIFIED"),
        "ASSIGNED": pgettext("status", "ASSIGNED"),
        "RESPONDING": pgettext("status", "RESPONDING"),
        "RESOLVED": pgettext("status", "RESOLVED"),
        "CLOSED": pgettext("status", "CLOSED"),
        "REJECTED": pgettext("status", "REJECTED"),
        "MERGED": pgettext("status", "MERGED"),
        "REOPENED": pgettext("status", "REOPENED"),
    }
    return _named(names) or _worded(code, labels.get(code, code), worded)


def severity(code: str) -> str:
    labels = {
        "low": pgettext("severity", "low"),
        "medium": pgettext("severity", "medium"),
        "high": pgettext("severity", "high"),
        "critical": pgettext("severity", "critical"),
    }
    return labels.get(code, code)


def category(code: str, name: str = "", names: Mapping[str, str] | None = None) -> str:
    """A category as the reference data names it: in the current language where it gives
    one (``names``), else its main ``name``, else the code."""
    return _named(names) or name or code


def band(code: str, *, worded: bool = False) -> str:
    """An IKP vulnerability band (Rawan Rendah, Rawan Sedang, Rawan Tinggi); ``worded``: in
    words in English too (``High vulnerability``, not ``high``)."""
    labels = {
        "low": pgettext("band", "low"),
        "medium": pgettext("band", "medium"),
        "high": pgettext("band", "high"),
    }
    label = labels.get(code, code)
    return BAND_WORDS.get(code, label) if worded and label == code else label


def delivery(code: str) -> str:
    """The outcome of a delivery to a webhook or a subscriber (the notifier's log)."""
    labels = {
        "delivered": pgettext("delivery", "delivered"),
        "failed": pgettext("delivery", "failed"),
        "dead_letter": pgettext("delivery", "dead_letter"),
    }
    return labels.get(code, code)


def boolean(value: bool) -> str:
    """A yes or no of an event's payload (``starts_response``): English keeps Python's
    ``True``/``False`` as ledgerctl always showed them; Indonesian says ``ya``/``tidak``."""
    return pgettext("boolean", "True") if value else pgettext("boolean", "False")


def role(code: str, names: Mapping[str, str] | None = None) -> str:
    """An agency's role; ``names``: the reference data's names of this role, by language."""
    labels = {
        "coordinator": pgettext("role", "coordinator"),
        "responder": pgettext("role", "responder"),
        "auditor": pgettext("role", "auditor"),
    }
    return _named(names) or labels.get(code, code)


def rejection(code: str, *, worded: bool = False) -> str:
    """A rejection reason; ``worded``: in words in English too (``Hoax``, not ``HOAX``)."""
    labels = {
        "INVALID": pgettext("rejection", "INVALID"),
        "HOAX": pgettext("rejection", "HOAX"),
        "OUT_OF_SCOPE": pgettext("rejection", "OUT_OF_SCOPE"),
    }
    return _worded(code, labels.get(code, code), worded)


def event_type(code: str, *, worded: bool = False) -> str:
    """An event's type; ``worded``: in words in English too (``Decision recorded``, not
    ``DecisionRecorded``, which ledgerctl shows, as it shows statuses by their codes)."""
    labels = {
        "Reported": pgettext("event", "Reported"),
        "Verified": pgettext("event", "Verified"),
        "Rejected": pgettext("event", "Rejected"),
        "Merged": pgettext("event", "Merged"),
        "DuplicateMerged": pgettext("event", "DuplicateMerged"),
        "SeverityAssessed": pgettext("event", "SeverityAssessed"),
        "LeadAssigned": pgettext("event", "LeadAssigned"),
        "SupportingAgencyAdded": pgettext("event", "SupportingAgencyAdded"),
        "HandoverProposed": pgettext("event", "HandoverProposed"),
        "HandoverAccepted": pgettext("event", "HandoverAccepted"),
        "DecisionRecorded": pgettext("event", "DecisionRecorded"),
        "ActionLogged": pgettext("event", "ActionLogged"),
        "Escalated": pgettext("event", "Escalated"),
        "Resolved": pgettext("event", "Resolved"),
        "ClosureRequested": pgettext("event", "ClosureRequested"),
        "ClosureApproved": pgettext("event", "ClosureApproved"),
        "Reopened": pgettext("event", "Reopened"),
        "EvidenceAttached": pgettext("event", "EvidenceAttached"),
        "Corrected": pgettext("event", "Corrected"),
        "PersonalDataAccessed": pgettext("event", "PersonalDataAccessed"),
        "PersonalDataErased": pgettext("event", "PersonalDataErased"),
        "LegalHoldPlaced": pgettext("event", "LegalHoldPlaced"),
        "LegalHoldLifted": pgettext("event", "LegalHoldLifted"),
    }
    label = labels.get(code, code)
    if worded and label == code:
        first, *rest = _CAMEL_WORDS.findall(code) or [code]
        return " ".join([first, *(word.lower() for word in rest)])
    return label


#: The words of an event type's code (``PersonalDataAccessed``: Personal, Data, Accessed).
_CAMEL_WORDS = re.compile(r"[A-Z][a-z]*")


def field(name: str) -> str:
    """A field of an event's payload, as the timeline names it (``severity=high``)."""
    labels = {
        "action": pgettext("field", "action"),
        "agency": pgettext("field", "agency"),
        "category": pgettext("field", "category"),
        "corrected_event_id": pgettext("field", "corrected_event_id"),
        "deciding_agencies": pgettext("field", "deciding_agencies"),
        "description": pgettext("field", "description"),
        "device_clock_skew_ms": pgettext("field", "device_clock_skew_ms"),
        "device_id": pgettext("field", "device_id"),
        "device_record_time": pgettext("field", "device_record_time"),
        "device_report_id": pgettext("field", "device_report_id"),
        "duplicate_id": pgettext("field", "duplicate_id"),
        "duplicate_reference": pgettext("field", "duplicate_reference"),
        "field": pgettext("field", "field"),
        "file_name": pgettext("field", "file_name"),
        "forum": pgettext("field", "forum"),
        "from_agency": pgettext("field", "from_agency"),
        "level": pgettext("field", "level"),
        "media_type": pgettext("field", "media_type"),
        "new_value": pgettext("field", "new_value"),
        "old_value": pgettext("field", "old_value"),
        "personal_data": pgettext("field", "personal_data"),
        "rationale": pgettext("field", "rationale"),
        "reason": pgettext("field", "reason"),
        "reference": pgettext("field", "reference"),
        "rejection_reason": pgettext("field", "rejection_reason"),
        "resolution": pgettext("field", "resolution"),
        "severity": pgettext("field", "severity"),
        "size_bytes": pgettext("field", "size_bytes"),
        "starts_response": pgettext("field", "starts_response"),
        "subjects": pgettext("field", "subjects"),
        "summary": pgettext("field", "summary"),
        "target_id": pgettext("field", "target_id"),
        "target_reference": pgettext("field", "target_reference"),
        "title": pgettext("field", "title"),
        "to_agency": pgettext("field", "to_agency"),
        "valid_from": pgettext("field", "valid_from"),
        "valid_until": pgettext("field", "valid_until"),
    }
    return labels.get(name, name)

"""The errors' messages for people in the caller's language (AIP-193 ``LocalizedMessage``).

A refusal keeps its English ``message`` and its ``ErrorInfo``; when the call carries an
``accept-language`` header, :mod:`services.common.grpc_errors` adds a
``google.rpc.LocalizedMessage`` in the best language the services speak (English, Bahasa
Indonesia), written from the error's ``reason`` and its ``metadata`` with the templates below.
Their translations are the gettext domain ``ledger-errors`` in ``services/common/locale``
(checked by ``make lint`` with the client's catalogs: ``incidentledger_client.i18n.catalogs``;
the words follow ``docs/glossary-id.md``).
"""

from __future__ import annotations

import gettext
import string
from collections.abc import Mapping
from functools import cache
from pathlib import Path

DOMAIN = "ledger-errors"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
#: The languages of the messages, the source language first (BCP 47 tags, as sent back).
LANGUAGES = ("en", "id")


def N_(message: str) -> str:  # noqa: N802 - the gettext convention, which extraction knows
    return message


#: A message per reason, with the error's metadata as placeholders ({command}, {status}, ...).
TEMPLATES: Mapping[str, str] = {
    "INVALID_FIELD": N_("The value of {field} is not acceptable."),
    "FIELD_IMMUTABLE": N_("The field {field} cannot be changed."),
    "FIELD_TOO_LONG": N_("The text of {field} is too long."),
    "REFERENCE_MISTYPED": N_(
        "The reference code in {field} is mistyped: a character is wrong or two are swapped."
    ),
    "MALFORMED_REQUEST": N_("The request cannot be read."),
    "INCIDENT_NOT_FOUND": N_("No incident is named {incident}."),
    "WEBHOOK_NOT_FOUND": N_("No such webhook."),
    "DEAD_LETTER_NOT_FOUND": N_("No such dead letter, or its webhook was deleted."),
    "REQUEST_ID_REUSED": N_("This request id was already used for another request."),
    "ILLEGAL_TRANSITION": N_(
        "This step ({command}) is not allowed while the incident is {status}."
    ),
    "HANDOVER_PENDING": N_("A handover to {to_agency} is already proposed."),
    "NO_HANDOVER_PENDING": N_("No handover is proposed."),
    "CLOSURE_NOT_REQUESTED": N_("The lead agency has not asked for closure."),
    "CLOSURE_ALREADY_REQUESTED": N_("Closure has already been requested."),
    "ALREADY_INVOLVED": N_("{agency} already leads or supports this incident."),
    "TOO_MANY_DECISIONS": N_("The incident already records {limit} decisions, the most it may."),
    "OLD_VALUE_MISMATCH": N_("The recorded value of {field} is {recorded_value}."),
    "NO_CHANGE": N_("The incident's severity is already {severity}."),
    "MERGE_TARGET_NOT_LIVE": N_("The incident to merge into is {target_status}."),
    "POSITION_NOT_RECORDED": N_("Position {position} is not recorded yet."),
    "CURSOR_EXPIRED": N_("The stream no longer keeps the events after this cursor."),
    "VERSION_CONFLICT": N_(
        "The incident changed: version {current_version}, not {expected_version}. Read it again."
    ),
    "TOO_MUCH_CONTENTION": N_("The incident is changing too often: try again."),
    "COORDINATOR_ONLY": N_("Only the coordinator may do this ({command})."),
    "LEAD_AGENCY_ONLY": N_("Only the lead agency may do this ({command})."),
    "LEAD_OR_COORDINATOR_ONLY": N_(
        "Only the lead agency or the coordinator may do this ({command})."
    ),
    "NOT_INVOLVED": N_("{caller_agency} is not involved in this incident."),
    "NOT_HANDOVER_RECIPIENT": N_("Only {to_agency} may accept this handover."),
    "NOT_A_DECIDING_AGENCY": N_("{caller_agency} is not one of the deciding agencies."),
    "NOT_EVENT_AUTHOR": N_("Only {event_agency} or the coordinator may correct this event."),
    "READ_ONLY_ROLE": N_("Auditors read and do not write ({command})."),
    "ROLE_REQUIRED": N_("{caller_agency} does not have the role this needs ({action})."),
    "NOT_OWNER": N_("This belongs to another agency."),
    "CREDENTIALS_MISSING": N_("No credentials were sent."),
    "CREDENTIALS_MALFORMED": N_("The credentials are malformed."),
    "CREDENTIALS_INVALID": N_("The token is not valid."),
    "CREDENTIALS_MISMATCH": N_("The token and the certificate name different agencies."),
    "CERTIFICATE_AGENCY_UNKNOWN": N_("The certificate names an unknown agency."),
    "CERTIFICATE_INVALID": N_("The client certificate is not valid."),
    "RATE_LIMITED": N_("{agency} is sending too many requests: wait and retry."),
    "TOO_MANY_STREAMS": N_("{agency} has too many open streams ({limit})."),
    "TOO_MANY_WEBHOOKS": N_("{agency} already has {limit} webhooks, the most it may."),
    "WEBHOOK_EXISTS": N_(
        "{agency} already has {webhook} for this address and filter: change it, or delete it first."
    ),
    "INGEST_TOO_LARGE": N_("The batch is too large ({limit} bytes at most): send smaller parts."),
    "AUTH_THROTTLED": N_("Too many failed sign-ins: wait and retry."),
    "STORE_UNAVAILABLE": N_("The database cannot be reached: retry."),
    "STORE_FULL": N_("The database has no space left: retry once it is freed."),
    "PROJECTION_LAGGING": N_("The views are behind the ledger: retry."),
    "SIGNING_KEY_RETIRED": N_(
        "This ledger replica's signing key was retired: it records nothing more. Retry; "
        "another replica takes the request."
    ),
    "STREAM_UNAVAILABLE": N_("The event stream cannot be reached: resume from the last cursor."),
    "INTAKE_RESTARTED": N_(
        "The ledger restarted its preparation of field batches: nothing of this batch was "
        "recorded. Send it again."
    ),
    "SHUTTING_DOWN": N_(
        "The service is stopping: send it again, to another replica or once it is back (a "
        "stream: from the last cursor)."
    ),
    "HASH_CHAIN_BROKEN": N_("The stored history of {incident} fails its hash chain."),
    "CHECKPOINT_REFUSED": N_(
        "No checkpoint was signed: the stored history fails its checks, or this replica "
        "may no longer sign. Run verify."
    ),
    "STORED_RECORD_CHANGED": N_(
        "A stored record naming {incident} does not match its history: it was changed."
    ),
    # Personal data of reporters and witnesses (docs/personal-data.md).
    "NO_PERSONAL_DATA": N_("There is no personal data here that you may read or erase."),
    "LEGAL_HOLD": N_("A legal hold blocks erasure until it is lifted."),
    "LEGAL_HOLD_ALREADY_PLACED": N_("Your agency already holds this incident."),
    "LEGAL_HOLD_NOT_PLACED": N_("Your agency holds no legal hold on this incident."),
    "PERSONAL_DATA_UNAVAILABLE": N_("This ledger does not keep personal data."),
    "PERSONAL_DATA_NOT_PERMITTED": N_("{caller_agency} may not see this personal data."),
    "LEGAL_HOLD_NOT_PERMITTED": N_("{caller_agency} may not place or lift legal holds."),
    "PERSONAL_DATA_UNREADABLE": N_("Stored personal data no longer decrypts: it was changed."),
    "PERSONAL_DATA_IN_TEXT": N_(
        "The text of {field} names a person of the report (a name, phone or NIK): keep them "
        "in the personal data, which is sealed."
    ),
    # Evidence (EvidenceService).
    "MEDIA_TYPE_NOT_ALLOWED": N_("Files of type {media_type} are not accepted as evidence."),
    "MEDIA_TYPE_MISMATCH": N_("The file's content is not of the declared media type."),
    "EVIDENCE_EMPTY": N_("The file is empty: there is nothing to attach."),
    "EVIDENCE_NOT_FOUND": N_("No evidence is named {evidence}."),
    "AUDITOR_OR_COORDINATOR_ONLY": N_("Only auditors and the coordinator may do this ({command})."),
    "EVIDENCE_STORE_FULL": N_(
        "The evidence store is full: the file was not kept. Ask the operator to make room."
    ),
    "EVIDENCE_TOO_LARGE": N_("The file is larger than the {max_bytes} bytes accepted."),
    "EVIDENCE_STORE_UNAVAILABLE": N_("The evidence store cannot be reached: retry."),
    "EVIDENCE_SPOOL_UNAVAILABLE": N_("This ledger cannot write the download to its disk: retry."),
    "UPLOAD_CANCELLED": N_("The upload was cancelled before it was complete."),
    "EVIDENCE_MISSING": N_("The file of {evidence} is missing from the evidence store."),
    "EVIDENCE_CHANGED": N_("The stored file {object} is not the one recorded."),
}


#: A message for a refusal whose metadata names its ``check``, in place of its reason's
#: general one: the times a caller stated, in the zone the ledger stated them in (with the
#: offset), which the general "not acceptable" would leave out of the translation.
#: VERSION_CONFLICT where the version given is ahead of the incident's: nothing changed, the
#: version was mistyped (or taken from another incident), and "read it again" says otherwise.
VERSION_AHEAD = N_(
    "The incident is at version {current_version}; version {expected_version} does not exist "
    "yet. Check the version you gave."
)

#: INCIDENT_NOT_FOUND for a reference code no incident has: its metadata names the code
#: (``reference``), not an incident.
NOT_FOUND_BY_REFERENCE = N_("No incident has the reference code {reference}.")

CHECK_TEMPLATES: Mapping[tuple[str, str], str] = {
    # A read that found nobody to read, and an erasure that found nobody left: the
    # reason's sentence says both ("read or erase"), each of these only its own.
    ("NO_PERSONAL_DATA", "read"): N_("There is no personal data here that you may read."),
    ("NO_PERSONAL_DATA", "erase"): N_("There is no personal data left here to erase."),
    ("INVALID_FIELD", "window"): N_(
        "The decision would end ({valid_until}) before it starts ({valid_from}): its end must "
        "be after its start."
    ),
    ("INVALID_FIELD", "era"): N_("The time in {field}, {value}, is before {earliest}."),
    ("INVALID_FIELD", "ahead"): N_(
        "The time in {field}, {value}, is more than {days} days ahead: {latest} at the latest."
    ),
    ("INVALID_FIELD", "unknown"): N_(
        "{field}: '{value}' is not a {what} the reference data knows (GetReferenceData lists them)."
    ),
    ("INVALID_FIELD", "future"): N_(
        "The time in {field}, {value}, is in the future: the ledger's clock says {now}."
    ),
}


#: An incident's status as a message says it (``{status}``); the metadata keeps the code
#: for programs. The words of docs/glossary-id.md, in a sentence's lower case.
#: What a ROLE_REQUIRED refusal says was asked (its metadata ``action``, in English as the
#: services write it), in the caller's language.
ACTION_WORDS: Mapping[str, str] = {
    "verify the ledger": N_("verify the ledger"),
    "verify the evidence": N_("verify the evidence"),
    "create a checkpoint": N_("create a checkpoint"),
}
#: A command as a refusal says it (``{command}``, the metadata's ``command``, which keeps the
#: method's name for programs): an officer read "(VerifyIncident)", an API's word.
COMMAND_WORDS: Mapping[str, str] = {
    "AcceptHandover": N_("accepting the handover"),
    "AddSupportingAgency": N_("adding a supporting agency"),
    "ApproveClosure": N_("approving the closure"),
    "AssessSeverity": N_("assessing the severity"),
    "AssignLeadAgency": N_("assigning the lead agency"),
    "ErasePersonalData": N_("erasing personal data"),
    "EscalateIncident": N_("escalating the incident"),
    "LiftLegalHold": N_("lifting a legal hold"),
    "LogAction": N_("logging an action"),
    "MergeIncident": N_("merging it as a duplicate"),
    "PlaceLegalHold": N_("placing a legal hold"),
    "ProposeHandover": N_("proposing a handover"),
    "ReadPersonalData": N_("reading personal data"),
    "RecordCorrection": N_("recording a correction"),
    "RecordDecision": N_("recording a decision"),
    "RejectIncident": N_("rejecting the incident"),
    "ReopenIncident": N_("reopening the incident"),
    "ReportIncident": N_("reporting an incident"),
    "RequestClosure": N_("requesting closure"),
    "ResolveIncident": N_("resolving the incident"),
    "VerifyIncident": N_("verifying the incident"),
}
#: What an unknown code was meant to be (an INVALID_FIELD refusal's metadata ``what``).
WHAT_WORDS: Mapping[str, str] = {
    "agency": N_("agency"),
    "category": N_("category"),
    "severity": N_("severity"),
    "kecamatan": N_("kecamatan"),
    "desa": N_("desa"),
}
STATUS_WORDS: Mapping[str, str] = {
    "REPORTED": N_("reported"),
    "VERIFIED": N_("verified"),
    "ASSIGNED": N_("assigned"),
    "RESPONDING": N_("responding"),
    "RESOLVED": N_("resolved"),
    "CLOSED": N_("closed"),
    "REJECTED": N_("rejected"),
    "MERGED": N_("merged"),
    "REOPENED": N_("reopened"),
}


#: The placeholders whose codes are said in words, and the words of each code.
_WORDED: Mapping[str, Mapping[str, str]] = {
    "status": STATUS_WORDS,
    "action": ACTION_WORDS,
    "command": COMMAND_WORDS,
    "what": WHAT_WORDS,
}


class _Metadata(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "…"


def preferred(accept_language: str) -> str | None:
    """The language of ``LANGUAGES`` an ``accept-language`` value prefers (``id-ID,en;q=0.5``),
    English when it names none of them or refuses them (``id;q=0``); None for a header that
    names no language at all."""
    ranked: list[tuple[float, int, str]] = []
    named = False
    for index, item in enumerate(accept_language.split(",")):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        primary = tag.strip().replace("_", "-").split("-")[0].lower()
        if primary == "in":  # Indonesian's old ISO 639 code
            primary = "id"
        named = named or bool(primary)
        if primary and quality > 0:
            ranked.append((-quality, index, primary))
    if not ranked:
        return "en" if named else None
    for _quality, _index, language in sorted(ranked):
        if language in LANGUAGES:
            return language
    return "en"


@cache
def _translations(language: str) -> gettext.NullTranslations:
    if language == "en":
        return gettext.NullTranslations()
    return gettext.translation(DOMAIN, str(LOCALE_DIR), [language])


def localized(reason: str, metadata: Mapping[str, str], language: str) -> str | None:
    """The message of ``reason`` in ``language``, its placeholders filled from ``metadata``;
    None for a reason without a template."""
    template = CHECK_TEMPLATES.get((reason, metadata.get("check", ""))) or TEMPLATES.get(reason)
    if reason == "VERSION_CONFLICT" and _ahead(metadata):
        template = VERSION_AHEAD
    if reason == "INCIDENT_NOT_FOUND" and "incident" not in metadata and "reference" in metadata:
        template = NOT_FOUND_BY_REFERENCE
    if template is None:
        return None
    translations = _translations(language)
    values = _Metadata(metadata)
    # A code the metadata keeps for programs, said in words in the caller's language.
    for key, words in _WORDED.items():
        code = values.get(key, "")
        if code in words:
            values[key] = translations.gettext(words[code])
    return string.Formatter().vformat(translations.gettext(template), (), values)


def _ahead(metadata: Mapping[str, str]) -> bool:
    """Whether a conflict's version given is ahead of the incident's."""
    # get(), not []: a protobuf map (an ErrorInfo's) adds a key that is read with [].
    expected, current = metadata.get("expected_version"), metadata.get("current_version")
    try:
        return expected is not None and current is not None and int(expected) > int(current)
    except ValueError:
        return False

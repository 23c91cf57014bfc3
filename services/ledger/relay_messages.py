"""What the relay publishes: one message per incident event, its subject
(``<prefix>.<kecamatan>.<category>.<event_type>``), headers and protobuf payload (the event
and the incident's state after it); and how a message on the stream is told to be one the
relay published, or a foreign one (see :mod:`services.ledger.relay`)."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple
from uuid import UUID

import structlog
from eventsourcing.persistence import Notification
from google.protobuf.message import DecodeError

from incidentledger.v1 import incident_pb2 as pb
from services.common.errors import DataLoss
from services.common.vocabulary import involved_agencies
from services.ledger import wire
from services.ledger.application import (
    BROKEN_HISTORY,
    ForeignRecordError,
    Ledger,
    StoredIncidentEvent,
)
from services.ledger.domain.incident import Incident

POSITION_HEADER = "Ledger-Position"
#: Set on a message whose incident was trimmed to fit NATS's max payload: what was left out.
TRIMMED_HEADER = "Ledger-Incident-Trimmed"
#: More than the headers of any message weigh (a few hundred bytes): a payload this far
#: under the limit fits without counting them.
HEADERS_ALLOWANCE = 8192
CONTENT_TYPE = "application/x-protobuf; message=incidentledger.v1.EventNotification"

log = structlog.get_logger(__name__)

_SNAKE = re.compile(r"(?<!^)(?=[A-Z])")
_TOKEN = re.compile(r"[^a-z0-9_-]+")


def subject_token(value: str) -> str:
    """A lowercase NATS subject token (never empty, no dots or wildcards)."""
    return _TOKEN.sub("_", value.lower()).strip("_") or "none"


def event_type_token(type_name: str) -> str:
    """``LeadAssigned`` -> ``lead_assigned``."""
    return _SNAKE.sub("_", type_name).lower()


def event_subject(prefix: str, kecamatan: str, category: str, type_name: str) -> str:
    """``<prefix>.<kecamatan>.<category>.<event_type>``, broad to narrow."""
    return ".".join(
        (prefix, subject_token(kecamatan), subject_token(category), event_type_token(type_name))
    )


@dataclass(frozen=True)
class Outgoing:
    position: int
    subject: str
    headers: dict[str, str]
    payload: bytes


def message_size(message: Outgoing) -> int:
    """What NATS counts against its max payload: the payload and the headers as sent."""
    headers = sum(len(k.encode()) + len(v.encode()) + 4 for k, v in message.headers.items())
    return len(message.payload) + len(b"NATS/1.0\r\n\r\n") + headers


def fitted(message: Outgoing, limit: int) -> Outgoing:
    """``message``, or, when it is larger than NATS takes (``limit``: the server's max
    payload), the same without what grows with no bound in the incident's state: first
    its decisions' texts (``summary`` and ``rationale``, up to 4,000 characters each, in
    the incident as in each ``DecisionRecorded`` event), then, if still too large, its
    decisions; ``TRIMMED_HEADER`` names which. The event itself is never trimmed. A message
    that does not fit even so is returned as the smallest made (NATS refuses it, as it
    refused every message that size before). Before, a message too large failed the
    relay's session at each retry, and no later event of any incident was published."""
    if len(message.payload) + HEADERS_ALLOWANCE <= limit or message_size(message) <= limit:
        return message
    note = pb.EventNotification.FromString(message.payload)
    smaller = message
    for left_out in ("decision-texts", "decisions"):
        # Said in the message too, for the webhooks and live streams it reaches (they do
        # not see the NATS headers).
        if left_out == "decision-texts":
            for decision in note.incident.decisions:
                decision.summary = decision.rationale = ""
            note.incident_trimmed = pb.EventNotification.INCIDENT_TRIMMED_DECISION_TEXTS
        else:
            del note.incident.decisions[:]
            note.incident_trimmed = pb.EventNotification.INCIDENT_TRIMMED_DECISIONS
        smaller = Outgoing(
            message.position,
            message.subject,
            {**message.headers, TRIMMED_HEADER: left_out},
            note.SerializeToString(),
        )
        if message_size(smaller) <= limit:
            break
    return smaller


class Encoded(NamedTuple):
    """An event's message before its subject and headers are written out: what the
    relay's encoder process sends (a tuple pickles at half a dataclass's cost), the
    headers then written in the relay's process, which has time to spare
    (:class:`MessageWriter`)."""

    position: int
    payload: bytes
    event_id: str
    event_type: str
    incident: str  # its resource name
    kecamatan: str
    category: str
    severity: str


class MessageWriter:
    """Writes an encoded event's subject and headers."""

    #: Subjects kept: kecamatan, categories and event types are a few hundred pairings.
    SUBJECTS = 4096

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._subjects: dict[tuple[str, str, str], str] = {}

    def outgoing(self, encoded: Encoded) -> Outgoing:
        key = (encoded.kecamatan, encoded.category, encoded.event_type)
        subject = self._subjects.get(key)
        if subject is None:
            if len(self._subjects) >= self.SUBJECTS:
                self._subjects.clear()
            subject = self._subjects[key] = event_subject(self._prefix, *key)
        position = str(encoded.position)
        return Outgoing(
            position=encoded.position,
            subject=subject,
            headers={
                "Nats-Msg-Id": position,
                POSITION_HEADER: position,
                "Ledger-Incident": encoded.incident,
                "Ledger-Event-Id": encoded.event_id,
                "Ledger-Event-Type": encoded.event_type,
                "Ledger-Kecamatan": encoded.kecamatan,
                "Ledger-Category": encoded.category,
                "Ledger-Severity": encoded.severity,
                "Content-Type": CONTENT_TYPE,
            },
            payload=encoded.payload,
        )


class EventEncoder:
    """Turns notifications into messages: the event plus the incident's state after it.

    The state is folded with the domain's own rules, from a bounded cache of
    incidents; a miss loads the incident at that version from the store.
    """

    def __init__(self, ledger: Ledger, prefix: str, cache_size: int = 2000) -> None:
        self._ledger = ledger
        self._writer = MessageWriter(prefix)
        self._cache: OrderedDict[UUID, Incident] = OrderedDict()
        self._cache_size = cache_size

    def encode(self, notification: Notification) -> Outgoing:
        return self._writer.outgoing(self.encode_event(notification))

    def encode_all(self, notifications: Sequence[Notification]) -> list[Outgoing]:
        """:meth:`encode_batch` as messages."""
        return [self._writer.outgoing(e) for e in self.encode_batch(notifications)]

    def encode_batch(self, notifications: Sequence[Notification]) -> list[Encoded]:
        """The batch's events encoded, in order. An event that cannot be published because
        its stored history fails its checks (it no longer decodes, or its incident's chain
        breaks at or before it) is left out and logged ``relay.event_unpublishable``: the
        rest of the log is still published, where before every agency's fan-out stopped
        at it for good. Nothing of a changed record goes out; the incident's own reads
        refuse it (DATA_LOSS), and ``ledger-audit verify --store`` names the change."""
        encoded = []
        for notification in notifications:
            try:
                encoded.append(self.encode_event(notification))
            except (DataLoss, *BROKEN_HISTORY) as exc:
                # The next event of the incident loads it from the store (and fails too).
                self._forget(notification.originator_id)
                log.error(
                    "relay.event_unpublishable",
                    position=notification.id,
                    incident=f"incidents/{notification.originator_id}",
                    version=notification.originator_version,
                    error=f"{type(exc).__name__}: {exc}",
                )
        return encoded

    def encode_event(self, notification: Notification) -> Encoded:
        """The event's payload and what its subject and headers are written from."""
        event = self._ledger.mapper.to_domain_event(notification)
        if not isinstance(event, Incident.Event):
            raise ForeignRecordError(f"not an incident event: {notification.topic}")
        before, incident = self._states(event)
        message = pb.EventNotification(
            # The fold just hashed the event (the incident's head_hash); not hashed again.
            event=wire.event_to_proto(
                StoredIncidentEvent(event, notification.id), incident.head_hash
            ),
            incident=wire.incident_to_proto(incident),
            before=before,
        )
        return Encoded(
            position=notification.id,
            payload=message.SerializeToString(),
            event_id=str(event.event_id),
            event_type=type(event).__name__,
            incident=wire.incident_name(incident.id),
            kecamatan=str((event.location or incident.location).get("kecamatan", "")),
            category=incident.category,
            severity=incident.severity,
        )

    def _forget(self, originator_id: UUID | str) -> None:
        if isinstance(originator_id, str):
            try:
                originator_id = UUID(originator_id)
            except ValueError:  # an id changed in the store: never cached
                return
        self._cache.pop(originator_id, None)

    def _states(self, event: Incident.Event) -> tuple[pb.IncidentFacets | None, Incident]:
        """What a filter reads of the incident before the event (None for its first), and
        the incident after it."""
        incident_id = event.originator_id
        cached = self._cache.pop(incident_id, None)
        before = None
        if event.originator_version == 1:
            incident = event.mutate(None)
        else:
            if cached is None or cached.version != event.originator_version - 1:
                cached = self._ledger.load_incident(incident_id, event.originator_version - 1)
            if not isinstance(cached, Incident):
                raise ForeignRecordError(f"not an incident: {incident_id}")
            before = incident_facets(cached)  # the fold below changes the cached state itself
            incident = event.mutate(cached)
        if not isinstance(incident, Incident):
            raise ForeignRecordError(f"not an incident: {incident_id}")
        self._cache[incident_id] = incident
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return before, incident


def incident_facets(incident: Incident) -> pb.IncidentFacets:
    """The fields of ``incident`` that a subscriber's filter reads: its kecamatan, category,
    severity and the agencies it involves (:func:`involved_agencies`)."""
    handover = incident.pending_handover
    agencies = involved_agencies(
        incident.lead_agency,
        incident.reporter_agency,
        incident.supporting_agencies,
        handover[1] if handover is not None else "",
    )
    return pb.IncidentFacets(
        kecamatan=str(incident.location.get("kecamatan", "")),
        category=incident.category,
        severity=incident.severity,
        agencies=sorted(agencies),
    )


#: How :func:`foreign_reason` starts for a message at a position the store has not reached.
BEYOND_THE_STORE = "beyond the store's last position"


def foreign_reason(
    ledger: Ledger, topics: Sequence[str], headers: Mapping[str, str], data: bytes
) -> str | None:
    """Why a message on the stream is not one the relay published (None: the store
    vouches for it). Only what identifies the event is compared, not the whole
    message: messages published by an older relay, without a field added since,
    stay the ledger's own."""
    header = headers.get(POSITION_HEADER)
    if header is None:
        return f"no {POSITION_HEADER} header"
    try:
        position = int(header)
    except ValueError:
        return f"{POSITION_HEADER} is not a position"
    rows = ledger.recorder.select_notifications(position, 1, topics=topics, inclusive_of_start=True)
    if not rows or rows[0].id != position:
        last = ledger.recorder.max_notification_id() or 0
        if position > last:
            return f"{BEYOND_THE_STORE} ({last})"
        return "no incident event at this position in the store"
    event = ledger.mapper.to_domain_event(rows[0])
    if not isinstance(event, Incident.Event):
        return "no incident event at this position in the store"
    if headers.get("Ledger-Event-Id") != str(event.event_id):
        return "Ledger-Event-Id is not the stored event's"
    try:
        carried = pb.EventNotification.FromString(data).event
    except DecodeError:
        return "the payload is not an EventNotification"
    stored = wire.event_to_proto(StoredIncidentEvent(event, position))
    for name in ("position", "event_id", "incident", "version", "hash"):
        if getattr(carried, name) != getattr(stored, name):
            return f"the payload's event {name} is not the stored event's"
    return None


def lost_event(ledger: Ledger, headers: Mapping[str, str], data: bytes) -> bool:
    """Whether a message the store does not vouch for, beyond its last position, carries an
    event this ledger recorded and the store no longer holds: sealed with the ledger's key
    (no one else can seal), at the position its payload names, and not in the store at its
    incident's version (a copy of a stored event, placed further on, is foreign). What a
    store restored from a backup older than the stream leaves there (docs/operations.md)."""
    checker = ledger.seal_checker
    if checker is None:
        return False
    try:
        carried = pb.EventNotification.FromString(data).event
    except DecodeError:
        return False
    if (
        headers.get(POSITION_HEADER) != str(carried.position)
        or headers.get("Ledger-Event-Id") != carried.event_id
        or checker.problem(carried.hash, carried.seal) is not None
    ):
        return False
    try:
        incident = UUID(carried.incident.removeprefix("incidents/"))
    except ValueError:
        return False
    stored = ledger.recorder.select_events(
        incident, gt=carried.version - 1, lte=carried.version, limit=1
    )
    return not stored

"""Decoding stored incident events into the few values the projections fold.

A :class:`Fact` is one incident event reduced to what the projections read: its
identity and position, type, record time, actor agency, location, and a handful
of payload fields per type (``PAYLOAD``). Times are integers: microseconds since
the Unix epoch, UTC. Event ids are 32-digit hex strings.

Two decoders produce identical facts (a test checks it on every event of a random
history):

- :func:`fact_from_event` reads a domain event decoded by the library's mapper
  (``ledger.mapper.to_domain_event``), the reference;
- :class:`FastDecoder` parses the stored JSON with the standard library's C
  decoder, without the library's per-object hook, and converts only the fields in
  ``PAYLOAD``. It is used only when the mapper stores plain JSON (the library's
  ``JSONTranscoder``, no cipher, no compressor) and no incident event class has a
  ``class_version`` above 1 (no upcasting); otherwise the mapper decodes.

Neither checks the hash chain: the projections trust the store, as the relay does.
Loading an incident through the application still verifies its chain.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import JSONTranscoder, MapperDeserialisationError, Notification
from eventsourcing.utils import TopicError, get_topic

from services.common.jsoncodec import loads
from services.ledger.domain.incident import Incident, incident_event_classes
from services.ledger.store import RawRow, stored_id_text

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)

# Payload fields each event type contributes, and their kind:
# "s" text, "b" bool, "i" int, "l" list of text, "t" time (-> microseconds), "u" UUID (-> hex),
# "o" optional text ("" when the event has none: a field added after events were stored).
PAYLOAD: dict[str, dict[str, str]] = {
    "Reported": {"title": "s", "category": "s", "severity": "s", "reference": "o"},
    "SeverityAssessed": {"severity": "s"},
    "LeadAssigned": {"agency": "s"},
    "SupportingAgencyAdded": {"agency": "s"},
    "HandoverProposed": {"to_agency": "s"},
    "HandoverAccepted": {"to_agency": "s"},
    "ActionLogged": {"starts_response": "b"},
    "Escalated": {"level": "i"},
    "DecisionRecorded": {
        "deciding_agencies": "l",
        "forum": "s",
        "summary": "s",
        "rationale": "s",
        "valid_from": "t",
        "valid_until": "t",
    },
    "Corrected": {"corrected_event_id": "u", "field": "s", "new_value": "s"},
}


def micros(value: datetime) -> int:
    """Microseconds since the epoch; a naive time is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - EPOCH) // MICROSECOND


def parse_micros(text: str) -> int:
    """An ISO-8601 time (a corrected value, for example) in microseconds since the epoch."""
    return micros(datetime.fromisoformat(text))


def to_datetime(value: int) -> datetime:
    return EPOCH + value * MICROSECOND


class Fact:
    """One incident event, reduced to what the projections fold."""

    __slots__ = (
        "agency",
        "data",
        "desa",
        "event_id",
        "incident_id",
        "kecamatan",
        "occurred_at",
        "position",
        "recorded_at",
        "type",
        "version",
    )

    def __init__(
        self,
        position: int,
        incident_id: str,
        version: int,
        type_: str,
        event_id: str,
        recorded_at: int,
        occurred_at: int,
        agency: str,
        location: dict[str, Any] | None,
        data: dict[str, Any],
    ) -> None:
        self.position = position
        self.incident_id = incident_id
        self.version = version
        self.type = type_
        self.event_id = event_id
        self.recorded_at = recorded_at
        self.occurred_at = occurred_at
        self.agency = agency
        self.kecamatan = str(location.get("kecamatan", "")) if location else ""
        self.desa = str(location.get("desa", "")) if location else ""
        self.data = data

    def as_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fact) and self.as_tuple() == other.as_tuple()

    def __hash__(self) -> int:
        return hash((self.position, self.event_id))

    def __repr__(self) -> str:
        return f"Fact{self.as_tuple()!r}"


def _payload_value(kind: str, value: Any) -> Any:
    if kind == "o":
        return "" if value is None else str(value)
    if kind == "t":
        return micros(value)
    if kind == "u":
        return value.hex if isinstance(value, UUID) else UUID(str(value)).hex
    if kind == "l":
        return tuple(str(v) for v in value)
    if kind == "b":
        return bool(value)
    if kind == "i":
        return int(value)
    return str(value)


def fact_from_event(event: Incident.Event, position: int) -> Fact:
    """The reference decoder: from a domain event decoded by the library's mapper."""
    type_ = type(event).__name__
    spec = PAYLOAD.get(type_, {})
    return Fact(
        position,
        str(event.originator_id),
        event.originator_version,
        type_,
        event.event_id.hex,
        micros(event.timestamp),
        micros(event.occurred_at),
        event.actor_agency,
        event.location,
        {name: _payload_value(kind, getattr(event, name)) for name, kind in spec.items()},
    )


def incident_topics() -> dict[str, str]:
    """Topic -> event type name, for every incident event class."""
    return {get_topic(cls): cls.__name__ for cls in incident_event_classes()}


def _notification(row: RawRow) -> Notification:
    position, originator_id, version, topic, stored = row
    return Notification(
        id=position,
        originator_id=UUID(originator_id) if isinstance(originator_id, str) else originator_id,
        originator_version=version,
        topic=topic,
        state=stored,
    )


class FastDecoder:
    """Decodes notifications of incident events into facts (see the module docstring)."""

    def __init__(self, app: Application[UUID]) -> None:
        self._mapper = app.mapper
        self._recorder = app.recorder
        self.topics = incident_topics()
        classes = incident_event_classes()
        self.fast = (
            type(app.mapper.transcoder) is JSONTranscoder
            and app.mapper.cipher is None
            and app.mapper.compressor is None
            and all(getattr(cls, "class_version", 1) == 1 for cls in classes)
        )
        self._loads: Callable[[bytes], Any] = loads

    def stored_event_reads(self, row: RawRow) -> bool:
        """Whether the stored event of ``row`` reads the slow way (the library's own mapper,
        then the event's fields): one that does not was changed in the store; one that does
        where :meth:`decode` failed is this module's fault, not the row's."""
        try:
            event = self._mapper.to_domain_event(_notification(row))
            if not isinstance(event, Incident.Event):
                return False
            fact_from_event(event, int(row[0]))
        except (
            MapperDeserialisationError,
            TopicError,
            ValueError,
            KeyError,
            AttributeError,
            TypeError,
        ):
            return False
        return True

    def report_reads(self, incident_id: str) -> bool:
        """Whether the incident's first stored event (its report) reads the slow way: one
        missing or unreadable was changed in the store, and every later event of the
        incident has nothing to be folded into."""
        try:
            originator_id = UUID(incident_id)
        except ValueError:  # an id changed in the store
            return False
        first = self._recorder.select_events(originator_id, lte=1, limit=1)
        return bool(first) and self.stored_event_reads(
            (0, originator_id, first[0].originator_version, first[0].topic, first[0].state)
        )

    def decode(self, row: RawRow) -> Fact | None:
        """The fact of a stored incident event (a row as :func:`read_rows` gives it); None
        for other notifications (request records)."""
        position, originator_id, version, topic, stored = row
        type_ = self.topics.get(topic)
        if type_ is None:
            return None
        if not self.fast:
            event = self._mapper.to_domain_event(_notification(row))
            if not isinstance(event, Incident.Event):
                raise TypeError(f"not an incident event: {topic}")
            return fact_from_event(event, position)
        state = self._loads(stored)
        spec = PAYLOAD.get(type_)
        data: dict[str, Any] = {}
        if spec:
            for name, kind in spec.items():
                if kind == "o":
                    data[name] = state.get(name) or ""
                    continue
                value = state[name]
                if kind == "s":
                    data[name] = value
                elif kind == "t":
                    data[name] = micros(datetime.fromisoformat(value["_data_"]))
                elif kind == "u":
                    data[name] = value["_data_"]
                elif kind == "l":
                    data[name] = tuple(value)
                else:
                    data[name] = value
        return Fact(
            position,
            stored_id_text(originator_id),
            version,
            type_,
            state["event_id"]["_data_"],
            micros(datetime.fromisoformat(state["timestamp"]["_data_"])),
            micros(datetime.fromisoformat(state["occurred_at"]["_data_"])),
            state["actor_agency"],
            state["location"],
            data,
        )

    def recorded_at(self, notification: Notification) -> int:
        """The record time of any stored event, in microseconds."""
        event = self._mapper.to_domain_event(notification)
        stamp = getattr(event, "timestamp", None)
        return micros(stamp) if isinstance(stamp, datetime) else 0

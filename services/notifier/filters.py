"""Which events a subscriber wants: validated against the reference data, matched per event."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import notifier_service_pb2 as napi
from services.common.errors import InvalidArgument
from services.common.reference import ReferenceData, one_of
from services.common.vocabulary import EVENT_TYPES, involved_agencies

MAX_ITEMS = 100


def incident_agencies(incident: pb.Incident) -> set[str]:
    """The agencies the incident involves (:func:`involved_agencies`)."""
    return involved_agencies(
        incident.lead_agency,
        incident.reporter.agency,
        incident.supporting_agencies,
        incident.pending_handover.to_agency if incident.HasField("pending_handover") else "",
    )


@dataclass(frozen=True)
class Facets:
    """What a filter reads of an incident, before or after an event."""

    kecamatan: str
    category: str
    severity: str
    agencies: set[str]


@dataclass(frozen=True)
class EventFilter:
    kecamatan: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()
    min_severity_rank: int = 0
    event_types: frozenset[str] = frozenset()
    agencies: frozenset[str] = frozenset()

    @classmethod
    def from_proto(
        cls,
        message: napi.EventFilter,
        reference: ReferenceData,
        caller_agency: str,
        path: str = "filter",
    ) -> EventFilter:
        """The filter a request gives (at ``path`` in it, for the errors); ``caller_agency``
        is the agency that ``involving_my_agency`` stands for."""

        def codes(
            field: str, values: Iterable[str], known: Iterable[str], what: str = ""
        ) -> frozenset[str]:
            items = list(values)
            if len(items) > MAX_ITEMS:
                raise InvalidArgument(f"{path}.{field}", f"lists more than {MAX_ITEMS} values")
            allowed = set(known)
            for n, value in enumerate(items):
                if value not in allowed:
                    # A code of the reference data (``what``) is refused as the ledger refuses
                    # one, so that a message in the caller's language names the value.
                    unknown = {"check": "unknown", "value": value, "what": what} if what else {}
                    raise InvalidArgument(
                        f"{path}.{field}[{n}]",
                        f"unknown value {value!r}{one_of(allowed)}",
                        metadata=unknown,
                    )
            return frozenset(items)

        rank = 0
        if message.min_severity:
            severity = reference.severities.get(message.min_severity)
            if severity is None:
                raise InvalidArgument(
                    f"{path}.min_severity",
                    f"unknown severity {message.min_severity!r}{one_of(reference.severities)}",
                    metadata={
                        "check": "unknown",
                        "value": message.min_severity,
                        "what": "severity",
                    },
                )
            rank = severity.rank
        agencies = set(codes("agencies", message.agencies, reference.agencies, "agency"))
        if message.involving_my_agency:
            agencies.add(caller_agency)
        return cls(
            kecamatan=codes("kecamatan", message.kecamatan, reference.kecamatan, "kecamatan"),
            categories=codes("categories", message.categories, reference.categories, "category"),
            min_severity_rank=rank,
            event_types=codes("event_types", message.event_types, EVENT_TYPES),
            agencies=frozenset(agencies),
        )

    def matches(self, notification: pb.EventNotification, reference: ReferenceData) -> bool:
        """Whether the event is for this filter: its type, and the incident as it stands
        after the event or as it stood before it. So the event that takes an incident out
        of the filter (its severity lowered, its lead handed over) still reaches whoever
        followed it, and is the last one it receives; before, the subscriber's copy kept the
        state the filter had last seen, for good."""
        event, incident = notification.event, notification.incident
        if self.event_types and event.type not in self.event_types:
            return False
        after = Facets(
            event.location.kecamatan or incident.location.kecamatan,
            incident.category,
            incident.severity,
            incident_agencies(incident),
        )
        if self._takes(after, reference):
            return True
        if not notification.HasField("before"):
            return False
        before = notification.before
        return self._takes(
            Facets(
                event.location.kecamatan or before.kecamatan,
                before.category,
                before.severity,
                set(before.agencies),
            ),
            reference,
        )

    def _takes(self, facets: Facets, reference: ReferenceData) -> bool:
        if self.kecamatan and facets.kecamatan not in self.kecamatan:
            return False
        if self.categories and facets.category not in self.categories:
            return False
        if self.min_severity_rank:
            severity = reference.severities.get(facets.severity)
            if severity is None or severity.rank < self.min_severity_rank:
                return False
        return not self.agencies or bool(self.agencies & facets.agencies)

    def to_proto(self, reference: ReferenceData) -> napi.EventFilter:
        min_severity = next(
            (s.code for s in reference.severities.values() if s.rank == self.min_severity_rank),
            "",
        )
        return napi.EventFilter(
            kecamatan=sorted(self.kecamatan),
            categories=sorted(self.categories),
            min_severity=min_severity,
            event_types=sorted(self.event_types),
            agencies=sorted(self.agencies),
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "kecamatan": sorted(self.kecamatan),
                "categories": sorted(self.categories),
                "min_severity_rank": self.min_severity_rank,
                "event_types": sorted(self.event_types),
                "agencies": sorted(self.agencies),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> EventFilter:
        raw = json.loads(text)
        return cls(
            kecamatan=frozenset(raw["kecamatan"]),
            categories=frozenset(raw["categories"]),
            min_severity_rank=int(raw["min_severity_rank"]),
            event_types=frozenset(raw["event_types"]),
            agencies=frozenset(raw["agencies"]),
        )

"""Which events a subscriber wants: validated against the reference data, matched per event."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import notifier_service_pb2 as napi
from services.common.errors import InvalidArgument
from services.common.reference import ReferenceData
from services.common.vocabulary import EVENT_TYPES

MAX_ITEMS = 100


def involved_agencies(incident: pb.Incident) -> set[str]:
    """Agencies an incident involves: lead, supporting, reporter, and a pending handover's."""
    agencies = {incident.lead_agency, incident.reporter.agency, *incident.supporting_agencies}
    if incident.HasField("pending_handover"):
        agencies.add(incident.pending_handover.to_agency)
    agencies.discard("")
    return agencies


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

        def codes(field: str, values: Iterable[str], known: Iterable[str]) -> frozenset[str]:
            items = list(values)
            if len(items) > MAX_ITEMS:
                raise InvalidArgument(f"{path}.{field}", f"lists more than {MAX_ITEMS} values")
            allowed = set(known)
            for n, value in enumerate(items):
                if value not in allowed:
                    raise InvalidArgument(f"{path}.{field}[{n}]", f"unknown value {value!r}")
            return frozenset(items)

        rank = 0
        if message.min_severity:
            severity = reference.severities.get(message.min_severity)
            if severity is None:
                raise InvalidArgument(
                    f"{path}.min_severity", f"unknown severity {message.min_severity!r}"
                )
            rank = severity.rank
        agencies = set(codes("agencies", message.agencies, reference.agencies))
        if message.involving_my_agency:
            agencies.add(caller_agency)
        return cls(
            kecamatan=codes("kecamatan", message.kecamatan, reference.kecamatan),
            categories=codes("categories", message.categories, reference.categories),
            min_severity_rank=rank,
            event_types=codes("event_types", message.event_types, EVENT_TYPES),
            agencies=frozenset(agencies),
        )

    def matches(self, notification: pb.EventNotification, reference: ReferenceData) -> bool:
        event, incident = notification.event, notification.incident
        if self.event_types and event.type not in self.event_types:
            return False
        kecamatan = event.location.kecamatan or incident.location.kecamatan
        if self.kecamatan and kecamatan not in self.kecamatan:
            return False
        if self.categories and incident.category not in self.categories:
            return False
        if self.min_severity_rank:
            severity = reference.severities.get(incident.severity)
            if severity is None or severity.rank < self.min_severity_rank:
                return False
        return not self.agencies or bool(self.agencies & involved_agencies(incident))

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

"""AIP-160 filters of ListIncidents over the status board's columns."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from uuid import UUID

from services.common.errors import InvalidArgument
from services.common.reference import ReferenceData
from services.ledger.domain.incident import Status

FILTER_FIELDS = ("status", "severity", "category", "kecamatan", "lead_agency", "reference")
_CLAUSE = re.compile(
    r"\s*(?P<field>[a-z_]+)\s*(?P<op>!=|=)\s*"
    r"(?:\"(?P<quoted>[^\"\\]*)\"|(?P<bare>[A-Za-z0-9_]+))\s*"
)
#: Finds the incident a reference code names (None: no incident has it); refuses a code
#: that is not one of this ledger's, or is mistyped (INVALID_ARGUMENT).
FindReference = Callable[[str], UUID | None]
_AND = re.compile(r"AND\b", re.ASCII)


@dataclass(frozen=True)
class BoardFilter:
    """A parsed AIP-160 filter: comparisons with = or != joined by AND."""

    clauses: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def parse(
        cls, text: str, reference: ReferenceData, find_reference: FindReference | None = None
    ) -> BoardFilter:
        """The filter ``text``; a ``reference`` clause becomes one on the incident id that
        ``find_reference`` finds (the board keeps no codes: the store's claims do)."""
        if len(text) > 1000:
            raise InvalidArgument(
                "filter", "is longer than 1000 characters", reason="FIELD_TOO_LONG"
            )
        clauses: list[tuple[str, str, str]] = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            if clauses:
                match_and = _AND.match(text, pos)
                if match_and is None:
                    raise InvalidArgument("filter", f"expected AND at character {pos + 1}")
                pos = match_and.end()
            match = _CLAUSE.match(text, pos)
            if match is None:
                raise InvalidArgument(
                    "filter",
                    f'expected `field = "value"` at character {pos + 1}; fields: '
                    + ", ".join(FILTER_FIELDS),
                )
            field, op = match["field"], match["op"]
            value = match["quoted"] if match["quoted"] is not None else match["bare"]
            if field == "reference" and find_reference is not None:
                found = find_reference(value)
                # An incident id no row has, when no incident has the code.
                clauses.append(("incident_id", op, "" if found is None else str(found)))
            else:
                clauses.append((field, op, _check_value(field, value, reference)))
            pos = match.end()
        return cls(tuple(clauses))

    def where(self, placeholder: str) -> tuple[str, list[str]]:
        parts, params = [], []
        for field, op, value in self.clauses:
            parts.append(f"{field} {'<>' if op == '!=' else '='} {placeholder}")
            params.append(value)
        return (" AND ".join(parts) or "1=1"), params


#: The orders of ListIncidents (AIP-132), as normalised: whether the newest report comes first.
ORDERS = {"": False, "create_time": False, "create_time asc": False, "create_time desc": True}


def parse_order(text: str) -> bool:
    """Whether ``order_by`` asks for the newest report first; INVALID_ARGUMENT if unknown.

    Reports are ordered by their ledger position (the board's ``seq``), so both orders are
    one walk of the ``seq`` index. That is the order their create_time follows but for
    reports made within milliseconds of each other (a report's time is taken before the
    store orders its commit): docs/api.md, "Lists, filters and pages".
    """
    field, _, direction = " ".join(text.split()).partition(" ")
    normalised = f"{field} {direction.lower()}".strip()  # SQL's habit: DESC as desc
    if normalised not in ORDERS:
        raise InvalidArgument("order_by", 'must be "create_time" or "create_time desc" (or empty)')
    return ORDERS[normalised]


def _check_value(field: str, value: str, reference: ReferenceData) -> str:
    if field == "status":
        name = value.removeprefix("INCIDENT_STATUS_")
        if name not in Status.__members__:
            raise InvalidArgument("filter", f"unknown status {value!r}")
        return name
    known: Mapping[str, object]
    if field == "severity":
        known = reference.severities
    elif field == "category":
        known = reference.categories
    elif field == "kecamatan":
        known = reference.kecamatan
    elif field == "lead_agency":
        if value == "":  # no lead agency yet (AIP-160: an unset field equals its default)
            return value
        known = reference.agencies
    else:
        raise InvalidArgument(
            "filter", f"cannot filter on {field!r}; fields: " + ", ".join(FILTER_FIELDS)
        )
    if value not in known:
        raise InvalidArgument("filter", f"unknown {field} {value!r}")
    return value

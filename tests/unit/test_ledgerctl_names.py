"""ledgerctl's incident names: an ambiguous prefix lists its candidates; reference codes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import pytest

from incidentledger_client.cli.names import (
    IncidentNameError,
    IncidentResolver,
    UnknownIncidentError,
)
from incidentledger_client.types import Incident, IncidentStatus


@dataclass(frozen=True)
class Listed:
    name: str
    title: str
    status: IncidentStatus


LISTED = [
    Listed("incidents/0b6f12aa-0000-4000-8000-000000000001", "Rally", IncidentStatus.REPORTED),
    Listed("incidents/0b6f12ab-0000-4000-8000-000000000002", "Hoax", IncidentStatus.VERIFIED),
    Listed("incidents/7c0000aa-0000-4000-8000-000000000003", "Flood", IncidentStatus.ASSIGNED),
]


def resolver(by_reference: dict[str, str] | None = None) -> IncidentResolver:
    return IncidentResolver(
        lambda: cast("list[Incident]", LISTED),
        by_reference.get if by_reference is not None else None,
    )


def test_an_ambiguous_prefix_lists_the_candidates() -> None:
    with pytest.raises(IncidentNameError) as ambiguous:
        resolver().resolve("0b6f12")
    message = str(ambiguous.value)
    assert "ambiguous" in message and "Rally" in message and "Hoax" in message
    assert [c.name for c in ambiguous.value.candidates] == [LISTED[0].name, LISTED[1].name]
    assert resolver().resolve("0b6f12ab") == LISTED[1].name
    assert resolver().resolve("7C0000") == LISTED[2].name


def test_a_full_id_needs_no_listing() -> None:
    def never() -> list[Incident]:
        raise AssertionError("a full id is not looked up in the list")

    full = "0B6F12AA-0000-4000-8000-000000000009"
    assert IncidentResolver(never).resolve(full) == f"incidents/{full.lower()}"
    assert IncidentResolver(never).resolve(f"incidents/{full}") == f"incidents/{full.lower()}"


def test_reference_codes_are_looked_up() -> None:
    with pytest.raises(IncidentNameError, match="no reference codes yet"):
        resolver().resolve("MKM-7QK3-92")
    codes = {"MKM-7QK3-92": LISTED[2].name, "mkm 7qk3 93": LISTED[1].name}
    assert resolver(codes).resolve("MKM-7QK3-92") == LISTED[2].name
    assert resolver(codes).resolve("mkm 7qk3 93") == LISTED[1].name, "as people write it"
    with pytest.raises(IncidentNameError, match="no incident has the reference code"):
        resolver(codes).resolve("MKM-7QK3-94")
    # A prefix of an id is still a prefix, even when it could be read as a code.
    assert resolver(codes).resolve("7c0000") == LISTED[2].name


def test_a_code_without_its_prefix_is_looked_up_as_a_code() -> None:
    """Read out over the phone, a code often loses the regency's prefix every code shares:
    ``7QK3-92`` is a code (an id's start never has a dash after 4 characters), and so are
    six characters that are not all hex; six hex characters stay an id's start."""
    codes = {"7QK3-92": LISTED[2].name, "7qk392": LISTED[1].name, "7QK3 93": LISTED[0].name}
    assert resolver(codes).resolve("7QK3-92") == LISTED[2].name
    assert resolver(codes).resolve("7qk392") == LISTED[1].name
    assert resolver(codes).resolve("7QK3 93") == LISTED[0].name
    assert resolver(codes).resolve("7c0000") == LISTED[2].name
    with pytest.raises(IncidentNameError, match="no incident has the reference code"):
        resolver(codes).resolve("1234-56")


def test_a_name_no_incident_has_is_unknown_not_misused() -> None:
    """A prefix as tables show ids, or a well-formed code, that no incident has is not found
    (as an unknown full id is); too short, or not an id at all, is a usage error."""
    with pytest.raises(UnknownIncidentError, match="no incident's id starts with 'deadbeef'"):
        resolver().resolve("deadbeef")
    with pytest.raises(UnknownIncidentError, match="no incident has the reference code"):
        resolver({}).resolve("MKM-7QK3-94")
    for misused in ("0b6f1", "rally"):
        with pytest.raises(IncidentNameError) as refused:
            resolver().resolve(misused)
        assert not isinstance(refused.value, UnknownIncidentError), misused

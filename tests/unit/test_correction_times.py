"""A corrected time written without its UTC offset is refused with an example in the
regency's zone: WIB in Mukomuko, WITA in a regency whose reference file says
Asia/Makassar (the example said +07:00 (WIB) whatever the regency)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from services.common.config import LedgerSettings
from services.common.errors import InvalidArgument
from services.ledger.application import time_bounds_of
from services.ledger.domain.commands import Rules, check_corrected_value
from tests.unit.incident_builders import REF


@pytest.mark.parametrize(
    ("zone", "example"),
    [
        ("Asia/Jakarta", "2026-12-08T18:00:00+07:00 (WIB)"),
        ("Asia/Makassar", "2026-12-08T18:00:00+08:00 (WITA)"),
        ("Asia/Jayapura", "2026-12-08T18:00:00+09:00 (WIT)"),
    ],
)
def test_a_time_without_its_offset_is_refused_with_an_example_in_the_regencys_zone(
    zone: str, example: str
) -> None:
    reference = dataclasses.replace(REF, zone=zone)
    rules = Rules(reference, time_bounds_of(LedgerSettings()), lambda: datetime.now(UTC))
    with pytest.raises(InvalidArgument) as refused:
        check_corrected_value(rules, "valid_until", "2026-12-08T18:00:00")
    said = str(refused.value)
    assert f"e.g. {example}" in said, said
    assert "2026-12-08T18:00:00Z (UTC)" in said, said

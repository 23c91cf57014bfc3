"""Times people type into ledgerctl: zones (WIB by default) and relative forms."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from incidentledger_client.cli.times import TimeError, parse_time
from incidentledger_client.i18n import format_time, using

# 2026-11-28 10:00 in Jakarta (WIB, UTC+7).
NOW = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-28T10:00", datetime(2026, 11, 28, 3, 0, tzinfo=UTC)),  # no zone: WIB
        ("2026-11-28 10:00 WIB", datetime(2026, 11, 28, 3, 0, tzinfo=UTC)),
        ("2026-11-28 10:00 WITA", datetime(2026, 11, 28, 2, 0, tzinfo=UTC)),
        ("2026-11-28T10:00:00+00:00", datetime(2026, 11, 28, 10, 0, tzinfo=UTC)),
        ("2026-11-28T10:00Z", datetime(2026, 11, 28, 10, 0, tzinfo=UTC)),
        ("now", NOW),
        ("-2h", datetime(2026, 11, 28, 1, 0, tzinfo=UTC)),
        ("-30m", datetime(2026, 11, 28, 2, 30, tzinfo=UTC)),
        ("+1d", datetime(2026, 11, 29, 3, 0, tzinfo=UTC)),
        ("2 hours ago", datetime(2026, 11, 28, 1, 0, tzinfo=UTC)),
        ("yesterday 18:00", datetime(2026, 11, 27, 11, 0, tzinfo=UTC)),  # 18:00 WIB
        ("kemarin 18:00", datetime(2026, 11, 27, 11, 0, tzinfo=UTC)),
        ("27/11/2026 18:00", datetime(2026, 11, 27, 11, 0, tzinfo=UTC)),  # day first
    ],
)
def test_forms_people_type(text: str, expected: datetime) -> None:
    assert parse_time(text, "Asia/Jakarta", now=NOW) == expected


def test_the_zone_is_a_setting() -> None:
    makassar = parse_time("2026-11-28T10:00", "Asia/Makassar", now=NOW)
    assert makassar == datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
    assert parse_time("yesterday 18:00", "UTC", now=NOW) == datetime(
        2026, 11, 27, 18, 0, tzinfo=UTC
    )


def test_nonsense_is_refused_with_examples() -> None:
    with pytest.raises(TimeError, match="yesterday 18:00"):
        parse_time("whenever", "Asia/Jakarta", now=NOW)


@pytest.mark.parametrize("month", range(1, 13))
@pytest.mark.parametrize("seconds", [True, False])
def test_a_time_shown_in_indonesian_reads_back_as_the_same_time(month: int, seconds: bool) -> None:
    """What ledgerctl shows in Indonesian (28 Nov 2026 17.05.00 WIB, dots in the clock) is
    what an officer copies into --at or correct: it names the same instant."""
    moment = datetime(2026, month, 9, 1, 5, 0, tzinfo=UTC)  # 08.05 WIB
    with using("id"):
        shown = format_time(moment, ZoneInfo("Asia/Jakarta"), seconds=seconds)
    assert "08.05" in shown
    assert parse_time(shown, "Asia/Jakarta", now=NOW) == moment
    assert parse_time(shown.removesuffix(" WIB"), "Asia/Jakarta", now=NOW) == moment

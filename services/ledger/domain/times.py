"""Which times a caller may state: the ledger records them, so they must be plausible.

Two kinds of time come from callers:

- **what happened** (an event's ``occur_time``, a corrected ``occurred_at``): not before the
  ledger's era and not after the server's clock, give or take the allowed clock skew. A
  report from the future is a wrong clock or a typo (a year 9999 would sort first in every
  view for ever);
- **what is planned** (a decision's ``valid_from``/``valid_until``, their corrections): not
  before the era and at most ``max_planned_ahead`` after now (a decision for years ahead is
  a typo, not a plan).

A refusal is INVALID_ARGUMENT (``INVALID_FIELD``) naming the request field.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.common.errors import InvalidArgument


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware time; a naive one is taken as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class TimeBounds:
    """The range of times a caller may state (see the module docstring); the values come
    from the settings (``LEDGER_EARLIEST_TIME``, ``LEDGER_MAX_CLOCK_SKEW_SECONDS``,
    ``LEDGER_MAX_DECISION_DAYS``)."""

    earliest: datetime
    max_clock_skew: timedelta
    max_planned_ahead: timedelta

    def check_occurred(self, field: str, value: datetime, now: datetime) -> None:
        """Refuse a time something happened that is before the era or in the future."""
        value = as_utc(value)
        self._check_era(field, value)
        if value > now + self.max_clock_skew:
            raise InvalidArgument(
                field,
                f"{value.isoformat()} is in the future: more than "
                f"{self.max_clock_skew.total_seconds():g} s after the server's clock "
                f"({now.isoformat()})",
            )

    def check_planned(self, field: str, value: datetime, now: datetime) -> None:
        """Refuse a planned time that is before the era or too far ahead."""
        value = as_utc(value)
        self._check_era(field, value)
        if value > now + self.max_planned_ahead:
            raise InvalidArgument(
                field,
                f"{value.isoformat()} is more than {self.max_planned_ahead.days} days ahead",
            )

    def _check_era(self, field: str, value: datetime) -> None:
        if value < self.earliest:
            era = self.earliest.isoformat()
            raise InvalidArgument(field, f"{value.isoformat()} is before the ledger's era ({era})")

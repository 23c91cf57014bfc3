"""Which times a caller may state: the ledger records them, so they must be plausible.

Two kinds of time come from callers:

- **what happened** (an event's ``occur_time``, a corrected ``occurred_at``): not before the
  ledger's era and not after the server's clock, give or take the allowed clock skew. A
  report from the future is a wrong clock or a typo (a year 9999 would sort first in every
  view for ever);
- **what is planned** (a decision's ``valid_from``/``valid_until``, their corrections): not
  before the era and at most ``max_planned_ahead`` after now (a decision for years ahead is
  a typo, not a plan).

A refusal is INVALID_ARGUMENT (``INVALID_FIELD``) naming the request field, with a ``check``
in its metadata (``era``, ``future``, ``ahead``; ``window`` for a decision that would end
before it starts) and the times it compares. It states them in the zone the caller wrote the
value in, or else (a ``google.protobuf.Timestamp`` carries no zone) in the regency's
(``zone`` of the reference data, Asia/Jakarta by default), with the offset: officers work in
local time, and an answer in UTC reads seven hours off in WIB.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

from services.common.errors import InvalidArgument


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware time; a naive one is taken as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


#: How far ahead of the server's a field device's clock may run and still judge the times
#: it stated: a phone set to the wrong zone runs up to 14 hours off; one days or years
#: ahead says nothing of when anything happened, and trusting it let any caller record a
#: report of the year 4999 by stating a send time of the year 5000.
DEVICE_CLOCK_TRUSTED_AHEAD = timedelta(days=1)


def trusted_ahead(device_ahead: timedelta | None) -> timedelta:
    """How far ahead the device's clock counts when judging its times: as measured up to
    :data:`DEVICE_CLOCK_TRUSTED_AHEAD`, not at all beyond it (nor when behind)."""
    ahead = max(device_ahead or timedelta(0), timedelta(0))
    return ahead if ahead <= DEVICE_CLOCK_TRUSTED_AHEAD else timedelta(0)


def shown(value: datetime, zone: tzinfo) -> str:
    """``value`` as a refusal states it: ISO 8601 in ``zone``, with the offset
    (``2026-12-08T18:00:00+07:00``), microseconds only when it has them; in UTC when
    ``zone``'s date would be past the year 9999 (the last hours of 9999-12-31 in WIB)."""
    try:
        moment = as_utc(value).astimezone(zone)
    except OverflowError:
        moment = as_utc(value)
    return moment.isoformat(timespec="microseconds" if moment.microsecond else "seconds")


def window_refused(field: str, valid_from: datetime, valid_until: datetime, zone: tzinfo) -> None:
    """Refuse a decision's window that does not end after it starts, naming both ends."""
    if valid_until > valid_from:
        return
    start, end = shown(valid_from, zone), shown(valid_until, zone)
    raise InvalidArgument(
        field,
        f"the decision would end ({end}) before it starts ({start}): "
        "valid_until must be after valid_from",
        metadata={"check": "window", "valid_from": start, "valid_until": end},
    )


@dataclass(frozen=True)
class TimeBounds:
    """The range of times a caller may state (see the module docstring); the values come
    from the settings (``LEDGER_EARLIEST_TIME``, ``LEDGER_MAX_CLOCK_SKEW_SECONDS``,
    ``LEDGER_MAX_DECISION_DAYS``)."""

    earliest: datetime
    max_clock_skew: timedelta
    max_planned_ahead: timedelta

    def check_occurred(
        self,
        field: str,
        value: datetime,
        now: datetime,
        zone: tzinfo,
        device_ahead: timedelta | None = None,
    ) -> None:
        """Refuse a time something happened that is before the era or in the future; the
        refusal states the times in ``zone``.

        ``device_ahead``: how far the clock of the field device that stated the time runs
        ahead of the server's, as its call's send time showed (``IngestReports``). The time
        is then judged by the device's clock: a phone ten minutes fast that says something
        happened five minutes ago by its clock is right, and refusing it would lose the
        report for good (nothing on the device can change a time it recorded)."""
        value = as_utc(value)
        self._check_era(field, value, zone)
        ahead = trusted_ahead(device_ahead)
        if value > now + ahead + self.max_clock_skew:
            skew = f"{self.max_clock_skew.total_seconds():g}"
            stated, clock = shown(value, zone), shown(now, zone)
            metadata = {"check": "future", "value": stated, "now": clock, "skew_seconds": skew}
            whose = f"the server's clock ({clock})"
            if device_ahead is not None and device_ahead > DEVICE_CLOCK_TRUSTED_AHEAD:
                whose += (
                    f"; the device's clock, {device_ahead.total_seconds():g} s ahead, is too "
                    "far off to judge by"
                )
            if ahead:
                device = shown(now + ahead, zone)
                whose = f"the device's clock ({device}, {ahead.total_seconds():g} s ahead)"
                metadata["device_now"] = device
            raise InvalidArgument(
                field,
                f"{stated} is in the future: more than {skew} s after {whose}",
                metadata=metadata,
            )

    def plausible_occurrence(
        self, value: datetime, now: datetime, device_ahead: timedelta | None = None
    ) -> bool:
        """Whether :meth:`check_occurred` would take ``value`` as when something happened."""
        value = as_utc(value)
        return self.earliest <= value <= now + trusted_ahead(device_ahead) + self.max_clock_skew

    def check_planned(self, field: str, value: datetime, now: datetime, zone: tzinfo) -> None:
        """Refuse a planned time that is before the era or too far ahead; the refusal states
        the times in ``zone``."""
        value = as_utc(value)
        self._check_era(field, value, zone)
        if value > now + self.max_planned_ahead:
            stated, latest = shown(value, zone), shown(now + self.max_planned_ahead, zone)
            days = f"{self.max_planned_ahead.days}"
            raise InvalidArgument(
                field,
                f"{stated} is more than {days} days ahead (the latest allowed now: {latest})",
                metadata={"check": "ahead", "value": stated, "latest": latest, "days": days},
            )

    def _check_era(self, field: str, value: datetime, zone: tzinfo) -> None:
        if value < self.earliest:
            stated, era = shown(value, zone), shown(self.earliest, zone)
            raise InvalidArgument(
                field,
                f"{stated} is before the ledger's era ({era})",
                metadata={"check": "era", "value": stated, "earliest": era},
            )

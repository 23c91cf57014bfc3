"""Times people type: ISO 8601 with or without a zone, zone names, relative forms.

``2026-11-28T10:00``, ``2026-11-28 10:00 WIB``, ``2026-11-28T10:00+07:00``, ``-2h``, ``2 hours
ago``, ``yesterday 18:00``, ``kemarin 18:00``, ``now``. A time without a zone is in the zone
the run shows times in (``State.zone``: the ``zone`` setting, else the regency's), not UTC.
Relative and worded forms are parsed by dateparser; ISO forms by the standard library,
without loading it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from incidentledger_client.i18n import N_, _

#: "-2h", "-30m", "-1d", "+3d", "-1w": an offset from now.
_OFFSET = re.compile(r"^(?P<sign>[-+])\s*(?P<amount>\d+(?:\.\d+)?)\s*(?P<unit>[smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
#: Indonesia's zone abbreviations, which dateparser does not know.
_ABBREVIATIONS = {"WIB": "+07:00", "WITA": "+08:00", "WIT": "+09:00"}

#: Shown in the run's language (its worded forms are the ones it reads: "kemarin 18:00").
EXAMPLES = N_("2026-11-28T10:00, '2026-11-28 10:00 WIB', -2h, '2 hours ago', 'yesterday 18:00'")


#: A clock written the Indonesian way, with dots (``17.05`` or ``17.05.00``), as ledgerctl
#: shows times in Indonesian (``28 Nov 2026 17.05.00 WIB``): at the end of the text, after a
#: space, before a zone offset if any; dateparser reads only colons there.
_CLOCK_DOTS = re.compile(
    r"(?<=\s)(?P<h>\d{1,2})\.(?P<m>\d{2})(?:\.(?P<s>\d{2}))?(?P<zone>\s*[+-]\d{2}:?\d{2})?$"
)


def _colons(found: re.Match[str]) -> str:
    seconds = f":{found['s']}" if found["s"] else ""
    return f"{found['h']}:{found['m']}{seconds}{found['zone'] or ''}"


class TimeError(ValueError):
    """The text is no time ledgerctl understands."""


def parse_time(text: str, zone: str, now: datetime | None = None) -> datetime:
    """The moment ``text`` names, as an aware datetime in UTC."""
    value = text.strip()
    tz = ZoneInfo(zone)
    current = (now or datetime.now(UTC)).astimezone(tz)
    if value.lower() == "now":
        return current.astimezone(UTC)
    offset = _OFFSET.match(value.lower())
    if offset:
        delta = timedelta(**{_UNITS[offset["unit"]]: float(offset["amount"])})
        moment = current - delta if offset["sign"] == "-" else current + delta
        return moment.astimezone(UTC)
    for name, utc_offset in _ABBREVIATIONS.items():
        value = re.sub(rf"\s*\b{name}\b\s*$", utc_offset, value)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = _worded(_CLOCK_DOTS.sub(_colons, value), zone, current)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed.astimezone(UTC)


def _worded(value: str, zone: str, current: datetime) -> datetime:
    import dateparser  # about 0.6 s to load: only for forms the standard library cannot read

    parsed = dateparser.parse(
        value,
        settings={
            "TIMEZONE": zone,
            "RETURN_AS_TIMEZONE_AWARE": True,
            "PREFER_DATES_FROM": "past",
            # Indonesia writes day/month/year.
            "DATE_ORDER": "DMY",
            "RELATIVE_BASE": current.replace(tzinfo=None),
        },
        languages=["en", "id"],
    )
    if parsed is None:
        raise TimeError(
            _("not a time: {value} (examples: {examples})").format(
                value=repr(value), examples=_(EXAMPLES)
            )
        )
    return parsed

"""The page's languages: Bahasa Indonesia by default, English when chosen.

The words come from the project's one catalog set (``incidentledger_client.i18n``, domain
``incidentledger``), shared with ledgerctl and the demo; the page's templates and its Python
strings are extracted into it by ``make catalogs``. The officer's choice is a cookie
(:data:`COOKIE`), set by the language control on every page; each request is answered in it
(:class:`Languages`, which holds the language for the request's duration).

Times are shown and taken in the regency's zone, which the room holds (``Room.zone``: the
reference file's ``zone``, the one the ledger reads); these functions are given it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from incidentledger_client.i18n import (
    LANGUAGES,
    N_,
    Language,
    _,
    current,
    format_number,
    format_size,
    format_time,
    labels,
    ngettext,
    parse,
    using,
)

__all__ = [
    "COOKIE",
    "DEFAULT",
    "LANGUAGES",
    "LANGUAGE_NAMES",
    "N_",
    "Languages",
    "_",
    "current",
    "duration",
    "format_number",
    "format_size",
    "labels",
    "language_of",
    "local_time",
    "ngettext",
    "zone_name",
]

#: The cookie that remembers the officer's language.
COOKIE = "room_lang"
#: The room's language unless an officer chose another.
DEFAULT: Language = "id"
#: Each language named in itself, for the control that switches between them.
LANGUAGE_NAMES: Mapping[Language, str] = {"id": "Bahasa Indonesia", "en": "English"}


def language_of(value: str | None) -> Language:
    """The language a cookie names; the room's default when none or an unknown one."""
    return (parse(value) if value else None) or DEFAULT


def local_time(value: datetime | None, zone: tzinfo, seconds: bool = False) -> str:
    """A time as the room reads it: in the regency's ``zone``, named by its abbreviation
    (``2026-12-08 18:00 WIB``, ``... WITA``), in the page's language ("" for none)."""
    return "" if value is None else format_time(value, zone, seconds=seconds)


def zone_name(zone: tzinfo, at: datetime | None = None) -> str:
    """The zone's usual abbreviation at ``at`` (now by default): WIB, WITA or WIT for the
    Indonesian zones (Asia/Jakarta, Asia/Makassar, Asia/Jayapura), the time zone data's own
    abbreviation for another (``CET``; ``+08`` where it has no word)."""
    moment = (at or datetime.now(UTC)).astimezone(zone)
    return moment.tzname() or moment.strftime("%z")


#: A span from this many minutes on reads in days and hours (its minutes left out).
DAY_MINUTES = 24 * 60


def duration(minutes: int) -> str:
    """A span of minutes for people: ``3 h 05 min`` (Indonesian ``3 jam 05 mnt``); a day or
    more in days and hours, ``20 d 19 h`` (``20 hari 19 jam``), the minutes left out."""
    if minutes < 60:
        return _("{minutes} min").format(minutes=minutes)
    if minutes < DAY_MINUTES:
        return _("{hours} h {minutes:02d} min").format(hours=minutes // 60, minutes=minutes % 60)
    days, rest = divmod(minutes, DAY_MINUTES)
    return _("{days} d {hours} h").format(days=days, hours=rest // 60)


class Languages:
    """ASGI middleware: each request in the language of its cookie (Indonesian without one)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        with using(language_of(HTTPConnection(scope).cookies.get(COOKIE))):
            await self.app(scope, receive, send)

"""The languages a person reads: English (the source language) and Bahasa Indonesia.

One gettext domain, ``incidentledger``, with its catalogs in ``locale/`` beside this module
(``locale/id/LC_MESSAGES/incidentledger.po`` and the compiled ``.mo``), installed with the
package: ledgerctl, the demo and the web page read the same words. The English text in the
code is the message id; ``docs/glossary-id.md`` is the vocabulary the translations keep to.
``python -m incidentledger_client.i18n.catalogs update`` extracts, merges and compiles;
``... check`` (run by ``make lint``) fails on a message without an Indonesian translation or
on catalogs that are stale against the code.

The language of a run is chosen once (:func:`choose`: ``--lang``, then ``LEDGER_LANG``, then
the locale, ``LANGUAGE``/``LC_ALL``/``LC_MESSAGES``/``LANG``) and held in a context variable
for its duration (:func:`using`); :func:`_` translates into it. Only text for people is
translated: codes, ``--json`` and everything else a program reads stay as they are.
"""

from __future__ import annotations

import gettext
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import date, datetime, tzinfo
from functools import cache
from pathlib import Path
from typing import Literal

DOMAIN = "incidentledger"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"

Language = Literal["en", "id"]
#: The languages, the source language first.
LANGUAGES: tuple[Language, ...] = ("en", "id")
#: The Babel locale of each language (dates, numbers).
LOCALES: Mapping[Language, str] = {"en": "en_GB", "id": "id_ID"}
#: The environment variables that name the locale, in GNU gettext's order of precedence.
LOCALE_VARIABLES = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")

_current: ContextVar[Language] = ContextVar("incidentledger_language", default="en")


def parse(value: str) -> Language | None:
    """The language a setting names (``id``, ``id_ID.UTF-8``, ``in``, ``en_US``), or None."""
    head = value.strip().split(":")[0].split(".")[0].split("@")[0].replace("-", "_").lower()
    code = head.split("_")[0]
    if code in ("id", "in"):  # "in": Indonesian's old ISO 639 code, still seen in Java locales
        return "id"
    if code == "en":
        return "en"
    return None


def choose(flag: str | None, environ: Mapping[str, str]) -> Language:
    """The language of a run: ``--lang``, then ``LEDGER_LANG``, then the locale; English else.

    A flag or ``LEDGER_LANG`` naming no known language is an error (:class:`ValueError`); a
    locale naming another language means English (the source language).
    """
    for name, value in (("--lang", flag), ("LEDGER_LANG", environ.get("LEDGER_LANG"))):
        if value:
            language = parse(value)
            if language is None:
                raise ValueError(f"{name}: unknown language {value!r} (one of: id, en)")
            return language
    for variable in LOCALE_VARIABLES:
        value = environ.get(variable, "")
        if value and value not in ("C", "POSIX"):
            return parse(value) or "en"
    return "en"


@cache
def translations(language: Language) -> gettext.NullTranslations:
    """The catalog of ``language`` (English: the messages as written)."""
    if language == "en":
        return gettext.NullTranslations()
    return gettext.translation(DOMAIN, str(LOCALE_DIR), [language])


def current() -> Language:
    """The language of this run (English unless :func:`using` chose another)."""
    return _current.get()


@contextmanager
def using(language: Language) -> Iterator[None]:
    """Speak ``language`` inside the block."""
    token = _current.set(language)
    try:
        yield
    finally:
        _current.reset(token)


def _(message: str) -> str:
    """``message`` in the current language."""
    return translations(current()).gettext(message)


def ngettext(singular: str, plural: str, count: int) -> str:
    """The singular or plural form for ``count``, in the current language."""
    return translations(current()).ngettext(singular, plural, count)


def pgettext(context: str, message: str) -> str:
    """``message`` in the current language, in ``context`` (a code: ``status``, ``band``)."""
    return translations(current()).pgettext(context, message)


def N_(message: str) -> str:  # noqa: N802 - the gettext convention, which extraction knows
    """Mark ``message`` for extraction; translated where it is shown, with :func:`_`."""
    return message


def format_time(value: datetime, zone: tzinfo, seconds: bool = True) -> str:
    """A time for people in ``zone``, named (``2026-11-28 17:05:00 WIB``; Indonesian
    ``28 Nov 2026 17.05.00 WIB``: the locale's order and time separator)."""
    moment = value.astimezone(zone)
    if current() == "en":
        clock = "%H:%M:%S" if seconds else "%H:%M"
        return f"{moment.strftime('%Y-%m-%d ' + clock)} {moment.tzname()}"
    from babel.dates import format_datetime

    pattern = "d MMM y HH.mm.ss" if seconds else "d MMM y HH.mm"
    text = format_datetime(moment, pattern, tzinfo=zone, locale=LOCALES["id"])
    return f"{text} {moment.tzname()}"


def format_clock(value: datetime, zone: tzinfo) -> str:
    """A time of day for people in ``zone``, named (``17:05 WIB``; Indonesian ``17.05 WIB``:
    the locale's time separator, as :func:`format_time`)."""
    moment = value.astimezone(zone)
    clock = "%H:%M" if current() == "en" else "%H.%M"
    return f"{moment.strftime(clock)} {moment.tzname()}"


def format_date(value: date) -> str:
    """A day for people: ``2026-11-28`` in English, ``28 Nov 2026`` in Indonesian (the order
    and month names of :func:`format_time`)."""
    if current() == "en":
        return value.isoformat()
    from babel.dates import format_date as babel_format_date

    return str(babel_format_date(value, "d MMM y", locale=LOCALES["id"]))


def format_number(value: float, digits: int = 0) -> str:
    """A number for people: ``1,234.5`` in English, ``1.234,5`` in Indonesian."""
    if current() == "en":
        return f"{value:,.{digits}f}"
    from babel.numbers import format_decimal

    pattern = "#,##0" + ("." + "0" * digits if digits else "")
    return str(format_decimal(value, format=pattern, locale=LOCALES["id"]))


def format_size(size: int) -> str:
    """A file's size for people: bytes below 10 kB, then kB or MB (10^3, 10^6)."""
    if size < 10_000:
        return _("{n} bytes").format(n=format_number(size))
    if size < 10_000_000:
        return _("{n} kB").format(n=format_number(size / 1000, 1))
    return _("{n} MB").format(n=format_number(size / 1_000_000, 1))

"""Incident names people can type: the full name, the bare id, a unique prefix, a reference code.

The board and every table show the first :data:`SHORT_ID` characters of an id; any prefix of
at least :data:`MIN_PREFIX` characters that only one incident's id starts with names it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from incidentledger_client.i18n import _
from incidentledger_client.types import Incident

#: How many characters of an id tables show (enough to be unique among tens of thousands).
SHORT_ID = 8
#: The shortest prefix accepted: 6 hex characters are 16.7 million values, so a prefix taken
#: from a table is unique unless the ledger holds thousands of incidents with the same start.
MIN_PREFIX = 6
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_PREFIX = re.compile(r"^[0-9a-f-]+$")
#: The start of an id as tables show it: 6 or more hex characters, then anything of an id.
_UUID_START = re.compile(r"^[0-9a-f]{6,}")
#: What a reference code looks like (MKM-7QK3-9V): the regency's prefix of 1-6 letters (which
#: may be left out: 7QK3-9V), then 4 and 2 characters. A prefix of an id with a dash has 8
#: characters before it: no clash; six hex characters without one are an id's start.
REFERENCE_CODE = re.compile(r"^(?:[A-Za-z]{1,6}[- ]?)?[0-9A-Za-z]{4}[- ]?[0-9A-Za-z]{2}$")
#: What people put between a code's groups when they write down one read out, or copy one
#: from a document: spaces, hyphens, dashes (a word processor's or a phone's en dash).
_SEPARATORS = re.compile(r"[\s\-\u2010-\u2015\u2212]+")


def is_reference_code(text: str) -> bool:
    """Whether ``text`` is read as a reference code (``MKM-7QK3-9V``), not as the start of an
    id: 8 characters such as ``aad7bd35`` fit both forms, and are an id's start, as tables
    show ids."""
    value = text.strip()
    return _as_code(value) is not None and not _UUID_START.match(value.lower())


class IncidentNameError(ValueError):
    """The text names no incident, or several (a usage error)."""

    def __init__(self, message: str, candidates: tuple[Incident, ...] = ()) -> None:
        super().__init__(message)
        self.candidates = candidates


class UnknownIncidentError(IncidentNameError):
    """The text is an incident's name as people give one (a prefix of an id as tables show
    it, a reference code), but no incident has it: not found, as an unknown full id is,
    rather than a usage error."""


@dataclass(frozen=True)
class IncidentResolver:
    """Turns what a person typed into ``incidents/{id}``.

    ``list_incidents`` lists every incident (the ledger has no lookup by prefix, so a prefix is
    matched against the list: about 6,400 incidents are read in well under a second).
    ``by_reference`` looks up a reference code (None: no incident has it); without it, a
    reference code is refused with a message that says so.
    """

    list_incidents: Callable[[], Iterable[Incident]]
    by_reference: Callable[[str], str | None] | None = None

    def resolve(self, text: str) -> str:
        value = text.strip()
        bare = value.removeprefix("incidents/").lower()
        if _UUID.match(bare):
            return f"incidents/{bare}"
        code = _as_code(value)
        if code is not None and not _UUID_START.match(value.lower()):
            if self.by_reference is None:
                raise IncidentNameError(
                    _(
                        "{code} looks like a reference code; this ledger has no reference codes "
                        "yet: use the incident's id (or its first 6+ characters, as tables show)"
                    ).format(code=repr(value))
                )
            found = self.by_reference(code)
            if found is None:
                raise UnknownIncidentError(code_not_found(value))
            return found
        if not _PREFIX.match(bare):
            raise IncidentNameError(
                _(
                    "{text} is not an incident: give its reference code (XXX-XXXX-XX: 6 "
                    "characters after the prefix), incidents/ID, the ID, or its first {count}+ "
                    "characters"
                ).format(text=repr(text), count=MIN_PREFIX)
            )
        if len(bare.replace("-", "")) < MIN_PREFIX:
            raise IncidentNameError(
                _("{text} is too short: give at least {count} characters of the id").format(
                    text=repr(text), count=MIN_PREFIX
                )
            )
        matches = tuple(
            i for i in self.list_incidents() if i.name.removeprefix("incidents/").startswith(bare)
        )
        if not matches:
            raise UnknownIncidentError(
                _("no incident's id starts with {prefix}").format(prefix=repr(bare))
            )
        if len(matches) > 1:
            lines = "\n".join(
                f"  {i.name.removeprefix('incidents/')}  {i.status.value:<10} {i.title}"
                for i in matches[:20]
            )
            more = f"\n  ... and {len(matches) - 20} more" if len(matches) > 20 else ""
            raise IncidentNameError(
                _(
                    "{prefix} is ambiguous: {count} incidents start with it; give more characters:"
                ).format(prefix=repr(bare), count=len(matches))
                + f"\n{lines}{more}",
                matches,
            )
        return matches[0].name


def _as_code(value: str) -> str | None:
    """``value`` as a reference code to look up, or None when it is not one: as typed when it
    has the code's form, else with its separators made single hyphens (``MKM - 7QK3 - 9V``,
    ``MKM\u20137QK3\u20139V``), which the ledger reads as it reads hyphens."""
    if REFERENCE_CODE.match(value):
        return value
    spaced = _SEPARATORS.sub("-", value).strip("-")
    return spaced if REFERENCE_CODE.match(spaced) else None


def code_not_found(value: str) -> str:
    """A well-formed reference code no incident has, and what to do: a code heard over the
    phone may have two characters wrong that its check character does not catch."""
    return _(
        "no incident has the reference code {code}: read it back to whoever gave it, or find "
        "the incident with ledgerctl list"
    ).format(code=repr(value))

"""What a person types, checked and spelled as the ledger expects it: incident names,
reference codes (without case, with a suggestion for a typo), times; a usage error
(exit code 2) otherwise."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial

import typer

from incidentledger_client import (
    Incident,
    IncidentNotFound,
    InvalidArgument,
    LedgerClient,
    LedgerError,
    NotFound,
    PermissionDenied,
    i18n,
)
from incidentledger_client.cli import config, names, times
from incidentledger_client.cli.state import state
from incidentledger_client.i18n import N_, _, labels
from incidentledger_client.personal import Person
from incidentledger_client.types import IncidentStatus, RejectionReason

#: What a refused value is named as (``choose``'s ``what``), in the run's language.
WHATS = (
    N_("agency"),
    N_("category"),
    N_("kecamatan"),
    N_("severity"),
    N_("status"),
    N_("sort"),
    N_("grouping"),
    N_("reason"),
    N_("action"),
)


def incident_name(ctx: typer.Context, value: str) -> str:
    """``incidents/ID`` from the full name, the id, a unique prefix of 6+ characters (as tables
    show them) or a reference code (MKM-7QK3-9V); a usage error otherwise (an ambiguous
    prefix lists the candidates; a mistyped code is the ledger's INVALID_ARGUMENT)."""
    return incident_names(ctx, [value])[0]


def incident_names(ctx: typer.Context, values: Sequence[str]) -> list[str]:
    """:func:`incident_name` of each value, listing the incidents at most once."""
    resolver = Incidents(ctx).resolver()
    found: list[str] = []
    for value in values:
        try:
            found.append(resolver.resolve(value))
        except names.UnknownIncidentError as error:
            raise _unknown(error) from None
        except names.IncidentNameError as error:
            raise typer.BadParameter(str(error), param_hint="INCIDENT") from None
        except InvalidArgument as error:
            # Said as typed, in the run's language, as triage says it (the ledger's message
            # names its lookup's field, "reference", and is English).
            raise _not_a_code(value, error) from None
    return found


class Incidents:
    """The ledger's incidents as people name them, for one command: every incident is listed
    at most once, when a prefix needs it (the ledger has no lookup by prefix, see names.py)
    or many reference codes are wanted."""

    def __init__(self, ctx: typer.Context) -> None:
        self._state = state(ctx)
        self._ledger = self._state.ledger()
        self._listed: list[Incident] | None = None

    def listed(self) -> list[Incident]:
        if self._listed is None:
            self._listed = list(self._ledger.list_incidents(page_size=1000))
            self._remember(self._listed)
        return self._listed

    def resolver(self) -> names.IncidentResolver:
        return names.IncidentResolver(
            list_incidents=self.listed,
            by_reference=self._by_reference,
        )

    def _by_reference(self, code: str) -> str:
        incident = _find_by_reference(self._ledger, code)
        self._remember([incident])
        return incident.name

    def _remember(self, incidents: Sequence[Incident]) -> None:
        """The codes of incidents looked up anyway, for the reply to say (no extra call)."""
        self._state.references.update({i.name: i.reference for i in incidents if i.reference})

    def each_name(self, values: Sequence[str]) -> list[str | LedgerError]:
        """:func:`incident_name` of each value on its own: the name, or the error that says
        why the value names no incident (as typed). One typo in a batch then holds back only
        its own item, and says which one it is. Errors that are not about the value
        (unreachable ledger, refused token) still end the command."""
        resolver = self.resolver()
        found: list[str | LedgerError] = []
        for value in values:
            try:
                found.append(resolver.resolve(value))
            except names.UnknownIncidentError as error:
                found.append(_unknown(error))
            except names.IncidentNameError as error:
                found.append(InvalidArgument("INVALID_ARGUMENT", "INVALID_FIELD", str(error)))
            except InvalidArgument as error:
                # A code the ledger cannot read (mistyped, another ledger's prefix, a letter
                # no code has): this item's own fault, as a prefix that fits nothing is.
                found.append(_not_a_code(value, error))
            except IncidentNotFound as error:
                found.append(error)
        return found

    def references(self, wanted: Sequence[str]) -> dict[str, str]:
        """The reference code of each incident named in ``wanted`` that has one: a few looked
        up one by one, more from the one listing (which a prefix may have made already)."""
        if self._listed is None and len(wanted) <= _FEW:
            found = {}
            for name in wanted:
                try:
                    found[name] = self._ledger.get_incident(name).reference
                except (NotFound, PermissionDenied):
                    continue  # nothing to show for it: the table says "-"
            return {name: code for name, code in found.items() if code}
        return {i.name: i.reference for i in self.listed() if i.reference}


#: Up to this many reference codes are looked up one by one (a call each), more by listing.
_FEW = 20


def _unknown(error: names.UnknownIncidentError) -> IncidentNotFound:
    """A prefix (or a code) that no incident has, as the ledger says an unknown id: not found
    (exit code 3), not a usage error."""
    return IncidentNotFound("NOT_FOUND", "INCIDENT_NOT_FOUND", str(error))


def _not_a_code(value: str, error: InvalidArgument) -> InvalidArgument:
    """The ledger's refusal of a reference code, said as the person typed it: a mistyped one
    (its check character does not match), or one that is no code of this ledger (another
    prefix, a character no code has). Any other refusal is raised as it is: it is not about
    the value."""
    if error.reason == "REFERENCE_MISTYPED":
        return _mistyped(value, error)
    if error.field != "reference":
        raise error
    why = error.message.removeprefix("reference: ")
    message = _("{code} is not a reference code of this ledger ({why})").format(
        code=repr(value), why=why
    )
    metadata = {k: v for k, v in error.metadata.items() if k != "field"}
    return InvalidArgument(error.code, error.reason, message, metadata, error.domain)


def _mistyped(value: str, error: InvalidArgument) -> InvalidArgument:
    # The ledger's message names its lookup's request field ("reference: ..."), which the
    # person never typed: said as the value they typed, in the run's language.
    message = _(
        "{code} is mistyped: a character is wrong or two are swapped (its check "
        "character does not match): read it back to whoever gave it, or find the incident "
        "with ledgerctl list"
    ).format(code=repr(value))
    metadata = {k: v for k, v in error.metadata.items() if k != "field"}
    return InvalidArgument(error.code, error.reason, message, metadata, error.domain)


def _find_by_reference(ledger: LedgerClient, code: str) -> Incident:
    try:
        return ledger.get_incident(reference=code)
    except IncidentNotFound as error:
        # A well-formed code no incident has is not found (exit code 3), as an unknown id is,
        # not a usage error; said as the person typed it, an incident argument, which the
        # lookup's request field ("reference") is not.
        metadata = {k: v for k, v in error.metadata.items() if k != "field"}
        raise IncidentNotFound(
            error.code,
            error.reason,
            names.code_not_found(code),
            metadata,
            error.domain,
        ) from None


def choose(value: str, known: Sequence[str], what: str, param: str) -> str:
    """``value`` as spelled in ``known``, compared without case; else a usage error with a
    "did you mean" suggestion and the known values."""
    folded = value.strip().lower()
    for candidate in known:
        if candidate.lower() == folded:
            return candidate
    raise typer.BadParameter(
        _("unknown {what} {value}{suggestion}; known: {known}").format(
            what=_(what),
            value=repr(value),
            suggestion=config.suggest(value, known),
            known=", ".join(known),
        ),
        param_hint=param,
    )


#: The statuses and rejection reasons as the API codes them (``list --status``, ``reject``).
STATUSES = tuple(s.value for s in IncidentStatus if s is not IncidentStatus.UNSPECIFIED)
REJECTION_REASONS = tuple(r.value for r in RejectionReason if r is not RejectionReason.UNSPECIFIED)


def _in_every_language(word: Callable[[], str]) -> tuple[str, ...]:
    """``word()`` said in each language ledgerctl speaks (a label of the catalog)."""
    said = []
    for language in i18n.LANGUAGES:
        with i18n.using(language):
            said.append(word())
    return tuple(said)


def _worded(ctx: typer.Context, kind: str) -> list[tuple[str, tuple[str, ...]]]:
    """Each code of ``kind`` and the names that stand for it: what the tables show of it
    (of a status, the catalog's words: :func:`_regency_words` has the regency's)."""
    if kind == "reason":
        return [
            (r, _in_every_language(partial(labels.rejection, r, worded=True)))
            for r in REJECTION_REASONS
        ]
    if kind == "status":
        return [(s, _in_every_language(partial(labels.status, s, worded=True))) for s in STATUSES]
    ref = state(ctx).reference()
    entries: dict[str, list[tuple[str, tuple[str, ...]]]] = {
        "agency": [(a.code, (a.name,)) for a in ref.agencies],
        "kecamatan": [(k.code, (k.name,)) for k in ref.kecamatan],
        "category": [(c.code, (c.name, *c.names.values())) for c in ref.categories],
        "severity": [(v.code, (v.name, *v.names.values())) for v in ref.severities],
    }
    return entries[kind]


def _regency_words(ctx: typer.Context) -> dict[str, tuple[str, ...]]:
    """The statuses as the regency's reference data words them (another regency's words,
    which the tables show), by code; none when the ledger cannot say: a status that is no
    word of the catalog is then refused as a typo, as it was before anything was asked."""
    try:
        ref = state(ctx).reference()
    except LedgerError:
        return {}
    return {s.code: (s.name, *s.names.values()) for s in ref.statuses}


def _named(listed: list[tuple[str, tuple[str, ...]]], folded: str) -> str | None:
    """The one code whose names include ``folded`` (casefolded), or None."""
    named = {c for c, names in listed if folded in (n.casefold() for n in names if n)}
    if len(named) == 1 and folded not in (c.casefold() for c, _ in listed):
        return named.pop()
    return None


def code(ctx: typer.Context, kind: str, value: str, param: str) -> str:
    """A code (agency, kecamatan, category, severity, status, rejection reason: ``reason``)
    checked and spelled as the ledger lists it: codes are case-insensitive, a name that the
    tables show stands for its code (``"Malin Deman"``; a category, severity, status or
    rejection reason in either language: ``Tinggi``, ``Terverifikasi``, ``Hoaks``; a status as
    the regency's reference data words it), and a typo gets a suggestion."""
    folded = value.strip().casefold()
    fixed = {"status": STATUSES, "reason": REJECTION_REASONS}.get(kind, ())
    for known in fixed:
        if known.casefold() == folded:
            return known  # a code of the API: no need to ask the ledger for its words
    listed = _worded(ctx, kind)
    found = _named(listed, folded)
    if found is None and kind == "status":
        # Asked of the ledger only for a word the catalog does not know.
        regency = _regency_words(ctx)
        found = _named([(s, (*words, *regency.get(s, ()))) for s, words in listed], folded)
    if found is not None:
        return found
    return choose(value, [c for c, _ in listed], kind, param)


def maybe_code(ctx: typer.Context, kind: str, value: str | None, param: str) -> str | None:
    return code(ctx, kind, value, param) if value else value


def codes(ctx: typer.Context, kind: str, values: list[str] | None, param: str) -> list[str]:
    """The codes of a repeatable option; a value with commas (``ipuh,penarik``, as people
    write a list) that is not itself a name is taken as several, each checked."""
    found = []
    for value in values or []:
        try:
            found.append(code(ctx, kind, value, param))
        except typer.BadParameter:
            if "," not in value:
                raise
            found.extend(code(ctx, kind, part, param) for part in value.split(",") if part.strip())
    return found


def desa_name(ctx: typer.Context, kecamatan: str, value: str) -> str:
    """A desa of the kecamatan, compared without case."""
    if not value:
        return value
    ref = state(ctx).reference()
    listed = next((k.desa for k in ref.kecamatan if k.code == kecamatan), ())
    what = _("desa of {kecamatan}").format(kecamatan=kecamatan)
    return choose(value, listed, what, "--desa") if listed else value


def moment(ctx: typer.Context, value: str | None, param: str) -> datetime | None:
    """A time typed by a person (ISO, a zone, relative forms), in UTC; None stays None."""
    if value is None:
        return None
    try:
        return times.parse_time(value, state(ctx).zone().key)
    except times.TimeError as error:
        raise typer.BadParameter(str(error), param_hint=param) from None


TIME_HELP = (
    "e.g. 2026-11-28T10:00, '2026-11-28 10:00 WIB', -2h, 'yesterday 18:00'; without a zone in "
    "the configured zone (by default the regency's, as the ledger says it)"
)


def parse_person(text: str) -> Person:
    """``NAME|PHONE|NIK|ADDRESS`` (trailing parts optional), as --witness takes it."""
    parts = [p.strip() for p in text.split("|")]
    if len(parts) > 4:
        raise typer.BadParameter(_("a person is NAME|PHONE|NIK|ADDRESS"))
    parts += [""] * (4 - len(parts))
    return Person(name=parts[0], phone=parts[1], nik=parts[2], address=parts[3])

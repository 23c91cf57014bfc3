"""ledgerctl's output layer: human tables and timelines (rich), JSON, the map as SVG.

Colour only on a terminal (rich decides; ``NO_COLOR`` is honoured). ``--json`` writes one
JSON document to stdout. Everything ledgerctl prints goes through this module.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from xml.sax.saxutils import escape

from rich.cells import cell_len
from rich.console import Console
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from incidentledger_client.cli.names import SHORT_ID
from incidentledger_client.cli.tables import CONTROLS, Column, FittedTable, Parts, WideOrLong
from incidentledger_client.i18n import N_, _, format_number, format_time, labels, ngettext
from incidentledger_client.types import (
    ChainFailure,
    CommandResult,
    DecisionInForce,
    DurationStats,
    EventFilter,
    Incident,
    IncidentEvent,
    KecamatanScore,
    ReferenceData,
    ResponseTimes,
    TriageResult,
    VulnerabilityMap,
)

BAND_STYLE = {"high": "bold red", "medium": "yellow", "low": "green"}
BAND_FILL = {"high": "#d73027", "medium": "#fdae61", "low": "#a6d96a"}
SEVERITY_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "green"}
STATUS_STYLE = {
    "REPORTED": "cyan",
    "VERIFIED": "blue",
    "ASSIGNED": "magenta",
    "RESPONDING": "bold magenta",
    "RESOLVED": "green",
    "CLOSED": "dim green",
    "REJECTED": "dim red",
    "MERGED": "dim",
    "REOPENED": "bold yellow",
}
#: The groupings of the response times (``--by``), as their column is headed.
GROUPINGS = (N_("agency"), N_("severity"), N_("category"), N_("kecamatan"))
#: The reference data's names of the statuses, by code, then by language
#: (``ReferenceData.status_names()``): the regency's words, preferred to the catalog's.
StatusNames = Mapping[str, Mapping[str, str]]
#: The kecamatan's names by code (``ReferenceData.kecamatan_names()``): a table shows
#: ``Malin Deman`` where the ledger says ``malin_deman`` (``--json`` keeps the code).
KecamatanNames = Mapping[str, str]
#: The board's columns: the statuses of open work, in lifecycle order.
BOARD_STATUSES = ("REPORTED", "VERIFIED", "ASSIGNED", "RESPONDING", "REOPENED", "RESOLVED")


class OutputClosed(Exception):  # noqa: N818 - a condition, not a fault
    """Standard output was closed by its reader (``ledgerctl show X | head -1``): ledgerctl
    ends quietly. Not an OSError, which typer turns into exit code 1."""


class _Shown(Console):
    """A console that prints the ledger's texts as text: a title, a description or an error
    quoting a value may hold control characters (anyone who reports writes them), which
    printed raw would drive the reader's terminal (ESC [ 2 J clears it, ESC ] sets its
    title, a carriage return overwrites the line). They are shown as visible characters;
    rich's own styles and cursor moves are written as before."""

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        return super()._render_buffer(
            Segment(text.translate(CONTROLS), style, control) if control is None else segment
            for segment in buffer
            for text, style, control in (segment,)
        )


class _Stdout(_Shown):
    def on_broken_pipe(self) -> None:
        # rich's own answer is exit code 1; ledgerctl ends as a closed pipe ends other tools.
        self.quiet = True
        raise OutputClosed


def console() -> Console:
    """The stdout console (looked up per call, so redirected stdout is honoured)."""
    # Piped output is not cut to 80 columns ($COLUMNS still wins).
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
    # No markup: a value such as a description's "[/b]" is text (parsed, it was an error).
    return _Stdout(file=sys.stdout, soft_wrap=False, width=width, markup=False)


def _write(text: str, *, flush: bool = True) -> None:
    """``text`` on stdout; :class:`OutputClosed` when its reader has gone."""
    try:
        sys.stdout.write(text)
        if flush:
            sys.stdout.flush()
    except BrokenPipeError:
        raise OutputClosed from None


def error_console() -> Console:
    return _Shown(file=sys.stderr, soft_wrap=True, markup=False)


def to_jsonable(value: Any) -> Any:
    """Dataclasses, enums, datetimes and bytes as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def event_json(event: Any) -> dict[str, Any]:
    """An event as JSON, its payload decoded (not the payload_json string)."""
    value: dict[str, Any] = to_jsonable(event)
    value.pop("payload_json", None)
    value["payload"] = event.payload
    return value


def emit_json(value: Any) -> None:
    _write(json.dumps(to_jsonable(value), indent=2, ensure_ascii=False) + "\n")


def short(name: str) -> str:
    return name.removeprefix("incidents/")


def short_id(name: str) -> str:
    """The id as tables show it: its first characters, enough to name it on the command line."""
    return short(name)[:SHORT_ID]


def id_column(table: Table, title: str = N_("incident")) -> None:
    """An id column that never wraps an id over two lines."""
    table.add_column(_(title), no_wrap=True, min_width=SHORT_ID)


def when(value: datetime | None, zone: tzinfo = UTC) -> str:
    """A time for people, in their zone and naming it (2026-11-28 17:05:00 WIB; in
    Indonesian 28 Nov 2026 17.05.00 WIB)."""
    if value is None:
        return "-"
    return format_time(value, zone)


def styled(value: str, styles: dict[str, str]) -> Text:
    return Text(value, style=styles.get(value, ""))


def status_text(code: str, statuses: StatusNames | None = None) -> Text:
    """A status as people read it (in the regency's words when ``statuses`` has them), in
    its colour."""
    return Text(labels.status(code, (statuses or {}).get(code)), style=STATUS_STYLE.get(code, ""))


def severity_text(code: str) -> Text:
    return Text(labels.severity(code), style=SEVERITY_STYLE.get(code, ""))


def kecamatan_name(code: str, names: KecamatanNames | None = None) -> str:
    """A kecamatan as people name it (``Malin Deman``), as the situation room does; its
    code when the reference data does not name it (a kecamatan it no longer has)."""
    return (names or {}).get(code) or code


#: The categories' names in the current language, by code (:func:`category_names`): a table
#: shows the name where a program reads the code.
CategoryNames = Mapping[str, str]


def category_names(reference: ReferenceData) -> dict[str, str]:
    """Each category's name as people read it now ("Pengumpulan massa" in Indonesian,
    "Mass gathering" in English), by code."""
    return {c.code: labels.category(c.code, c.name, c.names) for c in reference.categories}


def category_name(code: str, names: CategoryNames | None = None) -> str:
    """A category by its name; its code where the reference data does not name it."""
    return (names or {}).get(code) or code


def place(incident: Incident, kecamatan: KecamatanNames | None = None) -> Parts:
    """Where: the kecamatan by its name, the desa, the TPS (``Malin Deman / Lubuk Bento /
    TPS 05``), broken over lines in a table only between them."""
    loc = incident.location
    return Parts((kecamatan_name(loc.kecamatan, kecamatan), loc.desa, loc.tps))


def scope(decision: DecisionInForce, kecamatan: KecamatanNames | None = None) -> Parts:
    """Where a decision applies: its kecamatan by name and its desa when it names one
    (``Kota Mukomuko / Pasar Mukomuko``), or the whole regency, as the situation room says."""
    where = (
        kecamatan_name(decision.kecamatan, kecamatan)
        if decision.kecamatan
        else _("the whole regency")
    )
    return Parts((where, decision.desa))


def command_result(out: Console, verb: str, result: CommandResult, reference: str = "") -> None:
    """A command's reply, naming the incident by its reference code (the report's, else
    ``reference``, the one the run looked up) as officers read it out; by its name when
    neither is known."""
    out.print(
        Text.assemble(
            (verb, "bold"),
            f" {result.reference or reference or result.incident} "
            + _("(version {version}, position {position}, event {event})").format(
                version=result.version, position=result.position, event=result.event_id
            ),
        )
    )


def incidents_table(
    incidents: Iterable[Incident],
    title: str | None = None,
    statuses: StatusNames | None = None,
    kecamatan: KecamatanNames | None = None,
    categories: CategoryNames | None = None,
) -> FittedTable:
    """The incidents, one a line, under ``title`` (translated by the caller). In a narrow
    terminal the category goes first, then the place, the lead, the severity and the id
    (the reference code, the title and the status stay)."""
    table = FittedTable(
        [
            Column(_("incident"), drop=1, wrap=False, options={"min_width": SHORT_ID}),
            Column(_("reference"), wrap=False),
            Column(_("title")),
            Column(_("status")),
            Column(_("severity"), drop=2),
            Column(_("category"), drop=5),
            Column(_("place"), drop=4),
            Column(_("lead"), drop=3),
        ],
        title=_("Incidents") if title is None else title,
        show_lines=False,
    )
    for incident in incidents:
        if incident.chain_failure is not None:
            table.add_row(
                short_id(incident.name),
                "-",
                Text(chain_failure_text(incident.chain_failure), style="bold red"),
                "-",
                "-",
                "-",
                "-",
                "-",
            )
            continue
        table.add_row(
            short_id(incident.name),
            incident.reference or "-",
            incident.title,
            status_text(incident.status.value, statuses),
            severity_text(incident.severity),
            category_name(incident.category, categories),
            place(incident, kecamatan),
            incident.lead_agency or "-",
        )
    return table


def filter_text(event_filter: EventFilter) -> str:
    """A webhook's or a subscription's filter in a few words ("severity >= high; categories:
    flood"; "everything" when it matches every event)."""
    parts = [
        f"{label}: {', '.join(values)}"
        for label, values in (
            (_("kecamatan"), event_filter.kecamatan),
            (_("categories"), event_filter.categories),
            (_("event types"), event_filter.event_types),
            (_("agencies"), event_filter.agencies),
        )
        if values
    ]
    if event_filter.min_severity:
        parts.insert(0, _("severity >= {severity}").format(severity=event_filter.min_severity))
    return "; ".join(parts) or _("everything")


def chain_failure_text(failure: ChainFailure) -> str:
    """A listed incident whose stored history fails its hash chain, in the place of its
    title: nothing of a changed history is shown."""
    if failure.version:
        return _("changed in the store: fails its hash chain at version {version}").format(
            version=failure.version
        )
    return _("changed in the store: fails its hash chain")


def chain_failures_notice(incidents: Iterable[Incident]) -> str | None:
    """Under a list or a board: the incidents whose stored history fails its hash chain
    (not shown, nor counted on a board), and who can act on it; None when there are none."""
    broken = [short_id(i.name) for i in incidents if i.chain_failure is not None]
    if not broken:
        return None
    return ngettext(
        "{count} incident cannot be shown: its stored history was changed outside the "
        "ledger and fails its hash chain ({ids}). Tell the ledger's operator "
        "(`ledger-audit verify --store` names the change).",
        "{count} incidents cannot be shown: their stored histories were changed outside the "
        "ledger and fail their hash chains ({ids}). Tell the ledger's operator "
        "(`ledger-audit verify --store` names the changes).",
        len(broken),
    ).format(count=format_number(len(broken)), ids=", ".join(broken))


def more_incidents(shown: int, page_token: str) -> str:
    """Under a list that ``--limit`` cut short: more incidents match, and how to see them
    (the next ones by the page token, or more at once)."""
    count = ngettext(
        "{count} incident shown; more match.", "{count} incidents shown; more match.", shown
    ).format(count=format_number(shown))
    following = _("The next ones: the same command with --page-token {token}").format(
        token=page_token
    )
    more = _("More at once: a larger --limit (--limit 0 for all).")
    return f"{count}\n{following}\n{more}"


#: The outcomes of a triage item, as people read them.
TRIAGE_OUTCOMES = {
    "RECORDED": N_("recorded"),
    "DUPLICATE": N_("recorded before"),
    "CONFLICT": N_("request id used before"),
    "INVALID": N_("invalid"),
    "REFUSED": N_("refused"),
}
TRIAGE_STYLE = {"RECORDED": "green", "DUPLICATE": "dim green", "REFUSED": "red", "INVALID": "red"}


@dataclasses.dataclass(frozen=True)
class TriageLine:
    """One incident of a triage as the person gave it, with what became of it."""

    #: The incident as typed (``MKM-7QK3-9V@2``, ``0b6f12``).
    text: str
    #: Its line in the file, or None for an argument.
    line: int | None
    result: TriageResult
    #: The incident's reference code, "" when not known.
    reference: str = ""


def triage_table(lines: Sequence[TriageLine]) -> Table:
    """One line per triage item: the incident, its code, what became of it and why; an item
    that names no incident shows what was typed, and one that was not recorded its line in
    the file, so that a typo in a long file can be found."""
    table = Table(title=_("Triage ({count})").format(count=len(lines)))
    id_column(table)
    table.add_column(_("reference"), no_wrap=True)
    table.add_column(_("outcome"))
    table.add_column(_("details"), overflow="fold")
    for line in lines:
        result = line.result
        outcome = result.outcome.value
        if result.result is not None:
            details = _("version {version}, position {position}").format(
                version=result.result.version, position=result.result.position
            )
        elif result.error is not None:
            details = result.error.localized_message or result.error.message
            if line.line is not None:
                details = _("line {line}: {details}").format(line=line.line, details=details)
        else:
            details = "-"
        table.add_row(
            short_id(result.name) if result.name else line.text,
            line.reference or "-",
            Text(_(TRIAGE_OUTCOMES.get(outcome, outcome)), style=TRIAGE_STYLE.get(outcome, "")),
            Text(details),
        )
    return table


def triage_json(line: TriageLine) -> dict[str, Any]:
    """A triage item's result as JSON: what was typed and its line in the file (None for an
    argument), its error as code, reason, message and metadata."""
    result = line.result
    error = result.error
    return {
        "input": line.text,
        "line": line.line,
        "incident": result.name,
        "reference": line.reference,
        "outcome": result.outcome.value,
        "result": to_jsonable(result.result),
        "error": None
        if error is None
        else {
            "code": error.code,
            "reason": error.reason,
            "message": error.message,
            "metadata": error.metadata,
        },
    }


def notification_line(
    event: IncidentEvent,
    incident: Incident,
    zone: tzinfo,
    statuses: StatusNames | None = None,
    kecamatan: KecamatanNames | None = None,
) -> Text:
    """One line of ``watch``: when, what happened, to which incident, by whom; for a
    decision, what was decided and when it starts and ends (as ``show`` says it)."""
    line = Text.assemble(
        f"{when(event.record_time, zone)} ",
        (labels.event_type(event.type), "bold"),
        f" {short_id(incident.name)} {incident.reference or '-'} {incident.title!r} ",
        status_text(incident.status.value, statuses),
        " ",
        severity_text(incident.severity),
        " "
        + _("{kecamatan} by {agency}").format(
            kecamatan=kecamatan_name(incident.location.kecamatan, kecamatan),
            agency=event.actor.agency,
        ),
    )
    if event.type == "DecisionRecorded":
        payload = event.payload

        def at(key: str) -> str:
            value = str(payload.get(key, ""))
            return _payload_time(value, zone) or value

        line.append(
            " — "
            + _("decision ({forum}, from {start} until {until}): {summary}").format(
                forum=payload.get("forum", ""),
                start=at("valid_from"),
                until=at("valid_until"),
                summary=payload.get("summary", ""),
            )
        )
    return line


#: Roles of the people a report names, as the ledger names them, for people.
ROLES = {"reporter": N_("reporter"), "witness": N_("witness")}


def role_name(role: str) -> str:
    """A data subject's role in the reader's language (an unknown one as it is)."""
    return _(ROLES[role]) if role in ROLES else role


def sealed_people(value: object) -> str | None:
    """People sealed in a payload (each a dict with its ``role`` and ``ciphertext``), by role
    ("sealed: reporter, witness"); None for any other value. Their ciphertext, nonce and
    subject ids say nothing to a reader of the timeline."""
    items: list[object] = value if isinstance(value, list) else [value]
    people = [i for i in items if isinstance(i, dict) and "ciphertext" in i]
    if not people or len(people) != len(items):
        return None
    named = [role_name(str(p.get("role", ""))) for p in people]
    return _("sealed: {roles}").format(roles=", ".join(named))


#: The payload fields that hold a time (besides the ``*_time`` ones), and the correctable
#: fields whose corrections' old and new values do.
PAYLOAD_TIMES = frozenset({"valid_from", "valid_until", "occurred_at"})


def payload_summary(event: IncidentEvent, zone: tzinfo = UTC) -> str:
    payload = event.payload
    times = set(PAYLOAD_TIMES)
    if payload.get("field") in PAYLOAD_TIMES:
        times |= {"old_value", "new_value"}
    parts = []
    for key, value in payload.items():
        if value in ("", None, [], {}) or key in {"location"}:
            continue
        text = sealed_people(value)
        if text is None and (key.endswith("_time") or key in times) and isinstance(value, str):
            text = _payload_time(value, zone)
        if text is None:
            # A correction's old and new values are of the field it corrects.
            of = payload.get("field") if key in ("old_value", "new_value") else key
            text = payload_value(str(of), value)
        parts.append(f"{labels.field(key)}={text}")
    return "; ".join(parts)


#: The payload fields whose codes have a label for people (``severity=high`` reads
#: ``keparahan=tinggi`` in Indonesian, as the severity does everywhere else).
PAYLOAD_LABELS = {"severity": labels.severity, "rejection_reason": labels.rejection}


def payload_value(key: str, value: object) -> str:
    """A value of an event's payload for people: a yes or no and a labelled code in the
    reader's language (English as the payload has them), anything else as it is."""
    if isinstance(value, bool):
        return labels.boolean(value)
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if key in PAYLOAD_LABELS and isinstance(value, str):
        return PAYLOAD_LABELS[key](value)
    if key == "field" and isinstance(value, str):  # the field a correction corrects
        return labels.field(value)
    return str(value)


def _payload_time(value: str, zone: tzinfo) -> str | None:
    """A time a payload holds (a device's record time), shown as every other time; None
    when it is not one."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when(moment, zone) if moment.tzinfo is not None else None


def occurred(event: IncidentEvent, zone: tzinfo) -> str | None:
    """When the event happened, for people, where that is not when it was recorded (a
    backlog synced days later, a step entered afterwards); None otherwise."""
    if event.occur_time is None or event.record_time is None:
        return None
    happened = when(event.occur_time, zone)
    return None if happened == when(event.record_time, zone) else happened


def incident_detail(
    out: Console,
    incident: Incident,
    events: Sequence[IncidentEvent],
    zone: tzinfo = UTC,
    statuses: StatusNames | None = None,
    kecamatan: KecamatanNames | None = None,
    categories: CategoryNames | None = None,
) -> None:
    # The full name, or where a line is too narrow for it (it would be cut) the bare id,
    # which every command takes as well.
    name = incident.name if cell_len(incident.name) + 2 < out.width else short(incident.name)
    out.print(
        Text.assemble(
            (incident.title, "bold"),
            "  " + _("({name}, version {version})").format(name=name, version=incident.version),
        )
    )
    if incident.reference:
        out.print(_("reference {reference}").format(reference=incident.reference))
    out.print(
        Text.assemble(
            _("status") + " ",
            status_text(incident.status.value, statuses),
            "  " + _("severity") + " ",
            severity_text(incident.severity),
            "  "
            + _("category {category}  escalation {level}").format(
                category=category_name(incident.category, categories),
                level=incident.escalation_level,
            ),
        )
    )
    out.print(
        _("place {place}  reported by {agency}").format(
            place=place(incident, kecamatan).plain, agency=incident.reporter.agency
        ),
        markup=False,
    )
    report = next((e for e in events if e.type == "Reported"), None)
    happened = occurred(report, zone) if report is not None else None
    if report is not None and happened is not None:
        out.print(
            _("occurred {occurred}  recorded {recorded}").format(
                occurred=happened, recorded=when(report.record_time, zone)
            )
        )
    supporting = ", ".join(incident.supporting_agencies) or "-"
    out.print(
        _("lead {lead}  supporting {supporting}").format(
            lead=incident.lead_agency or "-", supporting=supporting
        )
    )
    if incident.pending_handover:
        h = incident.pending_handover
        out.print(
            _("pending handover {source} -> {target} ({reason})").format(
                source=h.from_agency, target=h.to_agency, reason=h.reason
            ),
            markup=False,
        )
    if incident.rejection_reason.value != "UNSPECIFIED":
        reason = labels.rejection(incident.rejection_reason.value)
        out.print(_("rejected as {reason}").format(reason=reason))
    if incident.merged_into and incident.merged_into_reference:
        out.print(
            _("merged into {name} ({reference})").format(
                name=incident.merged_into, reference=incident.merged_into_reference
            )
        )
    elif incident.merged_into:
        out.print(_("merged into {name}").format(name=incident.merged_into))
    for decision in incident.decisions:
        # Both ends: a decision that starts later must not read as in force already.
        out.print(
            _("decision ({forum}, from {start} until {until}): {summary}").format(
                forum=decision.forum,
                start=when(decision.valid_from, zone),
                until=when(decision.valid_until, zone),
                summary=decision.summary,
            ),
            markup=False,
        )
    if incident.data_subjects:
        out.print(_("people named: {people}").format(people=people_named(incident)))
    if incident.legal_hold_agencies:
        out.print(
            _("legal hold by {agencies}").format(agencies=", ".join(incident.legal_hold_agencies))
        )
    if incident.description:
        out.print(incident.description)
    out.print(timeline(events, zone))


def people_named(incident: Incident) -> str:
    """The people the report names, never their data: whether each one's data is still
    there, the witnesses counted by state ("reporter: present, 2 witnesses: erased")."""
    states = {"PRESENT": _("present"), "ERASED": _("erased")}
    parts = []
    for subject in incident.data_subjects:
        if subject.role == "reporter":
            who = _("reporter (anonymous)") if subject.anonymous else _("reporter")
            parts.append(_("{who}: {state}").format(who=who, state=states[subject.state.value]))
    for state, word in states.items():
        count = sum(
            1 for s in incident.data_subjects if s.role == "witness" and s.state.value == state
        )
        if count:
            who = ngettext("{count} witness", "{count} witnesses", count).format(count=count)
            parts.append(_("{who}: {state}").format(who=who, state=word))
    return ", ".join(parts)


def timeline(
    events: Sequence[IncidentEvent], zone: tzinfo = UTC, *, ids: bool = False
) -> FittedTable:
    """An incident's events, oldest first; ``ids``: with each event's id, its first
    characters as ``correct --event`` takes them (``history --ids``)."""
    # Fitted, so that no word of a detail (kode_referensi=MKM-3V73-PV) is broken over two
    # lines; the author breaks after the agency ("desk_pilkada /" "dev-desk_pilkada").
    table = FittedTable(
        [
            Column("v", wrap=False, justify="right"),
            *([Column(_("event id"), wrap=False)] if ids else []),
            Column(_("recorded")),
            Column(_("event"), style="bold"),
            # The least needed, left out first where the rest would not fit whole (a narrow
            # terminal, the event ids beside them).
            Column(_("by"), drop=1),
            Column(_("details")),
        ],
        title=_("Timeline"),
        show_header=True,
        box=None,
        pad_edge=False,
    )
    for event in events:
        by = (
            f"{event.actor.agency} / {event.actor.officer}"
            if event.actor.officer
            else event.actor.agency
        )
        details = payload_summary(event, zone)
        happened = occurred(event, zone)
        if happened is not None:
            said = _("occurred {time}").format(time=happened)
            details = f"{said}; {details}" if details else said
        # The envelope's reason is often a payload field too (a resolution): said once.
        if event.reason and event.reason not in event.payload.values():
            details = f"{details} ({event.reason})" if details else event.reason
        table.add_row(
            str(event.version),
            *([event.event_id[:SHORT_ID]] if ids else []),
            when(event.record_time, zone),
            labels.event_type(event.type),
            by,
            details,
        )
    return table


def history_table(events: Iterable[IncidentEvent], zone: tzinfo = UTC) -> Table:
    table = Table(title=_("History"))
    for column in (N_("position"), N_("recorded")):
        table.add_column(_(column), overflow="fold")
    id_column(table)
    table.add_column("v", overflow="fold")
    for column in (N_("event"), N_("by")):
        table.add_column(_(column), overflow="fold")
    for event in events:
        table.add_row(
            str(event.position),
            when(event.record_time, zone),
            short_id(event.incident),
            str(event.version),
            labels.event_type(event.type),
            event.actor.agency,
        )
    return table


def sort_board(incidents: Sequence[Incident], by: str, ranks: dict[str, int]) -> list[Incident]:
    """Open work in the order asked for: severity (most severe, then oldest, first), age
    (oldest first), updated (latest change first) or status (lifecycle order, then oldest)."""
    far = datetime.max.replace(tzinfo=UTC)

    def age(i: Incident) -> datetime:
        return i.create_time or far

    if by == "age":
        return sorted(incidents, key=age)
    if by == "updated":
        return sorted(incidents, key=lambda i: i.update_time or far, reverse=True)
    if by == "status":
        order = {s: n for n, s in enumerate(BOARD_STATUSES)}
        return sorted(incidents, key=lambda i: (order.get(i.status.value, 99), age(i)))
    return sorted(incidents, key=lambda i: (-ranks.get(i.severity, 0), age(i)))


def board(
    incidents: Sequence[Incident],
    counts: dict[str, int],
    zone: tzinfo,
    statuses: StatusNames | None = None,
    kecamatan: KecamatanNames | None = None,
) -> FittedTable:
    """The board: one line per incident (given already sorted and limited); the title counts
    every open incident per status."""
    summary = "  ".join(
        f"{labels.status(status, (statuses or {}).get(status))} "
        f"({format_number(counts.get(status, 0))})"
        for status in BOARD_STATUSES
    )
    # The code people read out over the phone (MKM-7QK3-9V), which every command takes;
    # the id's first characters for an incident recorded before codes existed. In a narrow
    # terminal the place goes first, then the severity (the board is in severity order by
    # default), then the lead ("is it ours?" stays longest).
    table = FittedTable(
        [
            Column(_("incident"), wrap=False, options={"min_width": SHORT_ID}),
            Column(_("severity"), drop=2, wrap=False),
            Column(_("status")),
            Column(_("reported")),
            Column(_("title")),
            Column(_("place"), drop=3),
            Column(_("lead"), drop=1),
        ],
        title=_("Board (open work)") + f"\n{summary}",
        title_justify="left",
    )
    for i in incidents:
        table.add_row(
            i.reference or short_id(i.name),
            severity_text(i.severity),
            status_text(i.status.value, statuses),
            reported_text(i, zone),
            i.title,
            place(i, kecamatan),
            i.lead_agency or "-",
        )
    return table


#: How long after it happened a report is recorded for the board to say when it happened.
LATE_REPORT = timedelta(hours=1)


def reported_text(incident: Incident, zone: tzinfo) -> str:
    """When the incident was reported, and when it happened if that was well before (a field
    device's backlog handed over days on read as news)."""
    reported = local_time(incident.create_time, zone)
    happened, created = incident.occur_time, incident.create_time
    if happened is None or created is None or created - happened <= LATE_REPORT:
        return reported
    return reported + "\n" + _("(happened {time})").format(time=local_time(happened, zone))


def local_time(value: datetime | None, zone: tzinfo, *, seconds: bool = False) -> str:
    """A time for people: in their zone, with the zone's name (e.g. 2026-11-27 14:05 WIB;
    ``seconds``: 14:05:09 WIB, where events come seconds apart)."""
    if value is None:
        return "-"
    return format_time(value, zone, seconds=seconds)


def map_table(vmap: VulnerabilityMap, zone: tzinfo = UTC) -> Table:
    table = Table(
        title=_("Vulnerability map (position {position}, {time})").format(
            position=vmap.position, time=when(vmap.time, zone)
        )
    )
    table.add_column("kecamatan")
    table.add_column(_("score"), justify="right")
    table.add_column("", no_wrap=True)
    table.add_column(_("band"))
    table.add_column(_("incidents"), justify="right")
    for score in sorted(vmap.kecamatan, key=lambda s: -s.score):
        style = BAND_STYLE.get(score.band, "")
        bar = Text("█" * round(score.score / 5) or "·", style=style)
        table.add_row(
            score.name,
            format_number(score.score, 1),
            bar,
            Text(labels.band(score.band), style=style),
            # The true count: the reasons list only the heaviest (50 by default).
            format_number(score.incident_count),
        )
    return table


def map_svg(vmap: VulnerabilityMap, title: str | None = None, zone: tzinfo = UTC) -> str:
    """A tile map: one tile per kecamatan, coloured by band, with its score and band."""
    title = _("Vulnerability map") if title is None else title
    scores: list[KecamatanScore] = sorted(vmap.kecamatan, key=lambda s: s.name)
    columns, tile_w, tile_h, gap, top = 5, 180, 90, 10, 60
    rows = max(1, (len(scores) + columns - 1) // columns)
    width = columns * (tile_w + gap) + gap
    height = top + rows * (tile_h + gap) + gap + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{gap}" y="28" font-size="20" font-weight="bold">{escape(title)}</text>',
        f'<text x="{gap}" y="48" font-size="12" fill="#555">'
        + escape(
            _("as of {time}, ledger position {position}").format(
                time=when(vmap.time, zone), position=vmap.position
            )
        )
        + "</text>",
    ]
    for index, score in enumerate(scores):
        x = gap + (index % columns) * (tile_w + gap)
        y = top + (index // columns) * (tile_h + gap)
        fill = BAND_FILL.get(score.band, "#dddddd")
        parts.append(
            f'<g class="kecamatan" data-kecamatan="{escape(score.kecamatan)}" '
            f'data-band="{escape(score.band)}" data-score="{score.score:.1f}">'
            f'<rect x="{x}" y="{y}" width="{tile_w}" height="{tile_h}" rx="6" fill="{fill}" '
            f'stroke="#333"/>'
            f'<text x="{x + 10}" y="{y + 24}" font-size="14" font-weight="bold">'
            f"{escape(score.name)}</text>"
            # The score for people in the locale's form (Indonesian 15,9); data-score stays
            # as a program reads it.
            f'<text x="{x + 10}" y="{y + 52}" font-size="22">{format_number(score.score, 1)}'
            "</text>"
            f'<text x="{x + 10}" y="{y + 76}" font-size="12">{escape(labels.band(score.band))} · '
            + escape(
                ngettext("{count} incident", "{count} incidents", score.incident_count).format(
                    count=format_number(score.incident_count)
                )
            )
            + "</text></g>"
        )
    legend_y = height - 14
    for i, band in enumerate(("low", "medium", "high")):
        lx = gap + i * 110
        parts.append(
            f'<rect x="{lx}" y="{legend_y - 11}" width="14" height="14" fill="{BAND_FILL[band]}"/>'
            f'<text x="{lx + 20}" y="{legend_y}" font-size="12">{escape(labels.band(band))}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def decisions_table(
    decisions: Iterable[DecisionInForce],
    zone: tzinfo = UTC,
    kecamatan: KecamatanNames | None = None,
) -> FittedTable:
    """Each decision where it applies (the kecamatan by name, and the desa), what it says
    and until when. In a narrow terminal the forum goes first, then the deciding agencies,
    then the start (the end, what is in force until, stays)."""
    table = FittedTable(
        [
            Column(_("place")),
            Column(_("summary")),
            Column(_("forum"), drop=3),
            Column(_("deciding"), drop=2),
            Column(_("from"), drop=1),
            Column(_("until")),
            Column(_("incident"), wrap=False, options={"min_width": SHORT_ID}),
        ],
        title=_("Decisions in force"),
    )
    for d in decisions:
        table.add_row(
            scope(d, kecamatan),
            d.summary,
            d.forum,
            ", ".join(d.deciding_agencies),
            when(d.valid_from, zone),
            when(d.valid_until, zone),
            d.reference or short_id(d.incident),
        )
    return table


def rows_table(
    title: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[object]],
    no_wrap: Sequence[str] = (),
) -> FittedTable:
    """A table of ``rows``: ``title`` as given (translated by the caller), the ``columns``
    headed in the current language (the callers mark them with ``N_``); fitted, so that no
    word is broken over two lines where the terminal has room for each."""
    table = FittedTable(
        [Column(_(column) if column else column, wrap=column not in no_wrap) for column in columns],
        title=title,
    )
    for row in rows:
        # Text, not markup: values such as "[contexts.prod]" are shown as they are.
        table.add_row(*(c if isinstance(c, Text) else Text(str(c)) for c in row))
    return table


def verified_counts(events: int, incidents: int, checkpoints: int) -> str:
    """What a verification of the ledger checked: ``1 event, 1 incident, 2 checkpoints
    checked``, each count with its own plural form (``audit verify``, the demo)."""
    return _("{events}, {incidents}, {checkpoints} checked").format(
        events=ngettext("{count} event", "{count} events", events).format(
            count=format_number(events)
        ),
        incidents=ngettext("{count} incident", "{count} incidents", incidents).format(
            count=format_number(incidents)
        ),
        checkpoints=ngettext("{count} checkpoint", "{count} checkpoints", checkpoints).format(
            count=format_number(checkpoints)
        ),
    )


def emit_line(text: str) -> None:
    _write(text + "\n", flush=False)


def emit_error_json(value: Any) -> None:
    """An error as one JSON object on stderr (stdout stays for results)."""
    sys.stderr.write(json.dumps(to_jsonable(value), ensure_ascii=False) + "\n")
    sys.stderr.flush()


def emit_json_line(value: Any) -> None:
    """One JSON object on one line (JSON Lines, for streams such as ``watch --json``)."""
    _write(json.dumps(to_jsonable(value), ensure_ascii=False) + "\n")


#: Shown for a figure without data: a "0:00:00" would read as an instant response.
NO_DATA = "—"


def duration(stats: DurationStats, seconds: float) -> str:
    return NO_DATA if stats.count == 0 else str(timedelta(seconds=round(seconds)))


def response_times_table(
    by: str,
    groups: Iterable[ResponseTimes],
    title: str | None = None,
    kecamatan: KecamatanNames | None = None,
) -> WideOrLong:
    """Median and p90 per step, each step with its sample size (n): a group a line where
    the terminal is wide enough, else a step a line (a kecamatan by its name). ``title``:
    translated by the caller."""
    title = title or _("Response times by {by}").format(by=_(by))
    steps = (N_("acknowledge"), N_("verify"), N_("resolve"))
    wide = Table(title=title)
    wide.add_column(_(by), no_wrap=True)
    for step in steps:
        wide.add_column(_("{step} n").format(step=_(step)), justify="right")
        wide.add_column(_("median"), justify="right")
        wide.add_column("p90", justify="right")
    long = Table(title=title)
    long.add_column(_(by))
    long.add_column(_("step"))
    for column in ("n", _("median"), "p90"):
        long.add_column(column, justify="right", no_wrap=True)
    for g in groups:
        if by == "severity":
            key = labels.severity(g.key)
        elif by == "kecamatan":
            key = kecamatan_name(g.key, kecamatan)
        else:
            key = g.key or _("(no lead)")
        cells: list[str] = [key]
        for n, (step, stats) in enumerate(
            zip(steps, (g.acknowledge, g.verify, g.resolve), strict=True)
        ):
            figures = [
                str(stats.count),
                duration(stats, stats.median_seconds),
                duration(stats, stats.p90_seconds),
            ]
            cells += figures
            long.add_row(key if n == 0 else "", _(step), *figures, end_section=n == 2)
        wide.add_row(*cells)
    return WideOrLong(wide, long)

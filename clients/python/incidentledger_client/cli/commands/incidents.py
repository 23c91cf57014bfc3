"""Commands on incidents: report and handle them (one command per ledger command), and
read one incident or the list."""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from incidentledger_client import (
    InvalidArgument,
    LedgerClient,
    LedgerError,
    Location,
    NotFound,
    PersonalData,
    new_request_id,
)
from incidentledger_client.cli import output
from incidentledger_client.cli.commands import group
from incidentledger_client.cli.errors import EXIT_CONFLICT, InterruptedCommandError
from incidentledger_client.cli.inputs import (
    TIME_HELP,
    Incidents,
    choose,
    code,
    codes,
    desa_name,
    incident_name,
    maybe_code,
    moment,
    parse_person,
)
from incidentledger_client.cli.names import is_reference_code
from incidentledger_client.cli.state import state
from incidentledger_client.i18n import _
from incidentledger_client.types import (
    CommandResult,
    Incident,
    TriageAction,
    TriageItem,
    TriageOutcome,
    TriageResult,
)

#: The incident commands at the top level (``ledgerctl report``, ...).
app = typer.Typer()
handover_app = group(
    "Propose or accept a handover of the lead.",
    "ledgerctl -a satpolpp handover propose 0b6f12 polres --reason 'needs police'",
)
close_app = group(
    "Request or approve the closure of a resolved incident.",
    "ledgerctl -a polres close request 0b6f12",
)


def done(ctx: typer.Context, verb: str, result: CommandResult) -> None:
    st = state(ctx)
    if st.as_json:
        output.emit_json(result)
    else:
        output.command_result(
            output.console(), verb, result, st.references.get(result.incident, "")
        )


Name = Annotated[
    str,
    typer.Argument(
        help="The incident: its reference code (MKM-7QK3-9V), incidents/ID, the ID, or its "
        "first 6+ characters as tables show.",
        metavar="INCIDENT",
    ),
]
Version = Annotated[
    int,
    typer.Option(
        "--expected-version",
        "-V",
        help="Fail with a conflict if the incident changed after this version (reads of "
        "its personal data do not count; 0: no check).",
    ),
]
Comment = Annotated[str, typer.Option("--comment", "-m", help="A comment recorded with the event.")]


def _remember_request_id(ctx: typer.Context, value: str | None) -> str | None:
    """The command's request id, made here when none was given (the library would make one
    all the same): when no answer comes, the error can name the id to send it again with."""
    if ctx.resilient_parsing:
        return value
    chosen = value or new_request_id()
    state(ctx).request_id = chosen
    return chosen


RequestId = Annotated[
    str | None,
    typer.Option(help="Idempotency key (default: a fresh uuid).", callback=_remember_request_id),
]


def _options(version: int, request_id: str | None) -> dict[str, Any]:
    return {"expected_version": version, "request_id": request_id}


@app.command(
    epilog="Example: ledgerctl -a kesbangpol report 'Mass gathering at the square' "
    "crowd_gathering kota_mukomuko --desa 'Pasar Mukomuko' --severity high"
)
def report(
    ctx: typer.Context,
    title: Annotated[str, typer.Argument(help="Short title.")],
    category: Annotated[
        str, typer.Argument(help="Category code, e.g. crowd_gathering, flood, hoax.")
    ],
    kecamatan: Annotated[str, typer.Argument(help="Kecamatan code, e.g. kota_mukomuko.")],
    desa: Annotated[str, typer.Option(help="Desa (village) name.")] = "",
    tps: Annotated[str, typer.Option(help="Polling station, e.g. 'TPS 03'.")] = "",
    latitude: Annotated[float | None, typer.Option(help="Latitude.")] = None,
    longitude: Annotated[float | None, typer.Option(help="Longitude.")] = None,
    severity: Annotated[str, typer.Option(help="low, medium, high or critical.")] = "",
    description: Annotated[str, typer.Option(help="Longer description.")] = "",
    reporter: Annotated[
        str | None,
        typer.Option(help="The reporter: NAME|PHONE|NIK|ADDRESS (sealed by the ledger)."),
    ] = None,
    anonymous: Annotated[
        bool, typer.Option(help="The reporter asked to stay anonymous to other agencies.")
    ] = False,
    witness: Annotated[
        list[str] | None, typer.Option(help="A witness: NAME|PHONE|NIK|ADDRESS (repeatable).")
    ] = None,
    request_id: RequestId = None,
) -> None:
    """Report a new incident."""
    people = None
    if reporter or witness or anonymous:  # --anonymous alone: the ledger says what is missing
        people = PersonalData(
            reporter=parse_person(reporter) if reporter else None,
            anonymous=anonymous,
            witnesses=tuple(parse_person(w) for w in witness or ()),
        )
    category = code(ctx, "category", category, "CATEGORY")
    kecamatan = code(ctx, "kecamatan", kecamatan, "KECAMATAN")
    desa = desa_name(ctx, kecamatan, desa)
    severity = code(ctx, "severity", severity, "--severity") if severity else ""
    result = (
        state(ctx)
        .ledger()
        .report(
            title,
            category,
            Location(kecamatan, desa=desa, tps=tps, latitude=latitude, longitude=longitude),
            description=description,
            severity=severity,
            request_id=request_id,
            personal_data=people,
        )
    )
    done(ctx, _("reported"), result)


@app.command(epilog="Example: ledgerctl -a desk_pilkada verify 0b6f12 -m 'confirmed by phone'")
def verify(
    ctx: typer.Context,
    name: Name,
    comment: Comment = "",
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Confirm a reported incident (coordinator)."""
    result = (
        state(ctx)
        .ledger()
        .verify(incident_name(ctx, name), comment=comment, **_options(expected_version, request_id))
    )
    done(ctx, _("verified"), result)


@app.command(
    epilog="Example: ledgerctl -a desk_pilkada reject 0b6f12 HOAX "
    "-m 'Bawaslu checked: no tampering'"
)
def reject(
    ctx: typer.Context,
    name: Name,
    reason: Annotated[
        str, typer.Argument(help="INVALID, HOAX or OUT_OF_SCOPE: the code or its name (Hoax).")
    ],
    comment: Annotated[
        str,
        typer.Option("--comment", "-m", help="Why (required), recorded with the event."),
    ],
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Reject a reported incident (coordinator)."""
    reason = code(ctx, "reason", reason, "REASON")
    result = (
        state(ctx)
        .ledger()
        .reject(
            incident_name(ctx, name),
            reason.upper(),
            comment,
            **_options(expected_version, request_id),
        )
    )
    done(ctx, _("rejected"), result)


@app.command(epilog="Example: ledgerctl -a desk_pilkada merge 1a2b3c 0b6f12")
def merge(
    ctx: typer.Context,
    name: Name,
    target: Annotated[str, typer.Argument(help="The incident it duplicates.")],
    comment: Comment = "",
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Merge a reported incident into another as a duplicate (coordinator)."""
    result = (
        state(ctx)
        .ledger()
        .merge(
            incident_name(ctx, name),
            incident_name(ctx, target),
            comment=comment,
            **_options(expected_version, request_id),
        )
    )
    done(ctx, _("merged"), result)


@app.command(epilog="Example: ledgerctl -a polres assess 0b6f12 critical -m 'crowd growing'")
def assess(
    ctx: typer.Context,
    name: Name,
    severity: Annotated[str, typer.Argument(help="low, medium, high or critical.")],
    comment: Comment = "",
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Assess (or re-assess) an incident's severity."""
    severity = code(ctx, "severity", severity, "SEVERITY")
    result = (
        state(ctx)
        .ledger()
        .assess_severity(
            incident_name(ctx, name),
            severity,
            comment=comment,
            **_options(expected_version, request_id),
        )
    )
    done(ctx, _("assessed"), result)


@app.command(epilog="Example: ledgerctl -a desk_pilkada assign 0b6f12 polres")
def assign(
    ctx: typer.Context,
    name: Name,
    agency: Annotated[str, typer.Argument(help="The lead agency, e.g. polres.")],
    comment: Comment = "",
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Assign the lead agency (coordinator)."""
    agency = code(ctx, "agency", agency, "AGENCY")
    result = (
        state(ctx)
        .ledger()
        .assign_lead(
            incident_name(ctx, name),
            agency,
            comment=comment,
            **_options(expected_version, request_id),
        )
    )
    done(ctx, _("assigned"), result)


@app.command(epilog="Example: ledgerctl -a polres support 0b6f12 satpolpp")
def support(
    ctx: typer.Context,
    name: Name,
    agency: Annotated[str, typer.Argument(help="The supporting agency.")],
    comment: Comment = "",
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Add a supporting agency (lead or coordinator)."""
    agency = code(ctx, "agency", agency, "AGENCY")
    result = (
        state(ctx)
        .ledger()
        .add_supporting_agency(
            incident_name(ctx, name),
            agency,
            comment=comment,
            **_options(expected_version, request_id),
        )
    )
    done(ctx, _("supported"), result)


@handover_app.command(
    "propose",
    epilog="Example: ledgerctl -a satpolpp handover propose 0b6f12 polres --reason 'needs police'",
)
def handover_propose(
    ctx: typer.Context,
    name: Name,
    to_agency: Annotated[str, typer.Argument(help="The proposed new lead.")],
    reason: Annotated[str, typer.Option(help="Why (required).")],
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Propose to hand the lead over (lead or coordinator)."""
    to_agency = code(ctx, "agency", to_agency, "TO_AGENCY")
    result = (
        state(ctx)
        .ledger()
        .propose_handover(
            incident_name(ctx, name),
            to_agency,
            reason=reason,
            **_options(expected_version, request_id),
        )
    )
    done(ctx, _("handover proposed"), result)


@handover_app.command("accept", epilog="Example: ledgerctl -a polres handover accept 0b6f12")
def handover_accept(
    ctx: typer.Context,
    name: Name,
    comment: Comment = "",
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Accept a proposed handover (the proposed agency)."""
    result = (
        state(ctx)
        .ledger()
        .accept_handover(
            incident_name(ctx, name), comment=comment, **_options(expected_version, request_id)
        )
    )
    done(ctx, _("handover accepted"), result)


@app.command(
    epilog="Example: ledgerctl -a desk_pilkada decide 0b6f12 'Gatherings restricted' "
    "--forum Forkopimda "
    "--by desk_pilkada --by polres --rationale 'tension' --days 3"
)
def decide(
    ctx: typer.Context,
    name: Name,
    summary: Annotated[str, typer.Argument(help="What was decided.")],
    forum: Annotated[str, typer.Option(help="The forum that decided, e.g. Forkopimda.")],
    by: Annotated[list[str], typer.Option("--by", help="A deciding agency (repeat).")],
    rationale: Annotated[str, typer.Option(help="Why (required).")],
    kecamatan: Annotated[
        str | None, typer.Option(help="Scope (default: the incident's place).")
    ] = None,
    days: Annotated[
        float | None, typer.Option(help="Valid for this many days from --valid-from (or now).")
    ] = None,
    valid_from: Annotated[
        str | None, typer.Option(help=f"Valid from (default now): {TIME_HELP}.")
    ] = None,
    valid_until: Annotated[str | None, typer.Option(help=f"Valid until: {TIME_HELP}.")] = None,
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Record a decision (a deciding agency involved, or the coordinator)."""
    by = codes(ctx, "agency", by, "--by")
    kecamatan = maybe_code(ctx, "kecamatan", kecamatan, "--kecamatan")
    until = moment(ctx, valid_until, "--valid-until")
    start = moment(ctx, valid_from, "--valid-from") or datetime.now(UTC)
    if days is not None and until is not None:
        # Either says when the decision ends: one of them would be silently dropped.
        raise typer.BadParameter(
            _("--days and --valid-until both say when the decision ends: give one of them"),
            param_hint="--days/--valid-until",
        )
    if days is not None:
        if not days > 0:
            raise typer.BadParameter(
                _("a decision is valid for more than 0 days, not {days:g}").format(days=days),
                param_hint="--days",
            )
        until = start + timedelta(days=days)
    if until is None:
        raise typer.BadParameter(
            _(
                "a decision needs a validity window: --days N (from now, or from --valid-from "
                "TIME), or --valid-until TIME (with --valid-from TIME to start other than now)"
            ),
            param_hint="--days/--valid-until",
        )
    result = (
        state(ctx)
        .ledger()
        .record_decision(
            incident_name(ctx, name),
            by,
            forum,
            summary,
            rationale=rationale,
            scope=kecamatan,
            valid_from=start,
            valid_until=until,
            **_options(expected_version, request_id),
        )
    )
    done(ctx, _("decided"), result)


@app.command(epilog="Example: ledgerctl -a bpbd act 0b6f12 'Sandbags placed around TPS 03'")
def act(
    ctx: typer.Context,
    name: Name,
    action: Annotated[str, typer.Argument(help="What was done.")],
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Log an action (lead, supporting agency or coordinator)."""
    result = (
        state(ctx)
        .ledger()
        .log_action(incident_name(ctx, name), action, **_options(expected_version, request_id))
    )
    done(ctx, _("action logged"), result)


@app.command(epilog="Example: ledgerctl -a satpolpp escalate 0b6f12 'crowd out of control'")
def escalate(
    ctx: typer.Context,
    name: Name,
    # Required: the ledger refuses an escalation without its reason ("reason: is required",
    # in English, after the command had been sent).
    reason: Annotated[str, typer.Argument(help="Why.", metavar="REASON")],
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Escalate an incident one level."""
    result = (
        state(ctx)
        .ledger()
        .escalate(incident_name(ctx, name), reason, **_options(expected_version, request_id))
    )
    done(ctx, _("escalated"), result)


@app.command(epilog="Example: ledgerctl -a polres resolve 0b6f12 'crowd dispersed peacefully'")
def resolve(
    ctx: typer.Context,
    name: Name,
    resolution: Annotated[str, typer.Argument(help="How it was resolved.")],
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Mark a responding incident resolved (lead or coordinator)."""
    result = (
        state(ctx)
        .ledger()
        .resolve(incident_name(ctx, name), resolution, **_options(expected_version, request_id))
    )
    done(ctx, _("resolved"), result)


@close_app.command("request", epilog="Example: ledgerctl -a polres close request 0b6f12")
def close_request(
    ctx: typer.Context,
    name: Name,
    comment: Comment = "",
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Ask the coordinator to close a resolved incident (lead)."""
    result = (
        state(ctx)
        .ledger()
        .request_closure(
            incident_name(ctx, name), comment=comment, **_options(expected_version, request_id)
        )
    )
    done(ctx, _("closure requested"), result)


@close_app.command("approve", epilog="Example: ledgerctl -a desk_pilkada close approve 0b6f12")
def close_approve(
    ctx: typer.Context,
    name: Name,
    comment: Comment = "",
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Approve a requested closure (coordinator)."""
    result = (
        state(ctx)
        .ledger()
        .approve_closure(
            incident_name(ctx, name), comment=comment, **_options(expected_version, request_id)
        )
    )
    done(ctx, _("closed"), result)


@app.command(epilog="Example: ledgerctl -a polres reopen 0b6f12 'crowd returned'")
def reopen(
    ctx: typer.Context,
    name: Name,
    # Required, as escalate's: the ledger refuses a reopening without its reason.
    reason: Annotated[str, typer.Argument(help="Why.", metavar="REASON")],
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Reopen a resolved or closed incident (lead or coordinator)."""
    result = (
        state(ctx)
        .ledger()
        .reopen(incident_name(ctx, name), reason, **_options(expected_version, request_id))
    )
    done(ctx, _("reopened"), result)


@app.command(
    epilog="Example: ledgerctl -a kesbangpol correct 0b6f12 severity low high "
    "--reason 'typo in the report'"
)
def correct(
    ctx: typer.Context,
    name: Name,
    field_name: Annotated[
        str, typer.Argument(help="The field, e.g. severity, title, location.desa.", metavar="FIELD")
    ],
    old_value: Annotated[
        str,
        typer.Argument(
            help="The recorded value (checked); a time (occurred_at, valid_from, "
            f"valid_until) as shown or typed: {TIME_HELP}.",
            metavar="OLD",
        ),
    ],
    new_value: Annotated[
        str,
        typer.Argument(
            help="The corrected value; a time as for OLD, e.g. '2026-12-10 18:00'.",
            metavar="NEW",
        ),
    ],
    reason: Annotated[str, typer.Option(help="Why (required).")],
    event: Annotated[
        str | None,
        typer.Option(
            help="The corrected event: its id, or its first 6+ characters as history --ids "
            "shows them (default: the latest event that recorded FIELD)."
        ),
    ] = None,
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Record a correction of a field of an earlier event."""
    ledger = state(ctx).ledger()
    incident = incident_name(ctx, name)
    event_id = (
        _event_named(ledger, incident, event)
        if event
        else _event_recording(ledger, incident, field_name)
    )
    if field_name in TIME_FIELDS:
        # Typed as every other time of ledgerctl (in the run's zone, the regency's by default),
        # sent with its offset: the ledger matches the old one by its instant.
        old_value = _time_text(ctx, old_value, "OLD")
        new_value = _time_text(ctx, new_value, "NEW")
    result = ledger.correct(
        incident,
        event_id,
        field_name,
        old_value,
        new_value,
        reason=reason,
        **_options(expected_version, request_id),
    )
    done(ctx, _("corrected"), result)


#: The correctable fields that hold a time.
TIME_FIELDS = frozenset({"occurred_at", "valid_from", "valid_until"})


def _time_text(ctx: typer.Context, value: str, param: str) -> str:
    """A typed time as the ledger takes it, in the run's zone with its offset: the
    ledger states a refused time in the zone it was written in (it records the instant)."""
    when = moment(ctx, value, param)
    if when is None:
        return value
    return when.astimezone(state(ctx).zone()).isoformat(timespec="microseconds")


#: The length of an event id written out (a UUID).
_FULL_EVENT_ID = 36


def _event_named(ledger: LedgerClient, incident: str, event: str) -> str:
    """The id of the incident's event that ``event`` names: its id, or its first 6+
    characters as ``history --ids`` shows them."""
    if len(event) >= _FULL_EVENT_ID:
        return event
    matches = [e.event_id for e in ledger.incident_events(incident) if e.event_id.startswith(event)]
    if len(event) < 6 or len(matches) != 1:
        raise typer.BadParameter(
            _("{event} names no single event of {incident}").format(event=event, incident=incident),
            param_hint="--event",
        )
    return matches[0]


def _event_recording(ledger: LedgerClient, incident: str, field_name: str) -> str:
    """The latest event whose payload records ``field_name`` (else the report)."""
    events = list(ledger.incident_events(incident))
    top = field_name.split(".", 1)[0]
    for event in reversed(events):
        if top in event.payload or (top == "location" and event.type == "Reported"):
            return event.event_id
    if not events:
        raise typer.BadParameter(_("{incident} has no events").format(incident=incident))
    return events[0].event_id


# ---------------------------------------------------------------------------------- queries


@app.command(epilog="Example: ledgerctl show 0b6f12 --as-of 2026-11-28T10:00:00")
def show(
    ctx: typer.Context,
    name: Name,
    as_of: Annotated[
        str | None, typer.Option(help=f"As it stood at this time: {TIME_HELP}.")
    ] = None,
) -> None:
    """Show an incident with its timeline."""
    st = state(ctx)
    ledger = st.ledger()
    when = moment(ctx, as_of, "--as-of")
    incident = ledger.get_incident(incident_name(ctx, name), as_of_time=when)
    events = [e for e in ledger.incident_events(incident.name) if e.version <= incident.version]
    if st.as_json:
        output.emit_json({"incident": incident, "events": [output.event_json(e) for e in events]})
    else:
        reference = st.reference()
        output.incident_detail(
            output.console(),
            incident,
            events,
            st.zone(),
            reference.status_names(),
            reference.kecamatan_names(),
            output.category_names(reference),
        )


@app.command(epilog="Example: ledgerctl history 0b6f12 --ids")
def history(
    ctx: typer.Context,
    name: Name,
    ids: Annotated[
        bool,
        typer.Option(
            "--ids", help="Show each event's id (its first characters, as correct --event takes)."
        ),
    ] = False,
) -> None:
    """The events of one incident, oldest first."""
    st = state(ctx)
    events = list(st.ledger().incident_events(incident_name(ctx, name)))
    if st.as_json:
        output.emit_json([output.event_json(e) for e in events])
    else:
        output.console().print(output.timeline(events, st.zone(), ids=ids))


#: The most incidents a page of ``ListIncidents`` holds.
MAX_PAGE = 500


@app.command(
    "list",
    epilog="Examples: ledgerctl list --status ASSIGNED --kecamatan ipuh --lead polres\n\n"
    "ledgerctl list --status VERIFIED --no-lead",
)
def list_(
    ctx: typer.Context,
    status: Annotated[
        str | None,
        typer.Option(help="Only this status: its code (ASSIGNED) or its name (Assigned)."),
    ] = None,
    severity: Annotated[str | None, typer.Option(help="Only this severity.")] = None,
    category: Annotated[str | None, typer.Option(help="Only this category.")] = None,
    kecamatan: Annotated[str | None, typer.Option(help="Only this kecamatan.")] = None,
    lead: Annotated[str | None, typer.Option(help="Only with this lead agency.")] = None,
    no_lead: Annotated[
        bool, typer.Option("--no-lead", help="Only those without a lead agency yet.")
    ] = False,
    reference: Annotated[
        str | None, typer.Option(help="Only the incident with this reference code.")
    ] = None,
    filter_: Annotated[
        str | None, typer.Option("--filter", help="A raw AIP-160 filter (ANDed).")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many (0: all).")] = 0,
    newest_first: Annotated[
        bool, typer.Option("--newest-first", help="The newest report first.")
    ] = False,
    page_token: Annotated[
        str | None,
        typer.Option(
            help="Go on from where a list cut short by --limit ended (the token it gave), "
            "with the same filters and order."
        ),
    ] = None,
) -> None:
    """List incidents as a table, with filters."""
    clauses = [
        f'{key} = "{value}"'
        for key, value in (
            ("status", maybe_code(ctx, "status", status, "--status")),
            ("severity", maybe_code(ctx, "severity", severity, "--severity")),
            ("category", maybe_code(ctx, "category", category, "--category")),
            ("kecamatan", maybe_code(ctx, "kecamatan", kecamatan, "--kecamatan")),
            ("lead_agency", maybe_code(ctx, "agency", lead, "--lead")),
            ("reference", reference.replace('"', "") if reference else None),
        )
        if value
    ]
    if no_lead:
        if lead:
            raise typer.BadParameter(
                _("--lead and --no-lead exclude each other"), param_hint="--no-lead"
            )
        clauses.append('lead_agency = ""')
    if filter_:
        clauses.append(filter_)
    if limit < 0:  # the ledger would refuse its page size, naming page_size
        raise typer.BadParameter(_("must be 0 (all) or more"), param_hint="--limit")
    st = state(ctx)
    ledger = st.ledger()
    incidents: list[Incident] = []
    token = page_token or ""
    while True:
        # With --limit, only the pages that hold the ones shown, none past them: the last
        # page's token then goes on right after the last one shown (a page of the ledger's
        # holds 500 at most).
        page = ledger.list_incidents_page(
            " AND ".join(clauses),
            page_size=min(limit - len(incidents), MAX_PAGE) if limit else 0,
            page_token=token,
            newest_first=newest_first,
        )
        incidents.extend(page.incidents)
        token = page.next_page_token
        if not token or (limit and len(incidents) >= limit):
            break
    if st.as_json:
        output.emit_json(incidents)
        if token:  # stdout stays the incidents a program reads; the way on goes beside it
            output.error_console().print(output.more_incidents(len(incidents), token))
        return
    words = st.reference()
    out = output.console()
    out.print(
        output.incidents_table(
            incidents,
            _("Incidents ({count})").format(count=len(incidents)),
            words.status_names(),
            words.kecamatan_names(),
            output.category_names(words),
        )
    )
    notice = output.chain_failures_notice(incidents)
    if notice is not None:
        out.print(notice, style="bold red", markup=False)
    if token:  # --limit cut the list short: say so, and how to see the rest
        # Not wrapped here: the token stays one word to copy (the terminal wraps the line).
        out.print(output.more_incidents(len(incidents), token), markup=False, soft_wrap=True)


# ------------------------------------------------------------------------------ bulk triage

#: The actions of ``ledgerctl triage``, as typed.
TRIAGE_ACTIONS = ("verify", "reject", "assign-lead")


@dataclass(frozen=True)
class _Target:
    """An incident of a triage as typed: ``INCIDENT`` or ``INCIDENT@VERSION``."""

    text: str
    #: Its line in the file, None for an argument.
    line: int | None
    name: str
    version: int
    #: Why the text cannot be sent (an expected version that is not a number), else "".
    problem: str = ""


def _triage_targets(values: list[str], file: Path | None) -> list[_Target]:
    """Each incident as typed, from the arguments then the file (one a line; blank lines and
    ``#`` comments skipped; each with its line, to find it again in a long file)."""
    texts: list[tuple[str, int | None]] = [(value, None) for value in values]
    if file is not None:
        try:
            # utf-8-sig: a list saved by a Windows editor starts with a byte order mark, which
            # is not part of its first incident.
            content = (
                sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8-sig")
            ).removeprefix("\ufeff")
        except OSError as error:
            # Not Python's "[Errno 2] No such file or directory: '...'".
            raise typer.BadParameter(
                _("cannot read {path}: {why}").format(path=file, why=error.strerror or error),
                param_hint="--file",
            ) from None
        except UnicodeDecodeError:
            raise typer.BadParameter(_("not UTF-8 text"), param_hint="--file") from None
        texts.extend(_codes_table(content) or _listed(content))
    if not texts:
        raise typer.BadParameter(_("give at least one incident"), param_hint="INCIDENT")
    targets = []
    for text, number in texts:
        name, at, version = text.partition("@")
        problem = ""
        if at and not version.isdigit():
            # The item's own fault, as a mistyped incident is: the others go all the same.
            problem = _("{text}: the expected version after @ must be a number").format(
                text=repr(text)
            )
        targets.append(
            _Target(text, number, name.strip(), int(version) if at and not problem else 0, problem)
        )
    return targets


def _listed(content: str) -> list[tuple[str, int | None]]:
    """A list of incidents, one a line: blank lines and ``#`` comments skipped."""
    texts: list[tuple[str, int | None]] = []
    for row, line in enumerate(content.splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if text:
            texts.append((text, row))
    return texts


#: The columns of a table that name its incidents, the first found is read (a row without
#: it, the other): the file of reference codes ``ledgerctl ingest --codes`` writes has both.
#: The code first: with it the answer shows the code it was given, where an incident's name
#: sent the command to list the whole ledger for the codes to show (a 200-row file took 15 s
#: where its codes alone took 2).
TABLE_COLUMNS = ("reference", "incident")


def _codes_table(content: str) -> list[tuple[str, int | None]] | None:
    """The incidents of a CSV table whose header names an ``incident`` or ``reference``
    column (what ``ingest --codes`` writes, or the same saved again by a spreadsheet, which
    in an Indonesian locale separates with ``;``), each with its line; None when the file
    is not such a table."""
    first = next((line for line in content.splitlines() if line.strip()), "")
    delimiter = next((d for d in (",", ";", "\t") if d in first), None)
    if delimiter is None:
        return None
    header = [cell.strip().lower() for cell in next(csv.reader([first], delimiter=delimiter))]
    columns = [header.index(c) for c in TABLE_COLUMNS if c in header]
    if not columns:
        return None
    reader = csv.reader(io.StringIO(content), delimiter=delimiter)
    texts: list[tuple[str, int | None]] = []
    after_header = False
    for row in reader:
        if not after_header:
            after_header = any(cell.strip() for cell in row)
            continue
        cells = (row[index].strip() if index < len(row) else "" for index in columns)
        text = next((cell for cell in cells if cell), "")
        if text:
            texts.append((text, reader.line_num))
    return texts


def _unsent(error: LedgerError) -> TriageResult:
    """The result of an item that names no incident, as the ledger gives one it refuses: an
    incident not found is refused, anything else about the text is invalid."""
    outcome = TriageOutcome.REFUSED if isinstance(error, NotFound) else TriageOutcome.INVALID
    return TriageResult(name="", outcome=outcome, result=None, error=error)


@app.command(
    epilog="Examples: ledgerctl -a desk_pilkada triage verify MKM-7QK3-9V 0b6f12@1 -m 'checked'\n\n"
    "ledgerctl -a desk_pilkada triage reject --reason HOAX -m 'edited photo' -f hoaxes.txt\n\n"
    "ledgerctl -a desk_pilkada triage assign-lead --lead polres MKM-7QK3-9V MKM-8R2M-4P"
)
def triage(
    ctx: typer.Context,
    action: Annotated[str, typer.Argument(help="verify, reject or assign-lead.")],
    incidents: Annotated[
        list[str] | None,
        typer.Argument(
            help="The incidents: reference codes, incidents/ID, IDs or their first 6+ "
            "characters; INCIDENT@VERSION fails that item unless it is at VERSION.",
            metavar="INCIDENT...",
        ),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            help="Also the incidents in this file, one a line, or the reference codes' CSV "
            "that ingest --codes writes ('-': stdin).",
        ),
    ] = None,
    comment: Comment = "",
    reason: Annotated[
        str | None,
        typer.Option(help="reject: INVALID, HOAX or OUT_OF_SCOPE (the code or its name)."),
    ] = None,
    lead: Annotated[str | None, typer.Option(help="assign-lead: the agency that leads.")] = None,
    request_id: RequestId = None,
) -> None:
    """Verify, reject or assign a lead to many incidents in one call (coordinator).

    Each incident is recorded as the single command would record it, and gets its own
    outcome: recorded, recorded before (the same call sent again), refused (with why) or
    invalid. Exit code 0 when every incident is recorded, 4 when one is not.
    """
    chosen = choose(action, TRIAGE_ACTIONS, "action", "ACTION")
    targets = _triage_targets(incidents or [], file)
    rejection = ""
    agency = ""
    if chosen == "reject":
        if reason is None:
            raise typer.BadParameter(_("reject needs --reason"), param_hint="--reason")
        rejection = code(ctx, "reason", reason, "--reason")
    if chosen == "assign-lead":
        if lead is None:
            raise typer.BadParameter(_("assign-lead needs --lead"), param_hint="--lead")
        agency = code(ctx, "agency", lead, "--lead")
    st = state(ctx)
    ledger = st.ledger()
    # Each item's incident, or why it names none; one typo holds back only its own item.
    incidents_named = Incidents(ctx)
    readable = [n for n, t in enumerate(targets) if not t.problem]
    named = dict(
        zip(readable, incidents_named.each_name([targets[n].name for n in readable]), strict=True)
    )
    found: list[str | LedgerError] = [
        named[n] if n in named else InvalidArgument("INVALID_ARGUMENT", "INVALID_FIELD", t.problem)
        for n, t in enumerate(targets)
    ]
    sent = [n for n, name in enumerate(found) if isinstance(name, str)]
    items = [
        TriageItem(
            str(found[n]),
            TriageAction(chosen.replace("-", "_")),
            expected_version=targets[n].version,
            comment=comment,
            reason=rejection or "UNSPECIFIED",
            agency=agency,
        )
        for n in sent
    ]
    # The call's id, made here rather than by the client: an interrupted triage names it, and
    # the same list sent again with it answers each item recorded as recorded before.
    request_id = request_id or new_request_id()
    try:
        lines = _triaged(ctx, ledger, targets, found, sent, items, request_id, incidents_named)
    except KeyboardInterrupt:
        # Sending, or showing the answers (the ledger has recorded them then): either way,
        # the same list with this id says what became of each item.
        raise InterruptedCommandError(
            _(
                "interrupted: some of the {count} incidents may have been triaged already. To "
                "learn what became of each, send the same command again with --request-id "
                "{request_id}: an item recorded comes back as recorded before, the others are "
                "recorded."
            ).format(count=len(items), request_id=request_id),
            {"request_id": request_id, "items": str(len(items))},
        ) from None
    if not all(line.result.recorded for line in lines):
        raise typer.Exit(EXIT_CONFLICT)


def _triaged(
    ctx: typer.Context,
    ledger: LedgerClient,
    targets: list[_Target],
    found: list[str | LedgerError],
    sent: list[int],
    items: list[TriageItem],
    request_id: str,
    incidents_named: Incidents,
) -> list[output.TriageLine]:
    """The triage sent (the items that name an incident) and shown, a line per target."""
    st = state(ctx)
    # Nothing is sent when no item names an incident: each still gets its line.
    answers = dict(
        zip(sent, ledger.triage(items, request_id=request_id) if items else [], strict=True)
    )
    results = [answers[n] if isinstance(f, str) else _unsent(f) for n, f in enumerate(found)]
    # The code people read for each incident: as typed, else from the ledger's answer, else
    # looked up (an incident named by its id or a prefix).
    references = {}
    for target, result in zip(targets, results, strict=True):
        if result.result is not None and result.result.reference:
            references[result.name] = result.result.reference
        elif is_reference_code(target.name) and result.name:
            compact = target.name.upper().replace("-", "").replace(" ", "")
            references[result.name] = f"{compact[:-6]}-{compact[-6:-2]}-{compact[-2:]}"
    unknown = sorted(
        {r.name for r in results if r.name and not isinstance(r.error, NotFound)} - set(references)
    )
    if unknown:
        references |= incidents_named.references(unknown)
    lines = [
        output.TriageLine(t.text, t.line, r, references.get(r.name, ""))
        for t, r in zip(targets, results, strict=True)
    ]
    if st.as_json:
        output.emit_json([output.triage_json(line) for line in lines])
    else:
        output.console().print(output.triage_table(lines))
    return lines

"""Following the situation: the board, the vulnerability map, decisions in force, response
times, live updates (watch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from incidentledger_client.cli import output
from incidentledger_client.cli.errors import EXIT_INTERRUPTED
from incidentledger_client.cli.inputs import TIME_HELP, choose, code, codes, maybe_code, moment
from incidentledger_client.cli.state import state
from incidentledger_client.errors import CursorExpired, InvalidArgument
from incidentledger_client.i18n import N_, _

#: Top-level commands (``ledgerctl board``, ...).
app = typer.Typer()


BOARD_SORTS = ("severity", "age", "updated", "status")
#: Each order of the board as its footer says it (the code, "by age", was English in every
#: language).
BOARD_ORDERS = {
    "severity": N_("most severe first"),
    "age": N_("oldest first"),
    "updated": N_("latest change first"),
    "status": N_("in lifecycle order"),
}


@app.command(
    epilog="Example: ledgerctl board --kecamatan kota_mukomuko --limit 20 --sort age  "
    "(--limit 0 shows every open incident)"
)
def board(
    ctx: typer.Context,
    kecamatan: Annotated[str | None, typer.Option(help="Only this kecamatan.")] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", help="Show at most this many incidents (0: all).")
    ] = 40,
    sort: Annotated[
        str,
        typer.Option(
            help="severity (most severe first, then oldest), age (oldest first), "
            "updated (latest change first) or status (lifecycle order)."
        ),
    ] = "severity",
) -> None:
    """The board: open work, most severe first (limited), counts per status, workload."""
    kecamatan = maybe_code(ctx, "kecamatan", kecamatan, "--kecamatan")
    sort = choose(sort, BOARD_SORTS, "sort", "--sort")
    if limit < 0:
        raise typer.BadParameter(_("must be 0 (all) or more"), param_hint="--limit")
    st = state(ctx)
    ledger = st.ledger()
    ranks = {v.code: v.rank for v in st.reference().severities}
    listed = list(
        ledger.list_incidents(f'kecamatan = "{kecamatan}"' if kecamatan else "", page_size=500)
    )
    # Of an incident that fails its hash chain nothing is known, not even whether it is
    # open: it is named apart, never left out in silence.
    broken = [i for i in listed if i.chain_failure is not None]
    open_work = [i for i in listed if i.status.value in output.BOARD_STATUSES]
    counts = {s: 0 for s in output.BOARD_STATUSES}
    for incident in open_work:
        counts[incident.status.value] += 1
    shown = output.sort_board(open_work, sort, ranks)[: limit or None]
    workload = ledger.workload()
    if st.as_json:
        columns = {s: [i for i in shown if i.status.value == s] for s in output.BOARD_STATUSES}
        output.emit_json(
            {
                "counts": counts,
                "total": len(open_work),
                "shown": len(shown),
                "sort": sort,
                "incidents": shown,
                "columns": columns,
                "workload": workload,
                "chain_failures": broken,
            }
        )
        return
    out = output.console()
    reference = st.reference()
    out.print(
        output.board(
            shown, counts, st.zone(), reference.status_names(), reference.kecamatan_names()
        )
    )
    notice = output.chain_failures_notice(broken)
    if notice is not None:
        out.print(notice, style="bold red", markup=False)
    if len(shown) < len(open_work):
        out.print(
            _(
                "showing {shown} of {total} open incidents, {order} "
                "(--limit N for more, --limit 0 for all)"
            ).format(shown=len(shown), total=len(open_work), order=_(BOARD_ORDERS[sort])),
            markup=False,
        )
    out.print(
        output.rows_table(
            _("Workload per agency"),
            (N_("agency"), N_("open"), N_("unacknowledged"), N_("overdue")),
            ((w.agency, w.open, w.unacknowledged, w.overdue) for w in workload),
        )
    )


@app.command("map", epilog="Example: ledgerctl map --svg data/map.svg")
def map_(
    ctx: typer.Context,
    svg: Annotated[Path | None, typer.Option(help="Also render the map to this SVG file.")] = None,
    at: Annotated[str | None, typer.Option(help=f"As it stood at this time: {TIME_HELP}.")] = None,
) -> None:
    """The vulnerability map per kecamatan: score and band, coloured; optionally as SVG."""
    st = state(ctx)
    vmap = st.ledger().vulnerability_map(moment(ctx, at, "--at"))
    if svg is not None:
        svg.parent.mkdir(parents=True, exist_ok=True)
        svg.write_text(output.map_svg(vmap, zone=st.zone()), encoding="utf-8")
    if st.as_json:
        output.emit_json(vmap)
    else:
        out = output.console()
        out.print(output.map_table(vmap, st.zone()))
        if svg is not None:
            out.print(_("map written to {path}").format(path=svg), markup=False)


@app.command(epilog="Example: ledgerctl decisions --kecamatan kota_mukomuko")
def decisions(
    ctx: typer.Context,
    kecamatan: Annotated[str | None, typer.Option(help="Only this kecamatan.")] = None,
    at: Annotated[
        str | None, typer.Option(help=f"In force at this time (default now): {TIME_HELP}.")
    ] = None,
) -> None:
    """Decisions in force."""
    kecamatan = maybe_code(ctx, "kecamatan", kecamatan, "--kecamatan")
    st = state(ctx)
    found = st.ledger().decisions_in_force(moment(ctx, at, "--at"), kecamatan)
    if st.as_json:
        output.emit_json(found)
    elif not found:
        # As the situation room says it, rather than a table with no rows.
        output.console().print(_("No decision is in force."))
    else:
        output.console().print(
            output.decisions_table(found, st.zone(), st.reference().kecamatan_names())
        )


@app.command("response-times", epilog="Example: ledgerctl response-times --by severity")
def response_times(
    ctx: typer.Context,
    by: Annotated[str, typer.Option(help="agency, severity, category or kecamatan.")] = "agency",
) -> None:
    """Median and p90 time to acknowledge, verify and resolve, each with its sample size (n);
    "—" where no incident reached that step."""
    by = choose(by, ("agency", "severity", "category", "kecamatan"), "grouping", "--by")
    st = state(ctx)
    groups = st.ledger().response_times(by)  # type: ignore[arg-type]
    if st.as_json:
        output.emit_json(groups)
        return

    names = st.reference().kecamatan_names() if by == "kecamatan" else None
    output.console().print(output.response_times_table(by, groups, kecamatan=names))


@app.command(
    epilog="Example: ledgerctl -a bpbd watch --kecamatan air_manjunto "
    "--min-severity high --count 10"
)
def watch(
    ctx: typer.Context,
    kecamatan: Annotated[
        list[str] | None, typer.Option(help="Only these kecamatan (repeat).")
    ] = None,
    category: Annotated[
        list[str] | None, typer.Option(help="Only these categories (repeat).")
    ] = None,
    min_severity: Annotated[str, typer.Option(help="At least this severity.")] = "",
    event_type: Annotated[
        list[str] | None, typer.Option(help="Only these event types (repeat).")
    ] = None,
    mine: Annotated[bool, typer.Option(help="Only incidents involving my agency.")] = False,
    count: Annotated[int, typer.Option(help="Stop after this many notifications (0: never).")] = 0,
    cursor: Annotated[str | None, typer.Option(help="Resume from this cursor.")] = None,
) -> None:
    """Live updates from the notifier, with filters (Ctrl-C stops)."""
    kecamatan = codes(ctx, "kecamatan", kecamatan, "--kecamatan")
    category = codes(ctx, "category", category, "--category")
    min_severity = code(ctx, "severity", min_severity, "--min-severity") if min_severity else ""
    st = state(ctx)
    seen = 0
    out = output.console()
    # The regency's words for the statuses, its kecamatan's names and its zone, read before
    # the stream starts (JSON needs none of them).
    statuses = {} if st.as_json else st.reference().status_names()
    places = {} if st.as_json else st.reference().kecamatan_names()
    zone = st.zone(ask_ledger=False)
    expired = False  # the cursor refused: it is no place to go on from
    with st.notifier().subscribe(
        kecamatan=kecamatan or (),
        categories=category or (),
        min_severity=min_severity,
        event_types=event_type or (),
        involving_my_agency=mine,
        cursor=cursor,
    ) as subscription:
        try:
            for note in subscription:
                seen += 1
                if st.as_json:  # JSON Lines: one object per notification, flushed
                    output.emit_json_line(
                        {
                            "event": output.event_json(note.event),
                            "incident": note.incident,
                            "cursor": note.cursor,
                        }
                    )
                else:
                    line = output.notification_line(
                        note.event, note.incident, zone, statuses, places
                    )
                    out.print(line)
                if count and seen >= count:
                    break
        except KeyboardInterrupt:
            # Ctrl-C is how a watch is stopped, and is an interruption all the same (exit code
            # 130, as for every command): a script tells it from a --count that was reached.
            # The finally below still says where to go on from.
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except CursorExpired:
            expired = True
            raise
        except InvalidArgument as error:
            # A cursor this notifier does not read: a replica older than its format, during
            # a rolling upgrade (docs/operations.md, "Upgrading"). Not one to go on from.
            expired = error.field == "cursor"
            raise
        finally:
            # However it ends (Ctrl-C, --count, the notifier away for longer than the
            # reconnections last), where to go on from: the table shows no cursors.
            if not st.as_json and subscription.cursor and not expired:
                output.error_console().print(
                    _(
                        "To go on from here without missing an event, run the same watch "
                        "with --cursor {cursor}"
                    ).format(cursor=subscription.cursor),
                    markup=False,
                    # Not highlighted: rich coloured the cursor's numbers, escape codes inside
                    # the value a person copies to run the watch again.
                    highlight=False,
                )

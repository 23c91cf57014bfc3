"""``ledgerctl ingest FILE``: a field device's backlog (JSON Lines) handed over in chunks,
with a progress bar, a summary per outcome, or one JSON line per report with ``--json``."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from incidentledger_client import DeadlineExceeded, LedgerError, Unavailable
from incidentledger_client.backlog import BacklogError, BacklogLine, read_backlog
from incidentledger_client.cli import config, output
from incidentledger_client.cli.errors import (
    EXIT_OTHER,
    InterruptedCommandError,
    never_reached,
    said,
)
from incidentledger_client.cli.progress import progress_bar
from incidentledger_client.cli.state import State, state
from incidentledger_client.i18n import N_, _, format_number, ngettext
from incidentledger_client.ledger import MAX_INGEST_REPORTS
from incidentledger_client.types import (
    CommandResult,
    DeviceReport,
    IngestOutcome,
    IngestResult,
    IngestSummary,
    Location,
)

#: The top-level command ``ledgerctl ingest``.
app = typer.Typer()

#: What each outcome is called in the summary, in the run's language.
OUTCOMES = {
    IngestOutcome.CREATED: N_("recorded now"),
    IngestOutcome.DUPLICATE: N_("recorded before (sent again)"),
    IngestOutcome.CONFLICT: N_("conflict: same id, other content"),
    IngestOutcome.INVALID: N_("invalid"),
    IngestOutcome.UNSPECIFIED: N_("unknown"),
}
#: A report in the ledger (recorded now or before): its line, outcome and command result.
Recorded = tuple[BacklogLine, IngestOutcome, CommandResult]
#: How many reference codes the table lists: the few a duty officer reads out at once; a
#: backlog of thousands goes to a file (--codes) instead of scrolling past.
CODES_SHOWN = 20
#: Why a line of the file cannot be read (BacklogError.problem).
PROBLEMS = {
    "not_json": N_("not JSON"),
    "not_object": N_("not a JSON object"),
    "missing": N_("missing"),
    "unknown": N_("not a field of a device report"),
    "not_text": N_("not a text"),
    "not_time": N_("not a time with its zone (ISO 8601)"),
    "not_number": N_("not a number"),
    "not_boolean": N_("not true or false"),
    "not_list": N_("not a JSON list"),
    "repeated": N_(
        "used by an earlier line of the file for another report: a changed report needs a "
        "new device_report_id"
    ),
}
#: What to do after a run that stopped before its end (interrupted, or the ledger away).
SEND_AGAIN = N_(
    "The reports being sent when it stopped may have been recorded too. Running the same "
    "command again is safe: the reports the ledger already has are answered as recorded "
    "before, none is recorded twice."
)
#: The report's fields that hold a code of the reference data, with what each one is.
CODE_FIELDS = {
    "category": N_("category"),
    "severity": N_("severity"),
    "location.kecamatan": N_("kecamatan"),
    "location.desa": N_("desa"),
}


def _unreadable(error: BacklogError) -> typer.BadParameter:
    """The file refused: each line that cannot be read (the first CODES_SHOWN), so that the
    officer fixes them all before sending it again, not one per try; or sends the others
    (``--skip-unreadable``) when the file has some."""
    text = _unreadable_lines(error, _("nothing was sent"))
    if error.readable:
        count = len(error.readable)
        text += "\n" + ngettext(
            "--skip-unreadable sends the {count} line that can be read, without these.",
            "--skip-unreadable sends the {count} lines that can be read, without these.",
            count,
        ).format(count=format_number(count))
    return typer.BadParameter(text, param_hint="FILE")


def _unreadable_lines(error: BacklogError, what_then: str) -> str:
    """The lines that cannot be read (the first CODES_SHOWN) and ``what_then`` of them."""
    said = [_line_problem(e) for e in error.lines]
    if len(said) == 1:
        return _("{problem} ({what_then})").format(problem=said[0], what_then=what_then)
    text = _("{count} lines cannot be read, {what_then}:").format(
        count=format_number(len(said)), what_then=what_then
    )
    text += "".join(f"\n  {line}" for line in said[:CODES_SHOWN])
    if len(said) > CODES_SHOWN:
        text += "\n  " + _("... and {count} more").format(
            count=format_number(len(said) - CODES_SHOWN)
        )
    return text


def _line_problem(error: BacklogError) -> str:
    problem = _(PROBLEMS.get(error.problem, error.problem))
    if error.field:
        return _("line {line}: {field}: {problem}").format(
            line=error.line, field=error.field, problem=problem
        )
    return _("line {line}: {problem}").format(line=error.line, problem=problem)


def _item_json(line: BacklogLine, result: IngestResult) -> dict[str, Any]:
    item: dict[str, Any] = {
        "line": line.line,
        "device_report_id": result.report_id,
        "outcome": result.outcome.value,
    }
    if result.result is not None:
        item["result"] = output.to_jsonable(result.result)
    if result.error is not None:
        item["error"] = {
            "code": result.error.code,
            "reason": result.error.reason,
            "message": result.error.message,
            "metadata": result.error.metadata,
        }
    return item


@app.command(
    epilog="Example: ledgerctl -a bawaslu ingest hp-panwascam-malin-deman-03.jsonl  "
    "(the format: docs/clients.md, an example: docs/examples/field-backlog.jsonl)"
)
def ingest(
    ctx: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(
            help="The device's backlog: JSON Lines, one report per line.",
            metavar="FILE",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    chunk_size: Annotated[
        int,
        typer.Option(help="Reports per call (at most 500).", min=1, max=MAX_INGEST_REPORTS),
    ] = MAX_INGEST_REPORTS,
    codes: Annotated[
        Path | None,
        typer.Option(
            "--codes",
            help="Also write the reference code of every report in the ledger to this CSV file "
            "(line, device_report_id, reference, outcome, incident, title).",
            metavar="FILE",
            dir_okay=False,
        ),
    ] = None,
    skip_unreadable: Annotated[
        bool,
        typer.Option(
            "--skip-unreadable",
            help="Send the lines that can be read when some cannot (a line cut short by a "
            "phone that died while writing it); those are listed, and the exit code is 1.",
        ),
    ] = False,
) -> None:
    """Hand over a field device's backlog of reports (with a progress bar).

    Each report is recorded once: run it again after a crash or a lost connection, and the
    reports already recorded are answered as recorded before. Exit code 1 when the ledger
    refused some reports (listed, with the line of each), or lines were skipped.
    """
    st = state(ctx)
    if codes is not None:
        _check_writable(codes)
    skipped: BacklogError | None = None
    try:
        lines = read_backlog(path)
    except BacklogError as error:
        if not skip_unreadable or not error.readable:
            raise _unreadable(error) from None
        skipped, lines = error, list(error.readable)
        _say_skipped(st, skipped)
    except UnicodeDecodeError:
        raise typer.BadParameter(_("not UTF-8 text"), param_hint="FILE") from None
    if not lines:
        # An empty export (or the wrong file): said, not an empty table and "0 of 0".
        if codes is not None:
            _write_codes(codes, [])
        if not st.as_json:
            output.console().print(
                _("{path} holds no report: nothing was sent.").format(path=path.name),
                markup=False,
            )
        return
    ledger = st.ledger()
    summary = IngestSummary()
    recorded: list[Recorded] = []
    refused: list[tuple[BacklogLine, IngestResult]] = []
    # A file exported from the device: this machine's clock is not the device's, and a skew
    # taken against it (recorded with each report) read as the phone's.
    results = ledger.iter_ingest_reports(
        (line.report for line in lines), chunk_size=chunk_size, sender_is_device=False
    )
    try:
        with progress_bar(st, _("sending"), len(lines), _("reports")) as meter:
            for line, result in zip(lines, results, strict=True):
                summary.add(result)
                if result.result is not None:
                    recorded.append((line, result.outcome, result.result))
                else:
                    refused.append((line, result))
                if st.as_json:
                    output.emit_json_line(_item_json(line, result))
                meter.step()
    except KeyboardInterrupt:
        # The codes of the reports answered so far are worth having: sent again, the file
        # gets them all.
        if codes is not None:
            _write_codes(codes, recorded)
        if not st.as_json and summary.total:
            _print_summary(st, path, summary, recorded, refused, codes, finished=False)
        raise _interrupted(summary, len(lines)) from None
    except LedgerError as error:
        # The connection lost (or the ledger away) after some chunks: those are recorded, and
        # the officer is told so, with their codes, before the error itself (exit code 6). A
        # refusal of the first chunk (a token, a role) left nothing behind: the error alone.
        if not summary.total and not isinstance(error, Unavailable | DeadlineExceeded):
            raise
        if codes is not None:
            _write_codes(codes, recorded)
        if not st.as_json:
            if summary.total:
                _print_summary(st, path, summary, recorded, refused, codes, finished=False)
            if not summary.total and never_reached(error, st.settings.address):
                # Nothing went out: no chunk can have been recorded, and the error's hint
                # says where the ledger was looked for.
                note = _("None of the {total} reports was sent.").format(
                    total=format_number(len(lines))
                )
            else:
                note = (
                    _(
                        "The ledger answered {answered} of {total} reports before this error."
                    ).format(answered=format_number(summary.total), total=format_number(len(lines)))
                    + " "
                    + _(SEND_AGAIN)
                )
            output.error_console().print(note, markup=False, highlight=False)
        raise
    if codes is not None:
        _write_codes(codes, recorded)
    if not st.as_json:
        _print_summary(st, path, summary, recorded, refused, codes)
        if skipped is not None:
            _say_skipped(st, skipped)  # again after the table, where the officer reads last
    if refused or skipped is not None:
        raise typer.Exit(EXIT_OTHER)


def _say_skipped(st: State, error: BacklogError) -> None:
    """The lines left out by ``--skip-unreadable``: on stderr, or one JSON line each."""
    if st.as_json:
        for line in error.lines:
            output.emit_json_line(
                {
                    "line": line.line,
                    "outcome": "UNREADABLE",
                    "error": {"field": line.field, "problem": line.problem},
                }
            )
        return
    text = _unreadable_lines(error, _("not sent; send the file again once fixed"))
    output.error_console().print(text, markup=False, highlight=False)


def _check_writable(path: Path) -> None:
    """Refuse, before anything is sent, a codes file that could not be written once the
    reports are in the ledger (a folder that does not exist, one not writable)."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise typer.BadParameter(
            _("no folder {folder}").format(folder=str(folder)), param_hint="--codes"
        )
    if not os.access(path if path.exists() else folder, os.W_OK):
        raise typer.BadParameter(
            _("{path} cannot be written").format(path=str(path)), param_hint="--codes"
        )


def _write_codes(path: Path, recorded: list[Recorded]) -> None:
    """Every recorded report's reference code, as CSV: a backlog of thousands is read back
    from a file (printed, or loaded on the device by its report ids), not from a terminal."""
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(("line", "device_report_id", "reference", "outcome", "incident", "title"))
        for line, outcome, result in recorded:
            writer.writerow(
                (
                    line.line,
                    line.report.report_id,
                    result.reference,
                    outcome.value,
                    result.incident,
                    line.report.title,
                )
            )


def _interrupted(summary: IngestSummary, total: int) -> InterruptedCommandError:
    """What an officer who pressed Ctrl-C needs to know: how far it got, and that sending the
    file again is safe (a report's ids make it one request), so nothing is lost by stopping."""
    outcomes = ", ".join(
        f"{format_number(summary[o])} {_(OUTCOMES[o])}" for o in OUTCOMES if summary[o]
    )
    text = _("interrupted after {answered} of {total} reports were sent and answered").format(
        answered=format_number(summary.total), total=format_number(total)
    )
    if outcomes:
        text += f" ({outcomes})"
    text += ". " + _(SEND_AGAIN)
    metadata = {"answered": str(summary.total), "reports": str(total)}
    metadata.update({o.value.lower(): str(n) for o, n in summary.counts.items()})
    return InterruptedCommandError(text, metadata)


def _print_summary(
    st: State,
    path: Path,
    summary: IngestSummary,
    recorded: list[Recorded],
    refused: list[tuple[BacklogLine, IngestResult]],
    codes: Path | None,
    finished: bool = True,
) -> None:
    """The outcomes' table, the reference codes, the refused reports, and (``finished``:
    every report answered) how many are in the ledger; an interrupted run says how far it got
    on stderr instead."""
    out = output.console()
    out.print(
        output.rows_table(
            _("Backlog {path}").format(path=path.name),
            (N_("outcome"), N_("reports")),
            ((_(OUTCOMES[o]), format_number(summary[o])) for o in OUTCOMES if summary[o]),
        )
    )
    if recorded:
        _print_codes(recorded, codes, finished)
    if refused:
        out.print(
            output.rows_table(
                _("Refused reports: fix them on the device, then send the file again"),
                (N_("line"), N_("report"), N_("outcome"), N_("why")),
                (
                    (
                        line.line,
                        result.report_id,
                        _(OUTCOMES[result.outcome]),
                        _error_text(st, line.report, result),
                    )
                    for line, result in refused
                ),
                no_wrap=("line", "report"),
            )
        )
    if not finished:
        return
    out.print(
        _("{recorded} of {total} reports are in the ledger ({created} recorded now).").format(
            recorded=format_number(summary.recorded),
            total=format_number(summary.total),
            created=format_number(summary[IngestOutcome.CREATED]),
        ),
        markup=False,
    )


def _print_codes(recorded: list[Recorded], codes: Path | None, finished: bool) -> None:
    """The reports' reference codes, which the officer reads back to the people who made the
    reports: the first CODES_SHOWN in the file's order, and where to find the others."""
    out = output.console()
    out.print(
        output.rows_table(
            _("Reference codes"),
            (N_("line"), N_("report"), N_("reference"), N_("outcome")),
            (
                (line.line, line.report.report_id, result.reference, _(OUTCOMES[outcome]))
                for line, outcome, result in recorded[:CODES_SHOWN]
            ),
            no_wrap=("line", "report", "reference"),
        )
    )
    hidden = len(recorded) - CODES_SHOWN
    if codes is not None:
        if finished:
            text = _("The reference codes of all {count} reports are in {path}.")
        else:
            # Not "all": the reports not sent yet have none; the file is whole once the
            # same command has run to its end.
            text = _("The reference codes of the {count} reports answered so far are in {path}.")
        out.print(text.format(count=format_number(len(recorded)), path=codes), markup=False)
    elif hidden > 0:
        out.print(
            _(
                "{count} more not shown: --codes FILE writes every report's code to a CSV "
                "file (--json gives them too)."
            ).format(count=format_number(hidden)),
            markup=False,
        )


def _error_text(st: State, report: DeviceReport, result: IngestResult) -> str:
    """Why the ledger refused a report, in words that let the officer fix it on the device: a
    code the reference data does not have (a category, a severity, a kecamatan, a desa of
    the kecamatan) named with
    the closest known one; a report id sent before with other content said as such; any other
    refusal as ledgerctl says the ledger's errors (the field and what is wrong with it)."""
    error = result.error
    if error is None:
        return ""
    if result.outcome is IngestOutcome.CONFLICT:
        first = error.metadata.get("reference") or error.metadata.get("incident")
        if first:
            # Resending cannot change what was recorded: the incident recorded is named, to
            # be corrected (ledgerctl correct), or the changed report sent as a new one.
            return _(
                "a report with this id from this device is in the ledger ({first}) with other "
                "content: correct that incident (ledgerctl correct {first} ...), or give the "
                "changed report a new device_report_id"
            ).format(first=first)
        return _(
            "a report with this id from this device is in the ledger with other content; a "
            "changed report needs a new device_report_id"
        )
    what = CODE_FIELDS.get(error.field or "")
    value = _field_value(report, error.field or "")
    if what is not None and value is not None and error.reason == "INVALID_FIELD":
        known = _known_codes(st, what, report)
        if value not in known:
            suggestion = _suggestion(value, known)
            if suggestion:
                return _("{field}: unknown {what} {value}{suggestion}").format(
                    field=error.field, what=_(what), value=repr(value), suggestion=suggestion
                )
            return _("{field}: unknown {what} {value}; known: {known}").format(
                field=error.field, what=_(what), value=repr(value), known=", ".join(known)
            )
    return said(error)


def _field_value(report: DeviceReport, field: str) -> str | None:
    location = report.location
    if field == "location.kecamatan":
        return location.kecamatan if isinstance(location, Location) else location
    if field == "location.desa":
        return location.desa if isinstance(location, Location) else None
    if field in ("category", "severity"):
        return str(getattr(report, field))
    return None


def _known_codes(st: State, what: str, report: DeviceReport) -> dict[str, tuple[str, ...]]:
    """Each code of the reference data of this kind, with its names (in every language); for
    a desa, the desa of the report's kecamatan."""
    reference = st.reference()
    if what == "category":
        return {c.code: (c.name, *c.names.values()) for c in reference.categories}
    if what == "severity":
        return {v.code: (v.name, *v.names.values()) for v in reference.severities}
    if what == "desa":
        location = report.location
        kecamatan = location.kecamatan if isinstance(location, Location) else location
        listed = next((k.desa for k in reference.kecamatan if k.code == kecamatan), ())
        return {desa: () for desa in listed}
    return {k.code: (k.name,) for k in reference.kecamatan}


def _suggestion(value: str, known: dict[str, tuple[str, ...]]) -> str:
    """`` (did you mean X?)``: the code whose code or name the value is but for case (a code
    in capitals, a kecamatan's or a severity's name, "Malin Deman", "sedang"), else the
    closest code."""
    folded = value.strip().casefold()
    for code, names in known.items():
        if folded in (n.casefold() for n in (code, *names)):
            return " " + _("(did you mean {value}?)").format(value=repr(code))
    return config.suggest(value, list(known))

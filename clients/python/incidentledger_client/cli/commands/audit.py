"""``ledgerctl audit``: verify the hash chains, export the history, as-of views."""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from incidentledger_client import LedgerError, Unavailable
from incidentledger_client.cli import output
from incidentledger_client.cli.commands import group
from incidentledger_client.cli.errors import (
    EXIT_DATA_LOSS,
    EXIT_OTHER,
    InterruptedCommandError,
    said,
)
from incidentledger_client.cli.inputs import TIME_HELP, incident_name, maybe_code, moment
from incidentledger_client.cli.progress import Meter, progress_bar
from incidentledger_client.cli.state import state
from incidentledger_client.i18n import N_, _, format_number, format_size, ngettext
from incidentledger_client.types import (
    Checkpoint,
    Divergence,
    EvidenceReport,
    IncidentEvent,
    VerifyProgress,
    VerifyReport,
)

app = group(
    "Audit: verify the hash chains, export the history, as-of views.",
    "ledgerctl -a inspektorat audit verify",
)


def follow_verification(
    items: Iterable[VerifyProgress | VerifyReport], meter: Meter
) -> VerifyReport:
    """The verification's report, its progress shown on ``meter`` as it comes (positions
    against the ledger's size when it started; events checked make the rate)."""
    end = 0
    for item in items:
        if isinstance(item, VerifyReport):
            meter.finish(end)
            return item
        end = max(end, item.ledger_position, item.position)
        meter.measured(item.position, item.ledger_position, item.events_checked)
    raise Unavailable("UNAVAILABLE", "", "the verification ended without its result")


@app.command("verify", epilog="Example: ledgerctl -a inspektorat audit verify --deep")
def audit_verify(
    ctx: typer.Context,
    deep: Annotated[
        bool,
        typer.Option(
            "--deep",
            help="Also re-read every evidence file and check its digest and size.",
        ),
    ] = False,
) -> None:
    """Recompute every hash chain and check the checkpoints (coordinator, auditors).

    Exit code 6 (server) is not used for a broken chain: a verify that finds divergence exits 1.
    """
    st = state(ctx)
    items = iter(st.ledger().stream_verify_ledger())
    # The first message comes at once and gives the ledger's size: the bar starts with it
    # as its total, never showing "0/?".
    first = next(items, None)
    total = first.ledger_position if isinstance(first, VerifyProgress) else 0
    with progress_bar(st, _("verifying"), total or None, _("positions")) as meter:
        report_ = follow_verification(
            itertools.chain(() if first is None else (first,), items), meter
        )
    if not st.as_json:
        _show_ledger(report_)
    try:
        found = st.ledger().verify_evidence() if deep else None
    except LedgerError as error:
        # The evidence could not be read (its store away): the chain's result, already
        # checked, is said all the same (with --json, its document with "evidence": null),
        # then the error, whose exit code stands unless the ledger diverges (1).
        if st.as_json:
            output.emit_json({"ledger": report_, "evidence": None})
        if report_.ok:
            raise
        output.error_console().print(
            _("The evidence could not be checked: {error}").format(error=said(error)),
            markup=False,
            highlight=False,
        )
        raise typer.Exit(EXIT_OTHER) from None
    if st.as_json:
        output.emit_json(report_ if found is None else {"ledger": report_, "evidence": found})
    elif found is not None:
        _show_evidence(found)
    if not report_.ok or (found is not None and not found.ok):
        raise typer.Exit(EXIT_OTHER)


def _show_ledger(report_: VerifyReport) -> None:
    """The chain's part of ``audit verify``, for people."""
    out = output.console()
    if report_.ok:
        out.print(
            Text.assemble(
                (_("ledger verified"), "bold green"),
                ": "
                + output.verified_counts(
                    report_.events, report_.incidents, report_.checkpoints_checked
                ),
            )
        )
    else:
        d = report_.divergence
        said = "" if d is None else ": " + divergence_text(d)
        out.print(Text.assemble((_("LEDGER DIVERGES"), "bold red"), said))


#: The kinds of divergence, as the ledger names them (docs/hash-chain.md).
DIVERGENCES = {
    "modified": N_("an event was changed"),
    "deleted": N_("an event was deleted"),
    "inserted": N_("an event was inserted"),
    "reordered": N_("events were reordered"),
    "truncated": N_("the history was cut short"),
    "bad_signature": N_("a signature does not verify"),
    "wrong_key": N_("the history was sealed with another key than the one given"),
}


def divergence_text(d: Divergence) -> str:
    """Where the history first diverges, in words (it was the dataclass's repr): the
    incident and version only when it concerns one incident (a checkpoint's count or head
    concerns none: it was "incident -, version 0")."""
    kind = _(DIVERGENCES[d.kind]) if d.kind in DIVERGENCES else d.kind
    where: str | None = None
    if d.incident is not None:
        where = _("incident {incident}, version {version}, position {position}").format(
            incident=d.incident, version=d.version, position=d.position
        )
    elif d.position is not None:
        where = _("at position {position}").format(position=d.position)
    said = kind if where is None else f"{kind} ({where})"
    return f"{said}: {d.detail}" if d.detail else said


#: What deep verification finds wrong with a file, as the ledger names it.
PROBLEMS = {"missing": N_("missing"), "changed": N_("changed")}


def _show_evidence(found: EvidenceReport) -> None:
    """The deep part of ``audit verify --deep``, for people."""
    out = output.console()
    summary = _("{evidence}, {objects}, {size} read").format(
        evidence=ngettext(
            "{count} piece of evidence", "{count} pieces of evidence", found.evidence
        ).format(count=format_number(found.evidence)),
        objects=ngettext("{count} file", "{count} files", found.objects).format(
            count=format_number(found.objects)
        ),
        size=format_size(found.bytes_read),
    )
    if found.ok:
        out.print(Text.assemble((_("evidence verified"), "bold green"), ": " + summary))
        return
    out.print(Text.assemble((_("EVIDENCE DIVERGES"), "bold red"), ": " + summary))
    rows = [
        (p.evidence, _(PROBLEMS.get(p.problem, p.problem)), p.object, str(p.position))
        for p in found.problems
    ]
    columns = (N_("evidence"), N_("problem"), N_("object"), N_("position"))
    out.print(output.rows_table(_("Missing or changed evidence"), columns, rows))


@app.command(
    "export", epilog="Example: ledgerctl -a inspektorat audit export history.jsonl --after 0"
)
def audit_export(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="JSON Lines file to write ('-' for stdout).")],
    after: Annotated[int, typer.Option(help="Positions after this one.")] = 0,
    until: Annotated[int, typer.Option(help="Up to this position (0: the end).")] = 0,
    incident: Annotated[str | None, typer.Option(help="Only this incident.")] = None,
    agency: Annotated[str | None, typer.Option(help="Only events by this agency.")] = None,
    kecamatan: Annotated[str | None, typer.Option(help="Only this kecamatan.")] = None,
) -> None:
    """Export the history (events in log order) as JSON Lines, with a progress bar.

    One event envelope per line, as the replay stream gives them. For a file that verifies
    offline (with its chains and checkpoints), run `python -m services.ledger.audit export`
    where the store is; `ledgerctl audit verify` checks the ledger online.
    """
    agency = maybe_code(ctx, "agency", agency, "--agency")
    kecamatan = maybe_code(ctx, "kecamatan", kecamatan, "--kecamatan")
    st = state(ctx)
    ledger = st.ledger()
    end = until or ledger.projection_status().ledger_position
    total = max(end - after, 0)
    events = ledger.history(
        after,
        until,
        incident=incident_name(ctx, incident) if incident else None,
        agency=agency,
        kecamatan=kecamatan,
    )
    # The bar counts positions of the log covered (the events exported are fewer when a filter
    # skips some, or when positions belong to no incident), so it ends full.
    with progress_bar(st, _("exporting"), total or None, _("positions")) as meter:
        if str(path) == "-":
            try:
                for event in events:
                    output.emit_line(json.dumps(output.event_json(event), ensure_ascii=False))
                    meter.reached(event.position - after)
            except KeyboardInterrupt:
                raise InterruptedCommandError(
                    ngettext(
                        "the export was interrupted after {count} event: the output is incomplete",
                        "the export was interrupted after {count} events: the output is incomplete",
                        meter.items,
                    ).format(count=format_number(meter.items))
                ) from None
        else:
            _export_to(path, events, after, meter)
        meter.finish(total)
    count = meter.items
    if str(path) != "-":
        if st.as_json:
            output.emit_json({"path": str(path), "events": count})
        else:
            output.console().print(
                ngettext(
                    "exported {count} event to {path}", "exported {count} events to {path}", count
                ).format(count=format_number(count), path=path),
                markup=False,
            )


def _export_to(path: Path, events: Iterable[IncidentEvent], after: int, meter: Meter) -> None:
    """Write the export to a temporary file beside ``path`` and rename it to ``path`` once
    complete: an export cut short (Ctrl-C, a lost connection, a full disk) leaves no file
    under the final name that would pass for the whole history, nor a stray partial one."""
    # Beside the file, so that the rename stays on its file system and is atomic; created as
    # open() would create the file itself (0666 less the umask), so the export's permissions
    # are what they were, and O_EXCL never writes into someone else's file.
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            for event in events:
                file.write(json.dumps(output.event_json(event), ensure_ascii=False) + "\n")
                meter.reached(event.position - after)
        os.replace(temporary, path)
    except KeyboardInterrupt:
        temporary.unlink(missing_ok=True)
        raise InterruptedCommandError(
            _("the export was interrupted: nothing was written to {path}").format(path=path)
        ) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@app.command(
    "checkpoints",
    epilog="Example: ledgerctl -a inspektorat audit checkpoints --witness witness.jsonl",
)
def audit_checkpoints(
    ctx: typer.Context,
    witness: Annotated[
        Path | None,
        typer.Option(
            "--witness",
            metavar="FILE",
            dir_okay=False,
            help="Append to this file the checkpoints it does not hold yet (a witness's copy, "
            "JSON Lines) instead of listing them.",
        ),
    ] = None,
) -> None:
    """The ledger's signed checkpoints, oldest first: position, chain head, events, key.

    --json gives each with its signature (hex), to check offline with the ledger's public
    key (docs/hash-chain.md). --witness FILE keeps a witness's copy: it appends to FILE the
    checkpoints FILE does not hold yet, one a line in the form that `ledger-audit verify
    --checkpoints FILE` and tests/js/verify_export.mjs read; run it again to add new ones."""
    st = state(ctx)
    checkpoints = list(st.ledger().checkpoints())
    if witness is not None:
        _keep_with_witness(st.as_json, checkpoints, witness)
        return
    if st.as_json:
        output.emit_json(checkpoints)
        return
    if not checkpoints:
        output.console().print(
            _(
                "no checkpoint yet: the ledger signs one every LEDGER_CHECKPOINT_SECONDS "
                "(5 minutes by default) once it holds events, or when the coordinator or an "
                "auditor asks (CreateCheckpoint)"
            )
        )
        return
    zone = st.zone()
    output.console().print(
        output.rows_table(
            _("Signed checkpoints"),
            (N_("position"), N_("time"), N_("events"), N_("chain head"), N_("key")),
            (
                (
                    format_number(c.position),
                    output.when(c.create_time, zone),
                    format_number(c.events),
                    c.chain_head,
                    c.key_id,
                )
                for c in checkpoints
            ),
            no_wrap=("chain head", "key"),
        )
    )


# A checkpoint as a witness's file holds it, for comparing: position, head, events,
# created_at, key_id and the signature's bytes (every field: one that differs in any is
# another checkpoint, as the verifiers take it).
_Held = tuple[int, str, int, str, str, bytes]


def _whole(value: object, name: str) -> int:
    """A number, or its decimal string (docs/hash-chain.md, section 6, accepts both)."""
    if type(value) is int and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdecimal():
        return int(value)
    raise ValueError(f"{name} is not a whole number")


def _held_form(record: object) -> _Held:
    """``record``, a line of a witness's file, for comparing; ValueError when it is not a
    checkpoint in the published form (docs/hash-chain.md, section 6)."""
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    missing = [
        k for k in ("position", "head", "events", "created_at", "signature") if k not in record
    ]
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    head, created_at, key = record["head"], record["created_at"], record.get("key_id", "")
    if not all(isinstance(v, str) for v in (head, created_at, key, record["signature"])):
        raise ValueError("head, created_at, key_id or signature is not text")
    try:
        signature = base64.b64decode(record["signature"], validate=True)
    except binascii.Error:
        raise ValueError("the signature is not base64") from None
    position, events = _whole(record["position"], "position"), _whole(record["events"], "events")
    return position, head, events, created_at, key, signature


def _read_witness(path: Path, data: bytes) -> list[_Held]:
    """The checkpoints of the witness's file at ``path``, whose content is ``data``."""
    held = []
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            held.append(_held_form(json.loads(line)))
        except ValueError as error:  # json.JSONDecodeError and UnicodeDecodeError too
            raise typer.BadParameter(
                _("{file}, line {line}: not a checkpoint ({problem})").format(
                    file=path, line=number, problem=error
                ),
                param_hint="--witness",
            ) from None
    return held


def _keep_with_witness(as_json: bool, checkpoints: list[Checkpoint], path: Path) -> None:
    """Append to the witness's file at ``path`` the checkpoints it does not hold. One it
    holds otherwise at the same position (another head, count, time or signature) means
    that the ledger's checkpoint or the file changed since it was kept: that is said (exit
    7) and nothing is written, so that the file keeps what it held."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    held = set(_read_witness(path, data))
    positions = {h[0] for h in held}
    new: list[dict[str, object]] = []
    differ: list[int] = []
    for checkpoint in checkpoints:
        published = checkpoint.published()
        if _held_form(published) in held:
            continue
        if checkpoint.position in positions:
            differ.append(checkpoint.position)
        else:
            new.append(published)
    if new and not differ:
        # A last line left without its end (by another writer) ends before the first new one.
        lines = [b""] if data and not data.endswith(b"\n") else []
        lines += [json.dumps(c, separators=(",", ":")).encode("utf-8") for c in new]
        with path.open("ab") as file:
            file.write(b"\n".join(lines) + b"\n")
    appended = [] if differ else new
    kept = len(checkpoints) - len(new) - len(differ)
    if as_json:
        output.emit_json(
            {
                "path": str(path),
                "appended": [c["position"] for c in appended],
                "held": kept,
                "differ": differ,
            }
        )
    elif not differ:
        output.console().print(
            ngettext(
                "appended {count} checkpoint to {path} ({held} held already)",
                "appended {count} checkpoints to {path} ({held} held already)",
                len(appended),
            ).format(count=format_number(len(appended)), path=path, held=format_number(kept)),
            markup=False,
        )
    if differ:
        output.error_console().print(
            ngettext(
                "the ledger's checkpoint at position {positions} differs from the one {path} "
                "holds: the ledger's checkpoints or the file changed since it was kept; "
                "nothing was written (verify an export with --checkpoints {path})",
                "the ledger's checkpoints at positions {positions} differ from the ones {path} "
                "holds: the ledger's checkpoints or the file changed since it was kept; "
                "nothing was written (verify an export with --checkpoints {path})",
                len(differ),
            ).format(positions=", ".join(str(p) for p in differ), path=path),
            markup=False,
            highlight=False,
        )
        raise typer.Exit(EXIT_DATA_LOSS)


@app.command(
    "as-of",
    epilog="Example: ledgerctl audit as-of 'yesterday 18:00' --incident 0b6f12  "
    "(or 2026-11-28T10:00, '2 hours ago'; a form with a leading dash after --: -- -2h)",
)
def audit_as_of(
    ctx: typer.Context,
    at: Annotated[str, typer.Argument(help=f"The time: {TIME_HELP}.", metavar="TIME")],
    incident: Annotated[
        str | None, typer.Option(help="One incident as it stood (else the list).")
    ] = None,
) -> None:
    """The incidents (or one incident) as they stood at a past time."""
    st = state(ctx)
    then = moment(ctx, at, "TIME")
    ledger = st.ledger()
    if incident:
        found = ledger.get_incident(incident_name(ctx, incident), as_of_time=then)
        if st.as_json:
            output.emit_json(found)
        else:
            events = [e for e in ledger.incident_events(found.name) if e.version <= found.version]
            reference = st.reference()
            output.incident_detail(
                output.console(),
                found,
                events,
                st.zone(),
                reference.status_names(),
                reference.kecamatan_names(),
                output.category_names(reference),
            )
        return
    incidents = list(ledger.list_incidents(as_of_time=then))
    if st.as_json:
        output.emit_json(incidents)
        return
    out = output.console()
    out.print(
        output.incidents_table(
            incidents,
            _("Incidents as of {time}").format(time=output.when(then, st.zone())),
            st.reference().status_names(),
            st.reference().kecamatan_names(),
            output.category_names(st.reference()),
        )
    )
    notice = output.chain_failures_notice(incidents)
    if notice is not None:
        out.print(notice, style="bold red", markup=False)

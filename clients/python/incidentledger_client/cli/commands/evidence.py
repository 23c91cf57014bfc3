"""Evidence: attach a file to an incident, list an incident's evidence, download one, and
(auditors, the coordinator) see who downloaded what. Files stream from and to disk."""

from __future__ import annotations

from collections.abc import Callable
from datetime import tzinfo
from pathlib import Path
from typing import Annotated

import typer

from incidentledger_client.cli import output
from incidentledger_client.cli.commands import group
from incidentledger_client.cli.commands.incidents import Name, RequestId
from incidentledger_client.cli.inputs import incident_name
from incidentledger_client.cli.progress import Meter, progress_bar
from incidentledger_client.cli.state import State, state
from incidentledger_client.errors import LedgerError
from incidentledger_client.i18n import N_, _, format_size
from incidentledger_client.types import CommandResult, Evidence

#: The largest page the ledger gives (the client follows the pages): fewest round trips.
MAX_PAGE = 500
#: The characters of a SHA-256 the table of evidence shows (``--json`` has all 64): enough
#: to tell one file from another by eye, short enough for the table to fit a terminal.
SHORT_DIGEST = 12

#: ``ledgerctl attach`` at the top level.
app = typer.Typer()
evidence_app = group(
    "Evidence attached to incidents: list, download, who downloaded.",
    "ledgerctl -a polres evidence list 0b6f12",
)


def _follow(meter: Meter) -> Callable[[int, int], None]:
    def told(done: int, total: int) -> None:
        meter.measured(done, total, done)

    return told


@app.command(
    epilog="Example: ledgerctl -a polres attach 0b6f12 amplop.jpg -d 'Envelopes handed out'"
)
def attach(
    ctx: typer.Context,
    name: Name,
    path: Annotated[
        Path,
        typer.Argument(
            help="The file: a photo, recording or document.", exists=True, dir_okay=False
        ),
    ],
    description: Annotated[
        str, typer.Option("--description", "-d", help="What the file shows.")
    ] = "",
    media_type: Annotated[
        str,
        typer.Option(
            help="The media type you expect, e.g. image/jpeg (checked against the content)."
        ),
    ] = "",
    file_name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="The file's name in the ledger, e.g. amplop-ipuh.jpg (default: its name "
            "here). A name, not a path.",
        ),
    ] = None,
    supersedes: Annotated[
        str | None,
        typer.Option(
            help="Evidence this file corrects (its event id, or its first 6+ characters): "
            "recorded as superseded by it. Needs --reason."
        ),
    ] = None,
    reason: Annotated[str, typer.Option(help="Why the earlier evidence is corrected.")] = "",
    request_id: RequestId = None,
) -> None:
    """Attach a file to an incident as evidence (streamed, with a progress bar)."""
    st = state(ctx)
    incident = incident_name(ctx, name)
    if supersedes is not None and not reason.strip():
        raise typer.BadParameter(_("a correction needs a reason"), param_hint="--reason")
    # Resolved first: a name that fits no evidence is refused before any byte is sent.
    superseded = _evidence_name(ctx, incident, supersedes) if supersedes is not None else None
    size = path.stat().st_size
    with progress_bar(st, _("uploading"), size or None, _("bytes")) as meter:
        result, evidence = st.ledger().attach_evidence(
            incident,
            path,
            description=description,
            media_type=media_type,
            file_name=file_name,
            request_id=request_id,
            progress=_follow(meter),
        )
        meter.finish(size)
    correction = None
    if superseded is not None:
        try:
            correction = st.ledger().correct(
                incident,
                superseded.rpartition("/")[2],
                "superseded_by",
                "",
                evidence.name.rpartition("/")[2],
                reason=reason,
                # Derived from the attachment's: the command sent again with the same
                # --request-id records the correction at most once too.
                request_id=f"{request_id}.supersedes" if request_id else None,
            )
        except LedgerError:
            # The file is attached, and stays: say so before the refusal of the correction,
            # and how to record it, lest the attachment be sent again as a new one.
            _show_attached(st, result, evidence, None)
            if st.as_json:  # the output says it: "correction": null
                raise
            output.error_console().print(
                _(
                    "the file is attached as {evidence}, but {superseded} is not recorded as "
                    "superseded by it. Do not attach the file again: record the correction "
                    "with: ledgerctl correct {incident} superseded_by '' {new} --event {old} "
                    "--reason '...'"
                ).format(
                    evidence=evidence.name,
                    superseded=superseded,
                    incident=incident,
                    new=evidence.name.rpartition("/")[2],
                    old=superseded.rpartition("/")[2],
                ),
                markup=False,
                highlight=False,
            )
            raise
    _show_attached(st, result, evidence, correction)


def _show_attached(
    st: State, result: CommandResult, evidence: Evidence, correction: CommandResult | None
) -> None:
    if st.as_json:
        output.emit_json({"result": result, "evidence": evidence, "correction": correction})
        return
    out = output.console()
    reference = st.references.get(result.incident, "")
    output.command_result(out, _("attached"), result, reference)
    if correction is not None:
        output.command_result(out, _("corrected"), correction, reference)
    out.print(
        _("{name}: {media_type}, {size}, sha256 {sha256}").format(
            name=evidence.name,
            media_type=evidence.media_type,
            size=format_size(evidence.size_bytes),
            sha256=evidence.sha256,
        ),
        markup=False,
    )


def _evidence_rows(items: list[Evidence], zone: tzinfo) -> list[tuple[object, ...]]:
    return [
        (
            e.name.rpartition("/")[2][:8],
            e.file_name,
            e.media_type,
            format_size(e.size_bytes),
            e.sha256[:SHORT_DIGEST],
            f"{e.uploader.agency}/{e.uploader.officer}",
            output.when(e.attach_time, zone),
            e.description,
            e.superseded_by.rpartition("/")[2][:8] if e.superseded_by else "",
        )
        for e in items
    ]


@evidence_app.command("list", epilog="Example: ledgerctl -a polres evidence list 0b6f12")
def list_(ctx: typer.Context, name: Name) -> None:
    """The evidence attached to an incident, oldest first."""
    st = state(ctx)
    incident = incident_name(ctx, name)
    items = st.ledger().list_evidence(incident, page_size=MAX_PAGE)
    if st.as_json:
        output.emit_json(items)
        return
    columns = (
        N_("evidence"),
        N_("file"),
        N_("type"),
        N_("size"),
        N_("sha256"),
        N_("uploader"),
        N_("attached"),
        N_("description"),
        N_("superseded by"),
    )
    output.console().print(
        output.rows_table(
            _("Evidence of {incident}").format(incident=incident),
            columns,
            _evidence_rows(items, st.zone()),
            no_wrap=(N_("evidence"), N_("sha256")),
        )
    )


def _evidence_name(ctx: typer.Context, incident: str, evidence: str) -> str:
    """The full name of ``evidence``: its name, its event id, or the first 6+ characters
    of the event id as ``evidence list`` shows them."""
    if "/evidence/" in evidence:
        return evidence
    items = state(ctx).ledger().list_evidence(incident, page_size=MAX_PAGE)
    matches = [e.name for e in items if e.name.rpartition("/")[2].startswith(evidence)]
    if len(evidence) < 6 or len(matches) != 1:
        raise typer.BadParameter(
            _("{evidence} names no single evidence of {incident}").format(
                evidence=evidence, incident=incident
            ),
            param_hint="EVIDENCE",
        )
    return matches[0]


@evidence_app.command(
    "get", epilog="Example: ledgerctl -a polres evidence get 0b6f12 5c1e9a -o amplop.jpg"
)
def get(
    ctx: typer.Context,
    name: Name,
    evidence: Annotated[
        str | None,
        typer.Argument(
            help="The evidence: its event id, or its first 6+ characters as lists show "
            "(none when INCIDENT is the whole name attach printed, incidents/ID/evidence/ID)."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Where to write it (default: its file name, here, unless a file has that name).",
        ),
    ] = None,
) -> None:
    """Download evidence to a file (checked against its recorded SHA-256; the download is
    recorded)."""
    st = state(ctx)
    if evidence is None:
        # The name attach prints, as one argument.
        name, marker, evidence = name.partition("/evidence/")
        if not marker or not evidence:
            raise typer.BadParameter(
                _("give the evidence after the incident, or the name attach printed"),
                param_hint="EVIDENCE",
            )
    incident = incident_name(ctx, name)
    full = _evidence_name(ctx, incident, evidence)
    ledger = st.ledger()
    if out is None:
        listed = ledger.list_evidence(incident, page_size=MAX_PAGE)
        found = [e for e in listed if e.name == full]
        out = Path(_local_name(found[0].file_name if found else "", full))
        # The name is the uploader's, another agency's perhaps: it never replaces a file here.
        if out.exists() or out.is_symlink():
            raise typer.BadParameter(
                _("{file} exists here: choose where to write the evidence with --out").format(
                    file=out
                ),
                param_hint="--out",
            )
    with progress_bar(st, _("downloading"), None, _("bytes")) as meter:
        item = ledger.download_evidence(full, out, progress=_follow(meter))
        meter.finish(item.size_bytes)
    if st.as_json:
        output.emit_json({"evidence": item, "file": str(out)})
        return
    output.console().print(
        _("{name} written to {file} ({size}, sha256 {sha256})").format(
            name=item.name, file=out, size=format_size(item.size_bytes), sha256=item.sha256
        ),
        markup=False,
    )


def _local_name(file_name: str, evidence: str) -> str:
    """A file name of this directory for the uploader's ``file_name``: its last part, with
    no control characters and no leading dot (never a hidden file, ``.`` or ``..``); the
    evidence's event id when nothing is left."""
    base = file_name.replace("\\", "/").rpartition("/")[2]
    cleaned = "".join(c for c in base if c.isprintable()).strip().lstrip(".")
    return cleaned or evidence.rpartition("/")[2]


@evidence_app.command(
    "downloads", epilog="Example: ledgerctl -a inspektorat evidence downloads 0b6f12"
)
def downloads(ctx: typer.Context, name: Name) -> None:
    """Who downloaded which evidence of an incident, and when (auditors, coordinator)."""
    st = state(ctx)
    incident = incident_name(ctx, name)
    items = st.ledger().evidence_downloads(incident, page_size=MAX_PAGE)
    if st.as_json:
        output.emit_json(items)
        return
    zone = st.zone()
    rows = [
        (
            d.evidence.rpartition("/")[2][:8],
            f"{d.actor.agency}/{d.actor.officer}",
            output.when(d.download_time, zone),
        )
        for d in items
    ]
    output.console().print(
        output.rows_table(
            _("Downloads of the evidence of {incident}").format(incident=incident),
            (N_("evidence"), N_("by"), N_("when")),
            rows,
        )
    )

"""The reference data the ledger knows: agencies, kecamatan, categories, severities (and the
regency's words for roles, shown with the agencies)."""

from __future__ import annotations

from collections.abc import Sequence

import typer

from incidentledger_client import i18n
from incidentledger_client.cli import output
from incidentledger_client.cli.state import state
from incidentledger_client.i18n import N_, _, labels

#: Top-level commands (``ledgerctl agencies``, ...).
app = typer.Typer()


def _reference_table(
    ctx: typer.Context, title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]
) -> None:
    output.console().print(output.rows_table(title, columns, rows, no_wrap=("code",)))


@app.command(epilog="Example: ledgerctl agencies")
def agencies(ctx: typer.Context) -> None:
    """The agencies and their roles (coordinator, responder, auditor)."""
    st = state(ctx)
    ref = st.reference()
    if st.as_json:
        output.emit_json(ref.agencies)
        return
    roles = ref.role_names()
    rows = [(a.code, a.name, labels.role(a.role, roles.get(a.role))) for a in ref.agencies]
    _reference_table(
        ctx,
        _("Agencies ({regency})").format(regency=ref.regency),
        (N_("code"), N_("name"), N_("role")),
        rows,
    )


@app.command(epilog="Example: ledgerctl kecamatan")
def kecamatan(ctx: typer.Context) -> None:
    """The kecamatan with their desa."""
    st = state(ctx)
    ref = st.reference()
    if st.as_json:
        output.emit_json(ref.kecamatan)
        return
    rows = [(k.code, k.name, ", ".join(k.desa)) for k in ref.kecamatan]
    _reference_table(
        ctx,
        _("Kecamatan ({regency})").format(regency=ref.regency),
        (N_("code"), N_("name"), "desa"),
        rows,
    )


@app.command(epilog="Example: ledgerctl categories")
def categories(ctx: typer.Context) -> None:
    """The incident categories with their IKP dimension."""
    st = state(ctx)
    ref = st.reference()
    if st.as_json:
        output.emit_json(ref.categories)
        return
    language = i18n.current()
    rows = [(c.code, c.name_in(language), c.dimension) for c in ref.categories]
    _reference_table(ctx, _("Categories"), (N_("code"), N_("name"), N_("IKP dimension")), rows)


@app.command(epilog="Example: ledgerctl severities")
def severities(ctx: typer.Context) -> None:
    """The severities, lowest first (and the default of a report that gives none)."""
    st = state(ctx)
    ref = st.reference()
    if st.as_json:
        output.emit_json({"severities": ref.severities, "default": ref.default_severity})
        return
    rows = [
        (
            v.code,
            v.name_in(i18n.current()),
            v.rank,
            # The column says what it is ("default"), its one mark says so in words.
            _("yes") if v.code == ref.default_severity else "",
        )
        for v in ref.severities
    ]
    _reference_table(
        ctx, _("Severities"), (N_("code"), N_("name"), N_("rank"), N_("default")), rows
    )

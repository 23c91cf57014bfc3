"""``ledgerctl config``: ledgerctl's own settings, where each came from, and contexts;
``ledgerctl completion``: the shell completion scripts."""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer

from incidentledger_client.cli import config, output
from incidentledger_client.cli.commands import group
from incidentledger_client.cli.state import LEDGER_ZONE, State, state
from incidentledger_client.errors import LedgerError
from incidentledger_client.i18n import N_, _

app = group(
    "ledgerctl's own settings: the effective values and where each came from, contexts.",
    "ledgerctl config view --context production",
)

#: ``ledgerctl completion``, at the top level.
completion_app = typer.Typer()

#: The variable the completion scripts set when they ask ledgerctl for completions.
COMPLETE_VAR = "_LEDGERCTL_COMPLETE"


def _masked(name: str, value: Any) -> Any:
    if name == "token" and value:
        text = str(value)
        return f"{text[:4]}…({len(text)} characters)"
    return value


def _shown(name: str, value: Any) -> str:
    """A setting's value in the table, for people: the token masked, none as "-"."""
    if value is None or value == "":
        return "-"
    if name == "token":
        text = str(value)
        return _("{start}…({count} characters)").format(start=text[:4], count=len(text))
    return str(value)


#: Where a setting came from, as config.py records it (in English, as --json shows it).
_TOKENS_FILE_SOURCE = re.compile(r"^tokens file for agency (?P<agency>\S+) \((?P<source>.*)\)$")


def source_said(source: str) -> str:
    """Where a setting came from, for people: a flag and a variable as typed (``flag
    --address``, ``env LEDGER_ADDRESS``), the default, a config file and the tokens file in the
    run's language (``--json`` keeps config.py's English)."""
    if source == "default":
        return _("default")
    if source == LEDGER_ZONE:
        return _("the ledger (the regency's, from its reference data)")
    found = _TOKENS_FILE_SOURCE.match(source)
    if found:
        return _("tokens file, for agency {agency} ({source})").format(
            agency=found["agency"], source=source_said(found["source"])
        )
    if source.startswith("config "):
        return _("config file {where}").format(where=source.removeprefix("config "))
    return source


def _zone(st: State) -> tuple[str, str, LedgerError | None]:
    """The zone the run shows and reads times in, where it came from, and why the ledger did
    not say it when it was asked and failed. With no zone set that is the ledger's, so the
    ledger is asked (one call, within the run's timeout); one that does not answer, or
    refuses the call, leaves the default, and the view says why."""
    try:
        zone, source = st.zone_source()
    except LedgerError as failure:
        zone, source = st.zone_source(ask_ledger=False)
        return zone.key, source, failure
    return zone.key, source, None


def _ledger_failure(failure: LedgerError) -> str:
    """Why the ledger did not say its zone, shortly: its reason, else its code."""
    return failure.reason or failure.code


@app.command("view", epilog="Example: ledgerctl config view --context production")
def config_view(ctx: typer.Context) -> None:
    """The effective settings and where each came from (flag, environment, config file, ledger)."""
    st = state(ctx)
    settings = st.settings
    zone, zone_source, failure = _zone(st)
    rows = [
        (
            name,
            zone if name == "zone" else _masked(name, getattr(settings, name)),
            zone_source if name == "zone" else settings.source(name),
        )
        for name in config.SETTINGS
    ]
    if st.as_json:
        shown_settings: dict[str, dict[str, Any]] = {
            n: {"value": v, "source": src} for n, v, src in rows
        }
        if failure is not None:
            shown_settings["zone"]["ledger_error"] = _ledger_failure(failure)
        output.emit_json(
            {
                "config_file": settings.config_file or None,
                "context": settings.context or None,
                "settings": shown_settings,
            }
        )
        return
    out = output.console()
    none = _("(none)")
    out.print(_("config file: {path}").format(path=settings.config_file or none), markup=False)
    out.print(_("context: {name}").format(name=settings.context or none), markup=False)
    shown = [
        (name, _shown(name, zone if name == "zone" else getattr(settings, name)), source_said(src))
        for name, _value, src in rows
    ]
    if failure is not None:
        said = _("default (the ledger did not say its zone: {reason})").format(
            reason=_ledger_failure(failure)
        )
        shown = [(n, v, said if n == "zone" else src) for n, v, src in shown]
    out.print(
        output.rows_table(
            _("Effective settings"), (N_("setting"), N_("value"), N_("source")), shown
        )
    )


@app.command("contexts", epilog="Example: ledgerctl config contexts")
def config_contexts(ctx: typer.Context) -> None:
    """The contexts (profiles) of the config file; the current one is marked."""
    st = state(ctx)
    file = config.load_config_file(st.options.get("config"))
    contexts = config.contexts_of(file)
    current = st.settings.context
    if st.as_json:
        output.emit_json(
            {"current": current or None, "contexts": {n: dict(c) for n, c in contexts.items()}}
        )
        return
    output.console().print(
        output.rows_table(
            _("Contexts in {path}").format(path=file.path or _("(no config file)")),
            ("", N_("context"), N_("address")),
            (
                ("*" if n == current else "", n, c.get("address", config.DEFAULT_ADDRESS))
                for n, c in sorted(contexts.items())
            ),
        )
    )


@app.command("use-context", epilog="Example: ledgerctl config use-context production")
def config_use_context(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="The context.")]
) -> None:
    """Make a context the current one (writes current_context into the config file)."""
    st = state(ctx)
    file = config.load_config_file(st.options.get("config"))
    contexts = config.contexts_of(file)
    if file.path is None or name not in contexts:
        known = sorted(contexts)
        raise config.ConfigError(
            _(
                "no context {context}{suggestion} (known: {known}; add [contexts.{name}] to "
                "the config file)"
            ).format(
                context=repr(name),
                suggestion=config.suggest(name, known),
                known=", ".join(known) or _("none"),
                name=name,
            )
        )
    config.set_current_context(file.path, name)
    if st.as_json:
        output.emit_json({"current": name})
    else:
        output.console().print(_("current context: {name}").format(name=name), markup=False)


@completion_app.command(
    epilog="Example: ledgerctl completion bash > ~/.local/share/bash-completion/completions/"
    "ledgerctl  (zsh: into a directory of $fpath as _ledgerctl; fish: "
    "~/.config/fish/completions/ledgerctl.fish)"
)
def completion(
    shell: Annotated[str, typer.Argument(help="bash, zsh or fish.", metavar="SHELL")],
) -> None:
    """Print the shell completion script for bash, zsh or fish."""
    # typer writes the scripts that call back into ledgerctl with _LEDGERCTL_COMPLETE set.
    from typer._completion_shared import get_completion_script

    if shell not in {"bash", "zsh", "fish"}:
        raise typer.BadParameter(
            _("must be bash, zsh or fish{suggestion}").format(
                suggestion=config.suggest(shell, ("bash", "zsh", "fish"))
            ),
            param_hint="SHELL",
        )
    output.emit_line(
        get_completion_script(prog_name="ledgerctl", complete_var=COMPLETE_VAR, shell=shell)
    )

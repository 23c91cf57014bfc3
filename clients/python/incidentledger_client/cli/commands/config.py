"""``ledgerctl config``: ledgerctl's own settings, where each came from, and contexts;
``ledgerctl completion``: the shell completion scripts."""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer

from incidentledger_client.cli import config, output
from incidentledger_client.cli.commands import group
from incidentledger_client.cli.state import state
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
    found = _TOKENS_FILE_SOURCE.match(source)
    if found:
        return _("tokens file, for agency {agency} ({source})").format(
            agency=found["agency"], source=source_said(found["source"])
        )
    if source.startswith("config "):
        return _("config file {where}").format(where=source.removeprefix("config "))
    return source


@app.command("view", epilog="Example: ledgerctl config view --context production")
def config_view(ctx: typer.Context) -> None:
    """The effective settings and where each came from (flag, environment, config file)."""
    st = state(ctx)
    settings = st.settings
    rows = [
        (name, _masked(name, getattr(settings, name)), settings.source(name))
        for name in config.SETTINGS
    ]
    if st.as_json:
        output.emit_json(
            {
                "config_file": settings.config_file or None,
                "context": settings.context or None,
                "settings": {n: {"value": v, "source": src} for n, v, src in rows},
            }
        )
        return
    out = output.console()
    none = _("(none)")
    out.print(_("config file: {path}").format(path=settings.config_file or none), markup=False)
    out.print(_("context: {name}").format(name=settings.context or none), markup=False)
    shown = [
        (name, _shown(name, getattr(settings, name)), source_said(source))
        for name, _value, source in rows
    ]
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
            f"no context {name!r}{config.suggest(name, known)} "
            f"(known: {', '.join(known) or 'none'}; add [contexts.{name}] to the config file)"
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

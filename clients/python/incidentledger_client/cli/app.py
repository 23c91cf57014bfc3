"""The ledgerctl application: the root command and its global options, the command groups
(``cli/commands/``) assembled, and :func:`main`, which runs it and turns an error into a
message and an exit code (``cli/errors.py``). See ``ledgerctl --help``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
import typer.main
from typer._click.exceptions import UsageError

from incidentledger_client import LedgerError, __version__, i18n
from incidentledger_client.cli import arguments, config, helptexts, output
from incidentledger_client.cli.commands import (
    audit,
    dead_letters,
    evidence,
    incidents,
    intake,
    personal_data,
    reference,
    situation,
    webhooks,
)
from incidentledger_client.cli.commands import config as config_commands
from incidentledger_client.cli.commands.config import COMPLETE_VAR
from incidentledger_client.cli.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OTHER,
    EXIT_OUTPUT_CLOSED,
    EXIT_USAGE,
    InterruptedCommandError,
    exit_code_for,
    explain,
    said,
)
from incidentledger_client.cli.state import State
from incidentledger_client.i18n import _

EPILOG = (
    "Exit codes: 0 ok, 1 other, 2 usage, 3 not found, 4 conflict, 5 permission, "
    "6 server/unavailable, 7 data changed or lost."
)

#: -h as well as --help, on every command (click passes it down to the subcommands).
CONTEXT = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="ledgerctl",
    help="Command-line tool of the incident ledger: report and handle incidents, follow the "
    "situation, audit the ledger. Global options (--agency, --json, ...) go anywhere on the "
    "line.",
    epilog="Example: ledgerctl report 'Mass gathering' crowd_gathering kota_mukomuko "
    "--severity high -a kesbangpol\n\n" + EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings=CONTEXT,
)

# The order of the commands in --help: the top-level commands, then the groups.
app.add_typer(incidents.app)
app.add_typer(intake.app)
app.add_typer(situation.app)
app.add_typer(reference.app)
app.add_typer(config_commands.completion_app)
app.add_typer(incidents.handover_app, name="handover")
app.add_typer(incidents.close_app, name="close")
app.add_typer(webhooks.app, name="webhooks")
app.add_typer(audit.app, name="audit")
app.add_typer(evidence.app)
app.add_typer(evidence.evidence_app, name="evidence")
app.add_typer(config_commands.app, name="config")
app.add_typer(personal_data.app, name="pii")
webhooks.app.add_typer(dead_letters.app)


def _show_version(value: bool) -> None:
    if value:
        output.emit_line(f"ledgerctl {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def root(
    ctx: typer.Context,
    address: Annotated[
        str | None, typer.Option(help="Ledger address host:port (env LEDGER_ADDRESS).")
    ] = None,
    notifier_address: Annotated[
        str | None, typer.Option(help="Notifier address host:port (env NOTIFIER_ADDRESS).")
    ] = None,
    token: Annotated[str | None, typer.Option(help="Bearer token (env LEDGER_TOKEN).")] = None,
    agency: Annotated[
        str | None,
        typer.Option(
            "--agency",
            "-a",
            help="Act as this agency: its token from the tokens file (env LEDGER_AGENCY).",
        ),
    ] = None,
    tokens_file: Annotated[
        Path | None,
        typer.Option(help="Development tokens file (default data/credentials/dev-tokens.yaml)."),
    ] = None,
    config_file: Annotated[
        Path | None,
        typer.Option("--config", help="TOML config file (default ~/.config/ledgerctl.toml)."),
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Deadline of each call, seconds.")] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option(help="TLS: verify the servers with this CA file (env LEDGER_TLS_CA)."),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            help="Mutual TLS: client certificate, O = agency (env LEDGER_TLS_CLIENT_CERT)."
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(help="Mutual TLS: the certificate's key (env LEDGER_TLS_CLIENT_KEY)."),
    ] = None,
    zone: Annotated[
        str | None,
        typer.Option(
            help="Time zone of the times shown and typed (env LEDGERCTL_ZONE; default the "
            "regency's, as the ledger says it, else Asia/Jakarta, WIB)."
        ),
    ] = None,
    context: Annotated[
        str | None,
        typer.Option(
            "--context",
            help="Use this context (profile) of the config file (env LEDGERCTL_CONTEXT).",
        ),
    ] = None,
    lang: Annotated[
        str | None,
        typer.Option(
            "--lang",
            help="Language of the text for people: id (Bahasa Indonesia) or en (env LEDGER_LANG, "
            "then the locale, LANG). --json output is the same in every language.",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Machine-readable JSON on stdout (errors on stderr).")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_show_version, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Command-line tool of the incident ledger."""
    options = {
        "address": address,
        "notifier_address": notifier_address,
        "token": token,
        "agency": agency,
        "tokens_file": tokens_file,
        "config": config_file,
        "timeout": timeout,
        "tls_ca": tls_ca,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "zone": zone,
        "context": context,
    }
    # main() hands its State in, to explain an error with what the run used.
    st = ctx.obj if isinstance(ctx.obj, State) else State()
    st.options, st.as_json = options, as_json
    ctx.obj = st
    ctx.call_on_close(st.close)


def _wants_json(argv: list[str]) -> bool:
    head = argv[: argv.index("--")] if "--" in argv else argv
    return "--json" in head


def _fail(
    as_json: bool,
    exit_code: int,
    code: str,
    message: str,
    reason: str = "",
    metadata: dict[str, str] | None = None,
    request_id: str | None = None,
) -> int:
    """Report an error on stderr: a line for people, a JSON object with --json (with the
    command's ``request_id`` when it sent one: a program sends it again with that id)."""
    if as_json:
        error: dict[str, object] = {
            "code": code,
            "reason": reason,
            "message": message,
            "metadata": metadata or {},
            "exit_code": exit_code,
        }
        if request_id:
            error["request_id"] = request_id
        output.emit_error_json({"error": error})
    else:
        label = f"{code} {reason}" if reason else code
        output.error_console().print(
            f"ledgerctl: {label}: {message}", markup=False, highlight=False
        )
    return exit_code


def _language_flag(argv: list[str]) -> str | None:
    """The value of --lang (the last one wins, as click has it), before any ``--``."""
    head = argv[: argv.index("--")] if "--" in argv else argv
    found = None
    for i, word in enumerate(head):
        if word == "--lang" and i + 1 < len(head):
            found = head[i + 1]
        elif word.startswith("--lang="):
            found = word.partition("=")[2]
    return found


def main(argv: list[str] | None = None) -> int:
    """Run ledgerctl; return its exit code (see the module docstring)."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    as_json = _wants_json(args)
    args = arguments.hoist_globals(typer.main.get_command(app), args)
    try:
        language = i18n.choose(_language_flag(args), os.environ)
    except ValueError as error:
        return _fail(as_json, EXIT_USAGE, "USAGE", str(error))
    if as_json:
        # What a program reads is the same whatever the language: with --json the whole run,
        # its error messages included, is in English (the source language).
        language = "en"
    with i18n.using(language), helptexts.typer_words(i18n._):
        try:
            code = _run(args, as_json)
            sys.stdout.flush()  # what is still buffered meets a closed pipe here, not at exit
        except (output.OutputClosed, BrokenPipeError):
            return _output_closed()
        return code


def _output_closed() -> int:
    """Its reader closed the output (``| head -1``): end quietly, with the status a shell
    gives a tool that SIGPIPE ended (128 + 13), as ``cat`` and ``git log`` end."""
    import sys

    # The interpreter flushes stdout once more on its way out: into the void, not the pipe.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_OUTPUT_CLOSED


def _run(args: list[str], as_json: bool) -> int:
    """Run the command line (already hoisted) in the language chosen."""
    st = State()
    # Built anew for each run, so that its help texts can be put in the run's language.
    command = typer.main.get_command(app)
    helptexts.translate(command, i18n._)
    if as_json:
        helptexts.no_help_without_arguments(command)
    if os.environ.get(COMPLETE_VAR):
        # A completion script asks: typer's shell classes answer (it registers them only
        # when its own --install-completion options are on, which ledgerctl replaces).
        from typer._completion_classes import completion_init

        completion_init()
    try:
        returned = command.main(
            args=args,
            prog_name="ledgerctl",
            standalone_mode=False,
            complete_var=COMPLETE_VAR,
            obj=st,
        )
        # Outside standalone mode, typer returns the code of a command's typer.Exit (such
        # as `audit verify`'s 1 for a divergence) instead of raising it.
        if isinstance(returned, int) and not isinstance(returned, bool):
            return returned
    except typer.Exit as stop:
        return stop.exit_code
    except typer.Abort:
        return _fail(as_json, EXIT_OTHER, "ABORTED", "aborted")
    except InterruptedCommandError as stop:
        return _fail(as_json, EXIT_INTERRUPTED, "INTERRUPTED", str(stop), metadata=stop.metadata)
    except typer.TyperException as error:  # usage errors (exit code 2) and the like
        missing = (
            helptexts.missing_command(error, i18n._) if isinstance(error, UsageError) else None
        )
        if missing is not None:
            error.message = missing
        show = getattr(error, "show", None)
        if as_json or not callable(show):
            return _fail(as_json, error.exit_code, "USAGE", error.format_message())
        if isinstance(error, UsageError) and (i18n.current() != "en" or missing is not None):
            output.error_console().print(
                helptexts.usage_error(error, i18n._), markup=False, highlight=False
            )
        else:
            show()
        return error.exit_code
    except config.ConfigError as error:
        return _fail(as_json, EXIT_USAGE, "CONFIGURATION", str(error))
    except LedgerError as error:
        message, metadata = error.message if as_json else said(error), dict(error.metadata)
        try:
            hint = explain(error, st)
        except config.ConfigError:  # the settings themselves are at fault: say only the error
            hint = None
        if hint is not None:
            message = f"{hint.message} ({message})"
            metadata.update(hint.metadata)
        # The id the run chose is the one to send again with: a triage's calls carry ids
        # derived from it (``{id}.{k}``), which the error names.
        request_id = st.request_id or error.request_id
        return _fail(
            as_json, exit_code_for(error), error.code, message, error.reason, metadata, request_id
        )
    except BrokenPipeError:
        raise  # the output's reader went away: main ends quietly
    except OSError as error:
        # A file of this machine that ledgerctl reads or writes (an --out in a directory that
        # does not exist, a full disk): said in a line, not a traceback.
        problem = error.strerror or str(error)
        if not error.filename:
            # A write that failed on a full disk names no file: said without an empty name.
            return _fail(
                as_json,
                EXIT_OTHER,
                "FILE",
                _("cannot write or read a file: {problem}").format(problem=problem),
            )
        return _fail(
            as_json,
            EXIT_OTHER,
            "FILE",
            _("cannot write or read {file}: {problem}").format(
                file=error.filename, problem=problem
            ),
        )
    return EXIT_OK

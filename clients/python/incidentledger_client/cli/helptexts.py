"""ledgerctl's help in the language of the run.

Typer builds the click commands from the English help texts and docstrings when the modules
are imported; :func:`translate` walks the built tree (``typer.main.get_command(app)``, built
anew for each run) and puts each text through the catalog. :func:`messages` lists the same
texts for the catalog's extraction (``incidentledger_client.i18n.catalogs``), so no help
text needs marking in the code and none is missed.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from typer import _click as click
from typer._click.exceptions import NoArgsIsHelpError, UsageError
from typer.core import TyperGroup

from incidentledger_client.i18n import N_

#: The text attributes of a command and of a parameter that people read.
_COMMAND_TEXTS = ("help", "short_help", "epilog")
_PARAMETER_TEXTS = ("help",)
#: typer's own words in its help pages (module constants of typer.rich_utils), as written there.
_TYPER_WORDS = {
    "ARGUMENTS_PANEL_TITLE": "Arguments",
    "OPTIONS_PANEL_TITLE": "Options",
    "COMMANDS_PANEL_TITLE": "Commands",
    "REQUIRED_LONG_STRING": "[required]",
    "DEFAULT_STRING": "[default: {}]",
    "ENVVAR_STRING": "[env var: {}]",
    "ERRORS_PANEL_TITLE": "Error",
}
#: The prefix of a usage line (typer's vendored click writes it in English).
USAGE = "Usage: "
#: The help of -h/--help (typer's vendored click writes it in English).
HELP_OPTION = "Show this message and exit."
HELP_OPTION_NAMES = ["-h", "--help"]
#: The placeholders of a usage line (typer writes them in English), as written there.
OPTIONS_METAVAR = "[OPTIONS]"
COMMAND_METAVAR = "COMMAND [ARGS]..."
#: The kinds of value typer names in a help page's type column, and their message ids.
_TYPE_WORDS = {
    "<str>": N_("<text>"),
    "<int>": N_("<whole number>"),
    "<int range>": N_("<whole number range>"),
    "<float>": N_("<number>"),
    "<bool>": N_("<yes/no>"),
    "<path>": N_("<path>"),
    "<file>": N_("<file>"),
    "<list[str]>": N_("<list of texts>"),
    "<datetime>": N_("<time>"),
}


def _walk(command: click.Command) -> Iterator[click.Command]:
    yield command
    subcommands = getattr(command, "commands", None) or {}
    for name in sorted(subcommands):
        yield from _walk(subcommands[name])


def _texts(command: click.Command) -> Iterator[tuple[object, str, str]]:
    for cmd in _walk(command):
        for attribute in _COMMAND_TEXTS:
            text = getattr(cmd, attribute, None)
            if text:
                yield cmd, attribute, text
        for param in cmd.params:
            for attribute in _PARAMETER_TEXTS:
                text = getattr(param, attribute, None)
                if text:
                    yield param, attribute, text


def _arguments(command: click.Command) -> Iterator[tuple[click.Parameter, str]]:
    """Each argument of ``command``'s tree and its placeholder as written in the code
    (``INCIDENT``; ``AGENCY`` for an argument named ``agency``), without ``...``; and each
    option that names its value's placeholder in the code (``--codes FILE``, ``--to
    AGENCY``: typer shows it in place of the kind of value)."""
    for cmd in _walk(command):
        for param in cmd.params:
            if param.param_type_name == "argument":
                yield param, (param.metavar or (param.name or "").upper()).removesuffix("...")
            elif param.metavar:
                yield param, param.metavar.removesuffix("...")


def placeholders(command: click.Command) -> set[str]:
    """The placeholders of ``command``'s tree as written in the code (``INCIDENT``, ``FILE``),
    each of which a help page shows in the language of the run."""
    return {placeholder for _, placeholder in _arguments(command)}


def messages(command: click.Command) -> list[str]:
    """Every help text of ``command`` and its subcommands, the placeholders of its
    arguments, and typer's and click's words."""
    found = [text for _, _, text in _texts(command)]
    return [
        *found,
        *sorted(placeholders(command)),
        *_TYPER_WORDS.values(),
        HELP_OPTION,
        USAGE,
        OPTIONS_METAVAR,
        COMMAND_METAVAR,
    ]


def flow(text: str) -> str:
    """``text`` with each paragraph on one line, for the terminal to wrap to its width.

    A help text keeps the line breaks of its source (a docstring wrapped at the code's width,
    a translation at the catalog's): typer shows them as they are, and the terminal wraps the
    lines again, into short and broken ones. Paragraphs (a blank line between them) stay, and
    so does a paragraph that starts with ``\\b`` (click's "keep my line breaks").
    """
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(
        paragraph
        if paragraph.startswith("\b")
        else " ".join(line.strip() for line in paragraph.split("\n"))
        for paragraph in paragraphs
    )


def translate(command: click.Command, gettext: Callable[[str], str]) -> None:
    """Put every help text of the (freshly built) ``command`` tree through ``gettext``, each
    paragraph on one line (:func:`flow`), and the placeholders of its usage line."""
    for owner, attribute, text in list(_texts(command)):
        setattr(owner, attribute, flow(gettext(text)))
    # The placeholders, in the usage line, the help's table and the usage errors
    # (``ledgerctl assign [OPSI] KEJADIAN INSTANSI``, ``--codes BERKAS``); one case for all.
    for param, placeholder in list(_arguments(command)):
        many = "..." if (param.metavar or "").endswith("...") else ""
        param.metavar = gettext(placeholder) + many
    for cmd in _walk(command):
        if cmd.options_metavar == OPTIONS_METAVAR:
            cmd.options_metavar = gettext(OPTIONS_METAVAR)
        if getattr(cmd, "subcommand_metavar", None) == COMMAND_METAVAR:
            cmd.subcommand_metavar = gettext(COMMAND_METAVAR)  # type: ignore[attr-defined]
    from typer._click.decorators import help_option

    for cmd in _walk(command):
        if cmd.add_help_option and cmd._help_option is None:
            # The option click would create on first use, created now with its help translated.
            help_option(HELP_OPTION_NAMES)(cmd)
            option = cmd.params.pop()
            option.help = gettext(HELP_OPTION)  # type: ignore[attr-defined]
            cmd._help_option = option  # type: ignore[assignment]


@contextmanager
def typer_words(gettext: Callable[[str], str]) -> Iterator[None]:
    """typer's own words of a help page (panel titles, ``[required]``, the kinds of value such
    as ``<str>``) in the language of the run, for the block (typer keeps them as module
    constants and methods: they are set back afterwards)."""
    import typer.core
    import typer.rich_utils as rich_utils
    from typer._click.formatting import HelpFormatter

    saved = {name: getattr(rich_utils, name) for name in _TYPER_WORDS}
    saved_gettext = getattr(typer.core, "_")  # noqa: B009 - a module's private name
    write_usage = HelpFormatter.write_usage
    display_type = typer.core._TyperParameter.display_type

    def type_in_language(self: typer.core._TyperParameter, ctx: click.Context) -> str:
        shown = display_type(self, ctx)
        msgid = _TYPE_WORDS.get(shown)
        return shown if msgid is None or gettext(msgid) == msgid else gettext(msgid)

    def usage_in_language(
        self: HelpFormatter, prog: str, args: str = "", prefix: str | None = None
    ) -> None:
        write_usage(self, prog, args, gettext(USAGE) if prefix is None else prefix)

    try:
        for name, text in _TYPER_WORDS.items():
            setattr(rich_utils, name, gettext(text))
        setattr(typer.core, "_", gettext)  # noqa: B010 - typer's "No such command", ...
        HelpFormatter.write_usage = usage_in_language  # type: ignore[method-assign]
        typer.core._TyperParameter.display_type = type_in_language  # type: ignore[method-assign]
        yield
    finally:
        for name, value in saved.items():
            setattr(rich_utils, name, value)
        setattr(typer.core, "_", saved_gettext)  # noqa: B010
        HelpFormatter.write_usage = write_usage  # type: ignore[method-assign]
        typer.core._TyperParameter.display_type = display_type  # type: ignore[method-assign]


#: typer's own messages through gettext (typer.core), put through the catalog by typer_words.
MISSING_COMMAND = N_("Missing command.")
TYPER_MESSAGES = (MISSING_COMMAND, N_("No such command {name!r}."))


def missing_command(error: UsageError, gettext: Callable[[str], str]) -> str | None:
    """What to say of a group given no command (``ledgerctl``, ``ledgerctl close``): that
    one is missing, and which it takes; None for any other usage error.

    typer says it two ways, neither of which names the commands: a group run without
    arguments prints its help and raises an error whose message is empty (it was shown as
    ``Error: `` and nothing after it), and a group given only options says "Missing
    command."."""
    ctx = error.ctx
    if ctx is None or not isinstance(ctx.command, TyperGroup):
        return None
    if not isinstance(error, NoArgsIsHelpError) and error.message != gettext(MISSING_COMMAND):
        return None
    group = ctx.command
    names = [
        name
        for name in group.list_commands(ctx)
        if (command := group.get_command(ctx, name)) is not None and not command.hidden
    ]
    return gettext(N_("Missing command: give one of {commands}.")).format(commands=", ".join(names))


def no_help_without_arguments(command: click.Command) -> None:
    """Leave out the help page a group prints when it is run without arguments (on stdout,
    in English): with --json, stdout is for results, and the error object says what is
    missing (:func:`missing_command`)."""
    for cmd in _walk(command):
        if isinstance(cmd, TyperGroup):
            cmd.no_args_is_help = False


#: typer's (vendored click's) usage errors, as it writes them, and their message ids.
_USAGE_ERRORS = (
    (
        re.compile(r"^Invalid value for (?P<param>.+?): (?P<message>.*)$", re.S),
        N_("Invalid value for {param}: {message}"),
    ),
    # an option that an environment variable may give too: "(env var: 'WEBHOOK_SECRET')".
    (
        re.compile(r"^Missing option (?P<param>.+) \(env var: (?P<value>.+)\)\.$", re.S),
        N_("Missing option {param} (or the environment variable {value})."),
    ),
    (re.compile(r"^Missing option (?P<param>.+)\.$", re.S), N_("Missing option {param}.")),
    (re.compile(r"^Missing argument (?P<param>.+)\.$", re.S), N_("Missing argument {param}.")),
    # typer suggests the options whose names are close: "(Possible options: --status)".
    (
        re.compile(r"^No such option: (?P<param>\S+) \(Possible options: (?P<value>.*)\)$", re.S),
        N_("No such option: {param} (did you mean {value}?)"),
    ),
    (re.compile(r"^No such option: (?P<param>.+)$", re.S), N_("No such option: {param}")),
    # typer suggests the commands whose names are close, after its (translated) "No such
    # command 'verfy'", in words of its own: "Did you mean 'verify'?"
    (
        re.compile(r"^(?P<message>.+)\. Did you mean (?P<value>.+)\?$", re.S),
        N_("{message}. Did you mean {value}?"),
    ),
    # click said "argument" or "arguments"; the click typer vendors says "argument(s)".
    (
        re.compile(r"^Got unexpected extra argument(?:s|\(s\))? \((?P<param>.*)\)$", re.S),
        N_("Unexpected extra arguments ({param})"),
    ),
    (
        re.compile(r"^Option (?P<param>'.+') requires an argument\.$", re.S),
        N_("Option {param} needs a value."),
    ),
    (
        re.compile(r"^Option (?P<param>'.+') does not take a value\.$", re.S),
        N_("Option {param} takes no value."),
    ),
)

#: What typer says of a value its type cannot read (pydantic's words), said again in the
#: run's language; an "Invalid value" of ledgerctl's own checks is translated already.
_VALUE_ERRORS = {
    "Input should be a valid integer, unable to parse string as an integer": N_(
        "a whole number is expected"
    ),
    "Input should be a valid number, unable to parse string as a number": N_(
        "a number is expected"
    ),
}


#: What typer says of a path it checks (a FILE argument that does not exist, a folder given
#: for a file) and of a number out of its range, with the parts that stay as they are.
_VALUE_PATTERNS = (
    (
        re.compile(r"^(?:file|directory|path) (?P<path>'.*') does not exist\.$", re.S),
        N_("{path} does not exist"),
    ),
    (
        re.compile(r"^(?:file|directory|path) (?P<path>'.*') is a directory\.$", re.S),
        N_("{path} is a folder, not a file"),
    ),
    (
        re.compile(r"^(?:file|directory|path) (?P<path>'.*') is a file\.$", re.S),
        N_("{path} is a file, not a folder"),
    ),
    (
        re.compile(r"^(?:file|directory|path) (?P<path>'.*') is not readable\.$", re.S),
        N_("{path} cannot be read"),
    ),
    (
        re.compile(r"^(?:file|directory|path) (?P<path>'.*') is not writable\.$", re.S),
        N_("{path} cannot be written"),
    ),
    (
        re.compile(r"^Input should be less than or equal to (?P<limit>\S+)$"),
        N_("at most {limit}"),
    ),
    (
        re.compile(r"^Input should be greater than or equal to (?P<limit>\S+)$"),
        N_("at least {limit}"),
    ),
)


def _value_error(message: str, gettext: Callable[[str], str]) -> str | None:
    """typer's words for a value it refused, in the run's language; None for others."""
    said = _VALUE_ERRORS.get(message)
    if said is not None:
        return gettext(said)
    for pattern, msgid in _VALUE_PATTERNS:
        found = pattern.match(message)
        if found:
            return gettext(msgid).format(**found.groupdict())
    return None


#: An argument's placeholder in a usage error's parameter (``'INCIDENT'``, ``TO_AGENCY``).
_PLACEHOLDER = re.compile(r"(?<![\w-])[A-Z][A-Z_]+(?![\w-])")


def usage_error(error: UsageError, gettext: Callable[[str], str]) -> str:
    """A usage error as typer shows it (usage line, where to find help, the error), in the
    language of ``gettext``."""
    lines = []
    ctx = error.ctx
    if ctx is not None:
        lines.append(ctx.get_usage())
        if ctx.command.get_help_option(ctx) is not None:
            lines.append(
                gettext(N_("Try '{command} {option}' for help.")).format(
                    command=ctx.command_path, option=ctx.help_option_names[0]
                )
            )
        lines.append("")
    message = error.format_message()
    for pattern, msgid in _USAGE_ERRORS:
        found = pattern.match(message)
        if found:
            parts = found.groupdict()
            if parts.get("param"):
                # An argument's placeholder as the help names it (INCIDENT -> KEJADIAN),
                # whichever code raised the error; options (--days) stay as typed.
                parts["param"] = _PLACEHOLDER.sub(lambda m: gettext(m[0]), parts["param"])
            said = _value_error(parts.get("message") or "", gettext)
            if said is not None:
                parts["message"] = said
            message = gettext(msgid).format(**parts)
            break
    lines.append(gettext(N_("Error: {message}")).format(message=message))
    return "\n".join(lines)

"""Global options anywhere on the line, as kubectl and gh accept them.

click only parses a group's options before the subcommand's name, so ``ledgerctl list --json``
and ``ledgerctl show X -a polres`` would be usage errors. :func:`hoist_globals` moves the root's
options that follow the command's name in front of it, unless the command has an option of the
same name itself (``audit export --agency`` filters by agency; ``-a`` there is still global).
"""

from __future__ import annotations

# typer 0.29 vendors click (typer._click): its groups and options are typer.core's classes.
from typer._click.core import Command, Context
from typer.core import TyperGroup, TyperOption


def _options(command: Command) -> dict[str, bool]:
    """Option spelling -> whether it takes a value."""
    found: dict[str, bool] = {}
    for param in command.params:
        if isinstance(param, TyperOption):
            for name in (*param.opts, *param.secondary_opts):
                found[name] = not param.is_flag and not param.count
    return found


def _split(token: str) -> tuple[str, str | None]:
    """``--name=value`` -> (``--name``, ``value``); ``-aVALUE`` is left to the caller."""
    if token.startswith("--") and "=" in token:
        name, _, value = token.partition("=")
        return name, value
    return token, None


def hoist_globals(root: Command, argv: list[str]) -> list[str]:
    """``argv`` with the root's options moved before the command path."""
    globals_ = _options(root)
    ctx = Context(root)
    head: list[str] = []
    i = 0
    # The root's own options before the command's name stay where they are.
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        name, attached = _split(argv[i])
        head.append(argv[i])
        i += 1
        if globals_.get(name) and attached is None and i < len(argv):
            head.append(argv[i])
            i += 1
    if not isinstance(root, TyperGroup):
        return argv
    path: list[str] = []
    command: Command = root
    while i < len(argv) and isinstance(command, TyperGroup):
        sub = command.get_command(ctx, argv[i])
        if sub is None:
            break
        path.append(argv[i])
        command = sub
        i += 1
    if not path:
        return argv
    local = _options(command)
    moved: list[str] = []
    rest: list[str] = []
    while i < len(argv):
        word = argv[i]
        if word == "--":
            rest.extend(argv[i:])
            break
        name, attached = _split(word)
        if name in local:
            rest.append(word)
            i += 1
            if local[name] and attached is None and i < len(argv):
                rest.append(argv[i])
                i += 1
            continue
        short_attached = (
            len(word) > 2 and word[0] == "-" and word[1] != "-" and word[:2] in globals_
        )
        if name in globals_ or short_attached:
            moved.append(word)
            i += 1
            if name in globals_ and globals_[name] and attached is None and i < len(argv):
                moved.append(argv[i])
                i += 1
            continue
        rest.append(word)
        i += 1
    return [*head, *moved, *path, *rest]

"""The ledgerctl commands, one module per group; ``cli/app.py`` assembles them."""

import typer


def group(help_: str, example: str) -> typer.Typer:
    """A group of subcommands (``ledgerctl GROUP COMMAND``)."""
    return typer.Typer(help=help_, epilog=f"Example: {example}", no_args_is_help=True)

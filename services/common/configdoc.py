"""docs/configuration.md, generated from the declarations in :mod:`services.common.config`.

``python -m services.common.configdoc`` writes it; ``--check`` exits 1 when the file differs
from what would be written (tests/unit/test_configuration_doc.py checks the same in CI).
"""

from __future__ import annotations

import argparse
import inspect
import sys
from datetime import datetime
from pathlib import Path

from services.common.config import (
    GROUPS,
    PREFIXES,
    PROJECT_ROOT,
    READ_ELSEWHERE,
    READERS,
    Group,
    Variable,
    variables,
)

DOC_FILE = PROJECT_ROOT / "docs" / "configuration.md"

INTRO = """\
# Configuration reference

<!-- Generated from services/common/config.py by `python -m services.common.configdoc`;
     edit the declarations there, not this file. -->

The services read their settings from the environment only. Each variable below is declared
once, in `services/common/config.py`, with its type, default, bounds and description, and
this page is generated from those declarations (a unit test fails when it is stale).

- **Unset or empty** means the default.
- **Secrets** may instead be given as a file: `X_FILE` names the file, whose content is
  taken without its trailing line break (container secrets mounted as files work); setting
  both `X` and `X_FILE` is an error. Prefer files: a process's environment is readable by
  its user through `/proc`. Keys and certificates always come from files (the `*_FILE`
  settings). The secrets:
  {secrets}.
- **Checked at start.** A value that does not fit is refused before the service opens
  anything: it logs one line (`ledger.config_error`, `notifier.config_error` or
  `run.config_error`) whose `error` names, for each problem, the variable, what is allowed
  and the value given (never a secret's), the problems separated by `; `, and exits with
  status 2.
- **Misspelt names are said.** At start the ledger, the notifier and the situation room log
  one warning, `config.unknown_variables`, naming each variable of their environment with
  one of the prefixes below that nothing reads (`variables`), with the known name closest to
  it (`closest`: `LEDGER_GRACE_SECOND` is `LEDGER_GRACE_SECONDS`), and start all the same
  (other tools may use those prefixes). Known besides this page: the eventsourcing library's
  other `POSTGRES_*` variables, which pass through to the store, and those the client library
  and `ledgerctl`, `make run`'s supervisor and the NATS members' configuration read. The
  prefixes: {prefixes}; read elsewhere:
  {elsewhere}.
- **Read by**: `ledger` (the ledger service, `incident-ledger`, and its tools `ledger-audit`
  and `ledger-projections`), `notifier` (`ledger-notifier`), and `run` (`make run`'s
  supervisor, `ledger-run`, which starts the other two with the same environment).
"""


def _markdown(text: str) -> str:
    """A docstring's reStructuredText literals as Markdown, its lines joined."""
    return " ".join(inspect.cleandoc(text).replace("``", "`").split())


def _default(variable: Variable) -> str:
    shown = variable.extra.get("shown_default")
    if isinstance(shown, str):
        return shown
    value = variable.default
    if value is None or value == "" or value == ():
        return "unset"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, datetime):
        return f"`{value.isoformat()}`"
    if isinstance(value, Path):
        return f"`{value.relative_to(PROJECT_ROOT)}` in the checkout"
    return f"`{value}`"


def _type(variable: Variable) -> str:
    if variable.choices:
        return "choice"
    rule = variable.rule
    return rule.kind if rule else "string"


def _allowed(variable: Variable) -> str:
    if variable.choices:
        return ", ".join(f"`{choice}`" for choice in variable.choices)
    rule = variable.rule
    special = rule.text if rule and rule.kind in {"address", "boolean", "CIDR list", "time"} else ""
    return variable.bounds or special


def _name(variable: Variable) -> str:
    if variable.secret:
        return f"`{variable.name}` or `{variable.name}_FILE`"
    return f"`{variable.name}`"


def _section(group: type[Group]) -> list[str]:
    lines = ["", f"## {group.heading}", ""]
    if group.__doc__:
        lines += [_markdown(group.__doc__), ""]
    lines += [
        "| Variable | Type | Default | Allowed | Read by | Meaning |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for variable in variables():
        if variable.group is group:
            cells = (
                _name(variable),
                _type(variable),
                _default(variable),
                _allowed(variable),
                ", ".join(reader for reader in READERS if reader in variable.read_by),
                variable.description,
            )
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def render() -> str:
    """The whole page."""
    secrets = ", ".join(f"`{v.name}`" for v in variables() if v.secret)
    prefixes = ", ".join(f"`{prefix}`" for prefix in PREFIXES)
    elsewhere = ", ".join(f"`{name}`" for name in sorted(READ_ELSEWHERE))
    intro = INTRO.format(secrets=secrets, prefixes=prefixes, elsewhere=elsewhere)
    lines = intro.rstrip("\n").split("\n")
    for group in GROUPS:
        lines += _section(group)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    shown = (
        DOC_FILE.relative_to(PROJECT_ROOT) if DOC_FILE.is_relative_to(PROJECT_ROOT) else DOC_FILE
    )
    parser = argparse.ArgumentParser(
        prog="python -m services.common.configdoc",
        description=f"Write {shown} from the settings' declarations.",
    )
    parser.add_argument(
        "--check", action="store_true", help="only check that the file is up to date"
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not DOC_FILE.exists() or DOC_FILE.read_text(encoding="utf-8") != text:
            sys.stderr.write(f"{shown} is stale: run python -m services.common.configdoc\n")
            return 1
        return 0
    DOC_FILE.parent.mkdir(exist_ok=True)
    DOC_FILE.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

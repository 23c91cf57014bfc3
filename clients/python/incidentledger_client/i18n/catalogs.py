"""The catalogs of :mod:`incidentledger_client.i18n`: extraction, update and the check.

``python -m incidentledger_client.i18n.catalogs update`` extracts the messages (the calls of
``_``, ``N_`` and ``ngettext`` in the client package, and every help text of ledgerctl's
command tree), merges them into each language's ``.po`` (new ones untranslated, gone ones
dropped) and compiles the ``.mo`` files, which are committed so that the installed package
and the image carry them. ``... check`` (``make lint``) fails when a message of the code is
missing from a catalog or a catalog holds one the code no longer has (stale), when a message
has no translation or a fuzzy one, when the ``.mo`` is not the compiled ``.po``, or when a
translation drops a placeholder (``{name}``) of its message.
"""

from __future__ import annotations

import gettext
import io
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po, write_po

from incidentledger_client.i18n import DOMAIN, LANGUAGES, LOCALE_DIR

PACKAGE_DIR = LOCALE_DIR.parent.parent
KEYWORDS: dict[str, Any] = {"_": None, "N_": None, "ngettext": (1, 2), "pgettext": ((1, "c"), 2)}
_PLACEHOLDER = re.compile(r"\{[^{}]*\}|%\(\w+\)[sd]|%[sd]")


#: The server's catalog: the errors' messages (services/common/error_messages.py), read as a
#: file (the client imports no service code). Checked where the repository has it.
REPOSITORY = PACKAGE_DIR.parents[2]
SERVER_MESSAGES = REPOSITORY / "services" / "common" / "error_messages.py"
SERVER_LOCALE_DIR = SERVER_MESSAGES.parent / "locale"
SERVER_DOMAIN = "ledger-errors"
#: The code (and templates) of the programs beside the client that speak from its catalog, the
#: situation room and the demo, read as files (like the server's messages), where the
#: repository has them: one catalog set for ledgerctl, the demo and the page.
SPEAKERS: list[tuple[str, list[tuple[str, str]]]] = [
    (
        "services/situation_room",
        [("**.py", "python"), ("templates/**.html", "jinja2.ext:babel_extract")],
    ),
    ("demo", [("**.py", "python")]),
]


def po_path(language: str, locale_dir: Path = LOCALE_DIR, domain: str = DOMAIN) -> Path:
    return locale_dir / language / "LC_MESSAGES" / f"{domain}.po"


def mo_path(language: str, locale_dir: Path = LOCALE_DIR, domain: str = DOMAIN) -> Path:
    return po_path(language, locale_dir, domain).with_suffix(".mo")


def extract_server() -> Catalog:
    """The messages of the server's errors (the ``N_`` templates of error_messages.py)."""
    from babel.messages.extract import extract_from_file

    catalog = Catalog(domain=SERVER_DOMAIN, project="incident-ledger", fuzzy=False)
    for lineno, message, _comments, context in extract_from_file(
        "python", str(SERVER_MESSAGES), {"N_": None}
    ):
        catalog.add(
            message, locations=[("services/common/error_messages.py", lineno)], context=context
        )
    return catalog


def extract() -> Catalog:
    """The messages of the code: marked calls (the client's, then the situation room's
    code and templates and the demo's), then ledgerctl's help texts."""
    import typer.main

    from incidentledger_client.cli import helptexts
    from incidentledger_client.cli.app import app

    catalog = Catalog(domain=DOMAIN, project="incident-ledger", fuzzy=False)
    for filename, lineno, message, _comments, _context in extract_from_dir(
        str(PACKAGE_DIR), [("**.py", "python")], KEYWORDS
    ):
        catalog.add(
            message, locations=[(f"incidentledger_client/{filename}", lineno)], context=_context
        )
    for where, methods in SPEAKERS:
        if not (REPOSITORY / where).is_dir():
            continue
        for filename, lineno, message, _comments, _context in extract_from_dir(
            str(REPOSITORY / where), methods, KEYWORDS
        ):
            catalog.add(  # a message the client has too gains a location
                message, locations=[(f"{where}/{filename}", lineno)], context=_context
            )
    for text in helptexts.messages(typer.main.get_command(app)):
        if text not in catalog:
            catalog.add(text, auto_comments=["ledgerctl help"])
    return catalog


def _plain(value: object) -> object:
    """A message's id or string, comparable: read_mo gives a plural's forms as a list,
    read_po as a tuple."""
    return tuple(value) if isinstance(value, list | tuple) else value


def _ids(catalog: Iterable[object]) -> set[object]:
    return {(m.context, m.id) for m in catalog if m.id}  # type: ignore[attr-defined]


def check(
    template: Catalog, languages: Sequence[str], locale_dir: Path = LOCALE_DIR, domain: str = DOMAIN
) -> list[str]:
    """What is wrong with the catalogs of ``languages`` against the messages of ``template``."""
    problems: list[str] = []
    for language in languages:
        po_file = po_path(language, locale_dir, domain)
        mo_file = mo_path(language, locale_dir, domain)
        if not po_file.exists():
            problems.append(f"{po_file}: missing")
            continue
        with po_file.open("rb") as f:
            po = read_po(f, locale=language)
        want, have = _ids(template), _ids(po)
        for msgid in sorted(map(str, want - have)):
            problems.append(f"{po_file}: stale, the code's message is missing: {msgid}")
        for msgid in sorted(map(str, have - want)):
            problems.append(f"{po_file}: stale, the code no longer has: {msgid}")
        for message in po:
            if not message.id:
                continue
            strings = message.string if isinstance(message.string, tuple) else (message.string,)
            ids = message.id if isinstance(message.id, tuple) else (message.id,)
            if message.fuzzy:
                problems.append(f"{po_file}: fuzzy translation of {message.id!r}")
            elif not all(strings):
                problems.append(f"{po_file}: no translation of {message.id!r}")
            elif set(_PLACEHOLDER.findall(str(ids[0]))) != set(
                _PLACEHOLDER.findall(str(strings[0]))
            ):
                problems.append(f"{po_file}: placeholders differ in {message.id!r}")
        if not mo_file.exists():
            problems.append(f"{mo_file}: missing (run the update)")
            continue
        with mo_file.open("rb") as f:
            mo = read_mo(f)
        try:
            with mo_file.open("rb") as f:
                gettext.GNUTranslations(f)  # as the program reads it: header and plural forms
        except (OSError, ValueError) as error:
            problems.append(f"{mo_file}: gettext cannot read it: {error}")
        # read_mo gives a context as bytes (Babel 2.18).
        compiled = {(_text(m.context), _plain(m.id)): _plain(m.string) for m in mo if m.id}
        # The compiled catalog leaves out what has no translation (reported above).
        written = {
            (m.context, _plain(m.id)): _plain(m.string)
            for m in po
            if m.id and m.string and not m.fuzzy
        }
        if compiled != written:
            problems.append(f"{mo_file}: not the compiled {po_file.name} (run the update)")
    return problems


def update(
    template: Catalog, languages: Sequence[str], locale_dir: Path = LOCALE_DIR, domain: str = DOMAIN
) -> None:
    """Merge ``template`` into each language's catalog and compile it."""
    for language in languages:
        po_file = po_path(language, locale_dir, domain)
        po_file.parent.mkdir(parents=True, exist_ok=True)
        if po_file.exists():
            with po_file.open("rb") as f:
                po = read_po(f, locale=language)
        else:
            po = Catalog(locale=language, domain=domain, project="incident-ledger")
        po.update(template, no_fuzzy_matching=True)
        po.copyright_holder = "the incident-ledger project"
        po.obsolete.clear()
        po.fuzzy = False
        buffer = io.BytesIO()
        write_po(buffer, po, width=100, omit_header=False, sort_output=True, include_lineno=False)
        po_file.write_bytes(_header(_without_dates(buffer.getvalue()), language))
        compile_catalog(language, locale_dir, domain)


def compile_catalog(language: str, locale_dir: Path = LOCALE_DIR, domain: str = DOMAIN) -> None:
    """Write the ``.mo`` of ``language`` from its ``.po`` (as written, header included),
    unless the one there differs only in the dates Babel puts in its header (a ``.po``
    without dates is read as made now): an update without changes changes no file."""
    with po_path(language, locale_dir, domain).open("rb") as f:
        po = read_po(f, locale=language)
    buffer = io.BytesIO()
    write_mo(buffer, po)
    compiled = buffer.getvalue()
    target = mo_path(language, locale_dir, domain)
    if target.exists() and _mo_without_dates(target.read_bytes()) == _mo_without_dates(compiled):
        return
    target.write_bytes(compiled)


#: Plural forms where Babel's default is not the language's (CLDR: Indonesian has one form).
_PLURAL_FORMS = {"id": "nplurals=1; plural=0;"}


def _header(text: bytes, language: str) -> bytes:
    forms = _PLURAL_FORMS.get(language)
    if forms is None:
        return text
    line = f'"Plural-Forms: {forms}\\n"'.encode()
    return re.sub(rb'"Plural-Forms: [^"]*\\n"', lambda _: line, text)


def _text(value: str | bytes | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _without_dates(text: bytes) -> bytes:
    """The header without creation and revision dates, so that an update without changes
    changes no file."""
    return re.sub(rb'"(POT-Creation-Date|PO-Revision-Date): [^"]*\\n"\n', b"", text)


def _mo_without_dates(data: bytes) -> bytes:
    """A compiled catalog with its header's dates blanked (same length: the offsets stay)."""
    return re.sub(
        rb"((?:POT-Creation-Date|PO-Revision-Date): )([^\n]*)",
        lambda m: m.group(1) + b"-" * len(m.group(2)),
        data,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in (["check"], ["update"]):
        sys.stderr.write("usage: python -m incidentledger_client.i18n.catalogs check|update\n")
        return 2
    languages = [lang for lang in LANGUAGES if lang != "en"]
    sets = [(extract(), LOCALE_DIR, DOMAIN)]
    if SERVER_MESSAGES.exists():
        sets.append((extract_server(), SERVER_LOCALE_DIR, SERVER_DOMAIN))
    if args == ["update"]:
        for template, locale_dir, domain in sets:
            update(template, languages, locale_dir, domain)
        return 0
    problems = [p for t, d, name in sets for p in check(t, languages, d, name)]
    for problem in problems:
        sys.stderr.write(f"catalogs: {problem}\n")
    if problems:
        sys.stderr.write(
            "catalogs: run `python -m incidentledger_client.i18n.catalogs update`, then "
            "translate (docs/glossary-id.md)\n"
        )
        return 1
    for template, _locale_dir, domain in sets:
        sys.stdout.write(
            f"catalogs: {domain}: {len(_ids(template))} messages, translated in {languages}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

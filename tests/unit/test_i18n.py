"""The languages of ledgerctl (incidentledger_client.i18n): the choice of language, the
catalog check that `make lint` runs, times and numbers, and every help page in both languages."""

from __future__ import annotations

import inspect
import json
import re
import shutil
import socket
import typing
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import typer.main
from babel.messages.pofile import read_po, write_po

from incidentledger_client import i18n
from incidentledger_client.cli import helptexts, main, output
from incidentledger_client.cli.app import app
from incidentledger_client.cli.commands.audit import _show_evidence
from incidentledger_client.i18n import catalogs, labels
from incidentledger_client.types import (
    Actor,
    DeliveryOutcome,
    EvidenceReport,
    IncidentEvent,
    KecamatanScore,
    VulnerabilityMap,
)
from services.common import vocabulary

#: English words of the UI that must not show through Indonesian text (whole words).
TELLTALE = (
    "incident",
    "incidents",
    "severity",
    "verified",
    "reported",
    "resolved",
    "closed",
    "rejected",
    "agency",
    "the",
    "and",
    "with",
    "show",
    "only",
    "commands",
    "options",
    "example",
    # Python's and the codes' English left in a table or a message (a timeline's
    # starts_response=True, config view's None and default, a delivery's outcome)
    "true",
    "false",
    "none",
    "default",
    "characters",
    "delivered",
)
#: What is typed as it is whatever the language: command lines, options, codes, names.
ALLOWED = re.compile(
    r"ledgerctl [^│\n]*|incidents/[0-9a-f-]+|incidents/ID|'[a-z_.]+'|\[bawaan: [^\]]*\]|"
    r"--[a-z-]+|[A-Z_]{3,}|<[a-z]+>|e\.g\.|"
    r"services\.ledger\.audit|crowd_gathering|kota_mukomuko|"
    # a command's name in the list of commands, and the usage line: typed as they are
    r"│ [* ]*[a-zA-Z_-]+(?= {2})|Usage: .*|Penggunaan: .*"
)


def english_words(text: str) -> set[str]:
    """The tell-tale English words of ``text`` (command lines, options and codes left out)."""
    words = set(re.findall(r"[a-z]+", ALLOWED.sub(" ", text).lower()))
    return words & set(TELLTALE)


#: The English of typer's (click's) usage errors, left when one of them is not translated.
USAGE_TELLTALE = re.compile(r"\b(?:Got|Possible|Option|requires|take|argument|Missing|Invalid)\b")


#: English words of the free text an example types ('crowd growing', -m 'checked').
EXAMPLE_TELLTALE = (
    "checked",
    "confirmed",
    "crowd",
    "gathering",
    "gatherings",
    "needs",
    "photo",
    "placed",
    "tension",
    "typo",
    "yesterday",
)
#: typer's English placeholders of a usage line and kinds of value in the type column.
TYPER_FRAGMENT = re.compile(
    r"\[OPTIONS\]|COMMAND \[ARGS\]|<(?:str|int|int range|float|bool|path|file|list\[str\])>"
)


def example_words(text: str) -> set[str]:
    """The English words in the quoted text of ``text``'s command lines (the examples)."""
    quoted = " ".join(re.findall(r"'([^'\n│]*)'", " ".join(re.findall(r"ledgerctl .*", text))))
    return set(re.findall(r"[a-z]+", quoted.lower())) & {*TELLTALE, *EXAMPLE_TELLTALE}


def english_placeholders(text: str) -> set[str]:
    """The placeholders of the code (``INCIDENT``, ``FILE``, ``OLD``) that ``text`` shows as
    they are where the catalog has them in Indonesian (``KEJADIAN``, ``BERKAS``, ``LAMA``):
    the usage line names them in Indonesian, so a help text that names them in English reads
    of a value nobody asked for."""
    indonesian = i18n.translations("id")
    english = {
        placeholder
        for placeholder in helptexts.placeholders(typer.main.get_command(app))
        if indonesian.gettext(placeholder) != placeholder
    }
    return set(re.findall(r"(?<![\w/.-])[A-Z_]{3,}(?![\w-])", text)) & english


def broken_lines(page: str) -> list[str]:
    """The lines of a help page's text (outside its panels) that end short of the width
    with the paragraph going on in the next line: a line break of the source shown as it is."""
    lines = [line.strip() for line in page.splitlines()]
    return [
        line
        for line, following in pairwise(lines)
        if line and following and not line.startswith(("│", "╭", "╰")) and len(line) < 150
    ]


def test_the_language_is_the_flag_then_ledger_lang_then_the_locale() -> None:
    env = {"LEDGER_LANG": "en", "LANGUAGE": "id_ID:en", "LANG": "en_US.UTF-8"}
    assert i18n.choose("id", env) == "id"
    assert i18n.choose(None, env) == "en"
    assert i18n.choose(None, {"LANGUAGE": "id_ID:en", "LANG": "en_US.UTF-8"}) == "id"
    assert i18n.choose(None, {"LANG": "id_ID.UTF-8"}) == "id"
    assert i18n.choose(None, {"LANG": "de_DE.UTF-8"}) == "en"
    assert i18n.choose(None, {"LANG": "C"}) == "en"
    assert i18n.choose(None, {}) == "en"
    with pytest.raises(ValueError, match="unknown language"):
        i18n.choose("xx", {})
    with pytest.raises(ValueError, match="LEDGER_LANG"):
        i18n.choose(None, {"LEDGER_LANG": "fr"})


def test_an_unknown_language_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--lang", "xx", "board"]) == 2
    assert "unknown language 'xx'" in capsys.readouterr().err


def test_times_in_wib_and_numbers_in_the_locales_format() -> None:
    moment = datetime(2026, 11, 28, 10, 5, 7, tzinfo=UTC)
    wib = ZoneInfo("Asia/Jakarta")
    assert i18n.format_time(moment, wib) == "2026-11-28 17:05:07 WIB"
    assert i18n.format_number(1234567.5, 1) == "1,234,567.5"
    with i18n.using("id"):
        assert i18n.format_time(moment, wib) == "28 Nov 2026 17.05.07 WIB"
        assert i18n.format_time(moment, wib, seconds=False) == "28 Nov 2026 17.05 WIB"
        assert i18n.format_number(1234567.5, 1) == "1.234.567,5"
        assert i18n.format_size(90_894) == "90,9 kB"
        assert i18n.format_size(9_999) == "9.999 bita"
    assert i18n.format_size(20_971_529) == "21.0 MB"
    assert i18n.current() == "en"


def test_every_code_has_an_indonesian_label() -> None:
    cases = [
        (labels.status, ("REPORTED", "VERIFIED", "ASSIGNED", "RESPONDING", "RESOLVED")),
        (labels.status, ("CLOSED", "REJECTED", "MERGED", "REOPENED")),
        (labels.severity, ("low", "medium", "high", "critical")),
        (labels.band, ("low", "medium", "high")),
        (labels.rejection, ("INVALID", "HOAX", "OUT_OF_SCOPE")),
        # webhooks deliveries' outcome column ("delivered" in an Indonesian table)
        (labels.delivery, typing.get_args(DeliveryOutcome)),
        # Every event type the ledger records (the timeline of ledgerctl and the page).
        (labels.event_type, vocabulary.EVENT_TYPES),
    ]
    with i18n.using("id"):
        for label, values in cases:
            for code in values:
                assert label(code) != code, (label.__name__, code)
        assert labels.band("high") == "Rawan Tinggi"
        assert labels.status("CLOSED") == "Ditutup"
        assert labels.status("SOMETHING_NEW") == "SOMETHING_NEW"
    assert labels.status("CLOSED") == "CLOSED"  # English shows the code, as before


def test_every_field_of_an_events_payload_has_an_indonesian_label() -> None:
    # The timeline shows each payload field by its label (kategori=..., uraian=...): a field
    # report's device fields and reference code were shown in English in an Indonesian run.
    from services.ledger.domain.incident import ENVELOPE_FIELDS, Incident

    fields: set[str] = set()
    for name in vocabulary.EVENT_TYPES:
        for klass in getattr(Incident, name).__mro__:
            fields |= set(inspect.get_annotations(klass))
    # The same word in Indonesian, a hash's name, and the library's own bookkeeping.
    same = {"forum", "sha256", "originator_id_type"}
    with i18n.using("id"):
        untranslated = sorted(f for f in fields - ENVELOPE_FIELDS - same if labels.field(f) == f)
    assert not untranslated, untranslated


def test_a_reference_code_is_a_kode_referensi_in_every_message() -> None:
    # The glossary's word, the tables' heading: one message said "kode rujukan", which a duty
    # officer could take for another code.
    with (i18n.LOCALE_DIR / "id" / "LC_MESSAGES" / "incidentledger.po").open("rb") as file:
        catalog = read_po(file)
    said = [
        str(m.string)
        for m in catalog
        if m.id and "reference code" in str(m.id if isinstance(m.id, str) else m.id[0])
    ]
    assert said and all("kode referensi" in text.casefold() for text in said), said


def test_the_reference_datas_names_of_statuses_and_roles_win_over_the_catalog() -> None:
    """A regency's own words (GetReferenceData's names) for the current language, else the
    catalog's: the one rule ledgerctl and the situation room both use."""
    assigned = {"id": "Diserahkan ke instansi"}
    responder = {"id": "instansi pelaksana"}
    with i18n.using("id"):
        assert labels.status("ASSIGNED", assigned) == "Diserahkan ke instansi"
        assert labels.status("ASSIGNED", {}) == labels.status("ASSIGNED") == "Didisposisikan"
        assert labels.role("responder", responder) == "instansi pelaksana"
        assert labels.role("responder", None) == "penanggap"
    # No English name given: English keeps the catalog's (the code for a status).
    assert labels.status("ASSIGNED", assigned) == "ASSIGNED"
    assert labels.status("ASSIGNED", {"en": "Handed over"}) == "Handed over"
    assert labels.role("responder", responder) == "responder"


def test_worded_labels_read_in_english_words_where_ledgerctl_shows_the_codes() -> None:
    """The situation room's (worded) English: words for every status and rejection reason;
    ledgerctl's English keeps the codes, and Indonesian is the catalog's either way."""
    for code in vocabulary.STATUSES:
        assert labels.status(code) == code
        assert re.fullmatch(r"[A-Z][a-z ]+", labels.status(code, worded=True)), code
    assert labels.status("ASSIGNED", {"en": "Handed over"}, worded=True) == "Handed over"
    assert labels.rejection("OUT_OF_SCOPE") == "OUT_OF_SCOPE"
    assert labels.rejection("OUT_OF_SCOPE", worded=True) == "Out of scope"
    assert labels.rejection("NEWER_REASON", worded=True) == "NEWER_REASON"
    # the map's bands: "high" beside a severity's "High" on the page's English legend
    assert [labels.band(b) for b in ("low", "medium", "high")] == ["low", "medium", "high"]
    assert labels.band("high", worded=True) == "High vulnerability"
    assert labels.band("extreme", worded=True) == "extreme"
    with i18n.using("id"):
        assert labels.band("high", worded=True) == labels.band("high") == "Rawan Tinggi"
        assert labels.status("REPORTED", worded=True) == labels.status("REPORTED") != "Reported"
        assert labels.rejection("HOAX", worded=True) == labels.rejection("HOAX") != "Hoax"


def test_the_catalogs_are_complete_and_fresh() -> None:
    assert catalogs.check(catalogs.extract(), ["id"]) == []


@pytest.fixture
def locale_copy(tmp_path: Path) -> Iterator[Path]:
    copy = tmp_path / "locale"
    shutil.copytree(i18n.LOCALE_DIR, copy)
    yield copy


def _rewrite(locale_dir: Path, change: str) -> None:
    path = catalogs.po_path("id", locale_dir)
    with path.open("rb") as f:
        po = read_po(f, locale="id")
    message = po.get("Timeline")
    assert message is not None
    if change == "untranslated":
        message.string = ""
    elif change == "fuzzy":
        message.flags.add("fuzzy")
    elif change == "placeholder":
        counted = po.get("Incidents ({count})")
        assert counted is not None
        counted.string = "Kejadian"
    with path.open("wb") as f:
        write_po(f, po)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ("untranslated", "no translation of 'Timeline'"),
        ("fuzzy", "fuzzy translation of 'Timeline'"),
        ("placeholder", "placeholders differ in 'Incidents ({count})'"),
    ],
)
def test_the_check_fails_on_a_missing_or_broken_translation(
    locale_copy: Path, change: str, problem: str
) -> None:
    template = catalogs.extract()
    assert catalogs.check(template, ["id"], locale_copy) == []
    _rewrite(locale_copy, change)
    found = catalogs.check(template, ["id"], locale_copy)
    assert any(problem in p for p in found), found
    # The .mo compiled before the change is no longer the .po's (the fuzzy one excepted:
    # a fuzzy message is left out of both).
    if change != "fuzzy":
        assert any("not the compiled" in p for p in found), found


def test_the_check_fails_on_stale_catalogs(locale_copy: Path) -> None:
    template = catalogs.extract()
    template.add("A message new in the code")
    del template["Timeline"]
    found = catalogs.check(template, ["id"], locale_copy)
    assert any("missing: (None, 'A message new in the code')" in p for p in found), found
    assert any("no longer has: (None, 'Timeline')" in p for p in found), found
    catalogs.update(template, ["id"], locale_copy)
    found = catalogs.check(template, ["id"], locale_copy)
    assert found == [
        "{}: no translation of 'A message new in the code'".format(
            catalogs.po_path("id", locale_copy)
        )
    ]


@pytest.mark.parametrize("domain", [i18n.DOMAIN, catalogs.SERVER_DOMAIN])
def test_the_update_changes_nothing_when_nothing_changed(tmp_path: Path, domain: str) -> None:
    # Neither the .po nor the compiled .mo: the .mo took the update's time as its
    # creation date, so every update rewrote the server's catalog, changed or not.
    server = domain == catalogs.SERVER_DOMAIN
    source = catalogs.SERVER_LOCALE_DIR if server else i18n.LOCALE_DIR
    locale_dir = tmp_path / "locale"
    shutil.copytree(source, locale_dir)
    files = [catalogs.po_path("id", locale_dir, domain), catalogs.mo_path("id", locale_dir, domain)]
    before = [path.read_bytes() for path in files]
    template = catalogs.extract_server() if server else catalogs.extract()
    catalogs.update(template, ["id"], locale_dir, domain)
    assert [path.read_bytes() for path in files] == before


def _command_paths() -> list[list[str]]:
    root = typer.main.get_command(app)
    paths: list[list[str]] = [[]]

    def walk(command: object, path: list[str]) -> None:
        for name, sub in sorted((getattr(command, "commands", None) or {}).items()):
            paths.append([*path, name])
            walk(sub, [*path, name])

    walk(root, [])
    return paths


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "ledgerctl")
def test_every_help_page_in_both_languages(
    path: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("LEDGER_LANG", raising=False)
    monkeypatch.setenv("LANG", "C.UTF-8")
    assert main([*path, "--help"]) == 0
    english = capsys.readouterr().out
    assert main(["--lang", "id", *path, "--help"]) == 0
    indonesian = capsys.readouterr().out
    monkeypatch.setenv("LEDGER_LANG", "id")
    assert main([*path, "-h"]) == 0
    assert capsys.readouterr().out == indonesian
    assert indonesian != english
    assert english_words(indonesian) == set(), indonesian
    assert example_words(indonesian) == set(), indonesian
    assert TYPER_FRAGMENT.findall(indonesian) == [], indonesian
    assert english_placeholders(indonesian) == set(), indonesian
    # each paragraph flows to the width of the terminal, in both languages
    assert broken_lines(english) == [] and broken_lines(indonesian) == [], (english, indonesian)
    assert "Opsi" in indonesian or "Perintah" in indonesian
    if path:
        assert "Contoh: ledgerctl" in indonesian, indonesian
    # typer's words are set back after the run.
    monkeypatch.setenv("LEDGER_LANG", "en")
    assert main([*path, "--help"]) == 0
    assert capsys.readouterr().out == english


@pytest.mark.parametrize(
    ("path", "option", "placeholder"),
    [(["ingest"], "--codes", "BERKAS"), (["webhooks", "deliveries"], "--to", "INSTANSI")],
)
def test_an_options_placeholder_in_indonesian(
    path: list[str],
    option: str,
    placeholder: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An option whose value the code names (``--codes FILE``) shows the name in the run's
    language, as the arguments' do (it was English in an Indonesian page)."""
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["--lang", "id", *path, "--help"]) == 0
    assert re.search(rf"{option} +{placeholder} ", capsys.readouterr().out)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["list", "--status", "verfied"], "Kesalahan: Nilai tidak sah untuk --status: tahap"),
        (["decide"], "Kesalahan: Argumen 'KEJADIAN' belum diberikan."),
        (["nosuch"], "Kesalahan: Tidak ada perintah 'nosuch'."),
        # a command's typo gets a suggestion, which was typer's English ("Did you mean ...?")
        (["verfy"], "Kesalahan: Tidak ada perintah 'verfy'. Maksud Anda 'verify'?"),
        (["close", "aprove"], "Kesalahan: Tidak ada perintah 'aprove'. Maksud Anda 'approve'?"),
        (["list", "--bogus"], "Kesalahan: Tidak ada opsi: --bogus"),
        # typer's own checks of a path and of a number's range (they were English).
        (["ingest", "/nowhere/backlog.jsonl"], "'/nowhere/backlog.jsonl' tidak ada"),
        (["ingest", "/"], "'/' adalah folder, bukan berkas"),
        (["ingest", "README.md", "--chunk-size", "900"], "'--chunk-size': paling banyak 500"),
        # the click typer vendors words these its own way (they were English).
        (["show", "a", "b", "c"], "Kesalahan: Argumen tambahan yang tidak diharapkan (b c)"),
        # an escalation's reason is asked for here, not refused by the ledger in English
        (["escalate", "MKM-7QK3-9V"], "Kesalahan: Argumen 'ALASAN' belum diberikan."),
        (["reopen", "MKM-7QK3-9V"], "Argumen 'ALASAN' belum diberikan."),
        # refused here, not by the ledger naming its page_size in English
        (["list", "--limit", "-5"], "Nilai tidak sah untuk --limit: harus 0 (semua) atau lebih"),
        (["webhooks", "deliveries", "-n", "-3"], "untuk --limit: harus 0 (semua) atau lebih"),
        (["list", "--statu", "x"], "Kesalahan: Tidak ada opsi: --statu (maksud Anda --status?)"),
        # an option an environment variable may give: click's "(env var: ...)" was English
        (
            ["webhooks", "register", "x", "https://example.invalid/hook"],
            "Kesalahan: Opsi '--secret' belum diberikan (atau variabel env 'WEBHOOK_SECRET').",
        ),
    ],
)
def test_usage_errors_in_indonesian_and_json_unchanged(
    args: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["--lang", "id", *args]) == 2
    err = capsys.readouterr().err
    assert said in err and "Penggunaan: ledgerctl" in err and "untuk bantuan" in err, err
    assert english_words(err) == set(), err
    assert not USAGE_TELLTALE.search(err), err
    errors = []
    for lang in ("en", "id"):
        assert main(["--json", "--lang", lang, *args]) == 2
        errors.append(capsys.readouterr().err)
    assert errors[0] == errors[1]
    # and English as it was
    assert main(["--lang", "en", *args]) == 2
    assert "Error: " in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "commands"),
    [
        ([], "report, verify, reject, merge, assess, "),
        (["--agency", "polres"], "report, verify, reject, merge, assess, "),
        (["close"], "request, approve."),
        (["webhooks"], "register, list, delete, update, deliveries, dead-letters, replay."),
    ],
)
def test_a_missing_command_is_said_with_the_commands_it_takes(
    args: list[str], commands: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ledgerctl` or `ledgerctl close` alone said `Kesalahan: ` and nothing after it (typer's
    error for a group run without arguments has an empty message), and with --json gave
    "message": "" after an English help page on stdout."""
    capsys.readouterr()
    assert main(["--lang", "id", *args]) == 2
    err = capsys.readouterr().err
    assert f"Kesalahan: Perintah belum diberikan: berikan salah satu dari {commands}" in err, err
    assert main(["--lang", "en", *args]) == 2
    err = capsys.readouterr().err
    assert f"Error: Missing command: give one of {commands}" in err, err
    for lang in ("en", "id"):
        assert main(["--json", "--lang", lang, *args]) == 2
        out, err = capsys.readouterr()
        assert out == "", out  # stdout is for results: no help page there
        error = json.loads(err)["error"]
        assert (error["code"], error["exit_code"]) == ("USAGE", 2), error
        assert error["message"].startswith("Missing command: give one of "), error
        assert commands in error["message"], error


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["list", "--status"], "Kesalahan: Opsi '--status' memerlukan nilai."),
        (["list", "--json=3"], "Kesalahan: Opsi '--json' tidak menerima nilai."),
    ],
)
def test_an_options_misuse_in_indonesian(
    args: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """typer's parser names a misused option without a usage line (it has no context yet)."""
    capsys.readouterr()
    assert main(["--lang", "id", *args]) == 2
    err = capsys.readouterr().err
    assert said in err, err
    assert not USAGE_TELLTALE.search(err), err
    assert main(["--lang", "en", *args]) == 2
    assert "Error: Option '--" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--config", "/nowhere/ledgerctl.toml", "board"], "berkas konfigurasi tidak ditemukan"),
        (["--zone", "Mars/Olympus", "board"], "zona waktu 'Mars/Olympus' tidak dikenal"),
        (["--agency", "polres", "--tokens-file", "/nowhere/t.yaml", "board"], "berkas token"),
        (["--timeout", "soon", "--token", "t", "board"], "harus berupa angka"),
        # it was English: an f-string of its own
        (["config", "use-context", "malam"], "tidak ada konteks 'malam' (yang dikenal: tidak ada;"),
    ],
)
def test_configuration_errors_in_indonesian(
    args: list[str], said: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LEDGERCTL_CONFIG", raising=False)
    assert main(["--lang", "id", *args]) == 2
    err = capsys.readouterr().err
    assert said in err, err
    assert not english_words(err), err
    # The same error in English, and under --json (the same whatever the language).
    assert main(["--lang", "en", *args]) == 2
    english = capsys.readouterr().err
    assert main(["--lang", "id", "--json", *args]) == 2
    assert capsys.readouterr().err.replace("--lang id ", "") == main_json_error(args, capsys)
    assert said not in english


def main_json_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["--lang", "en", "--json", *args]) == 2
    return capsys.readouterr().err


def test_a_ledger_that_cannot_be_reached_is_named_in_indonesian(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LEDGERCTL_CONFIG", raising=False)
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    args = ["--lang", "id", "--address", f"127.0.0.1:{port}", "--token", "t", "--timeout", "2"]
    assert main([*args, "board"]) == 6
    err = capsys.readouterr().err
    assert "tidak dapat menghubungi buku besar di 127.0.0.1" in err, err


def test_a_time_that_is_not_one_is_said_in_the_runs_language() -> None:
    from incidentledger_client.cli import times

    with i18n.using("id"), pytest.raises(times.TimeError) as refused:
        times.parse_time("bukan-jam", "Asia/Jakarta")
    assert "bukan waktu: 'bukan-jam'" in str(refused.value)
    assert "'kemarin 18:00'" in str(refused.value)
    assert not english_words(str(refused.value))
    with pytest.raises(times.TimeError, match="not a time"):
        times.parse_time("bukan-jam", "Asia/Jakarta")


def _event(event_type: str, payload: dict[str, object]) -> IncidentEvent:
    return IncidentEvent(
        event_id="e1",
        incident="incidents/x",
        version=2,
        type=event_type,
        schema_version=1,
        occur_time=None,
        record_time=None,
        actor=Actor(agency="polres", officer="dev-polres"),
        reason="",
        location=None,
        correlation_id="",
        causation_id="",
        request_id="r",
        previous_hash="",
        hash="",
        position=1,
        payload_json=json.dumps(payload),
    )


@pytest.mark.parametrize(
    ("event_type", "payload", "indonesian", "english"),
    [
        (
            "ActionLogged",
            {"action": "Patroli", "starts_response": True},
            "tindakan=Patroli; mulai_penanganan=ya",
            "action=Patroli; starts_response=True",
        ),
        (
            "Reported",
            {"severity": "high", "title": "Bentrok"},
            "keparahan=tinggi; judul=Bentrok",
            "severity=high; title=Bentrok",
        ),
        ("Rejected", {"rejection_reason": "HOAX"}, "alasan_penolakan=Hoaks", None),
        (
            "Corrected",
            {"field": "severity", "old_value": "low", "new_value": "high"},
            "isian=keparahan; nilai_lama=rendah; nilai_baru=tinggi",
            "field=severity; old_value=low; new_value=high",
        ),
    ],
)
def test_a_timelines_values_in_the_readers_language(
    event_type: str, payload: dict[str, object], indonesian: str, english: str | None
) -> None:
    """A yes or no and the labelled codes of a payload read as everywhere else in Indonesian
    (``mulai_penanganan=True`` was English in an Indonesian timeline); English unchanged."""
    event = _event(event_type, payload)
    with i18n.using("id"):
        said = output.payload_summary(event)
    assert said == indonesian
    assert not re.search(r"\b(?:True|False|high|low|HOAX)\b", said), said
    if english is not None:
        with i18n.using("en"):
            assert output.payload_summary(event) == english


def test_the_svg_maps_scores_and_counts_in_the_locales_form() -> None:
    """The SVG's scores read 15,9 in Indonesian as in ledgerctl map's table (they were 15.9),
    its counts 1 incident / 2 incidents in English; data-score stays as a program reads it."""
    vmap = VulnerabilityMap(
        kecamatan=(
            KecamatanScore("ipuh", "Ipuh", 15.94, "medium", (), incident_count=1),
            KecamatanScore("penarik", "Penarik", 1234.5, "high", (), incident_count=1200),
        ),
        time=datetime(2026, 11, 28, 10, 5, tzinfo=UTC),
        position=7,
    )
    with i18n.using("id"):
        drawn = output.map_svg(vmap, zone=ZoneInfo("Asia/Jakarta"))
    shown = re.findall(r'font-size="22">([^<]*)<', drawn)
    assert shown == ["15,9", "1.234,5"], drawn
    assert 'data-score="15.9"' in drawn
    assert "Rawan Sedang · 1 kejadian" in drawn and "Rawan Tinggi · 1.200 kejadian" in drawn
    with i18n.using("en"):
        drawn = output.map_svg(vmap, zone=ZoneInfo("Asia/Jakarta"))
    assert re.findall(r'font-size="22">([^<]*)<', drawn) == ["15.9", "1,234.5"]
    assert "medium · 1 incident<" in drawn and "high · 1,200 incidents<" in drawn


GLOSSARY = Path(__file__).resolve().parents[2] / "docs" / "glossary-id.md"


def _glossary_rows() -> list[tuple[list[str], list[str], str]]:
    """The glossary's rows: the English words (before any parentheses, split on "/"), the
    words the row rules out (its last column) and its Indonesian."""
    rows = []
    for line in GLOSSARY.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 2 or set(cells[0]) <= {"-", " "}:
            continue
        english = re.sub(r"\(.*?\)|`[^`]*`", "", cells[0])
        ruled_out = re.sub(r"\(.*?\)", "", cells[2]) if len(cells) > 2 else ""
        rows.append(
            (
                [w.strip().lower() for w in english.split("/") if w.strip()],
                [w.strip().lower() for w in ruled_out.split(",") if w.strip()],
                cells[1].lower(),
            )
        )
    return rows


def _has(text: str, word: str, plural: str = "") -> bool:
    return re.search(rf"\b{re.escape(word)}{plural}\b", text, re.IGNORECASE) is not None


def _has_english(text: str, word: str) -> bool:
    """The English word, or its plural (incident, incidents)."""
    return _has(text, word, "s?")


def test_the_catalog_keeps_to_the_glossarys_words() -> None:
    """No message is translated with a word the glossary rules out for its English word (the
    agencies page said 'Belum diterima' and 'Terlambat' where ledgerctl said 'belum
    dikonfirmasi' and 'lewat tenggat'), unless the message also has the English word that the
    ruled-out one translates (an incident's *report* is a *laporan*)."""
    rows = _glossary_rows()
    assert any(english == ["overdue"] for english, _ruled_out, _idn in rows), rows
    catalog = read_po((i18n.LOCALE_DIR / "id" / "LC_MESSAGES" / "incidentledger.po").open("rb"))
    wrong = []
    for message in catalog:
        if not message.id:
            continue
        msgid = message.id if isinstance(message.id, str) else " ".join(message.id)
        msgstr = (
            message.string if isinstance(message.string, str) else " ".join(message.string or ())
        )
        for english, ruled_out, _idn in rows:
            for term in english:
                if not _has_english(msgid, term):
                    continue
                for word in ruled_out:
                    excused = any(
                        _has_english(msgid, other)
                        for others, _o, idn in rows
                        if _has(idn, word)
                        for other in others
                    )
                    if _has(msgstr, word) and not excused:
                        wrong.append((msgid, word, msgstr))
    assert wrong == []


#: "ledger" as a word of an Indonesian sentence: not a placeholder ({ledger}), a program's
#: name (ledgerctl, ledger-audit) or a module's (services.ledger.audit).
LEDGER_WORD = re.compile(r"(?<![\w.{/-])ledger(?![\w}-]|\.\w)", re.IGNORECASE)


@pytest.mark.parametrize(
    ("locale_dir", "domain"),
    [(i18n.LOCALE_DIR, i18n.DOMAIN), (catalogs.SERVER_LOCALE_DIR, catalogs.SERVER_DOMAIN)],
)
def test_the_ledger_is_the_buku_besar_in_every_message(locale_dir: Path, domain: str) -> None:
    """The glossary's word for the ledger is "buku besar": "Beri tahu operator ledger",
    "disegel oleh ledger", "Nama berkas di ledger" and "Ledger ini ..." left it English."""
    catalog = read_po(catalogs.po_path("id", locale_dir, domain).open("rb"))
    wrong = []
    for message in catalog:
        strings = [message.string] if isinstance(message.string, str) else message.string
        for text in strings or ():
            if LEDGER_WORD.search(re.sub(r"`[^`]*`", "", text or "")):
                wrong.append(text)
    assert wrong == []


def test_a_refused_item_is_not_read_as_a_rejected_incident() -> None:
    """A triage item the ledger refused is not recorded; 'ditolak' says the incident was
    rejected, which is what `triage reject` records."""
    with i18n.using("id"):
        refused = i18n._(output.TRIAGE_OUTCOMES["REFUSED"])
        assert refused == "tidak dicatat"
        assert refused.lower() != labels.status("REJECTED").lower()
        assert not _has(refused, "ditolak")
    # and `triage --help`, which says what an item may come to, says it the same way.
    catalog = read_po((i18n.LOCALE_DIR / "id" / "LC_MESSAGES" / "incidentledger.po").open("rb"))
    helps = [m for m in catalog if isinstance(m.id, str) and "refused (with why)" in m.id]
    assert helps, "triage's help names the refused outcome"
    for message in helps:
        text = " ".join(str(message.string).split())
        assert "tidak dicatat (dengan alasannya)" in text and not _has(text, "ditolak"), text


def test_every_incident_argument_says_it_takes_a_reference_code(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The code people read out over the phone is what a duty officer has: the help of an
    incident argument names it first, in both languages (show's said only incidents/ID, the
    ID or its first characters)."""
    monkeypatch.setenv("COLUMNS", "300")
    root = typer.main.get_command(app)
    checked = []
    for path in _command_paths():
        command = root
        for name in path:
            command = command.commands[name]  # type: ignore[attr-defined]
        for param in getattr(command, "params", []):
            if getattr(param, "metavar", None) == "INCIDENT":
                checked.append(path)
                for lang, said, shown in (
                    ("en", "reference code", "INCIDENT"),
                    ("id", "kode referensi", "KEJADIAN"),  # the placeholder in Indonesian
                ):
                    assert main(["--lang", lang, *path, "--help"]) == 0
                    page = capsys.readouterr().out
                    row = page[page.index(f" {shown} ") :].split("╰")[0]
                    assert said in row and "MKM-" in row, (path, lang, row)
    assert ["show"] in checked and ["verify"] in checked, checked


def test_config_view_in_indonesian_and_json_unchanged(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`config view` said 'default', 'None', '(43 characters)', 'tokens file for agency' and
    headed its source column 'mulai' (a time's "from") in an Indonesian table."""
    monkeypatch.setenv("COLUMNS", "200")
    for variable in ("LEDGERCTL_CONFIG", "LEDGER_ADDRESS", "LEDGER_TLS_CA", "LEDGERCTL_ZONE"):
        monkeypatch.delenv(variable, raising=False)
    tokens = tmp_path / "dev-tokens.yaml"
    tokens.write_text("polres:\n  token: abcdefghijklmnop\n", encoding="utf-8")
    args = ["--config", str(tmp_path / "none.toml"), "--tokens-file", str(tokens), "-a", "polres"]
    (tmp_path / "none.toml").write_text('zone = "Asia/Jakarta"\n', encoding="utf-8")
    capsys.readouterr()
    assert main(["--lang", "id", *args, "config", "view"]) == 0
    shown = capsys.readouterr().out
    assert "asal" in shown and "bawaan" in shown and "abcd…(16 karakter)" in shown, shown
    assert "berkas token, untuk instansi polres (flag --agency)" in shown, shown
    assert f"berkas konfigurasi {tmp_path / 'none.toml'}" in shown, shown
    assert not re.search(r"\b(?:None|default|characters|tokens file|mulai)\b", shown), shown
    as_json = []
    for lang in ("en", "id"):
        assert main(["--json", "--lang", lang, *args, "config", "view"]) == 0
        as_json.append(json.loads(capsys.readouterr().out))
    assert as_json[0] == as_json[1]
    assert as_json[0]["settings"]["tls_ca"] == {"value": None, "source": "default"}


@pytest.mark.parametrize(
    ("language", "one", "two"),
    [
        (
            "en",
            "1 piece of evidence, 1 file, 5 bytes read",
            "2 pieces of evidence, 2 files, 1,200 bytes read",
        ),
        ("id", "1 bukti, 1 berkas, 5 bita dibaca", "2 bukti, 2 berkas, 1.200 bita dibaca"),
    ],
)
def test_audit_verify_deep_counts_one_in_the_singular(
    capsys: pytest.CaptureFixture[str], language: i18n.Language, one: str, two: str
) -> None:
    with i18n.using(language):
        for count, size, expected in ((1, 5, one), (2, 1200, two)):
            capsys.readouterr()
            _show_evidence(EvidenceReport(True, count, count, size, ()))
            assert expected in capsys.readouterr().out


def test_event_types_are_worded_for_people_and_codes_for_ledgerctl_in_english() -> None:
    with i18n.using("en"):
        assert labels.event_type("DecisionRecorded") == "DecisionRecorded"
        assert labels.event_type("DecisionRecorded", worded=True) == "Decision recorded"
        assert labels.event_type("PersonalDataAccessed", worded=True) == "Personal data accessed"
        assert labels.event_type("SomethingNew", worded=True) == "Something new"
    with i18n.using("id"):
        assert labels.event_type("DecisionRecorded", worded=True) == "Keputusan dicatat"

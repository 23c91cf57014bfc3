"""ledgerctl in both languages against a real ledger: every table in Indonesian without the
UI's English words, times in WIB, and --json byte-identical whatever the language; another
regency's words for statuses and roles, in ledgerctl and the situation room's page."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml

from incidentledger_client import LedgerClient
from incidentledger_client.cli import main
from services.common.config import SituationRoomSettings
from services.situation_room.app import build_app
from services.situation_room.i18n import COOKIE as LANGUAGE_COOKIE
from services.situation_room.sessions import COOKIE, Officer
from tests.ledgerctl_support import Ctl
from tests.support import REFERENCE_FILE, Client, running_ledger, settings_for, store_environment
from tests.unit.test_i18n import english_words

WIB = ZoneInfo("Asia/Jakarta")

#: The commands that show a table or a view, each run in both languages.
VIEWS = [
    ("desk_pilkada", ["list"]),
    ("desk_pilkada", ["board", "--limit", "0"]),
    ("desk_pilkada", ["decisions"]),
    ("desk_pilkada", ["response-times", "--by", "severity"]),
    ("desk_pilkada", ["agencies"]),
    ("desk_pilkada", ["kecamatan"]),
    ("desk_pilkada", ["categories"]),
    ("desk_pilkada", ["severities"]),
    ("inspektorat", ["audit", "verify"]),
    ("inspektorat", ["audit", "as-of", "now"]),
    ("desk_pilkada", ["config", "view"]),
]


def _incident(ctl: Ctl) -> str:
    reported = ctl.json(
        "kesbangpol",
        "report",
        "Massa berkumpul di alun-alun",
        "crowd_gathering",
        "kota_mukomuko",
        "--desa",
        "Pasar Mukomuko",
        "--severity",
        "high",
    )
    name: str = reported["incident"]
    ctl.ok("desk_pilkada", "verify", name, "-m", "dikonfirmasi")
    ctl.ok("desk_pilkada", "assign", name, "polres")
    ctl.ok(
        "desk_pilkada",
        "decide",
        name,
        "Kumpulan massa dibatasi",
        "--forum",
        "Forkopimda",
        "--by",
        "desk_pilkada",
        "--rationale",
        "ketegangan",
        "--days",
        "3",
    )
    ctl.ok("polres", "act", name, "Personel dikerahkan")
    return name


def test_every_view_in_indonesian_and_json_unchanged(
    ctl: Ctl, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("LEDGER_LANG", raising=False)
    name = _incident(ctl)
    # The map's scores decay with time: shown at one moment, so that the runs can be compared.
    at = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    views = [
        *VIEWS,
        ("desk_pilkada", ["map", "--at", at]),
        ("desk_pilkada", ["show", name]),
        ("desk_pilkada", ["history", name]),
    ]
    for agency, args in views:
        english = ctl.ok(agency, "--lang", "en", *args)
        indonesian = ctl.ok(agency, "--lang", "id", *args)
        assert indonesian != english, args
        assert english_words(indonesian) == set(), (args, indonesian)
        # What a program reads is the same in every language, byte for byte.
        as_json = [ctl.ok(agency, "--json", "--lang", lang, *args) for lang in ("en", "id")]
        monkeypatch.setenv("LANG", "id_ID.UTF-8")
        as_json.append(ctl.ok(agency, "--json", *args))
        monkeypatch.delenv("LANG")
        assert as_json[0] == as_json[1] == as_json[2], args

    shown = ctl.ok("desk_pilkada", "--lang", "id", "show", name)
    assert "Dalam penanganan" in shown and "tinggi" in shown
    # Times in WIB, the Indonesian way: day month year, a dot between hours and minutes.
    assert re.search(r"\b\d{1,2} [A-Z][a-z]{2} \d{4} \d\d\.\d\d\.\d\d WIB\b", shown), shown
    board = ctl.ok("desk_pilkada", "--lang", "id", "board", "--limit", "0")
    assert "Papan (pekerjaan terbuka)" in board and "Dalam penanganan (1)" in board
    assert "Rawan" in ctl.ok("desk_pilkada", "--lang", "id", "map", "--at", at)
    svg = ctl.ledger.data_dir / "peta.svg"
    ctl.ok("desk_pilkada", "--lang", "id", "map", "--at", at, "--svg", str(svg))
    drawn = svg.read_text(encoding="utf-8")
    assert "Peta kerawanan" in drawn and "Rawan Rendah" in drawn and "posisi buku besar" in drawn
    assert english_words(re.sub(r"<[^>]*>", " ", drawn)) == set(), drawn
    # A command's answer: the verb and its figures in Indonesian.
    answer = ctl.ok("polres", "--lang", "id", "act", name, "Patroli")
    assert answer.startswith("tindakan dicatat ") and "(versi " in answer, answer


def test_tables_in_indonesian_fit_an_80_column_terminal(
    ctl: Ctl, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Indonesian words are longer: at 80 columns the board cut every reference code short
    (MKM-3V73-…) and lost its title and place columns, and the list and the decisions broke
    words over lines (kota_mukomu|ko). Now the least needed columns are left out instead."""
    monkeypatch.delenv("LEDGER_LANG", raising=False)
    name = _incident(ctl)
    title = "Dugaan politik uang menjelang pencoblosan di TPS 03"
    other = ctl.json("kpu", "report", title, "money_politics", "ipuh")["incident"]
    codes = [ctl.json("desk_pilkada", "show", n)["incident"]["reference"] for n in (name, other)]
    monkeypatch.setenv("COLUMNS", "80")
    for args, heads in (
        (["board", "--limit", "0"], ("kejadian", "tahap", "dilaporkan", "judul")),
        (["list"], ("kode referensi", "judul", "tahap")),
        (["decisions"], ("lokasi", "ringkasan", "sampai")),
        (["response-times", "--by", "severity"], ("keparahan", "langkah", "median", "p90")),
        (["show", other], ("dicatat", "peristiwa", "oleh", "rincian")),
    ):
        shown = ctl.ok("desk_pilkada", "--lang", "id", *args)
        lines = shown.splitlines()
        assert all(len(line) <= 80 for line in lines), (args, shown)
        words = {w for line in lines for cell in line.split("│") for w in cell.split()}
        heading = " ".join(lines)
        for head in heads:
            assert all(w in heading for w in head.split()), (args, head, shown)
        assert "…" not in shown, (args, shown)  # no code, word or figure cut short
        if args[0] == "show":  # the timeline's details, each whole
            assert f"kode_referensi={codes[1]};" in words, shown
            assert {"kpu", "/", "dev-kpu", *title.split()} <= words, shown
            continue
        if args[0] == "response-times":
            assert {"tinggi", "konfirmasi", "verifikasi", "penyelesaian"} <= words, shown
            continue
        if args[0] == "decisions":
            # The kecamatan by its name, and the desa, each whole on its line.
            assert "Kota Mukomuko /" in shown and "Pasar Mukomuko" in shown, shown
            assert {"Kumpulan", "massa", "dibatasi"} <= words, shown
            assert codes[0] in words, shown  # the incident by its code, as everywhere
            continue
        assert set(codes) <= words, (args, shown)  # whole, as read out over the phone
        assert set(title.split()) <= words, (args, shown)  # no word broken


def test_a_40_column_terminal_cuts_no_code_time_or_word(
    ctl: Ctl, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 40 columns not even the columns a table always shows fit, and rich squeezed them:
    the board cut its headers and words mid-word (dilapo|rkan), show and decisions their
    times (05.57.4|5 WIB) and details, show the incident's name. Each row is a record now."""
    monkeypatch.delenv("LEDGER_LANG", raising=False)
    name = _incident(ctl)
    reference = ctl.json("desk_pilkada", "show", name)["incident"]["reference"]
    monkeypatch.setenv("COLUMNS", "40")
    for args, heads in (
        (["board"], ("kejadian", "tahap", "dilaporkan", "judul", "penanggung jawab")),
        (["show", name], ("dicatat", "peristiwa", "oleh", "rincian")),
        (["decisions"], ("lokasi", "ringkasan", "mulai", "sampai", "kejadian")),
    ):
        shown = ctl.ok("desk_pilkada", "--lang", "id", *args)
        lines = shown.splitlines()
        assert all(len(line) <= 40 for line in lines), (args, shown)
        words = {w.strip(";") for line in lines for w in line.split()}
        for head in heads:  # each field headed whole
            assert any(line.startswith(f"{head}:") for line in lines), (args, head, shown)
        # Times whole: the clock's parts together (17.05 or 17.05.00, never 17.05.0|0); and
        # the reference code whole.
        assert all(
            re.fullmatch(r"\d\d\.\d\d(\.\d\d)?", clock)
            for clock in re.findall(r"\d+(?:\.\d+)+", shown)
        ), (args, shown)
        assert reference in words or f"kode_referensi={reference}" in words, (args, shown)
        assert {"Massa", "berkumpul", "alun-alun"} <= words or args[0] == "decisions", shown
        if args[0] == "show":
            assert name.removeprefix("incidents/") in shown, shown  # the id whole
            assert {"Kumpulan", "massa", "dibatasi"} <= words, shown


def test_the_boards_footer_says_its_order_in_words(
    ctl: Ctl, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A board cut short by --limit said its order by the code of --sort, in every language:
    "menurut severity", "menurut age"."""
    monkeypatch.setenv("COLUMNS", "200")
    for n in range(2):
        ctl.json("kesbangpol", "report", f"Rally {n}", "crowd_gathering", "ipuh")
    for sort, english, indonesian in (
        ("severity", "most severe first", "paling parah dulu"),
        ("age", "oldest first", "paling lama dulu"),
        ("updated", "latest change first", "perubahan terbaru dulu"),
        ("status", "in lifecycle order", "menurut urutan tahap"),
    ):
        args = ("board", "--limit", "1", "--sort", sort)
        footer = next(
            line
            for line in ctl.ok("desk_pilkada", "--lang", "id", *args).splitlines()
            if line.startswith("menampilkan 1 dari 2")
        )
        assert f"kejadian terbuka, {indonesian} (--limit N" in footer, footer
        assert english_words(footer) == set() and sort not in footer, footer
        said = ctl.ok("desk_pilkada", "--lang", "en", *args)
        assert f"showing 1 of 2 open incidents, {english} (--limit N" in said, said


def test_statuses_and_rejection_reasons_are_taken_as_the_tables_word_them(ctl: Ctl) -> None:
    """The tables show statuses and rejection reasons in words (Terverifikasi, Hoaks), and
    kecamatan, categories, severities and agencies were taken by their names too; statuses
    and rejection reasons were refused but by their codes."""
    names = [
        ctl.json("kesbangpol", "report", f"Rally {n}", "crowd_gathering", "ipuh")["incident"]
        for n in range(4)
    ]
    ctl.ok("desk_pilkada", "verify", names[0])
    for typed in ("terverifikasi", "Terverifikasi", "Verified", "VERIFIED", "verified"):
        listed = ctl.json("polres", "list", "--status", typed)
        assert [i["name"] for i in listed] == [names[0]], typed
    assert "Terverifikasi" in ctl.ok("polres", "--lang", "id", "list", "--status", "terverifikasi")
    code, _out, err = ctl.run("polres", "--lang", "id", "list", "--status", "terverifkasi")
    assert code == 2 and "tahap 'terverifkasi' tidak dikenal" in err, err
    # A rejection reason, by its code or its words in either language, alone or in a triage.
    for name, typed in ((names[1], "hoaks"), (names[2], "Bukan wewenang"), (names[3], "Invalid")):
        ctl.ok("desk_pilkada", "reject", name, typed, "-m", "checked")
    reasons = [ctl.json("polres", "show", n)["incident"]["rejection_reason"] for n in names[1:]]
    assert reasons == ["HOAX", "OUT_OF_SCOPE", "INVALID"], reasons
    other = ctl.json("kesbangpol", "report", "Rally 5", "crowd_gathering", "ipuh")["incident"]
    triaged = ctl.json(
        "desk_pilkada", "triage", "reject", other, "--reason", "Tidak memenuhi syarat", "-m", "x"
    )
    assert triaged[0]["outcome"] == "RECORDED", triaged
    assert ctl.json("polres", "show", other)["incident"]["rejection_reason"] == "INVALID"
    assert [i["name"] for i in ctl.json("polres", "list", "--status", "ditolak")] == [
        *names[1:],
        other,
    ]


def test_reference_data_in_indonesian_from_the_reference_file(ctl: Ctl) -> None:
    categories = ctl.json("desk_pilkada", "categories")
    money = next(c for c in categories if c["code"] == "money_politics")
    assert money["name"] == "Money politics" and money["names"] == {"id": "Politik uang"}
    shown = ctl.ok("desk_pilkada", "--lang", "id", "categories")
    assert "Politik uang" in shown and "Money politics" not in shown
    assert "Money politics" in ctl.ok("desk_pilkada", "--lang", "en", "categories")
    severities = ctl.ok("desk_pilkada", "--lang", "id", "severities")
    assert "Kritis" in severities and "bawaan" in severities
    # Every column has its heading (the default's was empty), the default marked in words.
    for lang, heads, default in (
        ("id", ["kode", "nama", "peringkat", "bawaan"], ["medium", "Sedang", "2", "ya"]),
        ("en", ["code", "name", "rank", "default"], ["medium", "Medium", "2", "yes"]),
    ):
        lines = ctl.ok("desk_pilkada", "--lang", lang, "severities").splitlines()
        cells = [
            [c.strip() for c in line.strip("┃│ ").split("┃" if "┃" in line else "│")]
            for line in lines
        ]
        assert heads in cells and default in cells, (lang, lines)
    agencies = ctl.ok("desk_pilkada", "--lang", "id", "agencies")
    assert "koordinator" in agencies and "penanggap" in agencies


def test_ledgerctls_own_hints_in_indonesian_and_json_unchanged(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("LEDGER_LANG", raising=False)
    nowhere = ["--address", "127.0.0.1:9", "--token", "t", "--timeout", "1", "list"]
    capsys.readouterr()
    assert main(["--lang", "id", *nowhere]) == 6
    said = capsys.readouterr().err
    assert "tidak dapat menghubungi buku besar di 127.0.0.1:9" in said, said
    assert english_words(said) == set(), said
    errors = []
    for lang in ("en", "id"):
        assert main(["--json", "--lang", lang, *nowhere]) == 6
        errors.append(capsys.readouterr().err)
    assert errors[0] == errors[1] and "cannot reach the ledger" in errors[0]


def test_ledgerctls_refusals_of_its_own_flags_in_indonesian(ctl: Ctl) -> None:
    """Refused flags that ledgerctl checks itself were English on an Indonesian terminal."""
    name = ctl.json("kesbangpol", "report", "Rally", "crowd_gathering", "ipuh")["incident"]
    decide = ("decide", name, "x", "--forum", "F", "--by", "polres", "--rationale", "r")
    for args, said in [
        (("board", "--limit", "-1"), "harus 0 (semua) atau lebih"),
        (("completion", "pwsh"), "harus bash, zsh atau fish"),
        (decide, "memerlukan masa berlaku"),
        (("webhooks", "replay"), "sebutkan surat mati atau berikan --all"),
        (("webhooks", "replay", "--all", "dl_1"), "jangan keduanya"),
    ]:
        code, _out, err = ctl.run("polres", "--lang", "id", *args)
        assert code == 2 and said in err, (args, err)


def test_the_arguments_placeholders_in_indonesian(ctl: Ctl) -> None:
    """The usage line, the help's table and the usage errors named the arguments in English
    (``ledgerctl assign [OPSI] {INCIDENT} {agency}``) on an Indonesian terminal."""
    code, out, _err = ctl.run("polres", "--lang", "id", "assign", "--help")
    assert code == 0 and "{KEJADIAN} {INSTANSI}" in out, out
    assert "INCIDENT" not in out and "agency" not in out.lower().replace("--agency", ""), out
    for args, said in [
        (("assign",), "Argumen 'KEJADIAN' belum diberikan"),
        (("assign", "MKM-3V73-PV", "policee"), "Nilai tidak sah untuk INSTANSI"),
        (("show", "zz"), "Nilai tidak sah untuk KEJADIAN"),
        (("triage", "verify"), "Nilai tidak sah untuk KEJADIAN"),
        (("board", "--limit", "-1"), "Nilai tidak sah untuk --limit"),
    ]:
        code, _out, err = ctl.run("desk_pilkada", "--lang", "id", *args)
        assert code == 2 and said in err, (args, err)
    # One case in English too: AGENCY as INCIDENT, not "agency".
    code, out, _err = ctl.run("polres", "--lang", "en", "assign", "--help")
    assert code == 0 and "{INCIDENT} {AGENCY}" in out, out


#: Another regency's words for two statuses and a role (Mukomuko's file uses the glossary's).
OTHER_WORDS = {
    "statuses": [
        {"code": "RESPONDING", "name": "Responding", "names": {"id": "Sedang ditangani"}},
        {"code": "ASSIGNED", "name": "Assigned", "names": {"id": "Diserahkan ke instansi"}},
    ],
    "roles": [{"code": "responder", "name": "Responder", "names": {"id": "instansi pelaksana"}}],
}


@pytest.fixture
def other_regency(tmp_path: Path) -> Iterator[Client]:
    """A ledger whose reference file is another regency's: Mukomuko's places and agencies,
    its own words for statuses and roles."""
    raw = yaml.safe_load(REFERENCE_FILE.read_text(encoding="utf-8"))
    raw.update(regency="Kabupaten Contoh", **OTHER_WORDS)
    other = tmp_path / "contoh.yaml"
    other.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    with (
        store_environment("popo", tmp_path) as env,
        running_ledger(settings_for(tmp_path, env, reference_file=other)) as ledger,
    ):
        yield ledger


def test_another_regencys_words_for_statuses_and_roles_in_ledgerctl(
    other_regency: Client, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("LEDGER_LANG", raising=False)
    ctl = Ctl(other_regency, capsys)
    name = _incident(ctl)  # RESPONDING
    for args in (["show", name], ["list"], ["board", "--limit", "0"], ["audit", "as-of", "now"]):
        agency = "inspektorat" if args[0] == "audit" else "desk_pilkada"
        shown = ctl.ok(agency, "--lang", "id", *args)
        assert "Sedang ditangani" in shown and "Dalam penanganan" not in shown, (args, shown)
        assert "RESPONDING" in ctl.ok(agency, "--lang", "en", *args), args
        as_json = [ctl.ok(agency, "--json", "--lang", lang, *args) for lang in ("en", "id")]
        assert as_json[0] == as_json[1] and "Sedang ditangani" not in as_json[0], args
    # The status as this regency's tables word it is taken for it (and the catalog's word).
    for typed in ("Sedang ditangani", "dalam penanganan"):
        listed = ctl.json("desk_pilkada", "list", "--status", typed)
        assert [i["name"] for i in listed] == [name], typed
    agencies = ctl.ok("desk_pilkada", "--lang", "id", "agencies")
    assert "instansi pelaksana" in agencies and "penanggap" not in agencies, agencies
    assert "koordinator" in agencies  # not named by the file: the catalog's word
    assert ctl.json("desk_pilkada", "agencies")[1]["role"] == "responder"
    # The client reads every status and role, named or not.
    ledger = LedgerClient(other_regency.address, other_regency.tokens["desk_pilkada"])
    try:
        reference = ledger.reference_data()
    finally:
        ledger.close()
    assert [s.code for s in reference.statuses][:4] == [
        "REPORTED",
        "VERIFIED",
        "ASSIGNED",
        "RESPONDING",
    ]
    assert reference.status_names()["ASSIGNED"] == {"id": "Diserahkan ke instansi"}
    assert reference.status_names()["CLOSED"] == {}
    assert [r.code for r in reference.roles] == ["coordinator", "responder", "auditor"]


def test_another_regencys_words_for_statuses_and_roles_on_the_situation_rooms_page(
    other_regency: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = _incident(Ctl(other_regency, capsys))  # RESPONDING
    settings = SituationRoomSettings(
        ledger_address=other_regency.address,
        notifier_address="127.0.0.1:1",  # not reached: the page is read without its live feed
        data_dir=tmp_path / "room",
        reference_file=tmp_path / "contoh.yaml",
    )
    app = build_app(settings, token=lambda: other_regency.tokens["desk_pilkada"])
    room = app.state.room
    token = other_regency.tokens["polres"]
    officer_ledger = LedgerClient(other_regency.address, token)
    session = room.sessions.new(Officer("polres", "responder", token, officer_ledger))

    async def get(path: str, language: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)  # no lifespan: no live subscription
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            client.cookies.set(COOKIE, room.sessions.cookie_value(session))
            client.cookies.set(LANGUAGE_COOKIE, language)
            return await client.get(path)

    try:
        for path in ("/board", f"/{name}"):
            page = asyncio.run(get(path, "id"))
            assert page.status_code == 200, (path, page.text)
            assert "Sedang ditangani" in page.text and "Dalam penanganan" not in page.text, path
            assert "instansi pelaksana" in page.text, path  # the officer's role, in the header
            english = asyncio.run(get(path, "en"))
            # In English words (the regency names its statuses in Indonesian only).
            assert "Responding" in english.text and "Sedang ditangani" not in english.text
        board = asyncio.run(get("/board", "id")).text
        assert "Diserahkan ke instansi" in board  # the board's status filter
    finally:
        officer_ledger.close()


def test_refused_decision_times_are_said_in_wib_in_both_languages(ctl: Ctl) -> None:
    """A window that ends before it starts, when recorded and when corrected, and an end too
    far ahead: the ledger said their times in UTC (11:00 for 18:00 WIB), and in Indonesian
    only "Nilai valid_until tidak dapat diterima." with the English after it."""
    name = ctl.json("kesbangpol", "report", "Rally", "crowd_gathering", "ipuh")["incident"]
    ctl.ok("desk_pilkada", "verify", name)
    decide = ["decide", name, "Kerumunan dibatasi", "--forum", "Forkopimda"]
    decide += ["--by", "desk_pilkada", "--rationale", "ketegangan"]
    backwards = ("--valid-from", "2026-12-08 18:00", "--valid-until", "2026-12-07 18:00")
    said = {}
    for lang in ("en", "id"):
        code, _out, err = ctl.run("desk_pilkada", "--lang", lang, *decide, *backwards)
        assert code == 2, err
        assert "2026-12-08T18:00:00+07:00" in err and "2026-12-07T18:00:00+07:00" in err, err
        assert "+00:00" not in err, err
        said[lang] = err
    assert "sebelum mulai berlaku" in said["id"], said["id"]
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    wib = start.astimezone(WIB)
    window = ("--valid-from", wib.strftime("%Y-%m-%d %H:%M:%S"), "--days", "2")
    decided = ctl.json("desk_pilkada", *decide, *window)
    until = wib + timedelta(days=2)
    code, _out, err = ctl.run(
        "desk_pilkada",
        "--lang",
        "id",
        "correct",
        name,
        "valid_until",
        until.strftime("%Y-%m-%d %H:%M:%S"),
        (wib - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S"),
        "--event",
        decided["event_id"],
        "--reason",
        "salah ketik",
    )
    assert code == 2 and wib.isoformat() in err and "+00:00" not in err, err
    assert "sebelum mulai berlaku" in err, err
    far = ("--valid-from", wib.strftime("%Y-%m-%d %H:%M:%S"), "--days", "400")
    code, _out, err = ctl.run("desk_pilkada", "--lang", "id", *decide, *far)
    assert code == 2 and "+07:00" in err and "+00:00" not in err, err
    assert "hari ke depan" in err, err


def test_a_refused_time_is_said_once_in_indonesian(ctl: Ctl) -> None:
    """The ledger's own sentence for a failed time check says the whole case: in Indonesian
    it was followed by the English one in brackets, the same facts twice."""
    name = ctl.json("kesbangpol", "report", "Rally", "crowd_gathering", "ipuh")["incident"]
    ctl.ok("desk_pilkada", "verify", name)
    decide = ["decide", name, "Kerumunan dibatasi", "--forum", "Forkopimda"]
    decide += ["--by", "desk_pilkada", "--rationale", "ketegangan"]
    backwards = ("--valid-from", "2026-12-08 18:00", "--valid-until", "2026-12-07 18:00")
    code, _out, err = ctl.run("desk_pilkada", "--lang", "id", *decide, *backwards)
    assert code == 2 and "sebelum mulai berlaku" in err, err
    assert "before it starts" not in err and "valid_until must be" not in err, err
    assert "valid_until" in err, err  # the field it is about, named still
    # (A general sentence, "Nilai title tidak dapat diterima.", keeps the English that says
    # the case: test_localized_errors.)

"""ledgerctl against a real ledger (in-memory store): every command, --json, exit codes."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from incidentledger_client.cli import main
from incidentledger_client.cli.commands import incidents
from tests.ledgerctl_support import Ctl, backlog_line, without_server_log

WIB = timezone(timedelta(hours=7))


def test_the_lifecycle_through_ledgerctl(ctl: Ctl, tmp_path: Path) -> None:
    reported = ctl.json(
        "kesbangpol",
        "report",
        "Planned mass gathering",
        "crowd_gathering",
        "kota_mukomuko",
        "--desa",
        "Pasar Mukomuko",
        "--severity",
        "low",
    )
    name = reported["incident"]
    assert name.startswith("incidents/") and reported["version"] == 1
    short = name.removeprefix("incidents/")
    assert "verified" in ctl.ok("desk_pilkada", "verify", short, "-m", "confirmed", "-V", "1")
    ctl.ok("desk_pilkada", "assign", name, "satpolpp")
    ctl.ok("satpolpp", "support", name, "dinkes")
    ctl.ok("kesbangpol", "correct", name, "severity", "low", "high", "--reason", "typo")
    ctl.ok("satpolpp", "assess", name, "critical")
    ctl.ok("satpolpp", "escalate", name, "crowd growing")
    ctl.ok("satpolpp", "handover", "propose", name, "polres", "--reason", "needs police")
    ctl.ok("polres", "handover", "accept", name)
    ctl.ok(
        "desk_pilkada",
        "decide",
        name,
        "Gatherings restricted",
        "--forum",
        "Forkopimda",
        "--by",
        "desk_pilkada",
        "--by",
        "polres",
        "--rationale",
        "tension",
        "--days",
        "3",
    )
    ctl.ok("dinkes", "act", name, "Medical team on standby")
    ctl.ok("polres", "resolve", name, "dispersed")
    ctl.ok("polres", "close", "request", name)
    closed = ctl.json("desk_pilkada", "close", "approve", name)
    assert closed["version"] >= 13
    ctl.ok("polres", "reopen", name, "crowd returned")

    shown = ctl.json("inspektorat", "show", name)
    incident = shown["incident"]
    assert incident["status"] == "REOPENED" and incident["lead_agency"] == "polres"
    assert incident["severity"] == "critical" and incident["supporting_agencies"] == ["dinkes"]
    types = [e["type"] for e in shown["events"]]
    assert types[0] == "Reported" and len(types) == incident["version"]
    human = ctl.ok("inspektorat", "show", name)
    assert "Planned mass gathering" in human and "Timeline" in human and "REOPENED" in human
    # A reason the event's payload holds too is said once (the resolution), else after it.
    assert "resolution=dispersed" in human and "(dispersed)" not in human, human
    assert "level=1 (crowd growing)" in human, human
    assert len(ctl.json("inspektorat", "history", name)) == incident["version"]

    ctl.ok("kesbangpol", "report", "Hoax about ballots", "hoax", "ipuh")
    listed = ctl.json("inspektorat", "list", "--kecamatan", "ipuh")
    assert [i["title"] for i in listed] == ["Hoax about ballots"]
    hoax = listed[0]["name"]
    ctl.ok("desk_pilkada", "reject", hoax, "hoax", "-m", "Bawaslu checked")
    assert ctl.json("inspektorat", "list", "--status", "rejected")[0]["rejection_reason"] == "HOAX"
    table = ctl.ok("inspektorat", "list")
    assert "Hoax about ballots" in table and "Incidents (2)" in table
    in_order = [i["name"] for i in ctl.json("inspektorat", "list")]
    newest = [i["name"] for i in ctl.json("inspektorat", "list", "--newest-first")]
    assert newest == in_order[::-1] and newest[0] == hoax
    assert [
        i["name"] for i in ctl.json("inspektorat", "list", "--newest-first", "--limit", "1")
    ] == [hoax]

    ctl.ok("kesbangpol", "report", "Duplicate report", "crowd_gathering", "kota_mukomuko")
    dup = ctl.json("inspektorat", "list", "--status", "REPORTED")[0]["name"]
    ctl.ok("desk_pilkada", "merge", dup, name)

    decisions = ctl.json("inspektorat", "decisions", "--kecamatan", "kota_mukomuko")
    assert [d["summary"] for d in decisions] == ["Gatherings restricted"]
    assert "Gatherings restricted" in ctl.ok("inspektorat", "decisions")

    board = ctl.json("inspektorat", "board")
    assert [i["name"] for i in board["columns"]["REOPENED"]] == [name]
    assert "REOPENED (1)" in ctl.ok("inspektorat", "board")
    # A field device's backlog handed over days on: its report happened when the device
    # recorded it (no occur_time given), and the board says so beside the record time.
    backlog = tmp_path / "backlog.jsonl"
    backlog.write_text(backlog_line(0, title="Backlog report") + "\n")
    ctl.ok("bawaslu", "ingest", str(backlog))
    shown = " ".join(ctl.ok("inspektorat", "board").split())
    assert "(happened 2026-11-27 09:00 WIB)" in shown, shown

    svg = tmp_path / "out" / "map.svg"
    vmap = ctl.json("inspektorat", "map", "--svg", str(svg))
    kota = next(k for k in vmap["kecamatan"] if k["kecamatan"] == "kota_mukomuko")
    assert kota["score"] > 0
    text = svg.read_text()
    assert text.startswith("<svg") and 'data-kecamatan="kota_mukomuko"' in text
    assert f'data-score="{kota["score"]:.1f}"' in text and "Kota Mukomuko" in text
    assert "Kota Mukomuko" in ctl.ok("inspektorat", "map")

    assert ctl.json("inspektorat", "response-times", "--by", "severity")
    assert ctl.json("inspektorat", "audit", "verify")["ok"] is True
    assert "ledger verified" in ctl.ok("inspektorat", "audit", "verify")
    export = tmp_path / "history.jsonl"
    exported = ctl.json("inspektorat", "audit", "export", str(export))
    lines = export.read_text().splitlines()
    assert exported["events"] == len(lines) > 15
    assert json.loads(lines[0])["type"] == "Reported"


def test_the_audits_counts_of_one_are_singular(ctl: Ctl, tmp_path: Path) -> None:
    """One event, one incident, one checkpoint: never "1 events", in either language."""
    ctl.ledger.report("kesbangpol")
    ctl.ledger.server.checkpoints.create()
    verify = ("inspektorat", "audit", "verify")
    assert "1 event, 1 incident, 1 checkpoint checked" in ctl.ok(*verify)
    indonesian = ctl.ok("inspektorat", "--lang", "id", *verify[1:])
    assert "1 peristiwa, 1 kejadian, 1 titik periksa diperiksa" in indonesian
    export = tmp_path / "one.jsonl"
    assert "exported 1 event to " in ctl.ok("inspektorat", "audit", "export", str(export))
    ctl.ledger.report("kesbangpol")
    ctl.ledger.server.checkpoints.create()
    assert "2 events, 2 incidents, 2 checkpoints checked" in ctl.ok(*verify)
    assert "exported 2 events to " in ctl.ok("inspektorat", "audit", "export", str(export))


def test_a_decision_reads_and_is_corrected_in_local_time(ctl: Ctl) -> None:
    """A duty officer in WIB types a decision's ends in WIB, reads them in WIB in the
    timeline (and its correction's), sees when it starts, and corrects its end by typing
    the times as shown."""
    name = ctl.json("kesbangpol", "report", "Tension before rally", "crowd_gathering", "ipuh")[
        "incident"
    ]
    ctl.ok("desk_pilkada", "verify", name)
    day = (datetime.now(WIB) + timedelta(days=1)).date().isoformat()
    after = (datetime.now(WIB) + timedelta(days=4)).date().isoformat()
    ctl.ok(
        "desk_pilkada",
        *("decide", name, "Large gatherings restricted", "--forum", "Forkopimda"),
        *("--by", "desk_pilkada", "--rationale", "tension"),
        *("--valid-from", f"{day} 18:00", "--valid-until", f"{day} 23:00"),
    )
    # It starts tomorrow evening: none is in force now, said as the situation room says it.
    assert ctl.ok("polres", "decisions").strip() == "No decision is in force."
    assert "Large gatherings restricted" in ctl.ok("polres", "decisions", "--at", f"{day} 20:00")
    shown = ctl.ok("polres", "show", name)
    assert f"from {day} 18:00:00 WIB until {day} 23:00:00 WIB" in shown, shown
    assert f"valid_from={day} 18:00:00 WIB" in shown, shown
    assert "+00:00" not in shown, shown

    ctl.ok(
        "desk_pilkada",
        *("correct", name, "valid_until", f"{day} 23:00", f"{after} 18:00"),
        *("--reason", "extended by Forkopimda"),
    )
    # A wrong OLD is told the recorded one as the officer reads it, not in UTC only.
    code, _out, err = ctl.run(
        "desk_pilkada",
        *("correct", name, "valid_until", f"{day} 23:00", f"{after} 20:00", "--reason", "x"),
    )
    assert code == 4 and f"the recorded valid_until is {after} 18:00:00 WIB" in err, err
    decision = ctl.json("polres", "show", name)["incident"]["decisions"][0]
    end = datetime.fromisoformat(decision["valid_until"])
    assert end == datetime.fromisoformat(f"{after}T18:00:00+07:00"), decision
    shown = ctl.ok("polres", "show", name)
    assert f"old_value={day} 23:00:00 WIB" in shown and f"new_value={after} 18:00:00 WIB" in shown
    assert "+00:00" not in shown, shown


def test_a_decisions_corrected_place_is_the_same_in_the_incident_and_in_force(ctl: Ctl) -> None:
    """GetIncident's decision scope and ListDecisionsInForce answer the same after a
    correction of where the decision applies."""
    name = ctl.json("kesbangpol", "report", "Rally", "crowd_gathering", "lubuk_pinang")["incident"]
    ctl.ok("desk_pilkada", "verify", name)
    decided = ctl.json(
        "desk_pilkada",
        *("decide", name, "Gatherings restricted", "--forum", "Forkopimda"),
        *("--by", "desk_pilkada", "--rationale", "tension", "--days", "1"),
    )
    ctl.ok(
        "desk_pilkada",
        *("correct", name, "location.kecamatan", "lubuk_pinang", "penarik"),
        *("--event", decided["event_id"], "--reason", "the wrong kecamatan"),
    )
    in_force = ctl.json("polres", "decisions")
    assert [d["kecamatan"] for d in in_force] == ["penarik"]
    decision = ctl.json("polres", "show", name)["incident"]["decisions"][0]
    assert decision["scope"]["kecamatan"] == "penarik", decision


def test_history_shows_the_event_ids_that_correct_takes(
    ctl: Ctl, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`correct --event` takes an event's id or its first characters, and its help said to
    take them "as evidence list shows them": neither `show` nor `history` showed an event's
    id, and evidence list only those of files. `history --ids` shows each one."""
    name = ctl.json("kesbangpol", "report", "Rally", "crowd_gathering", "lubuk_pinang")["incident"]
    ctl.ok("desk_pilkada", "verify", name)
    decided = ctl.json(
        "desk_pilkada",
        *("decide", name, "Gatherings restricted", "--forum", "Forkopimda"),
        *("--by", "desk_pilkada", "--rationale", "tension", "--days", "1"),
    )
    monkeypatch.setenv("COLUMNS", "80")  # a narrow terminal keeps the ids whole too
    for lang, head in (("en", "event id"), ("id", "id peristiwa")):
        shown = ctl.ok("desk_pilkada", "--lang", lang, "history", name, "--ids")
        assert head in shown, shown
        row = next(line for line in shown.splitlines() if line.strip().startswith("3 "))
        assert row.split()[1] == decided["event_id"][:8], shown
    assert decided["event_id"][:8] not in ctl.ok("desk_pilkada", "history", name)
    ctl.ok(
        "desk_pilkada",
        *("correct", name, "location.kecamatan", "lubuk_pinang", "penarik"),
        *("--event", decided["event_id"][:8], "--reason", "the wrong kecamatan"),
    )
    decision = ctl.json("polres", "show", name)["incident"]["decisions"][0]
    assert decision["scope"]["kecamatan"] == "penarik", decision
    # and the help says where the ids are
    assert "history --ids" in " ".join(ctl.ok("polres", "correct", "--help").split())


def test_exit_codes_and_messages(ctl: Ctl, tmp_path: Path) -> None:
    name = ctl.json("kesbangpol", "report", "Gathering", "crowd_gathering", "kota_mukomuko")[
        "incident"
    ]
    # usage: missing argument, bad choice, bad field on the server
    assert ctl.run("desk_pilkada", "verify")[0] == 2
    code, _, err = ctl.run("desk_pilkada", "reject", name, "MAYBE", "-m", "x")
    assert code == 2 and "known: INVALID, HOAX, OUT_OF_SCOPE" in err
    code, _, err = ctl.run("kesbangpol", "report", "x", "crowd_gathering", "atlantis")
    assert code == 2 and "unknown kecamatan 'atlantis'" in err
    code, _, err = ctl.run("kesbangpol", "report", "", "crowd_gathering", "ipuh")
    assert code == 2 and "INVALID_ARGUMENT" in err
    # not found
    code, _, err = ctl.run("desk_pilkada", "show", f"incidents/{uuid.uuid4()}")
    assert code == 3 and "NOT_FOUND" in err
    # conflict: stale version, illegal transition
    code, _, err = ctl.run("desk_pilkada", "verify", name, "-V", "7")
    assert code == 4 and "VERSION_CONFLICT" in err
    code, _, err = ctl.run("desk_pilkada", "resolve", name, "done")
    assert code == 4 and "FAILED_PRECONDITION" in err
    # permission: a responder verifying, an auditor writing, a bad token
    code, _, err = ctl.run("polres", "verify", name)
    assert code == 5 and "PERMISSION_DENIED" in err
    assert ctl.run("inspektorat", "report", "x", "crowd_gathering", "ipuh")[0] == 5
    capsys_code = main(["--address", ctl.ledger.address, "--token", "not-a-token", "list"])
    assert capsys_code == 5
    # configuration: unknown agency, missing tokens file
    code, _, err = ctl.run("nobody", "list")
    assert code == 2 and "no token for agency 'nobody'" in err
    assert main(["--tokens-file", str(tmp_path / "none.yaml"), "--agency", "polres", "list"]) == 2
    # server unavailable
    assert main(["--address", "127.0.0.1:1", "--timeout", "0.5", "--token", "x", "list"]) == 6


def test_configuration_from_a_file_and_the_environment(
    ctl: Ctl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "ledgerctl.toml"
    config.write_text(
        f'address = "{ctl.ledger.address}"\nagency = "kesbangpol"\ntokens_file = "{ctl.tokens}"\n'
    )
    capsys.readouterr()
    assert main(["--config", str(config), "--json", "report", "From config", "flood", "ipuh"]) == 0
    assert json.loads(without_server_log(capsys.readouterr().out))["version"] == 1
    monkeypatch.setenv("LEDGER_ADDRESS", ctl.ledger.address)
    monkeypatch.setenv("LEDGER_TOKEN", ctl.ledger.tokens["inspektorat"])
    monkeypatch.setenv("LEDGERCTL_CONFIG", str(tmp_path / "absent.toml"))
    assert main(["list"]) == 2  # a named config file that is missing is a usage error
    monkeypatch.delenv("LEDGERCTL_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["--json", "list"]) == 0
    assert [i["title"] for i in json.loads(without_server_log(capsys.readouterr().out))] == [
        "From config"
    ]


def test_every_command_has_help_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    commands = [
        ["report"],
        ["verify"],
        ["reject"],
        ["merge"],
        ["assess"],
        ["assign"],
        ["support"],
        ["handover", "propose"],
        ["handover", "accept"],
        ["decide"],
        ["act"],
        ["escalate"],
        ["resolve"],
        ["close", "request"],
        ["close", "approve"],
        ["reopen"],
        ["correct"],
        ["show"],
        ["history"],
        ["list"],
        ["board"],
        ["map"],
        ["decisions"],
        ["response-times"],
        ["watch"],
        ["webhooks", "register"],
        ["webhooks", "list"],
        ["webhooks", "dead-letters"],
        ["webhooks", "replay"],
        ["audit", "verify"],
        ["audit", "export"],
        ["audit", "as-of"],
    ]
    for command in commands:
        capsys.readouterr()
        assert main([*command, "--help"]) == 0, command
        out = capsys.readouterr().out
        assert "Example: ledgerctl" in out or "Examples: ledgerctl" in out, command


def test_tables_name_each_kecamatan_and_json_keeps_its_code(
    ctl: Ctl, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A duty officer reads "Malin Deman" where the ledger says malin_deman: on the board,
    the list, an incident, the decisions in force (with the desa they apply to), the
    response times and the list as it stood, in both languages; --json keeps the code."""
    monkeypatch.setenv("COLUMNS", "200")
    name = ctl.json(
        "bawaslu",
        *("report", "Cash handed out", "money_politics", "malin_deman"),
        *("--desa", "Lubuk Bento", "--tps", "TPS 05", "--severity", "high"),
    )["incident"]
    ctl.ok("desk_pilkada", "verify", name)
    ctl.ok(
        "desk_pilkada",
        *("decide", name, "Patrols doubled", "--forum", "Forkopimda"),
        *("--by", "desk_pilkada", "--rationale", "tension", "--days", "1"),
    )
    views = (
        ("desk_pilkada", ["board"], "Malin Deman / Lubuk Bento / TPS 05"),
        ("desk_pilkada", ["list"], "Malin Deman / Lubuk Bento / TPS 05"),
        ("desk_pilkada", ["show", name], "Malin Deman / Lubuk Bento / TPS 05"),
        ("desk_pilkada", ["decisions"], "Malin Deman / Lubuk Bento"),
        ("desk_pilkada", ["response-times", "--by", "kecamatan"], "Malin Deman"),
        ("inspektorat", ["audit", "as-of", "now"], "Malin Deman / Lubuk Bento / TPS 05"),
    )
    for agency, args, place in views:
        for lang in ("en", "id"):
            shown = ctl.ok(agency, "--lang", lang, *args)
            assert place in shown and "malin_deman" not in shown, (lang, args, shown)
    assert ctl.json("desk_pilkada", "list")[0]["location"]["kecamatan"] == "malin_deman"
    assert [d["kecamatan"] for d in ctl.json("desk_pilkada", "decisions")] == ["malin_deman"]
    by_kecamatan = ctl.json("desk_pilkada", "response-times", "--by", "kecamatan")
    assert [g["key"] for g in by_kecamatan] == ["malin_deman"]


def _page_token(table: str) -> str:
    found = re.search(r"--page-token (\S+)$", table, re.MULTILINE)
    assert found, table
    return found.group(1)


def test_a_list_cut_short_says_more_match_and_goes_on_from_its_token(
    ctl: Ctl, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``list --limit N`` with more incidents beyond N says so under the table, in both
    languages, with the token that shows the next ones; --json stays the incidents, the
    way on said on standard error."""
    monkeypatch.setenv("COLUMNS", "200")
    for n in range(5):
        ctl.ledger.report("kesbangpol", title=f"Gathering {n}")
    every = [i["name"] for i in ctl.json("polres", "list")]
    assert len(every) == 5

    first = ctl.ok("polres", "list", "--limit", "2")
    assert "2 incidents shown; more match." in first, first
    assert "a larger --limit (--limit 0 for all)" in first, first
    token = _page_token(first)
    second = ctl.ok("polres", "list", "--limit", "2", "--page-token", token)
    assert "Gathering 2" in second and "Gathering 3" in second, second
    assert "Gathering 1" not in second and "Gathering 4" not in second, second
    last = ctl.ok("polres", "list", "--limit", "2", "--page-token", _page_token(second))
    assert "Gathering 4" in last and "more match" not in last and "--page-token" not in last
    # As many as there are: nothing more to say.
    assert "more match" not in ctl.ok("polres", "list", "--limit", "5")
    assert "more match" not in ctl.ok("polres", "list")

    # On a narrow terminal too the token is one word to copy: the terminal wraps it, not
    # ledgerctl (it broke it over two lines, and the copied halves were no token).
    monkeypatch.setenv("COLUMNS", "40")
    narrow = ctl.ok("polres", "list", "--limit", "2")
    assert _page_token(narrow) == token, narrow
    monkeypatch.setenv("COLUMNS", "200")
    indonesian = ctl.ok("polres", "--lang", "id", "list", "--limit", "1")
    assert "1 kejadian ditampilkan; masih ada yang cocok." in indonesian, indonesian
    assert "--limit 0 untuk semua" in indonesian, indonesian
    # What a program reads stays the incidents; the token goes on there too, and the way
    # on is said on standard error, so that a script that pages can read it there.
    listed = ctl.json("polres", "list", "--limit", "2", "--page-token", token)
    assert [i["name"] for i in listed] == every[2:4]
    code, out, err = ctl.run("polres", "--json", "list", "--limit", "2")
    assert code == 0 and [i["name"] for i in json.loads(out)] == every[:2], (out, err)
    assert "2 incidents shown; more match." in err and _page_token(err) == token, err
    code, out, err = ctl.run("polres", "--json", "list", "--limit", "5")
    assert code == 0 and len(json.loads(out)) == 5 and err == "", (out, err)


def test_a_list_cut_short_across_pages_goes_on_right_after_the_last_one_shown(
    ctl: Ctl, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A --limit above the ledger's page size reads its last page only as far as the
    limit, so that the token goes on with the next incident, none skipped."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(incidents, "MAX_PAGE", 2)
    for n in range(5):
        ctl.ledger.report("kesbangpol", title=f"Gathering {n}")
    first = ctl.ok("polres", "list", "--limit", "3")
    assert "3 incidents shown; more match." in first, first
    rest = ctl.ok("polres", "list", "--page-token", _page_token(first))
    assert "Incidents (2)" in rest and "Gathering 3" in rest and "Gathering 4" in rest, rest


def test_audit_checkpoints_lists_each_with_what_checks_it(ctl: Ctl) -> None:
    """An auditor lists the signed checkpoints (the API had them, ledgerctl had no command),
    and gets each signature to check offline or keep with a witness."""
    assert "no checkpoint yet" in ctl.ok("inspektorat", "audit", "checkpoints")
    ctl.ledger.report("kesbangpol")
    made = ctl.ledger.server.checkpoints.create()
    (listed,) = ctl.json("inspektorat", "audit", "checkpoints")
    assert (listed["position"], listed["chain_head"], listed["events"]) == (
        made.position,
        made.head,
        made.events,
    )
    assert bytes.fromhex(listed["signature"]) == made.signature
    assert made.verify(ctl.ledger.server.checkpoints.public_key)
    table = ctl.ok("inspektorat", "audit", "checkpoints")
    assert made.head in table and made.key_id in table, table

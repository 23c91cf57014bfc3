"""Incident names people can type: the id, a 6+ character prefix as tables show, the full name."""

from __future__ import annotations

import json

import pytest

from services.ledger.domain.refcodes import check_character
from tests.ledgerctl_support import Ctl


def test_every_incident_argument_takes_the_id_a_prefix_or_the_full_name(ctl: Ctl) -> None:
    names = [
        ctl.json("kesbangpol", "report", f"Rally {n}", "crowd_gathering", "ipuh")["incident"]
        for n in range(3)
    ]
    first = names[0]
    bare = first.removeprefix("incidents/")
    assert ctl.json("polres", "show", bare[:6])["incident"]["name"] == first
    assert ctl.json("polres", "show", bare[:8].upper())["incident"]["name"] == first
    assert ctl.json("polres", "history", bare)[0]["incident"] == first
    assert "verified" in ctl.ok("desk_pilkada", "verify", bare[:8])
    assert ctl.json("desk_pilkada", "assign", bare[:7], "polres")["version"] == 3
    merged = ctl.json("desk_pilkada", "merge", names[1], names[2].removeprefix("incidents/")[:9])
    assert merged["incident"] == names[1]
    shown = ctl.json("polres", "show", names[1])["incident"]
    assert shown["merged_into"] == names[2]


def test_names_that_fit_no_incident_say_why_with_their_exit_code(ctl: Ctl) -> None:
    name = ctl.json("kesbangpol", "report", "Rally", "crowd_gathering", "ipuh")["incident"]
    bare = name.removeprefix("incidents/")
    code, _, err = ctl.run("polres", "show", bare[:5])
    assert code == 2 and "at least 6 characters" in err
    other = "0123456789abcdef"[("0123456789abcdef".index(bare[0]) + 1) % 16]
    # A prefix as tables show ids, that no incident's id starts with: not found, as an unknown
    # full id is (it was a usage error, exit code 2), by every command that takes an incident.
    for args in (
        ("show", other + bare[1:6]),
        ("show", other + bare[1:8]),
        ("verify", other + bare[1:8]),
    ):
        code, _, err = ctl.run("desk_pilkada", *args)
        assert code == 3 and "no incident's id starts with" in err, (args, err)
        assert "NOT_FOUND" in err and "Usage:" not in err, err
    code, _, err = ctl.run("polres", "--json", "show", other + bare[1:8])
    error = json.loads(err)["error"]
    assert (error["code"], error["reason"], error["exit_code"]) == (
        "NOT_FOUND",
        "INCIDENT_NOT_FOUND",
        3,
    ), error
    code, _, err = ctl.run("polres", "--lang", "id", "show", other + bare[1:8])
    assert code == 3 and "tidak ada id kejadian yang berawalan" in err, err
    taken = ctl.json("polres", "show", name)["incident"]["reference"]
    unknown = "MKM-" + ("0000" if taken[4:8] != "0000" else "1111") + "-0"
    unknown += check_character(unknown[4:8] + "0")
    # Well formed, but no incident has it: not found, as an unknown id is.
    for command in ("show", "verify"):
        code, _, err = ctl.run("desk_pilkada", command, unknown)
        assert code == 3 and "no incident has the reference code" in err, err
        # and what to do: a code heard over the phone may be wrong in two places
        assert "read it back to whoever gave it, or find the incident with ledgerctl list" in err
    code, _, err = ctl.run("polres", "--json", "show", unknown)
    error = json.loads(err)["error"]
    assert code == 3 and (error["code"], error["exit_code"]) == ("NOT_FOUND", 3), error
    mistyped = taken[:-1] + ("0" if taken[-1] != "0" else "1")
    code, _, err = ctl.run("polres", "show", mistyped)
    assert code == 2 and "mistyped" in err
    code, _, err = ctl.run("polres", "--json", "show", "rally")
    assert code == 2 and "not an incident" in json.loads(err)["error"]["message"]


def test_a_code_written_down_as_read_out_finds_its_incident_or_says_what_is_wrong(
    ctl: Ctl,
) -> None:
    name = ctl.json("kesbangpol", "report", "Rally", "crowd_gathering", "ipuh")["incident"]
    code = ctl.json("polres", "show", name)["incident"]["reference"]
    prefix, first, last = code.split("-")
    # Spaces around the hyphens, an en dash from a word processor, two spaces: as written down.
    for typed in (
        f"{prefix} - {first} - {last}",
        f"{prefix}\u2013{first}\u2013{last}",
        f"{prefix.lower()}  {first.lower()}  {last.lower()}",
    ):
        assert ctl.json("polres", "show", typed)["incident"]["name"] == name, typed
    # A character short: the message says what a code looks like.
    code_, _, err = ctl.run("polres", "show", code[:-1])
    assert code_ == 2 and "reference code (XXX-XXXX-XX" in err, err
    # A wrong check character, in Indonesian: said as typed, in Indonesian alone.
    wrong = code[:-1] + ("0" if code[-1] != "0" else "1")
    code_, _, err = ctl.run("polres", "--lang", "id", "show", wrong)
    assert code_ == 2, err
    assert f"'{wrong}' salah ketik" in err and "mistyped" not in err, err
    assert "bacakan ulang kode itu kepada yang memberikannya" in err, err
    assert "cari kejadiannya dengan ledgerctl list" in err, err
    code_, _, err = ctl.run("polres", "--json", "show", wrong)
    assert json.loads(err)["error"]["reason"] == "REFERENCE_MISTYPED", err


def test_tables_never_wrap_an_id(ctl: Ctl, monkeypatch: pytest.MonkeyPatch) -> None:
    names = [
        ctl.json(
            "kesbangpol",
            "report",
            "A long title that has to be folded in a narrow terminal",
            "crowd_gathering",
            "kota_mukomuko",
            "--desa",
            "Pasar Mukomuko",
        )["incident"]
        for _ in range(2)
    ]
    monkeypatch.setenv("COLUMNS", "60")
    for command in (("list",), ("list", "--status", "REPORTED")):
        out = ctl.ok("polres", *command)
        for name in names:
            assert name.removeprefix("incidents/")[:8] in out, (command, out)

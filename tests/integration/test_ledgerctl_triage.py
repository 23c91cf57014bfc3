"""Reference codes and bulk triage from the Python client and ledgerctl: show and list print
codes, every command takes one as an incident name, ``ledgerctl triage`` prints one outcome
per incident (and ``--json``), from arguments or a file."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest

from incidentledger_client import (
    IllegalTransition,
    InvalidArgument,
    LedgerClient,
    TriageItem,
    TriageOutcome,
    VersionConflict,
)
from incidentledger_client.cli import output
from services.ledger.domain.refcodes import check_character
from tests.ledgerctl_support import Ctl, backlog_line
from tests.support import Client


def client(ledger: Client, agency: str) -> LedgerClient:
    return LedgerClient(ledger.address, ledger.tokens[agency])


def test_the_client_finds_incidents_by_code_and_triages_them(popo_ledger: Client) -> None:
    with (
        client(popo_ledger, "kesbangpol") as reporter,
        client(popo_ledger, "desk_pilkada") as coordinator,
    ):
        names = [reporter.report(f"Laporan {n}", "hoax", "ipuh").incident for n in range(3)]
        code = reporter.get_incident(names[0]).reference
        assert reporter.get_incident(reference=code.lower()).name == names[0]
        wrong = code[:-1] + ("0" if code[-1] != "0" else "1")
        with pytest.raises(InvalidArgument) as caught:
            reporter.get_incident(reference=wrong)
        assert caught.value.reason == "REFERENCE_MISTYPED"
        results = coordinator.triage(
            [
                TriageItem(names[0], "verify", expected_version=1),
                TriageItem(names[1], "reject", reason="HOAX", comment="hoaks"),
                TriageItem(names[2], "verify", expected_version=3),
                TriageItem(names[1], "assign_lead", agency="polres"),
            ],
            request_id="pagi",
            chunk_size=2,  # two calls: pagi.1 and pagi.2
        )
        assert [r.outcome for r in results] == [
            TriageOutcome.RECORDED,
            TriageOutcome.RECORDED,
            TriageOutcome.REFUSED,
            TriageOutcome.REFUSED,
        ]
        assert isinstance(results[2].error, VersionConflict)
        assert isinstance(results[3].error, IllegalTransition)
        events = list(coordinator.incident_events(names[0]))
        assert events[-1].request_id == "pagi.1/1"
        again = coordinator.triage(
            [TriageItem(names[0], "verify", expected_version=1)], request_id="pagi.1"
        )
        assert again[0].outcome is TriageOutcome.DUPLICATE
        assert again[0].result == results[0].result


def test_ledgerctl_shows_codes_and_triages(ctl: Ctl, tmp_path: Path) -> None:
    names = [
        ctl.json("kesbangpol", "report", f"Spanduk {n}", "hoax", "ipuh")["incident"]
        for n in range(3)
    ]
    shown = ctl.json("kesbangpol", "show", names[0])
    code = shown["incident"]["reference"]
    assert code.startswith("MKM-")
    assert code in ctl.ok("kesbangpol", "show", names[0])
    assert code in ctl.ok("kesbangpol", "list")
    only = ctl.json("kesbangpol", "list", "--reference", code.lower())
    assert [i["name"] for i in only] == [names[0]]
    # A code names the incident in every command, as people type it.
    assert ctl.json("kesbangpol", "show", code.lower())["incident"]["name"] == names[0]
    # Triage from arguments (a code, an id with its version) and a file.
    listing = tmp_path / "incidents.txt"
    listing.write_text(f"# pagi\n{names[2].removeprefix('incidents/')[:8]}@5\n\n")
    code_out, out, _err = ctl.run(
        "desk_pilkada",
        "--json",
        "triage",
        "verify",
        code,
        f"{names[1]}@1",
        "--file",
        str(listing),
        "-m",
        "dicek",
        "--request-id",
        "triage-cli",
    )
    results = json.loads(out)
    assert [(r["incident"], r["outcome"]) for r in results] == [
        (names[0], "RECORDED"),
        (names[1], "RECORDED"),
        (names[2], "REFUSED"),
    ]
    codes = [ctl.json("kesbangpol", "show", n)["incident"]["reference"] for n in names]
    # Each incident's code, also where it was named by its id or a prefix.
    assert [r["reference"] for r in results] == codes
    assert results[2]["error"]["reason"] == "VERSION_CONFLICT"
    assert code_out == 4, "one incident was not recorded"
    # Sent again: recorded before; the table names each outcome.
    code_out, out, _err = ctl.run(
        "desk_pilkada",
        "triage",
        "verify",
        code,
        f"{names[1]}@1",
        "--file",
        str(listing),
        "-m",
        "dicek",
        "--request-id",
        "triage-cli",
    )
    assert out.count("recorded before") == 2 and "refused" in out
    assert all(c in out for c in codes), out
    # Assign a lead to the two verified ones: every one recorded, exit code 0.
    assigned = ctl.json("desk_pilkada", "triage", "assign-lead", "--lead", "polres", code, names[1])
    assert [r["outcome"] for r in assigned] == ["RECORDED", "RECORDED"]
    assert [r["reference"] for r in assigned] == codes[:2]
    assert ctl.json("kesbangpol", "show", code)["incident"]["lead_agency"] == "polres"


def test_ledgerctl_shows_a_merged_incidents_survivor_by_its_code(ctl: Ctl) -> None:
    duplicate, survivor = (
        ctl.json("kesbangpol", "report", title, "hoax", "ipuh")["incident"]
        for title in ("Dobel", "Asli")
    )
    codes = [
        ctl.json("kesbangpol", "show", n)["incident"]["reference"] for n in (duplicate, survivor)
    ]
    ctl.ok("desk_pilkada", "merge", codes[0], codes[1])  # both named by their codes
    shown = ctl.ok("kesbangpol", "show", codes[0])
    assert f"merged into {survivor} ({codes[1]})" in shown
    assert codes[0] in shown, "a merged incident keeps its code"


def test_ledgerctl_triage_refuses_what_it_cannot_send(ctl: Ctl) -> None:
    name = ctl.json("kesbangpol", "report", "Spanduk", "hoax", "ipuh")["incident"]
    for args, hint in (
        (("triage", "verify"), "INCIDENT"),
        (("triage", "reject", name), "--reason"),
        (("triage", "assign-lead", name), "--lead"),
        (("triage", "approve", name), "ACTION"),
        # A file that is not there is said in words, not as Python's "[Errno 2] ...".
        (("triage", "verify", "-f", "/nonexistent/list.txt"), "cannot read /nonexistent/list.txt"),
    ):
        code, _out, err = ctl.run("desk_pilkada", *args)
        assert code == 2 and hint in err and "Errno" not in err, (args, err)


def test_ledgerctl_triage_sends_every_item_that_names_an_incident_and_says_which_do_not(
    ctl: Ctl, tmp_path: Path
) -> None:
    names = [
        ctl.json("kesbangpol", "report", f"Baliho {n}", "hoax", "ipuh")["incident"]
        for n in range(2)
    ]
    code = ctl.json("kesbangpol", "show", names[0])["incident"]["reference"]
    mistyped = code[:-1] + ("0" if code[-1] != "0" else "1")
    unknown = "MKM-" + ("0000" if code[4:8] != "0000" else "1111") + "-0"
    unknown += check_character(unknown[4:8] + "0")
    bare = names[1].removeprefix("incidents/")
    taken = {n.removeprefix("incidents/")[0] for n in names}
    nowhere = next(c for c in "0123456789abcdef" if c not in taken) + "52b0d"
    listing = tmp_path / "pagi.txt"
    listing.write_text(f"# pagi\n{mistyped}\n\n{bare[:8]}\n{bare[:8]}@x\n")
    exit_code, out, _err = ctl.run(
        "desk_pilkada", "--json", "triage", "verify", code, unknown, nowhere, "-f", str(listing)
    )
    results = json.loads(out)
    assert (
        [(r["input"], r["line"], r["outcome"]) for r in results]
        == [
            (code, None, "RECORDED"),
            (unknown, None, "REFUSED"),
            (nowhere, None, "REFUSED"),  # no incident's id starts with it: not found
            (mistyped, 2, "INVALID"),
            (bare[:8], 4, "RECORDED"),
            (f"{bare[:8]}@x", 5, "INVALID"),
        ]
    )
    assert [r["incident"] for r in results] == [names[0], "", "", "", names[1], ""]
    assert results[1]["error"]["code"] == results[2]["error"]["code"] == "NOT_FOUND"
    assert results[3]["error"]["reason"] == "REFERENCE_MISTYPED"
    assert mistyped in results[3]["error"]["message"]
    assert exit_code == 4, "not every item was recorded"
    for name in names:
        assert ctl.json("kesbangpol", "show", name)["incident"]["status"] == "VERIFIED"
    # The table names each item that was not sent as typed, with its line in the file.
    exit_code, out, _err = ctl.run("desk_pilkada", "triage", "verify", "-f", str(listing))
    assert exit_code == 4
    row = next(line for line in out.splitlines() if mistyped in line)
    assert "invalid" in row and "line 2:" in row and "mistyped" in row, out


def test_ledgerctl_triage_shows_an_incident_named_by_its_id_with_its_own_code(ctl: Ctl) -> None:
    """The start of an id as tables show it (8 characters) can look like a code: ``aad7bd35``
    was shown with the code ``AA-D7BD-35``, which no incident has; it is the incident's own."""
    for n in range(200):  # ids are random: about one in seven starts with two letters
        name = ctl.json("kesbangpol", "report", f"Spanduk {n}", "hoax", "ipuh")["incident"]
        short = name.removeprefix("incidents/")[:8]
        if short[:2].isalpha():
            break
    else:
        pytest.fail("no id started with two letters")
    code = ctl.json("kesbangpol", "show", name)["incident"]["reference"]
    exit_code, out, _err = ctl.run("desk_pilkada", "--json", "triage", "verify", short)
    assert exit_code == 0, out
    (result,) = json.loads(out)
    assert (result["incident"], result["reference"]) == (name, code), result
    exit_code, out, _err = ctl.run("desk_pilkada", "triage", "verify", short)
    assert code in out, out


def test_ledgerctl_triage_reads_a_list_saved_by_a_windows_editor(ctl: Ctl, tmp_path: Path) -> None:
    # Notepad's byte order mark and CRLF ends: the first incident is read as the others (it
    # was "not an incident", with an invisible character first); a comment in the editor's
    # own code page is refused as not UTF-8 (it was a traceback).
    codes = [
        ctl.json("kesbangpol", "report", f"Baliho {n}", "hoax", "ipuh")["incident"]
        for n in range(2)
    ]
    codes = [ctl.json("kesbangpol", "show", name)["incident"]["reference"] for name in codes]
    listing = tmp_path / "pagi.txt"
    listing.write_bytes(("\ufeff" + "\r\n".join(codes) + "\r\n").encode("utf-8"))
    results = ctl.json("desk_pilkada", "triage", "verify", "-f", str(listing))
    assert [(r["reference"], r["outcome"]) for r in results] == [(c, "RECORDED") for c in codes]
    listing.write_bytes(f"{codes[0]} # dicek kafé\r\n".encode("cp1252"))
    exit_code, _out, err = ctl.run("desk_pilkada", "triage", "verify", "-f", str(listing))
    assert exit_code == 2 and "--file" in err and "not UTF-8 text" in err, err


def test_a_code_of_another_prefix_or_with_a_letter_no_code_has_holds_back_only_its_item(
    ctl: Ctl,
) -> None:
    # Misheard on the phone: N for M in the prefix, a U (no code has one). Each is that item's
    # fault, said as typed; the other items are sent (before, the whole triage ended on the
    # ledger's refusal of the first such code, with nothing sent).
    name = ctl.json("kesbangpol", "report", "Baliho", "hoax", "ipuh")["incident"]
    code = ctl.json("kesbangpol", "show", name)["incident"]["reference"]
    other_prefix = "MKN" + code[3:]
    with_u = code[:4] + "U" + code[5:]
    exit_code, out, err = ctl.run(
        "desk_pilkada", "--json", "triage", "verify", other_prefix, with_u, code
    )
    assert exit_code == 4, (out, err)
    results = json.loads(out)
    assert [(r["input"], r["outcome"]) for r in results] == [
        (other_prefix, "INVALID"),
        (with_u, "INVALID"),
        (code, "RECORDED"),
    ]
    assert "is not a reference code of this ledger" in results[0]["error"]["message"]
    exit_code, _out, err = ctl.run("polres", "--lang", "id", "show", with_u)
    assert exit_code == 2 and f"'{with_u}' bukan kode referensi buku besar ini" in err, err


def test_an_interrupted_triage_names_the_request_id_that_tells_what_became_of_each(
    ctl: Ctl, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C after the ledger recorded the triage, before its answer was shown: ledgerctl said
    # nothing at all (exit 130). Now it names the call's request id; the same command with it
    # answers each item as recorded before, nothing recorded twice.
    names = [
        ctl.json("kesbangpol", "report", f"Baliho {n}", "hoax", "ipuh")["incident"]
        for n in range(3)
    ]
    original = LedgerClient.triage

    def interrupted(self: LedgerClient, *args: Any, **kwargs: Any) -> Any:
        original(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(LedgerClient, "triage", interrupted)
    exit_code, _out, err = ctl.run("desk_pilkada", "triage", "verify", *names)
    assert exit_code == 130, err
    found = re.search(r"--request-id (\S+):", err)
    assert found and "3 incidents may have been triaged" in err, err
    monkeypatch.undo()
    results = ctl.json("desk_pilkada", "triage", "verify", *names, "--request-id", found[1])
    assert [r["outcome"] for r in results] == ["DUPLICATE"] * 3, results

    # Interrupted while the answers are shown (a long table): the same.
    def no_table(*args: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(output, "triage_table", no_table)
    exit_code, _out, err = ctl.run("desk_pilkada", "triage", "assign-lead", *names, "--lead", "kpu")
    assert exit_code == 130 and "--request-id" in err, err


def test_ledgerctl_triage_reads_the_codes_file_ingest_writes(ctl: Ctl, tmp_path: Path) -> None:
    """A field backlog ingested with --codes, then triaged from that file: the desk verifies
    what came in without copying codes by hand. The file saved again by a spreadsheet in an
    Indonesian locale (``;`` between columns, a title holding ``#`` and ``,``) reads the
    same; before, every line of it was an incident name, the header first."""
    backlog = tmp_path / "backlog.jsonl"
    lines = [backlog_line(n, title=f"Laporan #{n}, pasar") for n in range(3)]
    backlog.write_text("\n".join(lines) + "\n")
    codes = tmp_path / "codes.csv"
    ctl.ok("bawaslu", "ingest", str(backlog), "--codes", str(codes))
    with codes.open(encoding="utf-8", newline="") as file:
        written = list(csv.DictReader(file))
    results = ctl.json("desk_pilkada", "triage", "verify", "-f", str(codes))
    assert [(r["reference"], r["outcome"]) for r in results] == [
        (w["reference"], "RECORDED") for w in written
    ]
    # Each row sent by its code (its name sent the command to list the whole ledger for
    # the codes to show: 15 s for 200 rows); a row without a code, by its incident.
    assert [r["input"] for r in results] == [w["reference"] for w in written]
    with codes.open(encoding="utf-8", newline="") as file:
        table = list(csv.reader(file))
    column = table[0].index("reference")
    table[1][column] = ""
    codeless = tmp_path / "codeless.csv"
    with codeless.open("w", encoding="utf-8", newline="") as file:
        csv.writer(file).writerows(table)
    code, out, _err = ctl.run("desk_pilkada", "--json", "triage", "verify", "-f", str(codeless))
    results = json.loads(out)
    assert code == 4, "refused items"
    assert [r["input"] for r in results] == [
        written[0]["incident"],
        *(w["reference"] for w in written[1:]),
    ]
    assert {r["outcome"] for r in results} == {"REFUSED"}  # verified already, each of them
    # Saved by a spreadsheet: a byte order mark, ";", CRLF, the incident column left out.
    saved = tmp_path / "kode.csv"
    rows = ["baris;kode;reference;judul"] + [
        f'{w["line"]};x;{w["reference"]};"{w["title"]}"' for w in written
    ]
    saved.write_bytes(("\ufeff" + "\r\n".join(rows) + "\r\n").encode("utf-8"))
    results = ctl.json(
        "desk_pilkada", "triage", "assign-lead", "--lead", "polres", "-f", str(saved)
    )
    assert [(r["reference"], r["outcome"]) for r in results] == [
        (w["reference"], "RECORDED") for w in written
    ]


def test_ledgerctl_lists_the_incidents_without_a_lead(ctl: Ctl) -> None:
    """What the desk still has to hand to an agency: ``list --no-lead`` (the filter
    ``lead_agency = ""``); before, a lead could be asked for but not its absence."""
    names = [
        ctl.json("kesbangpol", "report", f"Spanduk {n}", "hoax", "ipuh")["incident"]
        for n in range(3)
    ]
    ctl.ok("desk_pilkada", "triage", "verify", names[1])
    ctl.ok("desk_pilkada", "triage", "assign-lead", "--lead", "polres", names[1])
    listed = ctl.json("desk_pilkada", "list", "--no-lead", "--kecamatan", "ipuh")
    assert {i["name"] for i in listed} >= {names[0], names[2]}
    assert names[1] not in {i["name"] for i in listed}
    assert all(not i.get("lead_agency") for i in listed), listed
    code, _out, err = ctl.run("desk_pilkada", "list", "--no-lead", "--lead", "polres")
    assert code == 2 and "exclude each other" in err, err

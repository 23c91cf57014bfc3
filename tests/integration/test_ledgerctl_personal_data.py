"""ledgerctl's personal data commands (``report --reporter``, ``pii ...``) against a real
ledger, in English and Indonesian (docs/personal-data.md)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from incidentledger_client.i18n import format_time, using
from tests.ledgerctl_support import Ctl

NIK = "1706014107900003"


def test_report_read_find_hold_erase_through_ledgerctl(ctl: Ctl) -> None:
    reported = ctl.json(
        "kesbangpol",
        "report",
        "Amplop dibagikan",
        "money_politics",
        "ipuh",
        "--reporter",
        f"Siti Rahma|0812-7345-6690|{NIK}|Jl. Kenari 7",
        "--witness",
        "Budi Saksi|081298765432",
    )
    name = reported["incident"]
    read = ctl.json("bawaslu", "pii", "read", name, "--purpose", "verify the report")
    people = {s["role"]: s["person"] for s in read["subjects"]}
    assert people["reporter"]["phone"] == "+6281273456690"
    assert people["witness"]["name"] == "Budi Saksi"
    table = ctl.ok("bawaslu", "pii", "read", name, "-p", "second look")
    assert "Siti Rahma" in table and "recorded" in table
    found = ctl.json("desk_pilkada", "pii", "find", "--nik", NIK, "-p", "request 5/2024")
    assert [s["person"]["name"] for s in found] == ["Siti Rahma"]
    assert len(found[0]["accesses"]) == 3  # two reads and this search
    accesses = ctl.ok("inspektorat", "pii", "accesses", name)
    assert "verify the report" in accesses and "bawaslu" in accesses
    # Times in the regency's zone and the run's language, as every other table has them.
    first = datetime.fromisoformat(found[0]["accesses"][0]["access_time"])
    jakarta = ZoneInfo("Asia/Jakarta")
    assert format_time(first, jakarta) in accesses, accesses
    with using("id"):
        in_indonesian = format_time(first, jakarta)
    assert in_indonesian in ctl.ok("inspektorat", "--lang", "id", "pii", "accesses", name)
    nobody = ctl.ok("desk_pilkada", "pii", "find", "--phone", "081200000001", "-p", "request 6")
    assert "no report names this person" in nobody and "│" not in nobody, nobody
    searched = ctl.ok("desk_pilkada", "pii", "find", "--nik", NIK, "-p", "request 5/2024")
    assert format_time(first, jakarta) in searched, searched
    # Each read with the incident it read (a person named in two reports: one list).
    reads = searched[searched.index("Who read their data") :]
    assert "incident" in reads and name.removeprefix("incidents/")[:8] in reads, reads
    # The people named, without their data: each one's state and how many reads took it
    # (this call never carries the data, so it cannot say who was not read).
    named = accesses[accesses.index("People named") :]
    assert "not shown to your agency" not in named, named
    rows = [line.split("│") for line in named.splitlines() if "│" in line]
    subjects = {s["role"]: s["subject_id"] for s in read["subjects"]}
    assert sorted(tuple(cell.strip() for cell in r[1:5]) for r in rows) == sorted(
        [
            (subjects["reporter"][:8], "reporter", "present", "3"),
            # the search by NIK found only the reporter
            (subjects["witness"][:8], "witness", "present", "2"),
        ]
    ), named
    ctl.ok("kejari", "pii", "hold", name, "-m", "Gakkumdu 3/2024")
    code, _out, err = ctl.run(
        "desk_pilkada", "pii", "erase", name, "--all", "--legal-basis", "request 5"
    )
    assert code != 0 and "LEGAL_HOLD" in err
    ctl.ok("kejari", "pii", "release", name, "-m", "case closed")
    # Whose data is said, never assumed: an erasure cannot be undone.
    code, _out, err = ctl.run("desk_pilkada", "pii", "erase", name, "--legal-basis", "request 5")
    assert code == 2 and "--subject" in err and "--all" in err, err
    code, _out, err = ctl.run(
        "desk_pilkada", "pii", "erase", name, "--subject", "0000", "--legal-basis", "request 5"
    )
    assert code == 2 and subjects["witness"][:8] in err, err  # the people it names, listed
    erased = ctl.ok(
        "desk_pilkada", "pii", "erase", name, "--subject", "reporter", "--legal-basis", "request 5"
    )
    # Whose data is gone, said (it named the incident alone).
    assert f"erased the data of: reporter {subjects['reporter'][:8]}" in erased, erased
    by_role = {
        s["role"]: s["state"] for s in ctl.json("inspektorat", "pii", "accesses", name)["subjects"]
    }
    assert by_role == {"reporter": "ERASED", "witness": "PRESENT"}
    code, _out, err = ctl.run(
        "desk_pilkada", "pii", "erase", name, "--subject", "reporter", "--legal-basis", "again"
    )
    assert code != 0 and "1 other person it names is not" in err, err
    witness = subjects["witness"][:8]  # as the tables show it
    answer = ctl.json(
        "desk_pilkada", "pii", "erase", name, "--subject", witness, "--legal-basis", "req 5/2024"
    )
    assert [s["subject_id"] for s in answer["erased"]] == [subjects["witness"]]
    record = ctl.json("inspektorat", "pii", "accesses", name)
    assert {s["state"] for s in record["subjects"]} == {"ERASED"}
    # Who erased whose data, and why: a person's question the record now answers.
    assert [(e["agency"], e["legal_basis"], e["subjects"]) for e in record["erasures"]] == [
        ("desk_pilkada", "request 5", [subjects["reporter"]]),
        ("desk_pilkada", "req 5/2024", [subjects["witness"]]),
    ]
    table = ctl.ok("inspektorat", "pii", "accesses", name)
    erasures = table[table.index("Erasures") :]
    assert "req 5/2024" in erasures and witness in erasures, erasures
    indonesian = ctl.ok("inspektorat", "--lang", "id", "pii", "accesses", name)
    assert "dihapus" in indonesian and "Pembacaan data pribadi" in indonesian
    assert "Penghapusan" in indonesian, indonesian


def test_anonymity_without_a_reporter_is_refused_not_dropped(ctl: Ctl) -> None:
    code, _out, err = ctl.run(
        "kesbangpol", "report", "Amplop", "money_politics", "ipuh", "--anonymous"
    )
    assert code == 2 and "anonymous" in err, err
    assert ctl.json("kesbangpol", "list") == []  # nothing recorded


def test_an_agency_without_the_right_reads_nothing(ctl: Ctl) -> None:
    name = ctl.json(
        "kesbangpol", "report", "Amplop", "money_politics", "ipuh", "--reporter", "Siti|||"
    )["incident"]
    code, out, err = ctl.run("kpu", "pii", "read", name, "-p", "curious")
    assert code != 0 and "Siti" not in out + err


def test_show_names_the_people_without_their_data_in_both_languages(ctl: Ctl) -> None:
    name = ctl.json(
        "kesbangpol",
        "report",
        "Amplop dibagikan",
        "money_politics",
        "ipuh",
        "--reporter",
        f"Siti Rahma|0812-7345-6690|{NIK}|Jl. Kenari 7",
        "--witness",
        "Budi Saksi|081298765432",
        "--witness",
        "Ani Saksi",
    )["incident"]

    def show(language: str) -> str:
        shown = ctl.ok("kpu", "--lang", language, "show", name)
        for plain in ("Siti", "Budi", "Ani Saksi", NIK, "7345", "98765432", "Kenari"):
            assert plain not in shown, plain
        return shown

    assert "people named: reporter: present, 2 witnesses: present" in show("en")
    assert "orang yang disebut: pelapor: ada, 2 saksi: ada" in show("id")
    # The timeline names the sealed people by role, never their ciphertext.
    assert "sealed: reporter, witness, witness" in show("en")
    assert "ciphertext" not in show("en")
    ctl.ok("bawaslu", "pii", "hold", name, "-m", "Gakkumdu 3/2024")
    assert "legal hold by bawaslu" in show("en")
    assert "penahanan hukum oleh bawaslu" in show("id")
    ctl.ok("bawaslu", "pii", "release", name, "-m", "case closed")
    ctl.ok("desk_pilkada", "pii", "erase", name, "--all", "--legal-basis", "request 5/2024")
    english = show("en")
    assert "people named: reporter: erased, 2 witnesses: erased" in english
    assert "legal hold" not in english
    assert "orang yang disebut: pelapor: dihapus, 2 saksi: dihapus" in show("id")
    shown = ctl.json("kpu", "show", name)["incident"]
    assert [(s["role"], s["state"]) for s in shown["data_subjects"]] == [
        ("reporter", "ERASED"),
        ("witness", "ERASED"),
        ("witness", "ERASED"),
    ]

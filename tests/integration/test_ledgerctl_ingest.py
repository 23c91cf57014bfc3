"""ledgerctl ingest FILE against a real ledger (in-memory store): the documented example
file, a backlog sent again after a crash, refused reports, --json per report, unreadable
lines refused before anything is sent."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from incidentledger_client import LedgerClient, Unavailable
from incidentledger_client.cli.commands.intake import CODES_SHOWN
from tests.ledgerctl_support import Ctl, backlog_line

#: A reference code as ledgerctl prints it (MKM-7QK3-9V).
REFERENCE = re.compile(r"[A-Z]{3}-[0-9A-Z]{4}-[0-9A-Z]{2}")
EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "field-backlog.jsonl"


def recorded(ctl: Ctl) -> int:
    return len(ctl.ledger.server.ledger.recorder.select_notifications(1, 100_000))


def test_the_example_backlog_is_recorded_once_however_often_it_is_sent(
    ctl: Ctl, tmp_path: Path
) -> None:
    backlog = tmp_path / "backlog.jsonl"
    shutil.copy(EXAMPLE, backlog)
    first = ctl.ok("bawaslu", "ingest", str(backlog))
    assert "3 of 3" in first and "recorded now" in first
    stored = recorded(ctl)
    again = ctl.ok("bawaslu", "ingest", str(backlog))
    assert "recorded before" in again and "(0 recorded now)" in again
    assert recorded(ctl) == stored
    # Each report's reference code, to read back to the people who made the reports: on the
    # report's line of the table, when recorded now and when recorded before.
    codes = {
        item["device_report_id"]: item["result"]["reference"]
        for item in map(
            json.loads, ctl.ok("bawaslu", "--json", "ingest", str(backlog)).split("\n")[:-1]
        )
    }
    assert len(codes) == 3 and all(codes.values()), codes
    for shown, outcome in ((first, "recorded now"), (again, "recorded before")):
        assert "Reference codes" in shown, shown
        for report_id, code in codes.items():
            row = next((r for r in shown.splitlines() if report_id in r and code in r), None)
            assert row is not None and outcome in row, (report_id, code, shown)
        assert "more not shown" not in shown, shown
    # show says when it happened, beside when it was recorded, and the phone's own record
    # time, each in the regency's zone.
    name = next(
        i["name"]
        for i in ctl.json("bawaslu", "list", "--kecamatan", "malin_deman")
        if i["title"] == "Kotak suara TPS 05 dibawa tanpa pengawalan"
    )
    shown = ctl.ok("bawaslu", "show", name)
    assert "occurred 2026-11-27 08:05:00 WIB  recorded " in shown, shown
    flat = " ".join(shown.split())  # as the table wraps it, whatever the width
    assert "device_record_time=2026-11-27 08:12:40 WIB" in flat, shown
    # Sent from a file on another machine: no clock skew, which was that machine's.
    assert "device_clock_skew_ms" not in flat, shown
    assert "+00:00" not in shown, shown


def test_json_gives_one_line_per_report_and_refused_ones_exit_1(ctl: Ctl, tmp_path: Path) -> None:
    backlog = tmp_path / "backlog.jsonl"
    lines = [backlog_line(n) for n in range(7)]
    lines[2] = backlog_line(2, category="picnic")
    backlog.write_text("\n".join(lines[:4]) + "\n\n" + "\n".join(lines[4:]) + "\n")
    code, out, _err = ctl.run("bawaslu", "--json", "ingest", str(backlog), "--chunk-size", "3")
    assert code == 1, "a refused report"
    items = [json.loads(text) for text in out.splitlines()]
    assert [i["line"] for i in items] == [1, 2, 3, 4, 6, 7, 8], "the blank line 5 skipped"
    assert [i["outcome"] for i in items] == ["CREATED"] * 2 + ["INVALID"] + ["CREATED"] * 4
    assert items[2]["error"]["metadata"]["field"] == "category"
    assert items[0]["result"]["incident"].startswith("incidents/")
    # Sent again (a crash after the first chunk, say): nothing recorded twice.
    code, out, _err = ctl.run("bawaslu", "--json", "ingest", str(backlog))
    outcomes = [json.loads(text)["outcome"] for text in out.splitlines()]
    assert outcomes == ["DUPLICATE"] * 2 + ["INVALID"] + ["DUPLICATE"] * 4
    code, out, _err = ctl.run("bawaslu", "ingest", str(backlog))
    assert code == 1
    assert "category" in out, "the refused report and why"


def test_a_backlog_saved_by_a_windows_editor_is_read_as_written(ctl: Ctl, tmp_path: Path) -> None:
    # Notepad and friends write a byte order mark first, CRLF line ends and blank lines at the
    # end: every report is read, the first one too (the mark made its line "not JSON").
    backlog = tmp_path / "backlog.jsonl"
    lines = [backlog_line(n) for n in range(3)]
    backlog.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
    out = ctl.ok("bawaslu", "ingest", str(backlog))
    assert "3 of 3 reports are in the ledger (3 recorded now)" in out, out


def test_a_refused_report_says_which_value_is_wrong_and_the_code_meant(
    ctl: Ctl, tmp_path: Path
) -> None:
    # What an officer types by hand on a device: the kecamatan's name, a category misspelt,
    # the severity in Indonesian, an id sent before with other content. The table says
    # which value and the code meant (the ledger's general sentence, "The value of category is
    # not acceptable.", named neither), in the run's language.
    backlog = tmp_path / "backlog.jsonl"
    first = backlog_line(0)
    changed = json.loads(first) | {"title": "Laporan 0, diubah"}
    sent = tmp_path / "sent.jsonl"  # an earlier run (in one file, both are refused at once)
    sent.write_text(first + "\n")
    ctl.ok("bawaslu", "ingest", str(sent))
    lines = [
        backlog_line(1, location={"kecamatan": "Air Rami"}),
        backlog_line(2, category="logistic_failure"),
        backlog_line(3, severity="sedang"),
        backlog_line(5, location={"kecamatan": "air_rami", "desa": "Air Ramy"}),
        json.dumps(changed),
    ]
    backlog.write_text("\n".join(lines) + "\n")
    code, out, _err = ctl.run("bawaslu", "ingest", str(backlog))
    assert code == 1, out
    flat = " ".join(out.split())
    assert "unknown kecamatan 'Air Rami' (did you mean 'air_rami'?)" in flat, out
    assert "unknown category 'logistic_failure' (did you mean 'logistics_failure'?)" in flat
    assert "unknown severity 'sedang' (did you mean 'medium'?)" in flat, out
    assert "unknown desa 'Air Ramy' (did you mean 'Air Rami'?)" in flat, out
    # The report recorded first is named by its code, to be corrected: a resend cannot.
    code, answers, _err = ctl.run("bawaslu", "--json", "ingest", str(backlog))
    conflict = json.loads(answers.splitlines()[-1])
    reference = conflict["error"]["metadata"]["reference"]
    assert REFERENCE.fullmatch(reference), conflict
    assert f"in the ledger ({reference}) with other content" in flat, out
    assert f"(ledgerctl correct {reference} ...)" in flat, out
    code, out, _err = ctl.run("bawaslu", "--lang", "id", "ingest", str(backlog))
    flat = " ".join(out.split())
    assert "kategori 'logistic_failure' tidak dikenal (maksud Anda 'logistics_failure'?)" in flat
    assert f"sudah ada di buku besar ({reference}) dengan isi lain" in flat, out


def test_the_counts_of_a_large_backlog_group_their_thousands_in_the_run_s_language(
    ctl: Ctl, tmp_path: Path
) -> None:
    backlog = tmp_path / "backlog.jsonl"
    backlog.write_text("".join(backlog_line(n) + "\n" for n in range(1000)))
    out = ctl.ok("bawaslu", "--lang", "id", "ingest", str(backlog))
    assert "1.000 dari 1.000 laporan ada di buku besar (1.000 tercatat sekarang)." in out, out
    assert "│ 1.000   │" in out, "the outcomes' table"
    out = ctl.ok("bawaslu", "ingest", str(backlog))
    assert "1,000 of 1,000 reports are in the ledger (0 recorded now)." in out, out


def test_a_connection_lost_during_the_backlog_says_what_was_recorded_and_to_send_again(
    ctl: Ctl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The signal goes after two chunks (the client's retries spent): their reports are in the
    # ledger, and the officer gets their codes and is told to run it again, not only "cannot
    # reach the ledger".
    original = LedgerClient.iter_ingest_reports

    def lost_after_two_chunks(self: LedgerClient, *args: Any, **kwargs: Any) -> Any:
        for n, result in enumerate(original(self, *args, **kwargs)):
            if n == 20:
                raise Unavailable("UNAVAILABLE", "", "failed to connect to all addresses")
            yield result

    monkeypatch.setattr(LedgerClient, "iter_ingest_reports", lost_after_two_chunks)
    backlog = tmp_path / "backlog.jsonl"
    backlog.write_text("".join(backlog_line(n) + "\n" for n in range(50)))
    codes = tmp_path / "codes.csv"
    args = ("ingest", str(backlog), "--chunk-size", "10", "--codes", str(codes))
    code, out, err = ctl.run("bawaslu", *args)
    assert code == 6, (out, err)
    assert "recorded now │ 20" in out, out
    assert "The ledger answered 20 of 50 reports before this error." in err, err
    assert "Running the same command again is safe" in err, err
    assert len(codes.read_text().splitlines()) == 21, "a header, then each report recorded"
    monkeypatch.undo()
    # Sent again: every report in the ledger, once (the chunk on its way may have been
    # recorded by the first run).
    out = ctl.ok("bawaslu", *args)
    assert "50 of 50 reports are in the ledger" in out, out
    assert len(ctl.json("bawaslu", "list", "--kecamatan", "air_rami")) == 50
    # Refused outright (an auditor's token): nothing was sent, the error alone says it.
    code, _out, err = ctl.run("inspektorat", *args)
    assert code == 5 and "READ_ONLY_ROLE" in err and "answered" not in err, err


def test_an_empty_backlog_says_so(ctl: Ctl, tmp_path: Path) -> None:
    # An empty export, or the wrong file: said, not an empty table and "0 of 0 ... in the
    # ledger", which reads as if a sync had happened.
    backlog = tmp_path / "backlog.jsonl"
    backlog.write_text("\r\n\r\n")
    out = ctl.ok("bawaslu", "ingest", str(backlog))
    assert out.strip() == "backlog.jsonl holds no report: nothing was sent.", out


def test_an_unreadable_line_refuses_the_file_before_anything_is_sent(
    ctl: Ctl, tmp_path: Path
) -> None:
    backlog = tmp_path / "backlog.jsonl"
    backlog.write_text(
        backlog_line(0) + "\n" + backlog_line(1, device_record_time="2026-11-27 09:00") + "\n"
    )
    code, _out, err = ctl.run("bawaslu", "ingest", str(backlog))
    assert code == 2
    assert "line 2" in err and "device_record_time" in err
    backlog.write_text(backlog_line(0) + "\n{not json\n")
    code, _out, err = ctl.run("bawaslu", "ingest", str(backlog))
    assert code == 2 and "line 2: not JSON (nothing was sent)" in err, err
    assert "--skip-unreadable sends the 1 line that can be read" in err, err
    backlog.write_text(backlog_line(0, locaton={"kecamatan": "ipuh"}) + "\n")
    code, _out, err = ctl.run("bawaslu", "ingest", str(backlog))
    assert code == 2 and "locaton" in err
    # Every unreadable line at once, so that they are all fixed before the next try.
    lines = [backlog_line(n) for n in range(30)]
    bad = {3: "title", 9: "device_record_time", 27: "occur_time"}
    for n in bad:
        lines[n - 1] = backlog_line(n, **{bad[n]: "2026-11-27 09:00"}) if n != 3 else "{}"
    backlog.write_text("\n".join(lines) + "\n")
    code, _out, err = ctl.run("bawaslu", "ingest", str(backlog))
    assert code == 2 and "3 lines cannot be read, nothing was sent" in err, err
    assert "line 3: the line" not in err and "line 3: device_report_id: missing" in err, err
    assert "line 9: device_record_time" in err and "line 27: occur_time" in err, err
    assert recorded(ctl) == 0
    # A phone that died while writing: the lines that can be read are sent when asked, the
    # others named (again after the table), and the exit code says not all went.
    code, out, err = ctl.run("bawaslu", "ingest", "--skip-unreadable", str(backlog))
    assert code == 1, (out, err)
    assert err.count("3 lines cannot be read, not sent; send the file again once fixed") == 2, err
    assert "27 of 27 reports are in the ledger (27 recorded now)" in out, out
    code, out, _err = ctl.run("bawaslu", "--json", "ingest", "--skip-unreadable", str(backlog))
    items = [json.loads(text) for text in out.splitlines()]
    unreadable = [i for i in items if i["outcome"] == "UNREADABLE"]
    assert [i["line"] for i in unreadable] == [3, 9, 27], unreadable
    assert unreadable[0]["error"] == {"field": "device_report_id", "problem": "missing"}
    assert sum(i["outcome"] == "DUPLICATE" for i in items) == 27, "sent again: recorded before"
    assert code == 1


def test_a_long_backlog_shows_the_first_codes_and_writes_them_all_to_a_file(
    ctl: Ctl, tmp_path: Path
) -> None:
    backlog = tmp_path / "backlog.jsonl"
    lines = [backlog_line(n) for n in range(CODES_SHOWN + 5)]
    lines[1] = backlog_line(1, category="picnic")  # refused: no code, not in the file
    backlog.write_text("\n".join(lines) + "\n")
    code, out, _err = ctl.run("bawaslu", "ingest", str(backlog))
    assert code == 1, out
    ids = [json.loads(text)["device_report_id"] for text in lines]
    table = out.split("Reference codes")[1].split("more not shown")[0]
    rows = [r for r in table.splitlines() if any(i in r for i in ids)]
    assert len(rows) == CODES_SHOWN, out
    assert ids[0] in rows[0] and ids[CODES_SHOWN] in rows[-1], "the file's order, line 2 left out"
    assert "4 more not shown: --codes FILE" in out, out
    # --codes: every recorded report, each with its code, the table's first ones among them.
    codes = tmp_path / "codes.csv"
    code, out, _err = ctl.run("bawaslu", "ingest", str(backlog), "--codes", str(codes))
    assert code == 1, out
    with codes.open(encoding="utf-8", newline="") as file:
        written = list(csv.DictReader(file))
    assert [int(r["line"]) for r in written] == [1, *range(3, len(lines) + 1)]
    assert [r["device_report_id"] for r in written] == ids[:1] + ids[2:]
    assert {r["outcome"] for r in written} == {"DUPLICATE"}
    assert all(REFERENCE.fullmatch(r["reference"]) for r in written), written
    assert written[0]["title"] == "Laporan 0" and written[0]["incident"].startswith("incidents/")
    first = next(r for r in out.splitlines() if ids[0] in r)
    assert written[0]["reference"] in first, out
    assert f"The reference codes of all {len(written)} reports are in {codes}." in out, out
    assert "more not shown" not in out, out
    # A codes file that could not be written is refused before anything is sent.
    other = tmp_path / "other.jsonl"
    text = backlog_line(99)
    other.write_text(text + "\n")
    nowhere = tmp_path / "no-such-folder" / "codes.csv"
    code, _out, err = ctl.run("bawaslu", "ingest", str(other), "--codes", str(nowhere))
    assert code == 2 and "no folder" in err, err
    sent = json.loads(text)["device_report_id"]
    code, out, _err = ctl.run("bawaslu", "--json", "ingest", str(other))
    assert json.loads(out)["outcome"] == "CREATED" and sent in out, out  # not sent before


def test_a_backlog_line_names_people_who_are_sealed_not_written_in_the_text(
    ctl: Ctl, tmp_path: Path
) -> None:
    """A caller's phone noted at a TPS had nowhere to go but the description, which is not
    sealed: a line now takes ``personal_data`` as the API writes it, and the ledger seals it."""
    people = {
        "reporter": {"name": "Siti Rahma", "phone": "081273456690"},
        "reporter_anonymous": True,
        "witnesses": [{"name": "Budi Santoso", "nik": "1706014107900003"}],
    }
    backlog = tmp_path / "backlog.jsonl"
    backlog.write_text(backlog_line(0, personal_data=people) + "\n")
    (item,) = [
        json.loads(t) for t in ctl.ok("bawaslu", "--json", "ingest", str(backlog)).splitlines()
    ]
    assert item["outcome"] == "CREATED", item
    shown = ctl.json("bawaslu", "show", item["result"]["incident"])["incident"]
    roles = [(s["role"], s["anonymous"], s["state"]) for s in shown["data_subjects"]]
    assert roles == [("reporter", True, "PRESENT"), ("witness", False, "PRESENT")], roles
    assert "081273456690" not in json.dumps(shown) and "Siti" not in json.dumps(shown)
    # What cannot be read is named before anything is sent, as for every other field.
    for wrong, field in (
        ({"reporter": "Siti Rahma"}, "personal_data.reporter"),
        ({"witnesses": {"name": "Budi"}}, "personal_data.witnesses"),
        ({"reporter": {"name": "Siti", "telp": "0812"}}, "personal_data.reporter.telp"),
        ({"reporter_anonymous": "ya"}, "personal_data.reporter_anonymous"),
    ):
        backlog.write_text(backlog_line(1, personal_data=wrong) + "\n")
        code, _out, err = ctl.run("bawaslu", "ingest", str(backlog))
        assert code == 2 and f"line 1: {field}" in err, (wrong, err)


def test_a_report_id_used_twice_for_other_content_refuses_the_file_before_anything_is_sent(
    ctl: Ctl, tmp_path: Path
) -> None:
    """The ledger recorded whichever came first and refused the other for good; on the phone
    that could not be put right. The same line twice is one report."""
    first = json.loads(backlog_line(0))
    changed = {**first, "title": "Laporan lain"}
    backlog = tmp_path / "backlog.jsonl"
    backlog.write_text("\n".join(json.dumps(v) for v in (first, changed)) + "\n")
    code, _out, err = ctl.run("bawaslu", "ingest", str(backlog))
    assert code == 2 and "line 2: device_report_id" in err and "new device_report_id" in err, err
    assert recorded(ctl) == 0
    backlog.write_text("\n".join(json.dumps(v) for v in (first, first)) + "\n")
    code, out, err = ctl.run("bawaslu", "ingest", str(backlog))
    assert code == 0, (out, err)
    assert len(ctl.json("bawaslu", "list")) == 1

"""ledgerctl ingest FILE against a real ledger (in-memory store): the documented example
file, a backlog sent again after a crash, refused reports, --json per report, unreadable
lines refused before anything is sent."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

from tests.ledgerctl_support import Ctl

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "field-backlog.jsonl"


def line(n: int, **changes: object) -> str:
    value: dict[str, object] = {
        "device_report_id": str(uuid.uuid4()),
        "device_id": "tab-babinsa-air-rami",
        "device_record_time": "2026-11-27T09:00:00+07:00",
        "title": f"Laporan {n}",
        "category": "crowd_gathering",
        "location": {"kecamatan": "air_rami"},
    }
    value.update(changes)
    return json.dumps(value)


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
    # show says when it happened, beside when it was recorded, and the phone's own record
    # time, each in the regency's zone.
    name = next(
        i["name"]
        for i in ctl.json("bawaslu", "list", "--kecamatan", "malin_deman")
        if i["title"] == "Kotak suara TPS 05 dibawa tanpa pengawalan"
    )
    shown = ctl.ok("bawaslu", "show", name)
    assert "occurred 2026-11-27 08:05:00 WIB  recorded " in shown, shown
    assert "device_record_time=2026-11-27 08:12:40 WIB" in shown, shown
    assert "+00:00" not in shown, shown


def test_json_gives_one_line_per_report_and_refused_ones_exit_1(ctl: Ctl, tmp_path: Path) -> None:
    backlog = tmp_path / "backlog.jsonl"
    lines = [line(n) for n in range(7)]
    lines[2] = line(2, category="picnic")
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


def test_an_unreadable_line_refuses_the_file_before_anything_is_sent(
    ctl: Ctl, tmp_path: Path
) -> None:
    backlog = tmp_path / "backlog.jsonl"
    backlog.write_text(line(0) + "\n" + line(1, device_record_time="2026-11-27 09:00") + "\n")
    code, _out, err = ctl.run("bawaslu", "ingest", str(backlog))
    assert code == 2
    assert "line 2" in err and "device_record_time" in err
    backlog.write_text(line(0) + "\n{not json\n")
    code, _out, err = ctl.run("bawaslu", "ingest", str(backlog))
    assert code == 2 and "line 2" in err
    backlog.write_text(line(0, locaton={"kecamatan": "ipuh"}) + "\n")
    code, _out, err = ctl.run("bawaslu", "ingest", str(backlog))
    assert code == 2 and "locaton" in err
    assert recorded(ctl) == 0

"""Figures people can trust: the map's true count, response times without false zeros."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from incidentledger.v1 import incident_pb2 as pb
from incidentledger_client import LedgerClient
from tests.ledgerctl_support import Ctl


def row(table: str, first_cell: str) -> list[str]:
    """The cells of the table row whose first cell is ``first_cell``."""
    for line in table.splitlines():
        cells = [c.strip() for c in line.replace("┃", "│").split("│")[1:-1]]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in\n{table}")


def test_the_map_shows_the_true_incident_count_beyond_the_listed_reasons(
    ctl: Ctl, tmp_path: Path
) -> None:
    for _ in range(57):  # more than the 50 reasons the map lists
        ctl.ledger.report("kesbangpol", location=pb.Location(kecamatan="penarik"))
    ctl.ledger.report("kesbangpol", location=pb.Location(kecamatan="ipuh"))
    vmap = ctl.json("polres", "map")
    penarik = next(k for k in vmap["kecamatan"] if k["kecamatan"] == "penarik")
    assert len(penarik["reasons"]) == 50 and penarik["incident_count"] == 57
    table = ctl.ok("polres", "map")
    assert row(table, "Penarik")[-1] == "57"
    assert row(table, "Ipuh")[-1] == "1"
    svg = tmp_path / "map.svg"
    ctl.ok("polres", "map", "--svg", str(svg))
    assert "57 incidents<" in svg.read_text()


def test_response_times_show_no_data_as_a_dash_with_the_sample_size_of_each_figure(
    ctl: Ctl,
) -> None:
    verified = ctl.json("kesbangpol", "report", "Rally", "crowd_gathering", "ipuh")["incident"]
    ctl.ok("desk_pilkada", "verify", verified)
    ctl.json("kesbangpol", "report", "Flood", "flood", "penarik")
    groups = {g["key"]: g for g in ctl.json("polres", "response-times", "--by", "kecamatan")}
    assert set(groups) == {"ipuh", "penarik"}
    assert groups["ipuh"]["verify"]["count"] == 1 and groups["penarik"]["verify"]["count"] == 0
    table = ctl.ok("polres", "response-times", "--by", "kecamatan")
    # kecamatan | ack n, median, p90 | verify n, median, p90 | resolve n, median, p90
    penarik = row(table, "Penarik")  # by its name; --json keeps the code
    assert penarik[1:] == ["0", "—", "—"] * 3, table
    ipuh = row(table, "Ipuh")
    assert ipuh[4] == "1" and ipuh[5] != "—" and ipuh[7:] == ["0", "—", "—"]
    assert "0:00:00" not in " ".join(penarik)


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """What ledgerctl draws on stderr, as on a terminal."""
    from incidentledger_client.cli import output

    screen = io.StringIO()
    monkeypatch.setattr(
        output, "error_console", lambda: Console(file=screen, force_terminal=True, width=120)
    )
    return screen


def last_count(screen: str, unit: str) -> tuple[int, int]:
    """The last "done/total unit" a progress bar drew."""
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    found = re.findall(rf"(\d+)/(\S+) {unit}", plain)
    assert found, plain
    done, total = found[-1]
    assert total != "?", plain
    return int(done), int(total)


def ledger_size(ctl: Ctl) -> int:
    with LedgerClient(ctl.ledger.address, ctl.ledger.tokens["inspektorat"]) as client:
        return client.projection_status().ledger_position


def test_the_export_bar_counts_what_it_finishes_and_ends_full(
    ctl: Ctl, terminal: io.StringIO, tmp_path: Path
) -> None:
    for kecamatan in ("ipuh", "penarik", "ipuh", "penarik"):
        ctl.ledger.report("kesbangpol", location=pb.Location(kecamatan=kecamatan))
    size = ledger_size(ctl)
    out = tmp_path / "ipuh.jsonl"
    ctl.ok("inspektorat", "audit", "export", str(out), "--kecamatan", "ipuh")
    assert len(out.read_text().splitlines()) == 2
    assert last_count(terminal.getvalue(), "positions") == (size, size)


def test_audit_verify_shows_progress_against_the_ledgers_size(
    ctl: Ctl, terminal: io.StringIO
) -> None:
    for _ in range(3):
        ctl.ledger.report("kesbangpol")
    size = ledger_size(ctl)
    assert size >= 3
    assert "ledger verified" in ctl.ok("inspektorat", "audit", "verify")
    assert last_count(terminal.getvalue(), "positions") == (size, size)


def test_the_board_is_bounded_and_most_severe_first(
    ctl: Ctl, monkeypatch: pytest.MonkeyPatch
) -> None:
    severities = ["low", "critical", "medium", "high", "critical"] + ["low"] * 40
    names = [ctl.ledger.report("kesbangpol", severity=s).incident for s in severities]
    board = ctl.json("polres", "board")
    assert board["total"] == 45 and board["shown"] == 40  # bounded by default
    assert board["counts"]["REPORTED"] == 45
    assert [i["name"] for i in board["incidents"][:4]] == [names[1], names[4], names[3], names[2]]
    oldest = ctl.json("polres", "board", "--sort", "age", "--limit", "2")
    assert [i["name"] for i in oldest["incidents"]] == names[:2]
    assert ctl.json("polres", "board", "--limit", "0")["shown"] == 45
    monkeypatch.setenv("COLUMNS", "70")
    table = ctl.ok("polres", "board", "-n", "3")
    assert "REPORTED (45)" in table and "showing 3 of 45" in table
    # Each by the code people read out over the phone.
    codes = {i["name"]: i["reference"] for i in board["incidents"]}
    for name in (names[1], names[4], names[3]):
        assert codes[name] and codes[name] in table, table
    assert codes[names[2]] not in table


def test_times_for_people_show_their_zone_and_take_relative_forms(
    ctl: Ctl, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = ctl.json("kesbangpol", "report", "Rally", "crowd_gathering", "ipuh")["incident"]
    shown = ctl.ok("polres", "show", name)
    assert " WIB" in shown and " UTC" not in shown, shown
    assert " WITA" in ctl.ok("polres", "--zone", "Asia/Makassar", "show", name)
    monkeypatch.setenv("LEDGERCTL_ZONE", "Asia/Jayapura")
    assert " WIT" in ctl.ok("polres", "history", name)
    monkeypatch.delenv("LEDGERCTL_ZONE")
    assert ctl.json("polres", "audit", "as-of", "1 hour ago") == []
    assert ctl.json("polres", "audit", "as-of", "--", "-1h") == []
    assert [i["name"] for i in ctl.json("polres", "audit", "as-of", "now")] == [name]
    assert ctl.json("polres", "show", name, "--as-of", "+1m")["incident"]["name"] == name
    code, _, err = ctl.run("polres", "show", name, "--as-of", "-1h")
    assert code == 3 and "NOT_FOUND" in err  # it did not exist an hour ago
    assert ctl.json("polres", "map", "--at", "yesterday 18:00")["kecamatan"]
    code, _, err = ctl.run("polres", "decisions", "--at", "whenever")
    assert code == 2 and "yesterday 18:00" in err
    code, _, err = ctl.run("polres", "--zone", "Mars/Olympus", "list")
    assert code == 2 and "unknown time zone" in err

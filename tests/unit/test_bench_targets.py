"""The bench's targets: ratios to ceilings, their PASS/MISS, the exit status (no timing)."""

from __future__ import annotations

import argparse
import math
from dataclasses import replace

import pytest

from bench import targets
from bench.__main__ import parse_args, parse_parts
from bench.targets import AT_LEAST, AT_MOST, Condition, Target


def rate_target(measured: float, ceiling: float | None, goal: float = 0.5) -> Target:
    return Target("commands/s", measured, goal, AT_LEAST, ceiling, "echo", "/s")


def latency_target(measured: float, ceiling: float, goal: float = 20.0) -> Target:
    return Target("p99", measured, goal, AT_MOST, ceiling, "NATS alone", " ms")


# ------------------------------------------------------------------ ratios


def test_a_rate_passes_at_its_goal_and_misses_below_it() -> None:
    assert rate_target(500.0, 1000.0).ratio == pytest.approx(0.5)
    assert rate_target(500.0, 1000.0).ok
    assert not rate_target(499.0, 1000.0).ok
    assert rate_target(1200.0, 1000.0).ok  # above the ceiling is fine too


def test_a_latency_passes_up_to_its_goal_times_the_ceiling_and_misses_beyond() -> None:
    assert latency_target(80.0, 4.0).ratio == pytest.approx(20.0)
    assert latency_target(80.0, 4.0).ok
    assert not latency_target(80.1, 4.0).ok
    assert latency_target(1.0, 4.0).ok


def test_the_same_figures_on_a_slower_machine_keep_their_verdict() -> None:
    """What the ratios are for: both sides move together, the verdict stays."""
    quiet, busy = rate_target(600.0, 1000.0), rate_target(300.0, 500.0)
    assert quiet.ratio == pytest.approx(busy.ratio)
    assert quiet.ok and busy.ok


@pytest.mark.parametrize(
    ("measured", "ceiling"),
    [(math.nan, 1000.0), (500.0, math.nan), (500.0, 0.0), (500.0, -1.0)],
)
def test_nothing_measured_or_no_usable_ceiling_is_a_miss(measured: float, ceiling: float) -> None:
    for target in (rate_target(measured, ceiling), latency_target(measured, ceiling)):
        assert math.isnan(target.ratio)
        assert not target.ok
        assert target.verdict == "MISS"


def test_an_absolute_target_compares_the_figure_itself() -> None:
    growth = Target("RSS growth", 0.08, 0.10, AT_MOST, unit="%")
    assert math.isnan(growth.ratio)
    assert growth.compared == pytest.approx(0.08)
    assert growth.ok
    assert not Target("RSS growth", 0.12, 0.10, AT_MOST, unit="%").ok
    assert Target("verify", 41_000.0, 40_000.0, AT_LEAST, unit="/s").ok
    assert not Target("verify", 39_000.0, 40_000.0, AT_LEAST, unit="/s").ok


def test_a_failed_condition_makes_a_passing_ratio_miss() -> None:
    base = latency_target(40.0, 4.0)
    late = Condition("late sends 3.0% <= 1%", False)
    arrived = Condition("1,500/1,500 arrived", True)
    assert base.ok
    assert replace(base, conditions=(arrived,)).ok
    missed = replace(base, conditions=(arrived, late))
    assert missed.ratio_ok and not missed.ok
    assert missed.verdict == "MISS"


def test_compare_must_be_one_of_the_two_directions() -> None:
    with pytest.raises(ValueError, match="compare"):
        Target("x", 1.0, 1.0, "==")


# ------------------------------------------------------------------ the table


def test_each_row_shows_the_figure_beside_its_ceiling_with_ratio_goal_and_verdict() -> None:
    late = Condition("late sends 3.0% <= 1%", False)
    rows = targets.rows(
        [
            rate_target(446.0, 3318.0),
            Target("p99", 27.1, 5.0, AT_MOST, 1.1, "echo p50", " ms", (late,)),
            Target("RSS growth", 0.034, 0.10, AT_MOST, unit="%"),
        ]
    )
    assert rows[0] == ["commands/s", "446/s", "3,318/s echo", "0.13", ">= 0.5", "MISS", ""]
    assert rows[1][:6] == ["p99", "27.1 ms", "1.1 ms echo p50", "24.6x", "<= 5x", "MISS"]
    assert rows[1][6] == "late sends 3.0% <= 1% (MISS)"
    assert rows[2][:6] == ["RSS growth", "+3.4%", "-", "-", "<= +10.0%", "PASS"]
    assert all(len(row) == len(targets.HEADERS) for row in rows)


def test_a_latency_ratio_just_over_its_goal_does_not_print_as_the_goal() -> None:
    (row,) = targets.rows([Target("report naming people, p50", 1.74, 1.3, AT_MOST, 1.3, "", " ms")])
    assert row[3:6] == ["1.34x", "<= 1.3x", "MISS"]


# ------------------------------------------------------------------ exit status


def test_a_miss_fails_the_run_only_when_strict_and_a_fault_always() -> None:
    passed, missed = rate_target(900.0, 1000.0), rate_target(100.0, 1000.0)
    assert targets.exit_status([passed, missed], faults=0, strict=False) == 0
    assert targets.exit_status([passed, missed], faults=0, strict=True) == 1
    assert targets.exit_status([passed], faults=0, strict=True) == 0
    assert targets.exit_status([passed], faults=1, strict=False) == 1
    assert targets.exit_status([], faults=0, strict=True) == 0


def test_share_of_nothing_is_zero() -> None:
    assert targets.share(3, 300) == pytest.approx(0.01)
    assert targets.share(0, 0) == 0.0


def test_the_command_line_takes_strict_quick_and_parts() -> None:
    args = parse_args(["--quick", "--strict", "--parts", "commands,fanout"])
    assert args.quick and args.strict
    assert args.parts == ("commands", "fanout")
    assert parse_args([]).strict is False
    with pytest.raises(SystemExit):
        parse_args(["--parts", "commands,nonsense"])


def test_unknown_or_empty_parts_are_refused() -> None:
    assert parse_parts("history") == ("history",)
    for text in ("", "relay", ","):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_parts(text)


def test_the_situation_rooms_target_is_every_event_on_every_stream() -> None:
    from bench.__main__ import page_target
    from bench.page import PageRun

    def run(received: int, missing: int, resyncs: int) -> PageRun:
        return PageRun(
            incidents=5_000,
            prepare_seconds=10.0,
            first_ms=500.0,
            warm_ms=400.0,
            board_bytes=70_000,
            streams=100,
            rate=50.0,
            seconds=10.0,
            sent=500,
            send_late=0,
            send_seconds=10.0,
            latencies_ms=[5.0] * received,
            missing=missing,
            resyncs=resyncs,
        )

    assert page_target(run(50_000, 0, 0)).ok
    assert not page_target(run(49_999, 1, 0)).ok  # one event missed by one stream
    assert not page_target(run(50_000, 0, 1)).ok  # a stream fell behind and reloaded
    assert "page" in parse_parts("page,commands")

"""The history part's median round (bench/history.py)."""

from __future__ import annotations

from bench.history import Measured, median_round


def measured(events: int, seconds: float) -> Measured:
    return Measured("rebuild", events, seconds, peak_mb=100.0, base_mb=90.0)


def test_the_median_round_is_the_middle_rate_not_the_first_or_the_fastest() -> None:
    slow, middle, fast = measured(1000, 1.0), measured(1000, 0.5), measured(1000, 0.25)
    assert median_round([fast, slow, middle]) is middle
    assert median_round([middle]) is middle
    assert median_round([fast, slow]) is slow, "of two, the lower: never the flattering one"

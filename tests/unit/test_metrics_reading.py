"""shared_reading: the gauges of one scrape share one costly reading."""

from __future__ import annotations

import itertools

from services.common.metrics import shared_reading


def test_a_shared_reading_is_made_once_per_period_and_again_after_it() -> None:
    counter = itertools.count(1)
    once = shared_reading(lambda: next(counter), seconds=3600)
    assert [once(), once(), once()] == [1, 1, 1]
    always = shared_reading(lambda: next(counter), seconds=0)
    assert [always(), always()] == [2, 3]

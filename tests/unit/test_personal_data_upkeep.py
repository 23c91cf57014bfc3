"""The personal data upkeep's passes: at start, again once the erasures left at start are a
minute old (settled), then at its interval. A fake ledger counts the passes."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any, cast

from services.ledger.application import Ledger
from services.ledger.server import PersonalDataUpkeep


class Passes:
    """Stands for the ledger: records each pass's time and the settle it was given."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.settles: list[timedelta] = []
        self.changed = threading.Condition()

    def delete_unsaved_personal_keys(self, _grace: timedelta) -> None:
        pass

    def destroy_keys_of_erased(self, after: int, *, settle: timedelta) -> tuple[int, int]:
        with self.changed:
            self.times.append(time.monotonic())
            self.settles.append(settle)
            self.changed.notify_all()
        return after, 0

    def scrub_personal_keys(self) -> None:
        pass

    def wait_for(self, count: int, seconds: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.times) >= count, timeout=seconds)


def test_a_second_pass_comes_once_the_erasures_left_at_start_have_settled() -> None:
    # An erasure recorded just before a crash is younger than the settle at the first pass:
    # its keys found again were left for the interval (an hour); now for the settle.
    passes = Passes()
    upkeep = PersonalDataUpkeep(
        cast(Ledger, cast(Any, passes)), 0, 60, interval=3600.0, settle=timedelta(0)
    )
    started = time.monotonic()
    upkeep.start()
    try:
        assert passes.wait_for(2, seconds=10), passes.times
        assert passes.times[1] - started < 5, "the second pass a settle (and 1 s) after the first"
        assert not passes.wait_for(3, seconds=1.5), "then the interval"
        assert passes.settles == [timedelta(0)] * 2
    finally:
        upkeep.stop()

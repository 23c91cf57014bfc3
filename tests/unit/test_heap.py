"""After start-up, the objects alive are moved out of the collector's way."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from services.common.heap import freeze_after_start


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the test session as before


@pytest.mark.usefixtures("unfrozen")
def test_the_objects_alive_after_start_up_are_frozen() -> None:
    kept = [object() for _ in range(1000)]
    assert gc.get_freeze_count() == 0
    freeze_after_start("test")
    assert gc.get_freeze_count() >= len(kept)
    # What the service makes afterwards is collected as before.
    assert gc.isenabled()

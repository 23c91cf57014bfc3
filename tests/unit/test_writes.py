"""Group commit and the write-side cache, with a stand-in save function."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError

from services.ledger.writes import AggregateCache, GroupCommitter, SingleCommands


class Thing(Aggregate):
    def __init__(self, poison: bool = False) -> None:
        self.poison = poison


class RecordingSaver:
    """Stores nothing; remembers the batches (and the rows given with them), fails any
    holding a poisoned thing's event."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.rows: list[list[Any]] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, events: Sequence[Any], rows: Sequence[Any]) -> list[Any]:
        self.entered.set()
        self.release.wait(5)
        with self.lock:
            self.batches.append(list(events))
            self.rows.append(list(rows))
        if any(e.poison for e in events):
            raise IntegrityError("duplicate")
        return [f"recorded {e.originator_id}" for e in events]


def test_waiting_commands_share_one_commit_and_failures_stay_their_own() -> None:
    saver = RecordingSaver()
    observed: list[Any] = []
    committer = GroupCommitter(saver, on_recorded=observed.extend)
    good = [Thing() for _ in range(5)]
    bad = Thing(poison=True)
    outcomes: dict[int, object] = {}

    def submit(n: int, thing: Thing) -> None:
        try:
            outcomes[n] = committer.save(thing.collect_events(), [f"row of {thing.id}"])
        except IntegrityError:
            outcomes[n] = "conflict"

    threads = [threading.Thread(target=submit, args=(n, t)) for n, t in enumerate([*good, bad])]
    threads[0].start()
    assert saver.entered.wait(10), "the first commit did not start"
    for thread in threads[1:]:
        thread.start()
    # The first commit blocks; wait (with a deadline) until the five others queue up.
    deadline = time.monotonic() + 10
    while committer._queue.qsize() < 5:
        assert time.monotonic() < deadline, "commands did not queue up"
        time.sleep(0.01)
    saver.release.set()
    for thread in threads:
        thread.join(10)
    committer.close()
    # Each command gets the recordings of its own events, also after the failed batch
    # was retried command by command.
    assert outcomes == {
        **{n: [f"recorded {thing.id}"] for n, thing in enumerate(good)},
        5: "conflict",
    }
    assert [len(batch) for batch in saver.batches[:2]] == [1, 5], "the waiting five share a commit"
    # Each save carried the rows of its commands, and only theirs: in the shared batch,
    # and again in each command's own save after it failed.
    assert len(saver.batches) == 2 + 5
    for events, rows in zip(saver.batches, saver.rows, strict=True):
        assert rows == [f"row of {e.originator_id}" for e in events]
    # The observer saw each stored event once, and nothing of the failed batch.
    assert sorted(observed) == sorted(f"recorded {thing.id}" for thing in good)


def test_a_failing_observer_does_not_fail_the_commit() -> None:
    saver = RecordingSaver()
    saver.release.set()

    def observer(recordings: Sequence[Any]) -> None:
        raise RuntimeError("observer broke")

    committer = GroupCommitter(saver, on_recorded=observer)
    thing = Thing()
    recordings: list[Any] = committer.save(thing.collect_events())
    assert recordings == [f"recorded {thing.id}"]
    committer.close()


def test_close_finishes_and_stops_the_thread() -> None:
    saver = RecordingSaver()
    saver.release.set()
    committer = GroupCommitter(saver)
    committer.save(Thing().collect_events())
    committer.close()
    assert len(saver.batches) == 1


def test_cache_is_a_bounded_lru() -> None:
    cache = AggregateCache(2)
    a, b, c = (Thing() for _ in range(3))
    cache.put(a.id, a)
    cache.put(b.id, b)
    assert cache.get(a.id) is a  # a is now the most recent
    cache.put(c.id, c)
    assert cache.get(b.id) is None
    assert cache.get(a.id) is a
    cache.drop(a.id)
    assert cache.get(a.id) is None
    assert cache.get(uuid4()) is None


@pytest.mark.parametrize("size", [0, -1])
def test_cache_of_size_zero_keeps_nothing(size: int) -> None:
    cache = AggregateCache(size)
    thing = Thing()
    cache.put(thing.id, thing)
    assert cache.get(thing.id) is None


def test_bulk_work_gives_way_to_single_commands_until_they_end_or_the_pause_is_over() -> None:
    singles = SingleCommands(pause=30.0)
    assert singles.give_way() is False, "nothing to give way to: no wait"

    started, finish = threading.Event(), threading.Event()
    command = threading.Thread(target=_run_until, args=(singles, started, finish))
    command.start()
    started.wait(30)
    gave_way = threading.Event()

    def bulk() -> None:
        singles.give_way()
        gave_way.set()

    waiting = threading.Thread(target=bulk)
    waiting.start()
    # It waits for the single command, not for the pause: still waiting while it runs,
    # on its way as soon as it ends.
    assert not gave_way.wait(0.2)
    finish.set()
    assert gave_way.wait(10)
    command.join(10)
    waiting.join(10)

    # A single command that runs on: the bulk work goes on after the pause.
    short = SingleCommands(pause=0.05)
    finish.clear()
    started.clear()
    endless = threading.Thread(target=_run_until, args=(short, started, finish))
    endless.start()
    started.wait(30)
    went_on = threading.Event()

    def pause() -> None:
        if short.give_way():  # it waited, then went on with the command still running
            went_on.set()

    paused = threading.Thread(target=pause)
    paused.start()
    assert went_on.wait(10), "the bulk work waited beyond its pause"
    paused.join(10)
    finish.set()
    endless.join(10)
    assert short.give_way() is False


def _run_until(singles: SingleCommands, started: threading.Event, finish: threading.Event) -> None:
    """A single command that runs until ``finish``."""
    with singles.running():
        started.set()
        finish.wait(30)

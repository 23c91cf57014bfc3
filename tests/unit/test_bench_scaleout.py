"""The scale-out benchmark's bookkeeping: clients over replicas, merged results, the store check."""

from __future__ import annotations

from collections import Counter
from uuid import UUID, uuid4

from bench import loadgen, scaleout
from bench.harness import Result, joined, merged

PLAN = scaleout.ScaleoutLoad(
    clients=8,
    load_processes=2,
    warmup=0.1,
    duration=1.0,
    paced_rate=200.0,
    paced_duration=1.0,
    incidents_per_client=3,
)


def measured(versions: dict[UUID, int], acked: int) -> loadgen.LoadResult:
    return loadgen.LoadResult(
        closed=Result(1.0, []),
        paced=None,
        sent=Counter(),
        acked=acked,
        versions={f"incidents/{i}": v for i, v in versions.items()},
    )


# ------------------------------------------------------------ load descriptions


def test_clients_go_round_robin_over_the_replicas_across_load_processes() -> None:
    ids = [uuid4() for _ in range(PLAN.clients * PLAN.incidents_per_client)]
    loads = scaleout.loads(PLAN, ["a:1", "b:2"], {}, ids)
    assert [load.client_targets() for load in loads] == [
        ["a:1", "b:2", "a:1", "b:2"],
        ["a:1", "b:2", "a:1", "b:2"],
    ]
    assert [load.first_client for load in loads] == [0, 4]
    assert all(load.paced_rate == 100.0 for load in loads)


def test_an_odd_first_client_starts_on_the_second_replica() -> None:
    load = loadgen.Load(
        "ledger", "a", 3, "per-thread", 0.1, 1.0, targets=("a", "b"), first_client=3
    )
    assert load.client_targets() == ["b", "a", "b"]


def test_one_replica_takes_every_client() -> None:
    ids = [uuid4() for _ in range(PLAN.clients * PLAN.incidents_per_client)]
    loads = scaleout.loads(PLAN, ["only:1"], {}, ids)
    assert {t for load in loads for t in load.client_targets()} == {"only:1"}


def test_each_prepared_incident_belongs_to_exactly_one_client() -> None:
    ids = [uuid4() for _ in range(PLAN.clients * PLAN.incidents_per_client)]
    loads = scaleout.loads(PLAN, ["a", "b"], {}, ids)
    names = [name for load in loads for client in load.assigned for name, _ in client]
    assert sorted(names) == sorted(f"incidents/{i}" for i in ids)
    assert all(len(client) == PLAN.incidents_per_client for ld in loads for client in ld.assigned)


# --------------------------------------------------------------- merged results


def test_merged_results_count_every_call_over_the_longest_window() -> None:
    one = Result(2.0, [0.01, 0.03], Counter({"UNAVAILABLE": 1}), late_sends=2)
    two = Result(1.5, [0.02], Counter({"UNAVAILABLE": 2}), late_sends=1)
    both = merged([one, two])
    assert both.calls == 3
    assert both.rate == 1.5
    assert both.latencies == [0.01, 0.02, 0.03]
    assert both.errors == Counter({"UNAVAILABLE": 3})
    assert both.late_sends == 3


def test_joined_rounds_count_every_call_over_their_summed_time() -> None:
    """Rounds run one after the other (the bench's alternating reports): their times add."""
    one = Result(2.0, [0.01, 0.03], Counter({"UNAVAILABLE": 1}))
    two = Result(1.0, [0.02], Counter({"UNAVAILABLE": 2}))
    both = joined([one, two])
    assert both.calls == 3
    assert both.rate == 1.0
    assert both.latencies == [0.01, 0.02, 0.03]
    assert both.errors == Counter({"UNAVAILABLE": 3})


def test_combined_load_results_add_acknowledgements_and_keep_every_incident() -> None:
    a, b = uuid4(), uuid4()
    first = measured({a: 4}, acked=5)
    second = measured({b: 1}, acked=3)
    second.failed = 2
    total = loadgen.combined([first, second])
    assert total.acked == 8
    assert total.failed == 2
    assert total.versions == {f"incidents/{a}": 4, f"incidents/{b}": 1}
    assert total.paced is None


# -------------------------------------------------------------- the store check


def test_a_store_holding_exactly_the_acknowledged_commands_passes() -> None:
    prepared, reported = uuid4(), uuid4()
    # prepared at version 3, two LogAction acknowledged; one incident reported and verified
    stored = {prepared: (5, 5), reported: (2, 2)}
    check = scaleout.compare(stored, 1, measured({prepared: 5, reported: 2}, acked=4))
    assert check.ok
    assert (check.stored, check.acknowledged, check.incidents) == (4, 4, 2)


def test_an_acknowledged_event_missing_from_the_store_fails() -> None:
    incident = uuid4()
    check = scaleout.compare({incident: (4, 4)}, 1, measured({incident: 5}, acked=2))
    assert not check.ok
    assert check.lost == 1


def test_an_acknowledged_incident_missing_altogether_counts_all_its_events_as_lost() -> None:
    kept, gone = uuid4(), uuid4()
    check = scaleout.compare({kept: (3, 3)}, 1, measured({kept: 3, gone: 2}, acked=2))
    assert not check.ok
    assert check.lost == 2


def test_an_event_stored_without_acknowledgement_fails() -> None:
    incident = uuid4()
    check = scaleout.compare({incident: (5, 5)}, 1, measured({incident: 4}, acked=1))
    assert not check.ok
    assert check.unacknowledged == 1
    assert check.lost == 0


def test_a_gap_in_an_incidents_versions_fails() -> None:
    incident = uuid4()
    check = scaleout.compare({incident: (4, 5)}, 1, measured({incident: 5}, acked=1))
    assert not check.ok
    assert check.gaps == 1

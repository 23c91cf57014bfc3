"""The audit's worker processes (services.ledger.audit.scan): ranges, and how they fail."""

from __future__ import annotations

from pathlib import Path

import pytest
from eventsourcing.persistence import OperationalError

from services.common.natsserver import free_port
from services.common.store_errors import as_ledger_error
from services.ledger.audit import scan
from services.ledger.audit.encoding import RawDecoder
from tests.support import store_environment


def test_ranges_cover_every_position_once_in_order() -> None:
    assert list(scan.ranges(0, 10, 4)) == [(0, 4), (4, 8), (8, 10)]
    assert list(scan.ranges(5, 6, 4)) == [(5, 6)]
    assert list(scan.ranges(7, 7, 4)) == []


def _source(env: dict[str, str], table: str) -> scan.StoreSource:
    return scan.StoreSource(tuple(sorted(env.items())), table, tuple(RawDecoder().topics))


def test_a_store_the_workers_cannot_reach_is_the_store_s_own_error() -> None:
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": str(free_port()),
        "POSTGRES_DBNAME": "test",
        "POSTGRES_USER": "postgres",
    }
    with scan.workers(1) as pool, pytest.raises(OperationalError) as caught:
        list(scan.scan(pool, scan.HASHES, _source(env, "stored_events"), 0, 10))
    mapped = as_ledger_error(caught.value)  # what the gRPC servicers answer with
    assert mapped is not None
    assert mapped.reason == "STORE_UNAVAILABLE"


@pytest.mark.postgres
def test_any_other_failure_of_a_worker_is_a_worker_error(tmp_path: Path) -> None:
    with (
        store_environment("postgres", tmp_path) as env,
        scan.workers(1) as pool,
        pytest.raises(scan.WorkerError) as caught,
    ):
        list(scan.scan(pool, scan.LINES, _source(env, "no_such_table"), 0, 10))
    assert "no_such_table" in str(caught.value)


def test_a_sqlite_store_the_workers_cannot_open_is_the_store_s_own_error(tmp_path: Path) -> None:
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(tmp_path / "no-such-directory" / "ledger.sqlite"),
    }
    with scan.workers(1) as pool, pytest.raises(OperationalError) as caught:
        list(scan.scan(pool, scan.HASHES, _source(env, "stored_events"), 0, 10))
    mapped = as_ledger_error(caught.value)
    assert mapped is not None
    assert mapped.reason == "STORE_UNAVAILABLE"

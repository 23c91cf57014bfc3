from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.reference import ReferenceData
from tests.nats_support import nats_cluster, nats_server  # noqa: F401 - fixtures, used by name
from tests.support import STORES, Client, reference, running_ledger, settings_for, store_environment

#: The tiers by directory (docs/development.md, "Tests"); a test marked ``system`` is in that tier.
TIER_DIRECTORIES = ("unit", "integration")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test in neither tests/unit nor tests/integration, and not marked ``system``, would be
    run by no ``make test-*`` target, so by no ``make test``: refuse it."""
    tests = Path(__file__).parent
    for item in items:
        where = item.path.relative_to(tests).parts[0]
        if where not in TIER_DIRECTORIES and item.get_closest_marker("system") is None:
            raise pytest.UsageError(f"{item.nodeid}: in no test tier (docs/development.md)")


@pytest.fixture(scope="session")
def ref() -> ReferenceData:
    return reference()


@pytest.fixture(params=STORES)
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A fresh, empty event store: in memory, SQLite and PostgreSQL in turn."""
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
    with store_environment(request.param, tmp_path) as env:
        yield env


@pytest.fixture
def ledger(store_env: dict[str, str], tmp_path: Path) -> Iterator[Client]:
    """A real ledger gRPC server on a free port, with development tokens per agency."""
    with running_ledger(settings_for(tmp_path, store_env)) as client:
        yield client

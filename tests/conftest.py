from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from services.common.reference import ReferenceData
from tests.nats_support import nats_cluster, nats_server  # noqa: F401 - fixtures, used by name
from tests.support import STORES, Client, reference, running_ledger, settings_for, store_environment

#: The tiers by directory (docs/development.md, "Tests"); a test marked ``system`` is in that tier.
TIER_DIRECTORIES = ("unit", "integration")


class FdLogger:
    """structlog's output for services run inside the test process: each line written to file
    descriptor 1 with ``os.write``, never through ``sys.stdout``.

    structlog's default logger prints to whatever ``sys.stdout`` is at the moment. pytest swaps
    and closes its capture files between tests while the services' threads go on logging, and
    a write racing that on Python 3.11's text files once crashed the whole run (a segmentation
    fault in ``print`` from a notifier thread, as ``capfd`` started). Descriptor 1 is never
    closed; pytest's capture of it (``capfd``, and the report of a failed test) still sees
    every line."""

    def msg(self, message: str) -> None:
        data = memoryview((message + "\n").encode("utf-8", "backslashreplace"))
        while data:
            data = data[os.write(1, data) :]

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def fd_logger(*_: Any) -> FdLogger:
    return FdLogger()


def pytest_configure(config: pytest.Config) -> None:
    structlog.configure(logger_factory=fd_logger)


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

"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ledgerctl_support import Ctl
from tests.ledgerctl_support import popo_ledger as running_popo_ledger
from tests.support import Client, store_environment


@pytest.fixture
def popo_ledger(tmp_path: Path) -> Iterator[Client]:
    """A real ledger on a free port, on the in-memory store."""
    with running_popo_ledger(tmp_path) as client:
        yield client


@pytest.fixture
def ctl(popo_ledger: Client, capsys: pytest.CaptureFixture[str]) -> Ctl:
    """ledgerctl, run in-process against ``popo_ledger``."""
    return Ctl(popo_ledger, capsys)


@pytest.fixture(params=["sqlite", "postgres"])
def either_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a new store: the test runs once on SQLite, once on PostgreSQL."""
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
    with store_environment(request.param, tmp_path) as env:
        yield env

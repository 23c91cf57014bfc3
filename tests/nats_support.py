"""Test support: a real, bundled nats-server (JetStream) on free loopback ports.

``nats_server`` is a function-scoped fixture: a started :class:`NatsServer` with its
store and log in the test's ``tmp_path``, stopped at teardown. It is registered in
``tests/conftest.py``; :func:`running_nats_server` is the same as a context manager.

``nats_cluster`` (and :func:`running_nats_cluster`) is a started three-node JetStream
cluster, :class:`NatsCluster`: ``urls`` for ``NATS_URL``, ``servers`` for
``nats.connect``, ``kill(i)``, ``restart(i)``, ``wait_healthy()``, ``stream_leader()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from services.common.natsserver import NatsServer
from tests.nats_cluster import NatsCluster


@contextmanager
def running_nats_server(directory: Path) -> Iterator[NatsServer]:
    """A started nats-server on free ports, store in ``directory/nats``; stopped on exit."""
    server = NatsServer(directory / "nats", log_file=directory / "nats-server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A started nats-server with JetStream on free loopback ports (never 4222)."""
    with running_nats_server(tmp_path) as server:
        yield server


@contextmanager
def running_nats_cluster(directory: Path, size: int = 3) -> Iterator[NatsCluster]:
    """A started, healthy JetStream cluster of ``size`` nodes on free ports, stores and logs
    in ``directory/nats-cluster``; every node stopped on exit."""
    cluster = NatsCluster(directory / "nats-cluster", size=size)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A started three-node JetStream cluster on free loopback ports (never 4222)."""
    with running_nats_cluster(tmp_path) as cluster:
        yield cluster

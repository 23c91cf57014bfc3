"""Test support: a JetStream cluster of bundled nats-servers on loopback.

:class:`NatsCluster` runs ``size`` :class:`~services.common.natsserver.NatsServer` nodes,
each with a store directory of its own, and can kill (SIGKILL), stop and restart any of
them on the same ports with the same store. Only the tests use it (the fixtures in
tests/nats_support.py, the relay, cluster and soak tests), so it lives here, out of the
services' image.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from services.common.natsserver import (
    START_TIMEOUT,
    NatsPortInUseError,
    NatsServer,
    NatsServerError,
    free_ports,
    url_host,
)

#: Seconds between two looks at the nodes' monitoring endpoints while waiting.
POLL = 0.05
#: Placements tried at a first start. The nodes' ports are picked free before it (each
#: node's routes name its peers' cluster ports), and another process may take one before
#: its node binds it; nothing knows the ports yet, so the nodes move to new ones.
FIRST_START_PLACEMENTS = 5


class NatsCluster:
    """``size`` nats-server nodes with JetStream forming one cluster on loopback.

    Node ``i`` is named ``<name>-<i+1>``, stores into ``directory/<node name>`` and logs
    to ``directory/<node name>.log``. Its client, cluster and monitoring ports are
    picked free once and kept, so a node that is stopped or killed restarts where its
    peers and clients expect it, with its own store. ``servers`` (a list) and ``urls``
    (comma-separated, as ``NATS_URL`` takes it) name every node's client URL.
    """

    def __init__(
        self, directory: Path, size: int = 3, name: str = "ledger", host: str = "127.0.0.1"
    ) -> None:
        if size < 1:
            raise ValueError(f"a cluster needs at least one node, not {size}")
        self.directory = Path(directory)
        self.name = name
        self.size = size
        self.host = host
        self._started = False
        self.nodes: list[NatsServer] = []
        self._place()

    def _place(self) -> None:
        """The nodes on ports picked free now."""
        size, name, host = self.size, self.name, self.host
        # All picked at once, distinct: a node must not take a port meant for another.
        ports = free_ports(3 * size, host)
        client_ports, cluster_ports, monitor_ports = (
            ports[:size],
            ports[size : 2 * size],
            ports[2 * size :],
        )
        routes = [f"nats://{url_host(host)}:{port}" for port in cluster_ports]
        self.nodes = [
            NatsServer(
                self.directory / f"{name}-{i + 1}",
                port=client_ports[i],
                host=host,
                log_file=self.directory / f"{name}-{i + 1}.log",
                server_name=f"{name}-{i + 1}",
                cluster_name=name,
                cluster_port=cluster_ports[i],
                routes=[route for j, route in enumerate(routes) if j != i],
                monitor_port=monitor_ports[i],
            )
            for i in range(size)
        ]

    # --- addresses and state ------------------------------------------------------------

    @property
    def servers(self) -> list[str]:
        """The client URL of every node, for ``nats.connect(servers=...)``."""
        return [node.url for node in self.nodes]

    @property
    def urls(self) -> str:
        """The client URLs, comma-separated: a ``NATS_URL`` for the services."""
        return ",".join(self.servers)

    @property
    def running(self) -> list[int]:
        """The indexes of the nodes whose process runs."""
        return [i for i, node in enumerate(self.nodes) if node.running]

    def index(self, server_name: str) -> int:
        """The index of the node named ``server_name``."""
        for i, node in enumerate(self.nodes):
            if node.server_name == server_name:
                return i
        raise KeyError(f"no node {server_name!r} in cluster {self.name!r}")

    def meta_leader(self) -> int | None:
        """The node that leads the JetStream meta group, as every running node sees it.

        None while running nodes disagree or know no leader, or the leader is down.
        """
        seen: set[str] = set()
        for i in self.running:
            try:
                jsz = self.nodes[i].monitoring("/jsz")
            except NatsServerError:
                return None
            seen.add(str(jsz.get("meta_cluster", {}).get("leader") or ""))
        if len(seen) != 1 or "" in seen:
            return None
        leader = self.index(seen.pop())
        return leader if self.nodes[leader].running else None

    def stream_leader(self, stream: str) -> int | None:
        """The node that leads ``stream``'s replicas (None if no running node knows one)."""
        for i in self.running:
            cluster = self._stream_cluster(i, stream)
            if cluster is not None and cluster.get("leader"):
                leader = self.index(str(cluster["leader"]))
                return leader if self.nodes[leader].running else None
        return None

    def stream_current(self, stream: str) -> bool:
        """Whether ``stream`` has a running leader and it reports every replica current."""
        leader = self.stream_leader(stream)
        if leader is None:
            return False
        cluster = self._stream_cluster(leader, stream)
        if cluster is None or cluster.get("leader") != self.nodes[leader].server_name:
            return False
        replicas = cluster.get("replicas") or []
        return all(bool(r.get("current")) and not r.get("offline") for r in replicas)

    def client_nodes(self, client_name: str) -> list[int]:
        """The running nodes holding a client connection named ``client_name`` (``/connz``),
        for example ``incident-notifier`` or ``incident-ledger-relay``."""
        found = []
        for i in self.running:
            try:
                connz = self.nodes[i].monitoring("/connz?limit=1024")
            except NatsServerError:
                continue
            if any(c.get("name") == client_name for c in connz.get("connections") or []):
                found.append(i)
        return found

    def _stream_cluster(self, i: int, stream: str) -> dict[str, Any] | None:
        """``stream``'s cluster section in node ``i``'s ``/jsz`` (None if it holds none)."""
        try:
            jsz = self.nodes[i].monitoring("/jsz?streams=true")
        except NatsServerError:
            return None
        for detail in jsz.get("account_details") or []:
            for entry in detail.get("stream_detail") or []:
                if entry.get("name") == stream:
                    cluster: dict[str, Any] = entry.get("cluster") or {}
                    return cluster
        return None

    # --- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Spawn every node, wait until each has JetStream, then until the cluster is healthy.

        At the first start a port taken between its pick and its node's bind
        (:class:`NatsPortInUseError`) moves every node to new ports, with empty stores, up
        to :data:`FIRST_START_PLACEMENTS` times."""
        placements = 1 if self._started else FIRST_START_PLACEMENTS
        for placement in range(1, placements + 1):
            try:
                self._start(timeout)
            except NatsPortInUseError:
                if placement == placements:
                    raise
                for node in self.nodes:
                    shutil.rmtree(node.store_dir, ignore_errors=True)
                self._place()
                continue
            self._started = True
            return

    def _start(self, timeout: float) -> None:
        try:
            for node in self.nodes:
                node.spawn()
            for node in self.nodes:
                node.wait_ready(timeout)
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every node that runs (SIGKILL after ``timeout``)."""
        for node in self.nodes:
            node.stop(timeout)

    def kill(self, i: int) -> None:
        """SIGKILL node ``i``: a crash, as far as its store and its peers are concerned."""
        self.nodes[i].kill()

    def stop_node(self, i: int, timeout: float = 10.0) -> None:
        """SIGTERM node ``i`` (it leaves the cluster in order)."""
        self.nodes[i].stop(timeout)

    def restart(self, i: int, timeout: float = START_TIMEOUT) -> None:
        """Start node ``i`` again (stopping it first if it runs) on the same ports with the
        same store, then wait until the cluster is healthy: the node has caught up."""
        node = self.nodes[i]
        node.stop()
        node.start(timeout)
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until every running node answers ``/healthz`` ok (a meta leader it is in
        contact with, every replica it holds current) and all agree on a running meta
        leader. Raises :class:`NatsServerError` with the nodes' log tails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            running = self.running
            healthy = bool(running) and all(self.nodes[i].healthy() for i in running)
            if healthy and self.meta_leader() is not None:
                return
            if time.monotonic() >= deadline:
                raise NatsServerError(
                    f"cluster {self.name!r} was not healthy within {timeout:g} s\n"
                    + self.describe()
                )
            time.sleep(POLL)

    def wait_stream_current(self, stream: str, timeout: float = 30.0) -> None:
        """Wait until ``stream`` has a leader that reports every replica current."""
        deadline = time.monotonic() + timeout
        while not self.stream_current(stream):
            if time.monotonic() >= deadline:
                raise NatsServerError(
                    f"stream {stream!r} did not have all replicas current within "
                    f"{timeout:g} s\n" + self.describe()
                )
            time.sleep(POLL)

    def describe(self) -> str:
        """Each node's state, health answer and log tail (for failure messages)."""
        parts = []
        for node in self.nodes:
            health: Any = "down"
            if node.running:
                try:
                    health = node.monitoring("/healthz")
                except NatsServerError as exc:
                    health = str(exc)
            parts.append(
                f"--- {node.server_name} ({node.url}, pid {node.pid}): {health}\n"
                f"{node.log_tail(10)}"
            )
        return "\n".join(parts)

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"NatsCluster({self.name!r}, {self.urls}, running={self.running})"

"""Prometheus metrics, on an HTTP port of their own (off unless a listen address is set).

Each service has its own registry (no process-global state). Request counts and
latencies come from the request interceptor; everything that is a state rather
than an event (lags, positions, connections) is read when Prometheus scrapes,
from callbacks the service registers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.common.config import ConfigError

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Gauges(Collector):
    def __init__(self) -> None:
        self._gauges: list[tuple[str, str, Callable[[], float]]] = []

    def add(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self._gauges.append((name, documentation, read))

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for name, documentation, read in self._gauges:
            yield GaugeMetricFamily(name, documentation, value=read())


class Metrics:
    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            f"{service}_requests",
            "gRPC requests by method and status",
            ["method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{service}_request_seconds",
            "gRPC request latency by method",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._gauges = _Gauges()
        self.registry.register(self._gauges)
        self._server: WSGIServer | None = None

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A value read at each scrape."""
        self._gauges.add(name, documentation, read)

    def observe(self, method: str, status: str, seconds: float) -> None:
        self.requests.labels(method, status).inc()
        self.latency.labels(method).observe(seconds)

    def serve(self, listen: str) -> int:
        """Serve /metrics on ``host:port``; returns the port (``:0`` picks a free one)."""
        host, _, port = listen.rpartition(":")
        try:
            self._server, _thread = start_http_server(
                int(port), addr=host or "127.0.0.1", registry=self.registry
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot serve metrics on {listen}: {exc}") from exc
        return int(self._server.server_port)

    @property
    def port(self) -> int:
        """The port /metrics is served on (0 when not served)."""
        return int(self._server.server_port) if self._server is not None else 0

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

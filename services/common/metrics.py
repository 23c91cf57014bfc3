"""Prometheus metrics, on an HTTP port of their own (off unless a listen address is set).

Each service has its own registry (no process-global state). Request counts and
latencies come from the request interceptor; other events (events appended,
deliveries) are counters the service increments where they happen; everything
that is a state rather than an event (lags, positions, connections) is read when
Prometheus scrapes, from callbacks the service registers, except values that need
the store: those are read in the background (:meth:`Metrics.stored_gauge`), so that
a scrape answers at once even while the store is unreachable or slow. The names,
types and labels of every metric are listed in docs/operations.md ("Metrics").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.common.config import ConfigError
from services.common.failurelog import FailureLog

log = structlog.get_logger(__name__)

#: What the authentication throttle keys on (``auth_throttled_total{key}``), see limits.py.
THROTTLE_KEYS = ("peer", "token")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Read = Callable[[], float | None]
T = TypeVar("T")


def shared_reading(read: Callable[[], T], seconds: float = 1.0) -> Callable[[], T]:
    """``read``, called at most once every ``seconds``: the gauges of one scrape that
    show parts of one costly reading (a lag: events and seconds) share it."""
    lock = threading.Lock()
    last: list[tuple[float, T]] = []

    def shared() -> T:
        with lock:
            now = time.monotonic()
            if not last or now - last[0][0] >= seconds:
                last[:] = [(now, read())]
            return last[0][1]

    return shared


class _Readings(Collector):
    """Values read at scrape time: gauges, and counters kept by the service itself."""

    def __init__(self) -> None:
        self._readings: list[tuple[str, str, Read, bool]] = []
        self._failures: dict[str, FailureLog] = {}

    def add(self, name: str, documentation: str, read: Read, *, counter: bool = False) -> None:
        self._readings.append((name, documentation, read, counter))

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        for name, documentation, read, counter in self._readings:
            family = (
                CounterMetricFamily(name, documentation)
                if counter
                else GaugeMetricFamily(name, documentation)
            )
            failures = self._failures.setdefault(
                name, FailureLog("metrics.read_failed", "metrics.read_again", logger=log)
            )
            try:
                value = read()
            except Exception as exc:  # one unreadable value must not fail the whole scrape
                failures.failed(metric=name, error=f"{type(exc).__name__}: {exc}")
                value = None
            else:
                failures.succeeded(metric=name)
            if value is not None:
                family.add_metric([], value)
            yield family


class _StoredReadings:
    """Values that need the store, read one after another in a thread of their own every
    ``interval`` seconds; a scrape shows the last value read, or nothing once it is older
    than ``max_age`` (the store stopped answering). While reads fail, one warning for all of
    them (``metrics.read_failed``, naming the values), again at most every
    :data:`~services.common.failurelog.REMINDER_SECONDS`, and ``metrics.read_again`` once
    they are all read again."""

    def __init__(
        self, interval: float, max_age: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval = interval
        self._failures = FailureLog(
            "metrics.read_failed", "metrics.read_again", logger=log, clock=clock
        )
        self._max_age = max_age
        self._reads: list[tuple[str, Read]] = []
        self._values: dict[str, tuple[float, float | None]] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, name: str, read: Read) -> Read:
        self._reads.append((name, read))
        return lambda: self._last(name)

    def start(self) -> None:
        """Read every value once now, then in the background."""
        if self._thread is not None or not self._reads:
            return
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="metrics-store", daemon=True)
        self._thread.start()

    def _last(self, name: str) -> float | None:
        found = self._values.get(name)
        if found is None or time.monotonic() - found[0] > self._max_age:
            return None
        return found[1]

    def refresh(self) -> None:
        failed: list[str] = []
        error = ""
        for name, read in list(self._reads):
            try:
                value = read()
            except Exception as exc:  # the store is down: the value goes stale, then absent
                failed.append(name)
                error = error or f"{type(exc).__name__}: {exc}"
                continue
            self._values[name] = (time.monotonic(), value)
        if failed:
            self._failures.failed(metrics=failed, error=error)
        else:
            self._failures.succeeded()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            self.refresh()

    def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


class Metrics:
    def __init__(
        self, service: str, *, store_interval: float = 1.0, store_max_age: float = 10.0
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            f"{service}_requests",
            "gRPC requests by method and status",
            ["method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{service}_request_seconds",
            "gRPC request latency by method and status",
            ["method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.auth_throttled = Counter(
            f"{service}_auth_throttled",
            "requests refused after too many failed authentications, by key (peer, token)",
            ["key"],
            registry=self.registry,
        )
        for key in THROTTLE_KEYS:
            self.auth_throttled.labels(key)
        self._readings = _Readings()
        self.registry.register(self._readings)
        self._stored = _StoredReadings(store_interval, store_max_age)
        self._server: WSGIServer | None = None

    def counter(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        *,
        known: Sequence[Sequence[str]] = (),
    ) -> Counter:
        """A counter of this service's registry (exposed as ``<name>_total``).

        ``known``: the label values it may take, exposed at 0 from the start. A series that
        first appears at 1 has no earlier sample, so ``increase()`` and ``rate()`` miss that
        first count: an alert on the first dead letter would never fire.
        """
        counter = Counter(name, documentation, list(labels), registry=self.registry)
        for values in known:
            counter.labels(*values)
        return counter

    def gauge(self, name: str, documentation: str, read: Read) -> None:
        """A value read at each scrape; ``None`` (or a failed read) leaves the sample out."""
        self._readings.add(name, documentation, read)

    def stored_gauge(self, name: str, documentation: str, read: Read) -> None:
        """A gauge that needs the store: ``read`` runs in the background (every second,
        once /metrics is served), never in a scrape; a scrape shows its last value, left
        out once it is 10 s old."""
        self._readings.add(name, documentation, self._stored.add(name, read))

    def counter_reading(self, name: str, documentation: str, read: Read) -> None:
        """A counter the service keeps itself, read at each scrape (``<name>_total``)."""
        self._readings.add(name, documentation, read, counter=True)

    def observe(self, method: str, status: str, seconds: float) -> None:
        self.requests.labels(method, status).inc()
        self.latency.labels(method, status).observe(seconds)

    def serve(self, listen: str) -> int:
        """Serve /metrics on ``host:port``; returns the port (``:0`` picks a free one)."""
        host, _, port = listen.rpartition(":")
        try:
            self._server, _thread = start_http_server(
                int(port), addr=host or "127.0.0.1", registry=self.registry
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot serve metrics on {listen}: {exc}") from exc
        self._stored.start()
        return int(self._server.server_port)

    @property
    def port(self) -> int:
        """The port /metrics is served on (0 when not served)."""
        return int(self._server.server_port) if self._server is not None else 0

    def close(self) -> None:
        self._stored.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

"""Load drivers: a closed loop and an open (paced) loop over worker threads.

A *worker* is a callable that performs one operation (one RPC, one append) and
raises on failure. Each driver thread owns exactly one worker, so a worker may keep
state (its stub, its incidents) without locking. Latencies are measured with
``time.perf_counter``:

- closed loop: every thread calls its worker back to back, so the number of
  threads is the number of requests in flight; the latency of a call is from its
  start to its end.
- open loop: calls are scheduled at fixed intervals (``rate`` per second) whatever
  the previous calls did; a free thread takes the next slot, sleeps until its
  scheduled time and sends. The latency is measured from the *scheduled* time, so a
  stall that delays later sends counts against them too (no coordinated omission).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import grpc

Worker = Callable[[], object]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted values; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class Result:
    """What one driver run measured. Latencies are in seconds, successful calls only."""

    elapsed: float
    latencies: list[float]
    errors: Counter[str] = field(default_factory=Counter)
    late_sends: int = 0  # open loop: sends that left more than 1 ms after their slot

    def __post_init__(self) -> None:
        self.latencies.sort()

    @property
    def calls(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.calls / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies, 50) * 1000

    @property
    def p90_ms(self) -> float:
        return percentile(self.latencies, 90) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies, 99) * 1000

    @property
    def max_ms(self) -> float:
        return self.latencies[-1] * 1000 if self.latencies else math.nan

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def describe_errors(self) -> str:
        return ", ".join(f"{name} x{n}" for name, n in self.errors.most_common(4))


def merged(parts: Sequence[Result]) -> Result:
    """One result of drivers that ran at the same time (in several processes).

    The elapsed time is the longest part's, so the rate is the calls of all parts
    over the window they all ran in.
    """
    return Result(
        max((p.elapsed for p in parts), default=0.0),
        [x for p in parts for x in p.latencies],
        sum((p.errors for p in parts), Counter()),
        late_sends=sum(p.late_sends for p in parts),
    )


def joined(parts: Sequence[Result]) -> Result:
    """One result of drivers that ran one after the other (rounds of one measurement):
    the elapsed times add up, so the rate is the calls of all rounds over their time."""
    return Result(
        sum(p.elapsed for p in parts),
        [x for p in parts for x in p.latencies],
        sum((p.errors for p in parts), Counter()),
        late_sends=sum(p.late_sends for p in parts),
    )


def error_name(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError):
        call = cast(grpc.Call, exc)  # the sync stack's errors are also Calls
        return f"{call.code().name}: {call.details()}"[:120]
    return f"{type(exc).__name__}: {exc}"[:120]


class _Budget:
    """A shared count of operations still allowed (None: unlimited)."""

    def __init__(self, limit: int | None) -> None:
        self._left = limit
        self._lock = threading.Lock()

    def take(self) -> bool:
        if self._left is None:
            return True
        with self._lock:
            if self._left <= 0:
                return False
            self._left -= 1
            return True


def _run_threads(targets: Sequence[Callable[[], None]]) -> None:
    threads = [
        threading.Thread(target=t, name=f"bench-{n}", daemon=True) for n, t in enumerate(targets)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def closed_loop(
    workers: Sequence[Worker], *, duration: float | None = None, calls: int | None = None
) -> Result:
    """Each worker in its own thread, back to back, until ``duration`` or ``calls`` ran out."""
    if duration is None and calls is None:
        raise ValueError("closed_loop needs a duration or a number of calls")
    budget = _Budget(calls)
    start_gate = threading.Barrier(len(workers) + 1)
    per_thread: list[list[float]] = [[] for _ in workers]
    errors: list[Counter[str]] = [Counter() for _ in workers]
    deadline: list[float] = [math.inf]  # set once, before the gate opens

    def drive(n: int) -> Callable[[], None]:
        worker, latencies, errs = workers[n], per_thread[n], errors[n]

        def loop() -> None:
            start_gate.wait()
            clock = time.perf_counter
            while clock() < deadline[0] and budget.take():
                began = clock()
                try:
                    worker()
                except Exception as exc:
                    errs[error_name(exc)] += 1
                    continue
                latencies.append(clock() - began)

        return loop

    targets = [drive(n) for n in range(len(workers))]
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    deadline[0] = began + duration if duration is not None else math.inf
    start_gate.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    return Result(elapsed, [x for part in per_thread for x in part], sum(errors, Counter()))


def open_loop(workers: Sequence[Worker], *, rate: float, duration: float) -> Result:
    """Sends scheduled every 1/rate seconds for ``duration``; latency from the scheduled time.

    ``len(workers)`` bounds the calls in flight: if all are busy, the next slot's send
    is late, and that lateness is part of its latency.
    """
    slots = int(rate * duration)
    interval = 1.0 / rate
    lock = threading.Lock()
    next_slot = [0]
    per_thread: list[list[float]] = [[] for _ in workers]
    errors: list[Counter[str]] = [Counter() for _ in workers]
    late = [0 for _ in workers]
    start_at = time.perf_counter() + 0.2  # time for the threads to start

    def drive(n: int) -> Callable[[], None]:
        worker, latencies, errs = workers[n], per_thread[n], errors[n]

        def loop() -> None:
            clock = time.perf_counter
            while True:
                with lock:
                    slot = next_slot[0]
                    next_slot[0] += 1
                if slot >= slots:
                    return
                scheduled = start_at + slot * interval
                wait = scheduled - clock()
                if wait > 0:
                    time.sleep(wait)
                elif wait < -0.001:
                    late[n] += 1
                try:
                    worker()
                except Exception as exc:
                    errs[error_name(exc)] += 1
                    continue
                latencies.append(clock() - scheduled)

        return loop

    _run_threads([drive(n) for n in range(len(workers))])
    elapsed = time.perf_counter() - start_at
    return Result(
        elapsed,
        [x for part in per_thread for x in part],
        sum(errors, Counter()),
        late_sends=sum(late),
    )


# ------------------------------------------------------------------------ gRPC clients

CHANNEL_MODES = ("shared", "per-thread")


class Channels:
    """Client channels for ``n`` worker threads: one shared channel, or one per thread.

    Per-thread channels get a local subchannel pool, so each is its own HTTP/2
    connection (otherwise gRPC would share one connection between equal channels).
    """

    def __init__(self, target: str, n: int, mode: str) -> None:
        if mode not in CHANNEL_MODES:
            raise ValueError(mode)
        self.mode = mode
        if mode == "shared":
            one = grpc.insecure_channel(target)
            self._owned = [one]
            self.for_thread = [one] * n
        else:
            options = [("grpc.use_local_subchannel_pool", 1)]
            self._owned = [grpc.insecure_channel(target, options=options) for _ in range(n)]
            self.for_thread = list(self._owned)
        for channel in self._owned:
            grpc.channel_ready_future(channel).result(timeout=10)

    def close(self) -> None:
        for channel in self._owned:
            channel.close()

    def __enter__(self) -> Channels:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

"""CPU time of the bench's processes over a window: cores used, per group of processes.

A window opens as a load's closed loop starts and closes as it ends
(``loadgen.run_many``'s ``on_phase``): the CPU time of the measured server processes
("replicas": the ledger processes), of the load processes, of PostgreSQL's, and of the
whole machine, so that the figures can be read against the machine's cores.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psutil

from bench import loadgen


@dataclass(frozen=True)
class CpuUse:
    """Cores used (CPU seconds per second of wall-clock time) during one window."""

    seconds: float
    replicas: float
    busiest: float  # the busiest replica alone
    load: float
    postgres: float
    machine: float  # every process on the machine, these and any other

    @property
    def other(self) -> float:
        """Whatever else ran on the machine meanwhile (this bench process included)."""
        return max(0.0, self.machine - self.replicas - self.load - self.postgres)


@dataclass(frozen=True)
class _CpuSample:
    at: float  # time.perf_counter()
    machine: float
    processes: dict[int, float]


def _busy_seconds() -> float:
    times = psutil.cpu_times()
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))


def _process_seconds(pids: Iterable[int]) -> dict[int, float]:
    seconds = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # gone, or not ours to read: left out of both samples
        seconds[pid] = times.user + times.system
    return seconds


def _postgres_pids() -> list[int]:
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]


def _sample(pids: Iterable[int]) -> _CpuSample:
    return _CpuSample(time.perf_counter(), _busy_seconds(), _process_seconds(pids))


def _cores(start: _CpuSample, end: _CpuSample, pids: Iterable[int]) -> float:
    elapsed = end.at - start.at
    used = sum(
        end.processes[p] - start.processes[p]
        for p in pids
        if p in start.processes and p in end.processes
    )
    return used / elapsed if elapsed > 0 else 0.0


class CpuWindow:
    """Samples CPU time as the closed loop starts and as it ends (run_many's on_phase)."""

    def __init__(self, replica_pids: Sequence[int]) -> None:
        self.replica_pids = list(replica_pids)
        self.load_pids: list[int] = []
        self.postgres_pids: list[int] = []
        self.start: _CpuSample | None = None
        self.end: _CpuSample | None = None

    def on_phase(self, phase: str, load_pids: list[int]) -> None:
        if phase == loadgen.CLOSED:
            self.load_pids = list(load_pids)
            self.postgres_pids = _postgres_pids()
            self.start = _sample(self._pids())
        elif phase == loadgen.PACED:
            self.end = _sample(self._pids())

    def _pids(self) -> list[int]:
        return [*self.replica_pids, *self.load_pids, *self.postgres_pids]

    def use(self) -> CpuUse:
        if self.start is None or self.end is None:
            raise RuntimeError("the closed loop was not sampled")
        start, end = self.start, self.end
        elapsed = end.at - start.at
        return CpuUse(
            seconds=elapsed,
            replicas=_cores(start, end, self.replica_pids),
            busiest=max(_cores(start, end, [pid]) for pid in self.replica_pids),
            load=_cores(start, end, self.load_pids),
            postgres=_cores(start, end, self.postgres_pids),
            machine=(end.machine - start.machine) / elapsed if elapsed > 0 else 0.0,
        )

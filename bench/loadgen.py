"""Client load from separate processes.

The agency systems that call the ledger run on other machines. Driving a server
from threads of its own process would make the clients' Python work compete with
the server for one interpreter lock and charge it to the server, so the echo and
the ledger are both driven from child processes (spawned, so they share nothing
with the server but the loopback network).

``run`` drives one target from one child process. ``run_many`` drives several
child processes at once, in step: each phase (warm-up, closed loop, paced) starts
in all of them together, and the caller is told when each phase starts, so it can
sample what the machine does meanwhile.
"""

from __future__ import annotations

import multiprocessing
import queue
import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any, TypeAlias

import grpc

from bench.harness import Channels, Result, closed_loop, merged, open_loop
from incidentledger.v1 import ledger_service_pb2_grpc as api_grpc

# The phases of a load, in order; run_many's caller hears of each as it starts.
WARMUP, CLOSED, PACED = "warm-up", "closed loop", "paced"
PHASES = (WARMUP, CLOSED, PACED)
START_SECONDS = 60.0  # how long a child process may take to start and connect


@dataclass(frozen=True)
class Load:
    """What one child process runs against ``target`` (or ``targets``)."""

    kind: str  # "echo" or "ledger"
    target: str
    clients: int
    mode: str  # channel mode, see harness.Channels
    warmup: float
    duration: float
    paced_rate: float = 0.0
    paced_duration: float = 0.0
    tokens: dict[str, Any] = field(default_factory=dict)  # agency -> bearer metadata
    assigned: list[list[list[Any]]] = field(default_factory=list)  # per client: [name, version]
    # Several servers (replicas): client n of this process is client first_client + n
    # of the whole load, and connects to targets[(first_client + n) % len(targets)].
    targets: tuple[str, ...] = ()
    first_client: int = 0

    def client_targets(self) -> list[str]:
        targets = self.targets or (self.target,)
        return [targets[(self.first_client + n) % len(targets)] for n in range(self.clients)]


@dataclass
class LoadResult:
    closed: Result
    paced: Result | None
    sent: Counter[str]
    acked: int = 0  # ledger commands acknowledged, in every phase (warm-up included)
    failed: int = 0  # ledger commands that failed, in every phase
    versions: dict[str, int] = field(default_factory=dict)  # incident -> last acked version


# What run_many's children send back: (index, result or None, traceback when None).
Results: TypeAlias = "Queue[tuple[int, LoadResult | None, str]]"


def run(load: Load) -> LoadResult:
    """Run ``load`` in a fresh child process and return what it measured."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        result: LoadResult = pool.apply(_drive, (load,))
    return result


def run_many(
    loads: Sequence[Load], on_phase: Callable[[str, list[int]], None] | None = None
) -> list[LoadResult]:
    """Run each load in its own child process, the phases started together in all.

    ``on_phase(phase, pids)`` is called in this process as each phase starts, with the
    process ids of the children. A child that fails makes this raise RuntimeError.
    """
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(loads) + 1)
    results: Results = context.Queue()
    longest = max(max(ld.warmup, ld.duration, ld.paced_duration) for ld in loads)
    timeout = START_SECONDS + longest + 30.0
    processes = [
        context.Process(
            target=_drive_in_step,
            args=(n, load, barrier, results, timeout),
            name=f"bench-load-{n}",
            daemon=True,
        )
        for n, load in enumerate(loads)
    ]
    for process in processes:
        process.start()
    try:
        pids = [p.pid for p in processes if p.pid is not None]
        for phase in PHASES:
            try:
                barrier.wait(timeout)
            except threading.BrokenBarrierError:
                raise RuntimeError(_failure(results, processes)) from None
            if on_phase is not None:
                on_phase(phase, pids)
        collected: dict[int, LoadResult] = {}
        deadline = time.monotonic() + timeout
        while len(collected) < len(loads):
            try:
                n, result, problem = results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError("a load process sent no result in time") from None
            if result is None:
                raise RuntimeError(f"load process {n} failed:\n{problem}")
            collected[n] = result
        return [collected[n] for n in range(len(loads))]
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()


def combined(results: Sequence[LoadResult]) -> LoadResult:
    """The results of processes that ran together, as one load."""
    paced = [r.paced for r in results if r.paced is not None]
    versions: dict[str, int] = {}
    for r in results:
        versions.update(r.versions)
    return LoadResult(
        closed=merged([r.closed for r in results]),
        paced=merged(paced) if paced else None,
        sent=sum((r.sent for r in results), Counter[str]()),
        acked=sum(r.acked for r in results),
        failed=sum(r.failed for r in results),
        versions=versions,
    )


def _failure(
    results: Results,
    processes: Sequence[BaseProcess],
) -> str:
    """Why a load process broke the barrier (its traceback, when it sent one)."""
    try:
        n, _, problem = results.get(timeout=5)
    except queue.Empty:
        codes = ", ".join(f"{p.name}: exit {p.exitcode}" for p in processes)
        return f"a load process stopped without a word ({codes})"
    return f"load process {n} failed:\n{problem}"


def _drive_in_step(
    n: int,
    load: Load,
    barrier: Barrier,
    results: Results,
    timeout: float,
) -> None:
    """Child process of run_many: the load, waiting for the others before each phase."""
    try:
        result = _drive(load, lambda: barrier.wait(timeout))
    except threading.BrokenBarrierError:
        results.put((n, None, "another load process failed first"))
    except Exception:
        barrier.abort()  # the parent and the other children stop waiting
        results.put((n, None, traceback.format_exc()))
    else:
        results.put((n, result, ""))


def _no_sync() -> None:
    """run's single child waits for nobody."""


def _thread_channels(load: Load, stack: ExitStack) -> list[grpc.Channel]:
    """One channel per client thread, each to the target it is given."""
    wanted = load.client_targets()
    pools = {
        target: stack.enter_context(Channels(target, wanted.count(target), load.mode))
        for target in dict.fromkeys(wanted)
    }
    taken: Counter[str] = Counter()
    channels = []
    for target in wanted:
        channels.append(pools[target].for_thread[taken[target]])
        taken[target] += 1
    return channels


def _drive(load: Load, sync: Callable[[], object] = _no_sync) -> LoadResult:
    # Imported here: the child builds its own workers from the description.
    from bench import scenarios

    with ExitStack() as stack:
        channels = _thread_channels(load, stack)
        if load.kind == "echo":
            workers: list[Any] = scenarios.echo_workers(channels)
            mixes: list[scenarios.CommandMix] = []
        else:
            mixes = [
                scenarios.CommandMix(
                    stub=api_grpc.LedgerServiceStub(channel),
                    md=load.tokens,
                    rng=random.Random(load.first_client + n),
                    assigned=load.assigned[n],
                )
                for n, channel in enumerate(channels)
            ]
            workers = list(mixes)
        sync()
        closed_loop(workers, duration=load.warmup)
        for mix in mixes:
            mix.sent.clear()
        sync()
        closed = closed_loop(workers, duration=load.duration)
        sent = sum((m.sent for m in mixes), Counter[str]())
        sync()
        paced = None
        if load.paced_rate > 0:
            paced = open_loop(workers, rate=load.paced_rate, duration=load.paced_duration)
    versions: dict[str, int] = {}
    for mix in mixes:
        versions.update(mix.versions())
    return LoadResult(
        closed,
        paced,
        sent,
        acked=sum(m.acked for m in mixes),
        failed=sum(m.failed for m in mixes),
        versions=versions,
    )

"""Client load from a separate process.

The agency systems that call the ledger run on other machines. Driving a server
from threads of its own process would make the clients' Python work compete with
the server for one interpreter lock and charge it to the server, so the echo and
the ledger are both driven from a child process (spawned, so it shares nothing
with the server but the loopback network).
"""

from __future__ import annotations

import multiprocessing
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.harness import Channels, Result, closed_loop, open_loop
from incidentledger.v1 import ledger_service_pb2_grpc as api_grpc


@dataclass(frozen=True)
class Load:
    """What the child process runs against ``target``."""

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


@dataclass
class LoadResult:
    closed: Result
    paced: Result | None
    sent: Counter[str]


def run(load: Load) -> LoadResult:
    """Run ``load`` in a fresh child process and return what it measured."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        result: LoadResult = pool.apply(_drive, (load,))
    return result


def _drive(load: Load) -> LoadResult:
    # Imported here: the child builds its own workers from the description.
    from bench import scenarios

    with Channels(load.target, load.clients, load.mode) as channels:
        if load.kind == "echo":
            workers: list[Any] = scenarios.echo_workers(channels)
            mixes: list[scenarios.CommandMix] = []
        else:
            mixes = [
                scenarios.CommandMix(
                    stub=api_grpc.LedgerServiceStub(channel),
                    md=load.tokens,
                    rng=random.Random(n),
                    assigned=load.assigned[n],
                )
                for n, channel in enumerate(channels.for_thread)
            ]
            workers = list(mixes)
        closed_loop(workers, duration=load.warmup)
        for mix in mixes:
            mix.sent.clear()
        closed = closed_loop(workers, duration=load.duration)
        sent = sum((m.sent for m in mixes), Counter[str]())
        paced = None
        if load.paced_rate > 0:
            paced = open_loop(workers, rate=load.paced_rate, duration=load.paced_duration)
    return LoadResult(closed, paced, sent)

"""The situation room under load (``make bench``, part ``page``).

The whole stack as ``make run`` starts it (``python -m services.run`` on free ports: NATS,
the ledger with its relay, the notifier and the situation room, each a process of its own),
on an embedded SQLite store in a temporary directory:

1. The board's first render: ``incidents`` reported (by 8 client threads), then an officer
   signs in over HTTP and asks for ``/board``; the first answer's time (the page asks the
   ledger for one page of 200, newest first), then the median of the next ones.
2. Event streams: ``streams`` SSE streams (``/events``) held open by a receiver process (one
   asyncio loop, httpx), while a sender reports incidents at ``rate`` per second for
   ``seconds``; each stream must receive every event. Latency: from each event's record
   time (the ledger's clock, in the command's answer) to its receipt on a stream, over all
   streams (the same machine's clock on both ends).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from bench.harness import percentile
from bench.scenarios import free_port
from incidentledger_client import LedgerClient
from incidentledger_client.addresses import listening
from services.common.config import PROJECT_ROOT

#: How long the stack may take to come up (a few seconds here; slower on a busy machine).
START_SECONDS = 120.0
#: Settings of the caller that the stack must not inherit (its store, ports, NATS).
_NOT_INHERITED = ("LEDGER_", "NOTIFIER_", "NATS_", "POSTGRES_", "SQLITE_", "SITUATION_ROOM_")
#: How long the streams may take to receive the last event sent (then what is missing counts).
LAST_EVENT_SECONDS = 30.0
KECAMATAN = ("ipuh", "kota_mukomuko", "penarik", "air_rami", "lubuk_pinang", "v_koto")


@dataclass(frozen=True)
class Stack:
    ledger: str
    room: str
    tokens: dict[str, str]


@dataclass
class PageRun:
    incidents: int
    prepare_seconds: float
    first_ms: float
    warm_ms: float
    board_bytes: int
    streams: int
    rate: float
    seconds: float
    sent: int
    send_late: int
    send_seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    missing: int = 0  # (stream, event) pairs never received
    resyncs: int = 0  # streams told to reload (fell behind)

    @property
    def p50_ms(self) -> float:
        return percentile(sorted(self.latencies_ms), 0.50) if self.latencies_ms else float("nan")

    @property
    def p99_ms(self) -> float:
        return percentile(sorted(self.latencies_ms), 0.99) if self.latencies_ms else float("nan")

    @property
    def max_ms(self) -> float:
        return max(self.latencies_ms) if self.latencies_ms else float("nan")


@contextmanager
def stack(workdir: Path) -> Iterator[Stack]:
    """``python -m services.run`` on free ports in ``workdir``; stopped (SIGTERM) after."""
    ledger, notifier, nats, room = (free_port() for _ in range(4))
    env = {k: v for k, v in os.environ.items() if not k.startswith(_NOT_INHERITED)}
    env |= {
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "gen")]),
        "LEDGER_DATA_DIR": str(workdir),
        "LEDGER_LISTEN": f"127.0.0.1:{ledger}",
        "NOTIFIER_LISTEN": f"127.0.0.1:{notifier}",
        "LEDGER_NATS_PORT": str(nats),
        "SITUATION_ROOM_LISTEN": f"127.0.0.1:{room}",
        "LEDGER_LOG_LEVEL": "WARNING",
        "LEDGER_LOG_FORMAT": "json",
    }
    tokens_file = workdir / "credentials" / "dev-tokens.yaml"
    addresses = [f"127.0.0.1:{p}" for p in (ledger, notifier, room)]
    with (workdir / "stack.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.run"],
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
    try:
        deadline = time.monotonic() + START_SECONDS
        while not (tokens_file.is_file() and all(listening(a) for a in addresses)):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the stack did not start; see {workdir / 'stack.log'}")
            time.sleep(0.2)
        raw = yaml.safe_load(tokens_file.read_text("utf-8"))
        yield Stack(addresses[0], addresses[2], {a: e["token"] for a, e in raw.items()})
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def prepare(ledger: LedgerClient, count: int) -> None:
    """``count`` incidents reported, by 8 threads (each call its own request)."""

    def one(n: int) -> None:
        ledger.report(f"Bench incident {n}", "crowd_gathering", KECAMATAN[n % len(KECAMATAN)])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))


def signed_in(room: str, token: str) -> httpx.Client:
    """An HTTP client signed in to the room as the coordinator (in English)."""
    web = httpx.Client(base_url=f"http://{room}", timeout=60.0, cookies={"room_lang": "en"})
    found = re.search(r'name="csrf" value="([^"]+)"', web.get("/login").text)
    if found is None:
        raise RuntimeError("the sign-in page has no CSRF token")
    answer = web.post("/login", data={"csrf": found[1], "agency": "desk_pilkada", "token": token})
    if answer.status_code != 303:
        raise RuntimeError(f"signing in to the room failed: {answer.status_code}")
    return web


def board_render(web: httpx.Client, repeats: int) -> tuple[float, float, int]:
    """The first ``/board``'s time, the median of ``repeats`` more (ms), and its size."""
    times: list[float] = []
    size = 0
    for _ in range(repeats + 1):
        started = time.perf_counter()
        answer = web.get("/board")
        answer.raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
        size = len(answer.content)
    return times[0], statistics.median(times[1:]), size


def paced_reports(
    reporter: LedgerClient, rate: float, seconds: float
) -> tuple[dict[int, float], int, float]:
    """``rate`` reports a second for ``seconds``, each sent at its time by one of 4 threads
    (an open loop: a slow answer does not delay the next report); the record time of each
    event by position, how many were sent more than one interval late, and how long the
    sending took."""
    interval = 1.0 / rate
    late = 0
    with ThreadPoolExecutor(4) as pool:
        futures = []
        begin = time.perf_counter()
        for n in range(int(rate * seconds)):
            wait = begin + n * interval - time.perf_counter()
            if wait > 0:
                time.sleep(wait)  # pacing the sender, not waiting for an outcome
            elif wait < -interval:
                late += 1
            futures.append(pool.submit(reporter.report, f"Paced {n}", "crowd_gathering", "ipuh"))
        results = [f.result() for f in futures]
        elapsed = time.perf_counter() - begin
    recorded = {r.position: r.record_time.timestamp() for r in results if r.record_time}
    return recorded, late, elapsed


# ------------------------------------------------------------------ the receiver process


async def _follow(
    web: httpx.AsyncClient,
    ready: asyncio.Event,
    count: list[int],
    want: int,
    out: list[object],
    highest: list[int],
    n: int,
) -> None:
    """Stream ``n``: (position, receipt time) of each change; "resync" when told."""
    async with web.stream("GET", "/events") as answer:
        count[0] += 1
        if count[0] == want:
            ready.set()
        fields: dict[str, str] = {}
        async for line in answer.aiter_lines():
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.strip()
                continue
            if fields.get("event") == "change":
                out.append((int(fields["id"]), time.time()))
                highest[n] = max(highest[n], int(fields["id"]))
            elif fields.get("event") == "resync":
                out.append("resync")
            fields = {}


async def _receive(room: str, cookies: dict[str, str], streams: int, conn: object) -> None:
    limits = httpx.Limits(max_connections=streams + 10)
    timeout = httpx.Timeout(30.0, read=None)
    async with httpx.AsyncClient(
        base_url=f"http://{room}", cookies=cookies, limits=limits, timeout=timeout
    ) as web:
        ready = asyncio.Event()
        count = [0]
        arrivals: list[list[object]] = [[] for _ in range(streams)]
        highest = [0] * streams
        tasks = [
            asyncio.create_task(_follow(web, ready, count, streams, arrivals[n], highest, n))
            for n in range(streams)
        ]
        await asyncio.wait_for(ready.wait(), 60)
        conn.send("ready")  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        # The position of the last event sent: every stream is waited for until it has it.
        last: int = await loop.run_in_executor(None, conn.recv)  # type: ignore[attr-defined]
        deadline = loop.time() + LAST_EVENT_SECONDS
        while min(highest) < last and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        conn.send(arrivals)  # type: ignore[attr-defined]


def _receiver(room: str, cookies: dict[str, str], streams: int, conn: object) -> None:
    asyncio.run(_receive(room, cookies, streams, conn))


# ------------------------------------------------------------------------------- the run


def page_run(incidents: int, streams: int, rate: float, seconds: float) -> PageRun:
    """Parts 1 and 2 of the module docstring, on a stack of their own."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-page-"))
    try:
        with stack(workdir) as running:
            reporter = LedgerClient(running.ledger, running.tokens["kesbangpol"])
            started = time.perf_counter()
            prepare(reporter, incidents)
            prepared = time.perf_counter() - started
            web = signed_in(running.room, running.tokens["desk_pilkada"])
            first, warm, size = board_render(web, 5)
            cookies = dict(web.cookies)
            ours, theirs = multiprocessing.Pipe()
            receiver = multiprocessing.get_context("spawn").Process(
                target=_receiver, args=(running.room, cookies, streams, theirs), daemon=True
            )
            receiver.start()
            if not ours.poll(90) or ours.recv() != "ready":
                raise RuntimeError("the event streams did not open")
            recorded, late, elapsed = paced_reports(reporter, rate, seconds)
            last = max(recorded)
            ours.send(last)
            if not ours.poll(LAST_EVENT_SECONDS + 30):
                raise RuntimeError("the receiver did not answer")
            arrivals: list[list[object]] = ours.recv()
            receiver.join(30)
            web.close()
            reporter.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    run = PageRun(
        incidents,
        prepared,
        first,
        warm,
        size,
        streams,
        rate,
        seconds,
        len(recorded),
        late,
        elapsed,
    )
    for stream in arrivals:
        seen: set[int] = set()
        for item in stream:
            if item == "resync":
                run.resyncs += 1
                continue
            if not isinstance(item, tuple):
                raise TypeError(f"an arrival is (position, time), not {item!r}")
            position: int = item[0]
            received: float = item[1]
            if position in recorded and position not in seen:
                seen.add(position)
                run.latencies_ms.append((received - recorded[position]) * 1000)
        run.missing += sum(1 for p in recorded if p not in seen and p <= last)
    return run

"""``python -m bench [--quick] [--strict] [--only STORE] [--parts ...]``: speed as ratios.

Every speed target is a ratio to a ceiling measured in the same run, on the same
machine, so that a busy day moves both (bench/targets.py). Each part runs in the
topology it has in production, every service in a process of its own, and its section
says which. In this order:

1. Ceiling of a command: the gRPC echo (``python -m bench.echo``: a trivial unary method
   on the ledger's server stack and settings) driven by 32 client threads from a load
   process, once with one shared channel and once with a channel per thread (the
   faster setup is used for the ledger too): calls/s at saturation, then latency paced
   at 200 calls/s.
2. Append ceiling per store, in this process (a figure, not a target): load an
   Incident, add one ActionLogged event, save; then the application's whole LogAction.
3. The ledger over gRPC per store: ``python -m services.ledger`` (relay off) on a fresh
   store with prepared incidents, the same 32 clients from a load process on a command
   mix, in a closed loop (saturation), then paced at 200 commands/s; the ledger
   process's CPU time through the closed loop.
4. RSS of a ledger process (SQLite) against the number of incidents reported.

Then the fan-out, on a nats-server the bench starts (bench/fanout.py):

5. Relay per store: ``python -m services.ledger`` with the relay on, started on a
   store holding a backlog; events/s onto the stream. Its ceiling: the same messages
   published again by a plain pipelined JetStream publisher (a child process); three
   rounds of the two, one after the other, the median ratio counting.
6. End to end per store: the ledger (relay on) and ``python -m services.notifier``, a
   sender process with paced LogAction commands, a subscriber process on gRPC
   Subscribe, a receiver process registered as a webhook; latency from each event's
   record_time to its receipt.
7. NATS alone, the ceiling of 6: JetStream publish -> ordered push consumer (as live
   subscriptions) and durable pull consumer (as webhooks), at the same rate, in a child
   process.

Then reading a long history (bench/history.py):

8. Per store, a long realistic history; in a fresh child process apiece: the library's
   plain decode (the ceiling of the rebuild), projection rebuild, verify of the store,
   export to JSON Lines and verify of the export; events/s and peak RSS.

Then field intake (bench/ingest.py):

10. Per store, several field devices at once send their backlogs (``IngestReports``, 500
    new reports per call) to ``python -m services.ledger``; reports/s beside the store's
    own batched save (in this process, 500 events per transaction) and the single-command
    rate (``ReportIncident`` over gRPC, same run); a call's latency; the p99 of single
    commands paced during the ingest against their p99 alone.

Then the situation room (bench/page.py), on the whole stack as ``make run`` starts it:

11. The board's first render with 5,000 incidents (``/board`` over HTTP, signed in), and
    100 SSE event streams in a receiver process, each receiving every event while a sender
    reports 50 incidents/s; latency from each event's record time to its receipt (p99).

Then erasing one person (bench/erasure.py):

13. Per store, ``Ledger.erase_personal_data`` in this process, one person per call, with
    few then many people in the ledger, their incident of a short then long history,
    loaded from the store or in the write cache: p50 and p99 of one erasure.

Then scaling out (bench/scaleout.py):

9. PostgreSQL, the ledger as 1 and as 2 ``python -m services.ledger`` processes on one
   schema; commands/s and latency; every acknowledged command checked against the store.

Then evidence (bench/evidence.py):

12. One file (100 MB; 40 MB with ``--quick``) through the ledger's ``UploadEvidence`` and
    ``DownloadEvidence`` beside a plain object-store put and get of the same file, on a
    nats-server the bench starts; the ledger process's peak RSS during the upload against
    its RSS when idle.

The run ends with the table of targets: each figure beside its ceiling, the ratio, the
goal and PASS or MISS. The exit status is 1 when a correctness check fails (the
scale-out's store check); a missed target makes it 1 only with ``--strict`` (a run on a
busy machine still prints all its figures, and ``make bench`` stays usable).
``--only sqlite`` / ``--only postgres`` measure one store (and 9 with postgres),
``--only scaleout`` part 9 alone; ``--parts`` picks parts (e.g. ``--parts
commands,fanout``, ``--parts ingest``).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from bench import (
    erasure,
    evidence,
    fanout,
    history,
    ingest,
    page,
    report,
    scaleout,
    scaleout_report,
    scenarios,
    targets,
)
from bench.harness import CHANNEL_MODES, Result
from bench.logs import LogCount
from bench.report import (
    RESULT_HEADERS,
    RSS_GROWTH_LIMIT,
    ms,
    rate,
    result_cells,
    section,
    table,
)
from bench.stores import PG_POOL, STORES, fresh_store, postgres_problem
from bench.targets import AT_LEAST, AT_MOST, Condition, Target
from services.common.config import LedgerSettings
from services.common.logging import configure_logging
from services.common.natsserver import NatsServer
from services.common.reference import ReferenceData

# The goals (issue 20): ratios to the ceilings measured in the same run.
COMMAND_RATIO = {"sqlite": 0.5, "postgres": 0.4}  # ledger commands/s / echo calls/s
PACED_P99_RATIO = 5.0  # ledger p99 at 200 commands/s <= 5x the echo's p50 at 200 calls/s
RELAY_RATIO = 0.5  # relay events/s / plain pipelined publish of the same messages
#: Rounds of the relay and its plain publish, one after the other; the median ratio counts
#: (a single pair gave 0.44, 0.63 and 0.52 in three runs of one morning, 2026-12-07).
RELAY_ROUNDS = 3
E2E_P99_RATIO = 20.0  # commit -> subscriber (or webhook) p99 <= 20x NATS alone's p99
REBUILD_RATIO = 0.9  # projection rebuild events/s / the library's decode
KEPT_UP = 0.95  # a paced run achieved at least this share of its offered rate
INGEST_SAVE_RATIO = 0.5  # ingest reports/s / the store's batched save, events/s
INGEST_SINGLE_RATIO = 10.0  # ingest reports/s / ReportIncident calls/s
INGEST_CALL_P99_MS = 250.0  # a 500-report call's p99 on SQLite
INGEST_SINGLE_P99_RATIO = 2.0  # single-command p99 during ingest / without

#: Erasing one person (issue 14): the p50 with many people in the ledger, or with a long
#: incident history, at most this many times the p50 with few, or with a short one.
ERASURE_RATIO = 1.5

EVIDENCE_RATIO = 0.7  # evidence upload (download) MB/s / a plain object-store put (get)
EVIDENCE_RSS_MB = 30.0  # the ledger's peak RSS during an upload, above its idle RSS

PARTS = (
    "commands",
    "rss",
    "fanout",
    "history",
    "ingest",
    "page",
    "scaleout",
    "evidence",
    "erasure",
)


@dataclass(frozen=True)
class Plan:
    """How long and how hard each part runs."""

    name: str
    clients: int
    echo_seconds: float
    append_seconds: float
    append_threads: dict[str, tuple[int, ...]]
    ledger_seconds: float
    paced_rate: float
    paced_seconds: float
    incidents_per_client: int
    rss_checkpoints: tuple[int, ...]
    relay_events: int
    e2e_clients: int
    e2e_rate: float
    e2e_warmup: float
    e2e_seconds: float
    e2e_drain: float
    nats_seconds: float
    history_events: int
    page_incidents: int = 5_000
    page_streams: int = 100
    page_rate: float = 50.0
    page_seconds: float = 10.0
    evidence_mb: int = 100
    scaleout_replicas: tuple[int, ...] = (1, 2)
    scaleout_processes: int = 2  # load-generator processes, whatever the replica count


FULL = Plan(
    name="full",
    clients=32,
    echo_seconds=4.0,
    append_seconds=3.0,
    append_threads={"sqlite": (1, 4), "postgres": (1, 4, 16)},
    ledger_seconds=10.0,
    paced_rate=200.0,
    paced_seconds=15.0,
    incidents_per_client=20,
    rss_checkpoints=(1_000, 5_000, 10_000),
    relay_events=20_000,
    e2e_clients=16,
    e2e_rate=500.0,
    e2e_warmup=1.0,
    e2e_seconds=10.0,
    e2e_drain=10.0,
    nats_seconds=10.0,
    history_events=200_000,
)
QUICK = Plan(
    name="quick",
    clients=32,
    echo_seconds=1.0,
    append_seconds=0.8,
    append_threads={"sqlite": (1, 4), "postgres": (1, 4)},
    ledger_seconds=2.0,
    paced_rate=200.0,
    paced_seconds=3.0,
    incidents_per_client=5,
    rss_checkpoints=(200, 500, 1_000),
    relay_events=10_000,
    e2e_clients=16,
    e2e_rate=500.0,
    e2e_warmup=0.5,
    e2e_seconds=3.0,
    e2e_drain=3.0,
    nats_seconds=3.0,
    page_incidents=1_000,
    page_seconds=3.0,
    history_events=24_000,
    evidence_mb=40,
)
INGEST_FULL = ingest.IngestPlan(
    devices=4,
    calls=40,
    single_clients=16,
    single_seconds=5.0,
    paced_rate=50.0,
    paced_seconds=6.0,
    ceiling_batches=40,
)
INGEST_QUICK = ingest.IngestPlan(
    devices=4,
    calls=16,
    single_clients=16,
    single_seconds=2.0,
    paced_rate=50.0,
    paced_seconds=3.0,
    ceiling_batches=20,
)
# Rough appends/s, only to size the incidents prepared for each append phase.
EXPECTED_APPEND_RATE = {"sqlite": 1500.0, "postgres": 600.0}

SCALEOUT = "scaleout"
SCENARIOS = (*STORES, SCALEOUT)


def parse_parts(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"parts are among {', '.join(PARTS)}")
    return parts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (about 3 minutes)")
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 when a target is missed"
    )
    parser.add_argument(
        "--only",
        choices=SCENARIOS,
        help="one store only (parts 1-8, and 9 with postgres), or the scale-out part alone",
    )
    parser.add_argument(
        "--parts",
        type=parse_parts,
        default=PARTS,
        help=f"comma-separated, among {','.join(PARTS)} (default: all)",
    )
    return parser.parse_args(argv)


def threads(n: int) -> str:
    return f"{n} thread{'s' if n != 1 else ''}"


def header(plan: Plan, stores: list[str], parts: tuple[str, ...]) -> None:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"Incident ledger benchmark ({plan.name} run)")
    print(
        f"  {os.cpu_count()} CPUs, load average {load}; Python {platform.python_version()}, "
        f"grpcio {version('grpcio')}, eventsourcing {version('eventsourcing')}, "
        f"nats-py {version('nats-py')}"
    )
    print(f"  stores: {', '.join(stores) or 'none'}; parts: {', '.join(parts)}")


def print_logs(logs: LogCount, who: str = "the services") -> None:
    if logs.counts:
        print(f"  {who} logged (counted, not printed):")
        for line in logs.lines():
            print(f"    {line}")


def latency_cells(result: Result) -> list[str]:
    return [ms(result.p50_ms), ms(result.p99_ms), ms(result.max_ms), f"{result.calls:,}"]


# ------------------------------------------------------------------ 1-4: commands


def run_echo(plan: Plan, settings: LedgerSettings, workdir: Path) -> scenarios.EchoRun:
    section(
        f"1. Ceiling of a command, gRPC echo: python -m bench.echo ({settings.max_workers} "
        f"server threads, the ledger's server options) in its own process; {plan.clients} "
        f"client threads in a load process, closed loop {plan.echo_seconds:g} s, then paced "
        f"at {plan.paced_rate:g}/s for {plan.paced_seconds:g} s"
    )
    echo = scenarios.echo_ceiling(
        settings,
        plan.clients,
        plan.echo_seconds,
        CHANNEL_MODES,
        plan.paced_rate,
        plan.paced_seconds,
        workdir,
    )
    rows = [[f"{mode} channel, closed loop", *result_cells(r)] for mode, r in echo.closed.items()]
    rows.append([f"{echo.mode} channel, paced {plan.paced_rate:g}/s", *result_cells(echo.paced)])
    print(table(["client setup", *RESULT_HEADERS], rows))
    print(
        f"  -> echo ceiling {rate(echo.best.rate)} calls/s ({echo.cpu[echo.mode].replicas:.2f} "
        f"cores, {echo.cpu_ms_per_call:.2f} ms of CPU per call), p50 at {plan.paced_rate:g}/s "
        f"{ms(echo.paced.p50_ms)} ms; the ledger's clients use: {echo.mode} channel"
    )
    return echo


@dataclass
class StoreRun:
    """What parts 2 and 3 measured on one store."""

    store: str
    append_rate: float
    append_what: str
    command_rate: float  # in-process Ledger.execute(LogAction), best
    ledger: scenarios.LedgerRun
    # in-process Ledger.execute(ReportIncident), one thread: without and with two people
    report: Result | None = None
    report_people: Result | None = None


def run_store(
    plan: Plan, store: str, reference: ReferenceData, workdir: Path, mode: str
) -> StoreRun:
    section(
        f"2. Append ceiling, {store} (a figure): in this process, fresh store, "
        f"{plan.append_seconds:g} s each"
    )
    print(
        "  raw append = repository.get(incident) + Incident.log_action(...) + Ledger.save(incident)"
    )
    print(
        "  Ledger.execute(LogAction) = the whole application command (input checks, "
        "fingerprint, idempotency record saved with the event)"
    )
    print(
        "  Ledger.execute(ReportIncident), naming two people = each sealed under a key of "
        "their own, the keys stored wrapped (docs/personal-data.md)"
    )
    with fresh_store(store, workdir / "append") as env:
        rows = scenarios.append_ceiling(
            env,
            reference,
            plan.append_threads[store],
            plan.append_seconds,
            EXPECTED_APPEND_RATE[store],
        )
    print(
        table(
            ["what", "threads", *RESULT_HEADERS],
            [[r.what, str(r.threads), *result_cells(r.result)] for r in rows],
        )
    )
    raw = max((r for r in rows if r.what == scenarios.RAW), key=lambda r: r.result.rate)
    command = max((r for r in rows if r.what == scenarios.COMMAND), key=lambda r: r.result.rate)
    reports = {
        r.what: r.result for r in rows if r.what in (scenarios.REPORT, scenarios.REPORT_PEOPLE)
    }

    section(
        f"3. Ledger over gRPC, {store}: python -m services.ledger (relay off) in its own "
        f"process; {plan.clients} clients ({mode} channel) in a load process, closed loop "
        f"{plan.ledger_seconds:g} s, then paced at {plan.paced_rate:g}/s for "
        f"{plan.paced_seconds:g} s"
    )
    if store == "postgres":
        print(f"  PostgreSQL pool: {PG_POOL}")
    with fresh_store(store, workdir / "ledger") as env:
        run = scenarios.ledger_over_grpc(
            workdir / "ledger" / "data",
            env,
            reference,
            plan.clients,
            mode,
            plan.ledger_seconds,
            plan.paced_rate,
            plan.paced_seconds,
            plan.incidents_per_client,
        )
    total = sum(run.sent.values()) or 1
    mix = ", ".join(f"{name} {n / total:.0%}" for name, n in run.sent.most_common())
    print(
        f"  {run.prepared} incidents prepared in ASSIGNED (3 events each); closed-loop mix: {mix}"
    )
    print(
        table(
            ["load", *RESULT_HEADERS, "late sends"],
            [
                ["closed loop", *result_cells(run.closed), "-"],
                [
                    f"paced {plan.paced_rate:g}/s",
                    *result_cells(run.paced),
                    str(run.paced.late_sends),
                ],
            ],
        )
    )
    print(
        f"  paced latency is measured from each command's scheduled send time; in the closed "
        f"loop the ledger process used {run.cpu.replicas:.2f} cores ("
        f"{run.cpu_ms_per_command:.2f} ms of CPU per command), the load process "
        f"{run.cpu.load:.2f}, PostgreSQL {run.cpu.postgres:.2f}, the machine "
        f"{run.cpu.machine:.2f} of {os.cpu_count()}"
    )
    return StoreRun(
        store=store,
        append_rate=raw.result.rate,
        append_what=f"{raw.what}, {threads(raw.threads)}",
        command_rate=command.result.rate,
        ledger=run,
        report=reports.get(scenarios.REPORT),
        report_people=reports.get(scenarios.REPORT_PEOPLE),
    )


def run_rss(plan: Plan, workdir: Path, mode: str) -> list[scenarios.RssPoint]:
    section(
        "4. Server RSS against incidents: python -m services.ledger (SQLite) in its own "
        f"process, ReportIncident from {plan.clients} clients"
    )
    points, reports = scenarios.rss_against_incidents(
        workdir / "rss", plan.rss_checkpoints, plan.clients, mode
    )
    rows = [
        [f"{p.incidents:,}" if p.incidents else "after start-up", f"{p.rss_mb:.1f}"] for p in points
    ]
    print(table(["incidents", "RSS MB"], rows))
    growth, per_1000 = report.rss_growth(points)
    print(
        f"  growth {points[1].incidents:,} -> {points[-1].incidents:,} incidents: "
        f"{growth:+.1%} ({per_1000:+.2f} MB per 1,000 incidents); "
        f"reports ran at {rate(reports.rate)}/s, p99 {ms(reports.p99_ms)} ms"
    )
    return points


# ------------------------------------------------------------------ 5-7: fan-out


@dataclass
class FanoutSummary:
    relay: dict[str, fanout.RelayRun] = field(default_factory=dict)
    plain: dict[str, fanout.PlainPublish] = field(default_factory=dict)
    e2e: dict[str, fanout.EndToEndRun] = field(default_factory=dict)
    nats: fanout.NatsRun | None = None


def run_relay(
    plan: Plan, store: str, reference: ReferenceData, workdir: Path, nats: NatsServer
) -> tuple[fanout.RelayRun, fanout.PlainPublish]:
    section(
        f"5. Relay, {store}: python -m services.ledger (its relay in a child process) "
        f"started on a store holding {plan.relay_events:,} incident events not yet published; "
        "its ceiling, the same messages published again plainly (pipelined) by a child "
        f"process; {RELAY_ROUNDS} rounds, each a relay then its plain publish"
    )
    stream = fanout.stream_settings(f"relay_{store}")
    rounds: list[tuple[fanout.RelayRun, fanout.PlainPublish]] = []
    with fresh_store(store, workdir / "relay") as env:
        backlog = fanout.relay_backlog(env, reference, workdir / "relay", plan.relay_events)
        for n in range(RELAY_ROUNDS):
            data_dir = workdir / "relay" / f"data-{n}"
            if n:
                # The personal data keys the first round's ledger generated, which the
                # store's key table now names: a ledger refuses a store without them.
                shutil.copytree(workdir / "relay" / "data-0" / "keys", data_dir / "keys")
            run = fanout.relay_throughput(backlog, data_dir, nats.url, stream)
            plain = fanout.plain_publish(nats.url, stream, run.events, run.batch_size)
            fanout.delete_stream(nats.url, stream.name)
            rounds.append((run, plain))
    run, plain = median_ratio_round(rounds)
    print(
        f"  pre-filled in {run.prefill_seconds:.1f} s (sealed, projections applied, a signed "
        f"checkpoint); relay batches of {run.batch_size}; stream {stream.name} (file "
        f"storage, emptied between rounds); {len(run.tail.payload)}-byte payloads with "
        f"{len(run.tail.headers)} headers"
    )
    rows = []
    for n, (relay_run, plain_run) in enumerate(rounds, 1):
        rows.append(
            [
                f"{n}: relay in its own processes",
                f"{relay_run.events - relay_run.first_count:,}",
                f"{relay_run.elapsed:.2f}",
                rate(relay_run.rate),
                f"{relay_run.rate / plain_run.rate:.2f}",
                f"from the first {relay_run.first_count:,} on the stream to the last; "
                f"{relay_run.start_to_first:.2f} s from process start to the first; "
                f"CPU {relay_run.cpu_seconds:.1f} s (ledger, relay, encoder) from their start",
            ]
        )
        rows.append(
            [
                f"{n}: plain publish_async (ceiling)",
                f"{plain_run.events:,}",
                f"{plain_run.events / plain_run.rate:.2f}",
                rate(plain_run.rate),
                "",
                f"after the first {plain_run.warmup:,}; windows of {plain_run.window:,} (sent, "
                "then acks awaited); "
                + ", ".join(f"{w:,}: {rate(r)}/s" for w, r in plain_run.rates.items()),
            ]
        )
    print(table(["round: publisher", "events", "s", "events/s", "ratio", "notes"], rows))
    print_logs(run.logs, "the ledger process (the median round)")
    print(
        f"  -> relay {rate(run.rate)} events/s, {run.rate / plain.rate:.2f} of plain publish "
        f"(the round of median ratio)"
    )
    return run, plain


def median_ratio_round(
    rounds: Sequence[tuple[fanout.RelayRun, fanout.PlainPublish]],
) -> tuple[fanout.RelayRun, fanout.PlainPublish]:
    """The round whose relay/plain ratio is the median (of an odd number; the lower middle
    of an even one): each ratio's two figures measured one after the other, so that the
    machine's drift over the part falls on both alike."""
    ordered = sorted(rounds, key=lambda r: r[0].rate / r[1].rate)
    return ordered[(len(ordered) - 1) // 2]


def delivery_row(what: str, d: fanout.Delivery, record: bool) -> list[str]:
    result = d.from_record if record else d.from_send
    return [what, "-", *latency_cells(result), d.error or "-"]


def run_e2e(
    plan: Plan, store: str, reference: ReferenceData, workdir: Path, nats: NatsServer, mode: str
) -> fanout.EndToEndRun:
    section(
        f"6. End to end, {store}: LogAction paced at {plan.e2e_rate:g}/s for "
        f"{plan.e2e_seconds:g} s -> ledger -> relay process -> NATS -> notifier -> gRPC Subscribe "
        "and a webhook"
    )
    with fresh_store(store, workdir / "e2e") as env:
        run = fanout.end_to_end(
            workdir / "e2e",
            env,
            reference,
            nats.url,
            fanout.stream_settings(f"e2e_{store}"),
            plan.e2e_clients,
            mode,
            plan.e2e_rate,
            plan.e2e_warmup,
            plan.e2e_seconds,
            plan.incidents_per_client,
            plan.e2e_drain,
        )
    fanout.delete_stream(nats.url, fanout.stream_settings(f"e2e_{store}").name)
    print(
        "  processes: python -m services.ledger (its relay in a child process), "
        f"python -m services.notifier (SQLite store), a sender ({plan.e2e_clients} threads, "
        f"{mode} channel, after {plan.e2e_warmup:g} s of warm-up), a subscriber (agency "
        f"{scenarios.COORDINATOR}, no filter), a webhook receiver (HTTP/1.1 on loopback, "
        f"registered by {scenarios.COORDINATOR}); {run.prepared} incidents prepared in ASSIGNED"
    )
    commands = run.commands
    errors = str(commands.error_count)
    if commands.error_count:
        errors += f" ({commands.describe_errors()})"
    print(
        table(
            ["measured", "per s", "p50 ms", "p99 ms", "max ms", "count", "errors / late"],
            [
                [
                    "LogAction reply (from scheduled send)",
                    rate(commands.rate),
                    *latency_cells(commands),
                    f"{errors} / {commands.late_sends} late ({run.late_share:.1%})",
                ],
                delivery_row("record_time -> subscriber", run.subscriber, True),
                delivery_row("client send -> subscriber", run.subscriber, False),
                delivery_row("record_time -> webhook", run.webhook, True),
                delivery_row("client send -> webhook", run.webhook, False),
                ["record_time -> stored on the stream", "-", *latency_cells(run.to_stream), "-"],
                [
                    "stored on the stream -> subscriber",
                    "-",
                    *latency_cells(run.stream_to_subscriber),
                    "-",
                ],
                [
                    "stored on the stream -> webhook",
                    "-",
                    *latency_cells(run.stream_to_webhook),
                    "-",
                ],
            ],
        )
    )
    print(
        f"  received of {run.sent:,} sent: subscriber {run.subscriber.received:,}, webhook "
        f"{run.webhook.received:,} (waited up to {plan.e2e_drain:g} s after the last send); "
        f"while sending, the ledger process used {run.ledger_cores:.2f} cores, its relay's "
        f"{run.relay_cores:.2f} and the relay's encoder's {run.encoder_cores:.2f}, the notifier "
        f"{run.notifier_cores:.2f}"
    )
    print(
        "  record_time = the ledger's clock when the command created the event (just before "
        "its commit); client send = when the client thread began the LogAction call"
    )
    print_logs(run.logs)
    return run


def run_nats(plan: Plan, nats: NatsServer, template: fanout.StreamTail | None) -> fanout.NatsRun:
    section(
        f"7. NATS alone: JetStream publish -> consume, paced at {plan.e2e_rate:g}/s for "
        f"{plan.nats_seconds:g} s, in a child process"
    )
    run = fanout.nats_latency(
        nats.url,
        plan.e2e_rate,
        plan.e2e_warmup,
        plan.nats_seconds,
        template.payload if template else None,
        template.headers if template else None,
    )
    print(
        f"  one test stream (file storage), {run.payload_bytes}-byte payload with "
        f"{run.header_count} headers (a relayed ActionLogged message); each publish awaits "
        "its ack; both consumers read at the same time"
    )
    print(
        table(
            ["publish ->", "p50 ms", "p99 ms", "max ms", "count"],
            [
                ["ack", *latency_cells(run.publish)],
                ["ordered push consumer (as live Subscribe)", *latency_cells(run.ordered)],
                ["durable pull consumer, fetch 100 (as webhooks)", *latency_cells(run.pull)],
            ],
        )
    )
    return run


def run_fanout(
    plan: Plan, stores: list[str], reference: ReferenceData, workdir: Path, mode: str
) -> FanoutSummary:
    result = FanoutSummary()
    with NatsServer(workdir / "nats", log_file=workdir / "nats-server.log") as nats:
        for store in stores:
            relay, plain = run_relay(plan, store, reference, workdir / store, nats)
            result.relay[store], result.plain[store] = relay, plain
        for store in stores:
            result.e2e[store] = run_e2e(plan, store, reference, workdir / store, nats, mode)
        template = next(iter(result.relay.values())).tail if result.relay else None
        result.nats = run_nats(plan, nats, template)
    return result


# ------------------------------------------------------------------ 8-9


def run_history(
    plan: Plan, stores: list[str], reference: ReferenceData, workdir: Path
) -> list[history.HistoryRun]:
    runs = []
    for store in stores:
        section(
            f"8. Long history, {store}: {plan.history_events:,} realistic incident events "
            f"(measured at {plan.history_events // 2:,}, then at {plan.history_events:,}); "
            "each operation in a fresh child process"
        )
        with fresh_store(store, workdir / store / "history") as env:
            run = history.measure_history(
                env, reference, workdir / store / "history", plan.history_events, store
            )
        history.print_run(run)
        runs.append(run)
    return runs


def run_ingest(
    plan: ingest.IngestPlan, stores: list[str], reference: ReferenceData, workdir: Path
) -> list[ingest.IngestRun]:
    runs = []
    for store in stores:
        section(
            f"10. Field intake, {store}: {plan.devices} devices at once, {ingest.PER_CALL} new "
            f"reports per IngestReports call, {plan.calls} calls, to python -m services.ledger "
            f"(relay off); ceilings: the store's batched save in this process "
            f"({plan.ceiling_batches} transactions of {ingest.PER_CALL} events), ReportIncident "
            f"from {plan.single_clients} clients for {plan.single_seconds:g} s; single "
            f"commands paced at {plan.paced_rate:g}/s for {plan.paced_seconds:g} s, alone and "
            "during ingest"
        )
        with fresh_store(store, workdir / store / "ingest") as env:
            run = ingest.measure_ingest(plan, env, reference, workdir / store / "ingest")
        per_call = run.ingest
        print(
            table(
                ["measured", "per s", "p50 ms", "p99 ms", "max ms", "count", "errors"],
                [
                    [
                        "store's batched save (ceiling), events",
                        rate(run.ceiling),
                        "-",
                        "-",
                        "-",
                        "-",
                        "-",
                    ],
                    [
                        "ReportIncident, closed loop (single commands)",
                        rate(run.single.rate),
                        *latency_cells(run.single),
                        str(run.single.error_count),
                    ],
                    [
                        f"IngestReports, {plan.devices} devices: reports",
                        rate(run.reports_rate),
                        *latency_cells(per_call),
                        f"{per_call.error_count} ({run.refused} refused)",
                    ],
                    [
                        f"ReportIncident paced {plan.paced_rate:g}/s, alone",
                        rate(run.alone.rate),
                        *latency_cells(run.alone),
                        str(run.alone.error_count),
                    ],
                    [
                        f"ReportIncident paced {plan.paced_rate:g}/s, during ingest",
                        rate(run.during.rate),
                        *latency_cells(run.during),
                        str(run.during.error_count),
                    ],
                ],
            )
        )
        print(
            f"  the latencies of IngestReports are per call of {ingest.PER_CALL} reports; "
            f"during the paced run the devices sent "
            f"{run.during_ingest.calls * ingest.PER_CALL:,} reports in "
            f"{run.during_ingest.elapsed:.1f} s"
        )
        runs.append(run)
    return runs


def ingest_targets(runs: list[ingest.IngestRun]) -> list[Target]:
    out: list[Target] = []
    for run in runs:
        clean = (
            no_errors(run.ingest),
            Condition(f"{run.refused} reports refused", run.refused == 0),
        )
        out.append(
            Target(
                f"{run.store}: ingest reports/s",
                run.reports_rate,
                INGEST_SAVE_RATIO,
                AT_LEAST,
                run.ceiling,
                "batched save, events",
                "/s",
                clean,
            )
        )
        out.append(
            Target(
                f"{run.store}: ingest reports/s vs single commands",
                run.reports_rate,
                INGEST_SINGLE_RATIO,
                AT_LEAST,
                run.single.rate,
                "ReportIncident",
                "/s",
                (no_errors(run.single),),
            )
        )
        if run.store == "sqlite":
            out.append(
                Target(
                    f"{run.store}: {ingest.PER_CALL}-report call p99",
                    run.ingest.p99_ms,
                    INGEST_CALL_P99_MS,
                    AT_MOST,
                    unit=" ms",
                )
            )
        lasted = run.during_ingest.elapsed >= run.during.elapsed
        out.append(
            Target(
                f"{run.store}: single-command p99 during ingest",
                run.during.p99_ms,
                INGEST_SINGLE_P99_RATIO,
                AT_MOST,
                run.alone.p99_ms,
                "p99 without",
                " ms",
                (
                    Condition("the ingest outlasted the paced run", lasted),
                    no_errors(run.during),
                ),
            )
        )
    return out


def run_erasure(
    plan: erasure.ErasurePlan, stores: list[str], reference: ReferenceData, workdir: Path
) -> list[erasure.ErasureRun]:
    runs = []
    for store in stores:
        section(
            f"13. Erasing one person, {store}: Ledger.erase_personal_data in this process, one "
            f"person per call, with {plan.small:,} then {plan.large:,} people in the ledger, "
            f"their incident of {' / '.join(f'{n:,}' for n in plan.lengths)} events; the "
            "incident loaded from the store (no write cache) or cached"
        )
        with (
            fresh_store(store, workdir / store / "erasure-small") as small,
            fresh_store(store, workdir / store / "erasure-large") as large,
        ):
            run = erasure.measure_erasure(plan, store, small, large, reference)
        print(table(erasure.HEADERS, erasure.rows(run), left=3))
        print(
            f"  two stores, prepared first (setup, not measured: {run.setup_seconds:.1f} s; "
            f"{run.events:,} events in the larger); then the points' erasures in turns, one "
            "of each point again and again; CPU: this process's, its commit thread's included"
        )
        runs.append(run)
    return runs


def erasure_targets(runs: list[erasure.ErasureRun]) -> list[Target]:
    out: list[Target] = []
    for run in runs:
        plan = run.plan
        short, long = plan.lengths[0], plan.lengths[-1]
        out.append(
            Target(
                f"{run.store}: erase one person, {plan.large:,} vs {plan.small:,} people, p50",
                run.p50(plan.large, short, erasure.COLD),
                ERASURE_RATIO,
                AT_MOST,
                run.p50(plan.small, short, erasure.COLD),
                f"with {plan.small:,}",
                " ms",
            )
        )
        for how, what in ((erasure.WARM, "cached"), (erasure.COLD, "loaded")):
            out.append(
                Target(
                    f"{run.store}: erase one person, incident of {long:,} vs {short:,} "
                    f"events ({what}), p50",
                    run.p50(plan.large, long, how),
                    ERASURE_RATIO,
                    AT_MOST,
                    run.p50(plan.large, short, how),
                    f"{short:,} events",
                    " ms",
                )
            )
    return out


def run_page(plan: Plan) -> page.PageRun:
    section(
        f"11. The situation room: the board with {plan.page_incidents:,} incidents, and "
        f"{plan.page_streams} event streams at {plan.page_rate:g} events/s for "
        f"{plan.page_seconds:g} s (the whole stack as make run starts it, SQLite)"
    )
    run = page.page_run(plan.page_incidents, plan.page_streams, plan.page_rate, plan.page_seconds)
    received = len(run.latencies_ms)
    rows = [
        ["incidents reported first", f"{run.incidents:,} in {run.prepare_seconds:.1f} s"],
        ["board, first render", f"{ms(run.first_ms)} ms ({run.board_bytes:,} bytes, 200 rows)"],
        ["board, next renders (median of 5)", f"{ms(run.warm_ms)} ms"],
        [
            "events sent",
            f"{run.sent:,} in {run.send_seconds:.1f} s ({run.send_late} sent late), to "
            f"{run.streams} streams each",
        ],
        [
            "received",
            f"{received:,} of {run.sent * run.streams:,} ({run.missing} missing, "
            f"{run.resyncs} told to reload)",
        ],
        [
            "record -> receipt",
            f"p50 {ms(run.p50_ms)} ms, p99 {ms(run.p99_ms)} ms, max {ms(run.max_ms)} ms",
        ],
    ]
    print(table(["situation room", "measured"], rows, left=2))
    return run


def run_scaleout(plan: Plan, reference: ReferenceData, workdir: Path) -> list[scaleout.ReplicaRun]:
    counts = plan.scaleout_replicas
    section(
        f"9. Scale-out, postgres: the ledger as {' and as '.join(map(str, counts))} processes "
        f"on one schema; {plan.clients} clients in {plan.scaleout_processes} load processes, "
        f"closed loop {plan.ledger_seconds:g} s, then paced at {plan.paced_rate:g}/s for "
        f"{plan.paced_seconds:g} s"
    )
    load = scaleout.ScaleoutLoad(
        clients=plan.clients,
        load_processes=plan.scaleout_processes,
        warmup=min(1.0, plan.ledger_seconds / 4),
        duration=plan.ledger_seconds,
        paced_rate=plan.paced_rate,
        paced_duration=plan.paced_seconds,
        incidents_per_client=plan.incidents_per_client,
    )
    runs = []
    for count in counts:
        directory = workdir / f"scaleout-{count}"
        with fresh_store("postgres", directory) as env:
            runs.append(scaleout.run(count, load, reference, env, directory))
    scaleout_report.print_runs(plan.paced_rate, runs)
    return runs


# ------------------------------------------------------------------ the targets


def no_errors(result: Result) -> Condition:
    return Condition(f"errors {result.error_count}", result.error_count == 0)


def command_targets(plan: Plan, echo: scenarios.EchoRun, run: StoreRun) -> list[Target]:
    ledger = run.ledger
    kept = ledger.paced.rate / plan.paced_rate if plan.paced_rate else 0.0
    return [
        Target(
            f"{run.store}: commands/s at saturation",
            ledger.closed.rate,
            COMMAND_RATIO[run.store],
            AT_LEAST,
            echo.best.rate,
            "echo",
            "/s",
            (no_errors(ledger.closed),),
        ),
        Target(
            f"{run.store}: p99 at {plan.paced_rate:g} commands/s",
            ledger.paced.p99_ms,
            PACED_P99_RATIO,
            AT_MOST,
            echo.paced.p50_ms,
            "echo p50",
            " ms",
            (
                Condition(f"achieved {kept:.0%} of the rate", kept >= KEPT_UP),
                no_errors(ledger.paced),
            ),
        ),
    ]


#: What a report naming people may cost beside one naming nobody (issue 14).
PERSONAL_DATA_RATIO = 1.3


def personal_data_targets(run: StoreRun) -> list[Target]:
    """A report naming two people against one naming nobody, in the same run."""
    plain, people = run.report, run.report_people
    if plain is None or people is None:
        return []
    return [
        Target(
            f"{run.store}: report naming people, p50",
            people.p50_ms,
            PERSONAL_DATA_RATIO,
            AT_MOST,
            plain.p50_ms,
            "report naming nobody",
            " ms",
            (no_errors(people),),
        ),
        Target(
            f"{run.store}: reports naming people/s",
            people.rate,
            round(1 / PERSONAL_DATA_RATIO, 2),
            AT_LEAST,
            plain.rate,
            "reports naming nobody",
            "/s",
            (no_errors(people),),
        ),
    ]


def fanout_targets(plan: Plan, fan: FanoutSummary) -> list[Target]:
    out: list[Target] = []
    for store, relay in fan.relay.items():
        out.append(
            Target(
                f"{store}: relay events/s",
                relay.rate,
                RELAY_RATIO,
                AT_LEAST,
                fan.plain[store].rate,
                "plain publish",
                "/s",
            )
        )
    nats_p99 = fan.nats.ordered.p99_ms if fan.nats else math.nan
    for store, e2e in fan.e2e.items():
        late = Condition(
            f"late sends {e2e.late_share:.1%} <= {fanout.LATE_SHARE_LIMIT:.0%}",
            e2e.late_share <= fanout.LATE_SHARE_LIMIT,
        )
        for channel, d in (("gRPC subscriber", e2e.subscriber), ("webhook", e2e.webhook)):
            arrived = Condition(f"{d.received:,}/{e2e.sent:,} arrived", d.received == e2e.sent)
            conditions = [late, arrived, no_errors(e2e.commands)]
            if d.error:
                conditions.append(Condition(d.error[:60], False))
            out.append(
                Target(
                    f"{store}: commit -> {channel} p99 at {plan.e2e_rate:g}/s",
                    d.from_record.p99_ms,
                    E2E_P99_RATIO,
                    AT_MOST,
                    nats_p99,
                    "NATS alone",
                    " ms",
                    tuple(conditions),
                )
            )
    return out


def history_targets(runs: list[history.HistoryRun]) -> list[Target]:
    out: list[Target] = []
    for run in runs:
        decode = run.full[history.DECODE]
        for operation in history.TARGETED:
            measured = run.full[operation]
            clean = []
            if measured.detail and operation != history.EXPORT:
                clean.append(Condition(measured.detail, "DIVERGENCE" not in measured.detail))
            if operation == history.REBUILD:
                out.append(
                    Target(
                        f"{run.store}: projection rebuild",
                        measured.rate,
                        REBUILD_RATIO,
                        AT_LEAST,
                        decode.rate,
                        "library decode",
                        "/s",
                    )
                )
            else:  # kept from before the ratios: absolute rates
                out.append(
                    Target(
                        f"{run.store}: {history.LABELS[operation]}",
                        measured.rate,
                        history.HISTORY_RATE_TARGET,
                        AT_LEAST,
                        unit="/s",
                        conditions=tuple(clean),
                    )
                )
        for operation in history.TARGETED:
            half, full = run.half[operation], run.full[operation]
            out.append(
                Target(
                    f"{run.store}: {history.LABELS[operation]} peak RSS, half -> full",
                    run.growth(operation),
                    history.HISTORY_RSS_GROWTH_LIMIT,
                    AT_MOST,
                    unit="%",
                    conditions=(Condition(f"{half.peak_mb:.0f} -> {full.peak_mb:.0f} MB", True),),
                )
            )
    return out


def rss_target(points: list[scenarios.RssPoint]) -> Target:
    growth, _ = report.rss_growth(points)
    return Target(
        "RSS vs incidents (SQLite ledger process)",
        growth,
        RSS_GROWTH_LIMIT,
        AT_MOST,
        unit="%",
        conditions=(
            Condition(
                f"{points[1].rss_mb:.0f} -> {points[-1].rss_mb:.0f} MB, "
                f"{points[1].incidents:,} -> {points[-1].incidents:,} incidents",
                True,
            ),
        ),
    )


def page_target(run: page.PageRun) -> Target:
    """Every stream receives every event: an absolute target (the page's own share of the
    latency has no ceiling measured here; the figures are printed beside it)."""
    expected = run.sent * run.streams
    return Target(
        f"situation room: share of the events received by {run.streams} streams",
        len(run.latencies_ms) / expected if expected else float("nan"),
        1.0,
        AT_LEAST,
        conditions=(
            Condition(f"p99 record -> receipt {ms(run.p99_ms)} ms", True),
            Condition(f"{run.resyncs} streams told to reload", run.resyncs == 0),
        ),
    )


def run_evidence(plan: Plan, workdir: Path) -> list[Target]:
    section(
        f"12. Evidence: a {plan.evidence_mb} MB file through the ledger (its own process, "
        "SQLite, NATS) beside a plain object-store put and get"
    )
    run = evidence.run(workdir / "evidence", plan.evidence_mb)
    rows = [
        [
            "plain object store: put, nats-py's get",
            f"{run.plain_put:.1f}",
            f"{run.library_get:.1f}",
        ],
        ["plain object store: ordered-consumer read", "-", f"{run.consumer_read:.1f}"],
        ["the ledger", f"{run.upload:.1f}", f"{run.download:.1f}"],
    ]
    print(table(["MB/s", "upload (put)", "download (get)"], rows))
    print("  the download's ceiling is the faster of the two plain reads")
    print(
        f"  ledger RSS idle {run.idle_rss_mb:.1f} MB, peak during the upload "
        f"{run.peak_rss_mb:.1f} MB; the download's bytes are the upload's: {run.identical}"
    )
    same = Condition("the same bytes came back", run.identical)
    return [
        Target(
            "evidence upload",
            run.upload,
            EVIDENCE_RATIO,
            ceiling=run.plain_put,
            ceiling_name="object-store put",
            unit=" MB/s",
            conditions=(same,),
        ),
        Target(
            "evidence download",
            run.download,
            EVIDENCE_RATIO,
            ceiling=run.plain_get,
            ceiling_name="plain object-store read",
            unit=" MB/s",
            conditions=(same,),
        ),
        Target(
            f"ledger RSS above idle during a {plan.evidence_mb} MB upload",
            run.rss_growth_mb,
            EVIDENCE_RSS_MB,
            AT_MOST,
            unit=" MB",
        ),
    ]


def print_targets(goals: list[Target]) -> None:
    section("Targets (each against a ceiling measured in this run)")
    print(table(targets.HEADERS, targets.rows(goals), left=1))
    passed = sum(t.ok for t in goals)
    print(
        f"  {passed} of {len(goals)} targets PASS. A ratio is the measured figure over its "
        "ceiling: a rate at least the goal, a latency at most the goal times the ceiling."
    )


def print_figures(
    stores: list[StoreRun], echo: scenarios.EchoRun | None, fan: FanoutSummary
) -> None:
    section("Figures (not targets)")
    for s in stores:
        print(
            f"- {s.store}: append ceiling {rate(s.append_rate)} appends/s ({s.append_what}), "
            f"in-process Ledger.execute(LogAction) {rate(s.command_rate)}/s; over gRPC "
            f"{rate(s.ledger.closed.rate)} commands/s at {s.ledger.cpu_ms_per_command:.2f} ms "
            f"of ledger CPU each"
            + (
                f" (echo {rate(echo.best.rate)} calls/s at {echo.cpu_ms_per_call:.2f} ms each)"
                if echo
                else ""
            )
        )
    if fan.nats is not None:
        print(
            f"- NATS alone: publish -> ordered consumer p50 {ms(fan.nats.ordered.p50_ms)} ms, "
            f"p99 {ms(fan.nats.ordered.p99_ms)} ms; -> durable pull consumer p99 "
            f"{ms(fan.nats.pull.p99_ms)} ms; publish ack p99 {ms(fan.nats.publish.p99_ms)} ms"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    configure_logging("WARNING", "json")
    parts: tuple[str, ...] = args.parts
    stores = [] if args.only == SCALEOUT else [args.only] if args.only else list(STORES)
    scale_out = "scaleout" in parts and args.only in (None, "postgres", SCALEOUT)
    if args.only == SCALEOUT:
        parts = ("scaleout",)
    header(plan, stores, parts)
    if "postgres" in stores or scale_out:
        problem = postgres_problem()
        if problem is not None:
            print(f"  {problem}: skipping the PostgreSQL rows")
            if "postgres" in stores:
                stores.remove("postgres")
            scale_out = False
    settings = LedgerSettings(log_level="WARNING")
    reference = ReferenceData.load(settings.reference_file)
    goals: list[Target] = []
    store_runs: list[StoreRun] = []
    echo: scenarios.EchoRun | None = None
    fan = FanoutSummary()
    scale: list[scaleout.ReplicaRun] = []
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        workdir = Path(tmp)
        mode = "per-thread"
        if stores and "commands" in parts:
            echo = run_echo(plan, settings, workdir)
            mode = echo.mode
            for store in stores:
                store_runs.append(run_store(plan, store, reference, workdir / store, mode))
                goals.extend(command_targets(plan, echo, store_runs[-1]))
                goals.extend(personal_data_targets(store_runs[-1]))
        if "sqlite" in stores and "rss" in parts:
            goals.append(rss_target(run_rss(plan, workdir, mode)))
        if stores and "fanout" in parts:
            fan = run_fanout(plan, stores, reference, workdir, mode)
            goals.extend(fanout_targets(plan, fan))
        if stores and "history" in parts:
            goals.extend(history_targets(run_history(plan, stores, reference, workdir)))
        if stores and "ingest" in parts:
            intake = INGEST_QUICK if args.quick else INGEST_FULL
            goals.extend(ingest_targets(run_ingest(intake, stores, reference, workdir)))
        if stores and "erasure" in parts:
            erase_plan = erasure.ERASURE_QUICK if args.quick else erasure.ERASURE_FULL
            goals.extend(erasure_targets(run_erasure(erase_plan, stores, reference, workdir)))
        if "page" in parts and args.only in (None, "sqlite"):
            room = run_page(plan)
            goals.append(page_target(room))
        if scale_out:
            scale = run_scaleout(plan, reference, workdir)
        if "evidence" in parts and args.only != SCALEOUT:
            goals.extend(run_evidence(plan, workdir))
    print_targets(goals)
    print_figures(store_runs, echo, fan)
    if scale:
        rows = scaleout_report.figure_rows(plan.paced_rate, scale)
        print(table(["scale-out", "measured", "", ""], rows, left=3))
        scaleout_report.print_notes(plan.paced_rate, scale)
    print(f"\n(run took {time.perf_counter() - started:.0f} s)")
    # Lost or unacknowledged commands are a fault, whatever --strict says.
    faults = sum(not run.check.ok for run in scale)
    return targets.exit_status(goals, faults, args.strict)


if __name__ == "__main__":
    sys.exit(main())

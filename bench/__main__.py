"""``python -m bench [--quick] [--only sqlite|postgres]``: the ledger's benchmark figures.

One run measures, in this order (ratios are meaningful within one run only; the
machines are noisy):

1. gRPC echo ceiling: a trivial unary service in this process with the ledger's server
   settings, driven by 32 client threads in a separate process (as remote agency
   systems would be), once with one shared channel and once with a channel per
   thread; the faster client setup is used for the ledger too.
2. Append ceiling per store, in-process: load an Incident, add one ActionLogged
   event, save (raw Application save, no gRPC, no idempotency record), with 1 and
   several threads; then the application's whole LogAction command, for comparison.
3. The ledger over gRPC per store (real server built by services.ledger.server.build,
   in this process, fresh store): 32 clients, from a separate process, in a closed
   loop on a command mix, then paced (open-loop) at 200 commands/s for latency.
4. RSS of a ledger process (python -m services.ledger, SQLite) against the number
   of incidents reported.

Then the fan-out, on a nats-server the bench starts on free loopback ports (see
bench/fanout.py):

5. Relay throughput per store: a fresh store pre-filled with incident events, then
   the outbox relay timed from start until the stream holds the last position.
6. End to end per store: ledger (relay on) in this process, the notifier in its own
   (as deployed), a child process sending paced LogAction commands and reading a
   gRPC Subscribe stream;
   latency from each event's record_time to its receipt by the subscriber.
7. NATS alone: JetStream publish -> ordered push consumer (as the notifier's live
   subscriptions) and durable pull consumer, at the same rate.

Then reading a long history (see bench/history.py):

8. Per store, a fresh store filled with realistic incident lifecycles (half the
   history, then all of it); on each, in a fresh child process apiece: the library's
   plain decode (the ceiling), projection rebuild, verify of the store, export to
   JSON Lines and verify of the export; events/s and peak RSS.

Then scaling out (see bench/scaleout.py):

9. PostgreSQL, the ledger as 1 and as 2 ``python -m services.ledger`` processes
   (replicas) on one fresh schema, the same clients in the same load processes spread
   over the replicas: commands/s at saturation and latency percentiles at saturation
   and paced; then every acknowledged command checked against the store.

``--only sqlite`` and ``--only postgres`` run parts 1-8 (and 9 with postgres) for that
store; ``--only scaleout`` runs part 9 alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from bench import fanout, history, report, scaleout, scenarios
from bench.harness import CHANNEL_MODES, Result
from bench.report import (
    E2E_P99_TARGET_MS,
    P99_TARGET_MS,
    RATIO_TARGET,
    RELAY_TARGET,
    RESULT_HEADERS,
    RSS_GROWTH_LIMIT,
    StoreSummary,
    ms,
    rate,
    result_cells,
    section,
    table,
    verdict,
)
from bench.stores import PG_POOL, STORES, fresh_store, postgres_problem
from services.common.config import LedgerSettings
from services.common.logging import configure_logging
from services.common.natsserver import NatsServer
from services.common.reference import ReferenceData


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
    relay_events=3_000,
    e2e_clients=16,
    e2e_rate=500.0,
    e2e_warmup=0.5,
    e2e_seconds=3.0,
    e2e_drain=2.0,
    nats_seconds=2.0,
    history_events=24_000,
)
# Rough appends/s, only to size the incidents prepared for each append phase.
EXPECTED_APPEND_RATE = {"sqlite": 1500.0, "postgres": 600.0}


SCALEOUT = "scaleout"
SCENARIOS = (*STORES, SCALEOUT)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run (about 30 s)")
    parser.add_argument(
        "--only",
        choices=SCENARIOS,
        help="one store only (parts 1-8, and 9 with postgres), or the scale-out part alone",
    )
    return parser.parse_args(argv)


def threads(n: int) -> str:
    return f"{n} thread{'s' if n != 1 else ''}"


def header(plan: Plan, stores: list[str], scale_out: bool) -> None:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"Incident ledger benchmark ({plan.name} run)")
    print(
        f"  {os.cpu_count()} CPUs, load average {load}; Python {platform.python_version()}, "
        f"grpcio {version('grpcio')}, eventsourcing {version('eventsourcing')}"
    )
    parts = []
    if stores:
        parts.append(
            f"stores: {', '.join(stores)}; {plan.clients} client threads in a separate process"
        )
    if scale_out:
        parts.append(
            f"scale-out: {' and '.join(map(str, plan.scaleout_replicas))} ledger processes on "
            f"PostgreSQL, {plan.clients} clients in {plan.scaleout_processes} processes"
        )
    print(f"  {'; '.join(parts) or 'stores: none'}")


def run_echo(plan: Plan, settings: LedgerSettings) -> tuple[str, Result]:
    section(
        f"1. gRPC echo ceiling: in-process unary echo, {settings.max_workers} server threads, "
        f"{plan.clients} client threads, closed loop {plan.echo_seconds:g} s"
    )
    results = scenarios.echo_ceiling(settings, plan.clients, plan.echo_seconds, CHANNEL_MODES)
    rows = [[f"{mode} channel", *result_cells(r)] for mode, r in results.items()]
    print(table(["client setup", *RESULT_HEADERS], rows))
    mode, best = max(results.items(), key=lambda item: item[1].rate)
    print(f"  -> echo ceiling {rate(best.rate)} calls/s; ledger clients use: {mode} channel")
    return mode, best


def run_store(
    plan: Plan,
    store: str,
    reference: ReferenceData,
    workdir: Path,
    mode: str,
    echo: Result,
) -> StoreSummary:
    section(f"2. Append ceiling, {store}: in-process, fresh store, {plan.append_seconds:g} s each")
    print(
        "  raw append = repository.get(incident) + Incident.log_action(...) + Ledger.save(incident)"
    )
    print(
        "  Ledger.log_action = the whole application command (input checks, fingerprint,"
        " idempotency record saved with the event)"
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
    print(f"  -> append ceiling {rate(raw.result.rate)} appends/s ({threads(raw.threads)})")

    section(
        f"3. Ledger over gRPC, {store}: {plan.clients} clients ({mode} channel), "
        f"closed loop {plan.ledger_seconds:g} s, then paced at {plan.paced_rate:g}/s "
        f"for {plan.paced_seconds:g} s"
    )
    if store == "postgres":
        print(f"  PostgreSQL pool per application: {PG_POOL}")
    with fresh_store(store, workdir / "ledger") as env:
        settings = scenarios.ledger_settings(workdir / "ledger" / "data", env)
        run = scenarios.ledger_over_grpc(
            settings,
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
    print("  paced latency is measured from each command's scheduled send time")
    return StoreSummary(
        store=store,
        ledger_rate=run.closed.rate,
        echo_rate=echo.rate,
        append_rate=raw.result.rate,
        append_what=f"{raw.what}, {threads(raw.threads)}",
        paced_p50_ms=run.paced.p50_ms,
        paced_p99_ms=run.paced.p99_ms,
        paced_offered=plan.paced_rate,
        paced_achieved=run.paced.rate,
        paced_errors=run.paced.error_count,
        command_rate=command.result.rate,
    )


def run_rss(plan: Plan, workdir: Path, mode: str) -> list[scenarios.RssPoint]:
    section(
        "4. Server RSS against incidents: python -m services.ledger (SQLite) as its own "
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


@dataclass
class FanoutSummary:
    relay: dict[str, fanout.RelayRun]
    e2e: dict[str, fanout.EndToEndRun]
    nats: fanout.NatsRun | None


def relay_ok(run: fanout.RelayRun) -> bool:
    return run.rate >= RELAY_TARGET


def e2e_ok(plan: Plan, run: fanout.EndToEndRun) -> bool:
    return (
        run.from_record.p99_ms <= E2E_P99_TARGET_MS
        and run.missing == 0
        and not run.subscriber_error
        and run.commands.error_count == 0
        and run.commands.rate >= 0.95 * plan.e2e_rate
    )


def latency_cells(result: Result) -> list[str]:
    return [ms(result.p50_ms), ms(result.p99_ms), ms(result.max_ms), f"{result.calls:,}"]


def print_logs(logs: fanout.LogTally) -> None:
    if logs.counts:
        print("  the services logged meanwhile (counted, not printed):")
        for line in logs.lines():
            print(f"    {line}")


def run_relay(
    plan: Plan, store: str, reference: ReferenceData, workdir: Path, nats: NatsServer
) -> fanout.RelayRun:
    section(
        f"5. Relay throughput, {store}: {plan.relay_events:,} incident events in a fresh store, "
        "then the outbox relay from start to the last position in the stream"
    )
    stream = fanout.stream_settings(f"relay_{store}")
    with fresh_store(store, workdir / "relay") as env, fanout.tallied_logs() as logs:
        run = fanout.relay_throughput(env, reference, nats.url, stream, plan.relay_events)
    print(
        f"  pre-filled in {run.prefill_seconds:.1f} s (raw saves of {fanout.PREFILL_BATCH} "
        f"incidents, {fanout.EVENTS_PER_INCIDENT} events each); relay batches of "
        f"{run.batch_size}, stream {stream.name} (file storage), "
        f"{len(run.tail.payload)}-byte payloads with {len(run.tail.headers)} headers"
    )
    print(
        table(
            [
                "events",
                "start -> first batch s",
                "start -> last position s",
                "events/s",
                "after first batch /s",
            ],
            [
                [
                    f"{run.events:,}",
                    f"{run.first_publish_seconds:.2f}",
                    f"{run.elapsed:.2f}",
                    rate(run.rate),
                    rate(run.steady_rate),
                ]
            ],
        )
    )
    print_logs(logs)
    print(f"  -> relay {rate(run.rate)} events/s (target >= {RELAY_TARGET:,.0f})")
    return run


def run_e2e(
    plan: Plan, store: str, workdir: Path, nats: NatsServer, mode: str
) -> fanout.EndToEndRun:
    section(
        f"6. End to end, {store}: LogAction paced at {plan.e2e_rate:g}/s for "
        f"{plan.e2e_seconds:g} s -> relay -> NATS -> notifier -> gRPC Subscribe"
    )
    with fresh_store(store, workdir / "e2e") as env, fanout.tallied_logs() as logs:
        run = fanout.end_to_end(
            workdir / "e2e" / "data",
            env,
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
    print(
        f"  ledger (relay on) and notifier (SQLite store) in this process; one child process "
        f"sends LogAction from {plan.e2e_clients} threads ({mode} channel, after "
        f"{plan.e2e_warmup:g} s of warm-up) and reads one Subscribe stream (agency "
        f"{scenarios.COORDINATOR}, no filter); {run.prepared} incidents prepared in ASSIGNED"
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
                    f"{errors} / {commands.late_sends} late",
                ],
                ["record_time -> subscriber", "-", *latency_cells(run.from_record), "-"],
                ["client send -> subscriber", "-", *latency_cells(run.from_send), "-"],
            ],
        )
    )
    print(
        f"  subscriber received {run.received:,} of {run.sent:,} events (waited up to "
        f"{plan.e2e_drain:g} s after the last send)"
        + (f"; subscription error: {run.subscriber_error}" if run.subscriber_error else "")
    )
    print(
        "  record_time = the ledger's clock when the command created the event (just before "
        "its commit); client send = when the client thread began the LogAction call"
    )
    print_logs(logs)
    return run


def run_nats(plan: Plan, nats: NatsServer, template: fanout.StreamTail | None) -> fanout.NatsRun:
    section(
        f"7. NATS alone: JetStream publish -> consume, paced at {plan.e2e_rate:g}/s for "
        f"{plan.nats_seconds:g} s, in this process"
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
    result = FanoutSummary({}, {}, None)
    with NatsServer(workdir / "nats", log_file=workdir / "nats-server.log") as nats:
        for store in stores:
            result.relay[store] = run_relay(plan, store, reference, workdir / store, nats)
        for store in stores:
            result.e2e[store] = run_e2e(plan, store, workdir / store, nats, mode)
        template = next(iter(result.relay.values())).tail if result.relay else None
        result.nats = run_nats(plan, nats, template)
    return result


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


def replicas_label(count: int) -> str:
    return f"{count} replica{'s' if count != 1 else ''}"


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
    print(
        "  each run: a fresh schema, `python -m services.ledger migrate` once, then the "
        "replicas (serve, CREATE_TABLE=n, relay off, shared tokens, signing key and page "
        f"token secret; PostgreSQL pool {PG_POOL['POSTGRES_POOL_SIZE']} + overflow "
        f"{PG_POOL['POSTGRES_MAX_OVERFLOW']} each); {runs[0].prepared} incidents "
        f"prepared in ASSIGNED; client i -> replica i % replicas ({scaleout.CHANNEL_MODE} "
        "channels)"
    )
    total = sum(runs[0].sent.values()) or 1
    mix = ", ".join(f"{name} {n / total:.0%}" for name, n in runs[0].sent.most_common())
    print(f"  closed-loop mix: {mix}")
    rows = []
    for run in runs:
        rows.append([str(run.replicas), "closed loop", *report.percentile_cells(run.closed), "-"])
        rows.append(
            [
                str(run.replicas),
                f"paced {plan.paced_rate:g}/s",
                *report.percentile_cells(run.paced),
                str(run.paced.late_sends),
            ]
        )
    print(table(["replicas", "load", *report.PERCENTILE_HEADERS, "late sends"], rows, left=2))
    print("  paced latency is measured from each command's scheduled send time")
    print(
        table(
            [
                "replicas",
                "CPU in the closed loop, cores:",
                "ledger processes",
                "busiest one",
                "ledger ms/command",
                "load processes",
                "PostgreSQL",
                "other",
                f"machine (of {os.cpu_count()})",
            ],
            [
                [
                    str(r.replicas),
                    f"over {r.cpu.seconds:.1f} s",
                    f"{r.cpu.replicas:.2f}",
                    f"{r.cpu.busiest:.2f}",
                    f"{r.cpu_ms_per_command:.2f}",
                    f"{r.cpu.load:.2f}",
                    f"{r.cpu.postgres:.2f}",
                    f"{r.cpu.other:.2f}",
                    f"{r.cpu.machine:.2f}",
                ]
                for r in runs
            ],
            left=2,
        )
    )
    print(
        "  cores = CPU seconds per second; ledger ms/command = CPU time of the ledger "
        "processes per command served; PostgreSQL = its processes alive through the window; "
        "other = anything else on the machine (this process included)"
    )
    print(
        table(
            [
                "replicas",
                "acknowledged",
                "failed",
                "events stored",
                "incidents checked",
                "lost",
                "stored unacked",
                "gaps",
                "",
            ],
            [
                [
                    str(r.replicas),
                    f"{r.check.acknowledged:,}",
                    f"{r.check.failed:,}",
                    f"{r.check.stored:,}",
                    f"{r.check.incidents:,}",
                    f"{r.check.lost:,}",
                    f"{r.check.unacknowledged:,}",
                    f"{r.check.gaps:,}",
                    report.check_verdict(r.check.ok),
                ]
                for r in runs
            ],
        )
    )
    print(
        "  after each run: commands acknowledged (warm-up included) against incident events "
        "stored beyond the prepared ones; per incident, its stored version against the last "
        "one a client saw acknowledged"
    )
    for run in runs:
        if run.logs.counts:
            print(f"  the {replicas_label(run.replicas)} logged (counted, not printed):")
            for line in run.logs.lines():
                print(f"    {line}")
    base = runs[0]
    for run in runs[1:]:
        print(
            f"  -> {replicas_label(run.replicas)} / {replicas_label(base.replicas)}: "
            f"{scale_ratio(base, run):.2f}x commands/s at saturation "
            f"({rate(base.closed.rate)} -> {rate(run.closed.rate)}/s)"
        )
    return runs


def scale_ratio(base: scaleout.ReplicaRun, run: scaleout.ReplicaRun) -> float:
    return run.closed.rate / base.closed.rate if base.closed.rate > 0 else float("nan")


def scaleout_rows(plan: Plan, runs: list[scaleout.ReplicaRun]) -> list[list[str]]:
    rows: list[list[str]] = []
    if not runs:
        return rows
    base = runs[0]
    for run in runs[1:]:
        rows.append(
            [
                f"postgres: {replicas_label(run.replicas)} / {replicas_label(base.replicas)}",
                f"{scale_ratio(base, run):.2f}x  ({rate(base.closed.rate)} -> "
                f"{rate(run.closed.rate)} commands/s, {run.clients} clients)",
                "(figure)",
                "",
            ]
        )
    for run in runs:
        rows.append(
            [
                f"postgres, {replicas_label(run.replicas)}: p99 at {plan.paced_rate:g}/s",
                f"{ms(run.paced.p99_ms)} ms  (p50 {ms(run.paced.p50_ms)}, p90 "
                f"{ms(run.paced.p90_ms)} ms; at saturation p99 {ms(run.closed.p99_ms)} ms)",
                "(figure)",
                "",
            ]
        )
    for run in runs:
        rows.append(
            [
                f"postgres, {replicas_label(run.replicas)}: acknowledged = stored",
                f"{run.check.stored:,} stored / {run.check.acknowledged:,} acknowledged, "
                f"{run.check.lost:,} lost",
                "equal",
                report.check_verdict(run.check.ok),
            ]
        )
    return rows


def scaleout_notes(plan: Plan, runs: list[scaleout.ReplicaRun]) -> None:
    if not runs:
        return
    figures = "; ".join(
        f"{replicas_label(r.replicas)} {rate(r.closed.rate)} commands/s (p50/p90/p99 "
        f"{ms(r.closed.p50_ms)}/{ms(r.closed.p90_ms)}/{ms(r.closed.p99_ms)} ms; at "
        f"{plan.paced_rate:g}/s {ms(r.paced.p50_ms)}/{ms(r.paced.p90_ms)}/"
        f"{ms(r.paced.p99_ms)} ms)"
        for r in runs
    )
    print(f"- Scale-out on PostgreSQL, {runs[0].clients} clients: {figures}.")
    base = runs[0]
    for run in runs[1:]:
        print(
            f"  {replicas_label(run.replicas)} served {scale_ratio(base, run):.2f}x the commands "
            f"of {replicas_label(base.replicas)}. In the closed loop the machine was busy "
            f"{run.cpu.machine:.2f} of {os.cpu_count()} cores ({base.cpu.machine:.2f} with "
            f"{replicas_label(base.replicas)}): ledger {run.cpu.replicas:.2f}, load "
            f"{run.cpu.load:.2f}, PostgreSQL {run.cpu.postgres:.2f}, other "
            f"{run.cpu.other:.2f}. The replicas, their clients and the database share these "
            "cores, so another replica here adds a process, not a core; the ratio shows what "
            "a second process gains on this machine, not what a second machine would."
        )
        print(
            f"  The ledger spent {base.cpu_ms_per_command:.2f} ms of CPU per command with "
            f"{replicas_label(base.replicas)}, {run.cpu_ms_per_command:.2f} ms with "
            f"{replicas_label(run.replicas)}: a ledger process with a whole core would serve "
            f"about {rate(1000 / run.cpu_ms_per_command)} commands/s, and replicas on cores of "
            "their own would add up to that much each, as long as PostgreSQL keeps up (not "
            "measured here)."
        )
    checks = ", ".join(
        f"{replicas_label(r.replicas)} {report.check_verdict(r.check.ok)}" for r in runs
    )
    print(f"  Every acknowledged command stored exactly once, nothing else: {checks}.")


def history_rows(runs: list[history.HistoryRun]) -> list[list[str]]:
    rows: list[list[str]] = []
    for run in runs:
        ceiling = run.full[history.DECODE]
        for operation in history.TARGETED:
            measured = run.full[operation]
            rows.append(
                [
                    f"{run.store}: {history.LABELS[operation]}",
                    f"{rate(measured.rate)} events/s  ({measured.events:,} in "
                    f"{measured.seconds:.2f} s; library decode {rate(ceiling.rate)}/s)",
                    f">= {history.HISTORY_RATE_TARGET:,.0f}/s",
                    verdict(run.rate_ok(operation)),
                ]
            )
        for operation in history.TARGETED:
            half, full = run.half[operation], run.full[operation]
            rows.append(
                [
                    f"{run.store}: {history.LABELS[operation]} peak RSS",
                    f"{half.peak_mb:.1f} -> {full.peak_mb:.1f} MB  ({run.growth(operation):+.1%}, "
                    f"{half.events:,} -> {full.events:,} events)",
                    f"<= +{history.HISTORY_RSS_GROWTH_LIMIT:.0%}",
                    verdict(run.rss_ok(operation)),
                ]
            )
    return rows


def history_notes(runs: list[history.HistoryRun]) -> None:
    for run in runs:
        ceiling = run.full[history.DECODE].rate
        rates = ", ".join(
            f"{history.LABELS[op]} {rate(run.full[op].rate)}/s ({verdict(run.rate_ok(op))})"
            for op in history.TARGETED
        )
        peaks = ", ".join(
            f"{history.LABELS[op]} {run.full[op].peak_mb:.0f} MB ({run.growth(op):+.1%})"
            for op in history.TARGETED
        )
        print(
            f"- {run.store}, {run.events:,} events ({run.incidents:,} incidents): {rates}; "
            f"the library alone decodes {rate(ceiling)}/s (target "
            f"{history.HISTORY_RATE_TARGET:,.0f}/s each)."
        )
        print(
            f"  Peak RSS over the full history, and its growth from half of it: {peaks} "
            f"(target <= +{history.HISTORY_RSS_GROWTH_LIMIT:.0%})."
        )


def summary(
    plan: Plan,
    stores: list[StoreSummary],
    rss: list[scenarios.RssPoint] | None,
    fan: FanoutSummary,
    hist: list[history.HistoryRun],
    scale: list[scaleout.ReplicaRun],
) -> None:
    section("Targets")
    rows: list[list[str]] = []
    for s in stores:
        rows.append(
            [
                f"{s.store}: ledger / min(echo, append)",
                f"{s.ratio:.2f}  ({rate(s.ledger_rate)} / min({rate(s.echo_rate)}, "
                f"{rate(s.append_rate)}))",
                f">= {RATIO_TARGET}",
                verdict(s.ratio_ok),
            ]
        )
        rows.append(
            [
                f"{s.store}: p99 at {s.paced_offered:g} commands/s",
                f"{ms(s.paced_p99_ms)} ms  (p50 {ms(s.paced_p50_ms)} ms, "
                f"achieved {rate(s.paced_achieved)}/s)",
                f"<= {P99_TARGET_MS:g} ms",
                verdict(s.paced_ok),
            ]
        )
    if rss:
        growth, per_1000 = report.rss_growth(rss)
        rows.append(
            [
                "RSS vs incidents (SQLite process)",
                f"{rss[1].rss_mb:.1f} -> {rss[-1].rss_mb:.1f} MB  ({growth:+.1%}, "
                f"{rss[1].incidents:,} -> {rss[-1].incidents:,} incidents)",
                f"<= +{RSS_GROWTH_LIMIT:.0%}",
                verdict(report.rss_ok(rss)),
            ]
        )
    nats_p99 = fan.nats.ordered.p99_ms if fan.nats else float("nan")
    for store, relay in fan.relay.items():
        rows.append(
            [
                f"{store}: relay store -> stream",
                f"{rate(relay.rate)} events/s  ({relay.events:,} in {relay.elapsed:.2f} s)",
                f">= {RELAY_TARGET:,.0f}/s",
                verdict(relay_ok(relay)),
            ]
        )
    for store, e2e in fan.e2e.items():
        rows.append(
            [
                f"{store}: commit -> subscriber p99 at {plan.e2e_rate:g}/s",
                f"{ms(e2e.from_record.p99_ms)} ms  (p50 {ms(e2e.from_record.p50_ms)} ms, "
                f"{e2e.received:,}/{e2e.sent:,} received; NATS alone p99 {ms(nats_p99)} ms)",
                f"<= {E2E_P99_TARGET_MS:g} ms",
                verdict(e2e_ok(plan, e2e)),
            ]
        )
    rows.extend(history_rows(hist))
    rows.extend(scaleout_rows(plan, scale))
    print(table(["target", "measured", "goal", ""], rows, left=3))

    section("Closing note")
    for s in stores:
        print(
            f"- {s.store}: the ledger handled {rate(s.ledger_rate)} commands/s with "
            f"{plan.clients} gRPC clients; echo ceiling {rate(s.echo_rate)} calls/s, "
            f"append ceiling {rate(s.append_rate)} appends/s ({s.append_what}), in-process "
            f"Ledger.log_action {rate(s.command_rate)}/s; ratio {s.ratio:.2f} "
            f"(target {RATIO_TARGET}, {verdict(s.ratio_ok)}). At {s.paced_offered:g} "
            f"commands/s: p50 {ms(s.paced_p50_ms)} ms, p99 {ms(s.paced_p99_ms)} ms "
            f"(target {P99_TARGET_MS:g} ms, {verdict(s.paced_ok)})."
        )
        print(
            f"  If a command cost exactly one echo call plus one raw append, done one after "
            f"the other (one GIL), the ledger could reach {rate(s.serial_bound)}/s, a ratio "
            f"of {s.serial_bound / s.ceiling:.2f}; it reached "
            f"{s.ledger_rate / s.serial_bound:.0%} of that."
        )
    if rss:
        growth, per_1000 = report.rss_growth(rss)
        sizes = ", ".join(f"{p.incidents:,}: {p.rss_mb:.1f} MB" for p in rss if p.incidents)
        print(
            f"- RSS of the ledger process (SQLite) by incidents: {sizes} "
            f"({growth:+.1%}, {per_1000:+.2f} MB per 1,000; {verdict(report.rss_ok(rss))})."
        )
    for store, relay in fan.relay.items():
        print(
            f"- {store}: the relay published {relay.events:,} stored events to JetStream at "
            f"{rate(relay.rate)} events/s ({rate(relay.steady_rate)}/s after its first batch; "
            f"target {RELAY_TARGET:,.0f}, {verdict(relay_ok(relay))})."
        )
    for store, e2e in fan.e2e.items():
        print(
            f"- {store}: at {plan.e2e_rate:g} LogAction/s, commit -> gRPC subscriber p50 "
            f"{ms(e2e.from_record.p50_ms)} ms, p99 {ms(e2e.from_record.p99_ms)} ms (send -> "
            f"subscriber p99 {ms(e2e.from_send.p99_ms)} ms); {e2e.received:,} of {e2e.sent:,} "
            f"events arrived (target p99 {E2E_P99_TARGET_MS:g} ms with every event delivered, "
            f"{verdict(e2e_ok(plan, e2e))})."
        )
    if fan.nats is not None:
        print(
            f"- NATS alone at {plan.e2e_rate:g} messages/s: publish -> ordered push consumer "
            f"p50 {ms(fan.nats.ordered.p50_ms)} ms, p99 {ms(fan.nats.ordered.p99_ms)} ms; "
            f"-> durable pull consumer p99 {ms(fan.nats.pull.p99_ms)} ms; publish ack p99 "
            f"{ms(fan.nats.publish.p99_ms)} ms."
        )
    history_notes(hist)
    scaleout_notes(plan, scale)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    configure_logging("WARNING", "json")
    per_store = args.only != SCALEOUT  # parts 1-8
    stores = [] if not per_store else [args.only] if args.only else list(STORES)
    scale_out = args.only in (None, "postgres", SCALEOUT)
    header(plan, stores, scale_out)
    if "postgres" in stores or scale_out:
        problem = postgres_problem()
        if problem is not None:
            print(f"  {problem}: skipping the PostgreSQL rows")
            if "postgres" in stores:
                stores.remove("postgres")
            scale_out = False
    settings = LedgerSettings(log_level="WARNING")
    reference = ReferenceData.load(settings.reference_file)
    summaries: list[StoreSummary] = []
    rss: list[scenarios.RssPoint] | None = None
    fan = FanoutSummary({}, {}, None)
    hist: list[history.HistoryRun] = []
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        workdir = Path(tmp)
        if per_store:
            mode, echo = run_echo(plan, settings)
            summaries = [
                run_store(plan, store, reference, workdir / store, mode, echo) for store in stores
            ]
            rss = run_rss(plan, workdir, mode) if "sqlite" in stores else None
            fan = run_fanout(plan, stores, reference, workdir, mode)
            hist = run_history(plan, stores, reference, workdir)
        scale = run_scaleout(plan, reference, workdir) if scale_out else []
    summary(plan, summaries, rss, fan, hist, scale)
    print(f"\n(run took {time.perf_counter() - started:.0f} s)")
    # Lost or unacknowledged commands are a fault, not a missed target.
    return 0 if all(run.check.ok for run in scale) else 1


if __name__ == "__main__":
    sys.exit(main())

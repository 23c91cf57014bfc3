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

from bench import report, scenarios
from bench.harness import CHANNEL_MODES, Result
from bench.report import (
    P99_TARGET_MS,
    RATIO_TARGET,
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
from services.ledger.domain.reference import ReferenceData


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
)
# Rough appends/s, only to size the incidents prepared for each append phase.
EXPECTED_APPEND_RATE = {"sqlite": 1500.0, "postgres": 600.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run (about 30 s)")
    parser.add_argument("--only", choices=STORES, help="measure one store only")
    return parser.parse_args(argv)


def threads(n: int) -> str:
    return f"{n} thread{'s' if n != 1 else ''}"


def header(plan: Plan, stores: list[str]) -> None:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"Incident ledger benchmark ({plan.name} run)")
    print(
        f"  {os.cpu_count()} CPUs, load average {load}; Python {platform.python_version()}, "
        f"grpcio {version('grpcio')}, eventsourcing {version('eventsourcing')}"
    )
    print(
        f"  stores: {', '.join(stores) or 'none'}; {plan.clients} client threads"
        " in a separate process"
    )


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


def summary(plan: Plan, stores: list[StoreSummary], rss: list[scenarios.RssPoint] | None) -> None:
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    configure_logging("WARNING", "json")
    stores = [args.only] if args.only else list(STORES)
    header(plan, stores)
    if "postgres" in stores:
        problem = postgres_problem()
        if problem is not None:
            print(f"  {problem}: skipping the PostgreSQL rows")
            stores.remove("postgres")
    settings = LedgerSettings(log_level="WARNING")
    reference = ReferenceData.load(settings.reference_file)
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        workdir = Path(tmp)
        mode, echo = run_echo(plan, settings)
        summaries = [
            run_store(plan, store, reference, workdir / store, mode, echo) for store in stores
        ]
        rss = run_rss(plan, workdir, mode) if "sqlite" in stores else None
    summary(plan, summaries, rss)
    print(f"\n(run took {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The scale-out section's tables and notes (bench/scaleout.py measures)."""

from __future__ import annotations

import os

from bench import report, scaleout
from bench.report import ms, rate, table
from bench.stores import PG_POOL


def replicas_label(count: int) -> str:
    return f"{count} replica{'s' if count != 1 else ''}"


def print_runs(paced_rate: float, runs: list[scaleout.ReplicaRun]) -> None:
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
                f"paced {paced_rate:g}/s",
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


def scale_ratio(base: scaleout.ReplicaRun, run: scaleout.ReplicaRun) -> float:
    return run.closed.rate / base.closed.rate if base.closed.rate > 0 else float("nan")


def figure_rows(paced_rate: float, runs: list[scaleout.ReplicaRun]) -> list[list[str]]:
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
                f"postgres, {replicas_label(run.replicas)}: p99 at {paced_rate:g}/s",
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


def print_notes(paced_rate: float, runs: list[scaleout.ReplicaRun]) -> None:
    if not runs:
        return
    figures = "; ".join(
        f"{replicas_label(r.replicas)} {rate(r.closed.rate)} commands/s (p50/p90/p99 "
        f"{ms(r.closed.p50_ms)}/{ms(r.closed.p90_ms)}/{ms(r.closed.p99_ms)} ms; at "
        f"{paced_rate:g}/s {ms(r.paced.p50_ms)}/{ms(r.paced.p90_ms)}/"
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

"""Printing: tables of figures, and the targets with PASS/MISS."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bench.harness import Result
from bench.scenarios import RssPoint

RATIO_TARGET = 0.8
P99_TARGET_MS = 20.0
RSS_GROWTH_LIMIT = 0.10  # RSS at the last checkpoint at most 10 % above the first
RELAY_TARGET = 5000.0  # events/s from the store to the stream
E2E_P99_TARGET_MS = 50.0  # ledger commit -> gRPC subscriber, p99


def rate(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}"


def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    indent: str = "  ",
    left: int = 1,
) -> str:
    """The first ``left`` columns left-aligned, the others right-aligned (numbers)."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = [
            str(cell).ljust(widths[i]) if i < left else str(cell).rjust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append(indent + "  ".join(cells).rstrip())
    lines.insert(1, indent + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def result_cells(result: Result) -> list[str]:
    errors = str(result.error_count)
    if result.error_count:
        errors += f" ({result.describe_errors()})"
    return [
        rate(result.rate),
        ms(result.p50_ms),
        ms(result.p99_ms),
        f"{result.calls:,}",
        errors,
    ]


RESULT_HEADERS = ["per s", "p50 ms", "p99 ms", "calls", "errors"]


def percentile_cells(result: Result) -> list[str]:
    """As result_cells, with the 90th percentile too."""
    cells = result_cells(result)
    return [*cells[:2], ms(result.p90_ms), *cells[2:]]


PERCENTILE_HEADERS = ["per s", "p50 ms", "p90 ms", "p99 ms", "calls", "errors"]


def check_verdict(ok: bool) -> str:
    """For correctness checks (not targets): PASS or FAIL."""
    return "PASS" if ok else "FAIL"


def section(title: str) -> None:
    print()
    print(title)
    print("=" * len(title), flush=True)


@dataclass
class StoreSummary:
    """The figures of one store that the targets look at."""

    store: str
    ledger_rate: float
    echo_rate: float
    append_rate: float
    append_what: str
    paced_p50_ms: float
    paced_p99_ms: float
    paced_offered: float
    paced_achieved: float
    paced_errors: int
    command_rate: float  # in-process Ledger.log_action, best

    @property
    def ceiling(self) -> float:
        return min(self.echo_rate, self.append_rate)

    @property
    def serial_bound(self) -> float:
        """The best rate if one command cost one echo call plus one append, done serially."""
        if self.echo_rate <= 0 or self.append_rate <= 0:
            return math.nan
        return 1 / (1 / self.echo_rate + 1 / self.append_rate)

    @property
    def ratio(self) -> float:
        return self.ledger_rate / self.ceiling if self.ceiling > 0 else math.nan

    @property
    def ratio_ok(self) -> bool:
        return self.ratio >= RATIO_TARGET

    @property
    def paced_ok(self) -> bool:
        kept_up = self.paced_achieved >= 0.95 * self.paced_offered
        return self.paced_p99_ms <= P99_TARGET_MS and kept_up and self.paced_errors == 0


def rss_growth(points: Sequence[RssPoint]) -> tuple[float, float]:
    """(growth from the first to the last incident checkpoint as a fraction, MB per 1,000)."""
    counted = [p for p in points if p.incidents > 0]
    if len(counted) < 2:
        return math.nan, math.nan
    first, last = counted[0], counted[-1]
    growth = (last.rss_mb - first.rss_mb) / first.rss_mb
    per_1000 = (last.rss_mb - first.rss_mb) / (last.incidents - first.incidents) * 1000
    return growth, per_1000


def rss_ok(points: Sequence[RssPoint]) -> bool:
    growth, _ = rss_growth(points)
    return not math.isnan(growth) and growth <= RSS_GROWTH_LIMIT

"""Printing: tables of figures (the targets and their verdicts are bench/targets.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from bench.harness import Result
from bench.scenarios import RssPoint

RSS_GROWTH_LIMIT = 0.10  # RSS at the last checkpoint at most 10 % above the first


def rate(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}"


def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


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


def rss_growth(points: Sequence[RssPoint]) -> tuple[float, float]:
    """(growth from the first to the last incident checkpoint as a fraction, MB per 1,000)."""
    counted = [p for p in points if p.incidents > 0]
    if len(counted) < 2:
        return math.nan, math.nan
    first, last = counted[0], counted[-1]
    growth = (last.rss_mb - first.rss_mb) / first.rss_mb
    per_1000 = (last.rss_mb - first.rss_mb) / (last.incidents - first.incidents) * 1000
    return growth, per_1000

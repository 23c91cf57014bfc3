"""The bench's targets: each a ratio to a ceiling measured in the same run, with PASS/MISS.

A machine's absolute speed changes from run to run (other work on its cores, its
frequency), so a speed target is the ratio of what the ledger did to a *ceiling*, the
same kind of work without the ledger's part, measured in the same run on the same
machine: commands against a gRPC echo, the relay against a plain JetStream publish of
the same messages, the fan-out's latency against NATS alone, the projection rebuild
against the library's own decode. A target whose ``ceiling`` is None compares the
figure itself with its goal (RSS growth, the verify and export rates kept from before).

Besides its ratio, a target may carry conditions that must hold too (the paced sender
kept the offered rate, every event arrived); a condition that fails makes it MISS,
and is printed beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

AT_LEAST = ">="
AT_MOST = "<="


@dataclass(frozen=True)
class Condition:
    """Something that must hold besides the ratio, described for the reader."""

    what: str  # e.g. "late sends 0.2% <= 1%"
    ok: bool


@dataclass(frozen=True)
class Target:
    """One target: ``measured`` against ``ceiling`` (or alone), bounded by ``goal``.

    ``compare`` is ``AT_LEAST`` (a rate: the ratio at least ``goal``) or ``AT_MOST`` (a
    latency: the ratio at most ``goal``, i.e. at most ``goal`` times the ceiling).
    """

    name: str  # e.g. "sqlite: commands/s at saturation"
    measured: float
    goal: float
    compare: str = AT_LEAST
    ceiling: float | None = None  # None: an absolute target
    ceiling_name: str = ""  # e.g. "gRPC echo at saturation"
    unit: str = ""  # of measured and ceiling, e.g. "/s", " ms"
    conditions: tuple[Condition, ...] = ()

    def __post_init__(self) -> None:
        if self.compare not in (AT_LEAST, AT_MOST):
            raise ValueError(f"compare must be {AT_LEAST!r} or {AT_MOST!r}, not {self.compare!r}")

    @property
    def ratio(self) -> float:
        """measured / ceiling; NaN when there is no usable ceiling or figure."""
        if self.ceiling is None:
            return math.nan
        if math.isnan(self.measured) or math.isnan(self.ceiling) or self.ceiling <= 0:
            return math.nan
        return self.measured / self.ceiling

    @property
    def compared(self) -> float:
        """What is held against the goal: the ratio, or the figure of an absolute target."""
        return self.measured if self.ceiling is None else self.ratio

    @property
    def ratio_ok(self) -> bool:
        value = self.compared
        if math.isnan(value):  # nothing measured is never a pass
            return False
        return value >= self.goal if self.compare == AT_LEAST else value <= self.goal

    @property
    def ok(self) -> bool:
        return self.ratio_ok and all(c.ok for c in self.conditions)

    @property
    def verdict(self) -> str:
        return "PASS" if self.ok else "MISS"


def figure(value: float, unit: str) -> str:
    """A measured value for the table: rates without decimals, the rest with one."""
    if math.isnan(value):
        return "-"
    if unit.startswith("/"):
        return f"{value:,.0f}{unit}"
    if unit == "%":
        return f"{value:+.1%}"
    return f"{value:,.1f}{unit}"


def ratio_text(target: Target) -> str:
    if target.ceiling is None:
        return "-"
    ratio = target.ratio
    if math.isnan(ratio):
        return "-"
    if target.compare == AT_LEAST:
        return f"{ratio:.2f}"
    # Two decimals near a goal of a few times: 1.34x against 1.3x read "1.3x <= 1.3x MISS".
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.1f}x"


def goal_text(target: Target) -> str:
    if target.ceiling is None:
        return f"{target.compare} {figure(target.goal, target.unit)}"
    if target.compare == AT_LEAST:
        return f">= {target.goal:g}"
    return f"<= {target.goal:g}x"


def rows(targets: Sequence[Target]) -> list[list[str]]:
    """Table rows: target, measured, ceiling, ratio, goal, verdict, and the conditions."""
    out = []
    for t in targets:
        ceiling = "-"
        if t.ceiling is not None:
            ceiling = f"{figure(t.ceiling, t.unit)} {t.ceiling_name}".rstrip()
        notes = "; ".join(c.what + ("" if c.ok else " (MISS)") for c in t.conditions)
        measured = figure(t.measured, t.unit)
        out.append([t.name, measured, ceiling, ratio_text(t), goal_text(t), t.verdict, notes])
    return out


HEADERS = ["target", "measured", "ceiling (same run)", "ratio", "goal", "", "and"]


def missed(targets: Sequence[Target]) -> list[Target]:
    return [t for t in targets if not t.ok]


def exit_status(targets: Sequence[Target], faults: int, strict: bool) -> int:
    """0, or 1 on a fault (always) or a missed target (with ``--strict`` only)."""
    if faults:
        return 1
    if strict and missed(targets):
        return 1
    return 0


def share(part: int, whole: int) -> float:
    """part / whole; 0 when there is no whole (nothing sent, nothing late)."""
    return part / whole if whole > 0 else 0.0

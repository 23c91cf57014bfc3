"""Test support for metrics: the documented metrics, scraping, names in PromQL.

The "Metrics" table of docs/operations.md is the one list of the metrics: the integration test
checks that the services expose exactly those, and the deploy test that the alert
rules and the dashboard use no other.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from services.common.config import PROJECT_ROOT

OPERATIONS_DOC = PROJECT_ROOT / "docs" / "operations.md"
SERVICES = ("ledger", "notifier")
# What Prometheus adds to a histogram's or counter's name in its series.
SERIES_SUFFIXES = ("_bucket", "_count", "_sum", "_created")
_ROW = re.compile(r"^\|\s*`([a-z_:][a-z0-9_:]*)`\s*\|\s*(\w+)\s*\|([^|]*)\|")
_NAME = re.compile(r"\b(?:ledger|notifier)_[a-z0-9_]+\b")


@dataclass(frozen=True)
class Documented:
    name: str  # as written in queries: counters with their ``_total``
    type: str  # counter, gauge or histogram
    labels: frozenset[str] = frozenset()  # the Labels column (``le`` not included)

    @property
    def service(self) -> str:
        return self.name.split("_", 1)[0]

    @property
    def family(self) -> str:
        """The family name the Prometheus text parser gives it."""
        return self.name.removesuffix("_total") if self.type == "counter" else self.name


def documented_metrics() -> dict[str, Documented]:
    """The rows of the "## Metrics" table of docs/operations.md, by name."""
    lines = OPERATIONS_DOC.read_text(encoding="utf-8").splitlines()
    start = lines.index("## Metrics")
    found: dict[str, Documented] = {}
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        match = _ROW.match(line)
        if match:
            found[match[1]] = Documented(
                match[1], match[2], frozenset(re.findall(r"`([a-z_]+)`", match[3]))
            )
    if not found:
        raise AssertionError("the Metrics section of docs/operations.md has no table of metrics")
    return found


def metric_names_in(expression: str) -> set[str]:
    """The project's metric names a PromQL expression uses (series suffixes removed)."""
    names = set()
    for name in _NAME.findall(expression):
        for suffix in SERIES_SUFFIXES:
            name = name.removesuffix(suffix)
        names.add(name)
    return names


class Scrape:
    """One scrape of a /metrics endpoint, parsed."""

    def __init__(self, port: int) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def names(self, prefix: str) -> set[str]:
        """Family names of the service's own metrics (without the ``_created`` companions)."""
        return {
            name
            for name in self.families
            if name.startswith(f"{prefix}_") and not name.endswith("_created")
        }

    def samples(self, name: str) -> Iterable[Sample]:
        for family in self.families.values():
            yield from (s for s in family.samples if s.name == name)

    def value(self, name: str, **labels: str) -> float | None:
        """The sample's value with exactly these labels (``None`` when absent)."""
        for sample in self.samples(name):
            if sample.labels == labels:
                return float(sample.value)
        return None

    def total(self, name: str, **labels: str) -> float:
        """The sum over the samples whose labels include these (0 when none)."""
        return sum(
            float(s.value)
            for s in self.samples(name)
            if all(s.labels.get(k) == v for k, v in labels.items())
        )

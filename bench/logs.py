"""The warnings and errors that service processes logged in their JSON log files."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LogCount:
    """Log lines by level and event, with one sample error text of each."""

    counts: Counter[str] = field(default_factory=Counter)
    samples: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        return [
            f"{key} x{n:,}" + (f" ({self.samples[key]})" if self.samples[key] else "")
            for key, n in self.counts.most_common(4)
        ]


def tally(paths: Iterable[Path]) -> LogCount:
    """Every line of the files (JSON lines; anything else counted as ``output``)."""
    count = LogCount()
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text("utf-8", errors="replace").splitlines():
            try:
                entry: Any = json.loads(line)
            except json.JSONDecodeError:
                entry = {"level": "output", "event": line[:80]}
            if not isinstance(entry, dict):
                continue
            key = f"{entry.get('level', '?')} {entry.get('event', '?')}"
            count.counts[key] += 1
            count.samples.setdefault(key, str(entry.get("error", ""))[:90])
    return count

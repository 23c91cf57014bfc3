"""The replicas' helper of the scale-out tests (tests/topology.py), on its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.topology import Service


def test_a_replica_s_metrics_port_is_the_one_its_start_line_names(tmp_path: Path) -> None:
    """A metrics port picked free beforehand (bound, closed, handed to the service) could be
    taken by another process before the service bound it, failing its start; a replica given
    port 0 binds a free one at once and names it in its start line, read back here."""
    service = Service("services.notifier", {}, tmp_path, port=50000)
    service.log_path = tmp_path / "notifier-50000-1.log"
    service.log_path.write_text(
        json.dumps({"event": "notifier.consuming"})
        + "\n"
        + json.dumps({"event": "notifier.started", "port": 50000, "metrics_port": 41234})
        + "\n",
        encoding="utf-8",
    )
    assert service.metrics_port == 41234


def test_a_replica_without_metrics_says_so(tmp_path: Path) -> None:
    service = Service("services.notifier", {}, tmp_path, port=50000)
    service.log_path = tmp_path / "notifier-50000-1.log"
    service.log_path.write_text(
        json.dumps({"event": "notifier.started", "port": 50000, "metrics_port": None}) + "\n",
        encoding="utf-8",
    )
    with pytest.raises(AssertionError, match="serves no metrics"):
        _ = service.metrics_port

"""ledgerctl in-process against a real ledger on the in-memory store: the shared fixtures
``popo_ledger`` and ``ctl`` (see tests/integration/conftest.py) and their helpers."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from incidentledger_client.cli import main
from tests.support import Client, running_ledger, settings_for, store_environment

# The in-process server logs to the same captured stdout: leave its lines out.
# (A log line's "event" is a string; watch --json's is an object.)
SERVER_LOG = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[|^\{\"event\": \"")


def without_server_log(text: str) -> str:
    return "".join(line for line in text.splitlines(True) if not SERVER_LOG.match(line))


@contextmanager
def popo_ledger(tmp_path: Path) -> Iterator[Client]:
    with (
        store_environment("popo", tmp_path) as env,
        running_ledger(settings_for(tmp_path, env)) as client,
    ):
        yield client


class Ctl:
    def __init__(self, ledger: Client, capsys: pytest.CaptureFixture[str]) -> None:
        self.ledger = ledger
        self.capsys = capsys
        self.tokens = ledger.data_dir / "credentials" / "dev-tokens.yaml"

    def run(self, agency: str, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(
            [
                "--address",
                self.ledger.address,
                "--tokens-file",
                str(self.tokens),
                "--agency",
                agency,
                *args,
            ]
        )
        captured = self.capsys.readouterr()
        return code, without_server_log(captured.out), captured.err

    def ok(self, agency: str, *args: str) -> str:
        code, out, err = self.run(agency, *args)
        assert code == 0, (args, out, err)
        return out

    def json(self, agency: str, *args: str) -> Any:
        return json.loads(self.ok(agency, "--json", *args))


def backlog_line(n: int, **changes: object) -> str:
    """Line ``n`` of a field device's backlog (JSON Lines, docs/clients.md): a report of its
    own (a new device report id), with ``changes`` to its fields."""
    value: dict[str, object] = {
        "device_report_id": str(uuid.uuid4()),
        "device_id": "tab-babinsa-air-rami",
        "device_record_time": "2026-11-27T09:00:00+07:00",
        "title": f"Laporan {n}",
        "category": "crowd_gathering",
        "location": {"kecamatan": "air_rami"},
    }
    value.update(changes)
    return json.dumps(value)

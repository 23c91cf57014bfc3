"""Ctrl-C in ledgerctl's long commands: a real ledgerctl process against a real ledger
(in-memory store), sent SIGINT, as a terminal sends it, once the command is under way; what
it leaves behind and what it says."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.ledgerctl_support import Ctl

ROOT = Path(__file__).resolve().parents[2]
#: Enough reports that sending them, or exporting their history, takes seconds: the interrupt
#: comes within milliseconds of the condition the test waits on, long before the end.
BACKLOG = 10_000


def backlog(path: Path, count: int) -> Path:
    """A field device's backlog of ``count`` reports (JSON Lines)."""
    with path.open("w", encoding="utf-8") as file:
        for n in range(count):
            report = {
                "device_report_id": str(uuid.uuid4()),
                "device_id": "tab-babinsa-air-rami",
                "device_record_time": "2026-11-27T09:00:00+07:00",
                "title": f"Laporan {n}",
                "category": "crowd_gathering",
                "location": {"kecamatan": "air_rami"},
            }
            file.write(json.dumps(report) + "\n")
    return path


def start(ctl: Ctl, agency: str, *args: str) -> subprocess.Popen[str]:
    """ledgerctl in a process of its own (a signal for it must not reach pytest)."""
    pythonpath = os.pathsep.join([str(ROOT), str(ROOT / "gen"), str(ROOT / "clients" / "python")])
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "incidentledger_client.cli"),
            *("--address", ctl.ledger.address, "--tokens-file", str(ctl.tokens)),
            *("-a", agency, *args),
        ],
        env={**os.environ, "PYTHONPATH": pythonpath, "LEDGER_LANG": "en"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def interrupt_once(
    process: subprocess.Popen[str], started: Callable[[], bool], what: str, seconds: float = 60.0
) -> tuple[str, str]:
    """Wait until ``started()`` holds (within ``seconds``), send SIGINT, and return the
    process's stdout and stderr once it has ended."""
    deadline = time.monotonic() + seconds
    try:
        while not started():
            if process.poll() is not None:
                out, err = process.communicate()
                raise AssertionError(f"ledgerctl ended before {what}: {out}\n{err}")
            assert time.monotonic() < deadline, f"no sign of {what} in {seconds} s"
            time.sleep(0.005)
        process.send_signal(signal.SIGINT)
        return process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_an_interrupted_export_leaves_no_file(ctl: Ctl, tmp_path: Path) -> None:
    ctl.ok("bawaslu", "ingest", str(backlog(tmp_path / "backlog.jsonl", BACKLOG)))
    exports = tmp_path / "exports"
    exports.mkdir()
    target = exports / "history.jsonl"
    process = start(ctl, "inspektorat", "audit", "export", str(target))

    def writing() -> bool:
        # Under the final name or another: whichever the export writes first.
        return any(f.stat().st_size > 0 for f in exports.iterdir())

    out, err = interrupt_once(process, writing, "the export writing")
    assert process.returncode == 130, (
        "the export finished before the interrupt"
        if process.returncode == 0
        else (process.returncode, out, err)
    )
    assert sorted(exports.iterdir()) == [], "neither the file nor a temporary one is left"
    assert "INTERRUPTED" in err and f"nothing was written to {target}" in err, err
    # Not interrupted, the same export is the whole history, under its name alone.
    assert ctl.ok("inspektorat", "audit", "export", str(target)).startswith("exported ")
    assert [f.name for f in exports.iterdir()] == ["history.jsonl"]
    with target.open(encoding="utf-8") as file:
        exported = sum(1 for _ in file)
    assert exported == BACKLOG


def test_an_interrupted_export_to_stdout_says_it_is_incomplete(ctl: Ctl, tmp_path: Path) -> None:
    ctl.ok("bawaslu", "ingest", str(backlog(tmp_path / "backlog.jsonl", BACKLOG)))
    process = start(ctl, "inspektorat", "audit", "export", "-")
    stdout = process.stdout
    assert stdout is not None
    # The first line read and no more: the pipe fills, and the export waits on it.
    _out, err = interrupt_once(process, lambda: bool(stdout.readline()), "an event")
    assert process.returncode == 130, (process.returncode, err)
    assert "INTERRUPTED" in err and "the export was interrupted after" in err, err
    assert "the output is incomplete" in err, err

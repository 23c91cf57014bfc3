"""Ctrl-C in ledgerctl's long commands: a real ledgerctl process against a real ledger
(in-memory store), sent SIGINT, as a terminal sends it, once the command is under way; what
it leaves behind and what it says."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from eventsourcing.utils import get_topic

from services.ledger.domain.incident import Incident
from tests.ledgerctl_support import Ctl, backlog_line

ROOT = Path(__file__).resolve().parents[2]
#: Enough reports that sending them, or exporting their history, takes seconds: the interrupt
#: comes within milliseconds of the condition the test waits on, long before the end.
BACKLOG = 10_000


def backlog(path: Path, count: int) -> Path:
    """A field device's backlog of ``count`` reports (JSON Lines)."""
    with path.open("w", encoding="utf-8") as file:
        for n in range(count):
            file.write(backlog_line(n) + "\n")
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


def past_the_first_chunk(ctl: Ctl, chunk: int) -> Callable[[], bool]:
    """Whether the ledger has recorded a report of the second chunk: ledgerctl sends a chunk
    once the one before is answered, so it has the first chunk's answers by then."""
    reported = get_topic(Incident.Reported)
    recorder = ctl.ledger.server.ledger.recorder
    return lambda: len(recorder.select_notifications(1, chunk + 1, topics=[reported])) > chunk


def test_an_interrupted_ingest_says_how_far_it_got_and_that_sending_again_is_safe(
    ctl: Ctl, tmp_path: Path
) -> None:
    path = backlog(tmp_path / "backlog.jsonl", BACKLOG)
    chunk = 20
    codes = tmp_path / "codes.csv"
    process = start(
        ctl, "bawaslu", "ingest", str(path), "--chunk-size", str(chunk), "--codes", str(codes)
    )
    out, err = interrupt_once(process, past_the_first_chunk(ctl, chunk), "a chunk answered")
    assert process.returncode == 130, (
        "the backlog was sent before the interrupt"
        if process.returncode == 0
        else (process.returncode, out, err)
    )
    found = re.search(
        r"INTERRUPTED: interrupted after ([\d,]+) of 10,000 reports were sent and answered", err
    )
    assert found is not None, err
    answered = int(found.group(1).replace(",", ""))
    assert answered >= chunk, err
    assert f"({found.group(1)} recorded now)." in err, err
    assert "Running the same command again is safe" in err, err
    # The outcomes so far, as a finished run shows them, without claiming the whole file.
    assert "recorded now" in out and "reports are in the ledger" not in out, out
    # The codes file holds the reports answered so far, and says so (not "all").
    assert f"The reference codes of the {found.group(1)} reports answered so far" in out, out
    assert len(codes.read_text().splitlines()) == answered + 1, "a header, then each report"
    # Sent again, as the message says: what it said was answered comes back recorded before,
    # with at most the chunk in flight besides; the rest is recorded now, nothing twice.
    _code, again, _err = ctl.run("bawaslu", "--json", "ingest", str(path))
    outcomes = Counter(json.loads(text)["outcome"] for text in again.splitlines())
    assert outcomes["CREATED"] + outcomes["DUPLICATE"] == BACKLOG, outcomes
    assert answered <= outcomes["DUPLICATE"] <= answered + chunk, (answered, outcomes)


def test_an_interrupted_ingest_with_json_says_it_in_the_error_object(
    ctl: Ctl, tmp_path: Path
) -> None:
    path = backlog(tmp_path / "backlog.jsonl", BACKLOG)
    chunk = 20
    process = start(ctl, "bawaslu", "--json", "ingest", str(path), "--chunk-size", str(chunk))
    out, err = interrupt_once(process, past_the_first_chunk(ctl, chunk), "a chunk answered")
    assert process.returncode == 130, (process.returncode, err)
    error = json.loads(err)["error"]
    assert (error["code"], error["exit_code"]) == ("INTERRUPTED", 130), error
    assert error["metadata"]["reports"] == str(BACKLOG), error
    answered = int(error["metadata"]["answered"])
    assert answered >= chunk, error
    assert answered == sum(
        int(error["metadata"].get(o, "0")) for o in ("created", "duplicate", "conflict", "invalid")
    ), error
    # One line per report answered (the last one perhaps cut short by the interrupt).
    assert len(out.splitlines()) in (answered, answered - 1) or answered == 0, (
        answered,
        out[-300:],
    )

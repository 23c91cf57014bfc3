"""ledgerctl's console script before any command runs: a real ``python -m ledgerctl`` process,
sent SIGINT as a terminal sends it while it is still importing (the first second or two of
every run, ``ledgerctl --version`` included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: ledgerctl's entry point, its import of the client held until a signal comes: the import
#: hook says so on stderr and waits, as a slow import would, so that the interrupt lands
#: inside the import whatever the machine's speed.
HELD_IMPORT = """
import sys, time

class Held:
    def find_spec(self, name, path=None, target=None):
        if name == "incidentledger_client.cli":
            sys.stderr.write("importing\\n")
            sys.stderr.flush()
            time.sleep(60)
        return None

sys.meta_path.insert(0, Held())
import ledgerctl
ledgerctl.run()
"""


def test_ctrl_c_while_ledgerctl_imports_exits_130_without_a_traceback() -> None:
    """A Ctrl-C while ledgerctl was still importing printed a Python traceback (and the
    interpreter's own status) instead of ending as every interrupted command ends: 130."""
    pythonpath = os.pathsep.join([str(ROOT), str(ROOT / "gen"), str(ROOT / "clients" / "python")])
    process = subprocess.Popen(
        [sys.executable, "-c", HELD_IMPORT, "--version"],
        env={**os.environ, "PYTHONPATH": pythonpath},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 60
        while process.stderr.readline().strip() != "importing":
            assert process.poll() is None, "ended before importing"
            assert time.monotonic() < deadline, "no sign of the import"
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, (process.returncode, out, err)
    assert (out, err) == ("", ""), (out, err)

"""The disk under the ledger's SQLite store fills during the day, and is freed again.

Before, a command the full disk refused was answered ``STORE_UNAVAILABLE``, "the store is
unreachable", and ``ledgerctl`` told the duty officer that the ledger "cannot reach its
database": an operator looked at the network while the disk filled. It is now
``UNAVAILABLE`` ``STORE_FULL`` (still retried, with the same request id), saying that the
disk is full; nothing is half recorded, and once space is freed the same request id records
the command, once, without a restart.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from services.common.grpc_errors import error_info
from tests.ledgerctl_support import Ctl
from tests.support import Client, module_env, rid, run_module, running_ledger, settings_for

#: Far more reports than fit in the space left: the loop that fills the disk ends.
MOST_REPORTS = 5000


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A file system of 4 MB of its own (tmpfs), for the store to fill."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small file system needs root")
    disk = tmp_path / "small-disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def report(client: Client, request_id: str) -> api.ReportIncidentResponse:
    response: api.ReportIncidentResponse = client.stub.ReportIncident(
        api.ReportIncidentRequest(
            request_id=request_id,
            title="Ballot boxes stored in an unlocked room",
            category="logistics_failure",
            description="The room of the village office has no lock. " * 20,
            location=pb.Location(kecamatan="ipuh"),
        ),
        metadata=client.md("kpu"),
        timeout=60,
    )
    return response


def fill(disk: Path, leave: int = 64 * 1024) -> Path:
    """All but ``leave`` bytes of the disk taken by a file of someone else's."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with filler.open("wb") as out:
        out.write(b"\0" * max(0, free - leave))
    if not leave:  # to the last block, whatever the size reported
        with contextlib.suppress(OSError), filler.open("ab", buffering=0) as out:
            while out.write(b"\0" * 4096):
                pass
    return filler


def test_a_full_disk_is_said_so_and_freed_space_takes_the_same_request_once(
    small_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(small_disk / "ledger.sqlite"),
        "SQLITE_LOCK_TIMEOUT": "30",
    }
    with running_ledger(settings_for(tmp_path, store)) as client:
        recorded = [report(client, rid()).result.position]
        filler = fill(small_disk)
        refused_id = ""
        for _ in range(MOST_REPORTS):
            request_id = rid()
            try:
                recorded.append(report(client, request_id).result.position)
            except grpc.RpcError as exc:
                refused = exc
                refused_id = request_id
                break
        assert refused_id, "the disk never filled"
        assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused
        info = error_info(refused)  # type: ignore[arg-type]
        assert info is not None and info.reason == "STORE_FULL", info
        assert "no space left" in str(refused.details()), refused.details()
        assert "unreachable" not in str(refused.details()), refused.details()

        ctl = Ctl(client, capsys)
        title = "Report sent while the disk is full"
        code, _, err = ctl.run("kesbangpol", "--timeout", "3", "report", title, "hoax", "ipuh")
        assert code == 6, err
        assert "UNAVAILABLE STORE_FULL" in err, err
        assert "has no space left (its disk is full)" in err, err
        assert "cannot reach its database" not in err, err
        found = re.search(r"--request-id ([0-9a-f]{32})\b", err)
        assert found is not None, err

        filler.unlink()  # the operator frees space: no restart
        again = report(client, refused_id)
        assert again.result.position > recorded[-1]
        assert report(client, refused_id) == again, "the retry was recorded twice"
        sent = ctl.json(
            "kesbangpol", "report", title, "hoax", "ipuh", "--request-id", found.group(1)
        )
        assert sent["position"] > again.result.position, sent

        code, out, err = ctl.run("inspektorat", "--json", "audit", "verify")
        assert code == 0, err
        verified = json.loads(out)
        # Every report answered OK, the one refused and sent again, ledgerctl's: no other.
        assert verified["events"] == len(recorded) + 2, verified
    with contextlib.suppress(FileNotFoundError):
        filler.unlink()


@pytest.mark.parametrize("module", ["services.ledger", "services.notifier"])
def test_a_start_on_a_full_disk_says_so_in_one_line(small_disk: Path, module: str) -> None:
    """A service (re)started while the disk under its data directory is full: a traceback
    (ENOSPC writing the development credentials), or one line saying that the store "cannot
    be reached" and to check the database's settings. Now one line saying the disk is full,
    and exit status 1."""
    fill(small_disk, leave=0)
    env = module_env(
        LEDGER_DATA_DIR=str(small_disk / "data"),
        LEDGER_LOG_FORMAT="json",
        NATS_URL="nats://127.0.0.1:1",
        LEDGER_LISTEN="127.0.0.1:0",
        NOTIFIER_LISTEN="127.0.0.1:0",
    )
    done = run_module([module], env)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1, done.stdout + done.stderr
    failed = [json.loads(line) for line in done.stdout.splitlines() if '"level": "error"' in line]
    service = module.split(".")[1]
    assert len(failed) == 1, done.stdout
    assert failed[0]["event"] in {f"{service}.store_full", f"{service}.disk_full"}, failed
    assert "full" in failed[0]["hint"] and "free space" in failed[0]["hint"], failed

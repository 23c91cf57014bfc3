"""``python -m demo.run`` end to end, as ``make demo`` runs it: against a stack named by
DEMO_STACK (ledger, relay, NATS, notifier on free ports), and starting a stack of its own.

Checks the outcome, not only the exit code: what the ledger holds afterwards (statuses,
leads, the decision in force, every event's occur_time on the printed election-day clock,
a clean audit) and what was printed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import psutil
import yaml

from demo.run import SCENARIO, Scenario
from demo.stack import listening
from incidentledger_client import LedgerClient
from services.common.config import PROJECT_ROOT
from services.common.natsserver import NatsServer, free_ports
from tests.fanout_support import running_stack
from tests.support import store_environment

#: A generous bound for the whole demo (about 10-15 s here, several stacks share 2 cores).
DEMO_SECONDS = 240


def demo_environment(**env: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DEMO_", "LEDGER_"))}
    return {
        **clean,
        "PYTHONPATH": os.pathsep.join(
            str(p) for p in (PROJECT_ROOT, PROJECT_ROOT / "gen", PROJECT_ROOT / "clients/python")
        ),
        "COLUMNS": "250",  # one step per line, as on a wide terminal
        **env,
    }


def run_demo(svg: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "demo.run", "--delay", "0", "--svg", str(svg)],
        cwd=PROJECT_ROOT,
        env=demo_environment(**env),
        capture_output=True,
        text=True,
        timeout=DEMO_SECONDS,
        check=False,
    )


def yesterdays(zone: ZoneInfo, started: datetime) -> set[date]:
    """The days "yesterday" may have meant during the run (it may cross midnight)."""
    return {(moment.astimezone(zone) - timedelta(days=1)).date() for moment in (started, now())}


def now() -> datetime:
    return datetime.now(UTC)


def played_day(out: str) -> date:
    found = re.search(r"is played on (\d{4}-\d{2}-\d{2})", out)
    assert found, out
    return date.fromisoformat(found.group(1))


def test_the_demo_plays_a_polling_day_against_the_stack_demo_stack_names(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    scenario = Scenario.load(SCENARIO)
    expect = yaml.safe_load(SCENARIO.read_text())["expect"]
    svg = tmp_path / "map.svg"
    with (
        store_environment("sqlite", tmp_path) as env,
        running_stack(tmp_path, env, nats_server.url) as stack,
    ):
        started = now()
        done = run_demo(
            svg,
            DEMO_STACK=f"{stack.ledger.address},127.0.0.1:{stack.notifier.port}",
            LEDGER_TOKENS_FILE=str(stack.ledger.data_dir / "credentials" / "dev-tokens.yaml"),
        )
        out = done.stdout
        assert done.returncode == 0, out + done.stderr
        day = played_day(out)
        assert day in yesterdays(scenario.zone, started)

        with LedgerClient(stack.ledger.address, stack.ledger.tokens["inspektorat"]) as auditor:
            by_title = {i.title: i for i in auditor.list_incidents()}
            saved = [s for s in scenario.steps if "save" in s]
            saved += [r for s in scenario.steps for r in s.get("reports", [])]  # a synced backlog
            names = {s["save"]: by_title[s["title"]].name for s in saved}
            assert len(by_title) == len(names)
            final = {key: auditor.get_incident(name) for key, name in names.items()}
            for key, status in expect["statuses"].items():
                assert final[key].status == status, key
            for key, severity in expect["severities"].items():
                assert final[key].severity == severity, key
            for key, lead in expect["leads"].items():
                assert final[key].lead_agency == lead, key
            # Closed what should be closed: nothing is left resolved but not closed.
            assert not [k for k, i in final.items() if i.status == "RESOLVED"]
            assert final["clash_again"].merged_into == names["clash"]

            # Every event happened at its step's time on the played day, as reported.
            expected: dict[str, list[datetime]] = {key: [] for key in names}
            for step, at in zip(scenario.steps, scenario.times, strict=True):
                moment = datetime.combine(day, at, scenario.zone)
                for report in step.get("reports", []):  # saved offline, at its own time
                    saved_at = time.fromisoformat(report["at"])
                    expected[report["save"]].append(datetime.combine(day, saved_at, scenario.zone))
                if step["do"] == "sync_backlog":
                    continue
                expected[step.get("save") or step["incident"]].append(moment)
                if step["do"] == "merge":  # the target records the duplicate too
                    expected[step["target"].removeprefix("@")].append(moment)
            for key, name in names.items():
                occurred = [e.occur_time for e in auditor.incident_events(name)]
                assert occurred == expected[key], key

            # The three-day restriction, from 15:30 on the day, is in force now.
            decisions = auditor.decisions_in_force(kecamatan=expect["decision_in"])
            assert [d.incident for d in decisions] == [names["rally"]]
            valid_from = datetime.combine(day, time(15, 30), scenario.zone)
            assert decisions[0].valid_from == valid_from
            assert decisions[0].valid_until == valid_from + timedelta(days=3)
            assert auditor.verify_ledger().ok
            # The synced reports keep the phone's provenance.
            (reported, *_) = auditor.incident_events(names["field_queue"])
            assert reported.payload["device_id"] == "hp-panwascam-malin-deman-03"

    # Printed: each step beside its time on the election-day clock.
    for step, at in zip(scenario.steps, scenario.times, strict=True):
        line = rf"^{at:%H:%M} WIB +{step['as']} {re.escape(step['say'])} \({step['do']} "
        assert re.search(line, out, re.MULTILINE), line
    assert "05:50 WIB Reported 'Ballot papers short at TPS 02 Lubuk Bento'" in out  # notifier
    assert "The desk closes the flood (approve_closure" in out
    assert "4 h 05 min after the report" in out
    # The day's response times from occur times: KPU resolved in 60 and 50 min, median 55.
    day_figures = out.split("on the election-day clock (occur times)")[1]
    assert re.search(r"│ kpu +│ +2 │ 0:30:00 │ 0:34:00 │ .* │ +2 │ 0:55:00 │", day_figures)
    # The board, the decisions in force, the audit.
    board = out.split("Board (open work)")[1]
    assert "REPORTED (3)" in board and "VERIFIED (1)" in board and "RESPONDING (2)" in board
    decisions_out = out.split("Decisions in force now")[1]
    assert "Forkopimda Mukomuko" in decisions_out and "Kota Mukomuko /" in decisions_out
    assert re.search(r"audit verify: ok \(58 events, 12 incidents", out)
    received = re.search(r"the subscriber received (\d+) notifications", out)
    assert received and int(received.group(1)) == 58
    assert "3 of 3 reports recorded in one call" in out
    assert "3 of 3 recorded before, 0 recorded twice" in out
    assert 'data-kecamatan="air_manjunto"' in svg.read_text()


def test_with_nothing_given_it_starts_a_stack_of_its_own_on_free_ports_and_stops_it(
    tmp_path: Path,
) -> None:
    # make run's addresses, for this test: free, nothing answers there.
    run_ledger, run_notifier = (f"127.0.0.1:{p}" for p in free_ports(2))
    svg = tmp_path / "map.svg"
    done = run_demo(svg, LEDGER_LISTEN=run_ledger, NOTIFIER_LISTEN=run_notifier)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert f"make run's stack ({run_ledger}, {run_notifier}) is not up" in out
    started = re.search(
        r"ledger 127\.0\.0\.1:(\d+), notifier 127\.0\.0\.1:(\d+), NATS 127\.0\.0\.1:(\d+), "
        r"data in (\S+)",
        out,
    )
    assert started, out
    ports = [int(p) for p in started.groups()[:3]]
    data_dir = started.group(4)
    # Free ports of its own: neither make run's addresses nor the defaults.
    taken = {int(run_ledger.rpartition(":")[2]), int(run_notifier.rpartition(":")[2])}
    assert not set(ports) & (taken | {50051, 50052, 14222}) and len(set(ports)) == 3
    assert f"Ledger 127.0.0.1:{ports[0]}, notifier 127.0.0.1:{ports[1]}" in out
    assert re.search(r"audit verify: ok \(58 events, 12 incidents", out)
    assert "Forkopimda Mukomuko" in out.split("Decisions in force now")[1]
    assert svg.is_file()
    # Stopped: nothing listens on its ports, no process of it is left, its data is gone.
    assert f"stack stopped (exit code 0); nothing listens on ports {ports[0]}" in out
    assert not [p for p in ports if listening(f"127.0.0.1:{p}")]
    assert not Path(data_dir).exists()
    left = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("LEDGER_DATA_DIR") == data_dir:
                left.append(process)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    assert not left


def test_in_indonesian_with_stay_the_situation_room_shows_the_day_until_stopped(
    tmp_path: Path,
) -> None:
    """``make demo DEMO_LANG=id``: the day played in Indonesian on a stack of its own, whose
    situation room then shows it, with its address and the coordinator's sign-in printed,
    until SIGTERM (or Ctrl-C) stops the stack."""
    command = [sys.executable, "-m", "demo.run", "--stay", "--lang", "id", "--delay", "0"]
    process = subprocess.Popen(
        [*command, "--svg", str(tmp_path / "map.svg")],
        cwd=PROJECT_ROOT,
        env=demo_environment(DEMO_STACK="own"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    signed = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C"):
                signed.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert signed.wait(DEMO_SECONDS), "".join(lines)
        out = "".join(lines)
        found = re.search(r"hari itu: http://(127\.0\.0\.1:\d+)/", out)
        token = re.search(r"instansi Desk Pilkada \(desk_pilkada\), token (\S+)", out)
        assert found and token, out
        assert re.search(r"audit verify: ok \(58 peristiwa, 12 kejadian", out)
        assert "Desk menutup kejadian banjir (approve_closure" in out  # the scenario's texts
        # The phone's backlog synced, in Indonesian too.
        flat = " ".join(out.split())
        assert "disimpan tanpa sinyal pukul 08.40 WIB:" in flat, out
        assert "3 dari 3 laporan tercatat dalam satu panggilan" in flat, out
        assert "3 dari 3 tercatat sebelumnya, 0 tercatat dua kali" in flat, out
        with httpx.Client(base_url=f"http://{found[1]}", timeout=10.0) as web:
            form = re.search(r'name="csrf" value="([^"]+)"', web.get("/login").text)
            assert form
            sign_in = {"csrf": form[1], "agency": "desk_pilkada", "token": token[1]}
            assert web.post("/login", data=sign_in).status_code == 303
            board = web.get("/board").text
        texts = yaml.safe_load(SCENARIO.with_name("mukomuko.id.yaml").read_text())["texts"]
        for step in Scenario.load(SCENARIO).steps:
            if step["do"] == "report":  # each incident of the day, titled in Indonesian
                assert texts[step["title"]] in board, step["title"]
        assert "<h1>Papan</h1>" in board
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(DEMO_SECONDS)
        reader.join(10)
    out = "".join(lines)
    assert process.returncode == 0, out
    # said in Indonesian too, as the rest of the run (it was English)
    stopped = re.search(
        r"layanan dihentikan \(kode keluar 0\); tidak ada lagi yang mendengarkan di port "
        r"([\d, ]+);",
        out,
    )
    assert stopped, out
    assert "menjalankan layanan sendiri (python -m services.run): buku besar" in out
    assert not [p for p in stopped[1].split(", ") if listening(f"127.0.0.1:{p}")]

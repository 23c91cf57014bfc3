"""ledgerctl's live and audit commands against the whole stack (NATS, ledger, notifier)."""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import notifier_service_pb2 as napi
from incidentledger_client.cli import main
from services.common.config import WebhookSettings
from services.common.natsserver import NatsServer
from tests.fanout_support import (
    WEBHOOK_SECRET,
    Stack,
    running_stack,
    wait_until,
    webhook_receiver,
)
from tests.ledgerctl_support import without_server_log
from tests.support import store_environment
from tests.unit.test_i18n import english_words

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.nats, pytest.mark.timeout(60)]


@pytest.fixture
def stack(tmp_path: Path, nats_server: NatsServer) -> Iterator[Stack]:
    quick = WebhookSettings(
        max_attempts=2, backoff_seconds=0.05, max_backoff_seconds=0.1, timeout_seconds=1.0
    )
    with (
        store_environment("sqlite", tmp_path) as env,
        running_stack(tmp_path, env, nats_server.url, webhooks=quick) as running,
    ):
        yield running


class LiveCtl:
    def __init__(self, stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
        self.stack = stack
        self.capsys = capsys
        self.err = ""  # the last command's stderr

    def run(self, agency: str, *args: str) -> tuple[int, str]:
        self.capsys.readouterr()
        code = main(
            [
                "--address",
                self.stack.ledger.address,
                "--notifier-address",
                f"127.0.0.1:{self.stack.notifier.port}",
                "--tokens-file",
                str(self.stack.ledger.data_dir / "credentials" / "dev-tokens.yaml"),
                "--agency",
                agency,
                *args,
            ]
        )
        captured = self.capsys.readouterr()
        self.err = captured.err
        return code, without_server_log(captured.out)

    def json(self, agency: str, *args: str) -> Any:
        code, out = self.run(agency, "--json", *args)
        assert code == 0, out
        return json.loads(out)


def test_watch_prints_what_the_notifier_delivers(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    ctl = LiveCtl(stack, capsys)
    first = stack.ledger.report("bpbd", category="flood")
    stack.ledger.report("kesbangpol")
    code, out = ctl.run("bpbd", "watch", "--cursor", "v1.0", "--count", "1", "--category", "flood")
    assert code == 0
    assert first.incident.removeprefix("incidents/")[:8] in out
    assert first.reference and first.reference in out  # the code people read out
    assert "Reported" in out
    assert "Kota Mukomuko by bpbd" in out and "kota_mukomuko" not in out, out  # by its name
    code, out = ctl.run(
        "bpbd", "--lang", "id", "watch", "--cursor", "v1.0", "--count", "1", "--category", "flood"
    )
    assert code == 0
    assert "Dilaporkan" in out and "Kota Mukomuko oleh bpbd" in out and "Reported" not in out, out
    # --json writes JSON Lines: one object per notification, each on its own line.
    code, out = ctl.run("bpbd", "--json", "watch", "--cursor", "v1.0", "--count", "2")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2, out
    received = [json.loads(line) for line in lines]
    assert received[0]["event"]["incident"] == first.incident
    assert received[0]["incident"]["location"]["kecamatan"] == "kota_mukomuko"
    assert received[1]["event"]["type"] == "Reported" and received[1]["cursor"]


def test_watch_says_what_a_decision_is_and_when_it_starts_and_ends_in_wib(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    ctl = LiveCtl(stack, capsys)
    reported = stack.ledger.report("kesbangpol", category="crowd_gathering")
    assert ctl.run("desk_pilkada", "verify", reported.incident)[0] == 0
    day = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
    decided = ctl.run(
        "desk_pilkada",
        *("decide", reported.incident, "Large gatherings restricted", "--forum", "Forkopimda"),
        *("--by", "desk_pilkada", "--rationale", "tension"),
        *("--valid-from", f"{day} 18:00", "--valid-until", f"{day} 22:00"),
    )
    assert decided[0] == 0, decided
    code, out = ctl.run("polres", "watch", "--cursor", "v1.0", "--count", "3")
    assert code == 0
    # The line, however the terminal's width wraps it.
    decision = " ".join(out.split()).split("DecisionRecorded", 1)[1]
    assert "Large gatherings restricted" in decision, out
    assert f"from {day} 18:00:00 WIB until {day} 22:00:00 WIB" in decision, out


def test_a_watch_that_ends_says_which_cursor_goes_on_from_there(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table shows no cursors: a watch that ends (--count, Ctrl-C, the notifier away)
    says on stderr where to go on from, and going on from there misses nothing and repeats
    nothing."""
    ctl = LiveCtl(stack, capsys)
    first = stack.ledger.report("bpbd", category="flood")
    second = stack.ledger.report("bpbd", category="flood")
    code, out = ctl.run("bpbd", "watch", "--cursor", "v1.0", "--count", "1", "--category", "flood")
    assert code == 0 and first.incident.removeprefix("incidents/")[:8] in out, out
    found = re.search(r"--cursor (v2\.[0-9a-f]+\.\d+)", ctl.err)
    assert found, ctl.err
    code, out = ctl.run(
        "bpbd", "watch", "--cursor", found[1], "--count", "1", "--category", "flood"
    )
    assert code == 0
    assert second.incident.removeprefix("incidents/")[:8] in out, out
    assert first.incident.removeprefix("incidents/")[:8] not in out, out
    # JSON Lines carry each cursor already: nothing more on stderr.
    code, out = ctl.run("bpbd", "--json", "watch", "--cursor", "v1.0", "--count", "1")
    assert code == 0 and "--cursor" not in ctl.err, ctl.err


def test_the_cursor_to_go_on_from_is_plain_text_on_a_terminal(
    stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal the cursor's numbers were coloured by rich's highlighting: escape codes
    inside the cursor, which a person copies to run the watch again."""
    monkeypatch.setenv("FORCE_COLOR", "1")  # a terminal's colours, as rich writes them there
    monkeypatch.delenv("NO_COLOR", raising=False)
    ctl = LiveCtl(stack, capsys)
    stack.ledger.report("bpbd", category="flood")
    code, _out = ctl.run("bpbd", "watch", "--cursor", "v1.0", "--count", "1")
    assert code == 0
    found = re.search(r"--cursor (\S+)", ctl.err)
    assert found and re.fullmatch(r"v2\.[0-9a-f]+\.\d+", found[1]), repr(ctl.err)
    assert "\x1b" not in ctl.err, repr(ctl.err)


def test_a_watch_stopped_with_ctrl_c_exits_130_and_says_where_to_go_on_from(
    stack: Stack,
) -> None:
    """Ctrl-C is how a watch is stopped, and the docs give Ctrl-C exit code 130 with no
    exception for watch: it exited 0, so a script could not tell it from a --count that was
    reached. A real process, sent SIGINT as a terminal sends it, once a notification is shown."""
    reported = stack.ledger.report("bpbd", category="flood")
    pythonpath = os.pathsep.join([str(ROOT), str(ROOT / "gen"), str(ROOT / "clients" / "python")])
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "ledgerctl"),
            *("--address", stack.ledger.address),
            *("--notifier-address", f"127.0.0.1:{stack.notifier.port}"),
            *("--tokens-file", str(stack.ledger.data_dir / "credentials" / "dev-tokens.yaml")),
            *("-a", "bpbd", "watch", "--cursor", "v1.0", "--category", "flood"),
        ],
        env={**os.environ, "PYTHONPATH": pythonpath, "LEDGER_LANG": "en"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        shown = process.stdout.readline()  # the notification: the watch is under way
        assert reported.incident.removeprefix("incidents/")[:8] in shown, shown
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, (process.returncode, out, err)
    assert re.search(r"run the same watch with --cursor v2\.[0-9a-f]+\.\d+$", err.strip()), err
    assert "Traceback" not in err, err


def test_a_refused_cursor_is_not_offered_to_go_on_from(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cursor of a stream made again (NATS lost its data) is refused, CURSOR_EXPIRED: the
    watch must not end by telling the officer to run it again with that same cursor."""
    ctl = LiveCtl(stack, capsys)
    stack.ledger.report("bpbd", category="flood")
    code, _out = ctl.run("bpbd", "watch", "--cursor", "v2.1.0", "--count", "1")
    assert code != 0
    assert "made again" in ctl.err, ctl.err
    assert "--cursor v2.1.0" not in ctl.err, ctl.err


def test_a_cursor_the_notifier_does_not_read_is_not_offered_to_go_on_from(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """A notifier replica older than the cursor's format (during a rolling upgrade, one from
    before cursors named their stream refuses every `v2.` cursor) answers INVALID_ARGUMENT
    on the cursor; a format newer than this notifier's stands in for it here. The watch
    ended telling the officer to run it again with that same cursor."""
    ctl = LiveCtl(stack, capsys)
    stack.ledger.report("bpbd", category="flood")
    code, _out = ctl.run("bpbd", "watch", "--cursor", "v3.1.0", "--count", "1")
    assert code != 0
    assert "not a cursor this notifier gave out" in ctl.err, ctl.err
    assert "--cursor v3.1.0" not in ctl.err, ctl.err


def test_webhooks_register_list_dead_letters_and_replay(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    ctl = LiveCtl(stack, capsys)
    with webhook_receiver() as receiver:
        receiver.status = 503
        registered = ctl.json(
            "dinkes", "webhooks", "register", receiver.url, "--secret", WEBHOOK_SECRET
        )
        assert registered["url"] == receiver.url
        listed = ctl.json("dinkes", "webhooks", "list")
        assert [w["url"] for w in listed] == [receiver.url]
        result = stack.ledger.report("dinkes")

        def dead() -> list[Any]:
            found: list[Any] = ctl.json("dinkes", "webhooks", "dead-letters")
            return found

        wait_until(lambda: len(dead()) == 1, what="a dead letter")
        assert dead()[0]["event_id"] == result.event_id
        (listed_hook,) = ctl.json("dinkes", "webhooks", "list")  # what it has still to get
        assert (listed_hook["waiting_deliveries"], listed_hook["dead_letters"]) == (0, 1)
        receiver.status = 204
        code, _ = ctl.run("dinkes", "webhooks", "replay", "--all")
        assert code == 0
        wait_until(lambda: len(receiver.verified()) == 1, what="the replayed delivery")
        assert dead() == []


def test_audit_as_of_and_response_times_tables(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    ctl = LiveCtl(stack, capsys)
    result = stack.ledger.report("kesbangpol", title="Early report")
    before = datetime.now(UTC)
    stack.ledger.report("kesbangpol", title="Later report")
    past = ctl.json("inspektorat", "audit", "as-of", before.isoformat())
    titles = [i["title"] for i in (past if isinstance(past, list) else past["incidents"])]
    assert titles == ["Early report"]
    code, out = ctl.run(
        "inspektorat", "audit", "as-of", before.isoformat(), "--incident", result.incident
    )
    assert code == 0 and "Early report" in out
    code, out = ctl.run("inspektorat", "response-times", "--by", "severity")
    assert code == 0
    assert "medium" in out


def test_long_work_shows_progress_with_count_and_rate_on_a_terminal(
    stack: Stack,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from rich.console import Console

    from incidentledger_client.cli import output

    terminal = io.StringIO()
    monkeypatch.setattr(
        output, "error_console", lambda: Console(file=terminal, force_terminal=True, width=120)
    )
    for _ in range(3):
        stack.ledger.report("kesbangpol")
    ctl = LiveCtl(stack, capsys)
    code, _ = ctl.run("inspektorat", "audit", "export", str(tmp_path / "export.jsonl"))
    assert code == 0
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.getvalue())  # colours off
    # The bar counts positions up to the ledger's last (each report also records its request
    # and its code's claim), and ends full, with a rate.
    done = re.findall(r"(\d+)/(\d+) positions +[\d,.]+/s", shown)
    assert done, shown
    assert done[-1][0] == done[-1][1] and int(done[-1][1]) >= 3, shown
    assert len((tmp_path / "export.jsonl").read_text().splitlines()) >= 3


def test_webhooks_update_delete_deliveries_and_an_empty_replay(
    stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctl = LiveCtl(stack, capsys)
    code, out = ctl.run("dinkes", "webhooks", "replay", "--all")
    assert code == 0 and "nothing to replay" in out
    code, out = ctl.run("dinkes", "--lang", "id", "webhooks", "replay", "--all")
    assert code == 0 and "tidak ada surat mati" in out
    with webhook_receiver() as first, webhook_receiver() as second:
        hook = ctl.json("dinkes", "webhooks", "register", first.url, "--secret", WEBHOOK_SECRET)
        result = stack.ledger.report("dinkes", category="flood")
        wait_until(lambda: len(first.verified()) == 1, what="the first delivery")
        deliveries = ctl.json("dinkes", "webhooks", "deliveries", "--incident", result.incident)
        assert [(d["target"], d["outcome"]) for d in deliveries] == [(hook["name"], "delivered")]
        code, out = ctl.run("dinkes", "webhooks", "deliveries")
        assert code == 0 and result.incident.removeprefix("incidents/")[:8] in out
        code, out = ctl.run("dinkes", "webhooks", "list")
        assert code == 0 and "everything" in out, out  # each webhook's filter, in words
        for args, heading in ((["deliveries"], "Pengiriman (1)"), (["list"], "dibuat")):
            code, out = ctl.run("dinkes", "--lang", "id", "webhooks", *args)
            assert code == 0 and heading in out, out
            assert english_words(out) == set(), out
        # the outcome in Indonesian too ("delivered" was left in the table)
        code, out = ctl.run("dinkes", "--lang", "id", "webhooks", "deliveries")
        assert "terkirim" in out and "delivered" not in out, out
        # A WEBHOOK_SECRET left in the shell does not change the secret of an update that
        # does not ask for it: the deliveries below still verify with the first secret.
        monkeypatch.setenv("WEBHOOK_SECRET", "another-secret-left-in-the-shell")
        updated = ctl.json(
            "dinkes",
            "webhooks",
            "update",
            hook["name"],
            "--url",
            second.url,
            "--min-severity",
            "HIGH",
        )
        assert (updated["name"], updated["url"]) == (hook["name"], second.url), "same name"
        assert updated["filter"]["min_severity"] == "high"
        listed = ctl.json("dinkes", "webhooks", "list")
        assert [(w["name"], w["url"], w["filter"]["min_severity"]) for w in listed] == [
            (hook["name"], second.url, "high")
        ]
        stack.ledger.report("dinkes", category="flood", severity="critical")
        wait_until(lambda: len(second.verified()) == 1, what="a delivery to the updated hook")
        assert len(first.verified()) == 1, "nothing more to the old URL"
        # Only what is given changes: a new category keeps the severity; the text says so.
        # The webhook named by the first characters of its id, as for incidents.
        short = hook["name"].removeprefix("webhooks/wh_")[:6]
        code, out = ctl.run("dinkes", "webhooks", "update", short, "--category", "flood")
        assert code == 0, out
        assert f"updated {hook['name']}" in out
        assert second.url in out and "severity >= high; categories: flood" in out
        code, _ = ctl.run("dinkes", "webhooks", "update", hook["name"])
        assert code == 2 and "nothing to change" in ctl.err
        code, _ = ctl.run("dinkes", "webhooks", "update", hook["name"], "--secret", "short")
        assert code == 2 and "webhook.secret" in ctl.err
        monkeypatch.delenv("WEBHOOK_SECRET")
        code, _ = ctl.run("dinkes", "webhooks", "update", hook["name"], "--secret-from-env")
        assert code == 2 and "WEBHOOK_SECRET is not set" in ctl.err
        code, _ = ctl.run("kpu", "webhooks", "update", hook["name"], "--url", first.url)
        assert code == 3 and "your agency has no webhook" in ctl.err  # not found, as the id
        code, out = ctl.run("dinkes", "webhooks", "list")
        assert code == 0 and "severity >= high; categories: flood" in out, out
        code, out = ctl.run("dinkes", "webhooks", "delete", f"wh_{short}")
        assert code == 0 and "deleted" in out
        assert ctl.json("dinkes", "webhooks", "list") == []
        code, _ = ctl.run("dinkes", "webhooks", "delete", listed[0]["name"])
        assert code == 3 and "WEBHOOK_NOT_FOUND" in ctl.err, ctl.err  # deleted: not found
        typed = ctl.json(
            "dinkes", "webhooks", "register", first.url, "--secret", WEBHOOK_SECRET,
            "--event-type", "DecisionRecorded", "--agency", "polres",
            "--kecamatan", "ipuh,Penarik",  # a list as people write one
        )  # fmt: skip
        assert (typed["filter"]["event_types"], typed["filter"]["agencies"]) == (
            ["DecisionRecorded"],
            ["polres"],
        )
        assert typed["filter"]["kecamatan"] == ["ipuh", "penarik"]


def test_webhooks_deliveries_shows_the_latest_not_the_first_of_the_day(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """``-n N`` is what just happened (the latest N, in time order), as an operator looking
    at the log after an outage wants; before, it was the first N ever logged.

    The log's time order is the order the deliveries ended in, which is not the reports'
    order: deliveries of different incidents run side by side (one of them ended after a
    later report's in a CI run). So the order expected is the whole log's, read first."""
    ctl = LiveCtl(stack, capsys)
    md = stack.ledger.md("bpbd")

    def logged() -> int:
        return len(stack.stub.ListDeliveries(napi.ListDeliveriesRequest(), metadata=md).deliveries)

    with webhook_receiver() as receiver:
        ctl.json("bpbd", "webhooks", "register", receiver.url, "--secret", WEBHOOK_SECRET)
        reports = [stack.ledger.report("bpbd", category="flood") for _ in range(4)]
        wait_until(lambda: len(receiver.verified()) == 4, what="four deliveries")
        # The receiver has each body before the notifier logs the delivery's outcome.
        wait_until(lambda: logged() == 4, what="four deliveries logged")
    everything = ctl.json("bpbd", "webhooks", "deliveries", "-n", "0")
    assert sorted(d["incident"] for d in everything) == sorted(r.incident for r in reports)
    latest = ctl.json("bpbd", "webhooks", "deliveries", "-n", "2")
    assert latest == everything[2:], latest
    code, out = ctl.run("bpbd", "webhooks", "deliveries", "-n", "2")
    assert code == 0 and "Deliveries (the latest 2)" in out, out
    # The API: newest first, page by page, and an order it does not know is refused.
    first = stack.stub.ListDeliveries(
        napi.ListDeliveriesRequest(page_size=3, order_by="time desc"), metadata=md
    )
    rest = stack.stub.ListDeliveries(
        napi.ListDeliveriesRequest(
            page_size=3, order_by="time desc", page_token=first.next_page_token
        ),
        metadata=md,
    )
    newest_first = [d.incident for d in [*first.deliveries, *rest.deliveries]]
    assert newest_first == [d["incident"] for d in reversed(everything)]
    with pytest.raises(grpc.RpcError) as refused:
        stack.stub.ListDeliveries(napi.ListDeliveriesRequest(order_by="outcome"), metadata=md)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_webhooks_deliveries_to_every_agency_for_the_coordinator_and_auditors(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--to all`` (or ``--to AGENCY``) shows other agencies' deliveries to those the
    notifier lets see them, with an agency column; before, ledgerctl always asked for the
    caller's own, so an auditor saw an empty log."""
    ctl = LiveCtl(stack, capsys)
    with webhook_receiver() as receiver:
        for agency in ("bpbd", "dinkes"):
            ctl.json(agency, "webhooks", "register", receiver.url, "--secret", WEBHOOK_SECRET)
        report = stack.ledger.report("kesbangpol", category="flood")
        wait_until(lambda: len(receiver.verified()) >= 1, what="a delivery")
        wait_until(
            lambda: len(ctl.json("inspektorat", "webhooks", "deliveries", "--to", "all")) == 2,
            what="both agencies' deliveries in the log",
        )
    assert ctl.json("inspektorat", "webhooks", "deliveries") == []  # its own: none
    every = ctl.json("inspektorat", "webhooks", "deliveries", "--to", "all")
    assert sorted(d["agency"] for d in every) == ["bpbd", "dinkes"], every
    assert {d["incident"] for d in every} == {report.incident}
    one = ctl.json("desk_pilkada", "webhooks", "deliveries", "--to", "dinkes")
    assert [d["agency"] for d in one] == ["dinkes"], one
    code, out = ctl.run("inspektorat", "webhooks", "deliveries", "--to", "all")
    assert code == 0 and "agency" in out and "bpbd" in out and "dinkes" in out, out
    # To the second: a delivery's retries come seconds apart.
    assert re.search(r"\d\d:\d\d:\d\d WIB", out), out
    code, out = ctl.run("bpbd", "webhooks", "deliveries")
    assert code == 0 and "agency" not in out, out  # its own: no column for it
    # Another agency's log stays closed to an agency that is neither.
    code, out = ctl.run("bpbd", "webhooks", "deliveries", "--to", "dinkes")
    assert code != 0 and "own deliveries only" in ctl.err, (out, ctl.err)


def test_replaying_a_dead_letter_says_how_many_went_back_with_it(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """Replaying an incident's later dead letter sends its earlier ones too: the count says
    so (before, 'replayed 1 dead letter(s)' while two were delivered again)."""
    ctl = LiveCtl(stack, capsys)
    with webhook_receiver() as receiver:
        receiver.status = 503
        ctl.json("dinkes", "webhooks", "register", receiver.url, "--secret", WEBHOOK_SECRET)
        name = stack.ledger.report("dinkes").incident
        stack.ledger.stub.EscalateIncident(
            api.EscalateIncidentRequest(request_id=secrets.token_hex(8), name=name, reason="r"),
            metadata=stack.ledger.md("dinkes"),  # its reporter
        )

        def dead() -> list[Any]:
            found: list[Any] = ctl.json("dinkes", "webhooks", "dead-letters")
            return found

        wait_until(lambda: len(dead()) == 2, what="two dead letters of one incident")
        later = dead()[-1]["name"]
        receiver.status = 204
        code, out = ctl.run("dinkes", "webhooks", "replay", later)
        assert code == 0 and "replayed 2 dead letter(s)" in out, out
        wait_until(lambda: len(receiver.verified()) == 2, what="both delivered again")
        assert dead() == []
        replayed = ctl.json("dinkes", "webhooks", "replay", later)  # already replayed
        assert replayed == {"replayed": [later], "count": 0}, replayed

"""The demo's settings: which stack (DEMO_STACK) and which day (DEMO_DAY); the day's figures;
the scenario in Bahasa Indonesia."""

from __future__ import annotations

import io
import socket
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from rich.console import Console

from demo.run import (
    SCENARIO,
    Scenario,
    ScenarioError,
    _given,
    choose_day,
    clock,
    day_text,
    percentile,
    step_texts,
    texts_in,
)
from demo.stack import RUN_LEDGER, RUN_NOTIFIER, Choice, StackError, choose, own_environment
from incidentledger_client.i18n import Language, using


def never(_address: str) -> bool:
    return False


def always(_address: str) -> bool:
    return True


def test_demo_stack_names_a_stack_or_asks_for_one_of_its_own() -> None:
    given = choose("10.0.0.5:7001, 10.0.0.5:7002", {}, never)
    assert (given.own, given.ledger, given.notifier) == (False, "10.0.0.5:7001", "10.0.0.5:7002")
    # "own" starts one even when make run's stack answers.
    assert choose("own", {}, always).own
    assert choose("OWN", {}, always).own


@pytest.mark.parametrize(
    "value", ["127.0.0.1:50051", "a:1,b:2,c:3", "127.0.0.1:x,127.0.0.1:2", "a:1,:2", "a:0,b:2"]
)
def test_a_malformed_demo_stack_is_refused_with_what_it_should_be(value: str) -> None:
    with pytest.raises(StackError, match="DEMO_STACK"):
        choose(value, {}, always)


def test_unset_it_uses_make_runs_stack_when_both_addresses_answer() -> None:
    chosen = choose(None, {}, always)
    assert (chosen.own, chosen.ledger, chosen.notifier) == (False, RUN_LEDGER, RUN_NOTIFIER)


def test_unset_it_follows_make_runs_listen_settings_and_their_wildcards() -> None:
    asked: list[str] = []

    def answers(address: str) -> bool:
        asked.append(address)
        return True

    env = {"LEDGER_LISTEN": "0.0.0.0:6100", "NOTIFIER_LISTEN": "[::]:6101"}
    chosen = choose("", env, answers)
    assert asked == ["127.0.0.1:6100", "[::1]:6101"]
    assert (chosen.ledger, chosen.notifier) == ("127.0.0.1:6100", "[::1]:6101")


@pytest.mark.parametrize("up", [set(), {RUN_LEDGER}, {RUN_NOTIFIER}])
def test_unset_it_starts_its_own_unless_both_of_make_runs_addresses_answer(up: set[str]) -> None:
    chosen = choose(None, {}, lambda address: address in up)
    assert chosen.own and "not up" in chosen.why


def test_its_own_stack_inherits_no_store_nats_port_or_data_setting(tmp_path: Path) -> None:
    base = {
        "PATH": "/usr/bin",
        "HOME": "/home/x",
        "LEDGER_LISTEN": "127.0.0.1:50051",
        "LEDGER_STORE": "postgres",
        "LEDGER_METRICS_LISTEN": "127.0.0.1:9464",
        "NOTIFIER_METRICS_LISTEN": "127.0.0.1:9465",
        "NATS_URL": "nats://127.0.0.1:4222",
        "POSTGRES_HOST": "db",
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "PYTHONPATH": "/elsewhere",
    }
    env = own_environment(base, tmp_path, [7001, 7002, 7003])
    assert env["LEDGER_LISTEN"] == "127.0.0.1:7001"
    assert env["NOTIFIER_LISTEN"] == "127.0.0.1:7002"
    assert env["LEDGER_NATS_PORT"] == "7003"
    assert env["LEDGER_DATA_DIR"] == str(tmp_path)
    for gone in (
        "LEDGER_STORE",
        "LEDGER_METRICS_LISTEN",
        "NOTIFIER_METRICS_LISTEN",
        "NATS_URL",
        "POSTGRES_HOST",
        "PERSISTENCE_MODULE",
    ):
        assert gone not in env, gone
    assert env["PATH"] == "/usr/bin" and env["PYTHONPATH"].endswith(":/elsewhere")


def test_the_day_is_yesterday_in_the_scenarios_zone_by_default() -> None:
    scenario = Scenario.load(SCENARIO)
    # 2026-12-03 01:30 WIB is still 2026-12-02 in UTC: "yesterday" is the regency's.
    now = datetime(2026, 12, 2, 18, 30, tzinfo=UTC)
    assert choose_day(None, scenario, now) == (date(2026, 12, 2), "yesterday")


def test_a_day_whose_last_step_is_still_to_come_is_refused() -> None:
    scenario = Scenario.load(SCENARIO)
    last = datetime.combine(date(2026, 12, 2), scenario.times[-1], scenario.zone)
    assert choose_day("2026-12-02", scenario, last) == (date(2026, 12, 2), "DEMO_DAY")
    with pytest.raises(ScenarioError, match="occur_time in the future"):
        choose_day("2026-12-02", scenario, last - timedelta(minutes=1))
    with pytest.raises(ScenarioError, match="YYYY-MM-DD"):
        choose_day("yesterday", scenario, last)
    with pytest.raises(ScenarioError, match="era"):
        choose_day("1999-12-31", scenario, last)


def test_a_scenario_with_steps_out_of_time_order_or_unquoted_times_is_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text('steps:\n  - {at: "09:00", as: a, do: b}\n  - {at: "08:59", as: a, do: b}\n')
    with pytest.raises(ScenarioError, match="step 2 at 08:59 comes before"):
        Scenario.load(path)
    # YAML 1.1 reads an unquoted 14:10 as the number 850 (base 60).
    path.write_text("steps:\n  - {at: 14:10, as: a, do: b}\n")
    with pytest.raises(ScenarioError, match="quoted"):
        Scenario.load(path)


def test_the_days_percentiles_interpolate_as_the_ledgers_do() -> None:
    assert percentile([60.0], 0.9) == 60.0
    assert percentile([3000.0, 3600.0], 0.5) == 3300.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.9) == pytest.approx(3.7)


def test_every_text_of_the_scenario_has_its_indonesian_translation() -> None:
    data = yaml.safe_load(SCENARIO.read_text(encoding="utf-8"))
    wanted = {data["title"], *(t for step in data["steps"] for t in step_texts(step))}
    texts = texts_in(SCENARIO, "id")
    assert sorted(wanted - set(texts)) == []  # each text translated
    assert sorted(set(texts) - wanted) == []  # and none the scenario no longer has
    assert all(texts[t] != t for t in wanted)  # in Indonesian, not copied


def test_the_scenario_plays_in_indonesian_with_its_codes_unchanged() -> None:
    english, indonesian = Scenario.load(SCENARIO), Scenario.load(SCENARIO, "id")
    assert indonesian.title == "Pilkada Mukomuko: hari pemungutan suara"
    first = indonesian.steps[0]
    assert first["title"] == "Surat suara kurang di TPS 02 Lubuk Bento"

    def same_codes(en: dict[str, Any], id_: dict[str, Any]) -> None:
        assert en.keys() == id_.keys()
        for key in en:  # codes, agencies, places, times: the same in both
            if key == "reports":  # a device's backlog: each report the same way
                for report_en, report_id in zip(en[key], id_[key], strict=True):
                    same_codes(report_en, report_id)
            elif str(en[key]) not in step_texts(en):
                assert en[key] == id_[key], key

    for en, id_ in zip(english.steps, indonesian.steps, strict=True):
        same_codes(en, id_)
    synced = next(s for s in indonesian.steps if s["do"] == "sync_backlog")
    assert synced["reports"][0]["title"].startswith("Pemilih ditolak")
    rejected = next(s for s in indonesian.steps if s["do"] == "reject")
    assert rejected["reason"] == "HOAX"


@pytest.mark.parametrize(
    ("language", "said"),
    [
        ("id", "memainkan hari itu pada {address}, {address} (tumpukan make run sedang berjalan)"),
        ("en", "playing against {address}, {address} (make run's stack is up)"),
    ],
)
def test_the_stack_played_against_is_named_in_the_demos_language(
    language: Language, said: str, tmp_path: Path
) -> None:
    """`make demo DEMO_LANG=id` began with an English line, 'playing against ...'."""
    tokens = tmp_path / "dev-tokens.yaml"
    tokens.write_text("{}\n", encoding="utf-8")
    console = Console(file=io.StringIO(), width=200)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        choice = Choice(own=False, ledger=address, notifier=address, why="make run's stack is up")
        with using(language), _given(choice, tokens, console):
            pass
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert said.format(address=address) in shown, shown


def test_the_demos_clock_and_days_in_the_runs_form() -> None:
    """The narration's times and days in the language's form, as ledgerctl's: Indonesian
    ``06.10 WIB`` and ``27 Nov 2027`` (they were ``06:10 WIB`` and ``2027-11-27``)."""
    zone = ZoneInfo("Asia/Jakarta")
    moment = datetime(2026, 11, 26, 23, 10, tzinfo=UTC)
    with using("id"):
        assert clock(moment, zone) == "06.10 WIB"
        assert day_text(date(2027, 11, 27)) == "27 Nov 2027"
        assert day_text("2026-12-05") == "5 Des 2026"
    with using("en"):
        assert clock(moment, zone) == "06:10 WIB"
        assert day_text(date(2027, 11, 27)) == "2027-11-27"

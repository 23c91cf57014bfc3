"""The demo's settings: which stack (DEMO_STACK)."""

from __future__ import annotations

from pathlib import Path

import pytest

from demo.stack import RUN_LEDGER, RUN_NOTIFIER, StackError, choose, own_environment


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

"""Errors people can act on: which address and which setting, what TLS wants, how to get a
token, which flag a decision needs."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from incidentledger_client.cli import main
from services.common.config import ServerTls
from services.common.natsserver import free_port
from tests.ledgerctl_support import Ctl
from tests.support import running_ledger, settings_for, store_environment
from tests.tls_support import CertificateAuthority


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().err


def test_an_unreachable_server_is_named_with_the_setting_it_came_from(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    code, err = run(capsys, "--address", address, "--timeout", "1", "--token", "t", "list")
    assert code == 6
    assert f"cannot reach the ledger at {address}" in err and "flag --address" in err, err
    monkeypatch.setenv("LEDGER_ADDRESS", address)
    code, err = run(capsys, "--timeout", "1", "--token", "t", "--json", "list")
    error = json.loads(err)["error"]
    assert code == 6 and error["code"] == "UNAVAILABLE"
    assert "env LEDGER_ADDRESS" in error["message"] and error["metadata"]["address"] == address
    notifier = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    code, err = run(
        capsys, "--notifier-address", notifier, "--timeout", "1", "--token", "t", "webhooks", "list"
    )
    assert code == 6 and f"cannot reach the notifier at {notifier}" in err, err
    # --timeout bounds the whole command, retries included (the client's own default
    # budget is 20 s); the margin is for a busy machine.
    assert time.monotonic() - started < 10


def test_tls_handshake_failures_say_what_the_server_wants(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    server = ca.server()
    tls = ServerTls.load(server.cert_file, server.key_file, ca.ca_file, "require")
    with (
        store_environment("popo", tmp_path) as env,
        running_ledger(settings_for(tmp_path, env, tls=tls)) as ledger,
    ):
        target = f"localhost:{ledger.server.port}"
        common = ("--address", target, "--timeout", "2", "--token", "t")
        code, err = run(capsys, *common, "--tls-ca", str(ca.ca_file), "list")
        assert code == 6 and "requires a client certificate" in err, err
        assert "--tls-cert" in err
        code, err = run(capsys, *common, "list")
        assert code == 6 and "speaks TLS" in err and "--tls-ca" in err, err


def test_a_missing_token_says_how_to_get_one(ctl: Ctl, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(capsys, "--address", ctl.ledger.address, "list")
    assert code == 5
    assert "no credentials" in err and "--agency" in err and "--token" in err, err
    code, err = run(capsys, "--address", ctl.ledger.address, "--token", "wrong", "list")
    assert code == 5 and "token from flag --token was refused" in err, err


def test_decide_needs_a_validity_window_and_offers_the_flags(ctl: Ctl) -> None:
    name = ctl.json("kesbangpol", "report", "Rally", "crowd_gathering", "ipuh")["incident"]
    ctl.ok("desk_pilkada", "verify", name)
    decide = (
        *("decide", name, "Gatherings restricted", "--forum", "Forkopimda"),
        *("--by", "desk_pilkada", "--rationale", "tension"),
    )
    code, _, err = ctl.run("desk_pilkada", *decide)
    assert code == 2 and "validity window" in err and "--valid-from" in err, err
    code, _, err = ctl.run("desk_pilkada", "--lang", "id", *decide)
    assert code == 2 and "memerlukan masa berlaku" in err, err
    # Two ends given: refused, rather than one of them silently dropped.
    code, _, err = ctl.run("desk_pilkada", *decide, "--days", "3", "--valid-until", "+1d")
    assert code == 2 and "give one of them" in err, err
    code, _, err = ctl.run("desk_pilkada", *decide, "--days", "0")
    assert code == 2 and "more than 0 days, not 0" in err, err
    assert ctl.json("polres", "show", name)["incident"]["decisions"] == []
    # Next month, 08:00 WIB (decisions are planned at most a year ahead).
    day = (datetime.now(UTC) + timedelta(days=30)).date()
    ctl.ok(
        "desk_pilkada",
        *decide,
        "--valid-from",
        f"{day}T08:00:00+07:00",
        "--valid-until",
        f"{day + timedelta(days=2)}T08:00:00+07:00",
    )
    decision = ctl.json("polres", "show", name)["incident"]["decisions"][0]
    assert decision["valid_from"].startswith(f"{day}T01:00:00")
    assert decision["valid_until"].startswith(f"{day + timedelta(days=2)}T01:00:00")


def test_deciding_agencies_are_agencies_that_act_involved_or_not(ctl: Ctl) -> None:
    """A Forkopimda decision binds agencies that do not lead the incident (Kodim, Kejari):
    recorded. An auditing agency (Inspektorat) decides nothing: it was recorded as one."""
    name = ctl.json("kesbangpol", "report", "Rally", "crowd_gathering", "ipuh")["incident"]
    ctl.ok("desk_pilkada", "verify", name)
    ctl.ok("desk_pilkada", "assign", name, "polres")
    decide = ("decide", name, "Gatherings restricted", "--forum", "Forkopimda", "--days", "2")
    code, _, err = ctl.run(
        "polres", *decide, "--by", "polres", "--by", "inspektorat", "--rationale", "tension"
    )
    assert code == 2 and "deciding_agencies[1]" in err and "auditing agency" in err, err
    assert ctl.json("polres", "show", name)["incident"]["decisions"] == []
    joint = ("--by", "polres", "--by", "kodim", "--by", "kejari", "--rationale", "tension")
    ctl.ok("polres", *decide, *joint)
    (decision,) = ctl.json("polres", "show", name)["incident"]["decisions"]
    assert decision["deciding_agencies"] == ["polres", "kodim", "kejari"]


def _timed_out(ctl: Ctl, *args: str) -> tuple[str, str]:
    """The stderr of the first of a few runs of a command that got no answer in time (a
    deadline of half a millisecond: the ledger may record the command all the same), and
    the title it sent: each run's own (``{title}`` in ``args``, and ``{n}``, the run's
    number, for a request id), so that the runs that were answered, and recorded, are not
    taken for the one that was not. Each run is a new command: a run repeating one already
    recorded is answered from its record, often within the half millisecond."""
    for attempt in range(20):
        title = f"Late answer {attempt}"
        sent = [arg.replace("{title}", title).replace("{n}", str(attempt)) for arg in args]
        code, _out, err = ctl.run("kesbangpol", "--timeout", "0.0005", *sent)
        if code == 6:
            return err, title
    raise AssertionError(f"the ledger always answered within 0.5 ms: {args}")


def test_a_command_without_an_answer_in_time_names_the_request_id_to_send_it_again(
    ctl: Ctl,
) -> None:
    err, title = _timed_out(ctl, "report", "{title}", "hoax", "xiv_koto")
    report = ("report", title, "hoax", "xiv_koto")
    assert "DEADLINE_EXCEEDED" in err and "may have been recorded" in err, err
    assert "cannot reach" not in err, err
    found = re.search(r"--request-id ([0-9a-f]{32})\b", err)
    assert found is not None, err
    request_id = found.group(1)
    # Sent again with that id (twice), the report is in the ledger once, whether or not the
    # run that timed out had recorded it.
    first = ctl.json("kesbangpol", "report", *report[1:], "--request-id", request_id)
    again = ctl.json("kesbangpol", "report", *report[1:], "--request-id", request_id)
    assert first["incident"] == again["incident"]
    titles = [i["title"] for i in ctl.json("polres", "list", "--limit", "0")]
    assert titles.count(title) == 1, titles
    # A program reads the id in the error object; an id given is the one named.
    err, late = _timed_out(
        ctl, "--json", "report", "{title}", "hoax", "xiv_koto", "--request-id", "late-answer-{n}"
    )
    given = f"late-answer-{late.removeprefix('Late answer ')}"
    error = json.loads(err)["error"]
    assert error["code"] == "DEADLINE_EXCEEDED" and error["exit_code"] == 6
    assert error["request_id"] == given, error
    assert f"--request-id {given}" in error["message"]


def test_a_refused_or_unusable_client_certificate_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A certificate of another CA is refused by the server's handshake, and a key that is
    not the certificate's fails in the client: neither is "cannot reach the ledger"."""
    ca = CertificateAuthority(tmp_path / "pki")
    other = CertificateAuthority(tmp_path / "other", name="Another CA")
    server = ca.server()
    tls = ServerTls.load(server.cert_file, server.key_file, ca.ca_file, "require")
    stranger = other.client("polres", "aiptu.rahman")
    polres = ca.client("polres", "aiptu.rahman")
    with (
        store_environment("popo", tmp_path) as env,
        running_ledger(settings_for(tmp_path, env, tls=tls)) as ledger,
    ):
        common = ("--address", f"localhost:{ledger.server.port}", "--timeout", "2")
        code, err = run(
            capsys,
            *common,
            "--tls-ca",
            str(ca.ca_file),
            "--tls-cert",
            str(stranger.cert_file),
            "--tls-key",
            str(stranger.key_file),
            "list",
        )
        assert code == 6 and "refused the client certificate" in err, err
        assert "cannot reach" not in err
        code, err = run(
            capsys,
            *common,
            "--tls-ca",
            str(ca.ca_file),
            "--tls-cert",
            str(polres.cert_file),
            "--tls-key",
            str(stranger.key_file),
            "list",
        )
        assert code == 2 and "do not go together" in err, err
        assert str(stranger.key_file) in err and "cannot reach" not in err


def test_refusals_say_the_command_that_helps_in_both_languages(ctl: Ctl) -> None:
    """A duty officer's review: each of these said only what went wrong."""
    name = ctl.json("kesbangpol", "report", "Rally", "crowd_gathering", "ipuh")["incident"]
    code, _out, err = ctl.run("desk_pilkada", "assign", name, "polres")
    assert code == 4 and "ledgerctl verify" in err, err
    ctl.ok("desk_pilkada", "verify", name, "-V", "1")
    code, _out, err = ctl.run("desk_pilkada", "assign", name, "polres", "-V", "1")
    assert code == 4 and "-V 2" in err and "ledgerctl show" in err, err
    code, _out, err = ctl.run("desk_pilkada", "--lang", "id", "assign", name, "polres", "-V", "1")
    assert code == 4 and "-V 2" in err, err
    ctl.ok("desk_pilkada", "assign", name, "polres")
    code, _out, err = ctl.run("satpolpp", "act", name, "patrol")
    assert code != 0 and "ledgerctl support" in err, err
    duplicate = ctl.json("kesbangpol", "report", "Rally 2", "crowd_gathering", "ipuh")
    ctl.ok("desk_pilkada", "merge", duplicate["incident"], name)
    reference = ctl.json("polres", "show", name)["incident"]["reference"]
    code, _out, err = ctl.run("polres", "act", duplicate["incident"], "patrol")
    assert code == 4 and reference in err, err
    code, _out, err = ctl.run("polres", "--lang", "id", "act", duplicate["incident"], "patrol")
    assert code == 4 and reference in err and "digabungkan" in err, err

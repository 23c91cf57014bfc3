"""Times as a duty officer reads them: the regency's zone comes from the ledger
(``GetReferenceData``'s ``zone``), ledgerctl shows and reads times in it unless told another,
and a correction that names another recorded time is told that time in the zone it was
written in, else the regency's, in English and in Indonesian."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger_client import LedgerClient
from incidentledger_client.cli import main
from incidentledger_client.errors import FailedPrecondition
from tests.ledgerctl_support import Ctl
from tests.support import REFERENCE_FILE, Client, running_ledger, settings_for, store_environment

WITA = ZoneInfo("Asia/Makassar")


@pytest.fixture
def wita_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    """A ledger whose reference file names a regency in WITA (UTC+8), and a ledgerctl with no
    zone of its own set."""
    text = REFERENCE_FILE.read_text(encoding="utf-8")
    assert "\nzone: Asia/Jakarta\n" in text
    reference = tmp_path / "wita-regency.yaml"
    reference.write_text(text.replace("\nzone: Asia/Jakarta\n", "\nzone: Asia/Makassar\n"))
    monkeypatch.delenv("LEDGERCTL_ZONE", raising=False)
    config = tmp_path / "ledgerctl.toml"  # an empty one: no zone set there either
    config.write_text("")
    monkeypatch.setenv("LEDGERCTL_CONFIG", str(config))
    with (
        store_environment("popo", tmp_path) as env,
        running_ledger(settings_for(tmp_path, env, reference_file=reference)) as client,
    ):
        yield client


@pytest.fixture
def wita_ctl(wita_ledger: Client, capsys: pytest.CaptureFixture[str]) -> Ctl:
    return Ctl(wita_ledger, capsys)


def test_the_reference_data_names_the_regencys_zone(popo_ledger: Client) -> None:
    answer = popo_ledger.stub.GetReferenceData(
        api.GetReferenceDataRequest(), metadata=popo_ledger.md("polres")
    )
    assert answer.zone == "Asia/Jakarta"
    with LedgerClient(popo_ledger.address, popo_ledger.tokens["polres"]) as client:
        reference = client.reference_data()
    assert reference.zone == "Asia/Jakarta" and reference.tz() == ZoneInfo("Asia/Jakarta")


def test_ledgerctl_shows_and_reads_times_in_the_zone_the_ledger_names(
    wita_ledger: Client, wita_ctl: Ctl
) -> None:
    with LedgerClient(wita_ledger.address, wita_ledger.tokens["polres"]) as client:
        assert client.reference_data().zone == "Asia/Makassar"
    before = datetime.now(UTC)
    name = wita_ctl.json("kesbangpol", "report", "Rally", "crowd_gathering", "ipuh")["incident"]
    shown = wita_ctl.ok("polres", "show", name)
    assert " WITA" in shown and " WIB" not in shown, shown
    assert " WITA" in wita_ctl.ok("polres", "history", name)
    assert " WITA" in wita_ctl.ok("polres", "board")
    # A zone set for ledgerctl still wins.
    assert " WIB" in wita_ctl.ok("polres", "--zone", "Asia/Jakarta", "show", name)
    # A time typed without a zone is in the regency's: half an hour before the report in WITA
    # is before it (in WIB, the same clock reading would be half an hour after it).
    earlier = (before - timedelta(minutes=30)).astimezone(WITA).strftime("%Y-%m-%d %H:%M")
    code, _, err = wita_ctl.run("polres", "show", name, "--as-of", earlier)
    assert code == 3 and "NOT_FOUND" in err, err
    later = (before + timedelta(minutes=30)).astimezone(WITA).strftime("%Y-%m-%d %H:%M")
    assert wita_ctl.json("polres", "show", name, "--as-of", later)["incident"]["name"] == name


def test_a_mismatched_old_time_is_stated_in_the_regencys_zone_in_both_languages(
    wita_ledger: Client, wita_ctl: Ctl
) -> None:
    name = wita_ctl.json("kesbangpol", "report", "Rally", "crowd_gathering", "ipuh")["incident"]
    wita_ctl.ok("desk_pilkada", "verify", name)
    day = (datetime.now(WITA) + timedelta(days=1)).date().isoformat()
    decided = wita_ctl.json(
        "desk_pilkada",
        *("decide", name, "Gatherings restricted", "--forum", "Forkopimda"),
        *("--by", "desk_pilkada", "--rationale", "tension"),
        *("--valid-from", f"{day} 18:00", "--valid-until", f"{day} 23:00"),
    )
    recorded = f"{day}T23:00:00+08:00"
    token = wita_ledger.tokens["desk_pilkada"]
    # An old value that names no zone (nor any time): the regency's zone.
    for language, sentence in (
        ("en", f"The recorded value of valid_until is {recorded}."),
        ("id", f"Nilai valid_until yang tercatat adalah {recorded}."),
    ):
        with (
            LedgerClient(wita_ledger.address, token, language=language) as client,
            pytest.raises(FailedPrecondition) as caught,
        ):
            client.correct(
                name,
                decided["event_id"],
                "valid_until",
                "tomorrow",
                f"{day}T22:00:00+08:00",
                reason="x",
            )
        error = caught.value
        assert error.reason == "OLD_VALUE_MISMATCH"
        assert error.metadata == {"field": "valid_until", "recorded_value": recorded}
        assert recorded in error.message and "+00:00" not in error.message, error.message
        assert error.localized_message == sentence, error.localized_message
    # One written in another zone: that zone (an officer's script in WIB).
    with (
        LedgerClient(wita_ledger.address, token) as client,
        pytest.raises(FailedPrecondition) as caught,
    ):
        client.correct(
            name,
            decided["event_id"],
            "valid_until",
            f"{day}T20:00:00+07:00",
            f"{day}T22:00:00+08:00",
            reason="x",
        )
    assert caught.value.metadata["recorded_value"] == f"{day}T22:00:00+07:00"
    # ledgerctl sends OLD in the regency's zone, and says the recorded time as it shows times.
    code, _, err = wita_ctl.run(
        "desk_pilkada",
        "--lang",
        "id",
        *("correct", name, "valid_until", f"{day} 21:00", f"{day} 22:00", "--reason", "x"),
    )
    assert code == 4, err
    assert f"Nilai valid_until yang tercatat adalah {recorded}." in err, err
    assert "+00:00" not in err, err


def test_config_view_says_the_zone_used_and_where_it_comes_from(
    wita_ledger: Client,
    wita_ctl: Ctl,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no zone set, `config view` said `zone Asia/Jakarta (default)` while every time
    was shown in the ledger's zone (WITA): now it says the zone used and its source."""
    monkeypatch.setenv("COLUMNS", "200")
    view = wita_ctl.json("polres", "config", "view")
    assert view["settings"]["zone"] == {"value": "Asia/Makassar", "source": "ledger"}
    shown = wita_ctl.ok("polres", "config", "view")
    assert re.search(r"zone\s+│\s+Asia/Makassar\s+│\s+the ledger \(the regency's", shown), shown
    assert "Asia/Jakarta" not in shown, shown
    said = wita_ctl.ok("polres", "--lang", "id", "config", "view")
    assert "buku besar (zona kabupaten, dari data referensinya)" in said, said
    # A zone set wins, and is said to be set.
    view = wita_ctl.json("polres", "--zone", "Asia/Jayapura", "config", "view")
    assert view["settings"]["zone"] == {"value": "Asia/Jayapura", "source": "flag --zone"}
    monkeypatch.setenv("LEDGERCTL_ZONE", "Asia/Jakarta")
    view = wita_ctl.json("polres", "config", "view")
    assert view["settings"]["zone"] == {"value": "Asia/Jakarta", "source": "env LEDGERCTL_ZONE"}
    monkeypatch.delenv("LEDGERCTL_ZONE")
    # A ledger that does not answer: the default, and why.
    nowhere = [
        "--address",
        "127.0.0.1:1",
        "--timeout",
        "0.5",
        "--tokens-file",
        str(wita_ctl.tokens),
    ]
    capsys.readouterr()
    assert main([*nowhere, "--agency", "polres", "--json", "config", "view"]) == 0
    zone = json.loads(capsys.readouterr().out)["settings"]["zone"]
    assert zone == {"value": "Asia/Jakarta", "source": "default", "ledger_error": "UNAVAILABLE"}
    assert main([*nowhere, "--agency", "polres", "config", "view"]) == 0
    shown = capsys.readouterr().out
    assert "default (the ledger did not say its zone: UNAVAILABLE)" in shown, shown

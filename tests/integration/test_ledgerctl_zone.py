"""Times as a duty officer reads them: the regency's zone comes from the ledger
(``GetReferenceData``'s ``zone``), ledgerctl shows and reads times in it unless told another."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger_client import LedgerClient
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

"""ledgerctl lists the reference data; codes are case-insensitive; typos get suggestions."""

from __future__ import annotations

import json

import pytest

from incidentledger_client.types import IncidentStatus
from tests.ledgerctl_support import Ctl


def test_the_reference_data_is_listed(ctl: Ctl) -> None:
    agencies = {a["code"]: a["role"] for a in ctl.json("polres", "agencies")}
    assert agencies["desk_pilkada"] == "coordinator" and agencies["polres"] == "responder"
    assert agencies["inspektorat"] == "auditor" and len(agencies) == 12
    assert "coordinator" in ctl.ok("polres", "agencies")
    kecamatan = {k["code"]: k for k in ctl.json("polres", "kecamatan")}
    assert len(kecamatan) == 15 and kecamatan["kota_mukomuko"]["name"] == "Kota Mukomuko"
    assert "Pasar Mukomuko" in kecamatan["kota_mukomuko"]["desa"]
    assert "Pasar Mukomuko" in ctl.ok("polres", "kecamatan")
    dimensions = {c["code"]: c["dimension"] for c in ctl.json("polres", "categories")}
    assert dimensions["hoax"] == "contestation" and dimensions["flood"] == "participation"
    assert "election_administration" in ctl.ok("polres", "categories")
    severities = ctl.json("polres", "severities")
    assert [s["code"] for s in severities["severities"]] == ["low", "medium", "high", "critical"]
    assert severities["default"] == "medium"


def test_codes_are_case_insensitive_everywhere(ctl: Ctl) -> None:
    reported = ctl.json(
        "KESBANGPOL",
        "report",
        "Rally",
        "Crowd_Gathering",
        "KOTA_MUKOMUKO",
        "--severity",
        "HIGH",
        "--desa",
        "pasar mukomuko",
    )
    name = reported["incident"]
    ctl.ok("desk_pilkada", "verify", name)
    ctl.ok("desk_pilkada", "assign", name, "POLRES")
    ctl.ok("Polres", "assess", name, "Critical")
    incident = ctl.json("polres", "show", name)["incident"]
    assert (incident["severity"], incident["category"], incident["lead_agency"]) == (
        "critical",
        "crowd_gathering",
        "polres",
    )
    assert incident["location"]["kecamatan"] == "kota_mukomuko"
    assert incident["location"]["desa"] == "Pasar Mukomuko"
    listed = ctl.json(
        "polres", "list", "--severity", "CRITICAL", "--status", "assigned", "--lead", "PolRes"
    )
    assert [i["name"] for i in listed] == [name]
    assert ctl.json("polres", "response-times", "--by", "SEVERITY")


def test_the_names_the_tables_show_stand_for_their_codes(ctl: Ctl) -> None:
    """The board and the lists name each kecamatan ("Malin Deman"), category and severity;
    what a person reads there, in either language, is what they may type back."""
    reported = ctl.json(
        "kesbangpol", "report", "Rally", "Pengumpulan massa", "malin deman", "--severity", "Tinggi"
    )
    incident = ctl.json("polres", "show", reported["incident"])["incident"]
    assert (incident["category"], incident["severity"]) == ("crowd_gathering", "high")
    assert incident["location"]["kecamatan"] == "malin_deman"
    listed = ctl.json("polres", "list", "--kecamatan", "Malin Deman", "--severity", "high")
    assert [i["name"] for i in listed] == [reported["incident"]]
    ctl.ok("desk_pilkada", "verify", reported["incident"])
    ctl.ok("desk_pilkada", "assign", reported["incident"], "Polres Mukomuko")
    assert ctl.json("polres", "show", reported["incident"])["incident"]["lead_agency"] == "polres"


def test_tables_name_each_category_in_the_language_spoken(
    ctl: Ctl, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A category is shown by the name the reference data gives it in the language spoken,
    as severities and statuses are (it showed the code, crowd_gathering, in both); a
    program reading --json keeps the code."""
    monkeypatch.setenv("COLUMNS", "200")
    name = ctl.json("kesbangpol", "report", "Rally", "crowd_gathering", "ipuh")["incident"]
    english = ctl.ok("polres", "list")
    assert "Mass gathering" in english and "crowd_gathering" not in english, english
    indonesian = ctl.ok("polres", "--lang", "id", "list")
    assert "Pengumpulan massa" in indonesian, indonesian
    shown = ctl.ok("polres", "--lang", "id", "show", name)
    assert "kategori Pengumpulan massa" in shown, shown
    assert ctl.json("polres", "show", name)["incident"]["category"] == "crowd_gathering"


def test_every_status_of_the_ledger_is_a_status_to_list_by(ctl: Ctl) -> None:
    # REOPENED was refused as an unknown status ("did you mean 'REPORTED'").
    for status in IncidentStatus:
        if status is not IncidentStatus.UNSPECIFIED:
            code, out, err = ctl.run("polres", "--json", "list", "--status", status.lower())
            assert code == 0, (status, err)
            assert all(i["status"] == status for i in json.loads(out)), out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("report", "x", "crowd_gatherng", "ipuh"), "did you mean 'crowd_gathering'"),
        (("report", "x", "flood", "kota_mukomoko"), "did you mean 'kota_mukomuko'"),
        (("report", "x", "flood", "ipuh", "--severity", "hihg"), "did you mean 'high'"),
        (("report", "x", "flood", "ipuh", "--desa", "pasar ipu"), "did you mean 'Pasar Ipuh'"),
        (("list", "--status", "respnding"), "did you mean 'RESPONDING'"),
        (("list", "--lead", "polris"), "did you mean 'polres'"),
        (("response-times", "--by", "kecamatn"), "did you mean 'kecamatan'"),
    ],
)
def test_unknown_values_get_did_you_mean_suggestions(
    ctl: Ctl, args: tuple[str, ...], expected: str
) -> None:
    code, _, err = ctl.run("kesbangpol", *args)
    assert code == 2 and expected in err, err


def test_an_unknown_agency_for_its_token_gets_a_suggestion(ctl: Ctl) -> None:
    code, _, err = ctl.run("polris", "list")
    assert code == 2 and "did you mean 'polres'" in err

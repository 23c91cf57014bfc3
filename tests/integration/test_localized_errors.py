"""AIP-193 end to end: a real ledger adds a LocalizedMessage when the call carries
accept-language, the client exposes it, ledgerctl asks in its language and shows it."""

from __future__ import annotations

import json

import pytest

from incidentledger_client import LedgerClient, TriageAction, TriageItem
from incidentledger_client.errors import IncidentNotFound
from tests.ledgerctl_support import Ctl
from tests.support import Client

MISSING = "incidents/00000000-0000-4000-8000-000000000000"


def test_the_client_gets_the_message_in_its_language(popo_ledger: Client) -> None:
    token = popo_ledger.tokens["desk_pilkada"]
    with (
        LedgerClient(popo_ledger.address, token, language="id") as indonesian,
        pytest.raises(IncidentNotFound) as caught,
    ):
        indonesian.get_incident(MISSING)
    assert caught.value.locale == "id"
    assert caught.value.localized_message == f"Tidak ada kejadian bernama {MISSING}."
    english_message = caught.value.message
    with (
        LedgerClient(popo_ledger.address, token) as plain,
        pytest.raises(IncidentNotFound) as caught,
    ):
        plain.get_incident(MISSING)
    # Without accept-language: no LocalizedMessage; the message and ErrorInfo are as they were.
    assert caught.value.localized_message is None and caught.value.locale is None
    assert caught.value.message == english_message
    assert caught.value.reason == "INCIDENT_NOT_FOUND"


def test_a_reference_code_no_incident_has_is_named_as_a_code_not_an_incident(
    popo_ledger: Client,
) -> None:
    """Its metadata's ``incident`` held the code, where every other error holds a resource
    name there (a client parsing it broke), and the message said "no incident named"."""
    token = popo_ledger.tokens["desk_pilkada"]
    with (
        LedgerClient(popo_ledger.address, token, language="id") as indonesian,
        pytest.raises(IncidentNotFound) as caught,
    ):
        indonesian.get_incident(reference="MKM-0000-00")
    assert "incident" not in caught.value.metadata, caught.value.metadata
    assert caught.value.metadata["reference"] == "MKM-0000-00"
    assert caught.value.localized_message == "Tidak ada kejadian dengan kode referensi MKM-0000-00."


def test_ledgerctl_shows_the_localized_message_and_json_keeps_the_english_one(
    ctl: Ctl,
) -> None:
    code, _, indonesian = ctl.run("desk_pilkada", "--lang", "id", "show", MISSING)
    assert code == 3
    assert f"Tidak ada kejadian bernama {MISSING}." in indonesian, indonesian
    code, _, english = ctl.run("desk_pilkada", "--lang", "en", "show", MISSING)
    assert code == 3 and "Tidak ada" not in english
    as_json = [
        ctl.run("desk_pilkada", "--json", "--lang", lang, "show", MISSING) for lang in ("en", "id")
    ]
    assert as_json[0] == as_json[1]
    assert "Tidak ada" not in as_json[0][2]


def test_ledgerctl_shows_what_is_wrong_with_a_refused_field_in_every_language(ctl: Ctl) -> None:
    # A refused field's LocalizedMessage is the reason's general sentence; what is wrong with
    # the field is in the field violation's description, which people read too.
    code, _, english = ctl.run("kesbangpol", "--lang", "en", "report", "", "hoax", "ipuh")
    assert code == 2 and "title: is required" in english, english
    assert "not acceptable" not in english, english
    code, _, indonesian = ctl.run("kesbangpol", "--lang", "id", "report", "", "hoax", "ipuh")
    assert code == 2 and "Nilai title tidak dapat diterima." in indonesian, indonesian
    assert "title: is required" in indonesian, indonesian
    name = ctl.json("kesbangpol", "report", "Rally", "crowd_gathering", "ipuh")["incident"]
    ctl.ok("desk_pilkada", "verify", name)
    code, _, english = ctl.run("desk_pilkada", "--lang", "en", "assign", name, "inspektorat")
    assert code == 2 and "inspektorat is an auditing agency and cannot act" in english, english
    code, _, as_json = ctl.run("desk_pilkada", "--json", "assign", name, "inspektorat")
    assert json.loads(as_json)["error"]["message"] == (
        "agency: inspektorat is an auditing agency and cannot act"
    )


def test_a_batchs_refused_items_say_why_in_the_calls_language(popo_ledger: Client) -> None:
    """A triage's (and an ingest's) refused item carries the LocalizedMessage a failed call
    would, so ledgerctl --lang id shows every item's reason in Indonesian."""
    token = popo_ledger.tokens["desk_pilkada"]
    name = popo_ledger.report("kesbangpol").incident
    verify = TriageItem(name, TriageAction.VERIFY)
    with LedgerClient(popo_ledger.address, token, language="id") as indonesian:
        (first,) = indonesian.triage([verify])
        assert first.recorded
        (again,) = indonesian.triage([verify, TriageItem(MISSING, TriageAction.VERIFY)])[:1]
    assert again.error is not None and again.error.reason == "ILLEGAL_TRANSITION"
    assert again.error.locale == "id"
    assert again.error.localized_message and "tidak" in again.error.localized_message.lower()
    with LedgerClient(popo_ledger.address, token) as plain:
        (english,) = plain.triage([verify])
    assert english.error is not None and english.error.localized_message is None


def test_ledgerctl_in_english_says_which_case_the_server_refused(ctl: Ctl) -> None:
    # A reason's sentence is general; in English the server's own message names the case
    # (here, which request the id went to); in Indonesian, the translated sentence.
    name = ctl.json("kesbangpol", "report", "Rally", "crowd_gathering", "ipuh")["incident"]
    ctl.ok("desk_pilkada", "verify", name, "--request-id", "desk-2026-12-05-001")
    taken = ("assign", name, "polres", "--request-id", "desk-2026-12-05-001")
    code, _, english = ctl.run("desk_pilkada", "--lang", "en", *taken)
    assert code == 4, english
    assert "'desk-2026-12-05-001' was already used by this agency" in english, english
    assert f"(VerifyIncident, {name} version 2)" in english, english
    code, _, indonesian = ctl.run("desk_pilkada", "--lang", "id", *taken)
    assert "Id permintaan ini sudah dipakai untuk permintaan lain." in indonesian, indonesian

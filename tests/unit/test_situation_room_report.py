"""The report form's people: which are sent, and which form field a refusal is shown beside."""

from __future__ import annotations

from incidentledger_client import Person, PersonalData
from services.situation_room.app import form_field, people_of


def test_a_form_naming_nobody_sends_no_personal_data() -> None:
    assert people_of({"title": "Crowd", "witness_0_name": "  "}) == (None, [])


def test_the_caller_and_the_filled_witness_rows_are_sent_in_order() -> None:
    form = {
        "reporter_name": "Siti Rahma",
        "reporter_nik": " 1706014107900003 ",
        "reporter_anonymous": "1",
        "witness_1_phone": "081273456691",  # row 0 left empty: not sent
        "witness_2_name": "Budi",
    }
    people, rows = people_of(form)
    assert people == PersonalData(
        Person("Siti Rahma", nik="1706014107900003"),
        anonymous=True,
        witnesses=(Person("", "081273456691"), Person("Budi")),
    )
    assert rows == [1, 2]


def test_anonymity_asked_without_a_caller_is_sent_for_the_ledger_to_refuse() -> None:
    assert people_of({"reporter_anonymous": "1"}) == (PersonalData(None, anonymous=True), [])


def test_a_refusal_is_shown_beside_the_form_field_it_came_from() -> None:
    rows = [1, 2]
    assert form_field("personal_data.reporter.nik", rows) == "reporter_nik"
    assert form_field("personal_data.anonymous", rows) == "reporter_anonymous"
    assert form_field("personal_data.witnesses[0].phone", rows) == "witness_1_phone"
    assert form_field("personal_data.witnesses[1].name", rows) == "witness_2_name"
    assert form_field("location.desa", rows) == "desa"
    assert form_field("description", rows) == "description"
    # Not a field of the form: the refusal is shown above it.
    assert form_field("personal_data.witnesses[5].name", rows) == ""
    assert form_field("personal_data.witnesses[0].nik", rows) == ""
    assert form_field("occur_time", rows) == ""
    assert form_field(None, rows) == ""

"""A report naming people may not write them into its title or description, which are not
sealed (docs/personal-data.md, "What it does not cover"): the name, phone or NIK verbatim."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

import pytest

from services.common.config import LedgerSettings
from services.common.errors import InvalidArgument
from services.ledger.application import time_bounds_of
from services.ledger.domain.commands import (
    ErasePersonalData,
    LiftLegalHold,
    PlaceLegalHold,
    ReadPersonalData,
    ReportIncident,
    Rules,
    checked,
)
from services.ledger.domain.personal import Person, PersonalData
from tests.unit.incident_builders import REF

PEOPLE = PersonalData(
    reporter=Person(name="Siti  Rahma", phone="0812-7345-6690", nik="1706014107900003"),
    witnesses=(Person(name="Budi", phone="+62 852 1234 5678"),),
)
RULES = Rules(REF, time_bounds_of(LedgerSettings()), lambda: datetime.now(UTC))


def report(title: str, description: str = "", people: PersonalData | None = PEOPLE) -> object:
    command = ReportIncident(
        title, description, "money_politics", "", {"kecamatan": "kota_mukomuko"}, people
    )
    return checked(command, RULES)


@pytest.mark.parametrize(
    ("title", "description", "field"),
    [
        ("Money handed out, says SITI RAHMA", "", "title"),  # case
        ("Money handed out", "Seen by siti\n rahma at the market", "description"),  # spacing
        ("Budi saw envelopes handed out", "", "title"),  # a witness's name
        ("Call back on 081273456690", "", "title"),  # the local form of +6281273456690
        ("Money handed out", "call +62 812-7345-6690 after 5", "description"),
        ("Money handed out", "reporter's phone 6281273456690", "description"),
        ("Money handed out", "witness: (0852) 1234 5678", "description"),
        ("Money handed out", "NIK 1706 0141 0790 0003", "description"),
        ("Money handed out", "NIK 1706014107900003.", "description"),
    ],
)
def test_a_person_of_the_report_in_its_free_text_is_refused(
    title: str, description: str, field: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        report(title, description)
    assert refused.value.field == field
    assert refused.value.reason == "PERSONAL_DATA_IN_TEXT"
    for secret in ("Siti", "Budi", "0812", "6690", "1706"):  # the refusal names no value
        assert secret not in str(refused.value)


@pytest.mark.parametrize(
    ("title", "description"),
    [
        ("Money handed out near the market", "Seen by a voter from Sitinjak village"),
        ("Money handed out", "Siti saw it"),  # part of a name: not caught (no NER)
        ("Money handed out", "Rp 50.000 each at TPS 12, about 0812 voters"),
        ("Money handed out", "call the post on 0737 71234"),  # a number of no one named
    ],
)
def test_other_free_text_passes(title: str, description: str) -> None:
    report(title, description)


def test_without_personal_data_a_name_passes_and_a_nik_or_mobile_number_is_refused() -> None:
    # A name cannot be told from other words without the report's people; a NIK or a mobile
    # number can: a field device's report, or a caller's number typed into the description,
    # kept it unsealed for good.
    report("Siti Rahma reports money handed out", "near TPS 12, (0737) 71234", people=None)
    for title, description, field in (
        ("Money handed out, 081273456690", "", "title"),
        ("Money handed out", "Pelapor Pak Joko, hubungi 0812-7345-6690", "description"),
        ("Money handed out", "NIK 1706014107900003", "description"),
        ("Money handed out", "telp 8127 3456 690", "description"),  # without its 0
    ):
        with pytest.raises(InvalidArgument) as refused:
            report(title, description, people=None)
        assert (refused.value.field, refused.value.reason) == (field, "PERSONAL_DATA_IN_TEXT")
        assert "personal_data" in refused.value.message


UUID_OF_AN_INCIDENT = UUID("00000000-0000-4000-8000-000000000001")


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (
            ReadPersonalData(UUID_OF_AN_INCIDENT, 0, "subject request, NIK 1706014107900003"),
            "purpose",
        ),
        (ReadPersonalData(UUID_OF_AN_INCIDENT, 0, "call back 0812-7345-6690"), "purpose"),
        (
            ErasePersonalData(UUID_OF_AN_INCIDENT, 0, (), "asked by phone, +62 852 1234 5678"),
            "legal_basis",
        ),
        (PlaceLegalHold(UUID_OF_AN_INCIDENT, 0, "suspect 1706 0141 0790 0003"), "reason"),
        (LiftLegalHold(UUID_OF_AN_INCIDENT, 0, "lifted, call 62 813.1234.5678"), "reason"),
        (ReadPersonalData(UUID_OF_AN_INCIDENT, 0, "telp 8137771 9284"), "purpose"),
        # Slashes and underscores: the report's own people were caught so, anyone's were not.
        (ReadPersonalData(UUID_OF_AN_INCIDENT, 0, "permohonan NIK 1706/0155/0101/0007"), "purpose"),
        (ReadPersonalData(UUID_OF_AN_INCIDENT, 0, "telp 0852_7777_6543"), "purpose"),
        (PlaceLegalHold(UUID_OF_AN_INCIDENT, 0, "NIK 1706_0155_0101_0007"), "reason"),
    ],
)
def test_a_text_about_personal_data_holding_a_phone_or_nik_is_refused(
    command: object, field: str
) -> None:
    # Recorded in plain words in the incident's events: no erasure would reach them there.
    with pytest.raises(InvalidArgument) as refused:
        checked(command, RULES)  # type: ignore[arg-type]
    assert refused.value.field == field
    assert refused.value.reason == "PERSONAL_DATA_IN_TEXT"


@pytest.mark.parametrize(
    "purpose",
    [
        "subject access request 17/2024",
        "Gakkumdu case LP/B/1234/XI/2026",
        "surat 470/123/2026 of 3 December",  # short numbers, dates
        "verify report 20261203",  # a date written as 8 digits
        "meeting of 03-12-2026 10:00 at the desk",
        "landline of the desk (0737) 71234",  # landlines are left: digits of dates too
    ],
)
def test_references_and_dates_in_such_texts_pass(purpose: str) -> None:
    checked(ReadPersonalData(UUID_OF_AN_INCIDENT, 0, purpose), RULES)
    checked(PlaceLegalHold(UUID_OF_AN_INCIDENT, 0, purpose), RULES)


@pytest.mark.parametrize(
    "purpose",
    ["\u200b" * 5, "\u2800" * 5, ".....", "-----", "a.b.c.d", "?? ?? ??"],
    ids=["zero-width", "braille-blank", "dots", "dashes", "four-letters", "marks"],
)
def test_a_purpose_without_words_is_refused(purpose: str) -> None:
    # Recorded as the reason a person's data was read or erased: it must say something.
    for command in (
        ReadPersonalData(UUID_OF_AN_INCIDENT, 0, purpose),
        ErasePersonalData(UUID_OF_AN_INCIDENT, 0, (), purpose),
        PlaceLegalHold(UUID_OF_AN_INCIDENT, 0, purpose),
    ):
        with pytest.raises(InvalidArgument) as refused:
            checked(command, RULES)
        # Zero-width characters alone are blank: refused as such where that is checked first.
        said = refused.value.message
        assert "at least 5 letters or digits" in said or (
            purpose.startswith("\u200b") and "invisible formatting characters" in said
        ), said


def test_a_short_purpose_in_words_passes() -> None:
    for purpose in ("audit", "LP/B/17", "cek\u200bdata"):
        checked(ReadPersonalData(UUID_OF_AN_INCIDENT, 0, purpose), RULES)

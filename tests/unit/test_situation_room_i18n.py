"""How the situation room says a span of time (a decision's time left, a response time) in
both of its languages, how it names an agency, and how it names the regency's zone and shows
a time in it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from incidentledger_client.errors import InvalidArgument
from incidentledger_client.i18n import using
from services.common.reference import Agency, Role
from services.situation_room.app import action_refusal, agency_label, time_left
from services.situation_room.i18n import duration, local_time, zone_name


@pytest.mark.parametrize(
    ("minutes", "english", "indonesian"),
    [
        (0, "0 min", "0 mnt"),
        (59, "59 min", "59 mnt"),
        (60, "1 h 00 min", "1 jam 00 mnt"),
        (185, "3 h 05 min", "3 jam 05 mnt"),
        (24 * 60 - 1, "23 h 59 min", "23 jam 59 mnt"),
        (24 * 60, "1 d 0 h", "1 hari 0 jam"),
        (499 * 60 + 59, "20 d 19 h", "20 hari 19 jam"),
        (365 * 24 * 60 + 61, "365 d 1 h", "365 hari 1 jam"),
    ],
)
def test_a_span_of_a_day_or_more_reads_in_days_and_hours(
    minutes: int, english: str, indonesian: str
) -> None:
    with using("en"):
        assert duration(minutes) == english
    with using("id"):
        assert duration(minutes) == indonesian


def test_a_decision_in_force_for_weeks_says_its_days_left() -> None:
    now = datetime(2026, 12, 5, tzinfo=UTC)
    with using("id"):
        assert time_left(now + timedelta(days=20, hours=19, minutes=59), now) == "20 hari 19 jam"
        assert time_left(now - timedelta(minutes=5), now) == "0 mnt"
        assert time_left(None, now) == ""


def test_a_decision_in_its_last_minute_has_a_minute_left_not_none() -> None:
    now = datetime(2026, 12, 5, tzinfo=UTC)
    with using("en"):
        assert time_left(now + timedelta(seconds=40), now) == "1 min"
        assert time_left(now + timedelta(minutes=3, seconds=1), now) == "4 min"
        assert time_left(now + timedelta(hours=2), now) == "2 h 00 min"
        assert time_left(now, now) == "0 min"


def test_an_agency_is_named_with_its_code_only_where_its_name_is_ambiguous() -> None:
    agencies = {
        "polres": Agency("polres", "Polres Mukomuko", Role.RESPONDER),
        "kpu": Agency("kpu", "KPU", Role.RESPONDER),
        "kpu_prov": Agency("kpu_prov", "KPU", Role.RESPONDER),
    }
    assert agency_label(agencies, "polres") == "Polres Mukomuko"
    assert agency_label(agencies, "kpu") == "KPU (kpu)"
    assert agency_label(agencies, "kpu_prov") == "KPU (kpu_prov)"
    assert agency_label(agencies, "retired") == "retired"  # not in the reference data


@pytest.mark.parametrize(
    ("zone", "name"),
    [
        ("Asia/Jakarta", "WIB"),
        ("Asia/Pontianak", "WIB"),
        ("Asia/Makassar", "WITA"),
        ("Asia/Jayapura", "WIT"),
        ("Europe/Berlin", "CET"),  # another zone: the time zone data's own abbreviation
    ],
)
def test_the_regencys_zone_is_named_by_its_usual_abbreviation(zone: str, name: str) -> None:
    winter = datetime(2026, 12, 5, 13, 0, tzinfo=UTC)
    assert zone_name(ZoneInfo(zone), winter) == name


def test_a_time_is_shown_in_the_regencys_zone_in_both_languages() -> None:
    moment = datetime(2026, 12, 5, 13, 5, 9, tzinfo=UTC)
    with using("en"):
        assert local_time(moment, ZoneInfo("Asia/Makassar")) == "2026-12-05 21:05 WITA"
        assert local_time(moment, ZoneInfo("Asia/Jakarta"), seconds=True) == (
            "2026-12-05 20:05:09 WIB"
        )
        assert local_time(None, ZoneInfo("Asia/Jakarta")) == ""
    with using("id"):
        assert local_time(moment, ZoneInfo("Asia/Jayapura")) == "5 Des 2026 22.05 WIT"


def test_an_action_forms_refused_field_is_named_by_its_label_in_indonesian() -> None:
    """The ledger's Indonesian refusal names its request's field (``reason``): the incident
    page names the field the officer filled in, not an English word in an Indonesian line."""
    refused = InvalidArgument(
        "INVALID_ARGUMENT",
        "INVALID_FIELD",
        "reason: is required",
        {"field": "reason"},
        localized_message="Nilai reason tidak dapat diterima.",
        locale="id",
    )
    with using("id"):
        assert action_refusal(refused) == "Nilai “Alasan” tidak dapat diterima."
    with using("en"):
        assert action_refusal(refused) == "reason: is required"
    # a field the forms do not word alone, or none, keeps the ledger's message
    other = InvalidArgument(
        "INVALID_ARGUMENT",
        "INVALID_FIELD",
        "deciding_agencies: unknown agency 'x'",
        {"field": "deciding_agencies"},
        localized_message="Nilai deciding_agencies tidak dapat diterima.",
        locale="id",
    )
    with using("id"):
        assert action_refusal(other) == "Nilai deciding_agencies tidak dapat diterima."

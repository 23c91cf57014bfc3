"""The situation room's clock is the regency's: a regency in WITA (its reference file says
Asia/Makassar) reads every time of the page in WITA and enters a decision's start and end in
WITA, in both languages; Mukomuko (Asia/Jakarta) still in WIB. The page app is read over
HTTP in-process (httpx), against a real ledger, without a browser or its live feed."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from incidentledger_client import LedgerClient, RetryPolicy
from services.common.config import SituationRoomSettings
from services.situation_room.app import build_app
from services.situation_room.i18n import COOKIE as LANGUAGE_COOKIE
from services.situation_room.sessions import COOKIE, Officer
from tests.support import REFERENCE_FILE, Client, running_ledger, settings_for, store_environment


@dataclass(frozen=True)
class Regency:
    ledger: Client
    reference_file: Path
    zone: ZoneInfo
    abbreviation: str


@pytest.fixture(params=[("Asia/Makassar", "WITA"), ("Asia/Jakarta", "WIB")], ids=["wita", "wib"])
def regency(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Regency]:
    """A ledger whose reference file names the regency's zone (Mukomuko's own file for WIB)."""
    zone, abbreviation = request.param
    text = REFERENCE_FILE.read_text(encoding="utf-8")
    assert "\nzone: Asia/Jakarta\n" in text
    reference = tmp_path / "regency.yaml"
    reference.write_text(text.replace("\nzone: Asia/Jakarta\n", f"\nzone: {zone}\n"))
    with (
        store_environment("popo", tmp_path) as env,
        running_ledger(settings_for(tmp_path, env, reference_file=reference)) as ledger,
    ):
        yield Regency(ledger, reference, ZoneInfo(zone), abbreviation)


def test_the_room_shows_and_takes_times_in_the_regencys_zone(
    regency: Regency, tmp_path: Path
) -> None:
    ledger, zone, abbreviation = regency.ledger, regency.zone, regency.abbreviation
    with LedgerClient(ledger.address, ledger.tokens["kesbangpol"]) as reporter:
        reported = reporter.report("Rally planned", "crowd_gathering", "ipuh")
    desk_token = ledger.tokens["desk_pilkada"]
    desk = LedgerClient(ledger.address, desk_token)
    desk.verify(reported.incident)
    settings = SituationRoomSettings(
        ledger_address=ledger.address,
        notifier_address="127.0.0.1:1",  # not reached: the page is read without its live feed
        data_dir=tmp_path / "room",
        reference_file=regency.reference_file,
    )
    app = build_app(settings, token=lambda: desk_token)
    room = app.state.room

    def connect(token: str) -> LedgerClient:
        # No retries: this ledger has no NATS, so its evidence is unavailable at once, not
        # after the page's retries.
        return LedgerClient(ledger.address, token, retry=RetryPolicy(retries=0))

    room.sessions.connect = connect
    officer_ledger = connect(desk_token)
    session = room.sessions.new(Officer("desk_pilkada", "coordinator", desk_token, officer_ledger))
    # Tomorrow 18:00 on the regency's clock, for three days.
    start = (datetime.now(zone) + timedelta(days=1)).replace(
        hour=18, minute=0, second=0, microsecond=0
    )
    end = start + timedelta(days=3)
    # Another, in force since two hours ago, for the decisions in force.
    since = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
    desk.record_decision(
        reported.incident,
        ["desk_pilkada"],
        "Forkopimda",
        "Campaign convoys restricted",
        rationale="Tension",
        valid_from=since,
        valid_until=since + timedelta(days=1),
    )
    path = f"/{reported.incident}"

    async def visit() -> dict[str, str]:
        transport = httpx.ASGITransport(app=app)  # no lifespan: no live subscription
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as web:
            web.cookies.set(COOKIE, room.sessions.cookie_value(session))
            web.cookies.set(LANGUAGE_COOKIE, "en")

            async def decide(valid_from: str, valid_until: str) -> httpx.Response:
                page = await web.get(path)
                csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
                version = re.search(r'name="version" value="(\d+)"', page.text)
                assert csrf and version, page.text
                form = {
                    "csrf": csrf[1],
                    "version": version[1],
                    "forum": "Forkopimda",
                    "summary": "Large gatherings restricted",
                    "rationale": "Two camps announced rallies",
                    "valid_from": valid_from,
                    "valid_until": valid_until,
                }
                return await web.post(f"{path}/record_decision", data=form)

            pages = {"form": (await web.get(path)).text}
            pages["refused"] = (await decide("besok", "")).text
            answer = await decide(f"{start:%Y-%m-%dT%H:%M}", f"{end:%Y-%m-%dT%H:%M}")
            assert answer.status_code == 303, answer.text
            for language in ("en", "id"):
                web.cookies.set(LANGUAGE_COOKIE, language)
                for name in ("incident", "decisions", "board"):
                    target = {"incident": path, "decisions": "/decisions", "board": "/board"}
                    page = await web.get(target[name])
                    assert page.status_code == 200, (name, page.text)
                    pages[f"{name}-{language}"] = page.text
            return pages

    try:
        pages = asyncio.run(visit())
        # The decision's start and end were taken on the regency's clock.
        (decision,) = [
            d
            for d in desk.get_incident(reported.incident).decisions
            if d.summary == "Large gatherings restricted"
        ]
        assert (decision.valid_from, decision.valid_until) == (start, end)
    finally:
        officer_ledger.close()
        desk.close()
    other = "WIB" if abbreviation != "WIB" else "WITA"
    # The form says which clock it takes, and a date it cannot read is refused naming it.
    assert f"In force from ({abbreviation}; empty: now)" in pages["form"], pages["form"]
    assert f"In force until ({abbreviation})" in pages["form"]
    assert f"give a date and a time in {abbreviation}, such as" in pages["refused"]
    # Every time shown is on the regency's clock, in both languages.
    shown = f"from {start:%Y-%m-%d %H:%M} {abbreviation} until {end:%Y-%m-%d %H:%M} {abbreviation}"
    assert shown in pages["incident-en"], pages["incident-en"]
    assert f"{start:%H.%M} {abbreviation}" in pages["incident-id"]
    assert f"Berlaku sejak ({abbreviation}; kosong: sekarang)" in pages["incident-id"]
    since = since.astimezone(zone)
    assert f"{since:%Y-%m-%d %H:%M} {abbreviation}" in pages["decisions-en"]
    assert f"{since:%H.%M} {abbreviation}" in pages["decisions-id"]
    for language in ("en", "id"):
        assert f" {abbreviation}</td>" in pages[f"board-{language}"]  # the report's time
        for name in ("incident", "decisions", "board"):
            assert f" {other}<" not in pages[f"{name}-{language}"], (name, language)
            assert f" {other})" not in pages[f"{name}-{language}"], (name, language)

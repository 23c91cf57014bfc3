"""The situation room in a real browser: Debian's chromium driven by Playwright, against the
web process (``python -m services.situation_room``), a real ledger, notifier and nats-server.

Without a chromium on the PATH these tests skip, and fail when ``CI=true`` (``make chromium``
installs it). Screenshots of the board and the map are saved in the test's tmp directory.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Route,
    expect,
    sync_playwright,
)

from incidentledger_client import IncidentStatus, LedgerClient, Location, Person, PersonalData
from incidentledger_client.cli.output import BAND_FILL
from services.common.config import PROJECT_ROOT, LedgerSettings, RelaySettings
from services.common.natsserver import NatsServer, free_port
from services.common.vocabulary import STATUSES
from services.ledger.domain.evidence import object_name
from services.ledger.server import build as build_ledger
from services.notifier.server import build as build_notifier
from services.situation_room.app import BOARD_ROWS
from services.situation_room.i18n import COOKIE as LANGUAGE_COOKIE
from services.situation_room.live import STALE_SECONDS
from services.situation_room.sessions import COOKIE as SESSION_COOKIE
from services.situation_room.sessions import SignInThrottle
from tests.evidence_support import change_one_byte
from tests.fanout_support import Stack, notifier_settings, running_stack, wait_until
from tests.support import ServiceProcess, service_process, settings_for, store_environment

pytestmark = [pytest.mark.nats, pytest.mark.slow]

#: How long a change may take to reach another page's board (the issue's bound).
LIVE_SECONDS = 2.0
#: How long a read of the event stream may wait (events come well within it).
READ_SECONDS = 10.0
#: How long the page may take to say its live updates stopped or came back.
STALE_MS = (STALE_SECONDS + 10.0) * 1000


@dataclass
class Room:
    stack: Stack
    web: ServiceProcess
    #: The page process's environment (another process started with it shares its key).
    env: dict[str, str] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    #: The pages' script errors (none is expected).
    errors: list[str] = field(default_factory=list)
    #: The ledger's settings (another ledger built with them restarts it on its address).
    ledger_settings: LedgerSettings | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web.port}"

    def ledger(self, agency: str) -> LedgerClient:
        return LedgerClient(self.stack.ledger.address, self.stack.ledger.tokens[agency])


@pytest.fixture(scope="module")
def chromium_path() -> str:
    found = shutil.which("chromium")
    if found is None:
        message = "no chromium on the PATH: `make chromium` installs Debian's package"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture
def browser(chromium_path: str) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def room(tmp_path: Path, nats_server: NatsServer) -> Iterator[Room]:
    with open_room(tmp_path, nats_server.url) as opened:
        yield opened


@contextmanager
def open_room(tmp_path: Path, nats_url: str, ledger_listen: str = "") -> Iterator[Room]:
    """The stack and the page process (the ledger on ``ledger_listen`` when given: a test
    that restarts it there)."""
    overrides = {"listen": ledger_listen} if ledger_listen else {}
    with (
        store_environment("sqlite", tmp_path) as env,
        running_stack(tmp_path, env, nats_url, overrides) as stack,
    ):
        relay = RelaySettings(nats_url=nats_url, poll_seconds=0.2)
        ledger_settings = settings_for(tmp_path, env, relay=relay, **overrides)
        web_env = {
            "LEDGER_DATA_DIR": str(tmp_path / "room"),
            "SITUATION_ROOM_LISTEN": "127.0.0.1:0",
            "SITUATION_ROOM_LEDGER_ADDRESS": stack.ledger.address,
            "SITUATION_ROOM_NOTIFIER_ADDRESS": f"127.0.0.1:{stack.notifier.port}",
            "SITUATION_ROOM_TOKEN": stack.ledger.tokens["desk_pilkada"],
        }
        with service_process("services.situation_room", web_env) as web:
            yield Room(stack, web, web_env, ledger_settings=ledger_settings)


def new_page(room: Room, browser: Browser, language: str = "en") -> Page:
    """A page in a context of its own (its own cookies), its requests logged in ``room``, in
    ``language`` (the language control's cookie; ``""``: none, the room's default)."""
    context: BrowserContext = browser.new_context()
    if language:
        context.add_cookies([{"name": LANGUAGE_COOKIE, "value": language, "url": room.url}])
    page = context.new_page()
    page.on("request", lambda request: room.requests.append(request.url))
    page.on("pageerror", lambda error: room.errors.append(str(error)))
    return page


def sign_in(room: Room, page: Page, agency: str) -> None:
    page.goto(f"{room.url}/login")
    page.select_option("select[name=agency]", agency)
    page.fill("input[name=token]", room.stack.ledger.tokens[agency])
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{room.url}/board")
    expect(page.locator("#live")).to_have_attribute("data-state", "open")


def assert_local_and_clean(room: Room) -> None:
    hosts = {urlsplit(url).hostname or "" for url in room.requests}
    assert hosts == {"127.0.0.1"}, f"requests left 127.0.0.1: {sorted(hosts)}"
    assert not room.errors, room.errors


def titles(room: Room, title: str) -> int:
    return sum(1 for i in room.ledger("desk_pilkada").list_incidents() if i.title == title)


def test_a_wrong_token_is_refused_and_the_session_cookie_is_strict(
    room: Room, browser: Browser
) -> None:
    page = new_page(room, browser)
    page.goto(f"{room.url}/board")
    expect(page).to_have_url(f"{room.url}/login")  # not signed in: to the sign-in page
    page.select_option("select[name=agency]", "polres")
    page.fill("input[name=token]", "not-a-token")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_contain_text("not valid")
    # The agency chosen stays chosen (it went back to the first, the coordinator's).
    expect(page.locator("select[name=agency]")).to_have_value("polres")
    sign_in(room, page, "polres")
    (cookie,) = [c for c in page.context.cookies() if c["name"] == SESSION_COOKIE]
    assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")
    # Signed-in pages are never kept: Back after signing out on a shared laptop showed them.
    answer = page.goto(f"{room.url}/board")
    assert answer is not None and answer.headers["cache-control"] == "no-store"
    assert cookie["expires"] > 0  # it expires
    page.click("text=Sign out")
    expect(page).to_have_url(f"{room.url}/login?signed_out")
    expect(page.locator(".notice")).to_have_text("You are signed out.")
    page.goto(f"{room.url}/board")
    expect(page).to_have_url(f"{room.url}/login")


def test_a_report_recorded_days_after_it_happened_says_so_on_the_board(room: Room) -> None:
    """A field device's backlog handed over days on read as brand new on the board."""
    reporter = room.ledger("kesbangpol")
    days_ago = datetime.now(UTC) - timedelta(days=3)
    late = reporter.report("Backlog: banner torn", "hoax", "ipuh", occur_time=days_ago)
    fresh = reporter.report("Just now: banner torn", "hoax", "ipuh")
    with signed_in_http(room, "desk_pilkada") as web:
        rows = web.get("/board/rows").text
    late_row = rows.split(f'data-name="{late.incident}"')[1].split("</tr>")[0]
    fresh_row = rows.split(f'data-name="{fresh.incident}"')[1].split("</tr>")[0]
    assert '<span class="occurred">(happened ' in late_row, late_row
    assert "happened" not in fresh_row, fresh_row


def test_an_incident_reported_over_grpc_appears_on_the_board(
    room: Room, browser: Browser, tmp_path: Path
) -> None:
    page = new_page(room, browser)
    sign_in(room, page, "desk_pilkada")
    title = f"Ballot box damaged {uuid.uuid4().hex[:6]}"
    result = room.ledger("kesbangpol").report(title, "logistics_failure", "ipuh", severity="high")
    expect(page.locator("#rows")).to_contain_text(title, timeout=LIVE_SECONDS * 1000)
    row = page.locator(f'tr[data-name="{result.incident}"]')
    expect(row.locator(".reference")).to_have_text(result.reference)
    # New since the board was opened: marked, and said for a screen reader (it came silently).
    expect(row).to_have_class(re.compile(r"\barrived\b"))
    expect(page.locator("#arrived")).to_have_text(f"New on the board: {title}")
    page.screenshot(path=str(tmp_path / "board.png"), full_page=True)
    assert_local_and_clean(room)


def test_an_incident_reached_with_the_keyboard_keeps_the_focus_as_the_board_changes(
    room: Room, browser: Browser
) -> None:
    """An officer tabbing through the board's rows stays on the row reached when a change
    comes in (the rows are read again), instead of the next Tab starting from the top."""
    reporter = room.ledger("kesbangpol")
    first = reporter.report("Ballot box damaged", "logistics_failure", "ipuh")
    page = new_page(room, browser)
    sign_in(room, page, "desk_pilkada")
    tab_to(page, f'#rows a[href="/{first.incident}"]')
    added = reporter.report("Rally without a permit", "crowd_gathering", "ipuh")
    expect(page.locator(f'tr[data-name="{added.incident}"]')).to_have_count(
        1, timeout=LIVE_SECONDS * 1000
    )
    expect(page.locator(f'#rows a[href="/{first.incident}"]')).to_be_focused()
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{room.url}/{first.incident}")
    assert_local_and_clean(room)


def test_a_report_entered_on_the_page_appears_on_a_second_pages_board(
    room: Room, browser: Browser
) -> None:
    desk, police = new_page(room, browser), new_page(room, browser)
    sign_in(room, desk, "desk_pilkada")
    sign_in(room, police, "polres")
    police.click("text=Report an incident")
    title = f"Crowd at TPS 04 {uuid.uuid4().hex[:6]}"
    police.fill("input[name=title]", title)
    police.select_option("select[name=kecamatan]", "kota_mukomuko")
    police.select_option("select[name=category]", "crowd_gathering")
    desa = police.locator("#desa option").nth(1).get_attribute("value")
    assert desa, "the desa of the kecamatan are offered"
    police.select_option("#desa", desa)
    police.fill("input[name=tps]", " TPS 04 ")  # as ledgerctl report --tps records it
    police.click("#submit")
    expect(police).to_have_url(re.compile(r"/board\?reported=\d+&incident=[0-9a-f-]{36}$"))
    expect(desk.locator("#rows")).to_contain_text(title, timeout=LIVE_SECONDS * 1000)
    (incident,) = [i for i in room.ledger("desk_pilkada").list_incidents() if i.title == title]
    # What was recorded is said above the board, with the code to read out over the phone.
    expect(police.locator("#recorded")).to_contain_text(f"Recorded: {incident.reference}")
    assert incident.location == Location("kota_mukomuko", desa=desa, tps="TPS 04")
    assert (incident.reporter.agency, incident.reporter.officer) == ("polres", "dev-polres")
    assert_local_and_clean(room)


def test_a_repeated_report_form_records_one_incident(room: Room, browser: Browser) -> None:
    page = new_page(room, browser)
    sign_in(room, page, "polres")
    page.goto(f"{room.url}/report")
    form: dict[str, str | float | bool] = {
        "csrf": page.input_value("input[name=csrf]"),
        "request_id": page.input_value("input[name=request_id]"),
        "title": f"Double click {uuid.uuid4().hex[:6]}",
        "category": "crowd_gathering",
        "kecamatan": "ipuh",
        "severity": "",
    }
    for _ in range(2):  # the same form sent twice, as a double click would
        answer = page.request.post(f"{room.url}/report", form=form, max_redirects=0)
        assert answer.status == 303
    assert titles(room, str(form["title"])) == 1


def test_a_forged_form_post_without_the_csrf_token_is_refused(room: Room, browser: Browser) -> None:
    page = new_page(room, browser)
    sign_in(room, page, "polres")
    title = f"Forged {uuid.uuid4().hex[:6]}"
    form: dict[str, str | float | bool] = {
        "title": title,
        "category": "crowd_gathering",
        "kecamatan": "ipuh",
    }
    forgeries: list[dict[str, str | float | bool]] = [form, {**form, "csrf": "guessed"}]
    for forged in forgeries:
        answer = page.request.post(f"{room.url}/report", form=forged, max_redirects=0)
        assert answer.status == 403
    assert page.request.post(f"{room.url}/logout", form={}, max_redirects=0).status == 403
    assert titles(room, title) == 0


def test_an_auditor_is_not_offered_reporting(room: Room, browser: Browser) -> None:
    page = new_page(room, browser)
    sign_in(room, page, "inspektorat")
    expect(page.locator("nav.pages")).to_contain_text("Map")
    expect(page.locator("text=Report an incident")).to_have_count(0)
    assert page.request.get(f"{room.url}/report").status == 403


def test_the_map_colours_the_15_kecamatan_by_band_and_shows_incidents_live(
    room: Room, browser: Browser, tmp_path: Path
) -> None:
    ipuh = Location("ipuh", latitude=-2.9802, longitude=101.5146)
    reporter = room.ledger("kesbangpol")
    reporter.report("Clash at TPS 01", "supporter_clash", ipuh, severity="critical")
    scores = room.ledger("desk_pilkada").vulnerability_map()
    page = new_page(room, browser)
    sign_in(room, page, "desk_pilkada")
    page.click("text=Map")
    expect(page.locator("#map")).to_have_attribute("data-ready", "15")
    shapes = page.locator("path[data-code]")
    expect(shapes).to_have_count(15)
    for score in scores.kecamatan:
        shape = page.locator(f'path[data-code="{score.kecamatan}"]')
        expect(shape).to_have_attribute("fill", BAND_FILL[score.band])
    page.locator('path[data-code="ipuh"]').hover()
    expect(page.locator("#hover")).to_contain_text("Clash at TPS 01")
    expect(page.locator("#legend li")).to_have_count(len(BAND_FILL))
    expect(page.locator("path[data-severity=critical]")).to_have_count(1)
    # A new incident with a point appears as a marker without a reload.
    town = Location("kota_mukomuko", latitude=-2.57489, longitude=101.14829)
    added = reporter.report("Flooded TPS 09", "flood", town, severity="medium")
    marker = page.locator(f'path[data-name="{added.incident}"]')
    expect(marker).to_have_attribute("data-severity", "medium", timeout=LIVE_SECONDS * 1000)
    page.screenshot(path=str(tmp_path / "map.png"), full_page=True)
    assert_local_and_clean(room)


def tab_to(page: Page, selector: str, presses: int = 60) -> None:
    """Press Tab until the element ``selector`` has the focus (at most ``presses`` times)."""
    for _ in range(presses):
        if page.evaluate("(s) => document.activeElement.matches(s)", selector):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"{selector} is not reached with the Tab key")


def arrow_to(page: Page, selector: str, presses: int = 60) -> None:
    """Press the right arrow until the element ``selector`` has the focus (at most
    ``presses`` times)."""
    for _ in range(presses):
        if page.evaluate("(s) => document.activeElement.matches(s)", selector):
            return
        page.keyboard.press("ArrowRight")
    raise AssertionError(f"{selector} is not reached with the arrow keys")


def test_a_kecamatan_of_the_map_is_read_from_the_keyboard_in_both_languages(
    room: Room, browser: Browser
) -> None:
    """The kecamatan are reached with the arrow keys from the map's Tab stop: reached, one
    says its score, its count of incidents in words (1 incident, 1 kejadian), and its
    reasons, a title's right-to-left override reversing that title only, not the severity and
    status after it; the incident's marker comes after the kecamatan, and Enter on it opens
    the incident."""
    reporter = room.ledger("kesbangpol")
    ipuh = Location("ipuh", latitude=-2.9802, longitude=101.5146)
    clash = reporter.report("Bentrok \u202e", "supporter_clash", ipuh, severity="critical")
    for language, singular in (
        ("en", re.compile(r"Score [\d.,]+ \(.+, 1 incident\)")),
        ("id", re.compile(r"Skor [\d.,]+ \(.+, 1 kejadian\)")),
    ):
        page = new_page(room, browser, language)
        sign_in(room, page, "desk_pilkada")
        page.goto(f"{room.url}/map")
        expect(page.locator("#map")).to_have_attribute("data-ready", "15")
        tab_to(page, "#map path[data-code]")
        arrow_to(page, 'path[data-code="ipuh"]')
        hover = page.locator("#hover")
        expect(hover).to_contain_text("Ipuh")
        expect(hover).to_contain_text(singular)
        expect(page.locator(".leaflet-tooltip", has_text="Ipuh")).to_contain_text("Bentrok")
        severity, status = (
            ("Critical", "Reported") if language == "en" else ("Kritis", "Dilaporkan")
        )
        first, then = (hover.evaluate(WORD_LEFT, word) for word in (severity, status))
        assert first is not None and then is not None, hover.inner_text()
        assert first < then, f"{severity}, {status} shown reversed"
        arrow_to(page, f'path[data-name="{clash.incident}"]')
        page.keyboard.press("Enter")
        expect(page).to_have_url(f"{room.url}/{clash.incident}")
        page.context.close()
    assert_local_and_clean(room)


def focused(page: Page) -> str:
    """What has the focus: a kecamatan's code, an incident's name, else its tag."""
    return str(
        page.evaluate(
            "() => { const e = document.activeElement;"
            " return e.getAttribute('data-code') || e.getAttribute('data-name') || e.tagName; }"
        )
    )


def test_the_maps_kecamatan_and_incidents_are_one_tab_stop_and_the_arrow_keys_move_in_it(
    room: Room, browser: Browser
) -> None:
    """The 15 kecamatan and the incidents' markers are one stop of the Tab key (roving
    tabindex), not one each: a keyboard user passes the map with one Tab, and comes back
    with Shift+Tab to the one last reached. The arrow keys move between them (the kecamatan,
    then the incidents; Home, End), each keeping its role and name for a screen reader;
    Enter on a marker opens its incident; a marker reached keeps the focus as the map is
    drawn again."""
    reporter = room.ledger("kesbangpol")
    ipuh = Location("ipuh", latitude=-2.9802, longitude=101.5146)
    first = reporter.report("Crowd at the market", "crowd_gathering", ipuh)
    last = reporter.report("Ballot box damaged", "logistics_failure", ipuh)
    page = new_page(room, browser)
    sign_in(room, page, "desk_pilkada")
    page.goto(f"{room.url}/map")
    expect(page.locator("#map")).to_have_attribute("data-ready", "15")
    expect(page.locator("#map path[data-name]")).to_have_count(2)
    items = page.locator("#map path[data-code], #map path[data-name]")
    expect(page.locator('#map [tabindex="0"]')).to_have_count(1)
    tab_to(page, "#map path[data-code]")
    start = focused(page)
    page.keyboard.press("Tab")  # past the whole map
    assert page.evaluate("!document.activeElement.matches('#map path')"), focused(page)
    page.keyboard.press("Shift+Tab")
    assert focused(page) == start
    page.keyboard.press("ArrowRight")
    second = focused(page)
    assert second not in {start, "BODY"}
    page.keyboard.press("ArrowLeft")
    assert focused(page) == start
    arrow_to(page, 'path[data-code="ipuh"]')
    expect(page.locator("#hover")).to_contain_text("Ipuh")
    ipuh_path = page.locator('#map path[data-code="ipuh"]')
    expect(ipuh_path).to_have_attribute("role", "button")
    expect(ipuh_path).to_have_attribute("aria-label", "Ipuh")
    page.keyboard.press("End")
    marker = page.locator(f'#map path[data-name="{last.incident}"]')
    expect(marker).to_be_focused()
    expect(marker).to_have_attribute("role", "link")
    expect(marker).to_have_attribute("aria-label", "Ballot box damaged")
    # The line under the map says the incident, not the kecamatan focused before it.
    expect(page.locator("#hover")).to_contain_text("Ballot box damaged")
    page.keyboard.press("ArrowRight")  # round to the first
    assert focused(page) == items.first.evaluate(
        "e => e.getAttribute('data-code') || e.getAttribute('data-name')"
    )
    page.keyboard.press("End")
    page.keyboard.press("ArrowLeft")
    expect(page.locator(f'#map path[data-name="{first.incident}"]')).to_be_focused()
    # Drawn again (a change heard): the same marker keeps the focus, still the one Tab stop.
    added = reporter.report("Rally without a permit", "crowd_gathering", ipuh)
    expect(page.locator(f'#map path[data-name="{added.incident}"]')).to_have_count(
        1, timeout=LIVE_SECONDS * 1000
    )
    expect(page.locator(f'#map path[data-name="{first.incident}"]')).to_be_focused()
    expect(page.locator('#map [tabindex="0"]')).to_have_count(1)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{room.url}/{first.incident}")
    assert_local_and_clean(room)


def test_the_map_marks_every_open_incident_and_none_closed_rejected_or_merged(
    room: Room,
) -> None:
    """A marker for each incident still open (reported, verified, assigned, responding,
    resolved), none for those closed, rejected or merged: the map shows the work to do."""
    reporter, desk, lead = (
        room.ledger("kesbangpol"),
        room.ledger("desk_pilkada"),
        room.ledger("polres"),
    )
    at = Location("ipuh", latitude=-2.9802, longitude=101.5146)

    def report(title: str) -> str:
        return reporter.report(title, "crowd_gathering", at).incident

    opened = {
        status: report(status)
        for status in ("REPORTED", "VERIFIED", "ASSIGNED", "RESPONDING", "RESOLVED")
    }
    gone = {status: report(status) for status in ("CLOSED", "REJECTED", "MERGED")}
    # Each takes the lifecycle as far as its status.
    steps = ["VERIFIED", "ASSIGNED", "RESPONDING", "RESOLVED", "CLOSED"]
    for status, name in {**opened, **gone}.items():
        reached = steps.index(status) + 1 if status in steps else 0
        for step in steps[:reached]:
            if step == "VERIFIED":
                desk.verify(name)
            elif step == "ASSIGNED":
                desk.assign_lead(name, "polres")
            elif step == "RESPONDING":
                lead.log_action(name, "Team sent")
            elif step == "RESOLVED":
                lead.resolve(name, "Dispersed")
            else:
                lead.request_closure(name)
                desk.approve_closure(name)
    desk.reject(gone["REJECTED"], "INVALID", "Not an incident")
    last = desk.merge(gone["MERGED"], opened["REPORTED"])
    for status, name in {**opened, **gone}.items():
        assert desk.get_incident(name).status.value == status
    with signed_in_http(room, "desk_pilkada") as web:
        data = web.get("/map/data.json", params={"min_position": str(last.position)}).json()
    assert sorted(m["name"] for m in data["markers"]) == sorted(opened.values())


def test_the_board_and_map_say_when_live_updates_stop_and_catch_up_after(
    room: Room, browser: Browser, tmp_path: Path, nats_server: NatsServer
) -> None:
    """The notifier stopped: the board and the map say their live updates are interrupted
    (not "on" while nothing arrives), the page's log says so; the notifier back on its
    address, they say "on" again and the board shows what was reported meanwhile."""
    board, chart = new_page(room, browser), new_page(room, browser)
    sign_in(room, board, "desk_pilkada")
    sign_in(room, chart, "desk_pilkada")
    chart.click("text=Map")
    expect(chart.locator("#live")).to_have_attribute("data-state", "open")
    port = room.stack.notifier.port
    room.stack.notifier.stop(1.0)
    for page in (board, chart):
        expect(page.locator("#live")).to_have_attribute("data-state", "stale", timeout=STALE_MS)
        expect(page.locator("#live")).to_contain_text("interrupted")
    assert any(e.get("event") == "situation_room.live_interrupted" for e in room.web.log_lines())
    title = f"While the notifier was away {uuid.uuid4().hex[:6]}"
    room.ledger("kesbangpol").report(title, "crowd_gathering", "ipuh")
    settings = notifier_settings(tmp_path, nats_server.url, listen=f"127.0.0.1:{port}")
    restarted = build_notifier(settings)
    try:
        for page in (board, chart):
            expect(page.locator("#live")).to_have_attribute("data-state", "open", timeout=STALE_MS)
        expect(board.locator("#rows")).to_contain_text(title, timeout=LIVE_SECONDS * 1000)
    finally:
        restarted.stop(1.0)
    assert_local_and_clean(room)


def test_the_board_and_map_say_when_the_ledger_does_not_answer_and_come_back_on_after(
    tmp_path: Path, nats_server: NatsServer, browser: Browser
) -> None:
    """The ledger stopped while the notifier still sends its heartbeats: the board and the
    map say their live updates are interrupted (they said "on" while no read could succeed),
    in the page's language; the ledger back on its address, "on" again by themselves, and
    the board shows what is reported then."""
    with open_room(tmp_path, nats_server.url, f"127.0.0.1:{free_port()}") as room:
        board, chart = new_page(room, browser), new_page(room, browser, "id")
        sign_in(room, board, "desk_pilkada")
        sign_in(room, chart, "desk_pilkada")
        chart.goto(f"{room.url}/map")
        expect(chart.locator("#map")).to_have_attribute("data-ready", "15")
        expect(chart.locator("#live")).to_have_attribute("data-state", "open")
        room.stack.ledger.server.stop(1.0)
        for page, said in ((board, "does not answer"), (chart, "tidak menjawab")):
            expect(page.locator("#live")).to_have_attribute("data-state", "down", timeout=STALE_MS)
            expect(page.locator("#live")).to_contain_text(said)
        logged = [e.get("event") for e in room.web.log_lines()]
        assert "situation_room.ledger_unreachable" in logged
        assert room.ledger_settings is not None
        again = build_ledger(room.ledger_settings)
        try:
            for page in (board, chart):
                expect(page.locator("#live")).to_have_attribute(
                    "data-state", "open", timeout=STALE_MS
                )
            expect(board.locator("#live")).to_have_text("Live updates: on")
            title = f"After the ledger came back {uuid.uuid4().hex[:6]}"
            room.ledger("kesbangpol").report(title, "crowd_gathering", "ipuh")
            expect(board.locator("#rows")).to_contain_text(title, timeout=STALE_MS)
        finally:
            again.stop(1.0)
        assert_local_and_clean(room)


def test_a_failed_reload_of_the_board_is_said_then_cleared_when_it_reads_again(
    room: Room, browser: Browser
) -> None:
    """A read of the rows that fails (the ledger did not answer) is said on the line above
    them, and read again: once it succeeds, the line says "on" again (it kept saying the
    read failed). A read answered by the sign-in page sends the tab there (it was put inside
    the board's table)."""
    page = new_page(room, browser)
    sign_in(room, page, "desk_pilkada")
    reporter = room.ledger("kesbangpol")
    page.route("**/board/rows?*", lambda route: route.fulfill(status=503, body="no answer"))
    reporter.report(f"Unread {uuid.uuid4().hex[:6]}", "crowd_gathering", "ipuh")
    expect(page.locator("#live")).to_contain_text("Reload failed")
    page.unroute("**/board/rows?*")
    title = f"Read again {uuid.uuid4().hex[:6]}"
    reporter.report(title, "crowd_gathering", "ipuh")
    expect(page.locator("#rows")).to_contain_text(title, timeout=LIVE_SECONDS * 1000)
    expect(page.locator("#live")).to_have_attribute("data-state", "open")
    expect(page.locator("#live")).to_have_text("Live updates: on")
    # The session gone (the cookie cleared, as a revoked token would): to the sign-in page.
    page.context.clear_cookies(name=SESSION_COOKIE)
    reporter.report(f"Signed out {uuid.uuid4().hex[:6]}", "crowd_gathering", "ipuh")
    expect(page).to_have_url(f"{room.url}/login?ended")
    assert_local_and_clean(room)


#: What the line says of a failed read, by language: the browser could not make the read (the
#: page's server away), the ledger did not answer (503), another error answered.
READ_FAILURES = {
    "en": (
        "Reload failed: the situation room does not answer",
        "Reload failed: the ledger did not answer",
        "Reload failed (HTTP 500)",
    ),
    "id": (
        "Gagal memuat ulang: ruang situasi tidak menjawab",
        "Gagal memuat ulang: buku besar tidak menjawab",
        "Gagal memuat ulang (HTTP 500)",
    ),
}


@pytest.mark.parametrize("language", ["id", "en"])
def test_a_failed_read_is_said_in_the_pages_language_never_the_browsers(
    room: Room, browser: Browser, language: str
) -> None:
    """A read of the map the browser could not make (fetch's own "Failed to fetch"), or one
    answered with an error (the script's "Error: 503"), is said on the line in the words of
    the catalogs, in the page's language: never the browser's English or the script's."""
    page = new_page(room, browser, language)
    sign_in(room, page, "desk_pilkada")
    page.goto(f"{room.url}/map")
    expect(page.locator("#map")).to_have_attribute("data-ready", "15")
    page.evaluate("window.roomRetryMs = 200")
    unreachable, no_ledger, other = READ_FAILURES[language]
    reporter = room.ledger("kesbangpol")
    answers: list[Callable[[Route], None]] = [
        lambda route: route.abort("connectionrefused"),
        lambda route: route.fulfill(status=503, body="no answer"),
        lambda route: route.fulfill(status=500, body="Internal Server Error"),
    ]
    for answer, said in zip(answers, (unreachable, no_ledger, other), strict=True):
        page.route("**/map/data.json?*", answer)
        reporter.report(f"Unread {uuid.uuid4().hex[:6]}", "crowd_gathering", "ipuh")
        expect(page.locator("#live")).to_have_text(said)
        expect(page.locator("#live")).to_have_attribute("data-state", "failed")
        page.unroute("**/map/data.json?*")
    expect(page.locator("#live")).to_have_attribute("data-state", "open")
    assert_local_and_clean(room)


@pytest.mark.parametrize(
    ("language", "said"),
    [
        ("en", "The map could not be loaded: type the latitude and longitude"),
        ("id", "Peta tidak dapat dimuat: ketik lintang dan bujurnya"),
    ],
)
def test_the_report_form_says_when_its_map_cannot_be_loaded_and_takes_a_typed_point(
    room: Room, browser: Browser, language: str, said: str
) -> None:
    """The small map of the report form stayed blank, without a word, when its data could
    not be read (the ledger away, a session ended): the officer did not know to type the
    point."""
    page = new_page(room, browser, language)
    sign_in(room, page, "polres")
    page.route("**/map/data.json", lambda route: route.fulfill(status=503, body="no answer"))
    page.goto(f"{room.url}/report")
    expect(page.locator("#pick")).to_have_attribute("data-ready", "failed")
    expect(page.locator("#pick")).to_be_hidden()
    expect(page.locator("#pick-failed")).to_be_visible()
    expect(page.locator("#pick-failed")).to_contain_text(said)
    title = f"Typed point {uuid.uuid4().hex[:6]}"
    page.fill("input[name=title]", title)
    page.select_option("select[name=kecamatan]", "ipuh")
    page.select_option("select[name=category]", "crowd_gathering")
    page.fill("#latitude", "-2.61234")
    page.fill("#longitude", "101.12345")
    page.click("#submit")
    expect(page).to_have_url(re.compile(r"/board\?reported=\d+&incident=[0-9a-f-]{36}$"))
    (incident,) = [i for i in room.ledger("desk_pilkada").list_incidents() if i.title == title]
    assert (incident.location.latitude, incident.location.longitude) == (-2.61234, 101.12345)
    assert_local_and_clean(room)


#: What the forms' own checks say, by the page's language (static/forms.js).
FORM_CHECKS = {
    "en": ("Fill in this field.", "Enter a number from -90 to 90."),
    "id": ("Isi kolom ini.", "Masukkan angka dari -90 sampai 90."),
}


@pytest.mark.parametrize("language", ["en", "id"])
def test_the_forms_own_checks_speak_the_page_s_language_not_the_browser_s(
    room: Room, browser: Browser, language: str
) -> None:
    """The browser's bubbles for a required field or a number out of range were in the
    browser's language, whatever language the officer chose on the page."""
    missing, out_of_range = FORM_CHECKS[language]
    page = new_page(room, browser, language)  # the browser itself speaks English
    sign_in(room, page, "polres")
    page.goto(f"{room.url}/report")
    page.fill("#latitude", "95")
    page.click("#submit")  # no title, a latitude beyond 90: refused by the page itself
    title = page.locator("input[name=title]")
    latitude = page.locator("#latitude")
    assert title.evaluate("field => field.validationMessage") == missing
    assert not page.url.endswith("/board")
    page.fill("input[name=title]", f"Checked {uuid.uuid4().hex[:6]}")
    page.click("#submit")
    assert latitude.evaluate("field => field.validationMessage") == out_of_range
    # Filled by a script, as the map fills it: the words of the last check do not stay.
    latitude.evaluate("field => { field.value = '-2.5'; }")
    page.fill("#longitude", "101.1")
    page.select_option("select[name=kecamatan]", "ipuh")
    page.select_option("select[name=category]", "crowd_gathering")
    page.click("#submit")
    expect(page).to_have_url(re.compile(r"/board\?reported=\d+&incident=[0-9a-f-]{36}$"))
    assert_local_and_clean(room)


def test_a_phone_sized_window_shows_every_page_without_sideways_scrolling(
    room: Room, browser: Browser
) -> None:
    """At 390 px the board's status, the agencies' overdue count and the incident's forms
    (the merge form's list of long titles) stay on the screen: nothing wider than it."""
    reporter = room.ledger("kesbangpol")
    long = "Massa pendukung berkumpul di depan kantor kecamatan menuntut penghitungan ulang"
    first = reporter.report(f"{long} {uuid.uuid4().hex[:6]}", "crowd_gathering", "ipuh")
    reporter.report(f"{long} lagi {uuid.uuid4().hex[:6]}", "crowd_gathering", "ipuh")
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    page.on("request", lambda request: room.requests.append(request.url))
    page.on("pageerror", lambda error: room.errors.append(str(error)))
    sign_in(room, page, "desk_pilkada")
    for path in ("/board", "/agencies", "/decisions", "/map", "/report", f"/{first.incident}"):
        page.goto(f"{room.url}{path}")
        page.wait_for_load_state()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{path} is {width} px wide"
        if path == "/board":
            # Under the title, what the hidden columns say; the status's word whole (it
            # broke as "Dilapo rkan"), the code on one line.
            row = page.locator(f"tr[data-name='{first.incident}']")
            expect(row.locator(".on-phone")).to_be_visible()
            expect(row.locator(".on-phone")).to_contain_text("Ipuh")
            status = row.locator("td").nth(3)
            assert status.evaluate(WORD_LINES, status.inner_text().strip()) == 1
            assert (
                row.locator(".on-phone .code").evaluate(
                    "element => element.getClientRects().length"
                )
                == 1
            )
            # The first incident on the first screen (the filters, one a line, filled it):
            # they fold away, a tap on "Filters" away.
            top = page.locator("table.incidents tbody tr").first.bounding_box()
            assert top is not None and top["y"] < 844 * 0.6, top
            box = page.locator("#filters-box")
            assert box.evaluate("d => !d.open")
            box.locator("summary").click()
            expect(page.locator("select[name=kecamatan]")).to_be_visible()
        if path == "/agencies":
            # The overdue count, the figure looked for, on the screen, not past its edge.
            cell = page.locator("td.overdue-count").first.bounding_box()
            assert cell is not None and cell["x"] + cell["width"] <= 390, cell
    expect(page.locator('select[name="target"]')).to_have_count(1)  # the merge form is there
    # Merging is for good: no incident is chosen for the officer, the form asks for one.
    target = page.locator('select[name="target"]')
    assert target.evaluate("s => s.required && s.value === '' && s.options[0].value === ''")
    assert_local_and_clean(room)


#: Where a word begins on the screen (its left edge, in px), found in an element's text.
WORD_LEFT = """(element, word) => {
  const walk = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
  for (let node = walk.nextNode(); node; node = walk.nextNode()) {
    const at = node.data.indexOf(word);
    if (at < 0) { continue; }
    const range = document.createRange();
    range.setStart(node, at);
    range.setEnd(node, at + word.length);
    return range.getBoundingClientRect().left;
  }
  return null;
}"""
#: On how many lines a word of an element is shown (1: whole; null: not found).
WORD_LINES = WORD_LEFT.replace("getBoundingClientRect().left", "getClientRects().length")


def test_what_an_agency_writes_stays_inside_its_element_whole_and_in_its_order(
    room: Room, browser: Browser
) -> None:
    """Texts an agency sends over gRPC as long as the ledger takes them, in one word (the
    title, the description, a comment, an action, a decision), with line breaks, markup and a
    right-to-left override: on a wide screen and a phone the board, the decisions and the
    incident are no wider than the screen, each text shown whole, as text, the description's
    lines kept, and the override reversing nothing outside its own text (the decision's times
    read from left to right)."""
    reporter, desk = room.ledger("kesbangpol"), room.ledger("desk_pilkada")
    title = "W" * 200
    description = "<script>window.hostile = 1</script>" + "X" * 1000 + "\nKronologi berikutnya"
    reported = reporter.report(title, "crowd_gathering", "ipuh", description=description)
    verified = desk.verify(reported.incident, comment="Y" * 2000)
    assigned = desk.assign_lead(reported.incident, "polres", expected_version=verified.version)
    room.ledger("polres").log_action(
        reported.incident, "A" * 2000, expected_version=assigned.version
    )
    now = datetime.now(UTC)
    desk.record_decision(
        reported.incident,
        ["desk_pilkada"],
        "Forkopimda \u202e",  # an override with no end: to the end of its paragraph
        "S" * 2000,
        rationale="R" * 2000,
        valid_from=now - timedelta(minutes=1),
        valid_until=now + timedelta(hours=2),
    )
    for width in (1600, 390):
        context = browser.new_context(viewport={"width": width, "height": 900})
        context.add_cookies([{"name": LANGUAGE_COOKIE, "value": "en", "url": room.url}])
        page = context.new_page()
        page.on("request", lambda request: room.requests.append(request.url))
        page.on("pageerror", lambda error: room.errors.append(str(error)))
        sign_in(room, page, "desk_pilkada")
        for path in ("/board", "/decisions", f"/{reported.incident}"):
            page.goto(f"{room.url}{path}")
            page.wait_for_load_state()
            wide = page.evaluate("document.documentElement.scrollWidth")
            assert wide <= width, f"{path} is {wide} px wide on a {width} px screen"
            if path == "/decisions":  # the times beside the long decision stay readable
                since = page.locator("tr.decision td.from")
                assert since.evaluate(WORD_LINES, "WIB") == 1, f"WIB broken at {width} px"
        expect(page.locator("h1")).to_have_text(title)
        lines = page.locator("#description").inner_text().split("\n")
        assert lines == [description.split("\n")[0], "Kronologi berikutnya"]
        assert page.evaluate("window.hostile") is None
        expect(page.locator("li[data-type='ActionLogged']")).to_contain_text("A" * 2000)
        decision = page.locator("#decisions li.decision")
        expect(decision).to_contain_text("S" * 2000)
        since, until = (decision.evaluate(WORD_LEFT, word) for word in ("from", "until"))
        assert since is not None and until is not None
        if width > 390:  # on one line: "from" before "until"
            assert since < until, "the decision's times are shown reversed"
        page.goto(f"{room.url}/board")
        expect(page.locator(f"tr[data-name='{reported.incident}'] td.title a")).to_have_text(title)
        context.close()
    assert_local_and_clean(room)


#: The browser tab's title as a tab shows it: a line of its own whose direction is its first
#: strong character's (Unicode's rule for a paragraph), on the page to be measured.
AS_TAB = """() => {
  const line = document.createElement("div");
  line.style.cssText = "unicode-bidi: plaintext; white-space: nowrap; position: absolute";
  line.textContent = document.title;
  document.body.appendChild(line);
  return line;
}"""


def test_an_incident_title_right_to_left_keeps_the_tab_title_in_its_order(
    room: Room, browser: Browser
) -> None:
    """The incident page's title (the browser tab's) holds the agency's title isolated
    (FIRST STRONG ISOLATE ... POP DIRECTIONAL ISOLATE), as <bdi> does in the page: an Arabic
    or Hebrew title no longer turns the whole tab title right to left (the regency then shown
    first), and an override in it reverses it alone, not the regency after it."""
    reporter = room.ledger("kesbangpol")
    arabic = reporter.report("حادث عند مركز الاقتراع 4", "crowd_gathering", "ipuh")
    hebrew = reporter.report("אירוע ‮", "crowd_gathering", "ipuh")
    page = new_page(room, browser)
    sign_in(room, page, "desk_pilkada")
    for result, first_word in ((arabic, "حادث"), (hebrew, "אירוע")):
        page.goto(f"{room.url}/{result.incident}")
        title = room.ledger("desk_pilkada").get_incident(result.incident).title
        assert page.title() == f"\u2068{title}\u2069 · Kabupaten Mukomuko"
        line = page.evaluate_handle(AS_TAB).as_element()
        assert line is not None
        at = {w: line.evaluate(WORD_LEFT, w) for w in (first_word, "Kabupaten", "Mukomuko")}
        assert None not in at.values(), at
        assert at[first_word] < at["Kabupaten"] < at["Mukomuko"], f"{page.title()!r}: {at}"
    assert_local_and_clean(room)


# --- over plain HTTP: the event stream and the board's filter --------------------------------


@contextmanager
def signed_in_http(room: Room, agency: str) -> Iterator[httpx.Client]:
    """An HTTP client signed in as ``agency`` (the sign-in form, with its CSRF token)."""
    with httpx.Client(
        base_url=room.url, timeout=READ_SECONDS, cookies={LANGUAGE_COOKIE: "en"}
    ) as web:
        page = web.get("/login")
        found = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert found, page.text
        form = {"csrf": found[1], "agency": agency, "token": room.stack.ledger.tokens[agency]}
        assert web.post("/login", data=form).status_code == 303
        yield web


@dataclass(frozen=True)
class Sent:
    id: int
    event: str
    data: str


def first_event(web: httpx.Client, headers: dict[str, str] | None = None, **query: str) -> Sent:
    """The first event of a new stream (keepalive comments skipped); the stream is then
    closed, as a dropped connection would be."""
    fields: dict[str, str] = {}
    with web.stream("GET", "/events", params=query, headers=headers or {}) as stream:
        for line in stream.iter_lines():
            if line and not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.strip()
            elif not line and "id" in fields:
                return Sent(int(fields["id"]), fields.get("event", ""), fields.get("data", ""))
    raise AssertionError(f"the stream ended without an event: {fields}")


def test_a_reconnect_with_last_event_id_loses_nothing(room: Room) -> None:
    reporter = room.ledger("kesbangpol")
    with signed_in_http(room, "desk_pilkada") as web:
        first = reporter.report("Before the drop", "crowd_gathering", "ipuh")
        heard = first_event(web, after="0")  # behind: told to reload, at least at `first`
        assert heard.id >= first.position
        # The connection is gone; meanwhile another incident is reported.
        missed = reporter.report("While disconnected", "crowd_gathering", "ipuh")
        # Reconnecting with the last id seen: the next event is at least the missed one,
        # (a reload, or the change itself when the page had not heard of it yet).
        again = first_event(web, {"Last-Event-ID": str(heard.id)})
        assert again.id >= missed.position
        assert again.event in {"resync", "change"}
        rows = web.get("/board/rows", params={"min_position": str(again.id)}).text
        assert "While disconnected" in rows and "Before the drop" in rows


def test_the_boards_filter_shows_what_the_ledger_lists_for_it(room: Room) -> None:
    reporter = room.ledger("polres")
    for kecamatan, severity in [("ipuh", "high"), ("ipuh", "low"), ("air_rami", "high")]:
        reporter.report(f"{kecamatan} {severity}", "crowd_gathering", kecamatan, severity=severity)
    desk = room.ledger("desk_pilkada")
    first = next(desk.list_incidents('kecamatan = "ipuh"'))
    desk.verify(first.name)
    with signed_in_http(room, "desk_pilkada") as web:
        for query, expression in [
            (
                {"kecamatan": "ipuh", "status": "VERIFIED"},
                'kecamatan = "ipuh" AND status = "VERIFIED"',
            ),
            ({"severity": "high"}, 'severity = "high"'),
            ({"kecamatan": "ipuh"}, 'kecamatan = "ipuh"'),
        ]:
            page = web.get("/board", params=query).text
            shown = re.findall(r'data-name="([^"]+)"', page)
            listed = [i.name for i in desk.list_incidents(expression)]
            assert shown == list(reversed(listed)), query
            assert shown, query


def test_the_board_says_when_more_incidents_match_than_it_shows(room: Room) -> None:
    """The board shows the newest 200: with more, it says so (an officer must not take the
    rows for all of them), and it offers every status to filter on (reopened, merged)."""
    reporter = room.ledger("polres")
    for n in range(BOARD_ROWS + 1):
        kecamatan = "ipuh" if n < BOARD_ROWS else "air_rami"
        reporter.report(f"Report {n}", "crowd_gathering", kecamatan)
    with signed_in_http(room, "desk_pilkada") as web:
        page = web.get("/board").text
        assert len(re.findall(r'<tr class="incident', page)) == BOARD_ROWS
        assert "Only the newest 200 incidents are shown: more match." in page
        rows = web.get("/board/rows").text  # what the live board reloads says so too
        assert "Only the newest 200 incidents are shown" in rows
        exactly = web.get("/board", params={"kecamatan": "ipuh"}).text
        assert len(re.findall(r'<tr class="incident', exactly)) == BOARD_ROWS
        assert "Only the newest" not in exactly
        select = page.split('name="status"')[1].split("</select>")[0]
        offered = re.findall(r'<option value="([A-Z]+)"', select)
        every = {s.value for s in IncidentStatus} - {"UNSPECIFIED"}
        assert set(offered) == set(STATUSES) == every


def test_english_shows_statuses_and_rejection_reasons_in_words_as_indonesian_does(
    room: Room,
) -> None:
    """Not the codes (REPORTED, OUT_OF_SCOPE): the words, in English as in Indonesian."""
    incident = room.ledger("kesbangpol").report("Crowd at TPS 04", "crowd_gathering", "ipuh")
    with signed_in_http(room, "desk_pilkada") as web:
        page = web.get(f"/{incident.incident}").text
        board = web.get("/board").text
        web.cookies.set(LANGUAGE_COOKIE, "id")
        halaman = web.get(f"/{incident.incident}").text
    assert 'id="status">Reported<' in page and 'id="status">Dilaporkan<' in halaman
    reasons = re.findall(r'<option value="([A-Z_]+)">([^<]*)</option>', page)
    assert reasons == [("INVALID", "Invalid"), ("HOAX", "Hoax"), ("OUT_OF_SCOPE", "Out of scope")]
    offered = dict(re.findall(r'<option value="([A-Z]+)" *>([^<]*)</option>', board))
    assert offered["REPORTED"] == "Reported" and offered["REOPENED"] == "Reopened"
    assert "<td>Reported</td>" in board


def test_the_timeline_says_whom_each_event_names_why_it_was_rejected_and_what_was_done(
    room: Room,
) -> None:
    """Each entry says what its event holds beside its reason: "Supporting agency added by
    desk_pilkada" said not which agency, "Rejected" not why, "Action logged" not the action."""
    reporter, desk = room.ledger("kesbangpol"), room.ledger("desk_pilkada")
    hoax = reporter.report("Ballots burnt, says a post", "hoax", "ipuh").incident
    desk.reject(hoax, "HOAX", "Bawaslu checked")
    road = reporter.report("Blocked road to TPS 03", "intimidation", "ipuh").incident
    desk.verify(road)
    desk.assign_lead(road, "polres")
    desk.add_supporting_agency(road, "dinkes")
    room.ledger("polres").propose_handover(road, "kodim", reason="The army holds the road")
    army = room.ledger("kodim")
    army.accept_handover(road)
    army.log_action(road, "Road cleared by two platoons")
    army.escalate(road, "Crowd growing")
    # One whose handover is still pending.
    fight = reporter.report("Fight at TPS 05", "intimidation", "ipuh").incident
    desk.verify(fight)
    desk.assign_lead(fight, "polres")
    room.ledger("polres").propose_handover(fight, "kodim", reason="Army post nearby")

    def entries(page: str) -> dict[str, str]:
        found = re.findall(r'<li class="event[^"]*" data-type="(\w+)"[^>]*>(.*?)</li>', page, re.S)
        return {kind: re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)) for kind, text in found}

    def authors(page: str) -> list[str]:
        return [
            re.sub(r"\s+", " ", a) for a in re.findall(r'<span class="author">(.*?)</span>', page)
        ]

    def pending(page: str) -> str:
        found = re.search(r"<dd>(.*?)</dd>", page.split("Pending handover", 1)[1], re.S)
        assert found is not None, page
        return re.sub(r"<[^>]+>", "", found[1])  # the reason isolated in a <bdi>

    with signed_in_http(room, "desk_pilkada") as web:
        pages = {"en": (web.get(f"/{hoax}").text, web.get(f"/{road}").text)}
        fight_page = web.get(f"/{fight}").text
        web.cookies.set(LANGUAGE_COOKIE, "id")
        pages["id"] = (web.get(f"/{hoax}").text, web.get(f"/{road}").text)
    # Each event's author by the agency's name, as the page names agencies everywhere (the
    # code it showed read as another vocabulary beside "(Polres Mukomuko)").
    names = {
        "kesbangpol": "Badan Kesatuan Bangsa dan Politik",
        "desk_pilkada": "Desk Pilkada Pemkab Mukomuko",
        "polres": "Polres Mukomuko",
        "kodim": "Kodim 0428/Mukomuko",
    }
    by = [(e.type, e.actor.agency, e.actor.officer) for e in desk.incident_events(road)]
    for language in ("en", "id"):
        expected = [f"{names[agency]} / {officer}" for _, agency, officer in by]
        assert authors(pages[language][1]) == expected
    assert pending(fight_page) == "Polres Mukomuko → Kodim 0428/Mukomuko: Army post nearby"
    for language, hoax_page, level in (
        ("en", "(Hoax)", "(level 1)"),
        ("id", "(Hoaks)", "(tingkat 1)"),
    ):
        rejected, road_page = (entries(page) for page in pages[language])
        assert hoax_page in rejected["Rejected"], rejected
        assert "(Polres Mukomuko)" in road_page["LeadAssigned"], road_page
        assert "(Dinas Kesehatan)" in road_page["SupportingAgencyAdded"], road_page
        assert "(→ Kodim 0428/Mukomuko)" in road_page["HandoverProposed"], road_page
        assert "(Polres Mukomuko → Kodim 0428/Mukomuko)" in road_page["HandoverAccepted"]
        assert "Road cleared by two platoons" in road_page["ActionLogged"], road_page
        assert level in road_page["Escalated"], road_page


def test_the_desk_verifies_and_assigns_and_the_lead_logs_an_action_each_as_itself(
    room: Room, browser: Browser
) -> None:
    title = f"Intimidation at TPS 07 {uuid.uuid4().hex[:6]}"
    reported = room.ledger("kesbangpol").report(title, "intimidation", "ipuh")
    url = f"{room.url}/{reported.incident}"
    desk, police, other = (new_page(room, browser) for _ in range(3))
    # kodim: not involved (kesbangpol, the reporter, may escalate).
    for page, agency in [(desk, "desk_pilkada"), (police, "polres"), (other, "kodim")]:
        sign_in(room, page, agency)
    desk.click(f"text={title}")  # from the board to the incident
    expect(desk).to_have_url(url)
    code = room.ledger("kesbangpol").get_incident(reported.incident).reference
    expect(desk.locator("#reference")).to_have_text(code)
    desk.click("#verify")
    expect(desk.locator("#status")).to_have_text("Verified")
    desk.select_option("select[name=agency]", "polres")
    desk.click("#assign")
    expect(desk.locator("#status")).to_have_text("Assigned")
    expect(desk.locator("#log_action")).to_have_count(0)  # not the lead

    other.goto(url)
    expect(other.locator(".actions")).to_have_count(0)  # neither coordinator nor involved
    police.goto(url)
    expect(police.locator("#verify")).to_have_count(0)
    police.fill("input[name=action]", "Patrol sent to the TPS")
    police.click("#log_action")
    expect(police.locator("#status")).to_have_text("Responding")
    expect(police.locator(".timeline li")).to_have_count(4)

    history = list(room.ledger("desk_pilkada").incident_events(reported.incident))
    actors = [(e.type, e.actor.agency, e.actor.officer) for e in history]
    assert actors == [
        ("Reported", "kesbangpol", "dev-kesbangpol"),
        ("Verified", "desk_pilkada", "dev-desk_pilkada"),
        ("LeadAssigned", "desk_pilkada", "dev-desk_pilkada"),
        ("ActionLogged", "polres", "dev-polres"),
    ]
    assert_local_and_clean(room)


def test_an_action_on_a_changed_incident_is_refused_with_the_ledgers_reason(
    room: Room, browser: Browser
) -> None:
    reported = room.ledger("kesbangpol").report("Hoax leaflet", "hoax", "ipuh")
    page = new_page(room, browser)
    sign_in(room, page, "desk_pilkada")
    page.goto(f"{room.url}/{reported.incident}")
    room.ledger("desk_pilkada").verify(reported.incident)  # someone else, meanwhile
    typed = "Leaflet matches the one seen in Ipuh market"
    page.fill("form[action$=escalate] input[name=reason]", typed)
    page.click("#escalate")  # with the version the page showed
    # Said at the top and beside the form, which holds what was typed (it came back empty).
    expect(page.locator(".error[role=alert]")).to_contain_text(
        "changed while this page was open (it is at version 2 now)"
    )
    expect(page.locator("form[action$=escalate] .error")).to_be_visible()
    expect(page.locator("#status")).to_have_text("Verified")
    expect(page.locator("form[action$=escalate] input[name=reason]")).to_have_value(typed)
    expect(page.locator("form[action$=verify]")).to_have_count(0)  # verified meanwhile
    events = list(room.ledger("desk_pilkada").incident_events(reported.incident))
    assert [e.type for e in events] == ["Reported", "Verified"]
    page.click("#escalate")  # sent again as it is, at the version shown now
    expect(page.locator(".error")).to_have_count(0)
    events = list(room.ledger("desk_pilkada").incident_events(reported.incident))
    assert [(e.type, e.reason) for e in events][-1] == ("Escalated", typed)


def test_a_refused_field_of_an_action_is_named_by_the_forms_label_in_indonesian(
    room: Room, browser: Browser
) -> None:
    """The ledger's Indonesian refusal names its request's field (``reason``); the page says
    the form's word for it, not an English one in an Indonesian line."""
    reported = room.ledger("kesbangpol").report("Spanduk SARA", "sara_provocation", "ipuh")
    page = new_page(room, browser, "id")
    sign_in(room, page, "desk_pilkada")
    page.goto(f"{room.url}/{reported.incident}")
    page.fill("form[action$=escalate] input[name=reason]", "   ")  # passes `required`
    page.click("#escalate")
    expect(page.locator("form[action$=escalate] .error")).to_have_text(
        "Nilai “Alasan” tidak dapat diterima."
    )
    events = list(room.ledger("desk_pilkada").incident_events(reported.incident))
    assert [e.type for e in events] == ["Reported"]


def test_a_handover_proposed_by_the_lead_is_accepted_by_the_receiving_agency(
    room: Room, browser: Browser
) -> None:
    reported = room.ledger("kesbangpol").report("Blocked road to TPS 03", "intimidation", "ipuh")
    desk_client = room.ledger("desk_pilkada")
    desk_client.verify(reported.incident)
    desk_client.assign_lead(reported.incident, "polres")
    url = f"{room.url}/{reported.incident}"
    desk, police, army = (new_page(room, browser) for _ in range(3))
    for page, agency in [(desk, "desk_pilkada"), (police, "polres"), (army, "kodim")]:
        sign_in(room, page, agency)

    desk.goto(url)
    desk.select_option("select[name=supporting]", "dinkes")
    desk.click("#add_supporting")
    expect(desk.locator(".timeline li")).to_have_count(4)
    # Agencies by their names, as the lead is (the supporting ones and the reporter's were
    # codes: "dinkes", "kesbangpol").
    expect(desk.locator("#supporting")).to_have_text("Dinas Kesehatan")
    expect(desk.locator("#reporter")).to_contain_text("Badan Kesatuan Bangsa dan Politik / ")
    army.goto(url)
    expect(army.locator(".actions")).to_have_count(0)  # not involved yet
    police.goto(url)
    expect(police.locator("#accept_handover")).to_have_count(0)
    police.select_option("select[name=to_agency]", "kodim")
    police.fill("form[action$=propose_handover] input[name=reason]", "The army holds the road")
    police.click("#propose_handover")
    expect(police.locator("#propose_handover")).to_have_count(0)  # one is pending
    army.goto(url)
    army.click("#accept_handover")
    expect(army.locator("#resolve")).to_have_count(0)  # ASSIGNED: nothing to resolve yet
    expect(army.locator("#propose_handover")).to_be_visible()  # the lead now

    got = desk_client.get_incident(reported.incident)
    assert (got.lead_agency, got.supporting_agencies, got.pending_handover) == (
        "kodim",
        ("dinkes",),
        None,
    )
    history = list(desk_client.incident_events(reported.incident))
    assert [(e.type, e.actor.agency) for e in history][3:] == [
        ("SupportingAgencyAdded", "desk_pilkada"),
        ("HandoverProposed", "polres"),
        ("HandoverAccepted", "kodim"),
    ]
    assert_local_and_clean(room)


def act_over_http(web: httpx.Client, incident: str, action: str, **fields: str) -> httpx.Response:
    """Post one action's form as the page shows it (its CSRF token and version)."""
    page = web.get(f"/{incident}")
    version = re.search(r'name="version" value="(\d+)"', page.text)
    form = {"csrf": csrf_of(page), "version": version[1] if version else "0", **fields}
    return web.post(f"/{incident}/{action}", data=form)


def test_the_lead_resolves_and_requests_closure_the_desk_closes_and_records_a_decision(
    room: Room,
) -> None:
    reported = room.ledger("kesbangpol").report("Money politics in Lubuk Pinang", "hoax", "ipuh")
    incident = reported.incident
    desk_client = room.ledger("desk_pilkada")
    desk_client.verify(incident)
    desk_client.assign_lead(incident, "polres")
    room.ledger("polres").log_action(incident, "Team sent")  # RESPONDING
    with (
        signed_in_http(room, "polres") as police,
        signed_in_http(room, "desk_pilkada") as desk,
    ):
        decided = act_over_http(
            desk,
            incident,
            "record_decision",
            forum="Forkopimda",
            summary="Patrols doubled",
            rationale="Both camps announced rallies",
            hours="12",
            deciding="polres",
        )
        assert decided.status_code == 303
        assert 'id="request_closure"' not in police.get(f"/{incident}").text  # not resolved
        resolved = act_over_http(police, incident, "resolve", resolution="Suspects questioned")
        assert resolved.status_code == 303
        assert 'id="approve_closure"' not in desk.get(f"/{incident}").text  # not requested
        assert act_over_http(police, incident, "request_closure").status_code == 303
        assert act_over_http(desk, incident, "approve_closure").status_code == 303
        page = desk.get(f"/{incident}")
        assert 'id="reopen"' in page.text and 'id="status">Closed' in page.text
        # The timeline says what was decided, where, and until when, not only why.
        timeline = page.text.split('data-type="DecisionRecorded"')[1].split("</li>")[0]
        assert "Both camps announced rallies" in timeline
        assert '<p class="fact decided"><bdi>Forkopimda</bdi>: <bdi class="lines">Patrols' in (
            timeline
        )
        assert "until" in timeline and "WIB" in timeline, timeline
    got = desk_client.get_incident(incident)
    assert got.status.value == "CLOSED"
    (decision,) = got.decisions
    assert (decision.forum, decision.summary, sorted(decision.deciding_agencies)) == (
        "Forkopimda",
        "Patrols doubled",
        ["desk_pilkada", "polres"],
    )
    assert decision.valid_until is not None and decision.valid_from is not None
    assert decision.valid_until - decision.valid_from == timedelta(hours=12)
    history = list(desk_client.incident_events(incident))
    assert [(e.type, e.actor.agency) for e in history][4:] == [
        ("DecisionRecorded", "desk_pilkada"),
        ("Resolved", "polres"),
        ("ClosureRequested", "polres"),
        ("ClosureApproved", "desk_pilkada"),
    ]


def test_an_action_the_role_may_not_take_is_not_offered_and_the_ledger_refuses_it(
    room: Room,
) -> None:
    reported = room.ledger("kesbangpol").report("Torn banners", "hoax", "ipuh")
    with signed_in_http(room, "polres") as police:
        page = police.get(f"/{reported.incident}")
        assert 'id="verify"' not in page.text and 'id="reject"' not in page.text
        # Posted anyway (the page's own CSRF token): the ledger refuses, nothing is recorded.
        refused = act_over_http(police, reported.incident, "verify", comment="forged")
        assert refused.status_code == 200 and 'class="error"' in refused.text
        assert "coordinator" in refused.text
    events = list(room.ledger("desk_pilkada").incident_events(reported.incident))
    assert [e.type for e in events] == ["Reported"]


def test_the_decisions_in_force_show_the_time_left_in_wib(room: Room, browser: Browser) -> None:
    desk = room.ledger("desk_pilkada")
    reported = room.ledger("kesbangpol").report("Gathering planned", "crowd_gathering", "ipuh")
    desk.verify(reported.incident)
    now = datetime.now(UTC)
    until = now + timedelta(hours=3, minutes=30)
    desk.record_decision(
        reported.incident,
        ["desk_pilkada", "polres"],
        "Forkopimda",
        "Gatherings restricted",
        rationale="Two camps announced rallies at the same square",
        valid_from=now - timedelta(minutes=1),
        valid_until=until,
    )
    page = new_page(room, browser)
    sign_in(room, page, "desk_pilkada")
    page.click("text=Decisions in force")
    row = page.locator("tr.decision")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("Gatherings restricted")
    expect(row).to_contain_text(
        until.astimezone(timezone(timedelta(hours=7))).strftime("%H:%M WIB")
    )
    expect(row.locator(".left")).to_have_text(re.compile(r"^3 h (29|30) min$"))
    assert_local_and_clean(room)


def test_the_decisions_in_force_are_live_a_new_one_shown_and_an_ended_one_gone(
    room: Room, browser: Browser
) -> None:
    """The page left open on the room's screen: a decision recorded over gRPC shows without a
    reload, and one that ends leaves the list by itself, rather than staying "in force" with
    its time left frozen at the page's load."""
    desk = room.ledger("desk_pilkada")
    reported = room.ledger("kesbangpol").report("Gathering planned", "crowd_gathering", "ipuh")
    verified = desk.verify(reported.incident)
    page = new_page(room, browser)
    sign_in(room, page, "desk_pilkada")
    page.goto(f"{room.url}/decisions")
    expect(page.locator("#live")).to_have_attribute("data-state", "open")
    expect(page.locator("tr.empty")).to_have_count(1)
    now = datetime.now(UTC)
    desk.record_decision(
        reported.incident,
        ["desk_pilkada"],
        "Forkopimda",
        "Square closed for ten seconds",
        rationale="A short closure",
        valid_from=now - timedelta(minutes=1),
        valid_until=now + timedelta(seconds=10),
        expected_version=verified.version,
    )
    row = page.locator("tr.decision", has_text="Square closed for ten seconds")
    expect(row).to_have_count(1, timeout=LIVE_SECONDS * 1000)
    expect(row.locator(".left")).to_have_text("1 min")
    expect(row).to_have_count(0, timeout=20_000)  # ended: gone without a reload
    expect(page.locator("tr.empty")).to_have_count(1)
    assert_local_and_clean(room)


def test_the_decisions_in_force_show_who_decided_and_since_when(
    room: Room, browser: Browser
) -> None:
    """A joint decision names its deciding agencies and its start, as the incident page and
    ledgerctl do; the page showed neither, only the end and the forum."""
    desk = room.ledger("desk_pilkada")
    reported = room.ledger("kesbangpol").report("Rally at the square", "crowd_gathering", "ipuh")
    desk.verify(reported.incident)
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
    desk.record_decision(
        reported.incident,
        ["polres", "kodim"],
        "Forkopimda",
        "Large gatherings restricted",
        rationale="Two camps announced rallies at the same square",
        valid_from=start,
        valid_until=start + timedelta(days=3),
    )
    since = start.astimezone(timezone(timedelta(hours=7)))
    for language, heads, when in [
        ("en", ["Decided by", "In force from"], since.strftime("%Y-%m-%d %H:%M WIB")),
        ("id", ["Diputuskan oleh", "Berlaku sejak"], since.strftime("%H.%M WIB")),
    ]:
        page = new_page(room, browser, language=language)
        sign_in(room, page, "bawaslu")
        page.goto(f"{room.url}/decisions")
        row = page.locator("tr.decision", has_text="Large gatherings restricted")
        expect(row).to_have_count(1)
        expect(row.locator("td.deciding")).to_have_text("Polres Mukomuko, Kodim 0428/Mukomuko")
        expect(row.locator("td.from")).to_contain_text(when)
        for head in heads:
            expect(page.locator("thead th", has_text=head)).to_have_count(1)
        page.context.close()
    assert_local_and_clean(room)


def test_a_decision_is_recorded_on_the_page_from_and_until_a_date_and_time_in_wib(
    room: Room, browser: Browser
) -> None:
    """A restriction decided today for tomorrow 18:00 until three days later, as the desk
    reads it out: the form took only hours from now. An end before the start is the
    ledger's refusal, its times in WIB as the page writes them."""
    reported = room.ledger("kesbangpol").report("Rally planned", "crowd_gathering", "ipuh")
    room.ledger("desk_pilkada").verify(reported.incident)
    wib = timezone(timedelta(hours=7))
    start = (datetime.now(wib) + timedelta(days=1)).replace(
        hour=18, minute=0, second=0, microsecond=0
    )
    end = start + timedelta(days=3)
    page = new_page(room, browser)
    sign_in(room, page, "desk_pilkada")
    page.goto(f"{room.url}/{reported.incident}")
    form = page.locator(f"form[action='/{reported.incident}/record_decision']")

    def fill(until: datetime) -> None:
        form.locator("input[name=forum]").fill("Forkopimda")
        form.locator("input[name=summary]").fill("Large gatherings restricted")
        form.locator("input[name=rationale]").fill("Two camps announced rallies")
        form.locator("input[name=valid_from]").fill(start.strftime("%Y-%m-%dT%H:%M"))
        form.locator("input[name=valid_until]").fill(until.strftime("%Y-%m-%dT%H:%M"))
        form.locator("button#record_decision").click()

    fill(start - timedelta(days=1))  # the day before: refused, nothing recorded
    error = page.locator(".error[role=alert]")
    # As the page writes times (it showed the ledger's ISO 8601, "2026-12-08T18:00:00+07:00").
    expect(error).to_contain_text(f"{start.strftime('%Y-%m-%d %H:%M')} WIB")
    expect(error).not_to_contain_text("+00:00")
    expect(error).not_to_contain_text("+07:00")
    # The form shown again holds what was typed (it came back empty).
    for name, typed in [("forum", "Forkopimda"), ("rationale", "Two camps announced rallies")]:
        expect(form.locator(f"input[name={name}]")).to_have_value(typed)
    form = page.locator(f"form[action='/{reported.incident}/record_decision']")
    fill(end)
    expect(page).to_have_url(f"{room.url}/{reported.incident}")
    expect(page.locator("ul li", has_text="Large gatherings restricted")).to_contain_text(
        f"from {start.strftime('%Y-%m-%d %H:%M')} WIB until {end.strftime('%Y-%m-%d %H:%M')} WIB"
    )
    (decision,) = room.ledger("desk_pilkada").get_incident(reported.incident).decisions
    assert (decision.valid_from, decision.valid_until) == (start, end)
    assert_local_and_clean(room)


def test_an_incident_shows_when_its_decision_starts_as_well_as_ends(room: Room) -> None:
    """A restriction decided now for tomorrow evening does not read as in force already;
    its corrected end reads in WIB like every other time of the page."""
    desk = room.ledger("desk_pilkada")
    reported = room.ledger("kesbangpol").report("Rally planned", "crowd_gathering", "ipuh")
    desk.verify(reported.incident)
    wib = timezone(timedelta(hours=7))
    start = (datetime.now(wib) + timedelta(days=1)).replace(
        hour=18, minute=0, second=0, microsecond=0
    )
    decided = desk.record_decision(
        reported.incident,
        ["desk_pilkada"],
        "Forkopimda",
        "Large gatherings restricted",
        rationale="Tension before the rally",
        valid_from=start,
        valid_until=start + timedelta(days=3),
    )
    # Extended by two days: the timeline's correction reads in WIB too.
    desk.correct(
        reported.incident,
        decided.event_id,
        "valid_until",
        (start + timedelta(days=3)).isoformat(),
        (start + timedelta(days=5)).isoformat(),
        reason="extended by Forkopimda",
    )
    with signed_in_http(room, "polres") as police:
        page = police.get(f"/{reported.incident}")
    assert page.status_code == 200
    ends = f"{(start + timedelta(days=5)).strftime('%Y-%m-%d %H:%M')} WIB"
    assert f"from {start.strftime('%Y-%m-%d %H:%M')} WIB until {ends}" in page.text, page.text
    old, new = (f"{(start + timedelta(days=d)).strftime('%Y-%m-%d %H:%M:%S')} WIB" for d in (3, 5))
    assert f"<del><bdi>{old}</bdi></del> → <ins><bdi>{new}</bdi></ins>" in page.text, page.text


def test_failed_sign_ins_are_throttled_here_before_the_ledger_blocks_the_page(
    room: Room,
) -> None:
    with httpx.Client(
        base_url=room.url, timeout=READ_SECONDS, cookies={LANGUAGE_COOKIE: "en"}
    ) as web:
        found = re.search(r'name="csrf" value="([^"]+)"', web.get("/login").text)
        assert found
        form = {"csrf": found[1], "agency": "polres", "token": "guessed"}
        for _ in range(SignInThrottle().per_client):
            answer = web.post("/login", data=form)
            assert answer.status_code == 200 and "not valid" in answer.text
        # Now refused here, even with the right token, without asking the ledger.
        right = {**form, "token": room.stack.ledger.tokens["polres"]}
        answer = web.post("/login", data=right)
        assert answer.status_code == 429 and "Too many failed sign-ins" in answer.text
    # The ledger still serves the page's address: it never saw enough failures to block it.
    assert room.ledger("polres").reference_data().regency


def test_a_token_of_another_agency_does_not_sign_in_as_the_chosen_one(room: Room) -> None:
    """The ledger acts as the token's agency, whatever the form chose: a session in another
    agency's name (its role on the page, its name in the log) is refused. Each refused
    sign-in is a warning in the page's log, with the browser's address, never the token."""
    with httpx.Client(
        base_url=room.url, timeout=READ_SECONDS, cookies={LANGUAGE_COOKIE: "en"}
    ) as web:
        form = {
            "csrf": csrf_of(web.get("/login")),
            "agency": "desk_pilkada",
            "token": room.stack.ledger.tokens["polres"],
        }
        answer = web.post("/login", data=form)
        assert answer.status_code == 200, answer.status_code
        assert "not one of the chosen agency" in answer.text, answer.text
        board = web.get("/board")  # not signed in
        assert board.is_redirect and "/login" in board.headers["location"], board.status_code
        assert "choose the agency it was given to" in answer.text, answer.text
        answer = web.post("/login", data={**form, "token": "not-a-token"})
        assert answer.status_code == 200 and "not valid" in answer.text
        assert "or ask for a new one" in answer.text, answer.text
        # In Indonesian, each refusal says what went wrong and what to do.
        web.cookies.set(LANGUAGE_COOKIE, "id")
        answer = web.post("/login", data=form)
        assert "bukan milik instansi yang dipilih: pilih instansi pemilik token itu" in (
            answer.text
        ), answer.text
        answer = web.post("/login", data={**form, "token": "not-a-token"})
        assert "Token tidak sah: periksa apakah token tersalin utuh" in answer.text, answer.text
        answer = web.post("/login", data={**form, "agency": "polres"})
        assert answer.status_code == 303 and answer.headers["location"] == "/board"
    refused = [
        e for e in room.web.log_lines() if e.get("event") == "situation_room.sign_in_refused"
    ]
    # With the browser's address: which host is trying tokens.
    assert [(e["agency"], e["reason"], e["level"], e.get("client")) for e in refused] == [
        ("desk_pilkada", "agency", "warning", "127.0.0.1"),
        ("desk_pilkada", "token", "warning", "127.0.0.1"),
        ("desk_pilkada", "agency", "warning", "127.0.0.1"),
        ("desk_pilkada", "token", "warning", "127.0.0.1"),
    ]
    assert "not-a-token" not in room.web.log_path.read_text()


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return found[1]


def test_signing_out_clears_the_cookie(room: Room) -> None:
    with signed_in_http(room, "desk_pilkada") as web:
        csrf = csrf_of(web.get("/board"))
        assert web.post("/logout", data={"csrf": csrf}).status_code == 303
        assert SESSION_COOKIE not in web.cookies
        assert web.get("/board").headers["location"] == "/login"


def test_a_stale_sign_in_a_second_sign_out_and_an_ended_session_lead_back_in(room: Room) -> None:
    """Before, each gave a bare "the form has expired" page: the sign-in page left open past
    its cookie's life, a second sign-out (another tab), and a page asked for once the
    session had ended, which also lost the page (the code typed from a phone call)."""
    reference = room.ledger("kesbangpol").report("Banner torn", "hoax", "ipuh").reference
    token = room.stack.ledger.tokens["desk_pilkada"]
    with httpx.Client(
        base_url=room.url, timeout=READ_SECONDS, cookies={LANGUAGE_COOKIE: "en"}
    ) as web:
        # Asked for with a cookie of a session that ended (or that this page never made).
        web.cookies.set(SESSION_COOKIE, "ended-long-ago")
        asked = web.get(f"/incidents/{reference}", headers={"Accept": "text/html"})
        assert asked.status_code == 303
        going = asked.headers["location"]
        assert going.startswith("/login?next=") and going.endswith("&ended"), going
        page = web.get(going)
        assert "Your session has ended: sign in again." in page.text
        assert f'name="next" value="/incidents/{reference}"' in page.text, page.text
        # The sign-in page's cookie gone meanwhile: the form is shown again, working.
        web.cookies.clear()
        web.cookies.set(LANGUAGE_COOKIE, "en")
        stale = {"csrf": "from-a-page-left-open", "agency": "desk_pilkada", "token": token}
        again = web.post("/login", data={**stale, "next": f"/incidents/{reference}"})
        assert again.status_code == 200, again.text
        assert "The sign-in page had expired: enter your token again." in again.text
        form = {"csrf": csrf_of(again), "agency": "desk_pilkada", "token": token}
        signed = web.post("/login", data={**form, "next": f"/incidents/{reference}"})
        assert signed.status_code == 303
        assert signed.headers["location"] == f"/incidents/{reference}", "back where it was asked"
        board = web.get("/board")
        assert web.post("/logout", data={"csrf": csrf_of(board)}).headers["location"] == (
            "/login?signed_out"
        )
        # The same sign-out form again (a second tab): signed out is what was asked.
        second = web.post("/logout", data={"csrf": csrf_of(board)})
        assert (second.status_code, second.headers["location"]) == (303, "/login?signed_out")
        assert "You are signed out." in web.get("/login?signed_out").text
        # Only this site's paths: a next elsewhere lands on the board.
        form = {"csrf": csrf_of(web.get("/login")), "agency": "desk_pilkada", "token": token}
        away = web.post("/login", data={**form, "next": "//evil.example/"})
        assert away.headers["location"] == "/board"


def test_a_session_survives_a_restart_of_the_page(room: Room) -> None:
    """The cookie holds the session: another page process with the same key (the restarted
    page, or a second one behind the same address) knows the officer without asking."""
    with signed_in_http(room, "desk_pilkada") as web:
        cookie = web.cookies[SESSION_COOKIE]
    with service_process("services.situation_room", room.env) as restarted:
        url = f"http://127.0.0.1:{restarted.port}"
        cookies = {SESSION_COOKIE: cookie, LANGUAGE_COOKIE: "en"}
        with httpx.Client(base_url=url, timeout=READ_SECONDS, cookies=cookies) as web:
            board = web.get("/board")
            assert board.status_code == 200 and "Desk Pilkada Pemkab Mukomuko" in board.text
            # Its forms take the CSRF token sealed in the same cookie.
            assert web.post("/logout", data={"csrf": csrf_of(board)}).status_code == 303


def test_a_page_whose_ledger_does_not_answer_says_so_within_seconds(room: Room) -> None:
    """The ledger away (restarting, its host down): the board says the ledger did not answer
    once a restart would have been outlasted (``LEDGER_RETRY``, 8 s), where it kept the
    officer waiting for the client's whole retry budget, 20 s and more. A second page
    process, signed in with the same cookie, whose ledger address has nothing behind it."""
    with signed_in_http(room, "desk_pilkada") as web:
        cookie = web.cookies[SESSION_COOKIE]
    env = {**room.env, "SITUATION_ROOM_LEDGER_ADDRESS": f"127.0.0.1:{free_port()}"}
    with service_process("services.situation_room", env) as orphan:
        url = f"http://127.0.0.1:{orphan.port}"
        cookies = {SESSION_COOKIE: cookie, LANGUAGE_COOKIE: "en"}
        with httpx.Client(base_url=url, timeout=60, cookies=cookies) as web:
            started = time.monotonic()
            board = web.get("/board/rows")
            waited = time.monotonic() - started
    assert board.status_code == 503, board.text
    assert "did not answer" in board.text, board.text
    assert waited < 15, f"the officer waited {waited:.1f} s"


def test_a_page_or_an_action_whose_ledger_does_not_answer_keeps_the_frame_and_the_words(
    room: Room,
) -> None:
    """A page opened while the ledger is away is the page's frame, which asks again by
    itself; an action sent then (the verify of an incident) waits once, not twice, and
    comes back with what was typed and a button that sends the same form again (its
    request id records it at most once). Both were a bare "The ledger did not answer" in
    plain text, the typed comment lost, after two waits (16 s)."""
    with signed_in_http(room, "desk_pilkada") as web:
        cookie = web.cookies[SESSION_COOKIE]
        csrf = csrf_of(web.get("/board"))
    env = {**room.env, "SITUATION_ROOM_LEDGER_ADDRESS": f"127.0.0.1:{free_port()}"}
    incident = uuid.uuid4()
    form = {
        "csrf": csrf,
        "version": "1",
        "request_id": "page-retry-1",
        "comment": "dicek lewat telepon",
        "shown": "MKM-7QK3-9V: Spanduk SARA di Ipuh",
    }
    with service_process("services.situation_room", env) as orphan:
        url = f"http://127.0.0.1:{orphan.port}"
        cookies = {SESSION_COOKIE: cookie, LANGUAGE_COOKIE: "en"}
        with httpx.Client(base_url=url, timeout=60, cookies=cookies) as web:
            board = web.get("/board", headers={"Accept": "text/html"})
            started = time.monotonic()
            sent = web.post(f"/incidents/{incident}/verify", data=form)
            waited = time.monotonic() - started
    assert board.status_code == 503
    assert "The ledger does not answer" in board.text and 'href="/map"' in board.text
    assert 'http-equiv="refresh"' in board.text, board.text
    assert sent.status_code == 503, sent.text
    assert "dicek lewat telepon" in sent.text  # shown, and kept in the form to send again
    # Which action of which incident (it showed only the typed words).
    assert '<p class="what"><strong>Verify</strong> — <bdi>MKM-7QK3-9V: Spanduk SARA di Ipuh' in (
        sent.text
    ), sent.text
    assert 'name="request_id" value="page-retry-1"' in sent.text, sent.text
    assert f'action="/incidents/{incident}/verify"' in sent.text
    assert 'http-equiv="refresh"' not in sent.text  # a form is never sent again unasked
    # One retry budget (8 s) and the page's work, not two (16 s and more).
    assert waited < 14, f"the officer waited {waited:.1f} s"


def test_a_board_reconnecting_to_a_restarted_page_is_told_to_reload(room: Room) -> None:
    """The restarted page hears only what comes after its start: a tab that reconnects with
    a position it has not heard of (reported while the page was down, or before) is told to
    reload, and its rows then hold what was reported meanwhile (it was shown nothing and
    said "on")."""
    reporter = room.ledger("kesbangpol")
    with signed_in_http(room, "desk_pilkada") as web:
        cookie = web.cookies[SESSION_COOKIE]
    seen = reporter.report("Heard by the first page", "crowd_gathering", "ipuh")
    missed = reporter.report("While the page restarted", "crowd_gathering", "ipuh")
    with service_process("services.situation_room", room.env) as restarted:
        url = f"http://127.0.0.1:{restarted.port}"
        cookies = {SESSION_COOKIE: cookie, LANGUAGE_COOKIE: "en"}
        with httpx.Client(base_url=url, timeout=READ_SECONDS, cookies=cookies) as web:
            again = first_event(web, {"Last-Event-ID": str(seen.position)})
            assert again.event == "resync"
            assert again.id >= seen.position
            rows = web.get("/board/rows", params={"min_position": str(missed.position)}).text
            assert "While the page restarted" in rows


def test_an_altered_cookie_is_refused(room: Room) -> None:
    with signed_in_http(room, "desk_pilkada") as web:
        cookie = web.cookies[SESSION_COOKIE]
    middle = len(cookie) // 2
    altered = cookie[:middle] + ("A" if cookie[middle] != "A" else "B") + cookie[middle + 1 :]
    for value, status in [(cookie, 200), (altered, 303)]:
        with httpx.Client(
            base_url=room.url, timeout=READ_SECONDS, cookies={SESSION_COOKIE: value}
        ) as web:
            answer = web.get("/board")
            assert answer.status_code == status, value
    assert answer.headers["location"] == "/login?ended"  # not a session (any more)


def test_an_expired_session_is_refused_and_its_event_stream_ends(room: Room) -> None:
    short = {**room.env, "SITUATION_ROOM_SESSION_MINUTES": "0.05"}  # 3 s
    with service_process("services.situation_room", short) as web_process:
        expiring = Room(room.stack, web_process, short)
        with signed_in_http(expiring, "desk_pilkada") as web:
            cookie = web.cookies[SESSION_COOKIE]
            ended = threading.Event()

            def follow() -> None:
                with web.stream("GET", "/events") as stream:
                    for _line in stream.iter_lines():
                        pass
                ended.set()

            reader = threading.Thread(target=follow, daemon=True)
            reader.start()
            assert not ended.wait(0.5), "the stream of a signed-in session stays open"
            assert web.get("/board").status_code == 200
            # It ends before the session does (at half its idle time, here its lifetime),
            # for the browser to reconnect with a cookie still valid.
            assert ended.wait(READ_SECONDS), "the stream did not end with its session"
            reader.join(READ_SECONDS)
        # The browser no longer sends it (its max-age passed); a copy sent anyway is refused
        # once the session's end has passed, and so is a new stream.
        deadline = time.monotonic() + READ_SECONDS
        while (
            answer := httpx.get(f"{expiring.url}/board", cookies={SESSION_COOKIE: cookie})
        ).status_code == 200:
            assert time.monotonic() < deadline, "an expired session is still accepted"
            time.sleep(0.5)
        # The sign-in page says that the session ended (the browser sent its cookie).
        assert (answer.status_code, answer.headers["location"]) == (303, "/login?ended")
        stream = httpx.get(f"{expiring.url}/events", cookies={SESSION_COOKIE: cookie})
        assert (stream.status_code, stream.headers["location"]) == (303, "/login?ended")


def test_an_open_board_whose_session_ends_goes_to_the_sign_in_page(
    room: Room, browser: Browser
) -> None:
    """Not a board left saying "reconnecting" for ever over rows no longer updated: the
    stream the browser can no longer open (the session ended) sends the tab to sign in."""
    short = {**room.env, "SITUATION_ROOM_SESSION_MINUTES": "0.1"}  # 6 s
    with service_process("services.situation_room", short) as web_process:
        expiring = Room(room.stack, web_process, short)
        page = new_page(expiring, browser)
        sign_in(expiring, page, "desk_pilkada")
        page.click("text=Map")
        expect(page.locator("#live")).to_have_attribute("data-state", "open")
        expect(page).to_have_url(f"{expiring.url}/login?ended", timeout=READ_SECONDS * 2000)
        expect(page.locator(".notice")).to_contain_text("Your session has ended")
        assert_local_and_clean(expiring)


def test_a_copied_cookie_left_unused_is_refused_while_an_open_board_stays_signed_in(
    room: Room, browser: Browser
) -> None:
    idle = {**room.env, "SITUATION_ROOM_SESSION_IDLE_MINUTES": "0.1"}  # 6 s
    with service_process("services.situation_room", idle) as web_process:
        sliding = Room(room.stack, web_process, idle)
        page = new_page(sliding, browser)
        sign_in(sliding, page, "desk_pilkada")
        (copied,) = [c["value"] for c in page.context.cookies() if c["name"] == SESSION_COOKIE]
        # The cookie's idle end slides: the browser keeps it no longer than that.
        assert (
            0
            < next(
                c["expires"] - datetime.now(UTC).timestamp()
                for c in page.context.cookies()
                if c["name"] == SESSION_COOKIE
            )
            <= 6 + 1
        )
        board = httpx.get(f"{sliding.url}/board", cookies={SESSION_COOKIE: copied})
        assert board.status_code == 200  # the copy works while it is fresh

        def refused() -> bool:
            answer = httpx.get(f"{sliding.url}/board", cookies={SESSION_COOKIE: copied})
            return (answer.status_code, answer.headers.get("location")) == (303, "/login?ended")

        # The copy, left unused (each try above and here keeps none of the cookies the
        # answers carry), is refused after the idle time; the open board meanwhile renews its
        # own cookie through its event stream (which ends before the idle end and reconnects:
        # two reconnections take more than the idle time).
        # (Waiting with Playwright's own timer: its events are dispatched only meanwhile.)
        deadline = time.monotonic() + 60.0
        while not refused():
            assert time.monotonic() < deadline, "a copy left unused is still accepted"
            page.wait_for_timeout(500)
        while sum("/events" in url for url in sliding.requests) < 3:
            assert time.monotonic() < deadline, "the board's stream did not reconnect"
            page.wait_for_timeout(200)
        expect(page.locator("#live")).to_have_attribute("data-state", "open")
        title = f"After the idle time {uuid.uuid4().hex[:6]}"
        sliding.ledger("kesbangpol").report(title, "crowd_gathering", "ipuh")
        expect(page.locator("#rows")).to_contain_text(title, timeout=LIVE_SECONDS * 1000)
        page.goto(f"{sliding.url}/decisions")
        expect(page).to_have_url(f"{sliding.url}/decisions")  # still signed in
        assert refused()
        assert_local_and_clean(sliding)


def test_the_agencies_page_shows_the_ledgers_workload(room: Room, browser: Browser) -> None:
    desk = room.ledger("desk_pilkada")
    for lead in ("polres", "polres", "kodim"):
        reported = room.ledger("kesbangpol").report(f"For {lead}", "crowd_gathering", "ipuh")
        desk.verify(reported.incident)
        desk.assign_lead(reported.incident, lead)
    loads = {w.agency: w for w in desk.workload()}
    assert loads["polres"].open == 2
    page = new_page(room, browser)
    sign_in(room, page, "desk_pilkada")
    page.click("text=Agencies")
    rows = page.locator("tr.agency")
    expect(rows).to_have_count(len(loads))
    for agency, load in loads.items():
        row = page.locator(f'tr[data-agency="{agency}"]')
        expect(row.locator(".open")).to_have_text(str(load.open))
        expect(row.locator(".unacknowledged")).to_have_text(str(load.unacknowledged))
        expect(row.locator(".overdue-count")).to_have_text(str(load.overdue))
    assert_local_and_clean(room)


def test_a_report_with_a_point_picked_on_the_map_appears_on_a_second_pages_map(
    room: Room, browser: Browser
) -> None:
    desk, police = new_page(room, browser), new_page(room, browser)
    sign_in(room, desk, "desk_pilkada")
    desk.click("text=Map")
    expect(desk.locator("#map")).to_have_attribute("data-ready", "15")
    expect(desk.locator("#map path[data-name]")).to_have_count(0)
    sign_in(room, police, "polres")
    police.click("text=Report an incident")
    expect(police.locator("#pick")).to_have_attribute("data-ready", "1")
    title = f"Ballots burnt {uuid.uuid4().hex[:6]}"
    police.fill("input[name=title]", title)
    police.locator('#pick path[data-code="ipuh"]').click()
    expect(police.locator("#latitude")).not_to_have_value("")
    expect(police.locator("#longitude")).not_to_have_value("")
    police.select_option("select[name=kecamatan]", "ipuh")
    police.select_option("select[name=category]", "crowd_gathering")
    police.select_option("select[name=severity]", "critical")
    point = (float(police.input_value("#latitude")), float(police.input_value("#longitude")))
    police.click("#submit")
    expect(police).to_have_url(re.compile(r"/board\?reported=\d+&incident=[0-9a-f-]{36}$"))
    marker = desk.locator("#map path[data-name]")
    expect(marker).to_have_attribute("data-severity", "critical", timeout=LIVE_SECONDS * 1000)
    (incident,) = [i for i in room.ledger("desk_pilkada").list_incidents() if i.title == title]
    assert (incident.location.latitude, incident.location.longitude) == point
    assert_local_and_clean(room)


# --- the people a report names (docs/personal-data.md) -------------------------------------

#: Planted values: the caller and a witness as the officer types them from the phone call.
CALLER = Person("Rahmawati Sulastri", "0812-7345-6690", "1706014107900003", "Jl. Pasar Ipuh 3")
WITNESS = Person("Darmawan Kusuma", "0812 7345 6691")


def fill_report(page: Page, title: str, *, nik: str, description: str = "") -> None:
    """The report form filled in with the caller (asking to stay anonymous) and a witness."""
    page.fill("input[name=title]", title)
    page.select_option("select[name=kecamatan]", "ipuh")
    page.select_option("select[name=category]", "crowd_gathering")
    page.fill("textarea[name=description]", description)
    page.fill("input[name=reporter_name]", CALLER.name)
    page.fill("input[name=reporter_phone]", CALLER.phone)
    page.fill("input[name=reporter_nik]", nik)
    page.fill("input[name=reporter_address]", CALLER.address)
    page.check("input[name=reporter_anonymous]")
    page.fill("input[name=witness_0_name]", WITNESS.name)
    page.fill("input[name=witness_0_phone]", WITNESS.phone)


def assert_nothing_personal_logged(room: Room, line: str = "situation_room.report") -> None:
    """The page's log names none of the planted people, in any form of their numbers."""
    logged = room.web.log_path.read_text(errors="replace")
    assert line in logged  # the page's own log, with its lines of what the test did
    planted = [CALLER.name, CALLER.address, CALLER.nik, WITNESS.name, "Rahmawati", "Darmawan"]
    planted += ["81273456690", "81273456691", "7345-6690", "7345 6691", "1706014107"]
    for value in planted:
        assert value not in logged, value


def test_a_caller_and_a_witness_entered_on_the_page_are_sealed_in_the_report(
    room: Room, browser: Browser
) -> None:
    page = new_page(room, browser)
    sign_in(room, page, "polres")
    page.goto(f"{room.url}/report")
    # One witness row shown; another offered by the button, left empty (not sent).
    expect(page.locator("fieldset.witness:visible")).to_have_count(1)
    page.click("#another-witness")
    expect(page.locator("fieldset.witness:visible")).to_have_count(2)
    title = f"Money handed out at TPS 02 {uuid.uuid4().hex[:6]}"
    fill_report(page, title, nik=CALLER.nik)
    page.click("#submit")
    expect(page).to_have_url(re.compile(r"/board\?reported=\d+&incident=[0-9a-f-]{36}$"))

    police = room.ledger("polres")
    (incident,) = [i for i in police.list_incidents() if i.title == title]
    assert [(s.role, s.anonymous) for s in incident.data_subjects] == [
        ("reporter", True),
        ("witness", False),
    ]
    # The reporting agency reads them (an anonymous caller: it alone), stating why.
    _result, subjects = police.read_personal_data(incident.name, "Checking the call taken")
    people = {s.role: s.person for s in subjects}
    assert people == {
        "reporter": Person(CALLER.name, "+6281273456690", CALLER.nik, CALLER.address),
        "witness": Person(WITNESS.name, "+6281273456691"),
    }
    assert_nothing_personal_logged(room)
    assert_local_and_clean(room)


def test_a_refused_caller_is_shown_beside_its_field_with_what_was_typed_recording_nothing(
    room: Room, browser: Browser
) -> None:
    page = new_page(room, browser, language="id")
    page.context.add_init_script(path=str(AXE))
    sign_in(room, page, "polres")
    page.goto(f"{room.url}/report")
    title = f"Amplop di TPS 05 {uuid.uuid4().hex[:6]}"
    fill_report(page, title, nik="1706-0141")

    def sent() -> None:
        with page.expect_response(
            lambda r: r.url == f"{room.url}/report" and r.request.method == "POST"
        ) as answer:
            page.click("#submit")
        # The form shown again holds the people typed in: never kept in a cache.
        assert answer.value.headers["cache-control"] == "no-store"

    sent()
    nik = page.locator("input[name=reporter_nik]")
    expect(page.locator("#error-reporter_nik")).to_have_text("NIK terdiri atas tepat 16 angka.")
    expect(nik).to_have_attribute("aria-describedby", "error-reporter_nik")
    expect(nik).to_have_attribute("aria-invalid", "true")
    expect(page.locator("p.error[role=alert]")).to_contain_text("Laporan tidak dicatat")
    for selector, typed in [
        ("input[name=title]", title),
        ("input[name=reporter_name]", CALLER.name),
        ("input[name=reporter_phone]", CALLER.phone),
        ("input[name=reporter_nik]", "1706-0141"),
        ("input[name=witness_0_phone]", WITNESS.phone),
        ("select[name=kecamatan]", "ipuh"),
    ]:
        expect(page.locator(selector)).to_have_value(typed)
    expect(page.locator("input[name=reporter_anonymous]")).to_be_checked()
    assert not axe_violations(page)
    assert titles(room, title) == 0

    # The NIK corrected, the caller's number typed into the description: refused beside it.
    nik.fill(CALLER.nik)
    page.fill("textarea[name=description]", "Penelepon minta dihubungi di 0812 7345 6690")
    sent()
    expect(page.locator("#error-description")).to_contain_text("menyebut penelepon atau saksi")
    expect(page.locator("#error-reporter_nik")).to_have_count(0)
    assert titles(room, title) == 0

    # Both corrected: recorded once, with the request id the form was first shown with.
    page.fill("textarea[name=description]", "Penelepon melihat amplop dibagikan")
    page.click("#submit")
    expect(page).to_have_url(re.compile(r"/board\?reported=\d+&incident=[0-9a-f-]{36}$"))
    assert titles(room, title) == 1
    assert_nothing_personal_logged(room)
    assert_local_and_clean(room)


def test_a_reader_reads_the_personal_data_with_a_purpose_shown_once_never_cached(
    room: Room, browser: Browser
) -> None:
    people = PersonalData(reporter=CALLER, witnesses=(WITNESS,))
    name = (
        room.ledger("kesbangpol")
        .report("Money handed out at TPS 07", "money_politics", "ipuh", personal_data=people)
        .incident
    )
    desk, other = new_page(room, browser), new_page(room, browser)
    desk.context.add_init_script(path=str(AXE))
    sign_in(room, desk, "desk_pilkada")  # a reader in the reference data
    sign_in(room, other, "kodim")  # neither a reader nor the reporting agency
    other.goto(f"{room.url}/{name}")
    expect(other.locator("#read_personal_data")).to_have_count(0)
    # Its forged post: the ledger refuses, shown on the incident page, nothing disclosed.
    form: dict[str, str | float | bool] = {
        "csrf": other.input_value("form[action='/logout'] input[name=csrf]"),
        "purpose": "Curious about the caller",
    }
    forged = other.request.post(f"{room.url}/{name}/personal-data", form=form)
    assert forged.status == 403 and CALLER.name not in forged.text()
    assert 'class="error"' in forged.text(), "the refusal said on the incident's page"
    # A purpose of dots, posted past the browser's check: the ledger refuses it, 400.
    dots = other.request.post(f"{room.url}/{name}/personal-data", form={**form, "purpose": "....."})
    assert dots.status in {400, 403} and CALLER.name not in dots.text()

    desk.goto(f"{room.url}/{name}")
    assert not axe_violations(desk)
    # Too short a purpose is said by the page, in its words (it was the browser's English).
    desk.fill("input[name=purpose]", "ab")
    desk.click("#read_personal_data")
    field = desk.locator("input[name=purpose]")
    assert field.evaluate("field => field.validationMessage") == "At least 5 characters."
    purpose = "Calling the reporter back about TPS 07"
    desk.fill("input[name=purpose]", purpose)
    with desk.expect_response(lambda r: r.request.method == "POST") as answer:
        desk.click("#read_personal_data")
    assert answer.value.headers["cache-control"] == "no-store"
    expect(desk).to_have_url(f"{room.url}/{name}/personal-data")  # a POST: nothing in a URL
    reporter, witness = (
        desk.locator("tr[data-role=reporter]"),
        desk.locator("tr[data-role=witness]"),
    )
    expect(reporter.locator(".name")).to_have_text(CALLER.name)
    expect(reporter.locator(".phone")).to_have_text("+6281273456690")
    expect(reporter.locator(".nik")).to_have_text(CALLER.nik)
    expect(witness.locator(".phone")).to_have_text("+6281273456691")
    expect(desk.locator("#purpose")).to_have_text(purpose)
    assert not axe_violations(desk)

    # The ledger recorded the one read, as the desk, with its purpose (the forged one: none).
    accesses = room.ledger("desk_pilkada").personal_data_accesses(name).accesses
    assert [(a.agency, a.purpose) for a in accesses] == [("desk_pilkada", purpose)]
    for url in room.requests:
        assert "Rahmawati" not in url and "7345" not in url and "1706" not in url, url
    assert_nothing_personal_logged(room, "situation_room.personal_data_read")
    assert_local_and_clean(room)


# --- languages, accessibility, screenshots ------------------------------------------------------

#: axe-core, installed from npm by `make venv` (tools/package.json), put into every page of a
#: context by Playwright itself: no request for it, and the page's CSP is not loosened.
AXE = PROJECT_ROOT / "tools" / "node_modules" / "axe-core" / "axe.min.js"
#: Where the tests leave their screenshots (kept after the run; SITUATION_ROOM_ARTIFACTS
#: names another directory). docs/situation-room.md lists them.
ARTIFACTS = Path(
    os.environ.get("SITUATION_ROOM_ARTIFACTS", PROJECT_ROOT / "test-artifacts" / "situation-room")
)
#: English words of the page's vocabulary that must not show through an Indonesian page
#: (whole words, in the visible text of every page).
TELLTALE = frozenset(
    re.findall(
        r"[a-z]+",
        """
        situation room board map decisions decision force agencies agency report reported
        incident incidents sign signed out title status severity category lead filter any time
        live updates on connecting the and with of by until none yet open overdue acknowledged
        resolve resolved within verify reject comment action actions taken log timeline
        score point click latitude longitude description record zoom left end where whole
        regency details reason supporting pending handover low medium high critical verified
        assigned responding escalate propose accept closure reopen resolution rationale
        hours also decided hand
        """,
    )
)


#: A reference code (``MKM-7QK3-9V``): its random letters may spell a word ("BY", "ON").
REFERENCE_CODE = re.compile(r"\b[A-Z]{1,6}-[0-9A-Z]{4}-[0-9A-Z]{2}\b")


def english_words(text: str) -> set[str]:
    """The tell-tale English words of ``text``, reference codes left out."""
    return set(re.findall(r"[a-z]+", REFERENCE_CODE.sub(" ", text).lower())) & TELLTALE


def axe_violations(page: Page) -> list[str]:
    """axe-core's serious and critical violations on the page as it is now."""
    found: list[dict[str, object]] = page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ["violations"]})).violations
             .filter(v => v.impact === "serious" || v.impact === "critical")
             .map(v => ({id: v.id, impact: v.impact,
                         nodes: v.nodes.slice(0, 3).map(n => n.target.join(" "))}))"""
    )
    return [f"{v['id']} ({v['impact']}): {v['nodes']}" for v in found]


def seeded(room: Room) -> str:
    """An incident on every page (board, map, its own page, a decision in force, an
    agency's workload), titled in Indonesian; its name."""
    desk = room.ledger("desk_pilkada")
    point = Location("ipuh", latitude=-2.9802, longitude=101.5146)
    reported = room.ledger("kesbangpol").report(
        "Bentrokan di TPS 01", "supporter_clash", point, severity="critical"
    )
    room.ledger("polres").report("Pengumpulan massa di alun-alun", "crowd_gathering", "penarik")
    desk.verify(reported.incident)
    desk.assign_lead(reported.incident, "polres")
    now = datetime.now(UTC)
    desk.record_decision(
        reported.incident,
        ["desk_pilkada", "polres"],
        "Forkopimda",
        "Pengumpulan massa dibatasi",
        rationale="Dua kubu mengumumkan kampanye di lapangan yang sama",
        valid_from=now - timedelta(minutes=1),
        valid_until=now + timedelta(hours=3),
    )
    return reported.incident


def page_paths(incident: str) -> list[str]:
    return ["/board", "/map", f"/{incident}", "/decisions", "/agencies", "/report"]


def shown(page: Page, path: str) -> None:
    """Wait until what the page draws after loading is drawn."""
    if path == "/map":
        expect(page.locator("#map")).to_have_attribute("data-ready", "15")
        expect(page.locator("#map path[data-name]")).to_have_count(1)
    elif path == "/report":
        expect(page.locator("#pick")).to_have_attribute("data-ready", "1")
    elif path == "/board":
        expect(page.locator("#live")).to_have_attribute("data-state", "open")


def test_the_page_speaks_indonesian_by_default_and_english_when_chosen(
    room: Room, browser: Browser
) -> None:
    incident = seeded(room)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = new_page(room, browser, language="")  # no choice made: the room's default
    page.goto(f"{room.url}/login")
    expect(page.locator("html")).to_have_attribute("lang", "id")
    expect(page.locator("h1")).to_have_text("Masuk")
    page.select_option("select[name=agency]", "desk_pilkada")
    page.fill("input[name=token]", room.stack.ledger.tokens["desk_pilkada"])
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{room.url}/board")
    for path in page_paths(incident):
        page.goto(room.url + path)
        shown(page, path)
        text = page.inner_text("body") + " " + page.title()
        assert not english_words(text), (path, sorted(english_words(text)), text)
    page.goto(f"{room.url}/board")
    board = page.locator("#rows")
    expect(board).to_contain_text("Didisposisikan")  # statuses in the glossary's words
    expect(board).to_contain_text("Kritis")  # severities from the reference data's names
    expect(board).to_contain_text("Bentrokan antarpendukung")  # categories likewise
    expect(board).to_contain_text(re.compile(r"\d{1,2} [A-Z][a-z]{2} \d{4} \d{2}\.\d{2} WIB"))
    shown(page, "/board")
    page.screenshot(path=str(ARTIFACTS / "board-id.png"), full_page=True)
    page.goto(f"{room.url}/map")
    shown(page, "/map")
    expect(page.locator(".leaflet-control-zoom-in")).to_have_attribute("title", "Perbesar")
    page.locator('path[data-code="ipuh"]').hover()
    expect(page.locator("#hover")).to_contain_text("Skor")
    # The bands in the glossary's words, on the legend and on hover; never their codes.
    expect(page.locator("#legend")).to_have_text(
        re.compile(r"\s*Rawan Tinggi\s+Rawan Sedang\s+Rawan Rendah\s*")
    )
    expect(page.locator("#hover")).to_contain_text(re.compile(r"\(Rawan (Tinggi|Sedang|Rendah), "))
    page.screenshot(path=str(ARTIFACTS / "map-id.png"), full_page=True)

    # The control switches to English, which the cookie then keeps from page to page.
    page.click("a[hreflang=en]")
    expect(page).to_have_url(f"{room.url}/map")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator("h1")).to_have_text("Vulnerability (IKP) by kecamatan")
    shown(page, "/map")
    # In English too the bands are words, as the severities beside them are (they were the
    # codes: "high", "medium", "low").
    expect(page.locator("#legend")).to_have_text(
        re.compile(r"\s*High vulnerability\s+Medium vulnerability\s+Low vulnerability\s*")
    )
    page.locator('path[data-code="ipuh"]').hover()
    expect(page.locator("#hover")).to_contain_text(
        re.compile(r"\((High|Medium|Low) vulnerability, ")
    )
    page.screenshot(path=str(ARTIFACTS / "map-en.png"), full_page=True)
    page.click("nav.pages >> text=Board")
    shown(page, "/board")
    expect(page.locator("#rows")).to_contain_text("Assigned")
    expect(page.locator("#rows")).to_contain_text("Critical")
    page.screenshot(path=str(ARTIFACTS / "board-en.png"), full_page=True)
    page.click("a[hreflang=id]")
    expect(page.locator("h1")).to_have_text("Papan")
    assert_local_and_clean(room)


def test_axe_finds_no_serious_or_critical_violation_on_any_page(
    room: Room, browser: Browser
) -> None:
    incident = seeded(room)
    found: dict[str, list[str]] = {}
    for language in ("id", "en"):
        page = new_page(room, browser, language=language)
        page.context.add_init_script(path=str(AXE))
        page.goto(f"{room.url}/login")
        if violations := axe_violations(page):
            found[f"{language} /login"] = violations
        sign_in(room, page, "desk_pilkada")
        for path in page_paths(incident):
            page.goto(room.url + path)
            shown(page, path)
            if violations := axe_violations(page):
                found[f"{language} {path}"] = violations
    assert not found, found
    assert_local_and_clean(room)


def test_a_language_link_goes_back_only_to_a_page_of_this_site(room: Room) -> None:
    with httpx.Client(base_url=room.url, timeout=READ_SECONDS) as web:
        for sent, back in [
            ("/map?x=1", "/map?x=1"),
            ("//elsewhere.example/", "/board"),
            ("https://elsewhere.example/", "/board"),
            ("/\\elsewhere.example", "/board"),
        ]:
            answer = web.get("/language/en", params={"next": sent})
            assert (answer.status_code, answer.headers["location"]) == (303, back)
            assert answer.cookies[LANGUAGE_COOKIE] == "en"
        assert "Masuk" in httpx.get(f"{room.url}/login").text  # without the cookie


def test_the_incident_page_names_the_people_present_then_erased_never_their_data(
    room: Room,
) -> None:
    people = PersonalData(
        reporter=Person("Siti Rahma", "081273456690", "1706014107900003"),
        anonymous=True,
        witnesses=(Person("Budi Saksi"),),
    )
    reporter = room.ledger("kesbangpol")
    name = reporter.report(
        "Amplop dibagikan", "money_politics", "ipuh", personal_data=people
    ).incident
    with signed_in_http(room, "kpu") as web:

        def subjects(language: str) -> list[str]:
            web.cookies.set(LANGUAGE_COOKIE, language)
            page = web.get(f"/{name}").text
            for plain in ("Siti", "Budi", "1706014107900003", "73456690"):
                assert plain not in page, plain
            return re.findall(r"<li data-role=[^>]*>([^<]*)</li>", page)

        assert subjects("en") == ["reporter (anonymous): present", "witness: present"]
        assert subjects("id") == ["pelapor (anonim): ada", "saksi: ada"]
        room.ledger("desk_pilkada").erase_personal_data(name, "request 5/2024", everyone=True)
        assert subjects("en") == ["reporter (anonymous): erased", "witness: erased"]
        assert subjects("id") == ["pelapor (anonim): dihapus", "saksi: dihapus"]


def test_the_read_form_is_offered_only_where_someone_may_be_read_and_a_late_report_says_when(
    room: Room,
) -> None:
    """An anonymous reporter alone is the reporting agency's to read: another reader was
    offered the form, which ended in the ledger's refusal. A report recorded long after it
    happened (a field device's backlog) says when it happened: the page said only when it
    was recorded, and a ten-day-old report read as news."""
    reporter = room.ledger("kesbangpol")
    happened = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    name = reporter.report(
        "Amplop dibagikan",
        "money_politics",
        "ipuh",
        personal_data=PersonalData(reporter=Person("Siti Rahma", "081273456690"), anonymous=True),
        occur_time=happened,
    ).incident
    for agency, offered in (("bawaslu", False), ("kesbangpol", True)):
        with signed_in_http(room, agency) as web:
            page = web.get(f"/{name}").text
        assert ('id="read_personal_data"' in page) is offered, (agency, page)
        assert 'id="occurred"' in page, page
        # So does its event in the timeline (its recording alone read as news there too).
        assert page.count('class="occurred"') == 1, page
    plain = reporter.report("Spanduk dirobek", "hoax", "ipuh").incident
    with signed_in_http(room, "bawaslu") as web:
        page = web.get(f"/{plain}").text
        assert 'id="occurred"' not in page and 'class="occurred"' not in page  # as recorded


def test_the_incident_page_lists_evidence_with_thumbnails_for_the_agencies_involved(
    room: Room, tmp_path: Path, nats_server: NatsServer
) -> None:
    reporter = room.ledger("kesbangpol")
    name = reporter.report("Amplop dibagikan", "money_politics", "ipuh").incident
    photo = tmp_path / "amplop.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" + os.urandom(50_000))
    _, evidence = reporter.attach_evidence(name, photo, description="Amplop di Ipuh")
    with signed_in_http(room, "kesbangpol") as web:
        page = web.get(f"/{name}").text
        assert f'<img src="/{evidence.name}"' in page and "Amplop di Ipuh" in page
        shown = web.get(f"/{evidence.name}")
        assert shown.status_code == 200 and shown.content == photo.read_bytes()
        assert shown.headers["content-type"] == "image/jpeg"
    with signed_in_http(room, "kodim") as web:  # not involved
        assert 'id="evidence-hidden"' in web.get(f"/{name}").text
        assert web.get(f"/{evidence.name}").status_code == 403
    downloads = room.ledger("inspektorat").evidence_downloads(name)
    assert [(d.evidence, d.actor.agency) for d in downloads] == [(evidence.name, "kesbangpol")]
    # Changed in the evidence store: said as such (it was "the ledger refused this request").
    asyncio.run(change_one_byte(nats_server.url, "evidence", object_name(evidence.sha256)))
    with signed_in_http(room, "kesbangpol") as web:
        changed = web.get(f"/{evidence.name}")
    assert changed.status_code == 502
    assert "no longer matches what was recorded" in changed.text, changed.text
    assert photo.read_bytes()[:200] not in changed.content


def test_severity_corrections_and_merging_on_the_incident_page_for_the_roles_allowed(
    room: Room, browser: Browser
) -> None:
    place = f"ipuh {uuid.uuid4().hex[:6]}"
    original = room.ledger("kesbangpol").report(
        f"Crowd at the market, {place}", "crowd_gathering", "ipuh"
    )
    duplicate = room.ledger("polres").report(
        f"Crowd at the markt, {place}", "crowd_gathering", "ipuh"
    )
    desk_client = room.ledger("desk_pilkada")
    url = f"{room.url}/{duplicate.incident}"
    desk, reporter, other, auditor = (new_page(room, browser) for _ in range(4))
    desk.context.add_init_script(path=str(AXE))
    for page, agency in [
        (desk, "desk_pilkada"),
        (reporter, "polres"),
        (other, "kodim"),
        (auditor, "inspektorat"),
    ]:
        sign_in(room, page, agency)

    # Not involved, not the reporter: none of the three; an auditor: no action at all.
    other.goto(url)
    expect(other.locator(".actions")).to_have_count(0)
    auditor.goto(url)
    expect(auditor.locator(".actions")).to_have_count(0)
    # The reporting agency assesses the severity and corrects its own report, never merges.
    reporter.goto(url)
    expect(reporter.locator("#merge")).to_have_count(0)
    expect(reporter.locator("#assess_severity")).to_be_visible()
    reported_event = next(iter(desk_client.incident_events(duplicate.incident))).event_id
    expect(reporter.locator("select[name=text] option")).to_have_count(2)  # title, description
    reporter.select_option("select[name=severity]", "high")
    reporter.fill("form[action$=assess_severity] input[name=comment]", "Hundreds now")
    reporter.click("#assess_severity")
    expect(reporter.locator(".timeline li")).to_have_count(2)

    # The desk corrects the title of the report, then merges the duplicate.
    desk.goto(url)
    assert not axe_violations(desk)
    desk.select_option("select[name=text]", f"{reported_event}:title")
    desk.fill("input[name=new_value]", f"Crowd at the market, {place}")
    desk.fill("form[action$=correct] input[name=reason]", "Typo in the title")
    desk.click("#correct")
    correction = desk.locator(".timeline li.correction")
    expect(correction).to_have_count(1)
    expect(correction.locator("del")).to_have_text(f"Crowd at the markt, {place}")
    expect(correction.locator("ins")).to_have_text(f"Crowd at the market, {place}")
    expect(correction).to_contain_text("Corrects")
    assert not axe_violations(desk)
    desk.select_option("select[name=target]", original.incident)
    desk.fill("form[action$=merge] input[name=comment]", "Same crowd")
    desk.click("#merge")
    expect(desk.locator("#status")).to_have_text("Merged")
    expect(desk.locator("#assess_severity")).to_have_count(0)  # it has ended
    expect(desk.locator("#merge")).to_have_count(0)

    history = list(desk_client.incident_events(duplicate.incident))
    assert [(e.type, e.actor.agency) for e in history] == [
        ("Reported", "polres"),
        ("SeverityAssessed", "polres"),
        ("Corrected", "desk_pilkada"),
        ("Merged", "desk_pilkada"),
    ]
    assert history[1].payload["severity"] == "high" and history[1].reason == "Hundreds now"
    corrected = history[2].payload
    assert (corrected["corrected_event_id"], corrected["field"]) == (reported_event, "title")
    assert (corrected["old_value"], corrected["new_value"]) == (
        f"Crowd at the markt, {place}",
        f"Crowd at the market, {place}",
    )
    assert history[2].reason == "Typo in the title"
    assert history[3].payload["target_id"] == original.incident.removeprefix("incidents/")
    merged = desk_client.get_incident(duplicate.incident)
    assert merged.merged_into == original.incident and merged.severity == "high"
    assert [e.type for e in desk_client.incident_events(original.incident)][-1] == "DuplicateMerged"
    assert_local_and_clean(room)


def test_the_first_tab_skips_to_the_content_and_each_action_form_is_named(
    room: Room, browser: Browser
) -> None:
    """Sixteen Tab presses reached the board's first incident past the header's links; and
    an action's "Comment" or "Reason" field did not say which action it belonged to."""
    name = room.ledger("kesbangpol").report("Spanduk dirobek", "hoax", "ipuh").incident
    page = new_page(room, browser)
    page.context.add_init_script(path=str(AXE))
    sign_in(room, page, "desk_pilkada")
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("Skip to the content")
    page.keyboard.press("Enter")
    expect(page.locator(":focus")).to_have_id("main")
    page.goto(f"{room.url}/{name}")
    expect(page.get_by_role("form", name="Verify")).to_have_count(1)
    expect(page.get_by_role("form", name="Reject")).to_have_count(1)
    assert not axe_violations(page)
    assert_local_and_clean(room)


def test_an_incident_is_reached_by_its_reference_code_and_a_wrong_address_stays_in_the_site(
    room: Room, browser: Browser
) -> None:
    """The code read out over the phone, typed into the address (it said "no such incident"
    on a bare page with no way back)."""
    reported = room.ledger("kesbangpol").report("Spanduk SARA", "sara_provocation", "ipuh")
    page = new_page(room, browser)
    sign_in(room, page, "polres")
    page.goto(f"{room.url}/incidents/{reported.reference}")
    expect(page).to_have_url(f"{room.url}/{reported.incident}")
    expect(page.locator("#reference")).to_have_text(reported.reference)
    for wrong in ("MKM-0000-00", "0c9d8e7f-1a2b-4c3d-8e9f-0a1b2c3d4e5f"):
        answer = page.goto(f"{room.url}/incidents/{wrong}")
        assert answer is not None and answer.status == 404, wrong
        expect(page.locator("h1")).to_have_text("No such incident.")
        expect(page.locator("main a[href='/board']")).to_be_visible()
    # The board's field, as an officer on the phone types it: any case, spaces, no prefix.
    page.goto(f"{room.url}/board")
    spoken = reported.reference.lower().replace("mkm-", "").replace("-", " ")
    page.fill("input[name=code]", spoken)
    page.click("#find")
    expect(page).to_have_url(f"{room.url}/{reported.incident}")
    # One character misheard: said so, not "no such incident" (which sends the officer
    # looking elsewhere).
    last = reported.reference[-1]
    misheard = reported.reference[:-1] + ("2" if last != "2" else "3")
    page.goto(f"{room.url}/board")
    page.fill("input[name=code]", misheard)
    with page.expect_response(lambda r: "/incidents/" in r.url) as answered:
        page.click("#find")
    assert answered.value.status == 400
    expect(page.locator("h1")).to_contain_text("The reference code is mistyped")


def test_an_open_incident_page_says_when_another_agency_changes_it_and_keeps_what_is_typed(
    room: Room, browser: Browser
) -> None:
    """The page does not rewrite itself under a form being typed into: it says that the
    incident changed, with what, and links to it as it is now (it kept the old status and
    lead with no hint). The officer's own action is not such a change."""
    reported = room.ledger("kesbangpol").report("Hoax leaflet", "hoax", "ipuh")
    page = new_page(room, browser)
    sign_in(room, page, "desk_pilkada")
    page.goto(f"{room.url}/{reported.incident}")
    expect(page.locator("#live")).to_have_attribute("data-state", "open")
    page.fill("form[action$=escalate] input[name=reason]", "Typed meanwhile")
    room.ledger("desk_pilkada").verify(reported.incident)  # as if another officer of the desk
    changed = page.locator("#changed")
    expect(changed).to_be_visible(timeout=LIVE_SECONDS * 5000)
    expect(changed).to_contain_text("Verified")
    expect(page.locator("#status")).to_have_text("Reported")  # the page as it was shown
    expect(page.locator("form[action$=escalate] input[name=reason]")).to_have_value(
        "Typed meanwhile"
    )
    changed.locator("a").click()
    expect(page.locator("#status")).to_have_text("Verified")
    expect(page.locator("#changed")).to_be_hidden()
    page.fill("form[action$=escalate] input[name=reason]", "Crowd growing")
    page.click("#escalate")  # the officer's own change: heard, and not said as another's
    expect(page.locator("li[data-type='Escalated']")).to_have_count(1)
    own = list(room.ledger("desk_pilkada").incident_events(reported.incident))[-1].position
    live = page.locator("#live")
    wait_until(  # heard on the page, or before it was shown (then never said on it)
        lambda: max(int(live.get_attribute(a) or 0) for a in ("data-heard", "data-after")) >= own,
        what="the page to hear its own change",
    )
    expect(page.locator("#changed")).to_be_hidden()
    assert_local_and_clean(room)


def test_a_report_typed_for_longer_than_the_idle_time_is_recorded(
    room: Room, browser: Browser
) -> None:
    """Typing keeps the officer signed in: a report typed over a long phone call, longer than
    the session's idle time, was sent to the sign-in page and lost."""
    idle = {**room.env, "SITUATION_ROOM_SESSION_IDLE_MINUTES": "0.1"}  # 6 s
    with service_process("services.situation_room", idle) as web_process:
        slow = Room(room.stack, web_process, idle)
        page = new_page(slow, browser)
        sign_in(slow, page, "polres")
        page.goto(f"{slow.url}/report")
        title = f"Typed slowly {uuid.uuid4().hex[:6]}"
        page.fill("input[name=title]", title)
        page.select_option("select[name=category]", "crowd_gathering")
        page.select_option("select[name=kecamatan]", "ipuh")
        # 10 s of typing, one key every half second, past the 6 s idle end.
        page.locator("textarea[name=description]").press_sequentially("x" * 20, delay=500)
        page.click("#submit")
        expect(page).to_have_url(re.compile(r"/board\?reported=\d+&incident=[0-9a-f-]{36}$"))
        assert titles(slow, title) == 1
        assert_local_and_clean(slow)


def test_a_corrected_code_is_shown_by_its_name(room: Room, browser: Browser) -> None:
    """A correction of the severity reads "Low → High" ("Rendah → Tinggi"), not the codes."""
    reporter = room.ledger("kesbangpol")
    reported = reporter.report("Crowd at the market", "crowd_gathering", "ipuh", severity="low")
    reporter.correct(
        reported.incident, reported.event_id, "severity", "low", "high", reason="Misjudged"
    )
    for language, old, new in (("en", "Low", "High"), ("id", "Rendah", "Tinggi")):
        page = new_page(room, browser, language)
        sign_in(room, page, "kesbangpol")
        page.goto(f"{room.url}/{reported.incident}")
        correction = page.locator(".timeline li.correction")
        expect(correction.locator("del")).to_have_text(old)
        expect(correction.locator("ins")).to_have_text(new)

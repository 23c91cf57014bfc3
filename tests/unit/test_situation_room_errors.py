"""The situation room when the ledger does not answer: a plain 503, not a crash."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from incidentledger.v1 import incident_pb2 as pb
from incidentledger_client import (
    DataLoss,
    Incident,
    InvalidArgument,
    LedgerClient,
    LedgerError,
    PermissionDenied,
    RetryPolicy,
    Unavailable,
)
from services.common.config import SituationRoomSettings
from services.situation_room.app import (
    MAX_INT64,
    build_app,
    decision_hours,
    decision_window,
    whole,
)
from services.situation_room.i18n import COOKIE as LANGUAGE_COOKIE
from services.situation_room.sessions import COOKIE, Officer

#: Nothing listens there.
NOWHERE = "127.0.0.1:1"


def test_a_ledger_that_does_not_answer_gives_a_plain_503() -> None:
    settings = SituationRoomSettings(ledger_address=NOWHERE, notifier_address=NOWHERE)
    settings = replace(settings, session_key=b"a session key of 16 bytes or more")
    app = build_app(settings, token=lambda: "token")
    room = app.state.room

    def connect(token: str) -> LedgerClient:
        return LedgerClient(NOWHERE, token, retry=RetryPolicy(retries=0), timeout=1.0)

    room.sessions.connect = connect  # no retries: the test need not wait out the budget
    session = room.sessions.new(Officer("polres", "responder", "token", connect("token")))

    async def get_board(language: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)  # no lifespan: no live subscription
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            client.cookies.set(COOKIE, room.sessions.cookie_value(session))
            if language:
                client.cookies.set(LANGUAGE_COOKIE, language)
            return await client.get("/board")

    # In the room's language without a choice, in English when chosen.
    for language, said in [("", "tidak menjawab"), ("en", "did not answer")]:
        answer = asyncio.run(get_board(language))
        assert answer.status_code == 503
        assert said in answer.text
    assert room.sessions.alive(session)  # still signed in: the ledger may come back


def test_positions_and_versions_the_browser_never_sends_are_ignored_not_a_crash() -> None:
    """A min_position past int64, or digits that are not ASCII, were a 500 and a traceback
    (the ledger's request could not be built); now they are no position."""
    assert [whole(t) for t in ("0", "42", str(MAX_INT64))] == [0, 42, MAX_INT64]
    assert [whole(t) for t in (str(MAX_INT64 + 1), "²", "١٢", "-1", "", "1.5")] == [None] * 6
    with pytest.raises(ValueError, match="whole number of hours"):
        decision_hours("²")
    # Too many hours is refused naming the most, not "at least 1", which 9000 is.
    with pytest.raises(ValueError, match="from 1 to 8784"):
        decision_hours("9000")
    assert decision_hours("8784") == 8784
    # A start and an end in the regency's zone (datetime-local), or hours from the start (or
    # now): in WIB for Mukomuko, in WITA for a regency there (the same clock reading an hour
    # earlier).
    now = datetime(2026, 12, 5, 13, 0, tzinfo=UTC)
    for zone, tomorrow in (
        (ZoneInfo("Asia/Jakarta"), datetime(2026, 12, 6, 11, 0, tzinfo=UTC)),  # 18:00 WIB
        (ZoneInfo("Asia/Makassar"), datetime(2026, 12, 6, 10, 0, tzinfo=UTC)),  # 18:00 WITA
    ):
        assert decision_window(now, "", "", "", zone) == (now, now + timedelta(hours=24))
        assert decision_window(now, "2026-12-06T18:00", "", "6", zone) == (
            tomorrow,
            tomorrow + timedelta(hours=6),
        )
        assert decision_window(now, "2026-12-06T18:00", "2026-12-09T18:00", "", zone) == (
            tomorrow,
            tomorrow + timedelta(days=3),
        )
        with pytest.raises(ValueError, match="not both"):
            decision_window(now, "", "2026-12-09T18:00", "24", zone)
    with pytest.raises(ValueError, match="date and a time in WIB"):
        decision_window(now, "besok", "", "", ZoneInfo("Asia/Jakarta"))
    with pytest.raises(ValueError, match="date and a time in WITA"):
        decision_window(now, "besok", "", "", ZoneInfo("Asia/Makassar"))
    settings = SituationRoomSettings(ledger_address=NOWHERE, notifier_address=NOWHERE)
    settings = replace(settings, session_key=b"a session key of 16 bytes or more")
    app = build_app(settings, token=lambda: "token")
    room = app.state.room

    def connect(token: str) -> LedgerClient:
        return LedgerClient(NOWHERE, token, retry=RetryPolicy(retries=0), timeout=1.0)

    room.sessions.connect = connect
    session = room.sessions.new(Officer("polres", "responder", "token", connect("token")))

    async def get(path: str) -> int:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            client.cookies.set(COOKIE, room.sessions.cookie_value(session))
            return (await client.get(path)).status_code

    for path in ("/board/rows", "/map/data.json"):
        for position in ("9" * 24, "²"):
            # Asked of the ledger without a position: here, one that does not answer.
            assert asyncio.run(get(f"{path}?min_position={position}")) == 503, (path, position)


class RefusingLedger:
    """A ledger that answers every query with ``refusal``."""

    def __init__(self, refusal: LedgerError) -> None:
        self.refusal = refusal

    def list_incidents(self, *args: object, **kwargs: object) -> Iterator[object]:
        raise self.refusal

    def get_incident(self, name: str = "", **kwargs: object) -> object:
        raise self.refusal


def test_a_query_the_ledger_refuses_is_said_as_its_refusal_not_as_no_answer() -> None:
    """A filter the ledger does not know, a query the agency may not make, a mistyped
    incident address: the ledger answered, and the page says what it answered (it said the
    ledger did not answer, 503, and to try again)."""
    settings = SituationRoomSettings(ledger_address=NOWHERE, notifier_address=NOWHERE)
    settings = replace(settings, session_key=b"a session key of 16 bytes or more")
    app = build_app(settings, token=lambda: "token")
    room = app.state.room

    def get(refusal: LedgerError, path: str) -> httpx.Response:
        ledger = RefusingLedger(refusal)
        room.sessions.connect = lambda token: ledger
        session = room.sessions.new(Officer("polres", "responder", "token", ledger))  # type: ignore[arg-type]

        async def fetch() -> httpx.Response:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as web:
                web.cookies.set(COOKIE, room.sessions.cookie_value(session))
                web.cookies.set(LANGUAGE_COOKIE, "en")
                return await web.get(path)

        return asyncio.run(fetch())

    unknown = InvalidArgument(
        "INVALID_ARGUMENT", "INVALID_FIELD", "filter: unknown lead_agency 'nobody'"
    )
    answer = get(unknown, "/board?lead_agency=nobody")
    assert answer.status_code == 400
    assert answer.text == "The ledger refused this request: filter: unknown lead_agency 'nobody'"
    denied = PermissionDenied("PERMISSION_DENIED", "NOT_INVOLVED", "not for this agency")
    assert get(denied, "/board").status_code == 403
    malformed = InvalidArgument(
        "INVALID_ARGUMENT", "INVALID_FIELD", "has a malformed incident id", {"field": "name"}
    )
    for path in ("/incidents/not-an-id", "/incidents/0c9d8e7f-1a2b-4c3d-8e9f-0a1b2c3d4e5f"):
        answer = get(malformed, path)
        # In the page's frame, with the way back to the board (it was a bare line).
        assert answer.status_code == 404, path
        assert "No such incident." in answer.text and 'href="/board"' in answer.text
    lost = Unavailable("UNAVAILABLE", "STORE_UNAVAILABLE", "the store is away")
    answer = get(lost, "/board")
    assert answer.status_code == 503
    assert "did not answer" in answer.text
    # A refusal of a kind the page has no status for is the ledger's answer all the same:
    # never the 503 that the page (and a reader of it) takes for "no answer, try again".
    changed = DataLoss("DATA_LOSS", "STORED_RECORD_CHANGED", "incident history was changed")
    answer = get(changed, "/board")
    assert answer.status_code == 502
    assert answer.text == "The ledger refused this request: incident history was changed"


class ListingLedger:
    """A ledger whose every list is ``incidents``."""

    def __init__(self, incidents: list[Incident]) -> None:
        self.incidents = incidents

    def list_incidents(self, *args: object, **kwargs: object) -> Iterator[Incident]:
        return iter(self.incidents)


def test_an_incident_that_fails_its_chain_is_a_row_of_its_own_on_the_board() -> None:
    """The ledger lists an incident whose stored history fails its hash chain with only its
    name and the check: the board says so in its row, in the page's language, shows nothing
    else of it, and the other incidents as always (a time window never hides it)."""
    settings = SituationRoomSettings(ledger_address=NOWHERE, notifier_address=NOWHERE)
    settings = replace(settings, session_key=b"a session key of 16 bytes or more")
    app = build_app(settings, token=lambda: "token")
    room = app.state.room
    broken_name = "incidents/5b0e8a52-3f7c-4c86-9d4e-0f1a2b3c4d5e"
    broken = Incident.from_proto(
        pb.Incident(
            name=broken_name,
            chain_failure=pb.ChainFailure(check="chain", version=3, message="fails"),
        )
    )
    intact = Incident.from_proto(
        pb.Incident(
            name="incidents/0c9d8e7f-1a2b-4c3d-8e9f-0a1b2c3d4e5f",
            title="Massa berkumpul di Lapangan Merdeka",
            status=pb.INCIDENT_STATUS_REPORTED,
            create_time=Timestamp(seconds=int(datetime.now(UTC).timestamp())),
        )
    )
    ledger = ListingLedger([broken, intact])
    room.sessions.connect = lambda token: ledger
    session = room.sessions.new(Officer("polres", "responder", "token", ledger))  # type: ignore[arg-type]

    async def fetch(language: str, path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as web:
            web.cookies.set(COOKIE, room.sessions.cookie_value(session))
            web.cookies.set(LANGUAGE_COOKIE, language)
            return await web.get(path)

    for language, said in [
        ("en", "fails its hash chain at version 3"),
        ("id", "gagal rantai hash pada versi 3"),
    ]:
        for path in ("/board", "/board/rows", "/board?since=1h"):
            answer = asyncio.run(fetch(language, path))
            assert answer.status_code == 200, (path, answer.text)
            row = answer.text[answer.text.index(broken_name) :].split("</tr>")[0]
            assert said in row, (path, row)
            assert "Massa berkumpul di Lapangan Merdeka" in answer.text

"""The situation room's request log: one line per HTTP request (method, path, status,
duration, the signed-in agency), at the level of its outcome, and never a token, a cookie
or a query string."""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from dataclasses import replace
from typing import Any

import httpx
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from incidentledger_client import LedgerClient, RetryPolicy
from services.common.config import SituationRoomSettings
from services.situation_room.app import build_app
from services.situation_room.sessions import COOKIE, Officer

#: Nothing listens there: the board's query fails (503).
NOWHERE = "127.0.0.1:1"
TOKEN = "a-bearer-token-never-logged"


async def crash(request: Request) -> Response:
    raise RuntimeError("a bug in a route")


def test_each_request_is_logged_with_its_outcome_and_agency_and_no_secret() -> None:
    settings = SituationRoomSettings(ledger_address=NOWHERE, notifier_address=NOWHERE)
    settings = replace(settings, session_key=b"a session key of 16 bytes or more")
    app = build_app(settings, token=lambda: "token")
    app.router.routes.append(Route("/crash", crash))
    room = app.state.room

    def connect(token: str) -> LedgerClient:
        return LedgerClient(NOWHERE, token, retry=RetryPolicy(retries=0), timeout=1.0)

    room.sessions.connect = connect  # no retries: the test need not wait out the budget
    session = room.sessions.new(Officer("polres", "responder", TOKEN, connect(TOKEN)))
    cookie = room.sessions.cookie_value(session)

    async def browse() -> list[int]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            statuses = [(await client.get("/login")).status_code]
            statuses.append((await client.get("/static/room.css")).status_code)
            client.cookies.set(COOKIE, cookie)
            statuses.append((await client.get("/board?status=REPORTED")).status_code)
            statuses.append((await client.post("/logout", data={"csrf": "forged"})).status_code)
            statuses.append((await client.get("/crash")).status_code)
            return statuses

    with structlog.testing.capture_logs() as logs:
        assert asyncio.run(browse()) == [200, 200, 503, 403, 500]
    lines: list[MutableMapping[str, Any]] = [e for e in logs if e["event"] == "request"]
    seen = [(e["method"], e["path"], e["status"], e.get("agency"), e["log_level"]) for e in lines]
    assert seen == [
        ("GET", "/login", 200, None, "info"),
        ("GET", "/static/room.css", 200, None, "debug"),
        # The ledger did not answer: what an operator looks at, with who asked.
        ("GET", "/board", 503, "polres", "warning"),
        ("POST", "/logout", 403, "polres", "warning"),  # a forged form: refused
        ("GET", "/crash", 500, None, "error"),
    ]
    assert all(isinstance(e["duration_ms"], float) and e["duration_ms"] >= 0 for e in lines)
    assert lines[-1]["error"] == "RuntimeError: a bug in a route"
    logged = json.dumps([dict(e) for e in logs], default=str)
    for secret in (TOKEN, cookie, "status=REPORTED", "forged"):
        assert secret not in logged

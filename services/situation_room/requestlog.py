"""The page's request log: one structlog line per HTTP request, like the ledger's.

``request`` (logger ``request``) with ``method``, ``path`` (without the query), ``status``,
``duration_ms`` and the signed-in officer's ``agency`` (when the request came with a
session; a route sets it in the request's state, :func:`note_agency`). Never a token, a
cookie, a query string, a form field or an address: personal data stays out of the log.
An event stream is one request, logged when it ends. At ``info``; ``warning`` for a refused
caller (401, 403, 429) and for a ledger that did not answer (503 and other 5xx but 500);
``error`` for a crash (500), with the exception's type and message (cut, like the ledger's);
the static files at ``debug`` when served.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.logging import clipped

log = structlog.get_logger("request")

#: Where the route notes the signed-in agency (the request's state, ``scope["state"]``).
AGENCY_KEY = "room_agency"
#: Characters of the path logged (the caller chooses it; longer ones are cut and hashed).
PATH_LOG_CHARS = 256
#: Characters of a crash's exception in the log (as the ledger's ``request.crashed``).
ERROR_LOG_CHARS = 1024
#: Paths of the page's own scripts and styles, and Leaflet's: logged at debug when served.
STATIC_PREFIXES = ("/static/", "/vendor/")


def note_agency(request: Request, agency: str) -> None:
    """Name the signed-in officer's agency in the request's log line."""
    request.state.room_agency = agency


def level_of(status: int | None, path: str) -> str:
    """The log level of a request that ended with ``status`` (None: no answer sent)."""
    if status == 500:
        return "error"
    if status is not None and status >= 500:
        return "warning"  # the ledger did not answer (503)
    if status in {401, 403, 429}:
        return "warning"  # a refused caller: a forged form, too many failed sign-ins
    if path.startswith(STATIC_PREFIXES) and status is not None and status < 400:
        return "debug"
    return "info"


class RequestLog:
    """ASGI middleware: the request's log line when its answer is done (see the module)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state: dict[str, Any] = scope.setdefault("state", {})
        status: list[int] = []

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        error = ""
        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            error = clipped(f"{type(exc).__name__}: {exc}", ERROR_LOG_CHARS)
            if not status:
                status.append(500)  # the server's error answer follows
            raise
        finally:
            code = status[0] if status else None
            path = clipped(str(scope.get("path", "")), PATH_LOG_CHARS)
            extra: dict[str, Any] = {"error": error} if error else {}
            if agency := state.get(AGENCY_KEY):
                extra["agency"] = agency
            getattr(log, level_of(code if not error else 500, path))(
                "request",
                method=scope.get("method", ""),
                path=path,
                status=code,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
                **extra,
            )

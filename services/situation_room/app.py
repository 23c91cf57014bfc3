"""The situation room's routes: sign-in, the board (live), the map and the report form.

Every read and every command goes to the ledger over gRPC with the signed-in officer's
token (:class:`incidentledger_client.LedgerClient`), so the actor in the events is the
person at the keyboard. The blocking client runs in Starlette's thread pool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import math
import re
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import structlog
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from incidentledger_client import (
    Aborted,
    AgencyWorkload,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    Evidence,
    FailedPrecondition,
    Incident,
    IncidentEvent,
    InvalidArgument,
    LedgerClient,
    LedgerError,
    Location,
    NotFound,
    NotifierClient,
    PermissionDenied,
    Person,
    PersonalData,
    ResourceExhausted,
    ResponseTimes,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
    VersionConflict,
    VulnerabilityMap,
)
from incidentledger_client.cli.output import BAND_FILL
from services.common.auth import shared_secret
from services.common.config import SituationRoomSettings
from services.common.reference import Agency, ReferenceData, Role
from services.common.vocabulary import EVENT_TYPES, STATUSES
from services.situation_room.i18n import (
    COOKIE as LANGUAGE_COOKIE,
)
from services.situation_room.i18n import (
    LANGUAGE_NAMES,
    N_,
    Languages,
    _,
    current,
    duration,
    format_number,
    format_size,
    labels,
    language_of,
    local_time,
    ngettext,
    zone_name,
)
from services.situation_room.live import RESYNC, Hub, LedgerWatch
from services.situation_room.requestlog import RequestLog, note_agency
from services.situation_room.sessions import (
    COOKIE,
    Officer,
    Session,
    Sessions,
    SignInThrottle,
    csrf_ok,
)

log = structlog.get_logger(__name__)

HERE = Path(__file__).parent
#: The board's filters: query parameter -> the ListIncidents filter field.
FILTER_FIELDS = ("status", "kecamatan", "category", "severity", "lead_agency")
SINCE_HOURS = {"1h": 1, "6h": 6, "24h": 24}
#: How the board's time windows read (translated where shown).
SINCE_LABELS = {"1h": N_("1 hour"), "6h": N_("6 hours"), "24h": N_("24 hours")}
#: The board shows at most this many incidents, the newest first.
BOARD_ROWS = 200
#: SSE keepalive comments, so proxies and the browser keep the connection.
PING_SECONDS = 15
#: How often an idle event stream checks that its session is still signed in.
SESSION_CHECK_SECONDS = 2.0
#: How soon a tab reconnects when its event stream ends (before its cookie's idle end).
RECONNECT_MS = 1000
#: The page's calls to the ledger: retried long enough to outlast a restart of the ledger
#: (3-6 s measured, the client's RetryPolicy), not the client's 20 s, which an officer spent
#: before the page said the ledger did not answer (and a request thread of the page with it).
LEDGER_RETRY = RetryPolicy(budget=8.0, max_backoff=1.0)
LEDGER_TIMEOUT_SECONDS = 8.0
#: The development key of the session cookies, in the data directory (production sets
#: SITUATION_ROOM_SESSION_KEY).
DEV_KEY_FILE_NAME = "situation-room-session.secret"
#: How long the language cookie remembers the officer's choice.
LANGUAGE_COOKIE_SECONDS = 365 * 24 * 3600


#: The largest position or version the ledger takes (protobuf int64).
MAX_INT64 = 2**63 - 1


def whole(text: str) -> int | None:
    """A position or a version from a query, a header or a form: ASCII digits within
    int64, else None (what the browser never sends is ignored, not a crash)."""
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= MAX_INT64 else None


def time_left(until: datetime | None, now: datetime) -> str:
    """How long a decision stays in force: ``3 h 05 min`` ("" without an end). Started
    minutes count: a decision still in force for 40 s has 1 min left, not 0."""
    if until is None:
        return ""
    return duration(max(0, math.ceil((until - now).total_seconds() / 60)))


def isolated(text: str) -> str:
    """An agency's text set inside a line of the page's own words where no element can hold
    it (a list's option, a line of the map's tooltip, the document's title): between FIRST
    STRONG ISOLATE and POP DIRECTIONAL ISOLATE, so that its own direction (Arabic, Hebrew)
    or a right-to-left override in it reorders it alone."""
    return f"\u2068{text}\u2069"


def said(failure: LedgerError) -> str:
    """The ledger's refusal in the page's language: its LocalizedMessage when it sent one
    (the officers' clients ask for Indonesian), its English message otherwise."""
    if current() != "en" and failure.localized_message:
        return failure.localized_message
    return failure.message


#: The incident page's forms: the ledger's request field -> the form's label. The ledger's
#: refusal names its request's field (``Nilai reason tidak dapat diterima.``): the page names
#: the field the officer filled in (fields whose label the form words alone).
ACTION_FIELDS = {
    "reason": N_("Reason"),
    "comment": N_("Comment"),
    "forum": N_("Forum"),
    "summary": N_("Decision"),
    "rationale": N_("Rationale"),
    "resolution": N_("Resolution"),
    "action": N_("Action taken"),
    "target": N_("Duplicate of"),
    "to_agency": N_("Hand over to"),
    "severity": N_("New severity"),
}


#: A time as the ledger's messages write it (ISO 8601 with its offset).
ISO_TIME = re.compile(r"\b\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:[+-]\d{2}:\d{2}|Z)")


def local_times(text: str, zone: tzinfo) -> str:
    """``text`` with each time the ledger wrote in ISO 8601 as the room writes times (in the
    regency's zone, "7 Des 2026 18.00 WIB"): a refusal read "(2026-12-07T18:00:00+07:00)"."""

    def local(found: re.Match[str]) -> str:
        try:
            return local_time(datetime.fromisoformat(found.group(0)), zone)
        except ValueError:
            return found.group(0)

    return ISO_TIME.sub(local, text)


def action_refusal(failure: LedgerError) -> str:
    """The ledger's refusal of an action form (:func:`said`), with the request's field it
    names called by the form's label in the page's language, when it is not English (the
    English message is the ledger's own, which names the case)."""
    text = said(failure)
    label = ACTION_FIELDS.get(failure.field or "")
    if label is None or current() == "en" or not failure.localized_message:
        return text
    field = re.compile(rf"(?<![\w.]){re.escape(failure.field or '')}(?![\w.])")
    return field.sub(lambda _found: f"“{_(label)}”", text)


@dataclass(frozen=True)
class KeptForm:
    """What the officer typed into a form of the incident page that the ledger refused:
    shown again in that form of the page rendered anew (the incident as it is now), never
    in another. Before, the page came back with every form empty: a decision's forum,
    summary, rationale and agencies ticked, lost to a version another agency moved on."""

    action: str = ""
    fields: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, action: str, posted: Any) -> KeptForm:
        """The typed fields of ``posted`` (a form's multi-dict), without the page's own."""
        return cls(
            action,
            {
                key: [v for v in posted.getlist(key) if isinstance(v, str)]
                for key in posted
                if key not in FORM_PLUMBING
            },
        )

    def __call__(self, action: str, name: str) -> str:
        """The value typed into field ``name`` of form ``action`` ("" for another form)."""
        values = self.chosen(action, name)
        return values[0] if values else ""

    def chosen(self, action: str, name: str) -> Sequence[str]:
        """Every value of ``name`` in form ``action`` (the boxes ticked)."""
        return self.fields.get(name, ()) if action == self.action else ()


@dataclass
class Room:
    """What the routes share: settings, reference data, sessions and the live hub."""

    settings: SituationRoomSettings
    reference: ReferenceData
    sessions: Sessions
    throttle: SignInThrottle
    hub: Hub
    geojson: dict[str, Any]
    templates: Jinja2Templates
    #: Whether the page reaches the ledger (the tabs are told when it does not).
    ledger: LedgerWatch

    @property
    def zone(self) -> tzinfo:
        """The regency's time zone, the room's clock: every time the page shows and every
        date and time its forms take. It is the reference file's ``zone`` (the file the
        ledger reads, ``LEDGER_REFERENCE_FILE``; Asia/Jakarta, WIB, in Mukomuko's): the one
        place the room has it."""
        return self.reference.tz()

    def zone_name(self) -> str:
        """The zone's abbreviation now (WIB, WITA, WIT), as the page's texts name it."""
        return zone_name(self.zone)

    def time(self, value: datetime | None, seconds: bool = False) -> str:
        """A time as the room reads it, in the regency's zone ("" for none)."""
        return local_time(value, self.zone, seconds=seconds)

    def corrected(self, value: object, field: str) -> str:
        """A correction's old or new value as the room reads it (:func:`corrected_value`); a
        code of the reference data by its name ("Rendah → Tinggi", not "low → high")."""
        named = {
            "severity": self.severity,
            "category": self.category,
            "location.kecamatan": self.kecamatan,
        }.get(field)
        if named is not None:
            return named(str(value))
        return corrected_value(value, field, self.zone)

    def role(self, agency: str) -> str:
        found = self.reference.agencies.get(agency)
        return found.role.value if found is not None else ""

    def category(self, code: str) -> str:
        """A category's name in the page's language (the reference data's ``names``)."""
        found = self.reference.categories.get(code)
        return (found.names.get(current()) or found.name) if found is not None else code

    def severity(self, code: str) -> str:
        """A severity's name in the page's language (the reference data's ``names``)."""
        found = self.reference.severities.get(code)
        return (found.names.get(current()) or found.name) if found is not None else code

    def status_label(self, code: str) -> str:
        """A status in the page's language: the reference data's ``names`` when it gives
        one, else the catalog's word (the same rule as ledgerctl's), in words in English too
        (``Reported``, where ledgerctl shows the code)."""
        found = self.reference.statuses.get(code)
        return labels.status(code, found.names if found is not None else None, worded=True)

    def role_label(self, code: str) -> str:
        """A role in the page's language, as :meth:`status_label`."""
        found = self.reference.roles.get(code)
        return labels.role(code, found.names if found is not None else None)

    def kecamatan(self, code: str) -> str:
        found = self.reference.kecamatan.get(code)
        return found.name if found is not None else code

    def agency(self, code: str) -> str:
        return agency_label(self.reference.agencies, code)


def agency_label(agencies: Mapping[str, Agency], code: str) -> str:
    """An agency as the page names it everywhere (an event's author as the agency the event
    names): by its name, with its code only where the name alone is ambiguous (the reference
    file gives another agency the same name); the code of one it does not know."""
    found = agencies.get(code)
    if found is None or not found.name:
        return code
    shared = sum(1 for a in agencies.values() if a.name == found.name)
    return f"{found.name} ({code})" if shared > 1 else found.name


def room_of(request: Request) -> Room:
    room: Room = request.app.state.room
    return room


def session_of(request: Request) -> Session | None:
    """The request's session (None: no valid cookie); a signed-in officer's agency is
    named in the request's log line."""
    session = room_of(request).sessions.find(request.cookies.get(COOKIE))
    if session is not None and session.officer is not None:
        note_agency(request, session.officer.agency)
    return session


def with_cookie(room: Room, request: Request, response: Response, session: Session) -> Response:
    """The session's cookie on the response, sealed now (a signed-in one's idle end slides)."""
    response.set_cookie(
        COOKIE,
        room.sessions.cookie_value(session),
        max_age=room.sessions.cookie_seconds(session),
        path="/",
        httponly=True,
        samesite="strict",
        # Served over TLS (a proxy in front that says so), the cookie never travels in clear.
        secure=request.url.scheme == "https",
    )
    return response


def without_cookie(request: Request, response: Response) -> Response:
    """Signed out: the browser forgets the session (the page holds none to end)."""
    response.delete_cookie(
        COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )
    return response


def render(request: Request, session: Session, name: str, **context: Any) -> Response:
    room = room_of(request)
    response = room.templates.TemplateResponse(
        request,
        name,
        {
            "session": session,
            "officer": session.officer,
            "reference": room.reference,
            "lang": current(),
            "languages": LANGUAGE_NAMES,
            "zone": room.zone_name(),
            "here": here(request),
            # How often typing tells the page that the officer is there (static/forms.js):
            # a quarter of the idle time, so a form typed slowly outlives it.
            "alive_ms": int(room.sessions.idle * 1000 / 4),
            **context,
        },
    )
    # A shared laptop's Back button after signing out showed the incident from the cache.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "frame-ancestors 'none'; form-action 'self'"
    )
    return response


def here(request: Request) -> str:
    """The page's path and query, for the language control to come back to."""
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


Handler = Callable[[Request, Session, Officer], Awaitable[Response]]


def sign_in_for(request: Request, session: Session | None) -> str:
    """The sign-in page for a request that needs an officer: with the page asked for (a
    GET: an incident's code typed from a phone call is not typed again after signing in),
    and ``ended`` when the browser sent a cookie of a session that has ended (said so)."""
    query: list[str] = []
    # A page the browser opened (not a script's rows, map data or event stream).
    page = "text/html" in request.headers.get("accept", "")
    if request.method == "GET" and page and request.url.path not in {"/", "/board"}:
        query.append(urlencode({"next": here(request)}))
    if session is None and COOKIE in request.cookies:
        query.append("ended")  # as static/live.js sends a tab whose stream ended
    return "/login" + (f"?{'&'.join(query)}" if query else "")


def local_path(value: str, default: str = "/board") -> str:
    """``value`` when it is a path of this site, else ``default``: never a redirect
    elsewhere (//host, /\\host, a URL)."""
    if not value.startswith("/") or value.startswith(("//", "/\\")):
        return default
    return value


def signed_in(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """The route for signed-in officers only; anyone else goes to the sign-in page."""

    async def route(request: Request) -> Response:
        session = session_of(request)
        if session is None or session.officer is None:
            return RedirectResponse(sign_in_for(request, session), status_code=303)
        response = await handler(request, session, session.officer)
        if not any(
            name == b"set-cookie" and value.startswith(f"{COOKIE}=".encode())
            for name, value in response.raw_headers
        ):  # in use: the idle end slides (unless the handler set or cleared the cookie)
            with_cookie(room_of(request), request, response, session)
        return response

    return route


async def checked_form(request: Request, session: Session | None) -> dict[str, str] | None:
    """The posted form's fields, or None when its CSRF token is not the session's."""
    form = await request.form()
    if not csrf_ok(session, form.get("csrf")):
        log.warning("situation_room.csrf_refused", path=request.url.path)
        return None
    return {key: value for key, value in form.items() if isinstance(value, str)}


def forbidden(reason: str) -> Response:
    return Response(reason, status_code=403, media_type="text/plain")


# --- sign-in -----------------------------------------------------------------------------------


async def login_page(request: Request) -> Response:
    room = room_of(request)
    session = session_of(request) or room.sessions.new()
    # A board or a map whose session ended comes here with ?ended (static/live.js), and so
    # does a page asked for after the session ended (sign_in_for).
    params = request.query_params
    notice = _("Your session has ended: sign in again.") if "ended" in params else ""
    if "signed_out" in params:
        notice = _("You are signed out.")
    page = render(
        request,
        session,
        "login.html",
        error="",
        notice=notice,
        next=local_path(params.get("next", "")),
    )
    return with_cookie(room, request, page, session)


async def login(request: Request) -> Response:
    room = room_of(request)
    session = session_of(request)
    form = await checked_form(request, session)
    if form is None or session is None:
        # The sign-in page left open past its cookie's life (the start of a shift), or
        # another tab signed in meanwhile: the page again, with a form that works, not a
        # bare refusal. Nothing is taken from the stale form but where it was going.
        fresh = room.sessions.new()
        posted = await request.form()
        going = local_path(str(posted.get("next", "")))
        page = render(
            request,
            fresh,
            "login.html",
            error="",
            notice=_("The sign-in page had expired: enter your token again."),
            next=going,
        )
        return with_cookie(room, request, page, fresh)
    agency, token = form.get("agency", ""), form.get("token", "").strip()
    going = local_path(form.get("next", ""))
    client = request.client.host if request.client is not None else ""
    error = ""
    if room.throttle.blocked(client):
        log.warning("situation_room.sign_in_throttled", client=client)
        page = render(
            request, session, "login.html", error=_("Too many failed sign-ins: wait a minute.")
        )
        page.status_code = 429
        return with_cookie(room, request, page, session)
    if agency not in room.reference.agencies or not token:
        error = _("Choose your agency and enter your token.")
    else:
        # Errors come with an Indonesian LocalizedMessage too, for an officer reading it.
        ledger = room.sessions.connect(token)
        try:
            caller = (await run_in_threadpool(ledger.reference_data)).caller_agency
        except Unauthenticated:
            room.throttle.failed(client)
            log.warning(
                "situation_room.sign_in_refused", agency=agency, reason="token", client=client
            )
            error = _(
                "The token is not valid: check that it was copied whole, or ask for a new one "
                "(a token that was replaced no longer signs in)."
            )
        except LedgerError as failure:
            log.warning("situation_room.sign_in_failed", error=str(failure))
            error = _("The ledger cannot be reached; try again.")
        else:
            if caller and caller != agency:
                # The ledger acts as the token's agency whatever is chosen: a session of
                # another agency would show that agency's role and log its name.
                log.warning(
                    "situation_room.sign_in_refused",
                    agency=agency,
                    reason="agency",
                    client=client,
                )
                error = _(
                    "The token is not one of the chosen agency's: choose the agency it was "
                    "given to."
                )
    if error:
        # The agency chosen stays chosen: back on the first one, the next try with the
        # right token was refused as another agency's.
        page = render(request, session, "login.html", error=error, chosen=agency, next=going)
        return with_cookie(room, request, page, session)
    officer = Officer(agency, room.role(agency), token, ledger)
    signed = room.sessions.new(officer)  # a new CSRF token at sign-in
    note_agency(request, agency)
    log.info("situation_room.signed_in", agency=agency)
    return with_cookie(room, request, RedirectResponse(going, status_code=303), signed)


async def logout(request: Request) -> Response:
    session = session_of(request)
    if session is None or session.officer is None:
        # Signed out already (in another tab, or the session ended): what was asked is so.
        return without_cookie(request, RedirectResponse("/login?signed_out", status_code=303))
    if await checked_form(request, session) is None:
        return forbidden(_("The form has expired or was not sent by this page. Reload it."))
    return without_cookie(request, RedirectResponse("/login?signed_out", status_code=303))


async def language(request: Request) -> Response:
    """Switch the page's language (the control on every page) and go back to the page."""
    chosen = language_of(request.path_params["language"])
    back = local_path(request.query_params.get("next", ""))
    response = RedirectResponse(back, status_code=303)
    response.set_cookie(
        LANGUAGE_COOKIE,
        chosen,
        max_age=LANGUAGE_COOKIE_SECONDS,
        path="/",
        httponly=True,
        samesite="strict",
    )
    return response


# --- the board ---------------------------------------------------------------------------------


def board_filter(request: Request) -> tuple[str, dict[str, str]]:
    """The ListIncidents filter of the query's parameters, and the parameters kept."""
    chosen = {
        key: value
        for key in (*FILTER_FIELDS, "since")
        if (value := request.query_params.get(key, "")) and value.replace("_", "").isalnum()
    }
    terms = [f'{key} = "{chosen[key]}"' for key in FILTER_FIELDS if key in chosen]
    return " AND ".join(terms), chosen


async def board_incidents(
    request: Request, officer: Officer, min_position: int
) -> tuple[list[Incident], bool]:
    """The board's rows, newest first, and whether more incidents match than it shows."""
    expression, chosen = board_filter(request)

    hours = SINCE_HOURS.get(chosen.get("since", ""))
    after = None if hours is None else datetime.now(UTC) - timedelta(hours=hours)

    def fetch() -> tuple[list[Incident], bool]:
        # Newest first, one page of the ledger's, one more than the board shows: that one
        # says whether there are more (the next page is fetched only while the time window
        # has not ended).
        shown: list[Incident] = []
        for incident in officer.ledger.list_incidents(
            expression, min_position=min_position, page_size=BOARD_ROWS + 1, newest_first=True
        ):
            # Reports come in the order of their create_time: the first older than the
            # window ends it.
            # One whose history fails its chain has no time to go by: it is always shown.
            if (
                after is not None
                and incident.chain_failure is None
                and (incident.create_time is None or incident.create_time < after)
            ):
                break
            if len(shown) >= BOARD_ROWS:
                return shown, True
            shown.append(incident)
        return shown, False

    return await run_in_threadpool(fetch)


@signed_in
async def board(request: Request, session: Session, officer: Officer) -> Response:
    after = room_of(request).hub.position  # before the list: nothing falls in between
    incidents, more = await board_incidents(request, officer, 0)
    _expression, chosen = board_filter(request)
    just = request.query_params.get("incident", "")
    recorded = next((i for i in incidents if just and i.name == f"incidents/{just}"), None)
    return render(
        request,
        session,
        "board.html",
        recorded=recorded,
        incidents=incidents,
        more=more,
        chosen=chosen,
        statuses=STATUSES,
        after=after,
        since={key: _(text) for key, text in SINCE_LABELS.items()},
    )


@signed_in
async def board_rows(request: Request, session: Session, officer: Officer) -> Response:
    position = whole(request.query_params.get("min_position", "0")) or 0
    incidents, more = await board_incidents(request, officer, position)
    return render(request, session, "board_rows.html", incidents=incidents, more=more)


@signed_in
async def events(request: Request, session: Session, officer: Officer) -> Response:
    """Server-sent events: each change with the ledger position as its id. A tab that
    reconnects (Last-Event-ID) or starts (``after``) behind the hub, or ahead of it (it was
    following a page process that has since restarted), is told to reload.
    ``status`` says whether changes reach the tab (``{"live": false}``: the page's
    subscription to the notifier is interrupted; ``{"ledger": false}``: the page does not
    reach the ledger, so no change comes and no read succeeds), first and at each change."""
    hub = room_of(request).hub
    ledger = room_of(request).ledger
    last = request.headers.get("last-event-id") or request.query_params.get("after", "")
    since = whole(last)
    sessions = room_of(request).sessions
    end = sessions.stream_end(session)
    queue = hub.attach()

    async def stream() -> AsyncIterator[ServerSentEvent]:
        try:
            # Behind the hub: told to reload. Ahead of it: the tab was following another
            # page process (this one restarted since, or another behind the same address),
            # and what came between that one's last event and this one's start was heard by
            # neither: told to reload too (its position kept as the event's id).
            if since is not None and since != hub.position:
                yield ServerSentEvent(data="{}", event="resync", id=str(max(since, hub.position)))
            # The stream ends with the session, or before its cookie's idle end: the browser
            # then reconnects with the cookie this answer renewed.
            # How soon the browser reconnects when the stream ends (its default is ~3 s).
            yield ServerSentEvent(comment="reconnect", retry=RECONNECT_MS)
            said: tuple[bool, bool] | None = None
            while (left := end - sessions.now()) > 0:
                if (now := (hub.live, ledger.up)) != said:
                    said = now
                    state = {"live": now[0], "ledger": now[1]}
                    yield ServerSentEvent(data=json.dumps(state), event="status")
                try:
                    change = await asyncio.wait_for(queue.get(), min(SESSION_CHECK_SECONDS, left))
                except TimeoutError:
                    continue
                if change is RESYNC:
                    yield ServerSentEvent(data="{}", event="resync", id=str(hub.position))
                    continue
                if since is not None and change.position <= since:
                    continue
                data = {"incident": change.incident, "type": change.type, "status": change.status}
                yield ServerSentEvent(
                    data=json.dumps(data), event="change", id=str(change.position)
                )
        finally:
            hub.detach(queue)

    return EventSourceResponse(stream(), ping=PING_SECONDS)


# --- the map -----------------------------------------------------------------------------------


#: The incident markers' colours by severity (the polygons' are the IKP bands').
#: Critical is near black: beside high's red it read as the same colour.
SEVERITY_FILL = {"critical": "#1a0008", "high": "#b2182b", "medium": "#ef8a62", "low": "#2166ac"}
#: Incidents in these states have no marker: the map shows the work still open.
NO_MARKER = {"REJECTED", "MERGED", "CLOSED"}
#: The ListIncidents filter of the incidents with a marker: the ledger leaves out the others
#: (most of an election's incidents are closed), rather than the map fetching and dropping them.
MARKER_FILTER = " AND ".join(f'status != "{status}"' for status in sorted(NO_MARKER))
#: The ledger's largest page of ListIncidents: the map reads every open incident.
MARKER_PAGE_SIZE = 500


@signed_in
async def map_page(request: Request, session: Session, officer: Officer) -> Response:
    after = room_of(request).hub.position
    return render(
        request, session, "map.html", bands=BAND_FILL, severities=SEVERITY_FILL, after=after
    )


@signed_in
async def map_data(request: Request, session: Session, officer: Officer) -> Response:
    """The kecamatan polygons, each with its score, band, colour and reasons."""
    room = room_of(request)
    at = whole(request.query_params.get("min_position", "0")) or 0

    def fetch() -> tuple[VulnerabilityMap, list[Incident]]:
        return (
            officer.ledger.vulnerability_map(min_position=at),
            list(
                officer.ledger.list_incidents(
                    MARKER_FILTER, min_position=at, page_size=MARKER_PAGE_SIZE
                )
            ),
        )

    scores, incidents = await run_in_threadpool(fetch)
    markers = [
        {
            "name": i.name,
            "title": i.title,
            "severity": i.severity,
            "label": f"{room.severity(i.severity)}, {room.status_label(i.status.value)}",
            "fill": SEVERITY_FILL.get(i.severity, "#555555"),
            "point": [i.location.latitude, i.location.longitude],
        }
        for i in incidents
        if i.location.latitude is not None and i.location.longitude is not None
    ]
    by_code = {score.kecamatan: score for score in scores.kecamatan}
    features = []
    for feature in room.geojson.get("features", []):
        properties = dict(feature.get("properties", {}))
        score = by_code.get(properties.get("code", ""))
        if score is not None:
            properties.update(
                label=score.name,
                band=score.band,
                fill=BAND_FILL.get(score.band, "#dddddd"),
                # The score's line as the page shows it, its count in words (1 incident).
                summary=ngettext(
                    "Score {score} ({band}, {count} incident)",
                    "Score {score} ({band}, {count} incidents)",
                    score.incident_count,
                ).format(
                    score=format_number(score.score, 1),
                    band=worded_band(score.band),
                    count=format_number(score.incident_count),
                ),
                reasons=[
                    f"{isolated(r.title)} ({room.severity(r.severity)}, "
                    f"{room.status_label(r.status)})"
                    for r in score.reasons[:5]
                ],
            )
        features.append({**feature, "properties": properties})
    return JSONResponse(
        {
            "type": "FeatureCollection",
            "features": features,
            "position": scores.position,
            "markers": markers,
        }
    )


# --- reporting ---------------------------------------------------------------------------------


def may_report(officer: Officer) -> bool:
    return officer.role != Role.AUDITOR.value


#: How many witnesses the report form takes (the ledger takes up to 10; a call names few).
WITNESS_ROWS = 3
#: What the form asks of the caller and of each witness (the fields of a Person).
CALLER_FIELDS = ("name", "phone", "nik", "address")
WITNESS_FIELDS = ("name", "phone")
#: The form's fields a refusal may be shown beside (the ledger names its request's fields).
REPORT_FIELDS = frozenset(
    {
        "title",
        "category",
        "severity",
        "kecamatan",
        "desa",
        "tps",
        "latitude",
        "longitude",
        "description",
        "reporter_anonymous",
        *(f"reporter_{f}" for f in CALLER_FIELDS),
        *(f"witness_{n}_{f}" for n in range(WITNESS_ROWS) for f in WITNESS_FIELDS),
    }
)
#: The page's words for a refusal of a field, by the field's kind (the last part of its
#: name; "" for any) and the ledger's reason: the ledger's own message names its request's
#: fields (personal_data.reporter.nik), not the form's. Another refusal shows the ledger's.
FIELD_REFUSALS = {
    ("name", "INVALID_FIELD"): N_("Give the person's name: a phone or NIK alone is not enough."),
    ("phone", "INVALID_FIELD"): N_(
        "This is not a phone number: write it as 0812 3456 7890 or +62 812 3456 7890."
    ),
    ("nik", "INVALID_FIELD"): N_("A NIK has exactly 16 digits."),
    ("anonymous", "INVALID_FIELD"): N_(
        "Only a caller who is named can ask to stay anonymous: give their name."
    ),
    ("", "FIELD_TOO_LONG"): N_("This is too long."),
    ("", "PERSONAL_DATA_IN_TEXT"): N_(
        "This text names the caller or a witness (a name, phone or NIK): keep them in their "
        "fields below, which are sealed."
    ),
}
_WITNESS_FIELD = re.compile(r"personal_data\.witnesses\[(\d+)\]\.(\w+)")


def people_of(form: dict[str, str]) -> tuple[PersonalData | None, list[int]]:
    """The people the form names (None: nobody), and for each witness sent the form's row
    it came from (an empty row is not sent, so the ledger's witnesses[0] may be row 2)."""

    def person(prefix: str, fields: tuple[str, ...]) -> Person | None:
        given = {f: form.get(f"{prefix}_{f}", "").strip() for f in fields}
        return Person(**given) if any(given.values()) else None

    reporter = person("reporter", CALLER_FIELDS)
    anonymous = form.get("reporter_anonymous", "") != ""
    witnesses = [
        (n, w) for n in range(WITNESS_ROWS) if (w := person(f"witness_{n}", WITNESS_FIELDS))
    ]
    if reporter is None and not witnesses and not anonymous:
        return None, []
    people = PersonalData(reporter, anonymous, tuple(w for _n, w in witnesses))
    return people, [n for n, _w in witnesses]


def form_field(field: str | None, rows: list[int]) -> str:
    """The form's field that the ledger's request field ``field`` came from ("" for none)."""
    name = field or ""
    if name.startswith("personal_data.reporter."):
        name = "reporter_" + name.rsplit(".", 1)[1]
    elif name == "personal_data.anonymous":
        name = "reporter_anonymous"
    elif found := _WITNESS_FIELD.fullmatch(name):
        row = int(found[1])
        name = f"witness_{rows[row]}_{found[2]}" if row < len(rows) else ""
    else:
        name = name.removeprefix("location.")
    return name if name in REPORT_FIELDS else ""


def field_refusal(failure: LedgerError, name: str) -> str:
    """The refusal of the form's field ``name`` in the page's language."""
    kind = name.rsplit("_", 1)[-1]
    text = FIELD_REFUSALS.get((kind, failure.reason)) or FIELD_REFUSALS.get(("", failure.reason))
    return _(text) if text else said(failure)


async def report_form(
    request: Request,
    session: Session,
    officer: Officer,
    request_id: str,
    error: str,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
) -> Response:
    """The form, with kecamatan, desa, categories and severities from GetReferenceData;
    ``values``: what the officer typed, shown again with the refusal (``errors``: by field)."""
    ref = await run_in_threadpool(officer.ledger.reference_data)
    desa = {k.code: list(k.desa) for k in ref.kecamatan}
    response = render(
        request,
        session,
        "report.html",
        ref=ref,
        desa=desa,
        request_id=request_id,
        error=error,
        values=values or {},
        errors=errors or {},
        witness_rows=WITNESS_ROWS,
    )
    # A form shown again holds the caller's and witnesses' data: no copy of it is kept.
    response.headers["Cache-Control"] = "no-store"
    return response


@signed_in
async def report_page(request: Request, session: Session, officer: Officer) -> Response:
    if not may_report(officer):
        return forbidden(_("Your agency may not report incidents."))
    return await report_form(request, session, officer, uuid.uuid4().hex, "")


@signed_in
async def report(request: Request, session: Session, officer: Officer) -> Response:
    """Record the report as the officer, with the people it names (sealed by the ledger);
    a refusal is shown beside its field, with what was typed. Nothing personal is logged."""
    form = await checked_form(request, session)
    if form is None:
        return forbidden(_("The form has expired or was not sent by this page. Reload it."))
    if not may_report(officer):
        return forbidden(_("Your agency may not report incidents."))
    request_id = form.get("request_id", "") or uuid.uuid4().hex
    values = {k: v for k, v in form.items() if k not in {"csrf", "request_id"}}
    try:
        latitude, longitude = (
            float(text) if (text := form.get(key, "").strip()) else None
            for key in ("latitude", "longitude")
        )
    except ValueError:
        error = _("Latitude and longitude are numbers, such as -2.57 and 101.15.")
        return await report_form(request, session, officer, request_id, error, values)
    location = Location(
        form.get("kecamatan", ""),
        desa=form.get("desa", ""),
        tps=form.get("tps", "").strip(),
        latitude=latitude,
        longitude=longitude,
    )
    people, rows = people_of(form)
    try:
        result = await run_in_threadpool(
            lambda: officer.ledger.report(
                form.get("title", ""),
                form.get("category", ""),
                location,
                description=form.get("description", ""),
                severity=form.get("severity", ""),
                request_id=request_id,
                personal_data=people,
            )
        )
    except LedgerError as failure:
        # The field's name and the reason only: the ledger's messages never hold a value.
        log.info(
            "situation_room.report_refused",
            agency=officer.agency,
            reason=failure.reason,
            field=failure.field,
        )
        name = form_field(failure.field, rows)
        if not name:
            return await report_form(request, session, officer, request_id, said(failure), values)
        errors = {name: field_refusal(failure, name)}
        error = _("The report was not recorded: see the message beside the field.")
        return await report_form(request, session, officer, request_id, error, values, errors)
    log.info("situation_room.reported", incident=result.incident, agency=officer.agency)
    # The board says what was recorded and its code (read from the board's own rows, never
    # from the address): the officer reads it out, or opens it.
    incident_id = result.incident.removeprefix("incidents/")
    return RedirectResponse(
        f"/board?reported={result.position}&incident={incident_id}", status_code=303
    )


# --- decisions in force -----------------------------------------------------------------------


async def decisions_now(officer: Officer, min_position: int) -> dict[str, Any]:
    """The decisions in force now, soonest to end first, with the time left, and in how many
    ms the soonest ends (by the page's clock, not the browser's; 0 for none): the rows'
    context."""
    found = await run_in_threadpool(
        lambda: officer.ledger.decisions_in_force(min_position=min_position)
    )
    far = datetime.max.replace(tzinfo=UTC)
    found.sort(key=lambda d: d.valid_until or far)
    now = datetime.now(UTC)
    left = {d.event_id: time_left(d.valid_until, now) for d in found}
    ends = [d.valid_until for d in found if d.valid_until is not None]
    soonest = max(1, round((min(ends) - now).total_seconds() * 1000)) if ends else 0
    return {"decisions": found, "left": left, "soonest": soonest}


@signed_in
async def decisions(request: Request, session: Session, officer: Officer) -> Response:
    """The decisions in force now, live like the board: a change reads the rows again, and
    so does the end of the soonest decision and every minute (the time left)."""
    after = room_of(request).hub.position  # before the list: nothing falls in between
    rows = await decisions_now(officer, 0)
    return render(request, session, "decisions.html", after=after, **rows)


@signed_in
async def decisions_rows(request: Request, session: Session, officer: Officer) -> Response:
    position = whole(request.query_params.get("min_position", "0")) or 0
    rows = await decisions_now(officer, position)
    return render(request, session, "decisions_rows.html", **rows)


# --- agencies: workload and response times ----------------------------------------------------


def span(seconds: float, count: int) -> str:
    """A median or p90 as ``1 h 05 min`` (``—`` without data)."""
    return "—" if count == 0 else duration(round(seconds / 60))


@signed_in
async def agencies(request: Request, session: Session, officer: Officer) -> Response:
    """Open, unacknowledged and overdue incidents per agency, and how fast each responds."""

    def fetch() -> tuple[list[AgencyWorkload], list[ResponseTimes]]:
        return officer.ledger.workload(), officer.ledger.response_times("agency")

    loads, times = await run_in_threadpool(fetch)
    loads.sort(key=lambda w: (-w.overdue, -w.unacknowledged, -w.open, w.agency))
    return render(
        request,
        session,
        "agencies.html",
        loads=loads,
        times={t.key: t for t in times},
    )


# --- an incident ------------------------------------------------------------------------------

#: The actions the page offers. The ledger has no call that says what a caller may do, so
#: :func:`offered` mirrors its rules (services/ledger/domain/incident.py) for what is shown
#: only: every action goes to the ledger as the officer, and the ledger decides.
ACTIONS = (
    "verify",
    "reject",
    "assign",
    "add_supporting",
    "propose_handover",
    "accept_handover",
    "log_action",
    "escalate",
    "record_decision",
    "resolve",
    "request_closure",
    "approve_closure",
    "reopen",
    "assess_severity",
    "merge",
    "correct",
)
REJECTION_REASONS = ("INVALID", "HOAX", "OUT_OF_SCOPE")
#: How long a decision recorded on the page stays in force unless the officer says otherwise.
DECISION_HOURS = 24
#: The longest a decision may be given on the page (the ledger's own limit may be shorter).
MAX_DECISION_HOURS = 24 * 366


def offered(officer: Officer, incident: Incident) -> set[str]:
    """The actions the officer's role may take on the incident as it stands."""
    status = incident.status.value
    if officer.role == Role.AUDITOR.value:
        return set()  # auditors read everything and write nothing
    coordinator = officer.role == Role.COORDINATOR.value
    lead = bool(incident.lead_agency) and officer.agency == incident.lead_agency
    involved = lead or officer.agency in incident.supporting_agencies
    handover = incident.pending_handover
    rules = {
        "verify": coordinator and status == "REPORTED",
        "reject": coordinator and status == "REPORTED",
        "assign": coordinator and status in {"VERIFIED", "REOPENED"},
        "add_supporting": (coordinator or lead)
        and status in {"VERIFIED", "ASSIGNED", "RESPONDING", "REOPENED"},
        "propose_handover": (coordinator or lead)
        and handover is None
        and status in {"ASSIGNED", "RESPONDING"},
        "accept_handover": handover is not None
        and officer.agency == handover.to_agency
        and status in {"ASSIGNED", "RESPONDING"},
        # The coordinator may log one too; the page offers it to those doing the work.
        "log_action": involved and status in {"ASSIGNED", "RESPONDING", "RESOLVED", "REOPENED"},
        "escalate": (coordinator or involved or officer.agency == incident.reporter.agency)
        and status in {"REPORTED", "VERIFIED", "ASSIGNED", "RESPONDING", "REOPENED"},
        "record_decision": (coordinator or involved)
        and status in {"VERIFIED", "ASSIGNED", "RESPONDING", "RESOLVED", "REOPENED"},
        "resolve": (coordinator or lead) and status == "RESPONDING",
        "request_closure": lead and status == "RESOLVED" and not incident.close_requested,
        "approve_closure": coordinator and status == "RESOLVED" and incident.close_requested,
        "reopen": (coordinator or lead) and status in {"RESOLVED", "CLOSED"},
        # Until the incident ends: the coordinator, the agencies involved and the reporter's.
        "assess_severity": status not in NOT_ASSESSED
        and (coordinator or involved or officer.agency == incident.reporter.agency),
        # A duplicate report, before triage (the ledger checks the target is live).
        "merge": coordinator and status == "REPORTED",
    }
    return {action for action, allowed in rules.items() if allowed}


#: The statuses in which an incident's severity is no longer assessed (they end it).
NOT_ASSESSED = frozenset({"CLOSED", "REJECTED", "MERGED"})
#: The fields the page offers to correct, per event type: the free texts among the ledger's
#: correctable fields (severity has its own action; the others, coded values and times, are
#: corrected with ``ledgerctl correct``).
CORRECTABLE_TEXTS = {
    "Reported": ("title", "description"),
    "ActionLogged": ("action",),
    "Resolved": ("resolution",),
    "DecisionRecorded": ("forum", "summary", "rationale"),
}
#: How the corrected fields read (translated where shown); another field shows its code.
FIELD_LABELS = {
    "title": N_("Title"),
    "description": N_("Description"),
    "severity": N_("Severity"),
    "category": N_("Category"),
    "action": N_("Action taken"),
    "resolution": N_("Resolution"),
    "forum": N_("Forum"),
    "summary": N_("Decision"),
    "rationale": N_("Rationale"),
    "location.kecamatan": N_("Kecamatan"),
    "location.desa": N_("Desa"),
    "location.tps": N_("Polling station (TPS)"),
}


def worded_band(code: str) -> str:
    """An IKP band as the page shows it: in words in English too (``High vulnerability``)."""
    return labels.band(code, worded=True)


def worded_event(code: str) -> str:
    """An event's type in the page's words (``Decision recorded``, in English too)."""
    return labels.event_type(code, worded=True)


def worded_rejection(code: str) -> str:
    """A rejection reason in the page's language, in words in English too (``Hoax``)."""
    return labels.rejection(code, worded=True)


def field_label(field: str) -> str:
    return _(FIELD_LABELS[field]) if field in FIELD_LABELS else field


#: The correctable fields that hold a time (the ledger records them in UTC).
TIME_FIELDS = frozenset({"occurred_at", "valid_from", "valid_until"})


def corrected_value(value: object, field: str, zone: tzinfo) -> str:
    """A correction's old or new value as the room reads it: a time in the regency's
    ``zone``, like every other time of the page (a text, or a time recorded without its
    offset, as recorded)."""
    text = str(value)
    if field not in TIME_FIELDS:
        return text
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    return local_time(moment, zone, seconds=True) if moment.tzinfo is not None else text


#: How many other incidents of the kecamatan the merge form offers (the newest, one page).
MERGE_CANDIDATES = 50


@dataclass(frozen=True)
class Correctable:
    """A text of an earlier event the officer may correct, with its value as it stands."""

    key: str  # "<event id>:<field>", the form's value
    event: IncidentEvent
    field: str
    value: str


def correctables(officer: Officer, history: list[IncidentEvent]) -> list[Correctable]:
    """The texts the officer may correct: of the events their agency recorded (any event for
    the coordinator), each with the value its corrections left (the ledger checks it is the
    recorded one, and who may correct)."""
    if officer.role == Role.AUDITOR.value:
        return []
    values: dict[tuple[str, str], str] = {}
    for event in history:
        payload = event.payload
        if event.type == "Corrected":
            key = (str(payload.get("corrected_event_id", "")), str(payload.get("field", "")))
            if key in values:
                values[key] = str(payload.get("new_value", ""))
            continue
        for field in CORRECTABLE_TEXTS.get(event.type, ()):
            values[(event.event_id, field)] = str(payload.get(field) or "")
    coordinator = officer.role == Role.COORDINATOR.value
    return [
        Correctable(f"{event.event_id}:{field}", event, field, values[(event.event_id, field)])
        for event in history
        if coordinator or event.actor.agency == officer.agency
        for field in CORRECTABLE_TEXTS.get(event.type, ())
    ]


def decision_hours(text: str) -> int:
    """The hours a decision stays in force, from the form (the default when left empty)."""
    if not text.strip():
        return DECISION_HOURS
    hours = whole(text.strip())
    if hours is None or not 1 <= hours <= MAX_DECISION_HOURS:
        raise ValueError(
            _("The decision lasts a whole number of hours, from 1 to {most}.").format(
                most=MAX_DECISION_HOURS
            )
        )
    return hours


def local_input(text: str, label: str, zone: tzinfo) -> datetime | None:
    """A date and time the form took in the regency's ``zone``, the room's clock (a
    ``datetime-local`` input: ``2026-12-08T18:00``), as an instant; None when left empty."""
    if not text.strip():
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            _("{label}: give a date and a time in {zone}, such as 2026-12-08 18:00.").format(
                label=label, zone=zone_name(zone)
            )
        ) from None
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)).astimezone(UTC)


def decision_window(
    now: datetime, starts: str, ends: str, hours: str, zone: tzinfo
) -> tuple[datetime, datetime]:
    """A decision's validity from the form, its dates and times in the regency's ``zone``:
    from its start (now when left empty) until its end, or for its hours (24 when neither
    is given). The ledger checks that it ends after it starts and is not too far ahead, and
    says so in the regency's zone too."""
    start = local_input(starts, _("In force from"), zone) or now
    end = local_input(ends, _("In force until"), zone)
    if end is None:
        return start, start + timedelta(hours=decision_hours(hours))
    if hours.strip():
        # Either says when the decision ends: one of them would be silently dropped.
        raise ValueError(_("Give when the decision ends or how many hours it lasts, not both."))
    return start, end


async def incident_page(
    request: Request,
    session: Session,
    officer: Officer,
    error: str = "",
    kept: KeptForm | None = None,
) -> Response:
    name = f"incidents/{request.path_params['incident']}"
    after = room_of(request).hub.position  # before the reads: nothing falls in between

    def fetch() -> tuple[Incident, list[IncidentEvent], list[Evidence] | None, list[Incident]]:
        incident = officer.ledger.get_incident(name)
        history = list(officer.ledger.incident_events(name))
        try:
            evidence: list[Evidence] | None = officer.ledger.list_evidence(name)
        except (PermissionDenied, Unavailable):
            evidence = None  # not for this agency's eyes, or a ledger without its store
        targets: list[Incident] = []
        if "merge" in offered(officer, incident):
            # The newest of its kecamatan, one page of the ledger's: a duplicate is recent.
            same_place = officer.ledger.list_incidents(
                f'kecamatan = "{incident.location.kecamatan}"',
                page_size=MERGE_CANDIDATES,
                newest_first=True,
            )
            targets = [
                i
                for i in itertools.islice(same_place, MERGE_CANDIDATES)
                if i.name != incident.name
                and i.chain_failure is None
                and i.status.value not in {"REJECTED", "MERGED"}
            ]
        return incident, history, evidence, targets

    try:
        incident, history, evidence, targets = await run_in_threadpool(fetch)
    except NotFound:
        return not_found(request, session, _("No such incident."))
    except InvalidArgument as refused:
        if refused.field != "name":
            raise
        # Not an incident's id at all (a mistyped or cut address): no such incident either.
        return not_found(request, session, _("No such incident."))
    actions = offered(officer, incident)
    corrections = correctables(officer, history)
    if corrections:
        actions.add("correct")
    if not targets:
        actions.discard("merge")
    corrected = {e.event_id: e for e in history}
    return render(
        request,
        session,
        "incident.html",
        occurred=occurred_apart(history),
        # Each event recorded well after it happened (a field device's backlog, a day
        # replayed): its recording alone read as news.
        happened_before={
            e.event_id
            for e in history
            if e.occur_time is not None
            and e.record_time is not None
            and e.record_time - e.occur_time >= OCCURRED_APART
        },
        incident=incident,
        history=history,
        evidence=evidence,
        images=IMAGE_TYPES,
        actions=actions,
        corrections=corrections,
        corrected=corrected,
        targets=targets,
        reasons=REJECTION_REASONS,
        request_id=uuid.uuid4().hex,
        error=error,
        kept=kept or KeptForm(),
        after=after,
        event_words={kind: worded_event(kind) for kind in EVENT_TYPES},
        read_people=may_read_people(room_of(request), officer, incident),
        # A read is a command of its own: its own request id (the actions' stays unused).
        read_request_id=uuid.uuid4().hex,
    )


#: How far apart a report's occurrence and its recording must be to be shown both: a
#: field device's backlog, synced days later, or a report entered after the fact.
OCCURRED_APART = timedelta(minutes=5)


def occurred_apart(history: Sequence[IncidentEvent]) -> datetime | None:
    """When the reported incident happened, where that is not about when the ledger
    recorded the report; None otherwise. Without it a backlog synced ten days late read
    as news on the page (its board's "reported" is the recording)."""
    report = next((e for e in history if e.type == "Reported"), None)
    if report is None or report.occur_time is None or report.record_time is None:
        return None
    apart = abs(report.record_time - report.occur_time) >= OCCURRED_APART
    return report.occur_time if apart else None


@signed_in
async def alive(request: Request, session: Session, officer: Officer) -> Response:
    """Nothing but the session's idle end slid (by :func:`signed_in`): typing into a form
    says the officer is there (static/forms.js)."""
    return Response(status_code=204)


#: An incident's id as its page's address has it.
INCIDENT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


@signed_in
async def incident(request: Request, session: Session, officer: Officer) -> Response:
    key = request.path_params["incident"]
    if INCIDENT_ID.fullmatch(key):
        return await incident_page(request, session, officer)
    # A reference code, as read out over the phone (/incidents/MKM-7QK3-9V): the ledger
    # knows its incident (it said "no such incident" before).
    try:
        found = await run_in_threadpool(lambda: officer.ledger.get_incident(reference=key))
    except NotFound:
        return not_found(request, session, _("No such incident."))
    except InvalidArgument as refused:
        if refused.reason != "REFERENCE_MISTYPED":
            return not_found(request, session, _("No such incident."))
        # A code read out over the phone, one character misheard: not "no such incident",
        # which sends the officer looking elsewhere; the code's check says it was misheard.
        page = not_found(
            request,
            session,
            _(
                "The reference code is mistyped: a character is wrong or two are swapped. "
                "Read it back to whoever gave it."
            ),
        )
        page.status_code = 400
        return page
    return RedirectResponse(f"/{found.name}", status_code=303)


@signed_in
async def find(request: Request, session: Session, officer: Officer) -> Response:
    """The board's "reference code" field: to the incident's page (which takes a code as
    typed, any case, with or without its prefix or dashes; a mistyped one is said so)."""
    code = "".join(request.query_params.get("code", "").split())
    if not code or "/" in code:
        return RedirectResponse("/board", status_code=303)
    return RedirectResponse(f"/incidents/{quote(code, safe='-')}", status_code=303)


def not_found(request: Request, session: Session, message: str) -> Response:
    """A 404 in the page's frame, with the way back to the board."""
    page = render(request, session, "not_found.html", message=message)
    page.status_code = 404
    return page


def may_read_people(room: Room, officer: Officer, incident: Incident) -> bool:
    """Whether the page offers to read the incident's personal data: someone's data is
    present and the reference data lets the officer's agency read it (its ``readers``, and
    the reporting agency). The ledger decides, and records the read."""
    reporting = officer.agency == incident.reporter.agency
    if not (reporting or officer.agency in room.reference.personal_data.readers):
        return False
    # An anonymous reporter is for the reporting agency's eyes only: a form offered to
    # another reader for such a report alone ended in the ledger's refusal, the purpose lost.
    return any(
        s.state.value == "PRESENT" and (reporting or not s.anonymous)
        for s in incident.data_subjects
    )


@signed_in
async def read_people(request: Request, session: Session, officer: Officer) -> Response:
    """The incident's personal data, read as the officer with the purpose stated (the
    ledger records the read before it discloses anything). Shown in this answer only: a
    POST, never in a URL, never cached, never logged."""
    form = await checked_form(request, session)
    if form is None:
        return forbidden(_("The form has expired or was not sent by this page. Reload it."))
    name = f"incidents/{request.path_params['incident']}"
    purpose = form.get("purpose", "")
    try:
        _result, subjects = await run_in_threadpool(
            lambda: officer.ledger.read_personal_data(
                name, purpose, request_id=form.get("request_id") or None
            )
        )
    except NotFound:
        return Response(_("No such incident."), status_code=404, media_type="text/plain")
    except LedgerError as failure:
        log.info(
            "situation_room.personal_data_refused",
            incident=name,
            agency=officer.agency,
            reason=failure.reason,
        )
        message = (
            _("State the purpose of the read in words: at least 5 letters or digits.")
            if failure.field == "purpose" and failure.reason == "INVALID_FIELD"
            else said(failure)
        )
        kept = KeptForm.of("personal-data", await request.form())
        page = await incident_page(request, session, officer, error=message, kept=kept)
        # The page again, with the refusal said; its status says it too (a refused
        # agency's read answered 200, as if something had been read).
        if page.status_code == 200:
            page.status_code = 403 if isinstance(failure, PermissionDenied) else 400
        return page
    log.info(
        "situation_room.personal_data_read",
        incident=name,
        agency=officer.agency,
        subjects=len(subjects),
    )
    response = render(
        request, session, "people.html", incident=name, subjects=subjects, purpose=purpose.strip()
    )
    response.headers["Cache-Control"] = "no-store"
    return response


#: The evidence the incident page shows as a thumbnail (the browser scales the file itself).
IMAGE_TYPES = frozenset({"image/jpeg", "image/png"})


@signed_in
async def evidence_file(request: Request, session: Session, officer: Officer) -> Response:
    """One evidence file, fetched as the officer: the ledger checks it against its recorded
    digest and records the download (each thumbnail shown is a download by the officer)."""
    incident, event = request.path_params["incident"], request.path_params["event"]
    name = f"incidents/{incident}/evidence/{event}"
    with tempfile.NamedTemporaryFile(prefix="evidence-", delete=False) as spool:
        path = Path(spool.name)
    try:
        found = await run_in_threadpool(officer.ledger.download_evidence, name, path)
    except NotFound:
        path.unlink(missing_ok=True)
        return Response(_("No such evidence."), status_code=404, media_type="text/plain")
    except PermissionDenied:
        path.unlink(missing_ok=True)
        return forbidden(_("This evidence is for the agencies involved in the incident."))
    except DataLoss as failure:
        # Changed or gone in the evidence store: not "the ledger refused this request", a
        # refusal the officer could get round, but evidence that no longer matches its record.
        path.unlink(missing_ok=True)
        log.error("situation_room.evidence_changed", evidence=name, reason=failure.reason)
        return Response(
            _(
                "This evidence no longer matches what was recorded: its file was changed or "
                "lost in the evidence store. Nothing of it is shown. Tell the auditors "
                "(ledger-audit verify --deep names every such file)."
            ),
            status_code=502,
            media_type="text/plain",
        )
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    disposition = "inline" if found.media_type in IMAGE_TYPES else "attachment"
    return FileResponse(
        path,
        media_type=found.media_type,
        filename=found.file_name,
        content_disposition_type=disposition,
        background=BackgroundTask(path.unlink, missing_ok=True),
    )


@signed_in
async def act(request: Request, session: Session, officer: Officer) -> Response:
    """One action on the incident, as the officer, with the version the page showed."""
    form = await checked_form(request, session)
    if form is None:
        return forbidden(_("The form has expired or was not sent by this page. Reload it."))
    action = request.path_params["action"]
    if action not in ACTIONS:
        return Response(_("No such action."), status_code=404, media_type="text/plain")
    name = f"incidents/{request.path_params['incident']}"
    version = form.get("version", "")
    common: dict[str, Any] = {
        "expected_version": whole(version) or 0,
        "request_id": form.get("request_id") or uuid.uuid4().hex,
    }
    ledger = officer.ledger
    text = form.get
    now = datetime.now(UTC)
    zone = room_of(request).zone
    # The other deciding agencies (checkboxes: several values; the form is read once, kept).
    others = [v for v in (await request.form()).getlist("deciding") if isinstance(v, str)]

    def decide() -> object:
        start, until = decision_window(
            now, text("valid_from", ""), text("valid_until", ""), text("hours", ""), zone
        )
        deciding = [officer.agency, *others]
        return ledger.record_decision(
            name,
            list(dict.fromkeys(a for a in deciding if a)),
            text("forum", ""),
            text("summary", ""),
            rationale=text("rationale", ""),
            valid_from=start,
            valid_until=until,
            **common,
        )

    def correct() -> object:
        # The value to correct as the timeline has it now; the version the page showed
        # (expected_version) refuses it when the incident changed since the form was shown.
        chosen = text("text", "")
        found = [
            c for c in correctables(officer, list(ledger.incident_events(name))) if c.key == chosen
        ]
        if not found:
            raise ValueError(_("Choose a text to correct."))
        return ledger.correct(
            name,
            found[0].event.event_id,
            found[0].field,
            found[0].value,
            text("new_value", ""),
            reason=text("reason", ""),
            **common,
        )

    calls: dict[str, Callable[[], object]] = {
        "verify": lambda: ledger.verify(name, comment=text("comment", ""), **common),
        "reject": lambda: ledger.reject(
            name, text("reason", "INVALID"), text("comment", ""), **common
        ),
        "assign": lambda: ledger.assign_lead(name, text("agency", ""), **common),
        "add_supporting": lambda: ledger.add_supporting_agency(
            name, text("supporting", ""), comment=text("comment", ""), **common
        ),
        "propose_handover": lambda: ledger.propose_handover(
            name, text("to_agency", ""), reason=text("reason", ""), **common
        ),
        "accept_handover": lambda: ledger.accept_handover(
            name, comment=text("comment", ""), **common
        ),
        "log_action": lambda: ledger.log_action(name, text("action", ""), **common),
        "escalate": lambda: ledger.escalate(name, text("reason", ""), **common),
        "record_decision": decide,
        "resolve": lambda: ledger.resolve(name, text("resolution", ""), **common),
        "request_closure": lambda: ledger.request_closure(
            name, comment=text("comment", ""), **common
        ),
        "approve_closure": lambda: ledger.approve_closure(
            name, comment=text("comment", ""), **common
        ),
        "reopen": lambda: ledger.reopen(name, text("reason", ""), **common),
        "assess_severity": lambda: ledger.assess_severity(
            name, text("severity", ""), comment=text("comment", ""), **common
        ),
        "merge": lambda: ledger.merge(
            name, text("target", ""), comment=text("comment", ""), **common
        ),
        "correct": correct,
    }
    try:
        await run_in_threadpool(calls[action])
    except NO_ANSWER as failure:
        # Not the incident page again: it asks the same ledger, a second wait as long, and
        # then said its failure as plain text, the typed words lost. The form, kept, can
        # be sent again as it is: its request id records it at most once.
        log.warning("situation_room.ledger_failed", path=request.url.path, error=str(failure))
        posted = [(k, v) for k, v in (await request.form()).multi_items() if isinstance(v, str)]
        return unavailable_page(request, session, resend=posted, back=f"/{name}", action=action)
    except (LedgerError, ValueError) as failure:
        if isinstance(failure, VersionConflict) and failure.current_version > (whole(version) or 0):
            # "Read it again" said the ledger; the page below is that reading.
            message = _(
                "The incident changed while this page was open (it is at version {version} "
                "now): it is shown below as it is. What you typed is kept in its form: send "
                "it again if it still holds."
            ).format(version=failure.current_version)
        elif isinstance(failure, LedgerError):
            message = local_times(action_refusal(failure), room_of(request).zone)
        else:
            message = str(failure)
        kept = KeptForm.of(action, await request.form())
        return await incident_page(request, session, officer, error=message, kept=kept)
    log.info("situation_room.acted", incident=name, action=action, agency=officer.agency)
    return RedirectResponse(f"/{name}", status_code=303)


#: The page's answer to a query the ledger refused, by the refusal's kind (else 503).
REFUSED_STATUS: tuple[tuple[type[LedgerError], int], ...] = (
    (InvalidArgument, 400),
    (PermissionDenied, 403),
    (NotFound, 404),
    (FailedPrecondition, 409),
    (Aborted, 409),
    (AlreadyExists, 409),
    (ResourceExhausted, 429),
)


#: The ledger's failures to answer (not refusals): a restart, its host away.
NO_ANSWER = (Unavailable, DeadlineExceeded, Cancelled)
#: How often a page whose ledger did not answer asks again by itself.
UNAVAILABLE_RETRY_SECONDS = 10
#: The fields of an action's form that are the page's own, not what the officer typed.
FORM_PLUMBING = frozenset({"csrf", "request_id", "version", "shown"})
#: Each action as its form's button says it (templates/incident.html): the page that asks
#: to send a form again names it (it showed only the typed words, and the officer had to
#: remember which form they were typed into).
ACTION_LABELS = {
    "verify": N_("Verify"),
    "reject": N_("Reject"),
    "assign": N_("Assign the lead"),
    "log_action": N_("Log the action"),
    "add_supporting": N_("Add the supporting agency"),
    "propose_handover": N_("Propose the handover"),
    "accept_handover": N_("Accept the handover"),
    "escalate": N_("Escalate"),
    "record_decision": N_("Record the decision"),
    "resolve": N_("Resolve"),
    "request_closure": N_("Request closure"),
    "approve_closure": N_("Close the incident"),
    "assess_severity": N_("Assess the severity"),
    "merge": N_("Merge as a duplicate"),
    "correct": N_("Record the correction"),
    "reopen": N_("Reopen"),
}


def unavailable_page(
    request: Request,
    session: Session,
    *,
    resend: list[tuple[str, str]] | None = None,
    back: str = "",
    action: str = "",
) -> Response:
    """The ledger did not answer (503): in the page's frame; for a form (``resend``, the
    fields posted), which action of which incident (its code and title, as the form's page
    showed them: ``shown``), what was typed and a button that sends the same form again."""
    typed = [
        (_(ACTION_FIELDS[key]) if key in ACTION_FIELDS else key, value)
        for key, value in resend or ()
        if key not in FORM_PLUMBING and value.strip()
    ]
    page = render(
        request,
        session,
        "unavailable.html",
        resend=resend or [],
        typed=typed,
        action=request.url.path,
        action_label=_(ACTION_LABELS[action]) if action in ACTION_LABELS else "",
        shown=dict(resend or ()).get("shown", ""),
        back=back,
        retry_seconds=UNAVAILABLE_RETRY_SECONDS,
    )
    page.status_code = 503
    return page


async def ledger_failed(request: Request, error: Exception) -> Response:
    """A query the ledger refused or could not answer: its token no longer valid signs the
    officer out; one it did not answer is said so (503, a warning in the log); a refusal is
    the ledger's reason, in the page's language, with the status of its kind (502 for a kind
    the page has none for)."""
    if isinstance(error, Unauthenticated):
        return without_cookie(request, RedirectResponse("/login", status_code=303))
    if not isinstance(error, LedgerError) or isinstance(error, NO_ANSWER):
        log.warning("situation_room.ledger_failed", path=request.url.path, error=str(error))
        session = session_of(request)
        if (
            session is not None
            and session.officer is not None
            and request.method == "GET"
            and "text/html" in request.headers.get("accept", "")
        ):
            # A page opened in the browser: the page's frame, and it tries again by itself
            # (the scripts' requests, rows and map data, keep the plain answer they read).
            return unavailable_page(request, session)
        message = _("The ledger did not answer; try again in a moment.")
        return Response(message, status_code=503, media_type="text/plain")
    log.info("situation_room.ledger_refused", path=request.url.path, error=str(error))
    # A refusal of another kind (DATA_LOSS: a record changed in the store) is the ledger's
    # answer too: 502, never the 503 of no answer, which the page says as "try again".
    status = next((code for kind, code in REFUSED_STATUS if isinstance(error, kind)), 502)
    message = _("The ledger refused this request: {reason}").format(reason=said(error))
    return Response(message, status_code=status, media_type="text/plain")


async def home(request: Request) -> Response:
    return RedirectResponse("/board", status_code=303)


def build_app(settings: SituationRoomSettings, token: Callable[[], str]) -> Starlette:
    """The web application; its live subscription (with the token ``token()`` returns when
    it subscribes) starts and stops with it."""
    reference = ReferenceData.load(settings.reference_file)
    geojson = json.loads(settings.map_file.read_text(encoding="utf-8"))

    def connect() -> NotifierClient:
        return NotifierClient(settings.notifier_address, token())

    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["_"] = _
    templates.env.globals["span"] = span
    templates.env.filters["number"] = format_number
    templates.env.filters["size"] = format_size
    templates.env.filters["band"] = worded_band
    templates.env.filters["isolated"] = isolated
    templates.env.filters["event"] = worded_event
    templates.env.filters["rejection"] = worded_rejection
    templates.env.filters["field"] = field_label
    # One channel to the ledger for every officer: each call carries the officer's token.
    channel_owner = LedgerClient(settings.ledger_address, "", language="id")

    def officer_client(token: str) -> LedgerClient:
        return LedgerClient(
            channel=channel_owner.channel,
            token=token,
            language="id",
            timeout=LEDGER_TIMEOUT_SECONDS,
            retry=LEDGER_RETRY,
        )

    secret = settings.session_key or shared_secret(settings.data_dir / DEV_KEY_FILE_NAME)
    room = Room(
        settings,
        reference,
        Sessions(
            secret,
            settings.session_minutes * 60,
            officer_client,
            idle=settings.session_idle_minutes * 60,
        ),
        SignInThrottle(),
        Hub(connect),
        geojson,
        templates,
        LedgerWatch(channel_owner.reachable),
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        room.hub.start()
        room.ledger.start()
        try:
            yield
        finally:
            room.ledger.stop()
            room.hub.stop()
            channel_owner.close()

    routes = [
        Route("/", home),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/language/{language}", language, methods=["GET"]),
        Route("/board", board),
        Route("/find", find),
        Route("/board/rows", board_rows),
        Route("/events", events),
        Route("/map", map_page),
        Route("/decisions", decisions),
        Route("/decisions/rows", decisions_rows),
        Route("/agencies", agencies),
        Route("/map/data.json", map_data),
        Route("/report", report_page, methods=["GET"]),
        Route("/report", report, methods=["POST"]),
        Route("/alive", alive, methods=["POST"]),
        Route("/incidents/{incident}", incident, methods=["GET"]),
        Route("/incidents/{incident}/evidence/{event}", evidence_file, methods=["GET"]),
        # Before the actions' route, which would take it for an action.
        Route("/incidents/{incident}/personal-data", read_people, methods=["POST"]),
        Route("/incidents/{incident}/{action}", act, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        Mount(
            # Leaflet, from npm (tools/package.json; the image's own copy in production).
            "/vendor/leaflet",
            StaticFiles(directory=str(settings.leaflet_dir), check_dir=False),
        ),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={LedgerError: ledger_failed},
        # The request log outermost: it sees every answer, in whatever language.
        middleware=[Middleware(RequestLog), Middleware(Languages)],
    )
    # The names of the reference data, in the page's language.
    templates.env.filters["category"] = room.category
    templates.env.filters["severity"] = room.severity
    templates.env.filters["status"] = room.status_label
    templates.env.filters["role"] = room.role_label
    templates.env.filters["kecamatan"] = room.kecamatan
    templates.env.filters["agency"] = room.agency
    # Times in the regency's zone.
    templates.env.filters["local"] = room.time
    templates.env.filters["corrected"] = room.corrected
    app.state.room = room
    return app

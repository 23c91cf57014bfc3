"""Signed-in officers: server-side sessions behind a signed, HttpOnly, SameSite=Strict cookie.

The cookie holds only a random session id, signed with a key made at start (itsdangerous),
so a forged or altered cookie is refused and a restart signs everyone out. The session keeps
the officer's bearer token (never sent to the browser), its agency and role, and the CSRF
token that every form must carry. Sessions expire ``lifetime`` seconds after sign-in.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

from itsdangerous import BadSignature, TimestampSigner

from incidentledger_client import LedgerClient
from services.common.limits import FailureWindow

COOKIE = "situation_room"
#: At most this many signed-in sessions are kept; the oldest go first.
MAX_SESSIONS = 10_000
ALL = ""  # the key of every failure, whichever address
#: At most this many sessions that have not signed in (the sign-in form's): anyone can make
#: them, so they are capped apart and never push out a signed-in officer.
MAX_ANONYMOUS = 2_000
#: A session that has not signed in lasts this long (the sign-in form's CSRF token).
ANONYMOUS_SECONDS = 900.0


@dataclass
class Officer:
    """Who is signed in: the agency (as the reference data names it), its role, the token."""

    agency: str
    role: str
    token: str = field(repr=False)
    ledger: LedgerClient = field(repr=False)


@dataclass
class Session:
    id: str
    csrf: str
    expires: float
    officer: Officer | None = None


class Sessions:
    """The sessions of one web process (its only state)."""

    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self._signer = TimestampSigner(secrets.token_bytes(32), salt="situation-room-session")
        self._sessions: dict[str, Session] = {}

    def new(self, officer: Officer | None = None) -> Session:
        self._prune(signed_in=officer is not None)
        lifetime = self.lifetime if officer is not None else ANONYMOUS_SECONDS
        session = Session(
            secrets.token_urlsafe(24), secrets.token_urlsafe(24), time.time() + lifetime, officer
        )
        self._sessions[session.id] = session
        return session

    def cookie_value(self, session: Session) -> str:
        return self._signer.sign(session.id).decode()

    def find(self, cookie: str | None) -> Session | None:
        """The live session of a cookie; None for no cookie, a bad signature or an expired one."""
        if not cookie:
            return None
        try:
            sid = self._signer.unsign(cookie, max_age=int(self.lifetime) + 1).decode()
        except BadSignature:
            return None
        session = self._sessions.get(sid)
        if session is None or session.expires < time.time():
            if session is not None:
                self.drop(session)
            return None
        return session

    def alive(self, session: Session) -> bool:
        """Whether the session is still signed in (not signed out, not expired)."""
        return self._sessions.get(session.id) is session and session.expires >= time.time()

    def drop(self, session: Session) -> None:
        self._sessions.pop(session.id, None)
        if session.officer is not None:
            session.officer.ledger.close()

    def close(self) -> None:
        for session in list(self._sessions.values()):
            self.drop(session)

    def _prune(self, *, signed_in: bool) -> None:
        """Drop the expired sessions, then the oldest of the kind about to be added if
        there are too many of it."""
        now = time.time()
        for session in [s for s in self._sessions.values() if s.expires < now]:
            self.drop(session)
        kind = [s for s in self._sessions.values() if (s.officer is not None) == signed_in]
        excess = len(kind) - ((MAX_SESSIONS if signed_in else MAX_ANONYMOUS) - 1)
        for session in sorted(kind, key=lambda s: s.expires)[: max(0, excess)]:
            self.drop(session)


def csrf_ok(session: Session | None, submitted: object) -> bool:
    """Whether a form's ``csrf`` field is the session's token (compared in constant time)."""
    return (
        session is not None
        and isinstance(submitted, str)
        and hmac.compare_digest(session.csrf.encode(), submitted.encode())
    )


class SignInThrottle:
    """Failed sign-ins, counted per browser address and in all (the ledger's own
    :class:`~services.common.limits.FailureWindow`).

    The ledger throttles its callers' failed authentications by peer address, and every
    sign-in reaches it from this one process: without a limit here, someone trying tokens
    at the form would get the page itself blocked for everyone. So the page refuses
    sign-ins from an address after ``per_client`` failures within ``window`` seconds, and
    every sign-in after ``total`` failures (below the ledger's default of 30 a minute).
    """

    def __init__(self, per_client: int = 5, total: int = 15, window: float = 60.0) -> None:
        self.per_client, self.total, self.window = per_client, total, window
        self._by_client = FailureWindow(per_client, window, MAX_SESSIONS)
        self._all = FailureWindow(total, window, 1)

    def blocked(self, client: str) -> bool:
        return self._all.blocked(ALL) > 0 or self._by_client.blocked(client) > 0

    def failed(self, client: str) -> None:
        self._all.fail(ALL)
        self._by_client.fail(client)

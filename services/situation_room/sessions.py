"""Signed-in officers: sessions sealed in their own HttpOnly, SameSite=Strict cookie.

The page keeps no session of its own (the issue: no state the ledger does not have). The
cookie holds the officer's agency, role and bearer token, the CSRF token and the session's
end, encrypted and authenticated with Fernet (AES-128-CBC and HMAC-SHA256, from
``cryptography``) under a key derived from ``SITUATION_ROOM_SESSION_KEY``: the browser cannot
read the token nor alter anything, a restart keeps everyone signed in, and every page process
with the same key accepts the same cookie. What this gives up: signing out clears the cookie
in that browser, but a copy of it taken before stays valid (the page has nowhere to remember
that it was signed out). So a signed-in session ends twice over: when it has not been used for
``SITUATION_ROOM_SESSION_IDLE_MINUTES`` (every answer to the officer re-seals the cookie with
the time it was last used, ``seen``: a sliding end), and in any case
``SITUATION_ROOM_SESSION_MINUTES`` after signing in (the absolute end, ``expires``). A copy
taken before signing out is refused once it has been left unused for the idle time; one kept
in use keeps working until the absolute end.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from incidentledger_client import LedgerClient
from services.common.limits import FailureWindow

COOKIE = "situation_room"
#: Failed sign-ins are counted for this many browser addresses at most.
MAX_CLIENTS = 10_000
ALL = ""  # the key of every failure, whichever address
#: A session that has not signed in lasts this long (the sign-in form's CSRF token).
ANONYMOUS_SECONDS = 900.0
#: What the key is derived for (HKDF's info): the same secret gives other uses other keys.
KEY_PURPOSE = b"incidentledger situation-room session cookie v1"


@dataclass(frozen=True)
class Officer:
    """Who is signed in: the agency (as the reference data names it), its role, the token,
    and a client of the ledger that calls with that token."""

    agency: str
    role: str
    token: str = field(repr=False)
    ledger: LedgerClient = field(repr=False, compare=False)


@dataclass(frozen=True)
class Session:
    csrf: str
    #: The absolute end (signed in: the sign-in time plus the session's lifetime).
    expires: float
    officer: Officer | None = None


def cookie_key(secret: bytes) -> bytes:
    """The Fernet key of a secret of any length (at least 16 bytes; checked by the settings)."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=KEY_PURPOSE).derive(secret)
    return base64.urlsafe_b64encode(derived)


class Sessions:
    """Sessions sealed in cookies under one key; ``connect(token)`` makes an officer's client."""

    def __init__(
        self,
        secret: bytes,
        lifetime: float,
        connect: Callable[[str], LedgerClient],
        clock: Callable[[], float] = time.time,
        idle: float | None = None,
    ) -> None:
        """``lifetime``: seconds from signing in to the absolute end; ``idle``: seconds a
        signed-in cookie stays valid after it was last sealed (None: the lifetime)."""
        self.lifetime = lifetime
        self.idle = lifetime if idle is None else min(idle, lifetime)
        self.connect = connect
        self._fernet = Fernet(cookie_key(secret))
        self._clock = clock

    def new(self, officer: Officer | None = None) -> Session:
        lifetime = self.lifetime if officer is not None else ANONYMOUS_SECONDS
        return Session(secrets.token_urlsafe(24), self._clock() + lifetime, officer)

    def now(self) -> float:
        return self._clock()

    def cookie_value(self, session: Session) -> str:
        """The sealed cookie of ``session``, last used now (``seen``): sealing it again for
        each answer is what slides its idle end."""
        sealed: dict[str, object] = {
            "csrf": session.csrf,
            "expires": session.expires,
            "seen": self._clock(),
        }
        if session.officer is not None:
            officer = session.officer
            sealed.update(agency=officer.agency, role=officer.role, token=officer.token)
        payload = json.dumps(sealed, separators=(",", ":")).encode()
        return self._fernet.encrypt_at_time(payload, int(self._clock())).decode("ascii")

    def cookie_seconds(self, session: Session) -> int:
        """How long the browser keeps a cookie sealed now: until the idle end (signed in)
        or the absolute end, whichever is sooner."""
        end = session.expires
        if session.officer is not None:
            end = min(end, self._clock() + self.idle)
        return max(0, int(end - self._clock()))

    def find(self, cookie: str | None) -> Session | None:
        """The session of a cookie; None for no cookie, an altered or foreign one (another
        key), one past its end, or a signed-in one unused for longer than the idle time."""
        if not cookie:
            return None
        try:
            sealed = json.loads(self._fernet.decrypt(cookie.encode("ascii")))
        except (InvalidToken, UnicodeEncodeError, ValueError):
            return None
        if not isinstance(sealed, dict):
            return None
        expires, csrf = sealed.get("expires"), sealed.get("csrf")
        if not isinstance(expires, int | float) or not isinstance(csrf, str):
            return None
        if expires < self._clock():
            return None
        agency, role, token = (sealed.get(key) for key in ("agency", "role", "token"))
        if isinstance(agency, str) and isinstance(role, str) and isinstance(token, str):
            seen = sealed.get("seen")
            # A cookie sealed without ``seen`` (before idle ends existed) counts as idle.
            if not isinstance(seen, int | float) or seen + self.idle < self._clock():
                return None
            return Session(csrf, float(expires), Officer(agency, role, token, self.connect(token)))
        return Session(csrf, float(expires))

    def alive(self, session: Session) -> bool:
        """Whether the session has not reached its absolute end (signing out cannot be seen
        here)."""
        return session.expires >= self._clock()

    def stream_end(self, session: Session) -> float:
        """When an event stream opened now with ``session`` ends: at the absolute end, or
        half the idle time from now, while the cookie its answer carries (sealed now) is
        still valid, so that the browser reconnects with it (``Last-Event-ID``: nothing is
        lost) and that reconnection seals it again. An open live tab is a session in use."""
        return min(session.expires, self._clock() + self.idle / 2)


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
        self._by_client = FailureWindow(per_client, window, MAX_CLIENTS)
        self._all = FailureWindow(total, window, 1)

    def blocked(self, client: str) -> bool:
        return self._all.blocked(ALL) > 0 or self._by_client.blocked(client) > 0

    def failed(self, client: str) -> None:
        self._all.fail(ALL)
        self._by_client.fail(client)

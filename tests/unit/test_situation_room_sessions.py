"""The situation room's sessions, CSRF check and sign-in throttle, without a server."""

from __future__ import annotations

import json
import string

from cryptography.fernet import Fernet

from incidentledger_client import LedgerClient
from services.situation_room.sessions import (
    Officer,
    Sessions,
    SignInThrottle,
    cookie_key,
    csrf_ok,
)

KEY = b"0123456789abcdef-the-session-key"
BASE64URL = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


def connect(token: str) -> LedgerClient:
    return LedgerClient("127.0.0.1:1", token)


def officer() -> Officer:
    return Officer("polres", "responder", "the-token", connect("the-token"))


def test_a_cookie_carries_its_session_sealed_and_a_restarted_page_reads_it() -> None:
    store = Sessions(KEY, lifetime=60, connect=connect)
    session = store.new(officer())
    cookie = store.cookie_value(session)
    assert "the-token" not in cookie and "polres" not in cookie  # encrypted, not only signed
    # Another Sessions with the same key (a restart, or a second page process) reads it.
    found = Sessions(KEY, lifetime=60, connect=connect).find(cookie)
    assert found is not None and found.officer is not None
    assert (found.csrf, found.expires) == (session.csrf, session.expires)
    assert (found.officer.agency, found.officer.role, found.officer.token) == (
        "polres",
        "responder",
        "the-token",
    )
    anonymous = store.find(store.cookie_value(store.new()))
    assert anonymous is not None and anonymous.officer is None


def test_an_altered_or_foreign_cookie_finds_no_session() -> None:
    store = Sessions(KEY, lifetime=60, connect=connect)
    cookie = store.cookie_value(store.new(officer()))
    assert store.find(cookie) is not None
    # Each character changed in turn, in its highest bit (a change in the low bits of the
    # last one could fall in bits base64 decoding ignores, and alter nothing).
    for at, char in enumerate(cookie):
        if char in BASE64URL:
            flipped = BASE64URL[BASE64URL.index(char) ^ 32]
            assert store.find(cookie[:at] + flipped + cookie[at + 1 :]) is None, at
    other_key = Sessions(b"another key, 16 bytes or more", lifetime=60, connect=connect)
    assert other_key.find(cookie) is None
    assert store.find(None) is None and store.find("") is None and store.find("é") is None


def test_an_expired_cookie_finds_no_session() -> None:
    now = [1_000_000.0]
    store = Sessions(KEY, lifetime=60, connect=connect, clock=lambda: now[0])
    session = store.new(officer())
    cookie = store.cookie_value(session)
    now[0] += 59
    assert store.alive(session) and store.find(cookie) is not None
    now[0] += 2
    assert not store.alive(session)
    assert store.find(cookie) is None


def test_the_csrf_token_must_be_the_sessions() -> None:
    session = Sessions(KEY, lifetime=60, connect=connect).new()
    assert csrf_ok(session, session.csrf)
    assert not csrf_ok(session, "guessed")
    assert not csrf_ok(session, None)
    assert not csrf_ok(None, session.csrf)


def test_failed_sign_ins_block_an_address_then_everyone() -> None:
    throttle = SignInThrottle(per_client=2, total=3, window=60.0)
    throttle.failed("10.0.0.1")
    assert not throttle.blocked("10.0.0.1")
    throttle.failed("10.0.0.1")
    assert throttle.blocked("10.0.0.1") and not throttle.blocked("10.0.0.2")
    throttle.failed("10.0.0.2")
    assert throttle.blocked("10.0.0.3")  # three in all


def test_a_cookie_unused_for_longer_than_the_idle_time_is_refused() -> None:
    now = [1_000_000.0]
    store = Sessions(KEY, lifetime=3600, connect=connect, clock=lambda: now[0], idle=900)
    session = store.new(officer())
    copied = store.cookie_value(session)  # a copy taken now, then left unused
    assert store.cookie_seconds(session) == 900  # the browser forgets it at its idle end
    now[0] += 900
    assert store.find(copied) is not None
    now[0] += 1
    assert store.find(copied) is None
    # A signed-out (anonymous) session has no idle end: the sign-in form's lasts its time.
    brief = Sessions(KEY, lifetime=3600, connect=connect, clock=lambda: now[0], idle=60)
    anonymous = brief.cookie_value(brief.new())
    now[0] += 61
    assert brief.find(anonymous) is not None


def test_a_cookie_in_use_slides_its_idle_end_until_the_absolute_end() -> None:
    now = [1_000_000.0]
    store = Sessions(KEY, lifetime=3600, connect=connect, clock=lambda: now[0], idle=900)
    session = store.new(officer())
    cookie = store.cookie_value(session)
    first = cookie
    for _ in range(3):  # used every 10 minutes: each answer seals it again
        now[0] += 600
        found = store.find(cookie)
        assert found is not None and found.expires == session.expires
        cookie = store.cookie_value(found)
    assert store.find(first) is None  # the first copy, unused for 30 minutes
    assert store.find(cookie) is not None
    now[0] = session.expires - 1
    cookie = store.cookie_value(session)
    assert store.cookie_seconds(session) == 1  # the absolute end comes first now
    now[0] += 2
    assert store.find(cookie) is None


def test_an_event_stream_ends_before_its_cookies_idle_end() -> None:
    now = [1_000_000.0]
    store = Sessions(KEY, lifetime=3600, connect=connect, clock=lambda: now[0], idle=900)
    session = store.new(officer())
    assert store.stream_end(session) == now[0] + 450
    now[0] = session.expires - 100
    assert store.stream_end(session) == session.expires
    # Without an idle time, the lifetime is the idle time too; never longer than it.
    assert Sessions(KEY, lifetime=60, connect=connect).idle == 60
    assert Sessions(KEY, lifetime=60, connect=connect, idle=900).idle == 60


def test_a_cookie_sealed_without_a_last_use_is_refused() -> None:
    now = [1_000_000.0]
    store = Sessions(KEY, lifetime=3600, connect=connect, clock=lambda: now[0], idle=900)
    fernet = Fernet(cookie_key(KEY))
    old = {"csrf": "c", "expires": now[0] + 60, "agency": "polres", "role": "responder"}
    sealed = fernet.encrypt(json.dumps({**old, "token": "t"}).encode()).decode()
    assert store.find(sealed) is None

"""The situation room's sessions, CSRF check and sign-in throttle, without a server."""

from __future__ import annotations

import string

from incidentledger_client import LedgerClient
from services.situation_room.sessions import Officer, Sessions, SignInThrottle, csrf_ok

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

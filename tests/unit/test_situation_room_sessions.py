"""The situation room's sessions, CSRF check and sign-in throttle, without a server."""

from __future__ import annotations

import time

import pytest

from incidentledger_client import LedgerClient
from services.situation_room import sessions as module
from services.situation_room.sessions import Officer, Sessions, SignInThrottle, csrf_ok


def officer() -> Officer:
    return Officer("polres", "responder", "token", LedgerClient("127.0.0.1:1", "token"))


def test_a_cookie_finds_its_session_and_a_forged_or_altered_one_finds_none() -> None:
    store = Sessions(lifetime=60)
    session = store.new(officer())
    cookie = store.cookie_value(session)
    assert store.find(cookie) is session
    assert session.id in cookie  # signed, not hidden: the id alone gives nothing away
    assert store.find(session.id) is None  # unsigned
    # One character changed in the signature's first character (its last character carries
    # bits base64 decoding ignores: changing only those would not alter the signature).
    cut = cookie.rindex(".") + 1
    altered = cookie[:cut] + ("A" if cookie[cut] != "A" else "B") + cookie[cut + 1 :]
    assert store.find(altered) is None
    tampered_id = ("x" if cookie[0] != "x" else "y") + cookie[1:]
    assert store.find(tampered_id) is None
    assert store.find(Sessions(lifetime=60).cookie_value(session)) is None  # another key
    assert store.find(None) is None


def test_an_expired_or_dropped_session_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    store = Sessions(lifetime=60)
    session = store.new(officer())
    cookie = store.cookie_value(session)
    assert store.alive(session)
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    assert not store.alive(session)
    assert store.find(cookie) is None
    other = store.new(officer())
    store.drop(other)
    assert not store.alive(other)


def test_sessions_that_never_signed_in_never_push_out_a_signed_in_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(module, "MAX_ANONYMOUS", 3)
    store = Sessions(lifetime=60)
    signed_in = store.new(officer())
    anonymous = [store.new() for _ in range(10)]
    assert store.alive(signed_in)
    assert [store.alive(s) for s in anonymous] == [False] * 7 + [True] * 3


def test_the_csrf_token_must_be_the_sessions() -> None:
    session = Sessions(lifetime=60).new()
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

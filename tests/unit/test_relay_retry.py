"""The relay's pause after a failed session: short for the store, election-aware for NATS."""

from __future__ import annotations

import psycopg
from nats.errors import NoServersError

from services.common.store_errors import StoreUnreachableError
from services.ledger.relay import (
    ELECTION_SECONDS,
    RETRY_MAX_SECONDS,
    RETRY_SECONDS,
    STORE_RETRY_SECONDS,
    SessionRetry,
)


def failing(retry: SessionRetry, exc: BaseException, seconds: float) -> list[float]:
    """The pauses of a relay whose sessions fail with ``exc`` for ``seconds`` (each failing
    at once, then pausing)."""
    now, pauses = 0.0, []
    while now < seconds:
        pause = retry.pause(exc, now)
        pauses.append(pause)
        now += pause
    return pauses


def test_failures_of_the_store_are_retried_soon_however_long_they_last() -> None:
    for exc in (
        psycopg.OperationalError("connection refused"),
        StoreUnreachableError("the store is unreachable"),
    ):
        pauses = failing(SessionRetry(), exc, 60.0)
        assert max(pauses) <= STORE_RETRY_SECONDS <= 1.0, (exc, max(pauses))


def test_failures_of_nats_are_retried_quickly_during_an_election_then_ever_more_slowly() -> None:
    pauses = failing(SessionRetry(), NoServersError(), 60.0)
    assert pauses[0] == RETRY_SECONDS[0]
    elapsed, during = 0.0, []
    for pause in pauses:
        if elapsed + pause >= ELECTION_SECONDS:
            break
        during.append(pause)
        elapsed += pause
    assert max(during) <= RETRY_SECONDS[1]
    assert max(pauses) == RETRY_MAX_SECONDS


def test_a_nats_failure_after_a_long_store_outage_starts_with_the_election_pace() -> None:
    retry = SessionRetry()
    failing(retry, NoServersError(), 5.0)  # NATS away a moment, then the store for long
    now = 5.0 + sum(failing(retry, psycopg.OperationalError("refused"), 30.0))
    assert retry.pause(NoServersError(), now) == RETRY_SECONDS[0]


def test_a_session_that_published_starts_the_count_afresh() -> None:
    retry = SessionRetry()
    failing(retry, NoServersError(), 30.0)
    retry.reset()
    assert retry.pause(NoServersError(), 100.0) == RETRY_SECONDS[0]

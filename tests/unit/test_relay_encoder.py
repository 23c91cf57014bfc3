"""The relay's link to its encoder process (services/ledger/relay_encoder.py), over a real
socket pair, the encoder's side played by the test: batches of an earlier session are
dropped, each batch taken is paid for with a credit, the encoder's errors reach the
relay as they were (a store failure stays one), a poke ends a wait, and an encoder that
is gone is told apart from one that is quiet."""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest

from services.ledger.relay_encoder import (
    AHEAD,
    EncoderGoneError,
    EncoderLink,
    _portable,
)
from services.ledger.relay_messages import Encoded


@pytest.fixture
def link() -> Iterator[tuple[EncoderLink, Connection]]:
    ours, theirs = socket.socketpair()
    relay, encoder = Connection(ours.detach()), Connection(theirs.detach())
    yield EncoderLink(relay, pid=0, prefix="ledger.events"), encoder
    relay.close()
    encoder.close()


def message(position: int) -> Encoded:
    """What the encoder sends for an event: its payload and its headers' values."""
    return Encoded(
        position, b"x", f"event-{position}", "Reported", "incidents/i", "Ipuh", "flood", "high"
    )


def test_a_session_seeks_and_gives_credit_for_the_batches_it_may_have_ahead(
    link: tuple[EncoderLink, Connection],
) -> None:
    relay, encoder = link
    relay.open(41)
    assert encoder.recv() == ("seek", 1, 41)
    assert [encoder.recv() for _ in range(AHEAD)] == [("credit", 1)] * AHEAD
    assert not encoder.poll(0.05)


def test_batches_of_an_earlier_session_are_dropped_and_each_taken_one_is_paid_for(
    link: tuple[EncoderLink, Connection],
) -> None:
    relay, encoder = link
    relay.open(0)
    second = relay.open(10)  # a new session: generation 2
    encoder.send(("batch", 1, [message(1)]))  # made for the first session
    encoder.send(("batch", 2, [message(11), message(12)]))
    taken = second.next_batch(5.0)
    assert [m.position for m in taken] == [11, 12]
    # The subject and headers are written on the relay's side.
    assert taken[0].subject == "ledger.events.ipuh.flood.reported"
    assert taken[0].headers["Nats-Msg-Id"] == taken[0].headers["Ledger-Position"] == "11"
    assert taken[1].headers["Ledger-Event-Id"] == "event-12"
    sent = []
    while encoder.poll(0.2):
        sent.append(encoder.recv())
    credits = [m for m in sent if m[0] == "credit"]
    assert credits[-1] == ("credit", 2)
    assert len([c for c in credits if c == ("credit", 2)]) == AHEAD + 1  # one for the batch
    second.close()


def test_an_error_of_the_encoder_is_raised_in_the_relay_as_it_was(
    link: tuple[EncoderLink, Connection],
) -> None:
    relay, encoder = link
    source = relay.open(0)
    encoder.send(("error", 1, _portable(sqlite3.OperationalError("database is locked"))))
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        source.next_batch(5.0)
    source.close()


class HoldingError(Exception):
    """An error that holds what does not pickle (as a driver's error may hold its
    connection), set after it was made."""


class StrictError(Exception):
    def __init__(self, text: str, code: int) -> None:
        super().__init__(text, code)


def holding(error: Exception) -> Exception:
    error.lock = threading.Lock()  # type: ignore[attr-defined]
    return error


def test_an_error_that_does_not_pickle_keeps_its_type_or_says_what_it_was() -> None:
    held = _portable(holding(HoldingError("store away")))
    assert type(held) is HoldingError
    assert str(held) == "store away"
    assert not hasattr(held, "lock")
    strict = _portable(holding(StrictError("odd", 3)))  # its type wants more than a message
    assert type(strict) is RuntimeError
    assert str(strict).startswith("StrictError: ")


def test_a_poke_ends_a_wait_and_a_quiet_encoder_gives_an_empty_batch(
    link: tuple[EncoderLink, Connection],
) -> None:
    relay, _encoder = link
    source = relay.open(0)
    started = time.monotonic()
    assert source.next_batch(0.1) == []  # nothing came within the poll
    assert time.monotonic() - started >= 0.1
    threading.Timer(0.1, source.poke).start()
    started = time.monotonic()
    assert source.next_batch(30.0) == []
    assert time.monotonic() - started < 10.0, "the poke ended the wait"
    source.close()


def test_an_encoder_that_is_gone_is_an_error_not_a_quiet_spell(
    link: tuple[EncoderLink, Connection],
) -> None:
    relay, encoder = link
    source = relay.open(0)
    encoder.close()
    with pytest.raises(EncoderGoneError):
        source.next_batch(5.0)
    source.close()


def test_a_poke_after_the_session_closed_writes_nowhere(
    link: tuple[EncoderLink, Connection],
) -> None:
    relay, _encoder = link
    source = relay.open(0)
    source.close()
    probe_read, probe_write = os.pipe()  # likely given the numbers the session freed
    try:
        source.poke()
        source.close()  # twice: nothing more
        os.set_blocking(probe_read, False)
        with pytest.raises(BlockingIOError):
            os.read(probe_read, 1)
    finally:
        os.close(probe_read)
        os.close(probe_write)

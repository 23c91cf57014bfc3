"""The relay's encoder loop (services/ledger/relay_encoder.py) on a real SQLite store, the
relay's side played by the test over a real socket pair: it sends the batches asked for,
in log order, and a relay that closes its end while a batch is on its way (a stop during a
drain) ends the encoder quietly, not with an error."""

from __future__ import annotations

import gc
import os
import socket
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from uuid import uuid4

import pytest

from services.common.config import RelaySettings
from services.ledger.application import Ledger
from services.ledger.domain.incident import Actor, Envelope, Incident
from services.ledger.relay_encoder import run_encoder
from services.ledger.relay_messages import Encoded
from tests.support import reference, store_environment

INCIDENTS = 600  # two events each: a second batch larger than a socket buffer holds
BATCH = 500


def envelope(ledger: Ledger, agency: str) -> Envelope:
    request = uuid4().hex
    actor = Actor(agency, f"officer-{agency}", ledger.reference.agencies[agency].role)
    return Envelope(actor, request, request, request)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[dict[str, str]]:
    with store_environment("sqlite", tmp_path) as env:
        ledger = Ledger(reference(), env={**env, "CREATE_TABLE": "y"})
        incidents = []
        for _ in range(INCIDENTS):
            incident = Incident.report(
                envelope(ledger, "bpbd"),
                title="Banjir",
                description="",
                category="flood",
                severity=ledger.reference.default_severity,
                location={"kecamatan": "ipuh", "desa": "", "tps": ""},
                incident_id=uuid4(),
            )
            incident.verify(envelope(ledger, ledger.reference.coordinator), "confirmed")
            incidents.append(incident)
        ledger.save(*incidents)
        ledger.close()
        yield env


def encoder_thread(
    env: dict[str, str], conn: Connection
) -> tuple[threading.Thread, list[BaseException]]:
    wake_read, wake_write = os.pipe()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            run_encoder(
                conn,
                wake_read,
                lambda: Ledger(reference(), env=env),
                RelaySettings(batch_size=BATCH),
            )
        except BaseException as exc:
            failures.append(exc)
        finally:
            os.close(wake_write)
            gc.unfreeze()  # the encoder froze the heap as its process would: not this one's

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, failures


def test_the_encoder_sends_what_is_asked_in_order_and_ends_quietly_when_the_relay_closes(
    store: dict[str, str],
) -> None:
    ours, theirs = socket.socketpair()
    relay, encoder = Connection(ours.detach()), Connection(theirs.detach())
    thread, failures = encoder_thread(store, encoder)
    relay.send(("seek", 1, 0))
    relay.send(("credit", 1))
    assert relay.poll(30), "a batch came"
    kind, generation, batch = relay.recv()
    assert (kind, generation) == ("batch", 1)
    encoded: list[Encoded] = batch
    assert [e.position for e in encoded] == list(range(1, BATCH + 1))
    relay.send(("credit", 1))  # the rest: more than the socket takes before it is read
    assert relay.poll(30), "the next batch is on its way"
    relay.close()  # the relay stops mid-drain
    thread.join(30)
    assert not thread.is_alive(), "the encoder ended"
    assert not failures, failures

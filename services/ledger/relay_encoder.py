"""Where the relay's messages come from: read from the log and encoded, in the relay's
own process or, beside it, in an encoder process that works ahead of the publishing.

Why a process: the relay's work per event is Python, about two thirds of it reading and
encoding (decoding the stored event, folding the incident's state, building the
protobuf message: 63 µs an event) and a third publishing (nats-py's ``publish_async``
and its ack: about 33 µs). In one interpreter the two take turns, whatever threads do:
reading the next batch ahead while the acks of the last were awaited gained nothing
(docs/performance.md, "The relay's own process"). In two processes they overlap: the
encoder makes the next batches while the relay publishes the current one
(docs/performance.md, "The relay's encoder").

The relay's process makes the encoder with ``fork`` before it opens a database or starts a
thread (:func:`start_encoder`), so the encoder needs no imports of its own. Between them,
a socket pair:

- the relay asks for the events after a position (``seek``) with a new generation at the
  start of each session, and gives the encoder a credit per batch taken: the encoder is
  at most :data:`AHEAD` batches ahead, and batches of an older generation are dropped;
- the encoder sends each batch encoded (``batch``), or the error that stopped it
  (``error``: a store that failed is told apart from other failures, as the relay's
  retry pacing needs, :func:`~services.ledger.relay.is_store_failure`), then waits for
  the next seek.

The encoder reads the ledger's commit wake-ups itself (it inherits their pipe), and ends
with the relay's process (``PR_SET_PDEATHSIG``) or when the relay's end of the socket
closes; the relay's process ends when its encoder dies, and the ledger starts both again.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import socket
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import structlog
from eventsourcing.persistence import ApplicationRecorder
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import get_topic

from services.common.config import RelaySettings
from services.common.heap import freeze_after_start
from services.common.stopping import tie_to_parent
from services.ledger.application import Ledger
from services.ledger.domain.incident import incident_event_classes
from services.ledger.relay_messages import Encoded, EventEncoder, MessageWriter, Outgoing
from services.ledger.relay_reading import NotificationReader, open_reader

log = structlog.get_logger(__name__)

#: Batches the encoder may have made that the relay has not taken yet: one being published
#: and the next ready is what the overlap needs; more would only hold memory.
AHEAD = 2
#: The name the encoder's process shows (``ps -o comm``, psutil's ``name()``).
PROCESS_NAME = "relay-encoder"


class EncoderGoneError(RuntimeError):
    """The encoder process ended: the relay's process ends too, and the ledger starts both
    again."""


class BatchSource(ABC):
    """A session's messages, batch by batch, in log order, after the session's position."""

    #: Whether the source has found the end of the log since it opened: every message before
    #: that end has been handed out. An empty batch alone does not say so: it may only mean
    #: that the next batch was not ready within the wait (an encoder still reading, or a
    #: poke), where the session has published nothing.
    caught_up: bool = False

    @abstractmethod
    def next_batch(self, timeout: float) -> list[Outgoing]:
        """The next messages, or an empty list when none came within ``timeout`` (or the
        relay was poked: it has something else to do)."""

    def poke(self) -> None:
        """Something besides new events needs the relay's loop (a checkpoint to publish):
        a wait in :meth:`next_batch` ends now."""
        return None

    def close(self) -> None:
        return None


class LocalSource(BatchSource):
    """Reads and encodes in the relay's own process (a store in the ledger's memory, or
    a relay started without an encoder); the reader's wake event is the relay's."""

    def __init__(self, reader: NotificationReader, encoder: EventEncoder) -> None:
        self._reader = reader
        self._encoder = encoder

    def next_batch(self, timeout: float) -> list[Outgoing]:
        rows = self._reader.next_batch(timeout)
        if not rows:
            self.caught_up = True
        return self._encoder.encode_all(rows)

    def close(self) -> None:
        self._reader.close()


# ------------------------------------------------------------------ the relay's side


class EncoderLink:
    """The relay's end of its encoder process: one :class:`RemoteSource` per session."""

    def __init__(self, conn: Connection, pid: int, prefix: str) -> None:
        self._conn = conn
        self.pid = pid
        self._writer = MessageWriter(prefix)
        self._generation = 0

    def open(self, position: int) -> RemoteSource:
        """The messages after ``position``, for a new session (older batches are dropped)."""
        self._generation += 1
        self._conn.send(("seek", self._generation, position))
        for _ in range(AHEAD):
            self._conn.send(("credit", self._generation))
        return RemoteSource(self._conn, self._generation, self._writer)

    def close(self) -> None:
        self._conn.close()


class RemoteSource(BatchSource):
    """A session's batches from the encoder process."""

    def __init__(self, conn: Connection, generation: int, writer: MessageWriter) -> None:
        self._conn = conn
        self._generation = generation
        self._writer = writer
        self._poked, self._poke = os.pipe()
        os.set_blocking(self._poked, False)
        os.set_blocking(self._poke, False)
        # A poke from another thread never writes to a descriptor closed meanwhile (its
        # number may be another file's by then).
        self._lock = threading.Lock()
        self._closed = False

    def next_batch(self, timeout: float) -> list[Outgoing]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            ready = wait([self._conn, self._poked], remaining)
            if self._poked in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._poked, 4096)
                return []
            if not ready:
                return []
            try:
                kind, generation, content = self._conn.recv()
            except (EOFError, OSError) as exc:
                raise EncoderGoneError("the relay's encoder process ended") from exc
            if generation != self._generation:
                continue  # made for an earlier session
            if kind == "error":
                raise content
            if kind == "caught_up":
                self.caught_up = True
                return []
            self._conn.send(("credit", generation))
            encoded: list[Encoded] = content
            return [self._writer.outgoing(e) for e in encoded]

    def poke(self) -> None:
        with self._lock, contextlib.suppress(BlockingIOError):  # a byte waiting does as well
            if not self._closed:
                os.write(self._poke, b"\0")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.close(self._poked)
            os.close(self._poke)


# ---------------------------------------------------------------- the encoder process


def start_encoder(
    wake_fd: int,
    make_ledger: Callable[[], Ledger],
    settings: RelaySettings,
    not_inherited: Sequence[Connection] = (),
) -> EncoderLink:
    """Fork the encoder process and return the relay's link to it. ``wake_fd`` (the
    ledger's commit wake-ups) is the encoder's from now on: closed here. The encoder
    reads the store through its own ``make_ledger()``, and closes its copies of
    ``not_inherited`` (the relay's link to the ledger: the ledger sees it close when the
    relay's process ends, not when the encoder does).

    Called before the relay's process opens a database or starts a thread: the child of
    a ``fork`` has only the thread that forked, and a lock another thread held would stay
    locked in it."""
    relay_pid = os.getpid()
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the encoder: never returns
        code = 1
        try:
            ours.close()
            for connection in not_inherited:
                connection.close()
            tie_to_parent(relay_pid, PROCESS_NAME)
            structlog.contextvars.bind_contextvars(process=PROCESS_NAME)
            run_encoder(Connection(theirs.detach()), wake_fd, make_ledger, settings)
            code = 0
        except BaseException:
            log.exception("relay.encoder_failed")
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    theirs.close()
    os.close(wake_fd)
    log.info("relay.encoder_started", pid=pid)
    return EncoderLink(Connection(ours.detach()), pid, settings.stream.subject_prefix)


def run_encoder(
    conn: Connection,
    wake_fd: int,
    make_ledger: Callable[[], Ledger],
    settings: RelaySettings,
) -> None:
    """The encoder's main: batches for the relay, as it asks, until its end closes."""
    ledger = make_ledger()
    try:
        wake = threading.Event()
        requests: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        # On PostgreSQL every insert notifies the reader (LISTEN), the ledger's own too: the
        # ledger's wake-ups would only make a second read of each commit.
        woken = None if isinstance(ledger.recorder, PostgresApplicationRecorder) else wake
        threading.Thread(
            target=_read_wakes, args=(wake_fd, woken), name="encoder-wakes", daemon=True
        ).start()
        threading.Thread(
            target=_read_requests, args=(conn, requests, wake), name="encoder-requests", daemon=True
        ).start()
        encoder = EventEncoder(ledger, settings.stream.subject_prefix)
        encoding = _Encoding(conn, ledger, encoder, settings, wake)
        freeze_after_start("relay_encoder")
        encoding.run(requests)
    finally:
        ledger.close()


class _Encoding:
    """The encoder's loop: a seek opens a reader at its position; each credit lets one
    more batch be read, encoded and sent."""

    def __init__(
        self,
        conn: Connection,
        ledger: Ledger,
        encoder: EventEncoder,
        settings: RelaySettings,
        wake: threading.Event,
    ) -> None:
        self._conn = conn
        self._recorder: ApplicationRecorder = ledger.recorder
        self._encoder = encoder
        self._batch = settings.batch_size
        self._poll = settings.poll_seconds
        self._wake = wake
        self._topics = [get_topic(cls) for cls in incident_event_classes()]
        self._generation = 0  # 0: no seek to serve (none yet, or its reading failed)
        self._position = 0
        self._credits = 0
        self._caught_up_said = False  # for this seek
        self._reader: NotificationReader | None = None

    def run(self, requests: queue.SimpleQueue[tuple[Any, ...] | None]) -> None:
        try:
            while True:
                idle = not (self._generation and self._credits)
                try:
                    request = requests.get() if idle else requests.get_nowait()
                except queue.Empty:
                    if not self._encode_next():
                        return  # the relay's end closed while a batch was sent
                    continue
                if request is None:
                    return  # the relay's end closed
                self._take(request)
        finally:
            self._close_reader()

    def _take(self, request: tuple[Any, ...]) -> None:
        kind, generation = request[0], request[1]
        if kind == "seek":
            self._close_reader()
            self._generation, self._position, self._credits = generation, request[2], 0
            self._caught_up_said = False
        elif kind == "credit" and generation == self._generation:
            self._credits += 1

    def _encode_next(self) -> bool:
        """Read, encode and send the next batch; False once the relay's end is closed."""
        try:
            if self._reader is None:
                self._reader = open_reader(
                    self._recorder, self._position, self._topics, self._batch, self._wake
                )
            # A request of the relay (a seek of a new session) ends the wait too.
            rows = self._reader.next_batch(self._poll)
            if not rows:
                if self._caught_up_said:
                    return True
                # Once a seek: the relay's session is working even with nothing to publish.
                self._caught_up_said = True
                return self._send(("caught_up", self._generation, None))
            encoded = self._encoder.encode_batch(rows)
        except Exception as exc:  # handed to the relay, whose session fails and seeks again
            log.warning("relay.encoder_read_failed", error=f"{type(exc).__name__}: {exc}")
            self._close_reader()
            generation, self._generation = self._generation, 0
            return self._send(("error", generation, _portable(exc)))
        self._credits -= 1
        self._position = rows[-1].id
        return self._send(("batch", self._generation, encoded))

    def _send(self, message: tuple[Any, ...]) -> bool:
        """Send to the relay; False when its end is closed (it stopped, or ended)."""
        try:
            self._conn.send(message)
        except (BrokenPipeError, ConnectionResetError, EOFError):
            return False
        return True

    def _close_reader(self) -> None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            with contextlib.suppress(Exception):  # a reader of a failed store: gone anyway
                reader.close()


def _portable(exc: Exception) -> Exception:
    """``exc``, or an exception of its type and message where it does not pickle (the
    type is what the relay's retry pacing reads), or a RuntimeError saying what it was."""
    for candidate in (exc, _same_kind(exc)):
        if candidate is not None and _pickles(candidate):
            return candidate
    return RuntimeError(f"{type(exc).__name__}: {exc}")


def _pickles(value: Exception) -> bool:
    try:
        pickle.loads(pickle.dumps(value))  # noqa: S301 - made here, a moment ago
    except Exception:
        return False
    return True


def _same_kind(exc: Exception) -> Exception | None:
    try:
        return type(exc)(str(exc))
    except Exception:
        return None


def _read_wakes(fd: int, wake: threading.Event | None) -> None:
    """Reads the ledger's commit wake-ups (so that its pipe never fills) and wakes the
    reader with them, unless ``wake`` is None."""
    while True:
        try:
            if not os.read(fd, 4096):
                return  # the ledger closed its end
        except OSError:
            return
        if wake is not None:
            wake.set()


def _read_requests(
    conn: Connection, requests: queue.SimpleQueue[tuple[Any, ...] | None], wake: threading.Event
) -> None:
    while True:
        try:
            request: tuple[Any, ...] = conn.recv()
        except (EOFError, OSError):
            requests.put(None)
            wake.set()
            return
        requests.put(request)
        wake.set()  # a read waiting for new events ends: a seek is served at once

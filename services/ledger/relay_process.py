"""The relay in a process of its own, beside the ledger's.

Why: the relay's work per event (decoding it, folding the incident's state, encoding
the message, publishing it and reading its ack) is Python, and in the ledger's process
it took the interpreter lock from the commands. Measured with the bench's commands part
(SQLite, paced 500 commands/s, 2 cores): with the relay in the ledger's process the
replies' p50 went from 1.8 to 11-20 ms and the ledger's CPU per command from 1.05 to
1.5-1.6 ms, while the machine still had half a core idle (docs/performance.md, "The
relay's own process"). In a process of its own it has an interpreter of its own.

The child runs the same :class:`~services.ledger.relay.Relay` on its own connection to
the store. What crosses between the processes:

- commits: the ledger's commit thread writes one byte to a pipe (never blocking: a
  byte already waiting wakes the relay as well), and the child wakes its relay;
- checkpoints to publish on the witnesses' stream: sent to the child, which confirms
  each once published; those not confirmed are sent again to a restarted child;
- the relay's status (a few times a second, when it changed) and its health, back to
  the ledger, which serves them (health service, metrics, ``lag``);
- that the child is ready, once its relay runs: from then on it obeys a stop (its last acks
  awaited); one stopped before that is killed, having published nothing.

The child (:mod:`services.ledger.relay_child`) ignores SIGINT and SIGTERM (a stop of the
whole process group reaches the ledger, which stops its relay in order) and ends with
the ledger's process, however that ends: a ledger killed outright does not leave a relay
publishing behind it, and the leader lock the child held goes with it. The ledger starts
it from a thread that lives as long as the ledger (its start, or the thread that watches
it): the kernel ties a child to the thread that made it. A child that dies is started
again, after a pause that grows while it keeps dying.

The child forks, first thing, the relay's encoder (:mod:`services.ledger.relay_encoder`),
which reads and encodes the events ahead of the publishing; the child ends when its encoder
does, and the ledger starts both again.

A store in the ledger's memory cannot be read from another process: there the relay
stays a thread of the ledger (:func:`relay_runs_apart`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from typing import Any

import structlog

from services.common.config import LedgerSettings
from services.common.reference import ReferenceData
from services.common.sql import store_location
from services.common.stopping import STOP_SIGNALS
from services.ledger.application import Ledger
from services.ledger.relay import Relay, RelayLag, RelayStatus, prepare_position_table, relay_lag
from services.ledger.relay_encoder import start_encoder

log = structlog.get_logger(__name__)

#: The child's entry: it imports nothing heavy before it is tied to the ledger.
CHILD_MODULE = "services.ledger.relay_child"
#: How often the child sends the relay's status when it changed: metrics and tests read
#: it, nothing waits on it; sending it per batch would cost the child a pickle per batch.
STATUS_SECONDS = 0.05
#: How often the child sends its status even when unchanged: the ledger's sign that it is
#: alive (a child frozen, or hung, sends nothing: ``LEDGER_RELAY_UNRESPONSIVE_SECONDS``).
HEARTBEAT_SECONDS = 1.0
#: The pauses before a child that died is started again: the first, and the longest.
RESTART_SECONDS = (0.5, 10.0)
#: How long the ledger waits for its relay to stop, beyond the relay's own timeout.
STOP_MARGIN_SECONDS = 5.0
#: At the ledger's stop: how long the child's relay may wait for its last acks, and how
#: much longer the ledger waits for the child before killing it. Together well inside the
#: ledger's own margin after its grace period (services/common/stopping.py, 5 s): the
#: ledger waited 15 s for a child that did not answer (frozen), and was forced out at its
#: deadline. Killing it loses nothing: the next relay publishes from the stream's last
#: message. A child that has not said it is ready (its imports, its encoder, its ledger:
#: 1 s, 3-5 s on a busy machine) reads no stop yet: it is killed at once.
CHILD_STOP_SECONDS = 2.0
CHILD_EXIT_SECONDS = 1.0


def relay_runs_apart(store_env: Mapping[str, str]) -> bool:
    """Whether another process can read this store (a SQLite file, PostgreSQL): one with
    a location of its own, not one in this process's memory."""
    return bool(store_location(store_env))


class RelayProcess:
    """The ledger's side of a relay running in a child process; the same surface as
    :class:`~services.ledger.relay.Relay` (``start``, ``wake``, ``publish_checkpoint``,
    ``status``, ``lag``, ``stop``)."""

    def __init__(
        self,
        ledger: Ledger,
        settings: LedgerSettings,
        on_health: Callable[[bool], None] = lambda _serving: None,
        on_stream_check: Callable[[bool], None] = lambda _trusted: None,
    ) -> None:
        self._ledger = ledger
        self._settings = settings
        self._on_health = on_health
        self._on_stream_check = on_stream_check
        self.status = RelayStatus()
        self._lock = threading.Lock()  # the child, its pipes, the unconfirmed checkpoints
        self._sending = threading.Lock()  # one message at a time on the control pipe
        self._process: subprocess.Popen[bytes] | None = None
        self._control: Connection | None = None
        self._wake_fd = -1
        self._ready = threading.Event()  # the child now running said it reads its pipe
        self._unconfirmed: dict[int, bytes] = {}
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="relay-process", daemon=True)

    # -- lifecycle (called from the ledger's threads)

    def start(self) -> None:
        prepare_position_table(self._settings.store_env)  # made before the child reads it
        self._watcher.start()  # which starts the child: the kernel ties it to that thread

    def wake(self) -> None:
        """New events were recorded (the commit thread): never waits."""
        # A full pipe: a byte already waiting wakes the relay as well. A child that is
        # gone (a broken pipe) reads from its position when it starts again.
        # Under the lock: a descriptor closed meanwhile could be another file's by now.
        with self._lock, contextlib.suppress(OSError):
            if self._wake_fd >= 0:
                os.write(self._wake_fd, b"\0")

    def publish_checkpoint(self, position: int, body: bytes) -> None:
        """Queue a signed checkpoint for the witnesses' stream (sent by the leading relay)."""
        with self._lock:
            self._unconfirmed[position] = body
            control = self._control
        if control is not None:
            self._send(control, ("checkpoint", position, body))

    def lag(self) -> RelayLag | None:
        return relay_lag(self._ledger, self.status)

    def stop(self, timeout: float = CHILD_STOP_SECONDS) -> None:
        self._stopping.set()
        with self._lock:
            process, control = self._process, self._control
        if process is not None and not self._ready.is_set():
            self._kill_starting(process)
        elif control is not None:
            self._send(control, ("stop", timeout))
        if process is not None:
            try:
                process.wait(timeout + CHILD_EXIT_SECONDS)
            except subprocess.TimeoutExpired:
                log.warning(
                    "relay.process_stop_timeout",
                    pid=process.pid,
                    note="killed; the next relay publishes from the stream's last message",
                )
                process.kill()
                process.wait(STOP_MARGIN_SECONDS)
        self._watcher.join(STOP_MARGIN_SECONDS)
        with self._lock:
            self._close_pipes()

    def _kill_starting(self, process: subprocess.Popen[bytes]) -> None:
        # It would read the stop only once started (seconds on a busy machine, past the
        # ledger's deadline), and has published nothing yet.
        log.info(
            "relay.process_killed_starting",
            pid=process.pid,
            note="stopped before it was ready; the next relay publishes from the stream's "
            "last message",
        )
        process.kill()

    # -- the child

    def _spawn(self) -> None:
        # A plain child process (not multiprocessing's, which adds a resource tracker
        # process), given its ends of a socket pair and of a pipe; its settings are the
        # first message (the ledger's may not come from its environment: tests build them).
        ours, theirs = socket.socketpair()
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_write, False)
        fds = (theirs.fileno(), wake_read)
        # The child inherits the stop signals blocked, and ignores them before it unblocks
        # them: a stop of the process group while it starts does not end it out of turn.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            process = subprocess.Popen(  # noqa: S603 - this interpreter, our module, no shell
                [sys.executable, "-m", CHILD_MODULE, *map(str, fds), str(os.getpid())],
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
            )
        except OSError:
            ours.close()
            os.close(wake_write)
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            theirs.close()  # the child's ends are the child's: EOF once it is gone
            os.close(wake_read)
        control = Connection(ours.detach())
        self._ready.clear()
        self._send(control, ("settings", self._settings))  # first: nobody else has it yet
        with self._lock:
            self._close_pipes()
            self._process, self._control, self._wake_fd = process, control, wake_write
            unconfirmed = sorted(self._unconfirmed.items())
        for position, body in unconfirmed:
            self._send(control, ("checkpoint", position, body))
        self.wake()  # events may have been recorded while no child read the pipe
        log.info("relay.process_started", pid=process.pid)

    def _close_pipes(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._wake_fd >= 0:
            os.close(self._wake_fd)
            self._wake_fd = -1

    def _send(self, control: Connection, message: tuple[Any, ...]) -> None:
        try:
            with self._sending:
                control.send(message)
        except (OSError, ValueError) as exc:  # the child is gone: the watcher restarts it
            log.warning("relay.process_unreachable", error=str(exc))

    def _watch(self) -> None:
        """Starts the child, receives its reports, and starts it again when it dies.
        The child is made by this thread, which lives as long as the relay: the kernel
        ends the child when the thread that made it ends (``PR_SET_PDEATHSIG``)."""
        pause = RESTART_SECONDS[0]
        while not self._stopping.is_set():
            try:
                self._spawn()
            except OSError as exc:  # no process to be had now: tried again after the pause
                log.error("relay.process_start_failed", error=str(exc))
            else:
                with self._lock:
                    process, control = self._process, self._control
                if process is not None and control is not None:
                    if self._stopping.is_set():  # stop() came while the child was made
                        self._kill_starting(process)
                    self._receive(control)
                    try:
                        exitcode: int | None = process.wait(STOP_MARGIN_SECONDS)
                    except subprocess.TimeoutExpired:  # it closed its end but lives on
                        process.kill()
                        exitcode = process.wait()
                    if self._stopping.is_set():
                        return
                    log.error("relay.process_exited", pid=process.pid, exitcode=exitcode)
                    self._lost()
            if self._stopping.wait(pause):
                return
            pause = min(pause * 2, RESTART_SECONDS[1])

    def _receive(self, control: Connection) -> None:
        silent = self._settings.relay.unresponsive_seconds
        while True:
            try:
                # Once ready, the child reports every HEARTBEAT_SECONDS: one silent for long
                # (frozen, hung) held its leader lock while it published nothing, health
                # SERVING, no line logged, until someone killed it by hand.
                if self._ready.is_set() and not control.poll(silent):
                    self._unresponsive(silent)
                    return
                message = control.recv()
            except (EOFError, OSError):
                return
            kind = message[0]
            if kind == "ready":
                self._ready.set()
                log.info("relay.process_ready", pid=message[1])
            elif kind == "status":
                for name, value in message[1].items():
                    setattr(self.status, name, value)
            elif kind == "health":
                self._on_health(message[1])
            elif kind == "stream_check":
                self._on_stream_check(message[1])
            elif kind == "checkpoint_sent":
                with self._lock:
                    self._unconfirmed.pop(message[1], None)

    def _unresponsive(self, silent: float) -> None:
        """Kill a child that has said nothing for ``silent`` seconds; the watcher starts it
        again (its leader lock, held by its session, ends with it)."""
        with self._lock:
            process = self._process
        if process is None:
            return
        log.error(
            "relay.process_unresponsive",
            pid=process.pid,
            silent_seconds=silent,
            note="killed and started again; its leader lock passes on, and the next relay "
            "publishes from the stream's last message",
        )
        with contextlib.suppress(ProcessLookupError):
            process.kill()

    def _lost(self) -> None:
        """What the ledger serves while no child runs."""
        self.status.leader = False
        self.status.connected = False
        self._on_health(False)


# ------------------------------------------------------------------- in the child


def serve(control_fd: int, wake_fd: int) -> None:
    """The relay's process, once :mod:`services.ledger.relay_child` has tied it to the
    ledger: the settings come first on the control pipe."""
    control = Connection(control_fd)
    kind, settings = control.recv()
    if kind != "settings" or not isinstance(settings, LedgerSettings):
        raise SystemExit("the relay process expects the ledger's settings first")
    run_child(settings, control, wake_fd)


def run_child(settings: LedgerSettings, control: Connection, wake_fd: int) -> None:
    """The child's main: the relay on its own ledger (reads only), until told to stop or
    the ledger's end of the pipe closes."""
    from services.common.logging import configure_logging
    from services.ledger.audit.keys import load_sealer

    configure_logging(settings.log_level, settings.log_format)
    structlog.contextvars.bind_contextvars(process="relay")
    sending = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with sending:
            control.send(message)

    # The parent made the tables; this process only reads the events and keeps the
    # relay's position.
    store_env = {**settings.store_env, "CREATE_TABLE": "n"}

    def make_ledger() -> Ledger:
        return Ledger(
            ReferenceData.load(settings.reference_file),
            env=store_env,
            sealer=load_sealer(settings.audit()),
            snapshot_interval=settings.snapshot_interval,
        )

    # First, before a database is opened or a thread started here: the encoder is a fork.
    encoder = start_encoder(wake_fd, make_ledger, settings.relay, not_inherited=(control,))
    ledger = make_ledger()
    relay: Relay | None = None

    def report(message: tuple[Any, ...]) -> None:
        # The status goes first: the ledger serves the two together (the foreign messages
        # counted with the stream's health, the position with the relay's).
        if relay is not None:
            send(("status", dataclasses.asdict(relay.status)))
        send(message)

    relay = Relay(
        ledger,
        settings.relay,
        store_env,
        on_health=lambda serving: report(("health", serving)),
        on_stream_check=lambda trusted: report(("stream_check", trusted)),
        on_checkpoint_sent=lambda position: send(("checkpoint_sent", position)),
        encoder=encoder,
    )
    stopped = threading.Event()
    watcher = threading.Thread(
        target=_watch_encoder, args=(encoder.pid, stopped), name="relay-encoder", daemon=True
    )
    watcher.start()
    threading.Thread(
        target=_statuses, args=(relay, send, stopped), name="relay-status", daemon=True
    ).start()
    relay.start()
    send(("ready", os.getpid()))  # from here on a stop is read and obeyed
    timeout = 10.0
    try:
        while True:
            try:
                message = control.recv()
            except (EOFError, OSError):
                # The ledger died without stopping its relay (killed): this relay ends at
                # once, leaving its lock to the next. Nothing is lost: a relay resumes after
                # the stream's last message.
                log.warning("relay.ledger_gone")
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(1)
            if message[0] == "checkpoint":
                relay.publish_checkpoint(message[1], message[2])
            elif message[0] == "stop":
                timeout = message[1]
                break
    finally:
        relay.stop(timeout)
        stopped.set()
        encoder.close()  # the encoder ends at the end of its link
        watcher.join(STOP_MARGIN_SECONDS)
        with contextlib.suppress(OSError, ValueError):  # the ledger is gone: nobody to tell
            send(("status", dataclasses.asdict(relay.status)))
        ledger.close()


def _watch_encoder(pid: int, stopped: threading.Event) -> None:
    """Ends the relay's process when its encoder ends unasked: the ledger starts both again
    (an encoder cannot be forked anew from a process that runs threads)."""
    _, status = os.waitpid(pid, 0)
    if stopped.is_set():
        return
    log.error("relay.encoder_exited", pid=pid, exitcode=os.waitstatus_to_exitcode(status))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def _statuses(
    relay: Relay, send: Callable[[tuple[Any, ...]], None], stopped: threading.Event
) -> None:
    sent: dict[str, Any] = {}
    sent_at = 0.0
    while not stopped.wait(STATUS_SECONDS):
        status = dataclasses.asdict(relay.status)
        if status != sent or time.monotonic() - sent_at >= HEARTBEAT_SECONDS:
            try:
                send(("status", status))
            except (OSError, ValueError):
                return
            sent, sent_at = status, time.monotonic()

"""Field devices' batches (``IngestReports``) prepared in a process of their own.

Why: preparing a batch (each report checked, its three events made, the report's event
hashed and sealed with Ed25519, all of them mapped to what the store records) is Python,
about 0.2 ms a report, and in the ledger's process it held the interpreter lock that
single commands and the group commit's thread need: during an ingest a single command's
commit waited mostly for the interpreter, not for the disk (wall-clock profiles in
docs/performance.md, "Single commands during an ingest"). Here the batch's Python runs in
another interpreter; the ledger's process keeps what needs the store: the query for
reports recorded before, the commit, the answers.

The child runs a :class:`~services.ledger.application.Ledger` over the in-memory store,
made with the ledger's reference data, time bounds, signing key (its
:class:`~services.ledger.seals.Sealer`) and the key table's sealer of personal data
(:class:`~services.ledger.personal_keys.PersonalSealer`): the same code prepares a batch
in either process (:meth:`Ledger.prepare_reports`). It gets a call's items, and sends
back the prepared reports in plain values (stored events, results), not domain events,
which cost as much to pickle as to make.

- One batch at a time (a lock): the child is one interpreter. The ledger's process saves
  a batch while the child prepares the next one.
- Started at the first batch (a second of imports, which a ledger that takes no batches,
  or a test's, never pays), from the thread of that call.
- A child that died (killed, out of memory), or that has not answered a batch in
  :data:`ANSWER_SECONDS` (then killed), fails the call it was preparing (``UNAVAILABLE``:
  nothing of the batch was saved, sending it again is safe); the next call starts a new
  one.
- It ignores the stop signals (a stop of the whole process group reaches the ledger,
  which closes it) and ends when its pipe closes, as it does when the ledger's process
  ends, however that ends.
- The signing key and the key-encryption keys cross the pipe to it, from the ledger's
  process to its own child, as the relay's child gets the ledger's settings.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import structlog

from services.common.errors import InvalidArgument, Unavailable
from services.common.reference import ReferenceData
from services.common.stopping import STOP_SIGNALS
from services.ledger.application import IngestItem, Ledger, PreparedBatch
from services.ledger.domain.incident import Actor
from services.ledger.domain.times import TimeBounds
from services.ledger.personal_keys import PersonalSealer
from services.ledger.seals import Sealer

log = structlog.get_logger(__name__)

#: The settings of the library's mapper the child must share with the ledger's, so that
#: it writes the same stored bytes (eventsourcing's names for them).
MAPPER_SETTINGS = ("COMPRESSOR_TOPIC", "CIPHER_TOPIC", "CIPHER_KEY")
#: How long the ledger waits for a new child to say it is ready (its imports take about a
#: second on these machines, several on a busy one).
START_SECONDS = 60.0
#: How long the ledger waits for a batch prepared: 500 reports take 0.1-0.3 s on these
#: machines (docs/performance.md), so a child that has not answered in a minute is stuck
#: (stopped, swapped out, deadlocked), and every batch after it would wait behind its lock.
ANSWER_SECONDS = 60.0
#: At close: how long the child may take to end after its pipe closes.
EXIT_SECONDS = 2.0


@dataclass(frozen=True)
class IntakeSetup:
    """What the child needs to prepare batches as the ledger would."""

    reference: ReferenceData
    time_bounds: TimeBounds
    sealer: Sealer | None
    personal_sealer: PersonalSealer | None
    store_env: Mapping[str, str] = field(default_factory=dict)
    log_level: str = "INFO"
    log_format: str = "auto"

    def ledger(self) -> Ledger:
        """The child's ledger: over the in-memory store, mapping as the ledger's does."""
        env = {k: v for k, v in self.store_env.items() if k in MAPPER_SETTINGS}
        return Ledger(
            self.reference,
            env={**env, "PERSISTENCE_MODULE": "eventsourcing.popo"},
            sealer=self.sealer,
            time_bounds=self.time_bounds,
            personal_sealer=self.personal_sealer,
        )


@dataclass(frozen=True)
class _Failed:
    """The child's answer when preparing raised something other than a report's refusal."""

    error_type: str
    message: str


class IntakeProcess:
    """The ledger's side of the intake's child process (:meth:`prepare`, :meth:`close`)."""

    def __init__(self, setup: IntakeSetup, answer_seconds: float = ANSWER_SECONDS) -> None:
        self._setup = setup
        self._answer_seconds = answer_seconds
        self._lock = threading.Lock()
        self._child: tuple[BaseProcess, Connection] | None = None
        self._closed = False

    def prepare(
        self, actor: Actor, items: Sequence[IngestItem | InvalidArgument], skew_ms: int | None
    ) -> PreparedBatch:
        """The batch prepared by the child (:meth:`Ledger.prepare_reports`)."""
        with self._lock:
            process, conn = self._running()
            # A stuck child is killed at the deadline, which ends the send (a batch is more
            # than the pipe's buffer holds, so sending to a child that does not read
            # blocks) or the wait for the answer, whichever is under way.
            stuck = threading.Event()
            watchdog = threading.Timer(self._answer_seconds, _kill_stuck, (process, stuck))
            watchdog.daemon = True
            watchdog.start()
            try:
                conn.send((actor, items, skew_ms))
                answer = conn.recv()
            except (EOFError, OSError) as exc:
                self._discard()
                log.error(
                    "intake.child_lost",
                    pid=process.pid,
                    exitcode=process.exitcode,
                    error_type="TimeoutError" if stuck.is_set() else type(exc).__name__,
                )
                raise Unavailable(
                    "the ledger's intake process ended or stopped answering while it "
                    "prepared this batch; nothing of it was recorded: send it again",
                    reason="INTAKE_RESTARTED",
                ) from None
            finally:
                watchdog.cancel()
        if isinstance(answer, _Failed):
            raise RuntimeError(f"preparing the batch failed: {answer.error_type}: {answer.message}")
        if not isinstance(answer, PreparedBatch):
            raise TypeError(f"the intake process answered {type(answer).__name__}")
        return answer

    def close(self) -> None:
        """End the child (its pipe closed); a call after this is refused.

        Called after the gRPC server's grace period: a batch still being prepared then is
        stuck or its call already cancelled, and waiting for it (up to ``answer_seconds``)
        would take the ledger past its stop deadline. The child is killed instead (the
        batch's call, if anyone still waits on it, is refused with ``INTAKE_RESTARTED``)."""
        self._closed = True  # no new child from here on (read under the lock)
        if not self._lock.acquire(timeout=EXIT_SECONDS):
            child = self._child
            if child is not None:
                log.warning("intake.killed_at_stop", pid=child[0].pid)
                child[0].kill()
            self._lock.acquire()
        try:
            self._discard()
        finally:
            self._lock.release()

    @property
    def pid(self) -> int | None:
        """The child's process id, while one runs (tests, metrics)."""
        child = self._child
        return None if child is None else child[0].pid

    def _running(self) -> tuple[BaseProcess, Connection]:
        if self._closed:
            raise Unavailable("the ledger is stopping", reason="SHUTTING_DOWN")
        if self._child is not None:
            if self._child[0].is_alive():
                return self._child
            # Died between calls (killed, out of memory): said here, as the operator
            # otherwise sees only a new pid at the next batch.
            log.warning(
                "intake.child_lost", pid=self._child[0].pid, exitcode=self._child[0].exitcode
            )
        self._discard()
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(
            target=serve, args=(theirs, self._setup), name="ledger-intake", daemon=True
        )
        process.start()
        theirs.close()
        self._child = (process, ours)
        try:
            # poll() is also true when the child ended before it was ready (its pipe
            # closed): recv() then raises EOFError.
            ready = ours.poll(START_SECONDS) and ours.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            self._discard()
            log.error("intake.start_failed", pid=process.pid, exitcode=process.exitcode)
            raise Unavailable(
                "the ledger's intake process did not start; nothing of this batch was "
                "recorded: send it again",
                reason="INTAKE_RESTARTED",
            )
        log.info("intake.started", pid=process.pid)
        return process, ours

    def _discard(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        process, conn = child
        conn.close()  # the child's recv ends: it returns
        process.join(EXIT_SECONDS)
        if process.is_alive():
            process.kill()
            process.join(EXIT_SECONDS)


def _kill_stuck(process: BaseProcess, stuck: threading.Event) -> None:
    stuck.set()
    process.kill()


def serve(conn: Connection, setup: IntakeSetup) -> None:
    """The child: prepare each batch the pipe brings, until it closes."""
    for signum in STOP_SIGNALS:  # the ledger closes it in order
        signal.signal(signum, signal.SIG_IGN)
    from services.common.logging import configure_logging

    configure_logging(setup.log_level, setup.log_format)
    structlog.contextvars.bind_contextvars(process="intake")
    try:
        ledger = setup.ledger()
    except Exception:  # the ledger sees the pipe close, and refuses the batch
        # Logged with its traceback, then exit 1: raised further, multiprocessing would
        # print the same traceback again as plain text beside the JSON log.
        log.exception("intake.start_failed")
        raise SystemExit(1) from None
    try:
        conn.send("ready")
        while True:
            try:
                actor, items, skew_ms = conn.recv()
            except EOFError:
                return
            try:
                answer: PreparedBatch | _Failed = ledger.prepare_reports(actor, items, skew_ms)
            except Exception as exc:  # sent back: the ledger fails the call with it
                log.exception("intake.prepare_failed")
                answer = _Failed(type(exc).__name__, str(exc))
            try:
                conn.send(answer)
            except OSError:  # the ledger went away meanwhile
                return
    finally:
        ledger.close()

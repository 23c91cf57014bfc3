"""How a process stops: SIGTERM or SIGINT, a grace period, then a hard deadline.

The ledger, the notifier and the ``make run`` supervisor create a :class:`Stopping` first
thing in ``main()`` (this module imports nothing slow, so the handlers are in place
before the service's imports) and install it. From then on:

- A stop signal is seen at once, whatever the main thread is doing. The kernel may
  deliver SIGTERM to any thread, and Python runs a signal handler only in the main
  thread, between bytecodes: a main thread blocked in an untimed wait never ran it (a
  SIGTERM taken by another thread was always ignored; sent to the process at random
  moments, one notifier under webhook delivery in 76 ignored it). And a handler that
  sets a ``threading.Event`` can deadlock a main thread interrupted inside
  ``Event.wait()`` of the same event. So the Python handler does nothing; the C-level
  handler writes the signal's number to a socket (:func:`signal.set_wakeup_fd`), and a
  watcher thread reading that socket records the request, starts the deadline and logs
  ``<name>.stopping`` (the main thread does, when logging was not configured yet). The
  main thread waits with :meth:`Stopping.wait`, in timed steps.
- The main thread then stops the service (:func:`serve_until_stopped`): close errors are
  logged by the service's ``stop()`` and do not keep the process alive.
- If the process still runs :attr:`Stopping.deadline_seconds` after the signal (grace
  period plus :data:`STOP_MARGIN_SECONDS` for closing; stop hung, a thread that does not
  end holds up the interpreter's exit), it logs ``<name>.stop_forced`` with what each
  thread was doing and exits with :data:`FORCED_EXIT_CODE`.
- A process started with SIGTERM and SIGINT blocked (``make run`` starts its children so)
  gets a signal sent before the handlers were installed once they are: nothing is lost.
  Started otherwise, a signal in the interpreter's first few tens of milliseconds, before
  ``main()`` runs, still has its default effect (the process ends, status -15 / 143).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.common.config import LedgerSettings, NotifierSettings

#: The signals that stop a service.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Time allowed after the grace period for closing (NATS, stores, threads) before the
#: process is forced to exit. A whole stop took 20-90 ms (median), 1 s at most, over the
#: 200 stops of tests/integration/test_stopping.py on a busy 2-core machine.
STOP_MARGIN_SECONDS = 5.0
#: The grace period assumed until the service has read its settings.
DEFAULT_GRACE_SECONDS = 10.0
#: The exit code of a process that did not stop by its deadline.
FORCED_EXIT_CODE = 1
#: How often a waiting main thread returns to the interpreter (and how late a deadline
#: may be noticed).
POLL_SECONDS = 0.2


#: prctl(2): the signal a process gets when its parent ends, and the process's name.
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15


def tie_to_parent(parent_pid: int, name: str | None = None) -> None:
    """End this process (SIGKILL, from the kernel) when its parent ends, however that
    ends; SystemExit when the parent ``parent_pid`` has ended already. With ``name``, the
    process shows it (``ps -o comm``; 15 bytes at most). Linux."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the parent ended before the line above
        raise SystemExit(1)
    if name is not None:
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def stop_with_parent() -> None:
    """For ``subprocess.Popen(preexec_fn=...)``, in the child between fork and exec: ask it
    to stop (SIGTERM, from the kernel) when the process that started it ends, however that
    ends. ``make run``'s services run in process groups of their own (a Ctrl-C reaches only
    the supervisor, which stops them in order), so a supervisor killed (SIGKILL, the OOM
    killer) left them running, holding their ports. The thread that starts the child must
    outlive it (the kernel ties the child to that thread). Linux."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """The Python-level handler: the wakeup socket reports the signal (see module doc)."""


class Stopping:
    """The stop request of one process: see the module documentation.

    ``wake_signals`` (for instance SIGCHLD) end a :meth:`wait` early without being a
    stop request. ``on_force`` runs (at most two seconds) before a forced exit, e.g. to
    kill child processes.
    """

    def __init__(
        self,
        name: str,
        *,
        wake_signals: tuple[signal.Signals, ...] = (),
        on_force: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.deadline_seconds = DEFAULT_GRACE_SECONDS + STOP_MARGIN_SECONDS
        self._wake_signals = wake_signals
        self._on_force = on_force
        self._lock = threading.Lock()  # never taken in a signal handler
        self._requested = threading.Event()
        self._closed = threading.Event()
        self._wake = threading.Event()
        self._cause = ""  # the signal's name, or the reason given to request()
        self._announce: dict[str, str] | None = None  # the stopping line, until logged
        self._requested_at = 0.0
        self._reader, self._writer = socket.socketpair()

    @property
    def _log(self) -> Any:
        # Imported when first needed: structlog takes 0.15 s to import, and install()
        # comes before anything slow.
        import structlog

        return structlog.get_logger(self.name)

    # --- set-up (main thread) -------------------------------------------------------

    def install(self) -> Stopping:
        """Handlers for the stop (and wake) signals; then unblock the stop signals.

        Call it first in ``main()``, before the service's slow imports (this module
        imports nothing slow for that reason)."""
        self._writer.setblocking(False)
        previous = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        if previous != -1:
            self._log.warning(f"{self.name}.wakeup_fd_replaced", previous=previous)
        for signum in (*STOP_SIGNALS, *self._wake_signals):
            signal.signal(signum, _ignore)
        threading.Thread(target=self._watch, name=f"{self.name}-signals", daemon=True).start()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        return self

    def close(self) -> None:
        """Undo :meth:`install` and disarm the deadline, for a process that goes on
        (a test's). The handlers stay: the caller puts its own back."""
        self._closed.set()
        signal.set_wakeup_fd(-1)
        self._writer.close()  # the watcher reads the end of the stream and returns

    def set_deadline(self, seconds: float) -> None:
        """How long after the stop signal the process may run: its grace period plus
        the time it needs to close (e.g. ``grace + STOP_MARGIN_SECONDS``)."""
        self.deadline_seconds = seconds

    # --- state ----------------------------------------------------------------------

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    def request(self, reason: str) -> None:
        """A stop request other than a signal (the supervisor's, when a child died): the
        deadline applies from now."""
        self._on_stop(reason, reason=reason)

    def announce(self) -> None:
        """Log ``<name>.stopping`` once, when a stop was requested. The watcher does so at
        once if logging is configured; a stop requested earlier (during start-up) is
        logged by the main thread when it turns to stopping, in the configured format."""
        with self._lock:
            fields, self._announce = self._announce, None
        if fields is not None:
            self._log.info(f"{self.name}.stopping", **fields)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a stop request (True), a wake signal or ``timeout`` (False).

        Waits in steps of :data:`POLL_SECONDS`, so the main thread keeps returning to
        the interpreter.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._requested.is_set():
            left = POLL_SECONDS if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return False
            if self._wake.wait(min(left, POLL_SECONDS)):
                self._wake.clear()
                if not self._requested.is_set():
                    return False
        return True

    # --- the watcher and the deadline (their own threads) -----------------------------

    def _watch(self) -> None:
        while True:
            try:
                data = self._reader.recv(64)
            except OSError as exc:
                self._log.error(f"{self.name}.signal_watch_failed", error=str(exc))
                return
            if not data:
                return
            for signum in data:
                if signum in STOP_SIGNALS:
                    name = signal.Signals(signum).name
                    self._on_stop(name, signal=name)
                self._wake.set()

    def _on_stop(self, cause: str, **fields: str) -> None:
        with self._lock:
            again = self._requested.is_set()
            if not again:
                self._cause = cause
                self._requested_at = time.monotonic()
                self._announce = fields  # before the main thread can see the request
                self._requested.set()
        if again:
            self._log.info(f"{self.name}.stop_requested_again", **fields, note="still stopping")
            return
        self._wake.set()
        threading.Thread(target=self._enforce, name=f"{self.name}-deadline", daemon=True).start()
        import structlog

        if structlog.is_configured():
            self.announce()
        # else the main thread logs it once it has configured logging (see announce())

    def _enforce(self) -> None:
        while (left := self._requested_at + self.deadline_seconds - time.monotonic()) > 0:
            if self._closed.wait(min(left, POLL_SECONDS)):
                return
        self._force()

    def _force(self) -> None:
        """Log what is still running, run ``on_force``, exit. Each step may itself hang
        (a lock held by a stuck thread), so each gets a thread and a time limit."""
        frames = sys._current_frames()
        stuck = {
            thread.name: _where(frames.get(thread.ident or 0))
            for thread in threading.enumerate()
            if thread is not threading.current_thread()
        }
        seconds = round(time.monotonic() - self._requested_at, 1)

        def report() -> None:
            self._log.error(
                f"{self.name}.stop_forced",
                reason=f"still running {seconds:g} s after {self._cause} "
                f"(deadline {self.deadline_seconds:g} s)",
                exit_code=FORCED_EXIT_CODE,
                threads=stuck,
            )
            if self._on_force is not None:
                self._on_force()
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):  # exiting anyway; nowhere to report it
                    stream.flush()

        helper = threading.Thread(target=report, name=f"{self.name}-forced", daemon=True)
        helper.start()
        helper.join(2.0)
        os._exit(FORCED_EXIT_CODE)


def _where(frame: FrameType | None) -> str:
    if frame is None:
        return "?"
    code = frame.f_code
    return f"{code.co_filename}:{frame.f_lineno} {code.co_name}"


def deadline_seconds(settings: LedgerSettings | NotifierSettings) -> float:
    """How long a service may run after its stop signal: the grace period for calls in
    flight, the notifier's webhook timeout for deliveries under way, then the margin."""
    from services.common.config import NotifierSettings  # not at the top: see install()

    closing = settings.webhooks.timeout_seconds if isinstance(settings, NotifierSettings) else 0
    return settings.grace_seconds + closing + STOP_MARGIN_SECONDS


def serve_until_stopped(stopping: Stopping, stop: Callable[[], None]) -> int:
    """Block until a stop request, then ``stop()`` the service: exit code 0, or 1 if
    ``stop()`` raised (logged)."""
    import structlog

    log = structlog.get_logger(stopping.name)
    stopping.wait()
    stopping.announce()
    code = 0
    try:
        stop()
    except Exception:
        log.exception(f"{stopping.name}.stop_failed")
        code = 1
    log.info(f"{stopping.name}.stopped", exit_code=code)
    return code


def close_step(service: str, part: str, close: Callable[[], object]) -> None:
    """One step of a service's ``stop()``: a failure (a NATS connection reset by its
    peer, a store already gone) is logged and the next step still runs."""
    import structlog

    try:
        close()
    except Exception as exc:
        structlog.get_logger(service).warning(
            f"{service}.close_failed", part=part, error=f"{type(exc).__name__}: {exc}"
        )

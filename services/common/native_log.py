"""What gRPC's C core says on stderr, passed through, and refused TLS handshakes logged.

A TLS handshake that the server refuses (a client certificate signed by another CA, one
whose extended key usage leaves out clientAuth, a plaintext client on a TLS port) never
becomes a call: the client sees UNAVAILABLE ("Socket closed") and no interceptor of ours
runs. The only trace is a line that gRPC's C core writes to file descriptor 2, for
example ``... ssl_transport_security.cc:...] Handshake failed with error SSL_ERROR_SSL:
...: CERTIFICATE_VERIFY_FAILED: unsupported certificate purpose``. So a service that
serves replaces its stderr by a pipe: a thread passes every other line on to the real
stderr unchanged, and turns those lines into ``tls.handshake_refused`` log lines, bounded:
at most one line per reason every ``WINDOW_SECONDS``, counting the refusals it summarises
(a client retrying, or a scanner, must not flood the log, so the core's own lines for
them are not passed on).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import sys
import threading
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

WINDOW_SECONDS = 10.0
_HANDSHAKE = re.compile(rb"Handshake failed with (?:fatal )?error ([A-Z_]+)(?::\s*(.*))?")
_MAX_REASON = 160


def handshake_reason(line: bytes) -> str | None:
    """Why the core refused a handshake, from one of its stderr lines; None for other lines."""
    found = _HANDSHAKE.search(line)
    if found is None:
        return None
    detail = (found.group(2) or b"").decode("utf-8", "replace").strip()
    # "error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unsupported
    # certificate purpose" -> "CERTIFICATE_VERIFY_FAILED: unsupported certificate purpose"
    detail = detail.rsplit("OPENSSL_internal:", 1)[-1]
    reason = detail or found.group(1).decode("ascii")
    return reason[:_MAX_REASON]


class HandshakeLog:
    """Counts refused handshakes by reason; logs the first of each window and a summary."""

    def __init__(
        self,
        service: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        window: float = WINDOW_SECONDS,
    ) -> None:
        self._service = service
        self._clock = clock
        self._window = window
        self._since: dict[str, tuple[float, int]] = {}  # reason -> (window start, suppressed)
        self.refused = 0

    def refusal(self, reason: str) -> None:
        self.refused += 1
        now = self._clock()
        started, suppressed = self._since.get(reason, (-1.0, 0))
        if started >= 0 and now - started < self._window:
            self._since[reason] = (started, suppressed + 1)
            return
        self._since[reason] = (now, 0)
        log.warning(
            "tls.handshake_refused",
            service=self._service,
            reason=reason,
            refused_since_last_line=suppressed,
            note="no call reached the service; the client saw UNAVAILABLE",
        )
        if len(self._since) > 64:  # a bounded memory of reasons
            oldest = min(self._since, key=lambda r: self._since[r][0])
            del self._since[oldest]


def capture_native_stderr(service: str) -> HandshakeLog:
    """Put a pipe in place of file descriptor 2 and start the thread that reads it.

    At exit the real stderr is put back, which closes the pipe: the thread passes on what
    is left in it, so a last traceback is not lost.
    """
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    handshakes = HandshakeLog(service)
    thread = threading.Thread(
        target=_pump, args=(read_end, original, handshakes), name="native-stderr", daemon=True
    )
    thread.start()

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(original, 2)
        thread.join(timeout=2)

    atexit.register(restore)
    return handshakes


def _pump(read_end: int, original: int, handshakes: HandshakeLog) -> None:
    pending = b""
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            os.close(read_end)
            # What is left of a last line without its line break (a traceback's end).
            with contextlib.suppress(OSError):
                _write_all(original, pending)
            return
        out, pending = _passed_on(pending + chunk, handshakes)
        # If the real stderr is gone, keep draining all the same, or every writer to fd 2
        # would block.
        with contextlib.suppress(OSError):
            _write_all(original, out)


def _passed_on(data: bytes, handshakes: HandshakeLog) -> tuple[bytes, bytes]:
    """What of ``data`` goes on to the real stderr, and the unfinished line kept back.

    Every complete line goes on unchanged except the core's refused handshakes: each is
    counted by ``handshakes``, whose bounded ``tls.handshake_refused`` lines stand for
    them (passed on as well, they would be one line per refused connection, and a retrying
    client or a scanner would flood the log all the same).
    """
    *lines, pending = data.split(b"\n")
    kept: list[bytes] = []
    for line in lines:
        reason = handshake_reason(line)
        if reason is None:
            kept.append(line + b"\n")
        else:
            handshakes.refusal(reason)
    if len(pending) > 65536:  # a runaway line without a line break: not the core's
        kept.append(pending)
        pending = b""
    return b"".join(kept), pending


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]

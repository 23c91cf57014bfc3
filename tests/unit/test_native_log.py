"""Refused TLS handshakes, read from gRPC core's stderr lines: the reason, and one log line
per reason and window however many refusals."""

from __future__ import annotations

import os

import structlog

from services.common.native_log import HandshakeLog, _pump, handshake_reason

PURPOSE = (
    b"I1203 07:46:54.102325   16357 ssl_transport_security.cc:2563] Handshake failed with "
    b"error SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:"
    b"CERTIFICATE_VERIFY_FAILED: unsupported certificate purpose"
)


def test_the_reason_is_read_from_the_core_s_line() -> None:
    assert handshake_reason(PURPOSE) == "CERTIFICATE_VERIFY_FAILED: unsupported certificate purpose"
    assert handshake_reason(b"E... Handshake failed with fatal error SSL_ERROR_SSL") == (
        "SSL_ERROR_SSL"
    )
    assert handshake_reason(b'{"event": "ledger.started"}') is None
    assert handshake_reason(b"Traceback (most recent call last):") is None


def test_a_burst_is_one_line_per_reason_and_window() -> None:
    now = [100.0]
    handshakes = HandshakeLog("ledger", clock=lambda: now[0], window=10)
    with structlog.testing.capture_logs() as logged:
        for _ in range(50):
            handshakes.refusal("CERTIFICATE_VERIFY_FAILED: unsupported certificate purpose")
        handshakes.refusal("WRONG_VERSION_NUMBER")
        now[0] += 11
        handshakes.refusal("CERTIFICATE_VERIFY_FAILED: unsupported certificate purpose")
    lines = [e for e in logged if e["event"] == "tls.handshake_refused"]
    assert [(e["reason"][:25], e["refused_since_last_line"]) for e in lines] == [
        ("CERTIFICATE_VERIFY_FAILED", 0),
        ("WRONG_VERSION_NUMBER", 0),
        ("CERTIFICATE_VERIFY_FAILED", 49),
    ]
    assert handshakes.refused == 52


def test_refused_handshakes_reach_stderr_only_as_the_bounded_summary() -> None:
    """A scanner's thousand refused handshakes must not be a thousand stderr lines: the
    core's own line for each is held back, every other line (a traceback) goes on whole."""
    source_read, source_write = os.pipe()
    sink_read, sink_write = os.pipe()
    traceback = b'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: boom'
    os.write(source_write, PURPOSE + b"\n")
    os.write(source_write, (PURPOSE + b"\n") * 40 + b"E1203 other core line\n" + PURPOSE[:30])
    os.write(source_write, PURPOSE[30:] + b"\n" + traceback)
    os.close(source_write)
    handshakes = HandshakeLog("ledger")
    with structlog.testing.capture_logs() as logged:
        _pump(source_read, sink_write, handshakes)  # returns at the end of its input
    os.close(sink_write)
    with os.fdopen(sink_read, "rb") as sink:
        passed = sink.read()
    assert passed == b"E1203 other core line\n" + traceback
    assert handshakes.refused == 42
    assert [e["event"] for e in logged] == ["tls.handshake_refused"]

"""StreamVerifyLedger's relay between the verifying thread and the stream: a bounded rate,
the result last, errors passed on, and a verification that stops once the caller left."""

from __future__ import annotations

import threading

import pytest

from services.ledger.api.audit_servicer import ProgressRelay
from services.ledger.audit import VerifyProgress, VerifyReport
from services.ledger.audit.verify_stored import ProgressCallback

REPORT = VerifyReport(ok=True, events=5, incidents=2, checkpoints_checked=0, divergence=None)


def test_at_most_one_progress_per_interval_is_passed_on_then_the_result() -> None:
    now = [100.0]
    relay = ProgressRelay(0.2, clock=lambda: now[0])

    def verify(progress: ProgressCallback) -> VerifyReport:
        for at, position in ((100.0, 0), (100.1, 1), (100.25, 2), (100.3, 3), (100.5, 4)):
            now[0] = at
            progress(VerifyProgress(position, 4, position))
        return REPORT

    worker = threading.Thread(target=relay.run, args=(verify,))
    worker.start()
    received = list(relay.received())
    worker.join(10)
    assert received == [
        VerifyProgress(0, 4, 0),
        VerifyProgress(2, 4, 2),
        VerifyProgress(4, 4, 4),
        REPORT,
    ]


def test_the_verification_s_error_is_raised_in_the_stream() -> None:
    relay = ProgressRelay(0.0)

    def verify(progress: ProgressCallback) -> VerifyReport:
        progress(VerifyProgress(0, 9, 0))
        raise OSError("the store went away")

    worker = threading.Thread(target=relay.run, args=(verify,))
    worker.start()
    received = relay.received()
    assert next(received) == VerifyProgress(0, 9, 0)
    with pytest.raises(OSError, match="went away"):
        next(received)
    worker.join(10)


def test_once_the_caller_left_the_verification_stops_at_its_next_report() -> None:
    relay = ProgressRelay(0.0)
    reports: list[int] = []

    def verify(progress: ProgressCallback) -> VerifyReport:
        for position in range(1_000_000):
            reports.append(position)
            progress(VerifyProgress(position, 10**6, position))
        return REPORT

    worker = threading.Thread(target=relay.run, args=(verify,))
    worker.start()
    received = relay.received()
    assert next(received) == VerifyProgress(0, 10**6, 0)  # then nobody reads: it waits
    relay.leave()
    worker.join(10)
    assert not worker.is_alive(), "the verification stopped"
    assert len(reports) <= 3, "it stopped at once rather than verifying on"
    assert REPORT not in list(received)

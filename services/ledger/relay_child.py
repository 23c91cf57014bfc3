"""``python -m services.ledger.relay_child CONTROL_FD WAKE_FD LEDGER_PID``: the entry of
the relay's process (:mod:`services.ledger.relay_process`), started by the ledger, never
by hand.

It imports nothing heavy before it is tied to the ledger: the kernel kills it when the
ledger's process ends (``PR_SET_PDEATHSIG``), and a ledger already gone by then ends it
too. A relay never outlives its ledger, even while it starts (its imports take about a
second), so a ledger killed outright leaves nothing behind.
"""

from __future__ import annotations

import signal
import sys

from services.common.stopping import STOP_SIGNALS, tie_to_parent


def main(argv: list[str]) -> None:
    control_fd, wake_fd, ledger_pid = (int(value) for value in argv)
    tie_to_parent(ledger_pid)
    # The stop signals came blocked from the ledger; ignored before they are unblocked.
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    from services.ledger.relay_process import serve

    serve(control_fd, wake_fd)


if __name__ == "__main__":
    main(sys.argv[1:])

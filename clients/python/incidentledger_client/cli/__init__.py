"""``ledgerctl``: the incident ledger's command-line tool, on the typed client library.

Run it as ``ledgerctl`` or ``python -m ledgerctl`` (the entry point ``ledgerctl.run`` keeps gRPC
core's own log lines off the terminal first; ``python -m incidentledger_client.cli`` does not):
installed in the repository's
venv by ``make venv`` (the project's console script), or elsewhere with
``pip install './clients/python[cli]'``.
"""

import sys

from incidentledger_client.cli.app import app, main
from incidentledger_client.cli.errors import EXIT_CODES

__all__ = ["EXIT_CODES", "app", "main", "run"]


def run() -> None:
    """The ``ledgerctl`` console script."""
    sys.exit(main())

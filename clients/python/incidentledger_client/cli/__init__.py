"""``ledgerctl``: the incident ledger's command-line tool, on the typed client library.

Run it as ``python -m incidentledger_client.cli`` (``PYTHONPATH=.:gen:clients/python`` in the
repository) or, installed with ``pip install './clients/python[cli]'``, as ``ledgerctl``.
"""

import sys

from incidentledger_client.cli.app import EXIT_CODES, app, main

__all__ = ["EXIT_CODES", "app", "main", "run"]


def run() -> None:
    """The ``ledgerctl`` console script."""
    sys.exit(main())

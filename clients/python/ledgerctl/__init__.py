"""The ``ledgerctl`` console script's entry point, outside the client library's package.

gRPC's C core writes its own log lines to the terminal (at INFO, ``I... ssl_transport_security
... Handshake failed ...`` for every refused TLS handshake, at every retry), which mean nothing
to a person at the terminal: ledgerctl says what went wrong in its own words. The core reads
``GRPC_VERBOSITY`` once, when ``grpc`` is imported, and importing anything of
``incidentledger_client`` imports ``grpc``: so the variable is set here, before that, and
only for ledgerctl. The library leaves it alone: the services rely on the core's handshake
lines (``services/common/native_log.py`` turns them into ``tls.handshake_refused``). A
``GRPC_VERBOSITY`` already set (``GRPC_VERBOSITY=INFO ledgerctl ...`` to see them) wins.
"""

import os
import sys

#: The core's verbosity for ledgerctl unless GRPC_VERBOSITY says otherwise: its errors only.
VERBOSITY = "ERROR"
#: Ctrl-C's exit code (``incidentledger_client.cli.errors.EXIT_INTERRUPTED``, which is not
#: imported yet when it may be needed here).
INTERRUPTED = 130


def run() -> None:
    """The ``ledgerctl`` console script (``python -m ledgerctl`` too)."""
    os.environ.setdefault("GRPC_VERBOSITY", VERBOSITY)
    try:
        # Importing the client (grpc, protobuf, rich, typer) takes a second or two of every
        # run: a Ctrl-C then, or anywhere outside a command's own handling, ends ledgerctl as
        # an interrupted command ends, quietly with 130, not with a traceback.
        from incidentledger_client.cli import run as ledgerctl

        ledgerctl()
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)

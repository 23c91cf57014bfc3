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

#: The core's verbosity for ledgerctl unless GRPC_VERBOSITY says otherwise: its errors only.
VERBOSITY = "ERROR"


def run() -> None:
    """The ``ledgerctl`` console script (``python -m ledgerctl`` too)."""
    os.environ.setdefault("GRPC_VERBOSITY", VERBOSITY)
    from incidentledger_client.cli import run as ledgerctl

    ledgerctl()

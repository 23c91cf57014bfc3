"""``python -m ledgerctl``: ledgerctl with gRPC core's own log lines kept off the terminal."""

from ledgerctl import run

run()

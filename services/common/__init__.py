"""Code shared by the ledger and the notifier: configuration, logging, errors."""

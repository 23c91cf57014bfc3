"""Run the ledger: ``python -m services.ledger [serve|migrate]``."""

from __future__ import annotations

import argparse
import sys

import structlog

from services.common.config import ConfigError, LedgerSettings
from services.common.logging import configure_logging
from services.common.serving import serve_until_signal
from services.ledger.domain.reference import ReferenceDataError
from services.ledger.server import build, migrate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.ledger")
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=["serve", "migrate"],
        help="serve (default) or migrate: create the store's tables and exit",
    )
    args = parser.parse_args(argv)
    log = structlog.get_logger("services.ledger")
    try:
        settings = LedgerSettings.from_env()
        configure_logging(settings.log_level, settings.log_format)
        if args.command == "migrate":
            migrate(settings)
            return 0
        running = build(settings)
    except (ConfigError, ReferenceDataError) as exc:
        configure_logging()
        log.error("ledger.config_error", error=str(exc))
        return 2

    serve_until_signal("ledger", lambda: running.stop(settings.grace_seconds), running.stopped)
    return 0


if __name__ == "__main__":
    sys.exit(main())

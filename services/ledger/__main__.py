"""Run the ledger: ``python -m services.ledger [serve|migrate]``."""

from __future__ import annotations

import argparse
import sys

from services.common.stopping import Stopping, deadline_seconds, serve_until_stopped


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
    # Stop signals are handled from here on; the service's modules take 0.6 s to import.
    stopping = Stopping("ledger").install() if args.command == "serve" else None
    import structlog

    from services.common.config import ConfigError, LedgerSettings
    from services.common.logging import configure_logging
    from services.common.native_log import capture_native_stderr
    from services.common.reference import ReferenceDataError
    from services.common.store_errors import logged_start_failure
    from services.ledger.server import build, migrate

    log = structlog.get_logger("services.ledger")
    try:
        settings = LedgerSettings.from_env()
        configure_logging(settings.log_level, settings.log_format)
        if stopping is None:
            migrate(settings)
            return 0
        stopping.set_deadline(deadline_seconds(settings))
        capture_native_stderr("ledger")  # refused TLS handshakes reach the log
        running = build(settings)
    except (ConfigError, ReferenceDataError) as exc:
        configure_logging()
        log.error("ledger.config_error", error=str(exc))
        return 2
    except Exception as exc:  # a store that is not there: one line, not a traceback
        if not logged_start_failure("ledger", exc):
            raise
        return 1
    return serve_until_stopped(stopping, lambda: running.stop(settings.grace_seconds))


if __name__ == "__main__":
    sys.exit(main())

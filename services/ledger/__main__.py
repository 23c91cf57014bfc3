"""Run the ledger: ``python -m services.ledger [serve|migrate|generate-signing-key]``."""

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
        choices=["serve", "migrate", "generate-signing-key"],
        help="serve (default); migrate: create the store's tables and exit; "
        "generate-signing-key: write a new signing key pair to --out (a key rotation, "
        "docs/operations.md), never over an existing file",
    )
    parser.add_argument(
        "--out", help="generate-signing-key: the private key's file (.pub beside it)"
    )
    args = parser.parse_args(argv)
    if args.command == "generate-signing-key":
        return _generate_signing_key(parser, args.out)
    # Stop signals are handled from here on; the service's modules take 0.6 s to import.
    stopping = Stopping("ledger").install() if args.command == "serve" else None
    import structlog

    from services.common.config import (
        ConfigError,
        LedgerSettings,
        check_ledger_production,
        warn_open_key_files,
        warn_unknown_variables,
    )
    from services.common.datafiles import logged_access_failure, logged_disk_full
    from services.common.logging import configure_logging
    from services.common.native_log import capture_native_stderr
    from services.common.reference import ReferenceDataError
    from services.common.started import announce_started
    from services.common.store_errors import logged_start_failure
    from services.ledger.server import build, migrate

    log = structlog.get_logger("services.ledger")
    read = False  # whether the settings were taken (and the unknown variables said)
    try:
        if stopping is not None:
            check_ledger_production()
        settings = LedgerSettings.from_env()
        configure_logging(settings.log_level, settings.log_format)
        read = True
        warn_unknown_variables(log)
        warn_open_key_files(settings, log)
        if stopping is None:
            migrate(settings)
            return 0
        stopping.set_deadline(deadline_seconds(settings))
        capture_native_stderr("ledger")  # refused TLS handshakes reach the log
        running = build(settings)
    except (ConfigError, ReferenceDataError) as exc:
        configure_logging()
        if not read:  # a setting missing or refused may be one misspelt
            warn_unknown_variables(log)
        log.error("ledger.config_error", error=str(exc))
        return 2
    except Exception as exc:  # a store that is not there: one line, not a traceback
        if logged_access_failure("ledger", exc):
            return 2
        if logged_disk_full("ledger", exc):
            return 1
        if not logged_start_failure("ledger", exc):
            raise
        return 1
    announce_started(running.port)  # to `make run`'s supervisor, if it started this process
    return serve_until_stopped(stopping, lambda: running.stop(settings.grace_seconds))


def _generate_signing_key(parser: argparse.ArgumentParser, out: str | None) -> int:
    """A new key pair for a rotation; exit 2 when --out is missing or already exists."""
    from pathlib import Path

    import structlog

    from services.common.logging import configure_logging
    from services.ledger.audit.keys import generate_key_pair

    if not out:
        parser.error("generate-signing-key needs --out FILE")
    configure_logging()
    log = structlog.get_logger("services.ledger")
    path = Path(out)
    try:
        kid = generate_key_pair(path)
    except OSError as exc:
        log.error("ledger.signing_key_not_written", private_key=str(path), error=str(exc))
        return 2
    if kid is None:
        log.error(
            "ledger.signing_key_exists",
            private_key=str(path),
            error="the file exists and is left as it is: it may be the key a ledger seals with",
        )
        return 2
    log.info(
        "ledger.signing_key_generated",
        private_key=str(path),
        public_key=str(path.with_suffix(".pub")),
        key_id=kid,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

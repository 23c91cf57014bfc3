"""``python -m services.ledger.projections rebuild``: rebuild the projections from zero.

Uses the ledger's settings (LEDGER_* and the eventsourcing variables); writes only
structlog lines, the last one (``projections.rebuild_done``) with the figures.
"""

from __future__ import annotations

import argparse
import sys

import structlog

from services.common.config import ConfigError, LedgerSettings
from services.common.logging import configure_logging
from services.common.reference import ReferenceData, ReferenceDataError
from services.ledger.application import Ledger
from services.ledger.projections.service import Projections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.ledger.projections")
    parser.add_argument("command", choices=["rebuild"], help="rebuild: apply the log from zero")
    parser.parse_args(argv)
    log = structlog.get_logger("services.ledger.projections")
    try:
        settings = LedgerSettings.from_env()
        configure_logging(settings.log_level, settings.log_format)
        reference = ReferenceData.load(settings.reference_file)
    except (ConfigError, ReferenceDataError) as exc:
        configure_logging()
        log.error("projections.config_error", error=str(exc))
        return 2
    ledger = Ledger(reference, env=settings.store_env)
    projections = Projections(ledger, settings.store_env, reference, create=True)
    try:
        stats = projections.rebuild()
    finally:
        projections.close()
        ledger.close()
    log.info(
        "projections.rebuild_done",
        events=stats.events,
        seconds=round(stats.seconds, 3),
        events_per_second=round(stats.events_per_second),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run the notifier: ``python -m services.notifier``."""

from __future__ import annotations

import sys

import structlog

from services.common.config import ConfigError, NotifierSettings
from services.common.logging import configure_logging
from services.common.serving import serve_until_signal
from services.ledger.domain.reference import ReferenceDataError
from services.notifier.server import build


def main() -> int:
    log = structlog.get_logger("services.notifier")
    try:
        settings = NotifierSettings.from_env()
        configure_logging(settings.log_level, settings.log_format)
        running = build(settings)
    except (ConfigError, ReferenceDataError) as exc:
        configure_logging()
        log.error("notifier.config_error", error=str(exc))
        return 2
    serve_until_signal("notifier", lambda: running.stop(settings.grace_seconds), running.stopped)
    return 0


if __name__ == "__main__":
    sys.exit(main())

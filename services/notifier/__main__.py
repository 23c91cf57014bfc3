"""Run the notifier: ``python -m services.notifier``."""

from __future__ import annotations

import sys

from services.common.stopping import Stopping, deadline_seconds, serve_until_stopped


def main() -> int:
    # Stop signals are handled from here on; the service's modules take 0.6 s to import.
    stopping = Stopping("notifier").install()
    import structlog

    from services.common.config import (
        ConfigError,
        NotifierSettings,
        warn_open_key_files,
        warn_unknown_variables,
    )
    from services.common.datafiles import logged_access_failure, logged_disk_full
    from services.common.logging import configure_logging
    from services.common.native_log import capture_native_stderr
    from services.common.reference import ReferenceDataError
    from services.common.started import announce_started
    from services.common.store_errors import logged_start_failure
    from services.notifier.server import build

    log = structlog.get_logger("services.notifier")
    read = False  # whether the settings were taken (and the unknown variables said)
    try:
        settings = NotifierSettings.from_env()
        configure_logging(settings.log_level, settings.log_format)
        read = True
        warn_unknown_variables(log)
        warn_open_key_files(settings, log)
        stopping.set_deadline(deadline_seconds(settings))
        capture_native_stderr("notifier")  # refused TLS handshakes reach the log
        running = build(settings)
    except (ConfigError, ReferenceDataError) as exc:
        configure_logging()
        if not read:  # a setting missing or refused may be one misspelt
            warn_unknown_variables(log)
        log.error("notifier.config_error", error=str(exc))
        return 2
    except Exception as exc:  # a store that is not there: one line, not a traceback
        if logged_access_failure("notifier", exc):
            return 2
        if logged_disk_full("notifier", exc):
            return 1
        if not logged_start_failure("notifier", exc):
            raise
        return 1
    announce_started(running.port)  # to `make run`'s supervisor, if it started this process
    return serve_until_stopped(stopping, lambda: running.stop(settings.grace_seconds))


if __name__ == "__main__":
    sys.exit(main())

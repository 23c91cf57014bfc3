"""``python -m services.situation_room`` (``situation-room``): serve the page with uvicorn."""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import structlog
import uvicorn
import yaml

from services.common.config import ConfigError, SituationRoomSettings, warn_unknown_variables
from services.common.logging import configure_logging
from services.common.reference import ReferenceData
from services.common.started import announce_started
from services.common.stopping import STOP_SIGNALS
from services.situation_room.app import build_app
from services.situation_room.live import NotReadyError, SetupMissingError

log = structlog.get_logger("services.situation_room")

#: How long open connections (event streams) may take to close after SIGTERM.
STOP_SECONDS = 5


def subscription_token(settings: SituationRoomSettings) -> str:
    """``SITUATION_ROOM_TOKEN``, else (development) the coordinator's development token."""
    if settings.token:
        return settings.token
    coordinator = ReferenceData.load(settings.reference_file).coordinator
    path: Path = settings.dev_tokens_file
    try:
        tokens = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as error:  # the ledger writes it when it first starts
        hashes = path.parent / "tokens.yaml"
        if hashes.exists():  # it makes the two together, only when neither exists
            raise SetupMissingError(
                f"SITUATION_ROOM_TOKEN is unset and {path} is missing while {hashes} is "
                "there: the ledger writes both only on a first start, when neither exists, "
                "so it will not write it. Put it back from the backup that gave the tokens "
                "file, or set SITUATION_ROOM_TOKEN to the coordinator's token, or (development "
                "only) delete the tokens file and restart to have new tokens made for every "
                "agency (the old ones stop working)"
            ) from error
        raise NotReadyError(
            f"SITUATION_ROOM_TOKEN is unset and {path} is not written yet: the ledger writes "
            "it on its first start"
        ) from error
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"SITUATION_ROOM_TOKEN is unset and {path} cannot be read") from error
    entry = tokens.get(coordinator) if isinstance(tokens, dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
        raise ValueError(f"SITUATION_ROOM_TOKEN is unset and {path} has no {coordinator} token")
    return str(entry["token"])


def main() -> int:
    try:
        settings = SituationRoomSettings.from_env()
    except ConfigError as exc:
        configure_logging()
        warn_unknown_variables(log)  # a setting missing or refused may be one misspelt
        log.error("situation_room.config_error", error=str(exc))
        return 2
    configure_logging(settings.log_level, settings.log_format)
    warn_unknown_variables(log)
    app = build_app(settings, token=lambda: subscription_token(settings))
    host, port = settings.host_port
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        # uvicorn's own lines (an exception in the application) through the project's
        # logging (configure_logging), not its own plain format; the page logs its requests
        # itself (services/situation_room/requestlog.py).
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=STOP_SECONDS,
    )
    Server(config).run()
    log.info("situation_room.stopped")
    return 0


class Server(uvicorn.Server):
    """uvicorn's server, which says where it listens once it does (port 0: the one chosen),
    and exits 0 after a stop signal (uvicorn's own handling re-raises the signal)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # `make run` starts its children with the stop signals blocked (services.common.
        # stopping): they are unblocked once the handler is in place, so none is lost.
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.should_exit:
            return
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        log.info("situation_room.started", url=f"http://{shown}:{port}/", port=port)
        announce_started(port)  # to `make run`'s supervisor, if it started this process


if __name__ == "__main__":
    sys.exit(main())

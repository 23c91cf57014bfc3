"""The example webhook receiver runs beside `make run` as its docstring says."""

from __future__ import annotations

from clients.examples.webhook_receiver import arguments
from services.common.config import declared


def test_default_port_is_free_under_make_run() -> None:
    # Before, it defaulted to 8080, where `make run` serves the situation room: run as
    # documented beside `make run`, it failed with "address already in use".
    room_port = int(str(declared("SITUATION_ROOM_LISTEN").info.default).rsplit(":", 1)[1])
    assert arguments().parse_args(["--secret", "s" * 16]).port != room_port

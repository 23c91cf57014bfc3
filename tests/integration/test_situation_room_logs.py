"""The situation room's process logs through the project's one logging setup: its request
lines and uvicorn's own (a request uvicorn cannot parse) are JSON lines, nothing else."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx

from tests.support import service_process

#: Nothing listens there (the page starts without a ledger or a notifier).
NOWHERE = "127.0.0.1:1"
WAIT_SECONDS = 10.0


def test_the_page_logs_only_json_lines_with_its_requests(tmp_path: Path) -> None:
    env = {
        "LEDGER_DATA_DIR": str(tmp_path),
        "SITUATION_ROOM_LISTEN": "127.0.0.1:0",
        "SITUATION_ROOM_LEDGER_ADDRESS": NOWHERE,
        "SITUATION_ROOM_NOTIFIER_ADDRESS": NOWHERE,
        "SITUATION_ROOM_TOKEN": "token",
    }
    with service_process("services.situation_room", env) as web:
        assert httpx.get(f"http://127.0.0.1:{web.port}/login").status_code == 200
        with socket.create_connection(("127.0.0.1", web.port), timeout=5) as garbage:
            garbage.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            garbage.recv(1024)

        def logged() -> tuple[list[str], list[dict[str, object]]]:
            text = web.log_path.read_text(errors="replace").splitlines()
            return [line for line in text if not line.startswith("{")], web.log_lines()

        deadline = time.monotonic() + WAIT_SECONDS
        while not any(e.get("logger") == "uvicorn.error" for e in logged()[1]):
            assert time.monotonic() < deadline, "uvicorn said nothing of the bad request"
            time.sleep(0.05)
    plain, lines = logged()
    assert plain == [], "every line is JSON"
    requests = [e for e in lines if e.get("event") == "request"]
    assert {(e["method"], e["path"], e["status"]) for e in requests} == {("GET", "/login", 200)}
    assert all(json.dumps(e) for e in lines)


def test_a_page_whose_development_tokens_were_not_restored_says_what_is_missing(
    tmp_path: Path,
) -> None:
    """A `make run` data directory restored with the tokens file (the hashes) but without
    `credentials/dev-tokens.yaml`: the ledger writes both only when neither exists, so the
    page's live subscription would wait for ever. It said so at info, every second, as if
    the ledger were about to write the file; now an error names the file and the ways out."""
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    (credentials / "tokens.yaml").write_text("development: true\nusers: []\n", encoding="utf-8")
    env = {
        "LEDGER_DATA_DIR": str(tmp_path),
        "SITUATION_ROOM_LISTEN": "127.0.0.1:0",
        "SITUATION_ROOM_LEDGER_ADDRESS": NOWHERE,
        "SITUATION_ROOM_NOTIFIER_ADDRESS": NOWHERE,
    }
    with service_process("services.situation_room", env) as web:
        deadline = time.monotonic() + WAIT_SECONDS
        while not any(e.get("event") == IMPOSSIBLE for e in web.log_lines()):
            assert time.monotonic() < deadline, [e.get("event") for e in web.log_lines()]
            time.sleep(0.05)
        lines = web.log_lines()
    said = [e for e in lines if e.get("event") == IMPOSSIBLE]
    assert [e for e in lines if e.get("event") == "situation_room.subscription_waiting"] == []
    assert said[0]["level"] == "error"
    assert str(credentials / "dev-tokens.yaml") in str(said[0]["error"])
    assert "SITUATION_ROOM_TOKEN" in str(said[0]["error"])
    assert "backup" in str(said[0]["error"])


IMPOSSIBLE = "situation_room.subscription_impossible"

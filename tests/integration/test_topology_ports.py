"""The ports of the topology's processes (tests/topology.py) on a loaded machine.

A port picked free beforehand (bound, closed, handed to a process) can be taken by another
process before that process binds it. A replica binds port 0 itself at its first start and
keeps the port it names in its start line; a restart on a port taken meanwhile waits for it;
PostgreSQL, which cannot bind a port of its own choice, takes another at a first start.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.natsserver import NatsServer, free_port
from tests import topology
from tests.support import address_taken, service_process
from tests.topology import Service, private_postgres, wait_until


@pytest.fixture
def ledger(tmp_path: Path, nats_server: NatsServer) -> Iterator[Service]:
    """One ledger replica on SQLite (its default store), not started."""
    service = Service(
        "services.ledger",
        {"LEDGER_DATA_DIR": str(tmp_path / "data"), "NATS_URL": nats_server.url},
        tmp_path,
    )
    try:
        yield service
    finally:
        service.stop()


def test_a_replica_binds_its_port_itself_and_keeps_it(ledger: Service) -> None:
    with pytest.raises(AssertionError, match="no port before its first start"):
        _ = ledger.address
    ledger.start()
    port = ledger.port
    assert port and ledger.address == f"127.0.0.1:{port}"
    ledger.kill()
    ledger.start()
    assert ledger.port == port
    assert [line["port"] for line in ledger.log_lines(every_start=True) if "port" in line] == [
        port,
        port,
    ]


def test_a_restart_waits_for_its_port_taken_while_it_was_down(ledger: Service) -> None:
    """Its clients know only its address: a restart on a port another process took meanwhile
    (a probe for a free port, a client's connection) waits until it is free again."""
    ledger.start()
    port = ledger.port
    ledger.kill()
    holder = socket.create_server(("127.0.0.1", port))

    def release_once_refused() -> None:
        """Held until a start has found it taken (it exits saying so), then released."""
        try:
            wait_until(
                lambda: any(
                    f"cannot listen on 127.0.0.1:{port}" in path.read_text(errors="replace")
                    for path in ledger.log_dir.glob(f"ledger-{ledger.tag}-*.log")
                ),
                what="a start that found its port taken",
            )
        finally:
            holder.close()

    releaser = threading.Thread(target=release_once_refused)
    releaser.start()
    try:
        ledger.start()
    finally:
        releaser.join()
    refused = [
        line
        for line in ledger.log_lines(every_start=True)
        if line["event"] == "ledger.config_error"
    ]
    assert refused, "a start found the port taken"
    assert ledger.running
    assert ledger.port == port


def test_a_private_postgres_whose_port_was_taken_before_its_start_takes_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        taken = holder.getsockname()[1]
        picks, real = iter([taken]), free_port
        monkeypatch.setattr(topology, "free_port", lambda: next(picks, 0) or real())
        with private_postgres() as server:
            assert server.port != taken
            with server.connect() as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_service_process_given_a_taken_port_waits_for_it(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """``service_process`` given a port (a restart where the clients expect it) that another
    process holds starts again until the port is free."""
    holder = socket.create_server(("127.0.0.1", 0))
    address = f"127.0.0.1:{holder.getsockname()[1]}"
    data = tmp_path / "data"

    def release_once_refused() -> None:  # held until a start has found it taken
        try:
            wait_until(
                lambda: any(
                    address_taken(path.read_text(errors="replace"), address)
                    for path in data.glob("ledger-*.log")
                ),
                what="a start that found its port taken",
            )
        finally:
            holder.close()

    releaser = threading.Thread(target=release_once_refused)
    releaser.start()
    env = {"LEDGER_DATA_DIR": str(data), "LEDGER_LISTEN": address, "NATS_URL": nats_server.url}
    try:
        with service_process("services.ledger", env) as ledger:
            assert f"127.0.0.1:{ledger.port}" == address
    finally:
        releaser.join()
    assert len(list(data.glob("ledger-*.log"))) >= 2, "a start found the port taken"

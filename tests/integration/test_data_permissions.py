"""The data directory and the files the services keep there are their user's only.

The event store, the notifier's store (webhook secrets), the credentials, the page-token
secret and the signing key: directories 0700, files 0600, whatever the umask.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from services.common.natsserver import NatsServer
from tests.support import running_ledger, service_process, settings_for

# Public by nature: the checkpoint key's public half, for auditors.
PUBLIC = {"ledger-signing.pub"}


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(data: Path, *, skip: set[Path] = frozenset()) -> dict[str, int]:  # type: ignore[assignment]
    """The permission bits of the data directory and of everything below it."""
    found = {".": stat.S_IMODE(data.stat().st_mode)}
    for path in data.rglob("*"):
        if path in skip or path.name in PUBLIC:
            continue
        found[str(path.relative_to(data))] = stat.S_IMODE(path.stat().st_mode)
    return found


def assert_private(found: dict[str, int], expected_files: set[str]) -> None:
    assert expected_files <= set(found), sorted(found)
    open_to_others = {
        name: oct(mode)
        for name, mode in found.items()
        if mode & 0o077 or (mode != 0o700 and mode != 0o600)
    }
    assert open_to_others == {}


def test_a_fresh_data_directory_is_private_whatever_the_umask(tmp_path: Path) -> None:
    data = tmp_path / "fresh" / "data"
    store_env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(data / "ledger.sqlite"),
    }
    with umask(0o002), running_ledger(settings_for(tmp_path, store_env, data_dir=data)) as client:
        client.report()  # the store has written (its -wal and -shm files exist)
        found = modes(data)
    assert_private(
        found,
        {
            "ledger.sqlite",
            "ledger.sqlite-wal",
            "credentials",
            "credentials/tokens.yaml",
            "credentials/dev-tokens.yaml",
            "page-token.secret",
            "keys",
            "keys/ledger-signing.key",
        },
    )


@pytest.mark.nats
def test_the_services_close_an_open_data_directory_and_create_private_files(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)  # as an older version, or mkdir with the usual umask, left it
    env = {
        "LEDGER_DATA_DIR": str(data),
        "NATS_URL": nats_server.url,
        # Free ports: the defaults (50051, 50052) may be a running `make run`'s.
        "LEDGER_LISTEN": "127.0.0.1:0",
        "NOTIFIER_LISTEN": "127.0.0.1:0",
    }
    with (
        service_process("services.ledger", env) as ledger,
        service_process("services.notifier", env) as notifier,
    ):
        found = modes(data, skip={ledger.log_path, notifier.log_path})
        closed = [line for line in ledger.log_lines() if line["event"] == "data_dir.closed"]
    assert [line["mode_was"] for line in closed] == ["0o755"]
    assert_private(
        found,
        {
            "ledger.sqlite",
            "notifier.sqlite",
            "credentials/tokens.yaml",
            "credentials/dev-tokens.yaml",
            "page-token.secret",
            "keys/ledger-signing.key",
        },
    )

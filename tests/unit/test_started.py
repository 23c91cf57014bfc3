"""How a service tells ``make run``'s supervisor the port it bound (services/common/started.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.started import STARTED_FILE_VARIABLE, announce_started, read_started
from services.run import with_port


def test_the_port_written_is_the_port_read(tmp_path: Path) -> None:
    path = tmp_path / "services.ledger.json"
    assert read_started(path) is None  # not written yet
    announce_started(50123, {STARTED_FILE_VARIABLE: str(path)})
    assert read_started(path) == 50123
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no partial file is left"


def test_started_by_anything_else_it_writes_nothing(tmp_path: Path) -> None:
    announce_started(50123, {})
    announce_started(50123, {STARTED_FILE_VARIABLE: ""})
    assert not list(tmp_path.iterdir())


def test_a_file_that_names_no_port_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"port": 0}', encoding="utf-8")
    with pytest.raises(ValueError, match="names no port"):
        read_started(path)


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("127.0.0.1:0", "127.0.0.1:40001"),
        ("0.0.0.0:0", "0.0.0.0:40001"),
        ("[::1]:0", "[::1]:40001"),
        ("localhost:40001", "localhost:40001"),
    ],
)
def test_the_address_bound_is_the_one_given_with_the_port_bound(listen: str, address: str) -> None:
    assert with_port(listen, 40001) == address

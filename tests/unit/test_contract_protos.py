"""The contract an outside client gets: the vendored google.rpc protos are the ones in use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import google.rpc
import pytest

ROOT = Path(__file__).resolve().parents[2]
VENDORED = ROOT / "proto" / "third_party" / "googleapis"


@pytest.mark.parametrize("name", ["code.proto", "error_details.proto", "status.proto"])
def test_vendored_google_rpc_protos_are_the_installed_ones(name: str) -> None:
    installed = Path(next(iter(google.rpc.__path__))) / name
    assert (VENDORED / "google" / "rpc" / name).read_bytes() == installed.read_bytes(), (
        f"proto/third_party/googleapis/google/rpc/{name} differs from the one of the pinned "
        "googleapis-common-protos: copy it again (see proto/third_party/googleapis/README.md)"
    )


def test_vendored_protos_carry_their_licence() -> None:
    assert "Apache License" in (VENDORED / "LICENSE").read_text(encoding="utf-8")


def test_an_outside_client_compiles_the_contract_with_the_vendored_protos(tmp_path: Path) -> None:
    """protoc with only proto/ and the vendored folder on its include path (plus the
    well-known types every protoc ships) compiles the contract and the error details."""
    files = sorted(
        str(p.relative_to(ROOT / "proto"))
        for p in (ROOT / "proto" / "incidentledger").rglob("*.proto")
    )
    files += [
        f"google/rpc/{name}" for name in ("code.proto", "error_details.proto", "status.proto")
    ]
    out = tmp_path / "contract.binpb"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",  # adds the well-known types' include path itself
            f"-I{ROOT / 'proto'}",
            f"-I{VENDORED}",
            f"--descriptor_set_out={out}",
            *files,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size > 0

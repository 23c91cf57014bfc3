"""The bench's profile summaries: collapsed stacks read back and shared out (no py-spy run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.profile import Profile, short, summary

ROOT = "/work/repo"
SITE = "/venv/lib/python3.11/site-packages"
RUN = f"Thread.run ({ROOT}/threading.py:982)"
EXECUTE = f"Ledger.execute ({ROOT}/services/ledger/application.py:235)"
SEAL = f"Sealer.seal ({ROOT}/services/ledger/seals.py:62)"
SIGN = f"sign ({SITE}/cryptography/ed25519.py:10)"
SERVE = f"_serve ({SITE}/grpc/_server.py:1314)"


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.txt"
    path.write_text(
        f"{RUN};{EXECUTE};{SEAL};{SIGN} 6\n{RUN};{EXECUTE};{SEAL} 2\n{RUN};{SERVE} 2\nnot a line\n",
        encoding="utf-8",
    )
    return path


def test_self_is_the_innermost_frame_and_total_anywhere_on_the_stack(raw: Path) -> None:
    profile = Profile.read(raw)
    assert profile.samples == 10
    assert profile.self_shares() == {SIGN: 6, SEAL: 2, SERVE: 2}
    total = profile.total_shares()
    assert total[RUN] == 10
    assert total[SEAL] == 8
    assert total[SERVE] == 2


def test_project_frames_charge_library_time_to_the_project_code_that_called_it(
    raw: Path,
) -> None:
    profile = Profile.read(raw)
    assert profile.self_shares(["/services/"]) == {SEAL: 8}
    assert set(profile.total_shares(["/services/"])) == {EXECUTE, SEAL}


def test_a_recursive_frame_counts_once_per_stack(tmp_path: Path) -> None:
    path = tmp_path / "recursive.txt"
    path.write_text(f"{RUN};{EXECUTE};{EXECUTE} 3\n", encoding="utf-8")
    assert Profile.read(path).total_shares()[EXECUTE] == 3


def test_frames_are_shortened_to_the_project_or_library_path() -> None:
    assert short(SEAL) == "Sealer.seal (services/ledger/seals.py:62)"
    assert short(SERVE) == "_serve (grpc/_server.py:1314)"
    assert short(RUN) == "Thread.run (threading.py:982)"


def test_the_summary_gives_shares_of_all_samples(raw: Path) -> None:
    text = summary(raw, top=2)
    assert "10 samples" in text
    assert " 60.0%  sign (cryptography/ed25519.py:10)" in text
    assert "100.0%  Thread.run (threading.py:982)" in text

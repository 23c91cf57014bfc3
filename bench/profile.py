"""Profiles of the service processes under the bench's load (py-spy), and their summaries.

With ``BENCH_PROFILE_DIR`` set, the bench attaches py-spy (``py-spy record --pid``,
non-blocking, 100 samples/s, only the thread holding the GIL, raw collapsed stacks) to
the processes it measures, for the window it measures them in, and writes one file per
process and window there:

- ``ledger-<store>-commands.txt``: the ledger process through the closed loop of
  section 3 (commands at saturation);
- ``relay-<store>-relay.txt`` and ``encoder-<store>-relay.txt``: the ledger's relay
  process and its encoder draining the backlog of section 5;
- ``ledger-<store>-e2e.txt``, ``relay-<store>-e2e.txt``, ``encoder-<store>-e2e.txt`` and
  ``notifier-<store>-e2e.txt``: the four processes while the sender of section 6 runs.

Only the thread that holds the interpreter lock is sampled (threads waiting on a lock,
a socket or the database are left out, and so is work done in C with the lock
released, such as SQLite's or gRPC's own): a share is of the process's Python time,
which one interpreter lock serialises, not of wall time.
``python -m bench.profile FILE...`` prints the frames with the largest shares: "self"
(the stack's innermost frame: where the time is spent) and "total" (anywhere on the
stack: what it is spent for), optionally only the project's own frames.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

PROFILE_ENV = "BENCH_PROFILE_DIR"
RATE = 100  # samples per second
PROJECT_PARTS = ("/services/", "/bench/", "/clients/")


def profile_dir() -> Path | None:
    value = os.environ.get(PROFILE_ENV, "")
    return Path(value) if value else None


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise RuntimeError(f"{PROFILE_ENV} is set but py-spy is not installed (requirements/dev)")
    return found


class Recording:
    """One py-spy attached to a process until ``stop``."""

    def __init__(self, label: str, pid: int, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{label}.txt"
        self._log = (directory / f"{label}.log").open("wb")
        self._spy = subprocess.Popen(
            [
                _py_spy(),
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(RATE),
                "--nonblocking",
                "--gil",
                "--full-filenames",
                "--format",
                "raw",
                "--output",
                str(self.path),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        """py-spy writes its file on SIGINT (as on Ctrl-C)."""
        if self._spy.poll() is None:
            self._spy.send_signal(signal.SIGINT)
        try:
            self._spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._spy.kill()
            self._spy.wait()
        self._log.close()


def start(label: str, pid: int) -> Recording | None:
    """A recording of ``pid`` when profiling is on (``BENCH_PROFILE_DIR``), else None."""
    directory = profile_dir()
    return None if directory is None else Recording(label, pid, directory)


def stop(recording: Recording | None) -> None:
    if recording is not None:
        recording.stop()


@contextmanager
def profiled(label: str, pid: int) -> Iterator[None]:
    recording = start(label, pid)
    try:
        yield
    finally:
        stop(recording)


# ------------------------------------------------------------------ summaries


@dataclass
class Profile:
    """Collapsed stacks (outermost frame first) with their sample counts."""

    stacks: Counter[tuple[str, ...]] = field(default_factory=Counter)

    @classmethod
    def read(cls, path: Path) -> Profile:
        profile = cls()
        for line in path.read_text("utf-8", errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                profile.stacks[tuple(stack.split(";"))] += int(count)
        return profile

    @property
    def samples(self) -> int:
        return sum(self.stacks.values())

    def self_shares(self, keep: Iterable[str] = ()) -> Counter[str]:
        """Samples by innermost frame; with ``keep``, by innermost frame whose file
        contains one of ``keep`` (the project's code that led to the time)."""
        parts = tuple(keep)
        shares: Counter[str] = Counter()
        for stack, count in self.stacks.items():
            frames = [f for f in stack if not parts or any(p in f for p in parts)]
            if frames:
                shares[frames[-1]] += count
        return shares

    def total_shares(self, keep: Iterable[str] = ()) -> Counter[str]:
        """Samples with the frame anywhere on the stack (each stack counted once)."""
        parts = tuple(keep)
        shares: Counter[str] = Counter()
        for stack, count in self.stacks.items():
            for frame in set(stack):
                if not parts or any(p in frame for p in parts):
                    shares[frame] += count
        return shares


def short(frame: str) -> str:
    """``name (path/to/file.py:12)`` -> ``name (file.py:12)``, site-packages folded."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, line = where.rpartition(":")
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    else:
        for part in PROJECT_PARTS:
            if part in path:
                path = part.strip("/") + "/" + path.split(part, 1)[1]
                break
        else:
            path = Path(path).name
    return f"{name} ({path}:{line})" if line else f"{name} ({path})"


def summary(path: Path, top: int = 12, project_only: bool = False) -> str:
    profile = Profile.read(path)
    total = profile.samples or 1
    keep = PROJECT_PARTS if project_only else ()
    held = profile.samples / RATE
    lines = [f"{path.name}: {profile.samples:,} samples ({held:.1f} s holding the GIL)"]
    for title, shares in (
        ("self", profile.self_shares(keep)),
        ("total", profile.total_shares(keep)),
    ):
        lines.append(f"  top {title}{' (project frames)' if project_only else ''}:")
        for frame, count in shares.most_common(top):
            lines.append(f"    {count / total:6.1%}  {short(frame)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--project", action="store_true", help="only the project's frames")
    args = parser.parse_args(argv)
    for path in args.files:
        print(summary(path, args.top, args.project))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A host of its own for a test's server or client: a network namespace reached over a
virtual ethernet pair, whose network can be cut as a host that died cuts it.

Stopping or freezing a process on the loopback cannot show what a dead host or a cut
network does: the kernel still answers for the process (it refuses, resets or acknowledges),
while a dead host answers nothing. :meth:`SeparateHost.cut` drops every packet between the
two hosts, both ways. Needs root's network administration (``ip netns``); a test that uses
it is skipped, saying why, without it.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from contextlib import suppress

import pytest


class SeparateHost:
    """A network namespace at :attr:`address`, reached from this host's :attr:`near`."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.namespace = f"ledger-test-{tag}"
        self._link = f"lgh{tag}"
        subnet = secrets.randbelow(2**14)  # a /30 of 10.213.0.0/16
        self.address = f"10.213.{subnet >> 6}.{(subnet & 63) * 4 + 2}"
        self.near = f"10.213.{subnet >> 6}.{(subnet & 63) * 4 + 1}"
        self._cut = False
        if shutil.which("ip") is None:
            pytest.skip("no `ip` command (iproute2) to give the test a host of its own")
        made = subprocess.run(
            ["ip", "netns", "add", self.namespace], capture_output=True, text=True, check=False
        )
        if made.returncode != 0:
            pytest.skip(f"no network namespace for the test: {made.stderr.strip()}")
        try:
            for command in (
                f"ip link add {self._link} type veth peer name lgn{tag}",
                f"ip link set lgn{tag} netns {self.namespace}",
                f"ip addr add {self.near}/30 dev {self._link}",
                f"ip link set {self._link} up",
                f"ip -n {self.namespace} addr add {self.address}/30 dev lgn{tag}",
                f"ip -n {self.namespace} link set lgn{tag} up",
                f"ip -n {self.namespace} link set lo up",
            ):
                self._ip(command)
        except BaseException:
            self.close()
            raise

    def launcher(self) -> list[str]:
        """What a command is run under to run on this host."""
        return ["ip", "netns", "exec", self.namespace]

    def cut(self) -> None:
        """Drop every packet between the two hosts, both ways."""
        self._ip(f"ip route add blackhole {self.address}/32")
        self._cut = True
        self._ip(f"ip -n {self.namespace} route add blackhole {self.near}/32")

    def mend(self) -> None:
        if self._cut:
            self._ip(f"ip route del blackhole {self.address}/32")
            self._ip(f"ip -n {self.namespace} route del blackhole {self.near}/32")
            self._cut = False

    def close(self) -> None:
        with suppress(AssertionError):
            self.mend()
        # The pair's end on this side goes with the namespace (its peer is in it), unless a
        # process still holds the namespace: removed by name too.
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self._link], capture_output=True, check=False)

    @staticmethod
    def _ip(command: str) -> None:
        done = subprocess.run(command.split(), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise AssertionError(f"{command}: {done.stderr.strip()}")

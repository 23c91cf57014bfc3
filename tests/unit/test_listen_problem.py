"""A port the ledger cannot bind is refused with the system's reason: gRPC's own error says
only "Failed to bind" (its reason goes to a raw stderr line of its own)."""

from __future__ import annotations

import socket

from services.common.serving import _bind_problem


def test_a_taken_port_is_named_with_the_systems_reason() -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        problem = _bind_problem(f"127.0.0.1:{port}")
    assert problem is not None and "in use" in problem and str(port) in problem


def test_a_free_port_or_an_address_that_does_not_parse_has_no_problem_to_name() -> None:
    assert _bind_problem("127.0.0.1:0") is None
    assert _bind_problem("no-port-here") is None


def test_an_address_of_no_interface_here_is_named_too() -> None:
    problem = _bind_problem("192.0.2.1:50051")  # TEST-NET-1: never this machine's
    assert problem is not None and "assign" in problem.lower()

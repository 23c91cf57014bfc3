"""The container health probe against a real gRPC server with the health service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.config import PROJECT_ROOT
from services.common.healthcheck import check
from services.common.natsserver import free_port
from tests.tls_support import CertificateAuthority

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class HealthServer:
    address: str
    servicer: health.HealthServicer


@pytest.fixture
def health_server() -> Iterator[HealthServer]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield HealthServer(f"127.0.0.1:{port}", servicer)
    finally:
        server.stop(None).wait()


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m services.common.healthcheck ARGS`` as the container runs it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(PROJECT_ROOT / p) for p in (".", "gen"))}
    return subprocess.run(
        [sys.executable, "-m", "services.common.healthcheck", *args],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def only_log_line(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout + result.stderr
    record: dict[str, str] = json.loads(lines[0])
    return record


def test_serving_exits_0_with_one_log_line(health_server: HealthServer) -> None:
    health_server.servicer.set("", SERVING)
    result = probe(health_server.address)
    assert result.returncode == 0, result.stdout + result.stderr
    record = only_log_line(result)
    assert (record["event"], record["status"]) == ("healthcheck.status", "SERVING")


def test_not_serving_exits_1(health_server: HealthServer) -> None:
    health_server.servicer.set("", NOT_SERVING)
    result = probe(health_server.address)
    assert result.returncode == 1, result.stdout + result.stderr
    assert only_log_line(result)["status"] == "NOT_SERVING"


def test_nothing_listening_exits_1() -> None:
    result = probe(f"127.0.0.1:{free_port()}", "--timeout", "2")
    assert result.returncode == 1, result.stdout + result.stderr
    record = only_log_line(result)
    assert (record["event"], record["code"]) == ("healthcheck.failed", "UNAVAILABLE")


def test_a_named_service_is_checked_on_its_own(health_server: HealthServer) -> None:
    health_server.servicer.set("", SERVING)
    health_server.servicer.set("relay", NOT_SERVING)
    health_server.servicer.set("incidentledger.v1.LedgerService", SERVING)
    assert check(health_server.address) is True
    assert check(health_server.address, "relay") is False
    assert check(health_server.address, "incidentledger.v1.LedgerService") is True


def test_an_unknown_service_is_not_serving(health_server: HealthServer) -> None:
    health_server.servicer.set("", SERVING)
    assert check(health_server.address, "no.such.Service") is False  # NOT_FOUND


def test_a_tls_server_is_probed_with_its_ca(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path)
    issued = ca.server()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials([(issued.key_pem, issued.cert_pem)])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        servicer.set("", SERVING)
        address = f"127.0.0.1:{port}"
        assert probe(address, "--tls-ca", str(ca.ca_file)).returncode == 0
        named = probe(address, "--tls-ca", str(ca.ca_file), "--server-name", "localhost")
        assert named.returncode == 0, named.stdout + named.stderr
        # Plaintext to a TLS port, or a name the certificate does not hold: not healthy.
        assert probe(address, "--timeout", "2").returncode == 1
        wrong = probe(address, "--tls-ca", str(ca.ca_file), "--server-name", "elsewhere")
        assert wrong.returncode == 1
        missing = probe(address, "--tls-ca", str(tmp_path / "no-such-ca.pem"))
        assert missing.returncode == 1
        assert only_log_line(missing)["event"] == "healthcheck.failed"
    finally:
        server.stop(None).wait()

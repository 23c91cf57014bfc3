"""A gRPC health probe for container health checks.

``python -m services.common.healthcheck HOST:PORT [SERVICE]`` asks the server's
``grpc.health.v1.Health/Check`` for ``SERVICE`` (default: the overall status, ``""``)
and exits 0 when it answers ``SERVING``, 1 otherwise (another status, an error, nothing
listening, or no answer within ``--timeout`` seconds). It logs one line. The Dockerfile's
``HEALTHCHECK`` uses it; Kubernetes probes gRPC health natively.

A service that serves TLS (``LEDGER_TLS_CERT_FILE``) is probed with ``--tls-ca`` (the CA
that signed its certificate), ``--server-name`` (a name in the certificate, when the probe
connects to 127.0.0.1) and, under mutual TLS, ``--tls-cert``/``--tls-key``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.logging import configure_logging

DEFAULT_TIMEOUT_SECONDS = 3.0

log = structlog.get_logger("services.common.healthcheck")


@dataclass(frozen=True)
class ProbeTls:
    """How the probe speaks TLS: the CA file, an optional client certificate, the name."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str = ""

    def channel(self, address: str) -> grpc.Channel:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes() if self.ca_file else None,
            private_key=self.key_file.read_bytes() if self.key_file else None,
            certificate_chain=self.cert_file.read_bytes() if self.cert_file else None,
        )
        options = [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
        return grpc.secure_channel(address, credentials, options=options)


def check(
    address: str,
    service: str = "",
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    tls: ProbeTls | None = None,
) -> bool:
    """Whether the gRPC server at ``address`` reports ``service`` as SERVING (logged)."""
    with tls.channel(address) if tls else grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            # The stub raises the failed call itself, which has code() and details().
            code = getattr(exc, "code", None)
            details = getattr(exc, "details", None)
            status_code = code() if callable(code) else None
            log.warning(
                "healthcheck.failed",
                address=address,
                service=service,
                code=status_code.name if isinstance(status_code, grpc.StatusCode) else "UNKNOWN",
                details=details() if callable(details) else str(exc),
            )
            return False
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    serving: bool = response.status == health_pb2.HealthCheckResponse.SERVING
    (log.info if serving else log.warning)(
        "healthcheck.status", address=address, service=service, status=status
    )
    return serving


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.common.healthcheck",
        description="Exit 0 when the gRPC server reports SERVING, 1 otherwise.",
    )
    parser.add_argument("address", help="HOST:PORT of the gRPC server, e.g. 127.0.0.1:50051")
    parser.add_argument(
        "service", nargs="?", default="", help="service name (default: overall health)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_SECONDS,
        help=f"seconds to wait for the answer (default {DEFAULT_TIMEOUT_SECONDS:g})",
    )
    parser.add_argument("--tls-ca", type=Path, help="TLS: the CA of the server's certificate")
    parser.add_argument("--tls-cert", type=Path, help="mutual TLS: a client certificate")
    parser.add_argument("--tls-key", type=Path, help="mutual TLS: its private key")
    parser.add_argument("--server-name", default="", help="TLS: the name the certificate holds")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    configure_logging("INFO", "json")
    tls = None
    if args.tls_ca or args.tls_cert or args.server_name:
        tls = ProbeTls(args.tls_ca, args.tls_cert, args.tls_key, args.server_name)
    try:
        serving = check(args.address, args.service, args.timeout, tls)
    except OSError as exc:  # a TLS file that cannot be read
        log.warning("healthcheck.failed", address=args.address, error=str(exc))
        return 1
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())

"""A gRPC health probe for container health checks.

``python -m services.common.healthcheck HOST:PORT [SERVICE]`` asks the server's
``grpc.health.v1.Health/Check`` for ``SERVICE`` (default: the overall status, ``""``)
and exits 0 when it answers ``SERVING``, 1 otherwise (another status, an error, nothing
listening, or no answer within ``--timeout`` seconds). It logs one line. The Dockerfile's
``HEALTHCHECK`` uses it; Kubernetes probes gRPC health natively.
"""

from __future__ import annotations

import argparse
import sys

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.logging import configure_logging

DEFAULT_TIMEOUT_SECONDS = 3.0

log = structlog.get_logger("services.common.healthcheck")


def check(address: str, service: str = "", timeout: float = DEFAULT_TIMEOUT_SECONDS) -> bool:
    """Whether the gRPC server at ``address`` reports ``service`` as SERVING (logged)."""
    with grpc.insecure_channel(address) as channel:
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
    args = parser.parse_args(argv)
    configure_logging("INFO", "json")
    return 0 if check(args.address, args.service, args.timeout) else 1


if __name__ == "__main__":
    sys.exit(main())

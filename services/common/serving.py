"""What both services' gRPC servers share: construction, health, reflection.

How they stop on a signal is :mod:`services.common.stopping`.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent import futures
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.config import ConfigError, ServerTls, ServiceSettings, is_loopback
from services.common.grpc_server import RequestInterceptor

log = structlog.get_logger(__name__)


def server_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", 4 * max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]


def new_server(
    *, max_workers: int, max_message_bytes: int, interceptor: RequestInterceptor
) -> grpc.Server:
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        interceptors=[interceptor],
        options=server_options(max_message_bytes),
        maximum_concurrent_rpcs=max_workers * 8,
    )


def server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    """TLS credentials of a gRPC port; with ``client_auth="require"``, client certificates
    signed by the client CA are required and verified during the handshake."""
    return grpc.ssl_server_credentials(
        [(tls.private_key, tls.certificate_chain)],
        root_certificates=tls.client_ca,
        require_client_auth=tls.client_auth == "require",
    )


def listen(server: grpc.Server, address: str, settings: ServiceSettings) -> int:
    """Bind ``address``: over TLS when ``settings.tls`` is set, else in plaintext.

    Production refuses plaintext on an address other than loopback unless
    ``LEDGER_ALLOW_PLAINTEXT`` says a TLS-terminating proxy is in front.
    """
    settings.check_transport(address)
    try:
        if settings.tls is None:
            port = server.add_insecure_port(address)
            if not is_loopback(address):
                log.warning("grpc.plaintext", address=address, note="no TLS on this address")
            return port
        port = server.add_secure_port(address, server_credentials(settings.tls))
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {address}: {exc}") from exc
    log.info(
        "grpc.tls",
        address=address,
        cert_file=str(settings.tls.cert_file),
        client_auth=settings.tls.client_auth,
        client_ca_file=str(settings.tls.client_ca_file) if settings.tls.client_ca_file else None,
    )
    return port


def add_health_and_reflection(
    server: grpc.Server, service_names: Sequence[str]
) -> health.HealthServicer:
    """Health checking (overall and per service) and reflection; health starts NOT_SERVING."""
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    for name in ("", *service_names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    return health_servicer


def set_serving(health_servicer: health.HealthServicer, names: Sequence[str]) -> None:
    for name in ("", *names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

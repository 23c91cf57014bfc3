"""What both services' gRPC servers share: construction, health, reflection.

Reflection answers both ``grpc.reflection.v1`` (what current clients such as grpcurl ask
first) and the older ``grpc.reflection.v1alpha``. grpcio-reflection implements only
v1alpha; v1 is the same protocol under a new package (every message and field number
is the same, so the bytes on the wire are too), so one servicer answers both, and the
v1 file descriptor, derived from the v1alpha one, is added to the descriptor pool so
that reflection can describe the v1 service itself.

How they stop on a signal is :mod:`services.common.stopping`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent import futures
from typing import Any

import grpc
import structlog
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from services.common.config import ConfigError, ServerTls, ServiceSettings, is_loopback
from services.common.grpc_server import RequestInterceptor
from services.common.natsserver import bind_problem, split_listen

log = structlog.get_logger(__name__)

REFLECTION_V1_PACKAGE = "grpc.reflection.v1"
REFLECTION_V1_SERVICE = f"{REFLECTION_V1_PACKAGE}.ServerReflection"
REFLECTION_V1_FILE = "grpc/reflection/v1/reflection.proto"


#: The shortest interval between a client's keepalive pings the servers accept, also on a
#: connection without calls. gRPC's default (5 minutes, no pings without calls) answers the
#: Python client's pings (every 10 s, idle connections too: a frozen server is found within
#: 30 s) with GOAWAY ``too_many_pings`` after two of them. Half the client's interval.
MIN_CLIENT_PING_INTERVAL_MS = 5000


def server_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", 4 * max_message_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
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
        # gRPC says only "Failed to bind" (the reason is in its own stderr line): the
        # system's reason, from a bind of the same address, is what the operator needs.
        why = _bind_problem(address)
        raise ConfigError(f"cannot listen on {address}: {why or exc}") from exc
    log.info(
        "grpc.tls",
        address=address,
        cert_file=str(settings.tls.cert_file),
        client_auth=settings.tls.client_auth,
        client_ca_file=str(settings.tls.client_ca_file) if settings.tls.client_ca_file else None,
    )
    return port


#: The health service name that says only that the process is up and serving gRPC (its
#: start done, its stop not begun), whatever the parts it needs: what a liveness or a
#: startup probe asks, so that an outage of NATS or of the database, which the overall
#: health reports (readiness), never has the orchestrator restart every replica.
LIVENESS = "liveness"


def add_health_and_reflection(
    server: grpc.Server, service_names: Sequence[str]
) -> health.HealthServicer:
    """Health checking (overall, per service, and :data:`LIVENESS`) and reflection; health
    starts NOT_SERVING."""
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    add_reflection(server, (*service_names, health.SERVICE_NAME))
    for name in ("", *service_names, LIVENESS):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    return health_servicer


def add_reflection(server: grpc.Server, service_names: Sequence[str]) -> None:
    """Server reflection, v1 and v1alpha, listing ``service_names`` and both reflection
    services."""
    register_reflection_v1_descriptor()
    names = (*service_names, REFLECTION_V1_SERVICE, reflection.SERVICE_NAME)
    servicer = reflection.ReflectionServicer(names)
    for service in (REFLECTION_V1_SERVICE, reflection.SERVICE_NAME):
        # The v1alpha messages parse and write v1 requests and responses: same bytes.
        handlers = {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))


def register_reflection_v1_descriptor() -> None:
    """Add ``grpc/reflection/v1/reflection.proto`` to the default descriptor pool (once):
    the v1alpha file with its package, names and options of v1."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(REFLECTION_V1_FILE)
    except KeyError:
        pass
    else:
        return
    alpha = reflection_pb2.DESCRIPTOR.package
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    file.name = REFLECTION_V1_FILE
    file.package = REFLECTION_V1_PACKAGE
    file.options.Clear()
    file.options.java_package = "io.grpc.reflection.v1"
    file.options.java_outer_classname = "ServerReflectionProto"
    file.options.java_multiple_files = True
    file.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    for message in file.message_type:
        for field in message.field:
            if field.type_name.startswith(f".{alpha}."):
                field.type_name = f".{REFLECTION_V1_PACKAGE}.{field.type_name[len(alpha) + 2 :]}"
    for service in file.service:
        for method in service.method:
            for attr in ("input_type", "output_type"):
                name = getattr(method, attr)
                if name.startswith(f".{alpha}."):
                    setattr(method, attr, f".{REFLECTION_V1_PACKAGE}.{name[len(alpha) + 2 :]}")
    pool.Add(file)


#: The part every service needs: its gRPC server has started (:meth:`Readiness.serve`).
STARTED = "started"


class Readiness:
    """A service's health (overall and its ``names``) from the parts it needs: ``SERVING``
    while every part is available, ``NOT_SERVING`` while one is not, so that a load
    balancer or an orchestrator sends callers elsewhere until it is back.

    Each part is unavailable until it is first said to be available: the server's start
    (:meth:`serve`), and ``parts`` (for instance the notifier's connection to NATS). A part
    that reports only when it changes (the store watch) need not be named beforehand.
    :data:`LIVENESS` is SERVING from the start on, whatever the parts. A service that stops
    enters the health servicer's graceful shutdown (everything NOT_SERVING), after which
    nothing here changes its health again.
    """

    def __init__(
        self,
        health_servicer: health.HealthServicer,
        names: Sequence[str],
        parts: Sequence[str] = (),
    ) -> None:
        self._health = health_servicer
        self._names = ("", *names)
        self._lock = threading.Lock()
        self._unavailable = {STARTED, *parts}

    @property
    def unavailable(self) -> frozenset[str]:
        """The parts that are not available now (empty while the service is SERVING)."""
        with self._lock:
            return frozenset(self._unavailable)

    def serve(self) -> None:
        """The server has started: SERVING, if every other part is available; alive."""
        self.set(STARTED, True)
        self._health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)

    def set(self, part: str, available: bool) -> None:
        with self._lock:
            if available:
                self._unavailable.discard(part)
            else:
                self._unavailable.add(part)
            status = (
                health_pb2.HealthCheckResponse.NOT_SERVING
                if self._unavailable
                else health_pb2.HealthCheckResponse.SERVING
            )
            for name in self._names:
                self._health.set(name, status)


def _bind_problem(address: str) -> str | None:
    """Why ``address`` (``host:port``, ``[v6]:port``) cannot be bound, in the system's words
    ("Address already in use", "Cannot assign requested address"); None if it can, or if
    it does not parse."""
    parsed = split_listen(address)
    if parsed is None:
        return None
    problem = bind_problem(*parsed)
    return None if problem is None else f"{problem} (port {parsed[1]})"

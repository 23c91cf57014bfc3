"""A service's health from the parts it needs (services.common.serving.Readiness): overall
and per service SERVING only while every part is available; ``liveness`` SERVING from the
start on whatever the parts, so that probes which restart a process (liveness, startup)
never restart every replica for an outage of NATS or of the database."""

from __future__ import annotations

from typing import cast

import grpc
from grpc_health.v1 import health, health_pb2

from services.common.serving import LIVENESS, Readiness

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE = "incidentledger.v1.NotifierService"


def status(servicer: health.HealthServicer, name: str) -> int:
    request = health_pb2.HealthCheckRequest(service=name)
    # Every name asked for is registered: the context (used only for NOT_FOUND) is not used.
    return int(servicer.Check(request, cast(grpc.ServicerContext, None)).status)


def statuses(servicer: health.HealthServicer) -> tuple[int, int, int]:
    return status(servicer, ""), status(servicer, SERVICE), status(servicer, LIVENESS)


def test_ready_only_while_every_part_is_available_and_alive_whatever_the_parts() -> None:
    servicer = health.HealthServicer()
    readiness = Readiness(servicer, [SERVICE], parts=("nats",))
    readiness.serve()
    assert statuses(servicer) == (NOT_SERVING, NOT_SERVING, SERVING)  # not connected yet
    readiness.set("nats", True)
    assert statuses(servicer) == (SERVING, SERVING, SERVING)
    readiness.set("store", False)  # a part that reports only when it changes
    assert statuses(servicer) == (NOT_SERVING, NOT_SERVING, SERVING)
    assert readiness.unavailable == {"store"}
    readiness.set("nats", False)
    readiness.set("store", True)
    assert statuses(servicer) == (NOT_SERVING, NOT_SERVING, SERVING)
    readiness.set("nats", True)
    assert statuses(servicer) == (SERVING, SERVING, SERVING)
    servicer.enter_graceful_shutdown()  # stopping: everything NOT_SERVING, for good
    readiness.set("nats", True)
    assert statuses(servicer) == (NOT_SERVING, NOT_SERVING, NOT_SERVING)

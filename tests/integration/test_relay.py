"""The relay with several ledger replicas on one store, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import psycopg
import pytest

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import ledger_service_pb2_grpc as api_grpc
from services.common.config import PROJECT_ROOT
from services.common.natsserver import NatsServer
from tests.fanout_support import wait_until
from tests.integration.test_fanout import stream_messages
from tests.support import (
    PG_SETTINGS,
    ServiceProcess,
    dev_tokens,
    service_process,
    store_environment,
)

pytestmark = pytest.mark.nats


def report(port: int, token: str, n: int) -> api.CommandResult:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return (
            api_grpc.LedgerServiceStub(channel)
            .ReportIncident(
                api.ReportIncidentRequest(
                    request_id=f"r-{n}",
                    title=f"Report {n}",
                    category="intimidation",
                    location=pb.Location(kecamatan="penarik"),
                ),
                metadata=(("authorization", f"Bearer {token}"),),
            )
            .result
        )


def leads(service: ServiceProcess) -> bool:
    return any(line.get("event") == "relay.publishing" for line in service.log_lines())


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_one_relay_publishes_and_another_takes_over_when_it_dies(
    kind: str, tmp_path: Path, nats_server: NatsServer
) -> None:
    with store_environment(kind, tmp_path) as store_env:
        env = {
            **store_env,
            "LEDGER_DATA_DIR": str(tmp_path / "data"),
            "LEDGER_LISTEN": "127.0.0.1:0",
            "NATS_URL": nats_server.url,
        }
        subprocess.run(
            [sys.executable, "-m", "services.ledger", "migrate"],
            env={**os.environ, **env, "PYTHONPATH": f"{PROJECT_ROOT}:{PROJECT_ROOT / 'gen'}"},
            cwd=PROJECT_ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        env["CREATE_TABLE"] = "n"
        with (
            service_process("services.ledger", env) as first,
            service_process("services.ledger", env) as second,
        ):
            token = dev_tokens(tmp_path / "data")["kpu"]
            results = [report([first, second][n % 2].port, token, n) for n in range(20)]
            wait_until(
                lambda: len(stream_messages(nats_server.url)) == 20, what="20 published events"
            )
            assert [leads(first), leads(second)].count(True) == 1, "exactly one relay publishes"
            leader, survivor = (first, second) if leads(first) else (second, first)
            if kind == "postgres":
                # A rejected insert burns a sequence value: a gap the relay must not wait on.
                with psycopg.connect(
                    host=PG_SETTINGS["POSTGRES_HOST"],
                    port=int(PG_SETTINGS["POSTGRES_PORT"]),
                    dbname=PG_SETTINGS["POSTGRES_DBNAME"],
                    user=PG_SETTINGS["POSTGRES_USER"],
                    autocommit=True,
                ) as conn:
                    schema = store_env["POSTGRES_SCHEMA"]
                    conn.execute(
                        "SELECT nextval(pg_get_serial_sequence(%s, 'notification_id'))",
                        (f"{schema}.ledger_events",),
                    )
            leader.proc.kill()
            leader.proc.wait(10)
            results += [report(survivor.port, token, n) for n in range(20, 30)]
            wait_until(
                lambda: len(stream_messages(nats_server.url)) == 30,
                timeout=30,
                what="the survivor's relay to take over",
            )
            assert leads(survivor)
    positions = [position for _, position in stream_messages(nats_server.url)]
    assert positions == sorted(r.position for r in results), "all, once each, in log order"

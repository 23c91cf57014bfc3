"""No lost update, no double record: many threads and processes against one incident."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import ledger_service_pb2_grpc as api_grpc
from services.common.auth import generate_dev_credentials
from services.common.config import PROJECT_ROOT
from tests.support import (
    REFERENCE_FILE,
    Client,
    Metadata,
    dev_tokens,
    reference,
    running_ledger,
    service_process,
    settings_for,
    store_environment,
)


def rid() -> str:
    return secrets.token_hex(8)


def assigned_incident(ledger: Client) -> str:
    name = ledger.report().incident
    ledger.stub.VerifyIncident(
        api.VerifyIncidentRequest(request_id=rid(), name=name), metadata=ledger.md("desk_pilkada")
    )
    ledger.stub.AssignLeadAgency(
        api.AssignLeadAgencyRequest(request_id=rid(), name=name, agency="polres"),
        metadata=ledger.md("desk_pilkada"),
    )
    return name


def versions(ledger: Client, name: str) -> list[int]:
    page = ledger.stub.ListIncidentEvents(
        api.ListIncidentEventsRequest(parent=name, page_size=1000), metadata=ledger.md("polres")
    )
    return [e.version for e in page.events]


def test_concurrent_commands_lose_no_update(ledger: Client) -> None:
    name = assigned_incident(ledger)
    actions = [f"patrol {n}" for n in range(60)]

    def act(action: str) -> int:
        return ledger.stub.LogAction(
            api.LogActionRequest(request_id=rid(), name=name, action=action),
            metadata=ledger.md("polres"),
        ).result.version

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(act, actions))
    assert sorted(got) == list(range(4, 64)), "each command got its own version"
    assert versions(ledger, name) == list(range(1, 64))


def test_racing_on_one_expected_version_lets_exactly_one_win(ledger: Client) -> None:
    name = assigned_incident(ledger)
    barrier = threading.Barrier(12)

    def escalate(n: int) -> str:
        barrier.wait()
        try:
            ledger.stub.EscalateIncident(
                api.EscalateIncidentRequest(
                    request_id=rid(), name=name, expected_version=3, reason=f"report {n}"
                ),
                metadata=ledger.md("polres"),
            )
        except grpc.RpcError as error:
            return error.code().name
        return "OK"

    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(escalate, range(12)))
    assert outcomes.count("OK") == 1
    assert outcomes.count("ABORTED") == 11
    assert versions(ledger, name) == [1, 2, 3, 4]


def test_concurrent_duplicates_record_once(ledger: Client) -> None:
    name = assigned_incident(ledger)
    request = api.LogActionRequest(request_id="dup-1", name=name, action="medical team on standby")
    barrier = threading.Barrier(10)

    def send(_: int) -> api.LogActionResponse:
        barrier.wait()
        response: api.LogActionResponse = ledger.stub.LogAction(
            request, metadata=ledger.md("polres")
        )
        return response

    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(send, range(10)))
    assert all(r == responses[0] for r in responses)
    assert versions(ledger, name) == [1, 2, 3, 4]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_idempotency_survives_a_restart(kind: str, tmp_path: Path) -> None:
    if kind == "postgres":
        pytest.importorskip("psycopg")
    with store_environment(kind, tmp_path) as env:
        settings = settings_for(tmp_path, env)
        request = api.ReportIncidentRequest(
            request_id="restart-1",
            title="Power failure at KPU warehouse",
            category="power_failure",
        )
        request.location.kecamatan = "kota_mukomuko"
        with running_ledger(settings) as ledger:
            first = ledger.stub.ReportIncident(request, metadata=ledger.md("kpu"))
        with running_ledger(settings) as ledger:
            again = ledger.stub.ReportIncident(request, metadata=ledger.md("kpu"))
            assert again == first
            listed = ledger.stub.ListIncidents(
                api.ListIncidentsRequest(), metadata=ledger.md("kpu")
            )
            assert len(listed.incidents) == 1


def test_without_a_write_cache_every_command_works_on_the_stored_state(tmp_path: Path) -> None:
    with (
        store_environment("sqlite", tmp_path) as env,
        running_ledger(settings_for(tmp_path, env, cache_size=0)) as ledger,
    ):
        assert ledger.server.ledger.cache_size == 0  # LEDGER_CACHE_SIZE reaches the ledger
        name = assigned_incident(ledger)
        for expected in (3, 4):
            ledger.stub.LogAction(
                api.LogActionRequest(
                    request_id=rid(), name=name, action="patrol", expected_version=expected
                ),
                metadata=ledger.md("polres"),
            )
        assert versions(ledger, name) == [1, 2, 3, 4, 5]


@contextmanager
def ledger_process(env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    with service_process("services.ledger", env) as service:
        yield service.proc, service.port


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_two_processes_on_one_store_lose_no_update(kind: str, tmp_path: Path) -> None:
    with store_environment(kind, tmp_path) as store_env:
        data = tmp_path / "data"
        tokens_file = generate_dev_credentials(data / "credentials", reference().agencies)
        tokens = dev_tokens(data)
        env = {
            **store_env,
            "LEDGER_DATA_DIR": str(data),
            "LEDGER_TOKENS_FILE": str(tokens_file),
            "LEDGER_REFERENCE_FILE": str(REFERENCE_FILE),
            "LEDGER_LISTEN": "127.0.0.1:0",
            "LEDGER_LOG_LEVEL": "WARNING",
        }
        subprocess.run(
            [sys.executable, "-m", "services.ledger", "migrate"],
            env={**os.environ, **env, "PYTHONPATH": f"{PROJECT_ROOT}:{PROJECT_ROOT / 'gen'}"},
            cwd=PROJECT_ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        env["CREATE_TABLE"] = "n"

        def md(agency: str) -> Metadata:
            return (("authorization", f"Bearer {tokens[agency]}"),)

        with ledger_process(env) as (_, port_a), ledger_process(env) as (_, port_b):
            stubs = [
                api_grpc.LedgerServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
                for port in (port_a, port_b)
            ]
            report = api.ReportIncidentRequest(
                request_id=rid(), title="Clash", category="supporter_clash"
            )
            report.location.kecamatan = "lubuk_pinang"
            name = stubs[0].ReportIncident(report, metadata=md("satpolpp")).result.incident
            stubs[1].VerifyIncident(
                api.VerifyIncidentRequest(request_id=rid(), name=name), metadata=md("desk_pilkada")
            )
            stubs[0].AssignLeadAgency(
                api.AssignLeadAgencyRequest(request_id=rid(), name=name, agency="satpolpp"),
                metadata=md("desk_pilkada"),
            )

            def act(n: int) -> int:
                return (
                    stubs[n % 2]
                    .LogAction(
                        api.LogActionRequest(request_id=rid(), name=name, action=f"step {n}"),
                        metadata=md("satpolpp"),
                    )
                    .result.version
                )

            with ThreadPoolExecutor(12) as pool:
                got = sorted(pool.map(act, range(80)))
            assert got == list(range(4, 84))
            page = stubs[1].ListIncidentEvents(
                api.ListIncidentEventsRequest(parent=name, page_size=1000), metadata=md("satpolpp")
            )
            assert [e.version for e in page.events] == list(range(1, 84))


def test_shutdown_reports_not_serving_before_closing(tmp_path: Path) -> None:
    with store_environment("sqlite", tmp_path) as env:
        settings = settings_for(tmp_path, env)
        with running_ledger(settings) as ledger:
            health = health_pb2_grpc.HealthStub(ledger.channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            ledger.server.health.enter_graceful_shutdown()
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_sigterm_stops_the_process_cleanly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {
        "LEDGER_DATA_DIR": str(data),
        "LEDGER_LISTEN": "127.0.0.1:0",
        "LEDGER_LOG_LEVEL": "WARNING",
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(data / "ledger.sqlite"),
    }
    data.mkdir()
    with ledger_process(env) as (proc, port):
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        channel.close()

"""StreamVerifyLedger on a real ledger and store: progress as the verification goes, then
the same result as VerifyLedger, on a clean ledger and on one altered in the store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import UUID

import grpc
import pytest

from incidentledger.v1 import audit_service_pb2 as audit
from incidentledger.v1 import audit_service_pb2_grpc as audit_grpc
from incidentledger.v1 import ledger_service_pb2 as api
from services.ledger.api import audit_servicer
from services.ledger.audit import scan, verify_stored
from tests.integration.test_audit_tamper import Surgery
from tests.support import Client, rid, running_ledger, settings_for, store_environment

INCIDENTS = 12  # three events each


@pytest.fixture
def every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every progress report is sent (none dropped for the rate), after every 5 events or
    10 positions: a small ledger gives many progress messages, deterministically."""
    monkeypatch.setattr(audit_servicer, "PROGRESS_SECONDS", 0.0)
    monkeypatch.setattr(verify_stored, "BATCH", 5)
    monkeypatch.setattr(scan, "RANGE", 10)


@contextmanager
def ledger_with_history(kind: str, tmp_path: Path) -> Iterator[tuple[Client, dict[str, str]]]:
    with (
        store_environment(kind, tmp_path) as store_env,
        running_ledger(settings_for(tmp_path, store_env)) as client,
    ):
        for n in range(INCIDENTS):
            name = client.report().incident
            for step in range(2):
                client.stub.EscalateIncident(
                    api.EscalateIncidentRequest(
                        request_id=rid(), name=name, reason=f"crowd growing {n}.{step}"
                    ),
                    metadata=client.md("kesbangpol"),
                )
        yield client, store_env


def last_position(client: Client) -> int:
    return client.server.ledger.recorder.max_notification_id() or 0


def streamed(client: Client, agency: str = "inspektorat") -> list[audit.StreamVerifyLedgerResponse]:
    stub = audit_grpc.AuditServiceStub(client.channel)
    return list(
        stub.StreamVerifyLedger(
            audit.StreamVerifyLedgerRequest(), metadata=client.md(agency), timeout=60
        )
    )


def verified(client: Client) -> audit.VerifyLedgerResponse:
    stub = audit_grpc.AuditServiceStub(client.channel)
    response: audit.VerifyLedgerResponse = stub.VerifyLedger(
        audit.VerifyLedgerRequest(), metadata=client.md("inspektorat"), timeout=60
    )
    return response


def split(
    messages: list[audit.StreamVerifyLedgerResponse],
) -> tuple[list[audit.VerifyLedgerProgress], audit.VerifyLedgerResponse]:
    *steps, last = messages
    assert all(m.WhichOneof("kind") == "progress" for m in steps)
    assert last.WhichOneof("kind") == "result", "the result is the last message"
    return [m.progress for m in steps], last.result


def check_progress(steps: list[audit.VerifyLedgerProgress], end: int, events: int) -> None:
    assert (steps[0].position, steps[0].events_checked) == (0, 0)
    assert {s.ledger_position for s in steps} == {end}
    positions = [s.position for s in steps]
    checked = [s.events_checked for s in steps]
    assert positions == sorted(set(positions)), "positions rise with every message"
    assert checked == sorted(checked)
    assert 0 < positions[-1] <= end
    assert checked[-1] == events


@pytest.mark.parametrize("workers", ["serial", "worker processes"])
def test_the_stream_reports_rising_positions_then_verify_ledger_s_result(
    tmp_path: Path, every_step: None, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    if workers == "worker processes":
        monkeypatch.setattr(scan, "PARALLEL_FROM", 0)  # any history is hashed by workers
    with ledger_with_history("sqlite", tmp_path) as (client, _):
        end = last_position(client)
        steps, result = split(streamed(client))
        assert result == verified(client)
        assert result.ok and result.events == 3 * INCIDENTS
        check_progress(steps, end, result.events)
        if workers == "serial":
            assert len(steps) == 1 + -(-result.events // 5), "one per batch of 5 events"
        else:
            assert [s.position for s in steps[1:]] == [*range(10, end, 10), end]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_on_an_altered_store_the_stream_ends_with_the_same_divergence(
    tmp_path: Path, every_step: None, kind: str
) -> None:
    with ledger_with_history(kind, tmp_path) as (client, store_env):
        table = client.server.ledger.recorder.events_table_name  # type: ignore[attr-defined]
        surgery = Surgery(kind, store_env, table)
        incident = client.stub.ListIncidents(
            api.ListIncidentsRequest(page_size=1), metadata=client.md("polres")
        ).incidents[0]
        rows = surgery.rows(UUID(incident.name.removeprefix("incidents/")))
        middle = rows[1]
        surgery.set_state(middle.position, middle.state.replace(b"crowd growing", b"crowd calming"))
        end = last_position(client)
        steps, result = split(streamed(client))
        expected = verified(client)
        assert not expected.ok
        assert (expected.divergence.kind, expected.divergence.incident) == (
            "modified",
            incident.name,
        )
        assert result == expected
        check_progress(steps, end, expected.events)


def test_only_the_coordinator_and_auditors_may_stream_a_verification(tmp_path: Path) -> None:
    # At the normal rate: the first progress message, and the result last.
    with ledger_with_history("sqlite", tmp_path) as (client, _):
        with pytest.raises(grpc.RpcError) as caught:
            streamed(client, "polres")
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        for agency in ("desk_pilkada", "inspektorat"):
            steps, result = split(streamed(client, agency))
            assert steps[0].position == 0
            assert result.ok and result.events == 3 * INCIDENTS

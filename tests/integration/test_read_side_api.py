"""The read side over gRPC: read-your-writes, the situation views, verification, checkpoints."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import nats
import nats.js.errors
import pytest

from incidentledger.v1 import audit_service_pb2 as audit
from incidentledger.v1 import audit_service_pb2_grpc as audit_grpc
from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import situation_service_pb2 as sit
from incidentledger.v1 import situation_service_pb2_grpc as sit_grpc
from services.common.config import RelaySettings
from services.common.natsserver import NatsServer
from services.ledger.audit import Checkpoint
from tests.fanout_support import wait_until
from tests.support import Client, rid, running_ledger, settings_for, store_environment, ts


def test_a_client_reads_its_own_write(ledger: Client) -> None:
    result = ledger.report("kesbangpol", location=pb.Location(kecamatan="ipuh"))
    listed = ledger.stub.ListIncidents(
        api.ListIncidentsRequest(min_position=result.position, filter='kecamatan = "ipuh"'),
        metadata=ledger.md("kesbangpol"),
    )
    assert [i.name for i in listed.incidents] == [result.incident]
    with pytest.raises(grpc.RpcError) as caught:
        ledger.stub.ListIncidents(
            api.ListIncidentsRequest(min_position=result.position + 1000),
            metadata=ledger.md("kesbangpol"),
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_situation_views_and_the_board_as_of_a_time(ledger: Client) -> None:
    s, md = ledger.stub, ledger.md
    situation = sit_grpc.SituationServiceStub(ledger.channel)
    reported = ledger.report("kesbangpol", severity="critical")
    name = reported.incident
    before_decision = datetime.now(UTC)
    s.VerifyIncident(
        api.VerifyIncidentRequest(request_id=rid(), name=name), metadata=md("desk_pilkada")
    )
    now = datetime.now(UTC)
    decided = s.RecordDecision(
        api.RecordDecisionRequest(
            request_id=rid(),
            name=name,
            deciding_agencies=["desk_pilkada", "polres"],
            forum="Forkopimda",
            summary="Large gatherings restricted for three days",
            rationale="clash risk",
            valid_from=ts(now),
            valid_until=ts(now + timedelta(days=3)),
        ),
        metadata=md("desk_pilkada"),
    ).result

    in_force = situation.ListDecisionsInForce(
        sit.ListDecisionsInForceRequest(
            kecamatan="kota_mukomuko",
            min_position=decided.position,
            time=ts(now + timedelta(hours=1)),
        ),
        metadata=md("polres"),
    ).decisions
    assert [d.summary for d in in_force] == ["Large gatherings restricted for three days"]
    assert list(in_force[0].deciding_agencies) == ["desk_pilkada", "polres"]
    # Named by its code, as every view names the incident (it said incidents/ID alone).
    assert reported.reference and in_force[0].reference == reported.reference
    later = situation.ListDecisionsInForce(
        sit.ListDecisionsInForceRequest(time=ts(now + timedelta(days=4))), metadata=md("polres")
    )
    assert list(later.decisions) == []

    scores = situation.GetVulnerabilityMap(
        sit.GetVulnerabilityMapRequest(min_position=decided.position), metadata=md("polres")
    ).kecamatan
    kota = next(k for k in scores if k.kecamatan == "kota_mukomuko")
    assert kota.score > 0
    assert [r.incident for r in kota.reasons] == [name]
    assert all(k.score == 0 for k in scores if k.kecamatan != "kota_mukomuko")

    workload = situation.GetAgencyWorkload(
        sit.GetAgencyWorkloadRequest(min_position=decided.position), metadata=md("polres")
    ).agencies
    desk = next(a for a in workload if a.agency == "desk_pilkada")
    assert desk.open == 1

    status = situation.GetProjectionStatus(sit.GetProjectionStatusRequest(), metadata=md("polres"))
    assert status.position >= decided.position

    then = s.ListIncidents(
        api.ListIncidentsRequest(as_of_time=ts(before_decision)), metadata=md("inspektorat")
    ).incidents
    assert [(i.name, i.status) for i in then] == [(name, pb.INCIDENT_STATUS_REPORTED)]
    past_decisions = situation.ListDecisionsInForce(
        sit.ListDecisionsInForceRequest(time=ts(before_decision)), metadata=md("polres")
    )
    assert list(past_decisions.decisions) == []


def test_verification_and_checkpoints_over_grpc(ledger: Client) -> None:
    ledger.report("kesbangpol")
    stub = audit_grpc.AuditServiceStub(ledger.channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.VerifyLedger(audit.VerifyLedgerRequest(), metadata=ledger.md("polres"))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    created = stub.CreateCheckpoint(
        audit.CreateCheckpointRequest(), metadata=ledger.md("inspektorat")
    ).checkpoint
    assert created.events == 1
    assert len(created.signature) == 64
    report = stub.VerifyLedger(audit.VerifyLedgerRequest(), metadata=ledger.md("inspektorat"))
    assert report.ok
    assert (report.events, report.incidents, report.checkpoints_checked) == (1, 1, 1)
    listed = stub.ListCheckpoints(audit.ListCheckpointsRequest(), metadata=ledger.md("polres"))
    assert [c.position for c in listed.checkpoints] == [created.position]


def test_checkpoints_are_published_for_witnesses(tmp_path: Path, nats_server: NatsServer) -> None:
    relay = RelaySettings(nats_url=nats_server.url, poll_seconds=0.2)
    with (
        store_environment("sqlite", tmp_path) as env,
        running_ledger(settings_for(tmp_path, env, relay=relay)) as ledger,
    ):
        ledger.report("kesbangpol")
        created = (
            audit_grpc.AuditServiceStub(ledger.channel)
            .CreateCheckpoint(audit.CreateCheckpointRequest(), metadata=ledger.md("desk_pilkada"))
            .checkpoint
        )
        public_key = ledger.server.checkpoints.public_key

        async def witnessed() -> list[Checkpoint]:
            client = await nats.connect(nats_server.url)
            try:
                js = client.jetstream()
                try:
                    state = (await js.stream_info("LEDGER_EVENTS_CHECKPOINTS")).state
                except nats.js.errors.NotFoundError:
                    return []  # the relay creates its streams once it runs: not yet
                found = []
                for seq in range(state.first_seq, state.last_seq + 1 if state.messages else 0):
                    msg = await js.get_msg("LEDGER_EVENTS_CHECKPOINTS", seq)
                    found.append(Checkpoint.from_json(json.loads(bytes(msg.data or b""))))
                return found
            finally:
                await client.close()

        wait_until(lambda: len(asyncio.run(witnessed())) == 1, what="the published checkpoint")
    (checkpoint,) = asyncio.run(witnessed())
    assert checkpoint.position == created.position
    assert checkpoint.verify(public_key)


def test_metrics_expose_requests_and_projection_lag(tmp_path: Path) -> None:
    with (
        store_environment("sqlite", tmp_path) as env,
        running_ledger(settings_for(tmp_path, env, metrics_listen="127.0.0.1:0")) as ledger,
    ):
        ledger.report("kesbangpol")
        port = ledger.server.metrics.port
        assert port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    assert (
        'ledger_requests_total{method="/incidentledger.v1.LedgerService/ReportIncident",'
        'status="OK"} 1.0' in text
    )
    assert "ledger_projection_lag_events " in text
    assert "ledger_projection_lag_seconds " in text
    assert "ledger_request_seconds_bucket" in text

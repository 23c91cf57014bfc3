from __future__ import annotations

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from tests.support import Client


def test_report_then_get(ledger: Client) -> None:
    result = ledger.report("kesbangpol")
    got = ledger.stub.GetIncident(
        api.GetIncidentRequest(name=result.incident), metadata=ledger.md("inspektorat")
    ).incident
    assert got.status == pb.INCIDENT_STATUS_REPORTED
    assert got.reporter.agency == "kesbangpol"
    assert got.version == result.version == 1
    assert result.position >= 1

"""Hostile but authenticated input on a real ledger: what an agency can send within the
API's limits must not break the ledger's answers for anyone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from incidentledger.v1 import ledger_service_pb2 as api
from services.common.grpc_errors import error_info
from tests.support import Client, rid, running_ledger, settings_for, store_environment

COORDINATOR = "desk_pilkada"


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    tmp_path: Path = tmp_path_factory.mktemp("hostile")
    with (
        store_environment("popo", tmp_path) as store_env,
        running_ledger(settings_for(tmp_path, store_env)) as client,
    ):
        yield client


def refusal(error: grpc.RpcError) -> tuple[grpc.StatusCode, str, str]:
    info = error_info(error)  # type: ignore[arg-type]
    assert info is not None, error.details()
    return error.code(), info.reason, info.metadata.get("field", "")


@pytest.mark.parametrize(
    ("field", "new_value", "reason"),
    [
        ("title", "x" * 201, "FIELD_TOO_LONG"),
        ("title", "   ", "INVALID_FIELD"),
        ("location.tps", "9" * 33, "FIELD_TOO_LONG"),
    ],
)
def test_a_correction_keeps_the_corrected_fields_own_limit(
    ledger: Client, field: str, new_value: str, reason: str
) -> None:
    """A correction's ``new_value`` may hold 4,000 characters, but a corrected title is still
    a title (200, required) and a TPS a TPS (32). Before, a title was corrected to 4,000
    characters, or to blanks, and recorded."""
    reported = ledger.report("kesbangpol")
    old = {"title": "Planned mass gathering at the town square", "location.tps": ""}[field]
    with pytest.raises(grpc.RpcError) as refused:
        ledger.stub.RecordCorrection(
            api.RecordCorrectionRequest(
                request_id=rid(),
                name=reported.incident,
                corrected_event_id=reported.event_id,
                field=field,
                old_value=old,
                new_value=new_value,
                reason="typo",
            ),
            metadata=ledger.md("kesbangpol"),
        )
    assert refusal(refused.value) == (grpc.StatusCode.INVALID_ARGUMENT, reason, "new_value")
    incident = ledger.stub.GetIncident(
        api.GetIncidentRequest(name=reported.incident), metadata=ledger.md("kesbangpol")
    ).incident
    assert incident.version == 1, "nothing recorded"

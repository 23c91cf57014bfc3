"""Numbers and times a caller sends are checked against their bounds (a real ledger)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from incidentledger.v1 import (
    audit_service_pb2,
    ledger_service_pb2,
    situation_service_pb2,
)
from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from services.common.grpc_errors import error_info
from tests.support import Client, rid, running_ledger, settings_for, store_environment, ts

INTEGER_TYPES = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64}


@pytest.fixture(scope="module")
def popo_ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    tmp_path: Path = tmp_path_factory.mktemp("bounds")
    with (
        store_environment("popo", tmp_path) as store_env,
        running_ledger(settings_for(tmp_path, store_env)) as client,
    ):
        yield client


def _cases() -> list[tuple[str, MethodDescriptor, str]]:
    cases = []
    for module in (ledger_service_pb2, situation_service_pb2, audit_service_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                for field in method.input_type.fields:
                    if field.type in INTEGER_TYPES:
                        cases.append((service.full_name, method, field.name))
    return cases


CASES = _cases()


def test_every_rpc_with_a_number_is_covered() -> None:
    names = {(m.name, f) for _, m, f in CASES}
    assert ("ListIncidents", "min_position") in names
    assert ("GetVulnerabilityMap", "min_position") in names
    assert ("VerifyIncident", "expected_version") in names
    assert ("StreamEvents", "until_position") in names
    assert len(CASES) >= 25


@pytest.mark.parametrize(
    ("service", "method", "field"), CASES, ids=[f"{m.name}.{f}" for _, m, f in CASES]
)
def test_a_negative_number_is_invalid_argument_naming_the_field(
    popo_ledger: Client, service: str, method: MethodDescriptor, field: str
) -> None:
    request = message_factory.GetMessageClass(method.input_type)()
    setattr(request, field, -1)
    path = f"/{service}/{method.name}"
    channel = popo_ledger.channel
    metadata = popo_ledger.md("desk_pilkada")
    with pytest.raises(grpc.RpcError) as caught:
        if method.server_streaming:
            responses = channel.unary_stream(path, None, None)(
                request.SerializeToString(), metadata=metadata, timeout=10
            )
            list(responses)
        else:
            channel.unary_unary(path, None, None)(
                request.SerializeToString(), metadata=metadata, timeout=10
            )
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    info = error_info(error)  # type: ignore[arg-type]
    assert info is not None
    assert (info.reason, info.metadata["field"]) == ("INVALID_FIELD", field)
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    violations = [
        violation
        for detail in status.details
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR)
        for violation in _unpack_bad_request(detail).field_violations
    ]
    assert [v.field for v in violations] == [field]


def _unpack_bad_request(detail: object) -> error_details_pb2.BadRequest:
    bad = error_details_pb2.BadRequest()
    detail.Unpack(bad)  # type: ignore[attr-defined]
    return bad


# ------------------------------------------------------------------------ times


def _refused_time(ledger: Client, call: Callable[[], object], field: str) -> None:
    before = _position(ledger)
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    info = error_info(caught.value)  # type: ignore[arg-type]
    assert info is not None
    assert (info.reason, info.metadata["field"]) == ("INVALID_FIELD", field)
    assert _position(ledger) == before  # nothing recorded


def _position(ledger: Client) -> int:
    return ledger.server.ledger.recorder.max_notification_id() or 0


def test_times_out_of_the_ledgers_range_are_refused_naming_the_field(
    popo_ledger: Client,
) -> None:
    ledger, md = popo_ledger, popo_ledger.md
    now = datetime.now(UTC)
    # Its last second: in WIB already the year 10000, which no date holds (INTERNAL once).
    year_9999 = ts(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))
    report = api.ReportIncidentRequest(
        request_id=rid(),
        title="Rally",
        category="crowd_gathering",
        location=pb.Location(kecamatan="ipuh"),
        occur_time=year_9999,
    )
    _refused_time(
        ledger, lambda: ledger.stub.ReportIncident(report, metadata=md("kesbangpol")), "occur_time"
    )
    report.occur_time.CopyFrom(ts(datetime(1999, 12, 31, tzinfo=UTC)))
    _refused_time(
        ledger, lambda: ledger.stub.ReportIncident(report, metadata=md("kesbangpol")), "occur_time"
    )
    report.occur_time.CopyFrom(ts(now - timedelta(days=2)))  # late news is fine
    name = ledger.stub.ReportIncident(report, metadata=md("kesbangpol")).result.incident
    ledger.stub.VerifyIncident(
        api.VerifyIncidentRequest(request_id=rid(), name=name), metadata=md("desk_pilkada")
    )
    decision = api.RecordDecisionRequest(
        request_id=rid(),
        name=name,
        deciding_agencies=["desk_pilkada"],
        forum="Rakor",
        summary="No rallies",
        rationale="Safety",
        valid_from=ts(now),
        valid_until=year_9999,
    )
    _refused_time(
        ledger,
        lambda: ledger.stub.RecordDecision(decision, metadata=md("desk_pilkada")),
        "valid_until",
    )
    decision.valid_until.CopyFrom(ts(now + timedelta(days=3)))  # a planned window is fine
    ledger.stub.RecordDecision(decision, metadata=md("desk_pilkada"))
    reported = ledger.stub.ListIncidentEvents(
        api.ListIncidentEventsRequest(parent=name), metadata=md("desk_pilkada")
    ).events[0]
    correction = api.RecordCorrectionRequest(
        request_id=rid(),
        name=name,
        corrected_event_id=reported.event_id,
        field="occurred_at",
        old_value=reported.occur_time.ToDatetime(tzinfo=UTC).isoformat(),
        new_value="9999-01-01T00:00:00+00:00",
        reason="typo",
    )
    _refused_time(
        ledger,
        lambda: ledger.stub.RecordCorrection(correction, metadata=md("kesbangpol")),
        "new_value",
    )

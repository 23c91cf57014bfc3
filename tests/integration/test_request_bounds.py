"""Numbers and times a caller sends are checked against their bounds (a real ledger)."""

from __future__ import annotations

from collections.abc import Iterator
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
from services.common.grpc_errors import error_info
from tests.support import Client, running_ledger, settings_for, store_environment

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

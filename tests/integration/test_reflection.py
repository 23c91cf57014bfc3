"""Server reflection as current clients (grpcurl, Postman, grpc-js) ask for it: grpc.reflection.v1.

The client here is built from its own copy of the v1 protocol (``V1_PROTO``, the messages of
grpc's ``grpc/reflection/v1/reflection.proto``, compiled with protoc into a pool of its own,
nothing shared with the server) and calls
``/grpc.reflection.v1.ServerReflection/ServerReflectionInfo`` on a real ledger listening on a
free port; the older v1alpha keeps answering too.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from tests.support import Client, running_ledger, settings_for, store_environment

V1 = "grpc.reflection.v1"
V1_METHOD = f"/{V1}.ServerReflection/ServerReflectionInfo"
V1ALPHA_METHOD = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"

V1_PROTO = """
syntax = "proto3";
package grpc.reflection.v1;
service ServerReflection {
  rpc ServerReflectionInfo(stream ServerReflectionRequest)
      returns (stream ServerReflectionResponse);
}
message ServerReflectionRequest {
  string host = 1;
  oneof message_request {
    string file_by_filename = 3;
    string file_containing_symbol = 4;
    ExtensionRequest file_containing_extension = 5;
    string all_extension_numbers_of_type = 6;
    string list_services = 7;
  }
}
message ExtensionRequest {
  string containing_type = 1;
  int32 extension_number = 2;
}
message ServerReflectionResponse {
  string valid_host = 1;
  ServerReflectionRequest original_request = 2;
  oneof message_response {
    FileDescriptorResponse file_descriptor_response = 4;
    ExtensionNumberResponse all_extension_numbers_response = 5;
    ListServiceResponse list_services_response = 6;
    ErrorResponse error_response = 7;
  }
}
message FileDescriptorResponse { repeated bytes file_descriptor_proto = 1; }
message ExtensionNumberResponse {
  string base_type_name = 1;
  repeated int32 extension_number = 2;
}
message ListServiceResponse { repeated ServiceResponse service = 1; }
message ServiceResponse { string name = 1; }
message ErrorResponse {
  int32 error_code = 1;
  string error_message = 2;
}
"""


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Client]:
    with (
        store_environment("popo", tmp_path) as env,
        running_ledger(settings_for(tmp_path, env)) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def v1(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pool.DescriptorPool:
    """The client's own pool holding the v1 protocol, compiled from ``V1_PROTO``."""
    root = tmp_path_factory.mktemp("reflection")
    (root / "grpc" / "reflection" / "v1").mkdir(parents=True)
    (root / "grpc" / "reflection" / "v1" / "reflection.proto").write_text(V1_PROTO)
    out = root / "v1.binpb"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{root}",
            f"--descriptor_set_out={out}",
            "grpc/reflection/v1/reflection.proto",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        pool.Add(file)
    return pool


def _ask(
    pool: descriptor_pool.DescriptorPool, channel: grpc.Channel, method: str, **request: str
) -> Any:
    """One request on a reflection stream, and its one response (as v1 messages)."""
    request_class, response_class = (
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{V1}.{name}"))
        for name in ("ServerReflectionRequest", "ServerReflectionResponse")
    )
    call = channel.stream_stream(
        method,
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    responses = list(call(iter([request_class(**request)]), timeout=10))
    assert len(responses) == 1
    return responses[0]


def test_reflection_v1_lists_the_services(
    v1: descriptor_pool.DescriptorPool, ledger: Client
) -> None:
    response = _ask(v1, ledger.channel, V1_METHOD, list_services="")
    assert response.WhichOneof("message_response") == "list_services_response"
    names = {s.name for s in response.list_services_response.service}
    assert {
        "incidentledger.v1.LedgerService",
        "incidentledger.v1.AuditService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    # v1alpha answers the same list.
    older = _ask(v1, ledger.channel, V1ALPHA_METHOD, list_services="")
    assert {s.name for s in older.list_services_response.service} == names


@pytest.mark.parametrize(
    ("symbol", "file"),
    [
        ("incidentledger.v1.LedgerService", "incidentledger/v1/ledger_service.proto"),
        ("grpc.reflection.v1.ServerReflection", "grpc/reflection/v1/reflection.proto"),
    ],
)
def test_reflection_v1_describes_a_service(
    v1: descriptor_pool.DescriptorPool, ledger: Client, symbol: str, file: str
) -> None:
    response = _ask(v1, ledger.channel, V1_METHOD, file_containing_symbol=symbol)
    assert response.WhichOneof("message_response") == "file_descriptor_response", response
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    described = next(f for f in files if f.name == file)
    service = symbol.rsplit(".", 1)[1]
    assert service in {s.name for s in described.service}


def test_reflection_v1_reports_an_unknown_symbol(
    v1: descriptor_pool.DescriptorPool, ledger: Client
) -> None:
    response = _ask(v1, ledger.channel, V1_METHOD, file_containing_symbol="no.such.Service")
    assert response.WhichOneof("message_response") == "error_response"
    assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]

"""The checks every request passes, and the bounds of what an error carries."""

from __future__ import annotations

import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from incidentledger.v1 import (
    audit_service_pb2,
    notifier_service_pb2,
    situation_service_pb2,
)
from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from services.common.errors import (
    MAX_MESSAGE_BYTES,
    InvalidArgument,
    LedgerError,
    MalformedRequest,
    bounded,
)
from services.common.request_checks import (
    ITEMIZED,
    Unparsed,
    check_item,
    check_request,
    parsing,
)


def test_a_body_that_does_not_parse_becomes_unparsed() -> None:
    parse = parsing(api.GetIncidentRequest.FromString)
    assert parse is not None
    assert parse(api.GetIncidentRequest(name="incidents/x").SerializeToString()) == (
        api.GetIncidentRequest(name="incidents/x")
    )
    unparsed = parse(b"\x00\x00\x00")
    assert isinstance(unparsed, Unparsed)
    with pytest.raises(MalformedRequest) as caught:
        check_request(unparsed)
    assert caught.value.code == "INVALID_ARGUMENT"
    assert caught.value.reason == "MALFORMED_REQUEST"
    assert parsing(None) is None


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (api.ReportIncidentRequest(title="a\x00b"), "title"),
        (api.ReportIncidentRequest(location=pb.Location(desa="\x00")), "location.desa"),
        (api.RecordDecisionRequest(deciding_agencies=["polres", "kodim\x00"]), "deciding_agencies"),
        (api.RecordDecisionRequest(scope=pb.Location(tps="TPS\x00")), "scope.tps"),
    ],
)
def test_text_with_a_nul_character_is_refused_naming_the_field(
    request_: api.ReportIncidentRequest | api.RecordDecisionRequest, field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_request(request_)
    assert caught.value.field == field


def test_the_reports_of_a_batch_are_left_to_the_service_each_on_its_own() -> None:
    bad = api.DeviceReport(title="a\x00b", location=pb.Location(tps="\x00"))
    request = api.IngestReportsRequest(reports=[api.DeviceReport(title="fine"), bad])
    check_request(request)  # one bad report must not refuse the batch
    check_item(request.reports[0])
    with pytest.raises(InvalidArgument) as caught:
        check_item(bad)
    assert caught.value.field == "title", "named as the report's own field"
    assert api.IngestReportsRequest.DESCRIPTOR.fields_by_name["reports"].full_name in ITEMIZED


def test_the_items_of_a_triage_are_left_to_the_service_each_on_its_own() -> None:
    bad = api.TriageItem(name="incidents/x", expected_version=-1)
    request = api.TriageIncidentsRequest(request_id="t", items=[api.TriageItem(), bad])
    check_request(request)  # one bad item must not refuse the call
    check_item(request.items[0])
    with pytest.raises(InvalidArgument) as caught:
        check_item(bad)
    assert caught.value.field == "expected_version", "named as the item's own field"
    field = api.TriageIncidentsRequest.DESCRIPTOR.fields_by_name["items"]
    assert field.full_name in ITEMIZED


def test_ordinary_requests_pass() -> None:
    check_request(
        api.ReportIncidentRequest(
            request_id="r-1",
            title="Crowd at the square \u202e\U0001f600\t",
            location=pb.Location(kecamatan="ipuh", desa="Ipuh", latitude=-2.6),
        )
    )
    check_request(api.ListIncidentsRequest())


def test_errors_are_bounded_whatever_they_quote() -> None:
    error = InvalidArgument("severity", f"unknown severity {'é' * 4000!r}")
    assert len(error.message.encode()) <= MAX_MESSAGE_BYTES
    assert error.message.startswith("severity: unknown severity 'ééé")
    assert error.message.endswith("\u2026")
    huge = LedgerError("x", metadata={"value": "\U0001f600" * 1000})
    assert len(huge.metadata["value"].encode()) <= 128
    assert bounded("short", 10) == "short"
    assert bounded("\U0001f600" * 3, 9) == "\U0001f600\u2026"  # never half a character


def _integer_fields(descriptor: Descriptor, prefix: str = "") -> list[tuple[str, list[str]]]:
    """(path, the message field names leading to it) of every integer field, at any depth."""
    found = []
    for field in descriptor.fields:
        path = f"{prefix}{field.name}"
        if field.type in INTEGER_TYPES:
            found.append((path, path.split(".")))
        elif (
            field.message_type is not None
            and field.message_type.full_name.startswith("incidentledger.")
            and field.full_name not in ITEMIZED  # left to the service: see above
        ):
            found.extend(_integer_fields(field.message_type, f"{path}."))
    return found


def _request_messages() -> list[Descriptor]:
    modules = (api, situation_service_pb2, audit_service_pb2, notifier_service_pb2)
    return [
        method.input_type
        for module in modules
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


INTEGER_TYPES = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
}
NEGATIVE_CASES = [
    (message, path, names)
    for message in _request_messages()
    for path, names in _integer_fields(message)
]


def test_every_request_of_every_service_has_integer_fields_to_check() -> None:
    paths = {(m.name, p) for m, p, _ in NEGATIVE_CASES}
    assert ("ListIncidentsRequest", "min_position") in paths
    assert ("GetVulnerabilityMapRequest", "min_position") in paths
    assert ("VerifyIncidentRequest", "expected_version") in paths
    assert ("StreamEventsRequest", "until_position") in paths
    assert ("SubscribeRequest", "heartbeat_seconds") in paths
    assert ("ListDeliveriesRequest", "page_size") in paths


@pytest.mark.parametrize(
    ("descriptor", "path", "names"),
    NEGATIVE_CASES,
    ids=[f"{m.name}.{p}" for m, p, _ in NEGATIVE_CASES],
)
def test_a_negative_integer_is_invalid_naming_the_field(
    descriptor: Descriptor, path: str, names: list[str]
) -> None:
    request = message_factory.GetMessageClass(descriptor)()
    target = request
    for name in names[:-1]:
        target = getattr(target, name)
    setattr(target, names[-1], -1)
    with pytest.raises(InvalidArgument) as caught:
        check_request(request)
    assert caught.value.field == path
    assert caught.value.reason == "INVALID_FIELD"
    setattr(target, names[-1], 0)
    check_request(request)  # zero (the default) passes


def test_a_time_before_1970_is_not_a_negative_count() -> None:
    # A phone whose clock reset to 1970-01-01 00:00 WIB: -25,200 seconds since the epoch.
    before = Timestamp(seconds=-25_200)
    check_item(api.DeviceReport(title="fine", device_record_time=before))
    check_request(api.IngestReportsRequest(send_time=before))
    check_request(api.ReportIncidentRequest(occur_time=Timestamp(seconds=-62_135_596_800)))
    with pytest.raises(InvalidArgument) as caught:  # the contract's own integers still are
        check_item(api.DeviceReport(device_record_time=before, location=pb.Location(), title="x"))
        check_request(api.ListIncidentsRequest(page_size=-1))
    assert caught.value.field == "page_size"


def test_negative_coordinates_and_enums_are_not_refused_here() -> None:
    check_request(api.ReportIncidentRequest(location=pb.Location(latitude=-2.6, longitude=-101.1)))

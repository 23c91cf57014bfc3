"""The checks every request passes, and the bounds of what an error carries."""

from __future__ import annotations

import pytest

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from services.common.errors import (
    MAX_MESSAGE_BYTES,
    InvalidArgument,
    LedgerError,
    MalformedRequest,
    bounded,
)
from services.common.request_checks import Unparsed, check_request, parsing


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

"""wire.DeviceReports: an IngestReports request's reports as the ledger takes them, each
converted on its own (a bad one refused alone), when first asked for, and pickled as the
request's bytes for the ledger's intake process."""

from __future__ import annotations

import pickle
import uuid
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from services.common.errors import InvalidArgument
from services.ledger.application import IngestItem
from services.ledger.wire import DeviceReports

RECORDED = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)


def report(title: str, **fields: object) -> api.DeviceReport:
    stamp = Timestamp()
    stamp.FromDatetime(RECORDED)
    values: dict[str, object] = {
        "device_report_id": str(uuid.uuid4()),
        "device_id": "hp-babinsa-ipuh-1",
        "device_record_time": stamp,
        "title": title,
        "category": "crowd_gathering",
        "location": pb.Location(kecamatan="ipuh"),
    }
    values.update(fields)
    return api.DeviceReport(**values)  # type: ignore[arg-type]


def request() -> api.IngestReportsRequest:
    return api.IngestReportsRequest(
        reports=[
            report("Massa berkumpul"),
            report("Tanpa id", device_report_id="not-a-uuid"),
            report("Kotak suara dibawa", occur_time=Timestamp(seconds=1_790_000_000)),
        ]
    )


def test_each_report_is_converted_alone_and_a_bad_one_is_its_own_refusal() -> None:
    sent = request()
    reports = DeviceReports(sent)
    assert len(reports) == 3
    first, bad, last = reports
    assert isinstance(first, IngestItem) and first.command.title == "Massa berkumpul"
    assert str(first.report_id) == sent.reports[0].device_report_id
    assert first.record_time == RECORDED and first.occurred_at is None
    assert isinstance(bad, InvalidArgument) and bad.field == "device_report_id"
    assert isinstance(last, IngestItem) and last.occurred_at is not None
    assert reports[-1] is last and reports[1:] == [bad, last], "converted once, then kept"


def test_pickled_it_is_the_request_s_bytes_and_converts_the_same() -> None:
    sent = request()
    reports = DeviceReports(sent)
    data = pickle.dumps(reports)
    assert sent.SerializeToString() in data
    copy = pickle.loads(data)  # noqa: S301 - the bytes were made here
    assert isinstance(copy, DeviceReports)
    assert [type(r) for r in copy] == [IngestItem, InvalidArgument, IngestItem]
    assert [r for r in copy if isinstance(r, IngestItem)] == [
        r for r in reports if isinstance(r, IngestItem)
    ]
    refusal = copy[1]
    assert isinstance(refusal, InvalidArgument) and str(refusal) == str(reports[1])


def test_a_device_time_before_1970_is_kept_and_out_of_range_nanos_are_refused() -> None:
    reset = Timestamp(seconds=-25_200)  # 1970-01-01 00:00 WIB: a phone whose clock reset
    (item, bad) = DeviceReports(
        api.IngestReportsRequest(
            reports=[
                report("Jam direset", device_record_time=reset),
                report("Nanos", device_record_time=Timestamp(seconds=1, nanos=-1)),
            ]
        )
    )
    assert isinstance(item, IngestItem)
    assert item.record_time == datetime(1969, 12, 31, 17, 0, tzinfo=UTC)
    assert isinstance(bad, InvalidArgument) and bad.field == "device_record_time"

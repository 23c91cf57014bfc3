"""wire.timestamp computes a Timestamp itself (the relay converts five times per event);
it must give what protobuf's own ``Timestamp.FromDatetime`` gives, for aware and naive
times on either side of the epoch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from services.ledger.wire import timestamp

ZONES = st.sampled_from(
    [None, UTC, timezone(timedelta(hours=7)), timezone(timedelta(hours=-9, minutes=-30))]
)


@given(st.datetimes(min_value=datetime(1800, 1, 2), max_value=datetime(9000, 1, 1)), ZONES)
def test_timestamp_is_protobufs_own(moment: datetime, zone: timezone | None) -> None:
    value = moment.replace(tzinfo=zone)
    expected = Timestamp()
    expected.FromDatetime(value)
    assert timestamp(value) == expected


def test_no_time_is_no_timestamp() -> None:
    assert timestamp(None) is None

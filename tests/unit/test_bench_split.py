"""The end-to-end part's split at the stream: each measured event's record_time -> its
storage on the stream, and storage -> its receipt (no timing: figures made by hand)."""

from __future__ import annotations

import pytest

from bench.fanout import Sent, split_at_stream
from bench.harness import Result


def test_each_event_is_split_at_its_storage_time_and_the_unmatched_are_left_out() -> None:
    sent = Sent(Result(3.0, [0.001] * 4), {"a": 99.0, "b": 99.5, "c": 100.0, "d": 100.5})
    stored = {"a": 100.010, "b": 100.020, "c": 100.050, "x": 100.0}  # d never stored
    arrivals = {  # request id -> (receipt, record_time)
        "a": (100.013, 100.000),
        "b": (100.030, 100.015),
        "d": (101.000, 100.900),  # received, but its storage time is unknown
        "x": (100.100, 99.990),  # not one of the measured sends
    }  # c stored, never received
    to_stream, from_stream = split_at_stream(sent, stored, arrivals)
    assert to_stream.latencies == pytest.approx([0.005, 0.010])
    assert from_stream.latencies == pytest.approx([0.003, 0.010])
    assert to_stream.elapsed == from_stream.elapsed == 3.0

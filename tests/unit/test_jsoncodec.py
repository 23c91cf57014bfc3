"""services.common.jsoncodec gives exactly the standard library's results, and the
library's transcoder's."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import DatetimeAsISO, DecimalAsStr, JSONTranscoder, UUIDAsHex
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.jsoncodec import (
    canonical_dumps,
    canonical_dumps_exact,
    canonical_dumps_of_part,
    loads,
    transcoder_dumps,
)


def reference_dumps(value: Any, default: Any = None) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=default
    ).encode("utf-8")


def _floats() -> st.SearchStrategy[float]:
    # Every magnitude, the small ones (which orjson writes differently) included.
    return st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.floats(min_value=1e-12, max_value=1e-3),
        st.floats(min_value=-90, max_value=90),  # latitudes
        st.sampled_from([0.0, -0.0, 1e-4, 1e-5, 9.99e-5, 1e15, 1e16, 1e-7, 5e-324]),
    )


def _ints() -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1]),
    )


# Text surrogates excluded: a lone surrogate does not encode as UTF-8 in either.
_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
_scalars = st.one_of(st.none(), st.booleans(), _ints(), _floats(), _text)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_text, inner, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=400)
@given(_values)
def test_canonical_dumps_writes_what_json_writes(value: Any) -> None:
    assert canonical_dumps(value) == reference_dumps(value)


@settings(max_examples=400)
@given(_values)
def test_loads_reads_what_json_reads(value: Any) -> None:
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False, indent=1)):
        got, want = loads(text.encode("utf-8")), json.loads(text)
        assert got == want
        assert reference_dumps(got) == reference_dumps(want)  # same types: 1 is not 1.0


@pytest.mark.parametrize(
    "value",
    [
        {"lat": 1e-5, "lon": 101.1},  # orjson alone writes 0.00001
        {"n": 2**64},  # orjson alone refuses
        {"n": [1.5e-9, -2.5e-7, 0.00001, 9.99e-5, 1e-4, 1e-10, 123.25]},
        {1: "non-string key"},
        ({"nested": (1e-7, "tuple")},),
        1e-7,  # the exponent ends the text
        [-3e-9],
        {"id": "0e-4b3c", "then": 2e-8},  # "e-" in a text too
        0.00001,  # the number is the text
        [0.00005, 1.0],
        {"a": -0.0000999},
        {"at": "2026-11-28T08:00:00.000000+00:00", "lat": 0.00002},  # a time and a number
    ],
)
def test_canonical_dumps_falls_back_where_orjson_differs(value: Any) -> None:
    assert canonical_dumps(value) == reference_dumps(value)
    encoded, exact = canonical_dumps_exact(value)
    assert encoded == reference_dumps(value)
    assert not exact


def _parts(value: Any) -> Iterator[Any]:
    yield value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for item in items:
        yield from _parts(item)
    if isinstance(value, dict):
        yield {k: v for i, (k, v) in enumerate(value.items()) if i % 2}  # a subset of the keys


@settings(max_examples=400)
@given(_values)
def test_canonical_dumps_exact_says_when_parts_need_no_check(value: Any) -> None:
    encoded, exact = canonical_dumps_exact(value)
    assert encoded == reference_dumps(value)
    if exact:  # then every part of the value (its numbers among the value's) is written alike
        for part in _parts(value):
            assert canonical_dumps_of_part(part) == reference_dumps(part)


@pytest.mark.parametrize("text", ["0e-4b3c", "de-0abc", "price 1e-5 per unit", "e-"])
def test_texts_that_look_like_small_floats_are_still_exact_json(text: str) -> None:
    value = {"x": text, "n": 1.25}
    assert canonical_dumps(value) == reference_dumps(value)
    assert canonical_dumps_exact(value)[0] == reference_dumps(value)


@pytest.mark.parametrize(
    "text", ["2026-11-28T08:00:00.000000+00:00", "13:20:10.000042", "v10.00001", "00.0000"]
)
def test_times_at_a_whole_second_are_not_taken_for_small_floats(text: str) -> None:
    # "0.0000" after a digit is no number's start: orjson's output is kept (exact).
    value = {"occurred_at": text, "lat": -2.5, "n": [1, 0.5]}
    encoded, exact = canonical_dumps_exact(value)
    assert encoded == reference_dumps(value)
    assert exact


def test_canonical_dumps_calls_default_for_times_and_writes_ids_like_str() -> None:
    when = datetime(2026, 11, 26, 14, 0, tzinfo=UTC)

    def default(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat(timespec="microseconds")
        if isinstance(value, UUID):
            return str(value)
        raise TypeError(type(value).__name__)

    value = {"at": when, "id": UUID(int=7), "b": [when]}
    assert canonical_dumps(value, default) == reference_dumps(value, default)
    with pytest.raises(TypeError):
        canonical_dumps({"x": object()}, default)


@pytest.mark.parametrize(
    "text",
    [
        b'{"n": 18446744073709551616}',  # orjson alone reads a float
        b'{"n": -9223372036854775809}',
        b'"\\ud800"',
        b"[1, 2.5, 1e-05]",
    ],
)
def test_loads_falls_back_where_orjson_differs(text: bytes) -> None:
    got, want = loads(text), json.loads(text)
    assert repr(got) == repr(want)


@pytest.mark.parametrize(
    "text",
    [
        b'{"unterminated": ',
        b'{"n": NaN}',
        b"[Infinity]",
        "[-Infinity]",
        b"\xff",
        b"1e400",
        b'["\\ud800", -1e400]',  # the standard library's path too
    ],
)
def test_loads_refuses_what_is_not_json(text: bytes | str) -> None:
    with pytest.raises(ValueError):
        loads(text)


@pytest.mark.parametrize("text", ['{"n": 18446744073709551616}', '["\\ud800", "é"]'])
def test_loads_reads_text_as_well_as_bytes(text: str) -> None:
    assert repr(loads(text)) == repr(json.loads(text))


def library_transcoder() -> JSONTranscoder:
    """eventsourcing's transcoder as an application has it (its default transcodings)."""
    transcoder = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DatetimeAsISO(), DecimalAsStr()):
        transcoder.register(transcoding)
    return transcoder


_times = st.datetimes(timezones=st.one_of(st.none(), st.just(UTC), st.timezones()))
_stored_values = st.recursive(
    st.one_of(_scalars, st.uuids(), _times, st.decimals(allow_nan=False)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(_text, inner, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=400)
@given(st.dictionaries(_text, _stored_values, max_size=6))
def test_transcoder_dumps_writes_what_the_librarys_transcoder_writes(value: Any) -> None:
    encoded = transcoder_dumps(value)
    assert encoded is not None
    assert encoded == library_transcoder().encode(value)


class Label(str):
    pass


class Role(enum.Enum):
    WITNESS = "witness"


@pytest.mark.parametrize(
    "value",
    [
        {"kind": Label("text")},
        {"nested": [{"kind": Role.WITNESS}]},
        {"number": float("nan")},
        {"number": float("inf")},
    ],
)
def test_transcoder_dumps_leaves_other_types_to_the_transcoder(value: Any) -> None:
    assert transcoder_dumps(value) is None

"""JSON on the read side's hot paths: orjson, with exactly the standard library's results.

The projections and the audit (verify, export) decode and hash every stored event;
:mod:`orjson` does this several times faster than :mod:`json`. Where the two would
differ, the standard library runs instead, so results never depend on which one did.
Both functions work on finite numbers: ``NaN`` and ``Infinity`` are not JSON and never
occur in events (locations are checked to be finite); :func:`loads` refuses them, and
numbers too large for a float (``1e400``), as orjson does.

- :func:`loads` falls back to :func:`json.loads` for what only the standard library
  reads (lone surrogate escapes) and when a number of 19 digits or more occurs (orjson
  reads integers beyond 64 bits as floats);
- :func:`canonical_dumps` falls back to :func:`json.dumps` for integers beyond 64
  bits and non-string keys (orjson refuses them) and when orjson's output holds a
  float below 1e-4 in magnitude (it writes ``0.00001`` and ``1e-7`` where the standard
  library writes ``1e-05`` and ``1e-07``; every other finite float is written alike).

:func:`transcoder_dumps` writes an event's stored state as the library's ``JSONTranscoder``
(with its default transcodings of UUIDs, datetimes and decimals) writes it, byte for byte,
with orjson: it returns None for a value holding any other type (the transcoder then
runs), and falls back to the standard library where :func:`canonical_dumps` does.

Both checks search the bytes (with ``bytes.translate`` and substring searches, which
cost a fraction of the parse) rather than walk the value; what they find inside a
string only costs a fallback, never a different result.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, NoReturn
from uuid import UUID

import orjson

_CANONICAL = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME

# The bytes with whitespace removed, digits mapped to "0" and the characters a value
# follows (":", ",", "[") to ":": a number where a value begins is ":" then digits.
_NUMBER_CONTEXT = bytes(
    ord("0") if 48 <= b <= 57 else ord(":") if b in b":,[" else b for b in range(256)
)
_WHITESPACE = b" \t\n\r"
# A number of 19 digits or more (2**63 has 19), where orjson may read a float.
_LONG = b"0" * 19
# The bytes with digits mapped to "0" and nothing removed: a long number is a run of 19
# digits, so bytes without one need no further look (most events: only about one in ten
# has such a run, inside a string such as a hash). One pass instead of the five below
# halves the check (2.0 -> 1.0 µs an event of about 800 bytes).
_DIGITS = bytes(ord("0") if 48 <= b <= 57 else b for b in range(256))


def _long_number(data: bytes | str) -> bool:
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if _LONG not in raw.translate(_DIGITS):
        return False
    mapped = raw.translate(_NUMBER_CONTEXT, _WHITESPACE)
    return (
        b":" + _LONG in mapped
        or b":-" + _LONG in mapped
        or mapped.startswith(_LONG)
        or mapped.startswith(b"-" + _LONG)
    )


# An exponent of one digit that ends its number: what follows a value in compact JSON
# (",", "}", "]"; ":" and "[" too, which never do) or the end of the text. One search of
# the bytes: "e-" occurs in about two events of five (in hyphenated ids), where mapping the
# bytes first then made this check 2.6 us an event of about 900 bytes; now 1.4 with the
# "0.0000" search (docs/performance.md, "Verify and export").
_ONE_DIGIT_EXPONENT = re.compile(rb"e-[0-9](?:[:,\[}\]]|\Z)")


# A number below 1e-4 that orjson writes in decimals (0.00001, -0.0000999): "0.0000" where
# a number begins (after ":", ",", "[" or a minus sign, or at the start). Inside a time the
# same bytes follow a digit ("08:00:00.000000+00:00"): every event stated at a whole second
# ending in 0 fell back to the standard library's encoder for its hash, 3 times the
# hash's cost (docs/performance.md, "Times at a whole second").
_SMALL_DECIMAL = b"0.0000"
_NUMBER_START = frozenset(b":,[-")


def _small_decimal(encoded: bytes) -> bool:
    # Substring searches, not a regular expression: one that starts with a choice has no
    # literal to search for and tried every position (23-36 us an event of 1 KB, against
    # about 1 for these).
    at = encoded.find(_SMALL_DECIMAL)
    while at != -1:
        if at == 0 or encoded[at - 1] in _NUMBER_START:
            return True
        at = encoded.find(_SMALL_DECIMAL, at + 1)
    return False


def _small_float(encoded: bytes) -> bool:
    """Whether orjson's compact output may hold a float it writes differently from json:
    0.00001 (json: 1e-05), or an exponent of one digit such as 1e-7 (json: 1e-07), which
    ends its number (",", "}" or "]"; a hyphenated id has letters or digits after it)."""
    return _small_decimal(encoded) or _ONE_DIGIT_EXPONENT.search(encoded) is not None


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is beyond the range of a float")
    return value


def loads(data: bytes | str) -> Any:
    """``json.loads(data)`` (non-finite numbers refused), faster."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data, parse_constant=_refuse_constant, parse_float=_finite)
    if _long_number(data):
        return json.loads(data, parse_constant=_refuse_constant, parse_float=_finite)
    return value


def canonical_dumps(value: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    default=default).encode("utf-8")`` for ``value`` without ``NaN`` or infinities, faster."""
    try:
        encoded: bytes = orjson.dumps(value, default=default, option=_CANONICAL)
    except orjson.JSONEncodeError:
        pass  # an integer beyond 64 bits or a non-string key, which json writes
    else:
        if not _small_float(encoded):
            return encoded
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=default
    )
    return text.encode("utf-8")


def canonical_dumps_exact(value: Any) -> tuple[bytes, bool]:
    """:func:`canonical_dumps` of ``value``, and whether orjson's output was it: then no
    number in ``value`` is one that orjson writes differently from json, and a value made
    of parts of ``value`` (its numbers among them) can be written by
    :func:`canonical_dumps_of_part` without looking for such numbers again."""
    try:
        encoded: bytes = orjson.dumps(value, option=_CANONICAL)
    except orjson.JSONEncodeError:
        return canonical_dumps(value), False
    if _small_float(encoded):
        return canonical_dumps(value), False
    return encoded, True


def canonical_dumps_of_part(value: Any) -> bytes:
    """:func:`canonical_dumps` of a value whose numbers all occur in a value that
    :func:`canonical_dumps_exact` found orjson writes exactly: orjson writes a number the
    same wherever it stands, so the search of the output for numbers it writes differently
    from json (about 1.4 us an event) is not made again."""
    try:
        encoded: bytes = orjson.dumps(value, option=_CANONICAL)
    except orjson.JSONEncodeError:
        return canonical_dumps(value)  # a non-string key or a long integer: json writes it
    return encoded


# The library's JSONTranscoder with its default transcodings: UUIDAsHex, DatetimeAsISO,
# DecimalAsStr (eventsourcing.persistence), each written as {"_type_": name, "_data_": text}.
_PLAIN = (str, int, bool, type(None))


class _UntranscodableError(Exception):
    """A value of a type the fast path does not write as the transcoder would."""


def _transcoded(value: Any) -> Any:
    kind = type(value)
    if kind is dict:
        # An event's state is a dict of mostly texts, ids and times: those inline.
        plain = {}
        for key, item in value.items():
            kind = type(item)
            if kind is str or item is None or kind is int or kind is bool:
                plain[key] = item
            elif kind is UUID:
                plain[key] = {"_type_": "uuid_hex", "_data_": item.hex}
            elif kind is datetime:
                plain[key] = {"_type_": "datetime_iso", "_data_": item.isoformat()}
            else:
                plain[key] = _transcoded(item)
        return plain
    if kind in _PLAIN:
        return value
    if kind is float:
        if not math.isfinite(value):
            raise _UntranscodableError  # json writes NaN, orjson null
        return value
    if kind is UUID:
        return {"_type_": "uuid_hex", "_data_": value.hex}
    if kind is datetime:
        return {"_type_": "datetime_iso", "_data_": value.isoformat()}
    if kind is list or kind is tuple:
        return [_transcoded(item) for item in value]
    if kind is Decimal:
        return {"_type_": "decimal_str", "_data_": str(value)}
    raise _UntranscodableError


def transcoder_dumps(value: dict[str, Any]) -> bytes | None:
    """The bytes eventsourcing's ``JSONTranscoder`` (UUIDs, datetimes and decimals
    registered, as an application has them) encodes ``value`` as; None when ``value``
    holds a value of another type (a str or int subclass, an enum: the transcoder decides
    those). About twice as fast for an incident's event (9 us against 20 us)."""
    try:
        plain = _transcoded(value)
    except _UntranscodableError:
        return None
    try:
        encoded: bytes = orjson.dumps(plain)
    except orjson.JSONEncodeError:
        pass  # an integer beyond 64 bits or a non-string key, which json writes
    else:
        if not _small_float(encoded):
            return encoded
    return json.dumps(plain, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

"""JSON on the read side's hot paths: orjson, with exactly the standard library's results.

The projections and the audit (verify, export) decode and hash every stored event;
:mod:`orjson` does this several times faster than :mod:`json`. Where the two would
differ, the standard library runs instead, so results never depend on which one did.
Both functions work on JSON proper: ``NaN`` and ``Infinity`` are not JSON, never
occur in events (locations are checked to be finite), and are refused by :func:`loads`.

- :func:`loads` falls back to :func:`json.loads` for what only the standard library
  reads (lone surrogate escapes) and when a number of 19 digits or more occurs (orjson
  reads integers beyond 64 bits as floats);
- :func:`canonical_dumps` falls back to :func:`json.dumps` for integers beyond 64
  bits and non-string keys (orjson refuses them) and when orjson's output holds a
  float below 1e-4 in magnitude (it writes ``0.00001`` and ``1e-7`` where the standard
  library writes ``1e-05`` and ``1e-07``; every other finite float is written alike).

Both checks search the bytes (with ``bytes.translate`` and substring searches, which
cost a fraction of the parse) rather than walk the value; what they find inside a
string only costs a fallback, never a different result.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, NoReturn

import orjson

_CANONICAL = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME

# A number of 19 digits or more (2**63 has 19) where a value begins: the bytes with
# whitespace removed, digits mapped to "0" and the characters a value follows
# (":", ",", "[") to ":"; then a substring search.
_NUMBER_CONTEXT = bytes(
    ord("0") if 48 <= b <= 57 else ord(":") if b in b":,[" else b for b in range(256)
)
_WHITESPACE = b" \t\n\r"
_LONG = b"0" * 19
_LONG_NUMBERS = (b":" + _LONG, b":-" + _LONG)

# Where orjson writes a float differently: 0.00001 (json: 1e-05), 1e-7 (json: 1e-07).
_SMALL_FIXED = b"0.0000"
_SMALL_EXPONENT = re.compile(rb"e-[0-9](?![0-9])")


def _long_number(data: bytes | str) -> bool:
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    mapped = raw.translate(_NUMBER_CONTEXT, _WHITESPACE)
    return mapped.startswith((_LONG, b"-" + _LONG)) or any(n in mapped for n in _LONG_NUMBERS)


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def loads(data: bytes | str) -> Any:
    """``json.loads(data)`` (``NaN`` and ``Infinity`` refused), faster."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data, parse_constant=_refuse_constant)
    if _long_number(data):
        return json.loads(data, parse_constant=_refuse_constant)
    return value


def canonical_dumps(value: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    default=default).encode("utf-8")`` for ``value`` without ``NaN`` or infinities, faster."""
    try:
        encoded: bytes = orjson.dumps(value, default=default, option=_CANONICAL)
    except orjson.JSONEncodeError:
        pass  # an integer beyond 64 bits or a non-string key, which json writes
    else:
        if _SMALL_FIXED not in encoded and not _SMALL_EXPONENT.search(encoded):
            return encoded
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=default
    )
    return text.encode("utf-8")

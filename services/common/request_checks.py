"""Checks every request passes before a servicer sees it, whatever its method.

- A body that does not parse as the method's request message is INVALID_ARGUMENT
  (``MALFORMED_REQUEST``); left to gRPC, it would be INTERNAL.
- No string field, at any depth, may contain U+0000: PostgreSQL cannot store it in
  text, so such a value would be recorded and then break every reader of the store
  (``INVALID_FIELD``, naming the field).
- No integer field of the contract's own messages, at any depth, may be negative: every
  such number is a position, a version, a count or a size, and 0 already means "unset"
  (``INVALID_FIELD``, naming the field). Coordinates are doubles and enums are not
  integers here. The well-known types' integers are not counts: a
  ``google.protobuf.Timestamp`` before 1970 has negative seconds (a phone whose clock
  reset to 1970-01-01 in WIB), and each time's range is checked where it is read
  (``wire.optional_time``).

The items of a field in :data:`ITEMIZED` are left to the service, which checks each with
:func:`check_item` and answers for each: one bad report of an ``IngestReports`` batch
does not refuse the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from services.common.errors import InvalidArgument, MalformedRequest

_INTEGER_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


#: The package of protobuf's well-known types (Timestamp), whose integers are not counts.
_WELL_KNOWN = "google.protobuf."

#: Repeated fields (full names) whose items the service checks one by one (:func:`check_item`).
ITEMIZED = frozenset(
    {
        "incidentledger.v1.IngestReportsRequest.reports",
        "incidentledger.v1.TriageIncidentsRequest.items",
    }
)


@dataclass(frozen=True)
class Unparsed:
    """Stands for a request body that failed to parse, until the caller is known."""

    error: str


def parsing(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserialize`` returning :class:`Unparsed` instead of raising DecodeError."""
    if deserialize is None:
        return None

    def parse(body: bytes) -> Any:
        try:
            return deserialize(body)
        except DecodeError as error:
            return Unparsed(str(error))

    return parse


def check_request(request: Any) -> None:
    """Raise the refusal of a request that did not parse, holds a NUL character or a
    negative number."""
    if isinstance(request, Unparsed):
        raise MalformedRequest(f"the request body does not parse: {request.error}")
    if isinstance(request, Message):
        _check_fields(request, "")


def check_item(item: Message) -> None:
    """The checks of :func:`check_request` on one item of an :data:`ITEMIZED` field, naming
    its fields as the item's own (``title``, ``location.tps``)."""
    _check_fields(item, "")


def _check_fields(message: Message, prefix: str) -> None:
    counts = not message.DESCRIPTOR.full_name.startswith(_WELL_KNOWN)
    for field, value in message.ListFields():
        if field.full_name in ITEMIZED:
            continue
        path = f"{prefix}{field.name}"
        if field.type in _INTEGER_TYPES:
            if counts and any(item < 0 for item in (value if field.is_repeated else [value])):
                raise InvalidArgument(path, "must not be negative")
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            items = [item for pair in value.items() for item in pair]
        elif field.is_repeated:
            items = list(value)
        else:
            items = [value]
        for item in items:
            if isinstance(item, str):
                if "\x00" in item:
                    raise InvalidArgument(path, "must not contain NUL characters")
            elif isinstance(item, Message):
                _check_fields(item, f"{path}.")

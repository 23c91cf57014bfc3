"""What the notifier hands out besides the events themselves: the cursors of live
subscribers and webhooks, the JSON body a webhook receives and its signature."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.protobuf import json_format

from incidentledger.v1 import incident_pb2 as pb
from services.common.errors import InvalidArgument

SIGNATURE_HEADER = "X-Ledger-Signature"
CURSOR_PREFIX = "v1."  # a stream sequence alone: given out before cursors named their stream
CURSOR_V2_PREFIX = "v2."


def stream_epoch(created: datetime | None) -> str:
    """Which incarnation of the stream a cursor's sequence counts in: its creation time
    (microseconds, hex). A stream made again (NATS data lost, a restore onto a new stream)
    counts its sequences from 1 again, for other events."""
    if created is None:
        return ""
    return f"{round(created.timestamp() * 1_000_000):x}"


def encode_cursor(stream_seq: int, epoch: str = "") -> str:
    if not epoch:
        return f"{CURSOR_PREFIX}{stream_seq}"
    return f"{CURSOR_V2_PREFIX}{epoch}.{stream_seq}"


def decode_cursor(cursor: str) -> tuple[str, int]:
    """The stream's epoch ("" for a v1 cursor, which names none) and the sequence."""
    if cursor.startswith(CURSOR_PREFIX) and cursor[len(CURSOR_PREFIX) :].isdigit():
        return "", int(cursor[len(CURSOR_PREFIX) :])
    epoch, _, seq = cursor.removeprefix(CURSOR_V2_PREFIX).partition(".")
    if (
        not cursor.startswith(CURSOR_V2_PREFIX)
        or not epoch
        or not all(c in "0123456789abcdef" for c in epoch)
        or not seq.isdigit()
    ):
        raise InvalidArgument("cursor", "is not a cursor this notifier gave out")
    return epoch, int(seq)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value: ``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, t.body)>``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


@dataclass(frozen=True)
class EventJson:
    """An event notification as the webhook bodies carry it, rendered once for all the
    webhooks it goes to (``MessageToDict`` is most of a body's cost)."""

    position: int
    event: dict[str, Any]
    incident: dict[str, Any]
    #: What the relay left out of the incident to fit one NATS message (the enum's name,
    #: ``INCIDENT_TRIMMED_DECISION_TEXTS``), "" when nothing was (docs/fan-out.md).
    trimmed: str = ""

    @classmethod
    def of(cls, note: pb.EventNotification) -> EventJson:
        trimmed = note.incident_trimmed
        return cls(
            note.event.position,
            json_format.MessageToDict(note.event, preserving_proto_field_name=True),
            json_format.MessageToDict(note.incident, preserving_proto_field_name=True),
            pb.EventNotification.IncidentTrimmed.Name(trimmed) if trimmed else "",
        )


def webhook_body(webhook_id: str, stream_seq: int, note: EventJson, epoch: str = "") -> str:
    """The JSON a webhook receives, but for its ``delivery_id`` (see docs/fan-out.md)."""
    body = {
        "webhook": f"webhooks/{webhook_id}",
        "cursor": encode_cursor(stream_seq, epoch),
        "position": note.position,
        "event": note.event,
        "incident": note.incident,
    }
    if note.trimmed:  # only then: every other body stays as it was
        body["incident_trimmed"] = note.trimmed
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


_BEFORE_DELIVERY_ID = '{"cursor":'
_AFTER_DELIVERY_ID = ',"event":'


def with_delivery_id(payload: str, delivery_id: str) -> bytes:
    """The body a delivery POSTs: the stored ``payload`` (what :func:`webhook_body` made)
    with ``delivery_id`` added, the same bytes as parsing it, adding the key and encoding it
    again with sorted keys, without doing so. Its keys sorted, ``delivery_id`` goes between
    ``cursor`` (first, a string without quotes or commas in it) and ``event``."""
    if payload.startswith(_BEFORE_DELIVERY_ID):
        at = payload.find(_AFTER_DELIVERY_ID)
        cursor = payload[len(_BEFORE_DELIVERY_ID) : at]
        if (
            at > 0
            and len(cursor) >= 2
            and cursor[0] == cursor[-1] == '"'
            and '"' not in cursor[1:-1]
        ):
            return (
                f'{payload[:at]},"delivery_id":{json.dumps(delivery_id)}{payload[at:]}'
            ).encode()
    body = json.loads(payload)  # another shape: encoded again, as it always was
    body["delivery_id"] = delivery_id
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

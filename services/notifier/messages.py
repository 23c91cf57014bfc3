"""What the notifier hands out besides the events themselves: the cursors of live
subscribers and webhooks, the JSON body a webhook receives and its signature."""

from __future__ import annotations

import hashlib
import hmac
import json

from google.protobuf import json_format

from incidentledger.v1 import incident_pb2 as pb
from services.common.errors import InvalidArgument

SIGNATURE_HEADER = "X-Ledger-Signature"
CURSOR_PREFIX = "v1."


def encode_cursor(stream_seq: int) -> str:
    return f"{CURSOR_PREFIX}{stream_seq}"


def decode_cursor(cursor: str) -> int:
    if not cursor.startswith(CURSOR_PREFIX) or not cursor[len(CURSOR_PREFIX) :].isdigit():
        raise InvalidArgument("cursor", "is not a cursor this notifier gave out")
    return int(cursor[len(CURSOR_PREFIX) :])


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value: ``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, t.body)>``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def webhook_body(webhook_id: str, stream_seq: int, note: pb.EventNotification) -> str:
    """The JSON a webhook receives, but for its ``delivery_id`` (see docs/fan-out.md)."""
    return json.dumps(
        {
            "webhook": f"webhooks/{webhook_id}",
            "cursor": encode_cursor(stream_seq),
            "position": note.event.position,
            "event": json_format.MessageToDict(note.event, preserving_proto_field_name=True),
            "incident": json_format.MessageToDict(note.incident, preserving_proto_field_name=True),
        },
        sort_keys=True,
        separators=(",", ":"),
    )

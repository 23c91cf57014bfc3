"""The body a webhook delivery POSTs is the stored payload with its ``delivery_id``
added: spliced in (no parse and encode per delivery), and byte for byte what parsing,
adding the key and encoding again with sorted keys gives (the signature covers it)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from incidentledger.v1 import incident_pb2 as pb
from services.notifier.messages import EventJson, webhook_body, with_delivery_id

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


def reencoded(payload: str, delivery_id: str) -> bytes:
    body: dict[str, Any] = json.loads(payload)
    body["delivery_id"] = delivery_id
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def notification() -> pb.EventNotification:
    note = pb.EventNotification()
    note.event.event_id = "0b6c3f8e-2a55-4d7f-9a1e-3c1f1f0e7a10"
    note.event.incident = "incidents/1b6c3f8e-2a55-4d7f-9a1e-3c1f1f0e7a10"
    note.event.position = 42
    note.event.type = "ActionLogged"
    note.event.payload_json = '{"action":"Patroli \\"malam\\", ùñî"}'
    note.incident.title = 'Baliho "liar", di <TPS> 3'
    note.incident.location.kecamatan = "Gunungpati"
    return note


@given(st.integers(min_value=0, max_value=2**63), st.text())
def test_the_body_is_what_encoding_it_again_gives(stream_seq: int, delivery_id: str) -> None:
    payload = webhook_body("wh_1", stream_seq, EventJson.of(notification()))
    assert with_delivery_id(payload, delivery_id) == reencoded(payload, delivery_id)


@given(st.dictionaries(st.text(), JSON, max_size=5), st.text())
def test_a_payload_of_another_shape_is_encoded_again(
    body: dict[str, Any], delivery_id: str
) -> None:
    body.pop("delivery_id", None)
    payload = json.dumps(body, sort_keys=True, separators=(",", ":"))
    assert with_delivery_id(payload, delivery_id) == reencoded(payload, delivery_id)


def test_one_rendering_serves_every_webhook_as_its_own_would() -> None:
    """An event's JSON is made once for all its webhooks: each body is the one rendering
    the notification for that webhook alone gives, with its own name and cursor."""
    rendered = EventJson.of(notification())
    bodies = [webhook_body(f"wh_{n}", 7, rendered) for n in (1, 2)]
    assert bodies == [webhook_body(f"wh_{n}", 7, EventJson.of(notification())) for n in (1, 2)]
    first, second = (json.loads(b) for b in bodies)
    assert first["webhook"] == "webhooks/wh_1" and second["webhook"] == "webhooks/wh_2"
    assert first["event"] == second["event"] and first["event"]["position"] == "42"
    assert first["incident"]["location"] == {"kecamatan": "Gunungpati"}


def test_a_trimmed_incident_is_said_in_the_body_and_an_untrimmed_body_is_unchanged() -> None:
    """Receivers do not see the NATS header that says what the relay left out of an
    incident too large for one message: the body says it (and only then has the key)."""
    whole = json.loads(webhook_body("w1", 7, EventJson.of(notification())))
    assert "incident_trimmed" not in whole
    note = notification()
    note.incident_trimmed = pb.EventNotification.INCIDENT_TRIMMED_DECISION_TEXTS
    payload = webhook_body("w1", 7, EventJson.of(note))
    assert json.loads(payload)["incident_trimmed"] == "INCIDENT_TRIMMED_DECISION_TEXTS"
    assert with_delivery_id(payload, "d-1") == reencoded(payload, "d-1")  # still spliced

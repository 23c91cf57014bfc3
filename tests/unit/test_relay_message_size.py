"""A message too large for NATS (services/ledger/relay_messages.py, ``fitted``): the
incident's decisions' texts are left out first, then its decisions; the event is never
trimmed, and a message that fits is the same message."""

from __future__ import annotations

from incidentledger.v1 import incident_pb2 as pb
from services.ledger.relay_messages import (
    TRIMMED_HEADER,
    Encoded,
    MessageWriter,
    Outgoing,
    fitted,
    message_size,
)


def message(decisions: int, text: str = "x" * 4000) -> Outgoing:
    note = pb.EventNotification(
        event=pb.IncidentEvent(event_id="e-1", incident="incidents/i", version=decisions + 1),
        incident=pb.Incident(
            name="incidents/i",
            decisions=[
                pb.Decision(event_id=f"d-{n}", forum="forum", summary=text, rationale=text)
                for n in range(decisions)
            ],
        ),
    )
    encoded = Encoded(
        7,
        note.SerializeToString(),
        "e-1",
        "DecisionRecorded",
        "incidents/i",
        "ipuh",
        "flood",
        "high",
    )
    return MessageWriter("ledger.v1.events").outgoing(encoded)


def test_a_message_that_fits_is_sent_as_it_is() -> None:
    small = message(3)
    assert fitted(small, message_size(small)) is small


def test_the_decisions_texts_go_first_and_the_decisions_stay_listed() -> None:
    large = message(40)
    smaller = fitted(large, message_size(large) // 4)
    assert smaller.headers[TRIMMED_HEADER] == "decision-texts"
    assert message_size(smaller) <= message_size(large) // 4
    note = pb.EventNotification.FromString(smaller.payload)
    assert [d.event_id for d in note.incident.decisions] == [f"d-{n}" for n in range(40)]
    assert {(d.summary, d.rationale) for d in note.incident.decisions} == {("", "")}
    assert note.event.event_id == "e-1", "the event is whole"
    # Said in the message too: webhooks and live streams do not see the NATS headers.
    assert note.incident_trimmed == pb.EventNotification.INCIDENT_TRIMMED_DECISION_TEXTS
    assert smaller.headers["Nats-Msg-Id"] == "7", "the same id: deduplicated as before"


def test_then_the_decisions_and_a_message_that_never_fits_is_the_smallest_made() -> None:
    large = message(40)
    without_texts = fitted(large, message_size(large) // 4)
    limit = message_size(without_texts) - 1
    smaller = fitted(large, limit)
    assert smaller.headers[TRIMMED_HEADER] == "decisions"
    note = pb.EventNotification.FromString(smaller.payload)
    assert not note.incident.decisions
    assert note.incident_trimmed == pb.EventNotification.INCIDENT_TRIMMED_DECISIONS
    assert message_size(smaller) <= limit
    assert fitted(large, 10).headers[TRIMMED_HEADER] == "decisions"

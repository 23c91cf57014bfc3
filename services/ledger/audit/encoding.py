"""From a stored row to the hashed body, the event hash, the chain and the export envelope.

Hashing works on the raw stored state (JSON bytes) without building event
objects, for speed; :func:`raw_body` yields exactly the dict that
:func:`services.ledger.domain.incident.event_hash` hashes (a test proves it for
every event type). Times and ids are decoded to their canonical strings.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import (
    ApplicationRecorder,
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    StoredEvent,
    UUIDAsHex,
)
from eventsourcing.utils import get_topic

from services.common.jsoncodec import (
    canonical_dumps,
    canonical_dumps_exact,
    canonical_dumps_of_part,
    loads,
)
from services.ledger.domain.incident import (
    ENVELOPE_FIELDS,
    GENESIS_HASH,
    Incident,
    _canonical,
    event_fields,
    incident_event_classes,
)
from services.ledger.store import RawRow, read_rows, stored_id_text

EXPORT_FORMAT = "incidentledger.audit.export.v1"
CHECKPOINT_FORMAT = "incidentledger.checkpoint.v1"
__all__ = [
    "CHECKPOINT_FORMAT",
    "EXPORT_FORMAT",
    "GENESIS_HASH",
    "EventDecodeError",
    "RawDecoder",
    "body_hash",
    "chain_step",
    "envelope_from_body",
    "incident_topics",
]


class EventDecodeError(ValueError):
    """A stored event whose bytes no longer decode as an incident event."""


class Time(str):
    """A decoded time: the canonical text (UTC, microseconds) plus the plain ISO form."""

    __slots__ = ("plain",)
    plain: str


def _canonical_time(text: str) -> str:
    # Fast path: what datetime.now(UTC).isoformat() writes when microseconds are set.
    if len(text) == 32 and text[19] == "." and text.endswith("+00:00"):
        return text
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise EventDecodeError(f"malformed time {text[:40]!r}") from exc
    canonical: str = _canonical(value)  # the hashed form, exactly
    return canonical


def _time(text: str) -> Time:
    canonical = _canonical_time(text)
    result = Time(canonical)
    result.plain = canonical[:19] + canonical[26:] if canonical[20:26] == "000000" else canonical
    return result


def uuid_text(value: str) -> str:
    """``str(UUID(value))`` of a stored id (:func:`~services.ledger.store.stored_id_text`);
    :class:`EventDecodeError` when it is not one."""
    try:
        return stored_id_text(value)
    except ValueError as exc:
        raise EventDecodeError(f"malformed id {value[:40]!r}") from exc


def _special(d: dict[str, Any]) -> Any:
    # Mirrors eventsourcing's JSONTranscoder: only a two-key {_type_, _data_} is special.
    if len(d) == 2 and "_type_" in d and "_data_" in d:
        kind, data = d["_type_"], d["_data_"]
        if not isinstance(data, str):
            raise EventDecodeError(f"malformed {kind} value")
        if kind == "uuid_hex":
            return uuid_text(data)
        if kind == "datetime_iso":
            return _time(data)
        raise EventDecodeError(f"type {kind!r} is not used by incident events")
    _convert(d)
    return d


def _convert(data: dict[str, Any]) -> None:
    """Decode the transcoder's special values inside ``data`` (in place)."""
    for key, value in data.items():
        kind = type(value)
        if kind is dict:
            data[key] = _special(value)
        elif kind is list:
            data[key] = _convert_list(value)


def _convert_list(values: list[Any]) -> list[Any]:
    return [
        _special(v) if type(v) is dict else _convert_list(v) if type(v) is list else v
        for v in values
    ]


# Keys of incident events whose values are times or ids (the usual places of special values).
_TYPED_KEYS = (
    "timestamp",
    "event_id",
    "occurred_at",
    "target_id",
    "duplicate_id",
    "corrected_event_id",
    "valid_from",
    "valid_until",
)


_ENVELOPE_TIMES = frozenset({"timestamp", "occurred_at"})


def _loads(text: bytes) -> Any:
    data = loads(text)
    if type(data) is not dict:
        return data
    # Fast path: convert the special values at the usual keys; if the text holds other
    # special values (counted without parsing), walk everything as the transcoder would.
    expected = text.count(b'"_type_"')
    converted = 0
    for key in _TYPED_KEYS:
        value = data.get(key)
        if type(value) is dict and len(value) == 2 and "_type_" in value and "_data_" in value:
            if key in _ENVELOPE_TIMES and value["_type_"] == "datetime_iso":
                # Envelope times never reach payload_json: their canonical text will do.
                data[key] = _canonical_time(str(value["_data_"]))
            else:
                data[key] = _special(value)
            converted += 1
    if converted != expected:
        return _special(data)
    return data


def incident_topics() -> list[str]:
    """Topics of every Incident event class (the notification log also holds other events)."""
    return [get_topic(cls) for cls in incident_event_classes()]


def newest_row(recorder: ApplicationRecorder, topics: Sequence[str]) -> RawRow | None:
    """The stored incident event with the highest position, if any."""
    stop = recorder.max_notification_id() or 0
    step = 1000
    while stop > 0:  # the log's newest entries may be other events (request records)
        after = max(0, stop - step)
        rows = read_rows(recorder, topics, after, step, stop)
        if rows:
            return rows[-1]
        stop, step = after, step * 10
    return None


#: The interpreter's switch interval (seconds) for a process whose work is reading the
#: history: the audit commands. ``batches`` reads the next batch in a helper thread while
#: the caller decodes the current one; on PostgreSQL that thread takes the interpreter lock
#: back for every chunk of the answer that arrives, and with the default of 5 ms it waited up
#: to that long each time behind the busy caller. 24,206 events on the 2-core machine, with
#: the reads in binary and bounded as now: export 43,700-44,300 events/s with 5 ms and
#: 44,300-48,100 with 2 ms, verify 59,100-60,000 and 66,900-68,200 (before the bound moved
#: out of the query, when reads were slower, 34,000 against 41,000); SQLite gains nothing
#: (48,800-50,600 and 47,600-49,800; docs/performance.md, "PostgreSQL's reads").
READING_SWITCH_INTERVAL = 0.002


def favour_reading_thread() -> None:
    """Let a reading thread take the interpreter lock sooner: for a process of its own that
    reads the history (the audit commands). Not the ledger's server: 1 ms there made no
    difference to its commands beyond the machine's noise (docs/performance.md, "The
    interpreter's switch interval in the ledger")."""
    sys.setswitchinterval(READING_SWITCH_INTERVAL)


def batches(
    recorder: ApplicationRecorder,
    topics: Sequence[str],
    after: int = 0,
    stop: int | None = None,
    size: int = 2000,
) -> Iterator[list[RawRow]]:
    """Every stored incident event after ``after``, batch by batch; the next batch is read
    in a helper thread while the caller works on the current one (the database releases
    the interpreter while it reads). At most two batches are held.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-read") as pool:
        future = pool.submit(read_rows, recorder, topics, after, size, stop)
        while True:
            batch = future.result()
            if not batch:
                return
            future = pool.submit(read_rows, recorder, topics, batch[-1][0], size, stop)
            yield batch


def _default_mapper() -> Mapper[UUID]:
    transcoder = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
        transcoder.register(transcoding)
    return Mapper(transcoder=transcoder)


class RawDecoder:
    """Decodes stored incident events to the body their hash is computed over."""

    def __init__(self, mapper: Mapper[Any] | None = None) -> None:
        self._mapper = mapper or _default_mapper()
        self._decrypt: Callable[[bytes], bytes] | None = None
        self._decompress: Callable[[bytes], bytes] | None = None
        if self._mapper.cipher is not None:
            self._decrypt = self._mapper.cipher.decrypt
        if self._mapper.compressor is not None:
            self._decompress = self._mapper.compressor.decompress
        self.classes: dict[str, type[Incident.Event]] = {
            get_topic(cls): cls for cls in incident_event_classes()
        }
        # Looked up once: getattr of a class attribute that is absent costs 0.4 us.
        self._schema_versions: dict[str, int] = {
            topic: getattr(cls, "class_version", 1) for topic, cls in self.classes.items()
        }
        self.topics: Sequence[str] = list(self.classes)

    def body(
        self, topic: str, originator_id: UUID | str, version: int, state: bytes
    ) -> dict[str, Any]:
        """The canonical body of a stored event; raises :class:`EventDecodeError`."""
        return self.sealed_body(topic, originator_id, version, state)[0]

    def sealed_body(
        self, topic: str, originator_id: UUID | str, version: int, state: bytes
    ) -> tuple[dict[str, Any], str | None]:
        """:meth:`body` and the event's seal (None when it has none): the seal is stored
        with the event but is not part of what its hash covers."""
        cls = self.classes.get(topic)
        if cls is None:
            raise EventDecodeError(f"unknown event topic {topic!r}")
        stored = state
        try:
            if self._decrypt is not None:
                state = self._decrypt(state)
            if self._decompress is not None:
                state = self._decompress(state)
            data = _loads(state)
        except EventDecodeError:
            raise
        except Exception as exc:  # any undecodable byte sequence
            raise EventDecodeError(f"stored state does not decode: {exc}") from exc
        if not isinstance(data, dict):
            raise EventDecodeError("stored state is not an object")
        schema_version = self._schema_versions[topic]
        if data.pop("class_version", 1) != schema_version:
            return self._slow(topic, originator_id, version, stored)
        data.pop("originator_topic", None)
        seal = data.pop("seal", None)
        if seal is not None and not isinstance(seal, str):
            raise EventDecodeError("the stored seal is not text")
        if not isinstance(data.get("previous_hash"), str) or not isinstance(
            data.get("event_id"), str
        ):
            raise EventDecodeError("stored state lacks the event envelope")
        data["originator_id"] = (
            str(originator_id) if isinstance(originator_id, UUID) else uuid_text(originator_id)
        )
        data["originator_version"] = version
        data["type"] = cls.__name__
        data["schema_version"] = schema_version
        return data, seal

    def row_body(self, row: RawRow) -> dict[str, Any]:
        """:meth:`body` of a stored row; the error names the row's position and incident."""
        return self.row_sealed_body(row)[0]

    def row_sealed_body(self, row: RawRow) -> tuple[dict[str, Any], str | None]:
        """:meth:`sealed_body` of a stored row; the error names its position and incident."""
        at, originator_id, version, topic, state = row
        try:
            return self.sealed_body(topic, originator_id, version, state)
        except EventDecodeError as exc:
            raise EventDecodeError(
                f"the event at position {at} (incident {originator_id}, version {version}) "
                f"does not decode: {exc}"
            ) from exc

    def _slow(
        self, topic: str, originator_id: UUID | str, version: int, state: bytes
    ) -> tuple[dict[str, Any], str | None]:
        # An older schema version: let the library upcast, then encode like event_hash.
        try:
            identifier = originator_id if isinstance(originator_id, UUID) else UUID(originator_id)
            event = self._mapper.to_domain_event(StoredEvent(identifier, version, topic, state))
        except Exception as exc:
            raise EventDecodeError(f"stored state does not decode: {exc}") from exc
        if not isinstance(event, Incident.Event):
            raise EventDecodeError("not an incident event")
        body = event_fields(event)
        body["type"] = type(event).__name__
        body["schema_version"] = getattr(type(event), "class_version", 1)
        native: dict[str, Any] = _native(body)
        seal = event.__dict__.get("seal")
        return native, seal if isinstance(seal, str) else None


def _native(value: Any) -> Any:
    """``value`` with times and ids as the strings ``canonical_json`` writes for them."""
    if isinstance(value, datetime):
        return _time(value.isoformat())
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, dict):
        return {k: _native(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_native(v) for v in value]
    return value


def body_hash(body: dict[str, Any]) -> str:
    """The event hash: hex SHA-256 of the canonical JSON of the body (JSON types only)."""
    return hashlib.sha256(canonical_dumps(body)).hexdigest()


def chain_step(head: str, position: int, event_hash_hex: str) -> str:
    """The ledger-wide chain: ``SHA-256(ascii(head + ":" + position + ":" + hash))``."""
    return hashlib.sha256(f"{head}:{position}:{event_hash_hex}".encode("ascii")).hexdigest()


# ------------------------------------------------------------------ the export envelope

_ENVELOPE_KEYS = ENVELOPE_FIELDS | {"type", "schema_version"}


def _proto_time(value: Any) -> str:
    """protobuf JSON of a Timestamp made from the time (0, 3, 6 fraction digits)."""
    text = str(value)
    base, fraction = text[:19], text[20:26]
    if fraction == "000000":
        return base + "Z"
    if fraction.endswith("000"):
        return f"{base}.{fraction[:3]}Z"
    return f"{base}.{fraction}Z"


def _payload_json(body: dict[str, Any], exact: bool = False) -> str:
    """The event-specific fields, as ``wire.event_to_proto`` writes ``payload_json``;
    ``exact`` when orjson wrote the body's canonical JSON as json does (then it writes
    these fields, their numbers among the body's, as json does too)."""
    payload = {}
    for k in body.keys() - _ENVELOPE_KEYS:
        v = body[k]
        kind = type(v)
        payload[k] = v.plain if kind is Time else _plain(v) if kind is dict or kind is list else v
    encoded = canonical_dumps_of_part(payload) if exact else canonical_dumps(payload)
    return encoded.decode("utf-8")


def _plain(value: Any) -> Any:
    if isinstance(value, Time):
        return value.plain
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _location(location: Any) -> dict[str, Any] | None:
    if not location:
        return None
    result: dict[str, Any] = {}
    for key in ("kecamatan", "desa", "tps"):
        text = location.get(key, "")
        if text:
            result[key] = text
    for key in ("latitude", "longitude"):
        coordinate = location.get(key)
        if coordinate is not None:
            result[key] = float(coordinate)
    return result


def export_line(body: dict[str, Any], position: int, seal: str | None = None) -> tuple[bytes, str]:
    """One export line (UTF-8, without its newline) and the event's hash: the envelope
    (``envelope_from_body``, compact JSON in field order) with ``"canonical"`` added."""
    canonical, exact = canonical_dumps_exact(body)
    digest = hashlib.sha256(canonical).hexdigest()
    envelope = orjson.dumps(_envelope(body, position, digest, seal, _payload_json(body, exact)))
    return b"".join((envelope[:-1], b',"canonical":', canonical, b"}")), digest


def envelope_from_body(
    body: dict[str, Any], position: int, digest: str, seal: str | None = None
) -> dict[str, Any]:
    """The ``IncidentEvent`` as protobuf JSON (``preserving_proto_field_name``, defaults omitted).

    Equal to ``MessageToDict(event_to_proto(...), preserving_proto_field_name=True)``,
    without building the event or the message (a test compares them).
    """
    return _envelope(body, position, digest, seal, _payload_json(body))


def _envelope(
    body: dict[str, Any], position: int, digest: str, seal: str | None, payload_json: str
) -> dict[str, Any]:
    get = body.get
    envelope: dict[str, Any] = {
        "event_id": body["event_id"],
        "incident": f"incidents/{body['originator_id']}",
        "version": str(body["originator_version"]),
        "type": body["type"],
    }
    if body["schema_version"]:
        envelope["schema_version"] = body["schema_version"]
    occurred_at = get("occurred_at")
    if occurred_at is not None:
        envelope["occur_time"] = _proto_time(occurred_at)
    envelope["record_time"] = _proto_time(body["timestamp"])
    actor = {}
    agency, officer = get("actor_agency"), get("actor_officer")
    if agency:
        actor["agency"] = agency
    if officer:
        actor["officer"] = officer
    envelope["actor"] = actor
    reason = get("reason")
    if reason:
        envelope["reason"] = reason
    location = get("location")
    if location:
        envelope["location"] = _location(location)
    for key in ("correlation_id", "causation_id", "request_id", "previous_hash"):
        value = get(key)
        if value:
            envelope[key] = value
    envelope["hash"] = digest
    if position:
        envelope["position"] = str(position)
    envelope["payload_json"] = payload_json
    if seal:
        envelope["seal"] = seal
    return envelope

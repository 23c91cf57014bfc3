"""Tamper evidence: the ledger-wide hash chain, signed checkpoints, verification and export.

Encodings (all hashes are lowercase hex SHA-256; "canonical JSON" is
``services.ledger.domain.incident.canonical_json``: sorted keys, no spaces, UTF-8, not
ASCII-escaped, times in UTC ISO-8601 with microseconds, ids as hyphenated UUIDs):

**Event hash.** ``hash = SHA-256(canonical JSON of body)`` where ``body`` is every field
of the event (``originator_id``, ``originator_version``, ``timestamp``, the envelope and
the payload, ``previous_hash`` included) plus ``type`` (the class name, e.g.
``"DecisionRecorded"``) and ``schema_version``. This is ``event_hash(event)``.

**Incident chain.** Version 1 has ``previous_hash`` = 64 zeros; version ``n`` has
``previous_hash`` = the hash of version ``n-1``. Versions are contiguous from 1.

**Ledger-wide chain.** Over the incident events in the order of their global position
(the notification id; request records are not part of it; gaps between positions are
normal on PostgreSQL): ``head_0`` = 64 zeros and
``head_k = SHA-256(ASCII(head_{k-1} + ":" + decimal(position_k) + ":" + hash_k))``,
for example ``SHA-256("000…000:1:75f5cc…")``.

**Checkpoint.** ``(position, head, events, created_at)``: after the ``events`` incident
events up to ``position`` the head was ``head``. Signed with Ed25519 over the canonical
JSON ``{"created_at":"2026-11-28T06:22:43.201375+00:00","events":N,
"format":"incidentledger.checkpoint.v1","head":"…","position":P}``. Published (NATS
subject ``ledger.v1.checkpoints``, the witness's file, the export) as the JSON object
``{"position", "head", "events", "created_at", "key_id", "signature"}``: ``signature``
is base64 of the 64-byte signature, ``key_id`` the first 16 hex digits of SHA-256 of
the raw 32-byte public key. A witness's checkpoints file holds one such object a line.

**Export** (``export_jsonl``; JSON Lines, UTF-8, one object a line):

1. a header ``{"record":"header","format":"incidentledger.audit.export.v1","start",
   "stop","start_position","start_head","start_events","exported_at"}`` — the range
   asked for, and the chain (position, head, event count) just before it;
2. one line per incident event in position order: the ``IncidentEvent`` envelope
   exactly as protobuf JSON with the ``.proto`` field names (``event_id``, ``incident``,
   ``version`` and ``position`` as strings, times as RFC 3339 ``…Z``, empty fields
   left out, ``payload_json``) plus ``"canonical"``: the body that was hashed;
3. after the event at its position, each stored checkpoint as
   ``{"record":"checkpoint", …the published form…}`` (a checkpoint whose event is gone
   comes before the next event or at the end);
4. an end record ``{"record":"end","events","last_position","head"}``.

**Verification** recomputes every event hash, both chains and each checkpoint (its
signature, then the head and count at its position) and names the first divergence
in log order: ``modified`` (an event's content changed or no longer decodes; named is
the changed event), ``deleted`` (versions missing from an incident: named are the
first missing version and the position of the event after the hole), ``inserted`` (an
event that does not belong: a forged version, or more events than a checkpoint
counts), ``reordered`` (events out of their order or in each other's place: named is
the first event out of place), ``truncated`` (the log ends before a checkpoint's
position: named is the checkpoint's position), ``bad_signature`` (a checkpoint not
signed by a given key, or by a key retired before it) and ``wrong_key`` (the given keys
are not the ones the history was sealed with: no checkpoint verifies with one and no seal
or checkpoint names one). After a key rotation the verifier is given the current key and
the retired ones: in position order, a checkpoint of another key retires the key before
it, which then signs nothing more (docs/hash-chain.md, sections 6 and 8); the report says
which key signed which checkpoints and seals. A
change to the latest event of an incident, or a deletion of one, has no successor that
names it; the next checkpoint catches it, and the
divergence names the checkpoint's position. Events recorded after the last
checkpoint are protected by their incident chains only until the next checkpoint.
Memory grows with the number of incidents (a few hundred bytes each), not with the
number of events.
"""

from __future__ import annotations

from services.ledger.audit.checkpoints import (
    NATS_SUBJECT,
    Checkpoint,
    CheckpointError,
    Checkpoints,
    read_checkpoints_file,
)
from services.ledger.audit.encoding import RawDecoder, body_hash, chain_step, envelope_from_body
from services.ledger.audit.export import ExportError, ExportStats, export_jsonl
from services.ledger.audit.keys import (
    key_id,
    load_public_key,
    load_signing_key,
    public_key_bytes,
)
from services.ledger.audit.verifier import ChainVerifier, Divergence, VerifyReport
from services.ledger.audit.verify_exported import ExportFormatError, verify_export
from services.ledger.audit.verify_stored import VerifyProgress, verify_store

__all__ = [
    "NATS_SUBJECT",
    "ChainVerifier",
    "Checkpoint",
    "CheckpointError",
    "Checkpoints",
    "Divergence",
    "ExportError",
    "ExportFormatError",
    "ExportStats",
    "RawDecoder",
    "VerifyProgress",
    "VerifyReport",
    "body_hash",
    "chain_step",
    "envelope_from_body",
    "export_jsonl",
    "key_id",
    "load_public_key",
    "load_signing_key",
    "public_key_bytes",
    "read_checkpoints_file",
    "verify_export",
    "verify_store",
]

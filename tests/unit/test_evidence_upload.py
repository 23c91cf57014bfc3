"""An upload as the application takes it (services/ledger/evidence.py), over the in-memory
ledger and an object store kept in a dict: the bytes are stored first, the event last."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest

from services.common.errors import Cancelled
from services.common.sql import open_database
from services.ledger.application import Ledger
from services.ledger.domain.commands import ReportIncident
from services.ledger.domain.evidence import EvidencePolicy, object_name
from services.ledger.evidence import EvidenceService, UploadHeader
from services.ledger.evidence_store import HashingSink, ListedObject, StoredObject
from tests.unit.incident_builders import REF, envelope_for

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01" + bytes(5000)


class DictObjects:
    """The object store: each upload's bytes under their content address."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_chunks(self, pieces: Iterator[bytes]) -> StoredObject:
        data = b"".join(pieces)
        digest = hashlib.sha256(data).hexdigest()
        name = object_name(digest)
        if name in self.objects:
            return StoredObject(len(data), digest)
        self.objects[name] = data
        return StoredObject(len(data), digest, ListedObject(name, len(data), None))

    def read_into(self, name: str, sink: HashingSink) -> StoredObject | None:
        raise AssertionError("not read here")

    def delete_unchanged(self, listed: ListedObject) -> bool:
        return self.objects.pop(listed.name, None) is not None

    @property
    def stopping(self) -> bool:
        return False


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    app = Ledger(REF, env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    yield app
    app.close()


def reported(ledger: Ledger) -> UUID:
    report = ReportIncident(
        title="Amplop dibagikan",
        description="",
        category="money_politics",
        severity="high",
        location={"kecamatan": "ipuh"},
    )
    return ledger.execute(envelope_for("bawaslu"), report).incident_id


def test_an_uploader_gone_when_its_bytes_are_stored_has_nothing_recorded(
    ledger: Ledger, tmp_path: Path
) -> None:
    """A dying uploader's stream may end like a finished one, its cancellation known only
    a moment later: asked once more before the event, it records nothing."""
    incident = reported(ledger)
    objects = DictObjects()
    service = EvidenceService(
        ledger,
        objects,
        EvidencePolicy(("image/jpeg",), 25_000_000),
        tmp_path / "spool",
        open_database({}),
    )
    header = UploadHeader(incident, "amplop.jpg", "", "")
    with pytest.raises(Cancelled) as refused:
        service.upload(envelope_for("bawaslu"), header, [JPEG[:3000]], gone=lambda: True)
    assert refused.value.reason == "UPLOAD_CANCELLED"
    assert ledger.get_incident(incident).evidence == {}
    # Its bytes were stored, then deleted: no event names them, and none will.
    assert objects.objects == {}
    # An uploader still there has its file recorded.
    result, attached = service.upload(envelope_for("bawaslu"), header, [JPEG])
    assert attached.evidence.file.size_bytes == len(JPEG)
    assert list(ledger.get_incident(incident).evidence) == [result.event_id]

"""Evidence: what a file is (sniffed from its first bytes), what is accepted, and the
command that attaches it once its bytes are stored and checked.

The media type is read from the content, never from the file's name or the uploader's
word: an executable named ``photo.jpg`` starts with ``MZ`` or ``\\x7fELF`` and is refused.
The command :class:`UploadEvidence` is what the upload turns into once the object store
holds the complete file under its SHA-256; like every command, it is checked, fingerprinted
(over the digest too, so a retry of the same file answers the original result) and applied
to the incident, whose rule (:meth:`Incident.attach_evidence`) decides who may attach.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from dataclasses import dataclass

from services.common.errors import InvalidArgument, ResourceExhausted
from services.ledger.domain.commands import (
    CHECK,
    MAX_LENGTH,
    MAX_TEXT,
    REQUIRED,
    IncidentCommand,
    Rules,
    check_text,
    text,
)
from services.ledger.domain.incident import Envelope, EvidenceFile, Incident

MAX_FILE_NAME = 255
#: How many first bytes the sniffing reads.
SNIFF_BYTES = 16
#: The largest chunk of an upload or a download (1 MiB).
MAX_CHUNK_BYTES = 1 << 20

#: What the first bytes say of the types the ledger never accepts, for a clear refusal.
_REFUSED_KINDS = (
    (b"MZ", "application/x-msdownload"),
    (b"\x7fELF", "application/x-executable"),
    (b"#!", "text/x-shellscript"),
    (b"PK\x03\x04", "application/zip"),
)
#: The MP4 brands of audio-only files (M4A, M4B audio books, M4P).
_AUDIO_BRANDS = frozenset({b"M4A ", b"M4B ", b"M4P "})


def sniff_media_type(head: bytes) -> str:
    """The media type the first bytes of a file announce; ``application/octet-stream``
    when they announce none the ledger knows."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head[4:8] == b"ftyp":
        return "audio/mp4" if head[8:12] in _AUDIO_BRANDS else "video/mp4"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "audio/wav"
    # AAC in ADTS frames: a 12-bit sync word, then MPEG version, layer 00.
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
        return "audio/aac"
    for magic, kind in _REFUSED_KINDS:
        if head.startswith(magic):
            return kind
    return "application/octet-stream"


@dataclass(frozen=True)
class EvidencePolicy:
    """What the ledger accepts: the media types and the largest size (settings)."""

    media_types: tuple[str, ...]
    max_bytes: int

    def check_size(self, size: int) -> None:
        if size > self.max_bytes:
            raise ResourceExhausted(
                f"the file is larger than the {self.max_bytes} bytes the ledger accepts",
                reason="EVIDENCE_TOO_LARGE",
                metadata={"max_bytes": str(self.max_bytes)},
            )

    def check_type(self, sniffed: str, declared: str) -> str:
        """The sniffed type when it is accepted and agrees with the declared one (if any)."""
        if sniffed not in self.media_types:
            raise InvalidArgument(
                "chunk",
                f"the content is {sniffed}, which is not accepted as evidence "
                f"(accepted: {', '.join(self.media_types)})",
                reason="MEDIA_TYPE_NOT_ALLOWED",
                metadata={"media_type": sniffed},
            )
        # Parameters are not the type: "application/pdf; charset=binary" (what `file -bi`
        # prints) is application/pdf.
        if declared and declared.split(";")[0].strip().lower() != sniffed:
            raise InvalidArgument(
                "header.media_type",
                f"declared {declared}, but the content is {sniffed}",
                reason="MEDIA_TYPE_MISMATCH",
            )
        return sniffed


#: The upload header's field that names the file.
FILE_NAME_FIELD = "header.file_name"


#: Unicode categories a file's name may not hold beside control characters: formatting
#: (direction overrides and isolates, zero-width characters) and line or paragraph
#: separators, which make a name read as another.
_INVISIBLE = frozenset({"Cf", "Zl", "Zp"})


def check_file_name(value: str) -> str:
    """The uploader's name of the file, as the event keeps it for good: a name, not a path
    (no ``/`` or ``\\``, not ``.`` or ``..``), without control characters (a line break or
    a terminal escape in it could forge or garble lines of what officers and auditors read:
    ledgerctl's tables, a console log). Whoever downloads the file may be given this name
    to write it under."""
    check_text(FILE_NAME_FIELD, value, MAX_FILE_NAME, required=True)
    if len(value.encode()) > MAX_FILE_NAME:
        # A file system's limit is in bytes: a longer name was accepted and could then be
        # written by no one who downloaded it (yet the download was recorded).
        raise InvalidArgument(
            FILE_NAME_FIELD,
            f"is longer than {MAX_FILE_NAME} bytes in UTF-8, the most a file system takes",
            reason="FIELD_TOO_LONG",
        )
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise InvalidArgument(FILE_NAME_FIELD, "must not contain control characters")
    if any(unicodedata.category(c) in _INVISIBLE for c in value):
        # "a\u202egpj.exe" shows as "aexe.jpg": a name must read as what it is.
        raise InvalidArgument(
            FILE_NAME_FIELD,
            "must not contain invisible formatting characters (direction overrides, "
            "zero-width characters, line separators)",
        )
    if "/" in value or "\\" in value:
        raise InvalidArgument(
            FILE_NAME_FIELD, "must be the file's name only, without a directory ('/' or '\\')"
        )
    if value.strip() in {".", ".."}:
        raise InvalidArgument(FILE_NAME_FIELD, "must be the file's name, not '.' or '..'")
    return value


def _file_name_check(_rules: Rules, _name: str, value: str) -> str:
    return check_file_name(value)


def check_chunk(size: int) -> None:
    if size > MAX_CHUNK_BYTES:
        raise InvalidArgument("chunk", f"a chunk holds at most {MAX_CHUNK_BYTES} bytes")


def check_declared_size(declared: int, received: int, *, ended: bool) -> None:
    """The bytes received so far against the size the uploader declared (0: none): more
    is refused at once, fewer once the stream has ended. An uploader that dies half way
    may close its connection as if it had finished: without this check, the bytes it sent
    would be taken for the whole file."""
    if declared < 0:
        raise InvalidArgument("header.size_bytes", "must not be negative")
    if not declared:
        return
    if received > declared:
        raise InvalidArgument(
            "header.size_bytes",
            f"the upload brings more than the {declared} bytes declared",
        )
    if ended and received < declared:
        raise InvalidArgument(
            "header.size_bytes",
            f"the upload ended after {received} of the {declared} bytes declared: "
            "send the whole file again",
        )


@dataclass(frozen=True)
class UploadEvidence(IncidentCommand):
    """Attach a stored, checked file to the incident (the ``UploadEvidence`` RPC's command,
    made once the upload is complete)."""

    sha256: str
    size_bytes: int
    media_type: str
    file_name: str = dataclasses.field(
        metadata={CHECK: _file_name_check, MAX_LENGTH: MAX_FILE_NAME, REQUIRED: True}
    )
    description: str = dataclasses.field(metadata=text(MAX_TEXT))

    def apply(self, envelope: Envelope, incident: Incident, *others: Incident) -> None:
        file = EvidenceFile(self.sha256, self.size_bytes, self.media_type)
        incident.attach_evidence(envelope, file, self.file_name, self.description)


def object_name(sha256: str) -> str:
    """The object store's name of a file: its content address."""
    return f"sha256-{sha256}"

"""Reference codes: the short name of an incident a person can read out over the phone.

A code looks like ``MKM-7QK3-9V``: the regency's prefix (``reference_prefix`` in the
reference data), four and then one character of payload, and a check character.

- **Alphabet**: Crockford's base 32 (``0-9`` and ``A-Z`` without ``I``, ``L``, ``O``,
  ``U``), so no two characters look or sound alike. Reading a code is lenient the way
  Crockford's decoding is: case does not matter, ``I`` and ``L`` are read as ``1``,
  ``O`` as ``0``, hyphens (and the dashes an editor makes of them) and spaces are ignored,
  and the prefix may be left out (``7QK3-9V``): every code of the ledger has it.
- **Payload**: the low 25 bits of the incident's id (about 33 million codes). The code is
  thus a function of the incident id, recorded in its ``Reported`` event; uniqueness is
  not left to chance: each code is claimed (:class:`ReferenceClaim`) in the transaction
  that records its report, and a report whose code is taken draws again: draw ``n`` > 0
  takes the payload from a SHA-256 of the id and ``n`` instead, so that the incident keeps
  its id (a report naming people has its personal data sealed for that id).
- **Check character**: Damm's algorithm over the quasigroup ``x * y = 2x + y`` of the
  field GF(32) (polynomial ``x^5 + x^2 + 1``). It is totally anti-symmetric, so the check
  catches every single mistyped character and every swap of two adjacent characters of
  the payload and check (what a phone line does to a code); the check character is the
  one that brings the running value back to zero.
"""

from __future__ import annotations

import hashlib
import re
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from services.common.errors import InvalidArgument
from services.ledger.domain.created import created_event

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
PAYLOAD_LENGTH = 5
PAYLOAD_BITS = 5 * PAYLOAD_LENGTH
#: A prefix: letters only, so that it never reads as part of the payload.
PREFIX = re.compile(r"[A-Z]{1,6}")

_VALUES = {c: n for n, c in enumerate(ALPHABET)}
# Crockford's decoding: characters that are easily taken for others are read as them.
_VALUES.update({"I": 1, "L": 1, "O": 0})
#: What people put between a code's groups: spaces, hyphens, and the dashes a word processor
#: or a phone's keyboard makes of a hyphen (U+2010 to U+2015, U+2212).
_SEPARATORS = re.compile(r"[\s\-\u2010-\u2015\u2212]")
_MODULUS = 0b100101  # x^5 + x^2 + 1, primitive over GF(2)
_NAMESPACE = uuid5(NAMESPACE_URL, "urn:incidentledger:reference")


def _times_two(value: int) -> int:
    value <<= 1
    return value ^ _MODULUS if value & 0b100000 else value


def _step(interim: int, digit: int) -> int:
    """The quasigroup operation ``interim * digit = 2 * interim + digit`` in GF(32)."""
    return _times_two(interim) ^ digit


def check_character(payload: str) -> str:
    """The character that makes ``payload`` + it check out (payload in :data:`ALPHABET`)."""
    interim = 0
    for char in payload:
        interim = _step(interim, _VALUES[char])
    # interim * c = 0 in GF(32) (characteristic 2): c = 2 * interim.
    return ALPHABET[_times_two(interim)]


def checks_out(digits: str) -> bool:
    """Whether payload and check character (in :data:`ALPHABET`) agree."""
    interim = 0
    for char in digits:
        interim = _step(interim, _VALUES[char])
    return interim == 0


def code_for(prefix: str, incident_id: UUID, draw: int = 0) -> str:
    """The code of the incident ``incident_id`` under ``prefix``: ``PFX-XXXX-XC``; ``draw``:
    which try for a free code (0: the id's own low bits)."""
    source = incident_id.int
    if draw:
        digest = hashlib.sha256(incident_id.bytes + draw.to_bytes(4, "big")).digest()
        source = int.from_bytes(digest[-8:], "big")
    value = source & ((1 << PAYLOAD_BITS) - 1)
    payload = "".join(ALPHABET[(value >> (5 * n)) & 31] for n in reversed(range(PAYLOAD_LENGTH)))
    return format_code(prefix, payload + check_character(payload))


def format_code(prefix: str, digits: str) -> str:
    return f"{prefix}-{digits[:4]}-{digits[4:]}"


def parse_code(text: str, prefix: str, field: str = "reference") -> str:
    """The code ``text`` in its canonical form, read leniently (see the module's text).

    INVALID_ARGUMENT when it is not a code of this ledger, or when its check character
    does not match: a mistyped code (``REFERENCE_MISTYPED``), never another incident's.
    """
    compact = _SEPARATORS.sub("", text).upper()
    if not compact:
        raise InvalidArgument(field, "is required")
    if len(compact) == PAYLOAD_LENGTH + 1:
        # Read out without the regency's prefix, which every code of this ledger shares (a
        # prefixed code is longer, and its check character still guards the rest).
        rest = compact
    elif compact.startswith(prefix):
        rest = compact[len(prefix) :]
    else:
        raise InvalidArgument(
            field,
            f"a reference of this ledger starts with {prefix}- (or is the six characters "
            f"after it), got {text[:40]!r}",
        )
    if len(rest) != PAYLOAD_LENGTH + 1:
        raise InvalidArgument(
            field,
            f"a reference looks like {prefix}-XXXX-XX ({PAYLOAD_LENGTH + 1} characters "
            f"after the prefix), got {text[:40]!r}",
        )
    unknown = sorted({c for c in rest if c not in _VALUES})
    if unknown:
        raise InvalidArgument(
            field, f"{text[:40]!r} has characters no reference uses: {''.join(unknown)}"
        )
    digits = "".join(ALPHABET[_VALUES[c]] for c in rest)
    if not checks_out(digits):
        raise InvalidArgument(
            field,
            f"{text[:40]!r} is mistyped: its check character does not match (a character "
            "is wrong, or two are swapped)",
            reason="REFERENCE_MISTYPED",
        )
    return format_code(prefix, digits)


def claim_key(code: str) -> UUID:
    """The id of the claim of ``code`` (canonical form)."""
    return uuid5(_NAMESPACE, code)


class ReferenceClaim(Aggregate):
    """A reference code, taken by one incident; its id is :func:`claim_key` of the code.

    Saved in the same transaction as the incident's ``Reported`` event: a second claim of
    the same code fails that transaction (as a second request record does), so no two
    incidents ever carry one code. It also finds the incident a code names.
    """

    class Claimed(Aggregate.Created):
        code: str
        incident_id: UUID

    @classmethod
    def claim(cls, code: str, incident_id: UUID) -> ReferenceClaim:
        return cls._create(cls.Claimed, id=claim_key(code), code=code, incident_id=incident_id)

    @classmethod
    def claimed(cls, code: str, incident_id: UUID) -> Claimed:
        """The event :meth:`claim` records, made without the claim (a field device's batch)."""
        return created_event(cls, cls.Claimed, claim_key(code), code=code, incident_id=incident_id)

    def __init__(self, code: str, incident_id: UUID) -> None:
        self.code = code
        self.incident_id = incident_id

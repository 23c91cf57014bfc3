"""Personal data of reporters and witnesses: what a report may carry about people, its
checks, and the sealed form in which it enters the ledger.

A report may name its reporter (name, phone, NIK, address, and whether they asked to stay
anonymous to agencies other than the reporting one) and witnesses. Each person is a *data
subject* with a random id of their own (never derived from their data). The application
seals each subject's data with a key of their own before the event is made
(services/ledger/personal_keys.py): the ``Reported`` event, and so the hash chain, the
stream, exports and projections, hold only :class:`SealedSubject` (ciphertext and
references). Erasure destroys the subject's key; the event stays, and still verifies.

Messages of the checks name the field, never its value: a refusal is logged and answered,
and must not carry the number it refuses.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import phonenumbers

from services.common.errors import InvalidArgument

MAX_NAME = 200
MAX_ADDRESS = 500
MAX_WITNESSES = 10
NIK_DIGITS = 16
MIN_PURPOSE = 5
MAX_PURPOSE = 500
#: Phones without a country code are read as Indonesian (0812..., 812...).
DEFAULT_REGION = "ID"


class SubjectRole(enum.Enum):
    REPORTER = "reporter"
    WITNESS = "witness"


@dataclass(frozen=True)
class Person:
    """What a report says about one person; empty strings are "not given"."""

    name: str = ""
    phone: str = ""
    nik: str = ""
    address: str = ""

    def to_plain(self) -> dict[str, str]:
        return {"name": self.name, "phone": self.phone, "nik": self.nik, "address": self.address}

    @classmethod
    def from_plain(cls, data: dict[str, Any]) -> Person:
        return cls(
            name=str(data.get("name", "")),
            phone=str(data.get("phone", "")),
            nik=str(data.get("nik", "")),
            address=str(data.get("address", "")),
        )


@dataclass(frozen=True)
class SealedSubject:
    """One data subject as the ``Reported`` event carries them: no personal data.

    ``nonce`` and ``ciphertext`` (base64) are the AES-256-GCM encryption of the person's
    data under the subject's own key; ``anonymous``: the reporter asked that agencies other
    than the reporting one do not see who they are (a flag, not personal data by itself).
    """

    subject_id: UUID
    role: SubjectRole
    anonymous: bool
    nonce: str
    ciphertext: str

    def to_payload(self) -> dict[str, Any]:
        return {
            "subject": str(self.subject_id),
            "role": self.role.value,
            "anonymous": self.anonymous,
            "nonce": self.nonce,
            "ciphertext": self.ciphertext,
        }

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> SealedSubject:
        return cls(
            subject_id=UUID(str(data["subject"])),
            role=SubjectRole(data["role"]),
            anonymous=bool(data["anonymous"]),
            nonce=str(data["nonce"]),
            ciphertext=str(data["ciphertext"]),
        )


@dataclass(frozen=True)
class SealedReport:
    """A report's personal data once sealed: the incident it is sealed for (its id is
    chosen before the incident exists, as the encryption is bound to it) and its subjects."""

    incident_id: UUID
    subjects: tuple[SealedSubject, ...]


@dataclass(frozen=True)
class PersonalData:
    """The people a report names. ``digest`` and ``sealed`` are set by the application
    before the command runs: the keyed digest of the plaintext stands for it in the
    request's idempotency fingerprint (a plain hash of a NIK could be reversed by trying
    them all), and the sealed form is what the event records."""

    reporter: Person | None = None
    anonymous: bool = False
    witnesses: tuple[Person, ...] = ()
    digest: str = ""
    sealed: SealedReport | None = None

    def people(self) -> list[tuple[SubjectRole, Person]]:
        """Each person with their role, the reporter first."""
        found = [(SubjectRole.REPORTER, self.reporter)] if self.reporter else []
        return [*found, *((SubjectRole.WITNESS, w) for w in self.witnesses)]

    def to_plain(self) -> dict[str, Any]:
        """The plaintext as one document (what the digest covers)."""
        return {
            "reporter": self.reporter.to_plain() if self.reporter else None,
            "anonymous": self.anonymous,
            "witnesses": [w.to_plain() for w in self.witnesses],
        }

    def fingerprint_value(self) -> str:
        """What the idempotency fingerprint holds for it: the keyed digest, never the data."""
        if not self.digest:
            raise TypeError("personal data must be digested before it is fingerprinted")
        return self.digest


#: Indonesia's country calling code: what E.164 puts before a national number.
COUNTRY_CODE = 62
#: The forms nearly every phone in a report takes: an Indonesian number after +62, 62 or
#: the national prefix 0, written with digits, spaces and dashes only.
_INDONESIAN_FORM = re.compile(r"(?:\+?62|0)([1-9][0-9]{4,13})", re.ASCII)
_SPACES_AND_DASHES = re.compile(r"[ \-]+")
#: What a written phone number may hold. The library's parser reads letters as a keypad's
#: digits (``0812 abc 2222``) and drops what follows a number (a mistyped ``O`` for ``0``,
#: an extension): a typo would then be stored, and found, as somebody else's number.
_PHONE_CHARACTERS = re.compile(r"\+?[0-9 ().\-/]+", re.ASCII)


@dataclass(frozen=True)
class _NumberDesc:
    """One of phonenumbers' number descriptions, compiled: the lengths it allows (none
    listed: any) and its national number pattern."""

    lengths: frozenset[int]
    pattern: re.Pattern[str]

    def matches(self, national: str) -> bool:
        return (not self.lengths or len(national) in self.lengths) and (
            self.pattern.fullmatch(national) is not None
        )


def _compiled(desc: Any) -> _NumberDesc | None:
    if desc is None or not desc.national_number_pattern:
        return None
    return _NumberDesc(frozenset(desc.possible_length), re.compile(desc.national_number_pattern))


@dataclass(frozen=True)
class _ValidityRules:
    """``phonenumbers.is_valid_number`` for one region's national numbers, its metadata
    compiled once: the number matches the general description and that of at least one
    type (the order in which the library tries the types decides only which type it
    answers). The library does the same per call through its pattern cache and a
    ``PhoneNumber`` object: 11.8 µs a phone against 4.9 µs (a loop of 100,000)."""

    general: _NumberDesc
    types: tuple[_NumberDesc, ...]

    @classmethod
    def of(cls, region: str) -> _ValidityRules:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
        if metadata is None:
            raise RuntimeError(f"phonenumbers has no metadata for {region}")
        general = _compiled(metadata.general_desc)
        if general is None:
            raise RuntimeError(f"phonenumbers has no general description for {region}")
        kinds = [
            metadata.premium_rate,
            metadata.toll_free,
            metadata.shared_cost,
            metadata.voip,
            metadata.personal_number,
            metadata.pager,
            metadata.uan,
            metadata.voicemail,
            metadata.fixed_line,
        ]
        # The library tries mobile only where its pattern is not fixed lines' own.
        if not metadata.same_mobile_and_fixed_line_pattern:
            kinds.append(metadata.mobile)
        return cls(general, tuple(d for d in map(_compiled, kinds) if d is not None))

    def valid(self, national: str) -> bool:
        return self.general.matches(national) and any(t.matches(national) for t in self.types)


INDONESIAN_PHONE_RULES = _ValidityRules.of(DEFAULT_REGION)


def normalised_phone(value: str, field: str) -> str:
    """The phone number in E.164 (+62812...); Indonesian local forms (0812..., 62812...)
    are accepted. INVALID_ARGUMENT, without the number, when it is not a valid one."""
    text = value.strip()
    if not _PHONE_CHARACTERS.fullmatch(text):
        raise InvalidArgument(
            field, "may hold only digits, spaces, dashes, dots, brackets and a leading +"
        )
    # The common forms skip phonenumbers' parse, which costs about 20 µs a phone (two in a
    # report naming a reporter and a witness, bench part 2): their national number is
    # checked by the same validity rules, compiled once (_ValidityRules). Anything else,
    # or a national number those rules do not accept, takes the full parse below, which
    # decides; unit tests hold both paths, and the compiled rules, to the library's
    # answers (tests/unit/test_personal_keys.py).
    local = _INDONESIAN_FORM.fullmatch(_SPACES_AND_DASHES.sub("", text))
    if local is not None:
        national = local.group(1)
        if INDONESIAN_PHONE_RULES.valid(national):
            return f"+{COUNTRY_CODE}{national}"
    if text.startswith("62") and not text.startswith("+"):
        text = f"+{text}"
    try:
        number = phonenumbers.parse(text, DEFAULT_REGION)
    except phonenumbers.NumberParseException:
        raise InvalidArgument(field, "is not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidArgument(field, "is not a valid phone number (E.164 or 08...)")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


#: How a NIK is written in groups (``1706 0141 0790 0003``, ``1706-0141-...``, ``1706.0141...``):
#: the free-text rule takes the same separators.
_NIK_SEPARATORS = re.compile(r"[ .\-]")


def check_nik(value: str, field: str) -> str:
    """A NIK (Nomor Induk Kependudukan): exactly 16 digits, in groups or not."""
    text = _NIK_SEPARATORS.sub("", value.strip())
    if len(text) != NIK_DIGITS or not text.isascii() or not text.isdigit():
        raise InvalidArgument(field, f"must be exactly {NIK_DIGITS} digits")
    return text


def _check_text(field: str, value: str, limit: int) -> str:
    text = value.strip()
    if len(text) > limit:
        raise InvalidArgument(field, f"is longer than {limit} characters", reason="FIELD_TOO_LONG")
    return text


def checked_person(person: Person, field: str) -> Person:
    """The person with normalised values; a person needs a name."""
    name = _check_text(f"{field}.name", person.name, MAX_NAME)
    if not name:
        raise InvalidArgument(f"{field}.name", "is required for a person named in a report")
    return Person(
        name=name,
        phone=normalised_phone(person.phone, f"{field}.phone") if person.phone.strip() else "",
        nik=check_nik(person.nik, f"{field}.nik") if person.nik.strip() else "",
        address=_check_text(f"{field}.address", person.address, MAX_ADDRESS),
    )


def checked_personal_data(data: PersonalData | None, field: str) -> PersonalData | None:
    """The report's personal data checked and normalised; None when there is none."""
    if data is None or (data.reporter is None and not data.witnesses):
        if data is not None and data.anonymous:
            raise InvalidArgument(f"{field}.anonymous", "is set, but no reporter is given")
        return None
    if len(data.witnesses) > MAX_WITNESSES:
        raise InvalidArgument(f"{field}.witnesses", f"at most {MAX_WITNESSES} witnesses")
    if data.anonymous and data.reporter is None:
        raise InvalidArgument(f"{field}.anonymous", "is set, but no reporter is given")
    reporter = checked_person(data.reporter, f"{field}.reporter") if data.reporter else None
    witnesses = tuple(
        checked_person(w, f"{field}.witnesses[{n}]") for n, w in enumerate(data.witnesses)
    )
    return PersonalData(reporter=reporter, anonymous=data.anonymous, witnesses=witnesses)


#: A run of digits as people write numbers in text: 0812-7345-6690, +62 812 7345 6690,
#: (0737) 71234, 1706.0141.0790.0003, 1706/0141/0790/0003, 0852_7777_6543. One pattern for
#: the report's own people and for any NIK or mobile number (a purpose, a description):
#: the second once lacked "/", and a NIK written with slashes was recorded in plain words.
_DIGIT_RUN = re.compile(r"\+?\d(?:[\d\s().\-/_]*\d)?")
_NON_DIGIT = re.compile(r"\D")
_SPACES = re.compile(r"\s+")


def _folded(text: str) -> str:
    """Text compared without regard to case or runs of white space."""
    return _SPACES.sub(" ", text).strip().casefold()


def _national_number(phone: str) -> str:
    """The digits of an E.164 phone without its country code (812..., for +62812...):
    what every written form of it (0812..., 62812..., +62 812...) contains. Country codes
    are prefix-free, so the first 1 to 3 digits that are one are it (a table look-up: a
    parse costs 15 µs a phone on every report naming people)."""
    digits = _NON_DIGIT.sub("", phone)
    for length in (1, 2, 3):
        if int(digits[:length] or "0") in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            return digits[length:]
    return digits


def _has_words(text: str, words: str) -> bool:
    """Whether ``words`` occurs in ``text`` as whole words ("Siti" is not in "Sitinjak")."""
    start = text.find(words)
    while start >= 0:
        end = start + len(words)
        before = text[start - 1] if start else " "
        after = text[end] if end < len(text) else " "
        if not _word_char(before) and not _word_char(after):
            return True
        start = text.find(words, start + 1)
    return False


def _word_char(char: str) -> bool:
    return char.isalnum() or char == "_"


def check_free_text(data: PersonalData | None, texts: dict[str, str]) -> None:
    """Refuse a free text (``texts``: field name -> text; a report's title, description)
    that holds, verbatim, the name, the phone or the NIK of a person the report names:
    the personal data is sealed, the free text is not, and it would carry the plaintext
    into the event, the hash chain and every copy of them, where no erasure reaches.

    Matched: a name as whole words, without regard to case or spacing; a phone in any of its written
    forms (0812..., +62 812-..., 62812...); a NIK, even with separators. Not matched: part
    of a name, a nickname, a misspelling, an address; names of people the personal data
    does not name (docs/personal-data.md, "What it does not cover"). The refusal names
    the field, never what matched."""
    if data is None:
        return
    names: list[str] = []
    numbers: list[str] = []
    for _role, person in data.people():
        if person.name.strip():
            names.append(_folded(person.name))
        if person.phone:
            numbers.append(_national_number(person.phone))
        if person.nik:
            numbers.append(person.nik)
    for field, text in texts.items():
        if not text:
            continue
        folded = _folded(text)
        digits = [_NON_DIGIT.sub("", run) for run in _DIGIT_RUN.findall(text)]
        if any(_has_words(folded, name) for name in names) or any(
            number in run for number in numbers for run in digits
        ):
            raise InvalidArgument(
                field,
                "holds the name, phone or NIK of a person the report names: keep them in "
                "personal_data, which is sealed",
                reason="PERSONAL_DATA_IN_TEXT",
            )


#: An Indonesian mobile number's digits, after +62, 62 or 0, or without them (as people
#: write one after "telp": "8137771 9284" passed).
_MOBILE_DIGITS = re.compile(r"(?:62|0)?8[0-9]{8,11}", re.ASCII)
#: What a refusal of :func:`check_no_personal_number` advises, by default.
REQUEST_REFERENCE = "give the request's reference, not the person's data"
#: ... for a report's title or description.
INTO_PERSONAL_DATA = "name the person in personal_data, which is sealed (a caller or a witness)"


def check_no_personal_number(field: str, text: str, advice: str = REQUEST_REFERENCE) -> str:
    """Refuse a text about a person's data (a read's purpose, an erasure's legal basis, a
    legal hold's reason), or a report's title or description (``advice``
    :data:`INTO_PERSONAL_DATA`), that holds a NIK (16 digits) or a mobile number: such a text is
    recorded in plain words in the incident's events, for good, and an officer writing
    "subject access of NIK 1706..." would put there the very data the request protects.
    Landlines are left (their digits are those of dates and reference numbers too), and
    a name cannot be told from other words: the docs ask for the request's reference."""
    for run in _DIGIT_RUN.findall(text):
        digits = _NON_DIGIT.sub("", run)
        if len(digits) == NIK_DIGITS or _MOBILE_DIGITS.fullmatch(digits):
            raise InvalidArgument(
                field,
                f"holds a NIK or a phone number: this text is recorded in plain words; {advice}",
                reason="PERSONAL_DATA_IN_TEXT",
            )
    return text


def check_in_words(field: str, text: str) -> str:
    """Refuse a reason recorded with an act on people's data (a read's purpose, an
    erasure's legal basis, a legal hold's reason) that says nothing: counted in letters and
    digits, since one of dots, dashes or invisible characters (zero-width spaces, a braille
    blank) was recorded as if a reason had been stated."""
    if len(text) < MIN_PURPOSE or sum(c.isalnum() for c in text) < MIN_PURPOSE:
        raise InvalidArgument(
            field, f"state the purpose in words: at least {MIN_PURPOSE} letters or digits"
        )
    return text


def check_purpose(value: str, field: str = "purpose") -> str:
    """Why personal data is read or erased: stated in words, recorded with the access."""
    text = check_in_words(field, check_no_personal_number(field, value.strip()))
    if len(text) > MAX_PURPOSE:
        raise InvalidArgument(
            field, f"is longer than {MAX_PURPOSE} characters", reason="FIELD_TOO_LONG"
        )
    return text

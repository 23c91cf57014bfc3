"""Personal data: the checks of what a report says about people, and the key table (keys per
person wrapped by a key-encryption key, rotation, a wrong or missing key at start, erasure)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import phonenumbers
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.common.config import ConfigError
from services.common.errors import DataLoss, InvalidArgument, VersionConflict
from services.common.sql import SQLiteDatabase
from services.ledger.application import Ledger
from services.ledger.domain.commands import (
    ApproveClosure,
    AssignLeadAgency,
    LogAction,
    PlaceLegalHold,
    ReadPersonalData,
    ReportIncident,
    RequestClosure,
    ResolveIncident,
    VerifyIncident,
)
from services.ledger.domain.incident import Incident
from services.ledger.domain.personal import (
    INDONESIAN_PHONE_RULES,
    Person,
    PersonalData,
    check_nik,
    checked_personal_data,
    normalised_phone,
)
from services.ledger.personal_keys import KeyRing, PersonalKeys, load_key_ring
from tests.unit.incident_builders import REF, envelope_for

OLD = "kek-2026:" + base64.b64encode(bytes(range(32))).decode()
NEW = "kek-2027:" + base64.b64encode(bytes(range(32, 64))).decode()
WRONG = "kek-2026:" + base64.b64encode(bytes(32)).decode()
SITI = PersonalData(
    reporter=Person(name="Siti", phone="+6281273456690", nik="1706014107900003"),
    witnesses=(Person(name="Budi", phone="+6285212345678"),),
)


@pytest.mark.parametrize(
    ("given", "e164"),
    [
        ("081273456690", "+6281273456690"),
        ("0812-7345-6690", "+6281273456690"),
        ("+62 812 7345 6690", "+6281273456690"),
        ("6281273456690", "+6281273456690"),
        ("+6281273456690", "+6281273456690"),
        ("(0737) 71234", "+6273771234"),  # a landline in Mukomuko
    ],
)
def test_phones_are_normalised_to_e164(given: str, e164: str) -> None:
    assert normalised_phone(given, "phone") == e164


@pytest.mark.parametrize(
    "bad",
    [
        "12",
        "0812",
        "+1 555",
        "nomor",
        "08127345669012345",
        # Letters, which the library's parser reads as a keypad's digits or drops with what
        # follows: each of these was stored as another valid number.
        "0812 7345 669O",  # a letter O for a zero: +628127345669
        "0812 abc 2222",  # +628122222222
        "+62 812-7345-6690 ext. 12",
        "0812+73456690",
    ],
)
def test_a_bad_phone_is_refused_without_its_value(bad: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        normalised_phone(bad, "personal_data.reporter.phone")
    assert refused.value.field == "personal_data.reporter.phone"
    assert bad not in str(refused.value)


def _phone_by_parse(value: str) -> str | None:
    """The model: every phone written in digits and separators through phonenumbers'
    full parse (what normalised_phone did before its quick path), None where it refuses."""
    text = value.strip()
    # Written with ASCII digits and the usual separators only, a + first if any.
    body = text.removeprefix("+")
    if not body or any(c not in "0123456789 ().-/" for c in body):
        return None
    if text.startswith("62") and not text.startswith("+"):
        text = f"+{text}"
    try:
        number = phonenumbers.parse(text, "ID")
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _written(parts: tuple[str, str, list[str]]) -> str:
    prefix, digits, separators = parts
    out = prefix
    for n, digit in enumerate(digits):
        out += digit + (separators[n] if n < len(separators) else "")
    return out


# How people write numbers: a prefix (Indonesian or not), digits starting as Indonesian
# mobiles and landlines do (or anyhow), separators between them.
PHONES = st.tuples(
    st.sampled_from(["", "0", "62", "+62", "+62 ", "0062", "+1", "+65", "620", "+620", " 0"]),
    st.one_of(
        st.from_regex(r"(8[1-9]|2[1-9]|7[0-9]|[1-9])[0-9]{3,12}", fullmatch=True),
        st.from_regex(r"[0-9]{1,16}", fullmatch=True),
    ),
    st.lists(
        st.sampled_from(["", "", "", " ", "-", "  ", ".", "(", ")", "/", "O", "x", "ext. "]),
        max_size=16,
    ),
).map(_written)


@settings(max_examples=3000, deadline=None)
@given(PHONES)
@example("081273456690")
@example("0812-7345-6690")
@example("+62 812 7345 6690")
@example("6281273456690")
@example("02112345678")
@example("0737 71234")
@example("0062812")
@example("+62081273456690")
@example("08127345669012345")
@example("\u0668\u0661\u0662\u0667\u0663\u0664\u0665\u0666\u0666\u0669\u0660")
def test_the_quick_path_for_indonesian_phones_answers_as_the_full_parse(written: str) -> None:
    expected = _phone_by_parse(written)
    if expected is None:
        with pytest.raises(InvalidArgument):
            normalised_phone(written, "phone")
    else:
        assert normalised_phone(written, "phone") == expected


@settings(max_examples=3000, deadline=None)
@given(
    st.one_of(
        st.from_regex(r"(8[1-9]|2[1-9]|[3-79][0-9])[0-9]{3,12}", fullmatch=True),
        st.from_regex(r"[1-9][0-9]{4,13}", fullmatch=True),
    )
)
@example("81273456690")
@example("2112345678")
@example("73771234")
@example("8001234567")
def test_the_compiled_validity_rules_answer_as_phonenumbers(national: str) -> None:
    # The quick path's own rules against the library's, for the national numbers it
    # checks: a number they refused would still be right through the parse it falls back
    # to, so the test above would not see it.
    number = phonenumbers.PhoneNumber(country_code=62, national_number=int(national))
    assert INDONESIAN_PHONE_RULES.valid(national) == phonenumbers.is_valid_number(number)


def test_a_nik_has_sixteen_digits() -> None:
    for written in ("1706 0141 0790 0003", "1706-0141-0790-0003", "1706.0141.0790.0003"):
        assert check_nik(written, "nik") == "1706014107900003"
    for bad in ("170601410790000", "17060141079000031", "170601410790000x", "١٧٠٦٠١٤١٠٧٩٠٠٠٠٣"):
        with pytest.raises(InvalidArgument):
            check_nik(bad, "nik")


def test_each_person_needs_a_name_and_anonymity_needs_a_reporter() -> None:
    with pytest.raises(InvalidArgument) as nameless:
        checked_personal_data(PersonalData(witnesses=(Person(phone="081273456690"),)), "p")
    assert nameless.value.field == "p.witnesses[0].name"
    with pytest.raises(InvalidArgument) as anonymous:
        checked_personal_data(PersonalData(anonymous=True), "p")
    assert anonymous.value.field == "p.anonymous"
    assert checked_personal_data(PersonalData(), "p") is None


def keys_at(path: Path, ring: str) -> PersonalKeys:
    return PersonalKeys(SQLiteDatabase(str(path)), KeyRing.parse(ring, "test"))


def test_sealed_data_opens_with_its_key_and_not_after_erasure(tmp_path: Path) -> None:
    keys = keys_at(tmp_path / "k.sqlite", OLD)
    sealed = keys.seal(SITI)
    assert sealed.sealed is not None
    incident = sealed.sealed.incident_id
    reporter, witness = sealed.sealed.subjects
    assert keys.open_subject(incident, reporter) == SITI.reporter
    assert [k.subject_id for k in keys.find("nik", "1706014107900003")] == [reporter.subject_id]
    assert keys.destroy(incident, [reporter.subject_id]) == 1
    assert keys.open_subject(incident, reporter) is None
    assert keys.find("nik", "1706014107900003") == []
    assert keys.open_subject(incident, witness) == SITI.witnesses[0]
    assert [k.subject_id for k in keys.find("phone", "+6285212345678")] == [witness.subject_id]
    assert keys.destroy(incident, [reporter.subject_id, witness.subject_id]) == 1  # idempotent
    assert keys.find("phone", "+6285212345678") == []
    keys.close()


def test_the_digest_is_keyed_and_stable(tmp_path: Path) -> None:
    first = keys_at(tmp_path / "a.sqlite", OLD)
    other = keys_at(tmp_path / "b.sqlite", OLD)
    assert first.digest(SITI) == first.digest(SITI)
    # Another table has another random index key: a digest reveals nothing by itself.
    assert first.digest(SITI) != other.digest(SITI)
    first.close()
    other.close()


def test_rotation_keeps_old_data_readable_and_moves_it_under_the_new_key(tmp_path: Path) -> None:
    path = tmp_path / "k.sqlite"
    keys = keys_at(path, OLD)
    sealed = keys.seal(SITI).sealed
    assert sealed is not None
    keys.close()
    rotated = keys_at(path, f"{NEW},{OLD}")
    reporter = sealed.subjects[0]
    assert rotated.open_subject(sealed.incident_id, reporter) == SITI.reporter
    assert rotated.rewrap() == 3  # two people and the blind index key
    assert rotated.find("nik", "1706014107900003")[0].subject_id == reporter.subject_id
    rotated.close()
    only_new = keys_at(path, NEW)
    assert only_new.open_subject(sealed.incident_id, reporter) == SITI.reporter
    only_new.close()


def test_a_rotation_ends_with_the_old_key_removed_after_someone_was_erased(
    tmp_path: Path,
) -> None:
    """An erased person's row kept the old KEK's id, and the start asked for that KEK for
    ever: the rotation could not end (the old key had to stay configured)."""
    path = tmp_path / "k.sqlite"
    keys = keys_at(path, OLD)
    sealed = keys.seal(SITI).sealed
    assert sealed is not None
    reporter, witness = sealed.subjects
    assert keys.destroy(sealed.incident_id, [reporter.subject_id]) == 1
    keys.close()
    rotated = keys_at(path, f"{NEW},{OLD}")
    assert rotated.rewrap() == 2  # the witness and the blind index key; nothing of the erased
    rotated.close()
    only_new = keys_at(path, NEW)
    assert only_new.open_subject(sealed.incident_id, witness) == SITI.witnesses[0]
    assert only_new.open_subject(sealed.incident_id, reporter) is None
    only_new.close()


def test_a_missing_or_wrong_key_encryption_key_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "k.sqlite"
    keys_at(path, OLD).close()
    with pytest.raises(ConfigError, match="kek-2026"):
        keys_at(path, NEW)
    with pytest.raises(ConfigError, match="does not open"):
        keys_at(path, WRONG)


def test_a_lost_development_key_file_is_named_at_start(tmp_path: Path) -> None:
    """A restore without keys/personal-data.keys: the ledger generates a development key
    and the key table's keys do not open with it. The refusal says which file to put back,
    not a setting the operator never used."""
    key_dir = tmp_path / "keys"
    path = tmp_path / "k.sqlite"
    first = load_key_ring(keys=None, key_dir=key_dir, production=False, variable="V")
    PersonalKeys(SQLiteDatabase(str(path)), first).close()
    (key_dir / "personal-data.keys").unlink()
    ring = load_key_ring(keys=None, key_dir=key_dir, production=False, variable="V")
    assert ring.generated and ring.current != first.current
    with pytest.raises(ConfigError) as refused:
        PersonalKeys(SQLiteDatabase(str(path)), ring)
    message = str(refused.value)
    assert first.current in message, message
    assert str(key_dir / "personal-data.keys") in message, message
    assert "was missing" in message and "put back" in message, message
    # The key generated in its place opened nothing and is gone: the next start says the
    # same, not "give the key-encryption keys" of a file the operator never wrote.
    assert not (key_dir / "personal-data.keys").exists()
    again = load_key_ring(keys=None, key_dir=key_dir, production=False, variable="V")
    assert again.generated and again.current != ring.current
    with pytest.raises(ConfigError, match="was missing"):
        PersonalKeys(SQLiteDatabase(str(path)), again)
    # A file put there by hand that is not the key: said as such, and left alone.
    (key_dir / "personal-data.keys").write_text(KeyRing.generate_text("dev-other"))
    hand = load_key_ring(keys=None, key_dir=key_dir, production=False, variable="V")
    assert not hand.generated
    with pytest.raises(ConfigError, match="give the key-encryption keys"):
        PersonalKeys(SQLiteDatabase(str(path)), hand)
    assert (key_dir / "personal-data.keys").exists()


def test_production_refuses_a_development_key_and_needs_one(tmp_path: Path) -> None:
    ring = load_key_ring(keys=None, key_dir=tmp_path, production=False, variable="V")
    assert ring.current.startswith("dev-")
    assert load_key_ring(keys=None, key_dir=tmp_path, production=False, variable="V") == ring
    with pytest.raises(ConfigError, match="required in production"):
        load_key_ring(keys=None, key_dir=tmp_path, production=True, variable="V")
    dev_text = (tmp_path / "personal-data.keys").read_text()
    with pytest.raises(ConfigError, match="refused in production"):
        load_key_ring(keys=dev_text, key_dir=tmp_path, production=True, variable="V")
    assert load_key_ring(keys=OLD, key_dir=tmp_path, production=True, variable="V").current == (
        "kek-2026"
    )


@pytest.mark.parametrize(
    "bad", ["", "nokey", "k:notbase64!", "k:" + base64.b64encode(b"short").decode(), f"{OLD},{OLD}"]
)
def test_a_malformed_key_setting_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        KeyRing.parse(bad, "V")


def test_sealing_binds_the_ciphertext_to_its_incident(tmp_path: Path) -> None:
    keys = keys_at(tmp_path / "k.sqlite", OLD)
    sealed = keys.seal(SITI).sealed
    assert sealed is not None
    with pytest.raises(DataLoss):
        keys.open_subject(uuid4(), sealed.subjects[0])
    keys.close()


# ------------------------------------------------------------------ the retention rule


def _reported(ledger: Ledger) -> UUID:
    report = ReportIncident("Amplop", "", "money_politics", "", {"kecamatan": "ipuh"}, SITI)
    return ledger.execute(envelope_for("kesbangpol"), report).incident_id


def _closed(ledger: Ledger) -> UUID:
    i = _reported(ledger)
    for agency, command in (
        ("desk_pilkada", VerifyIncident(i, 0, "")),
        ("desk_pilkada", AssignLeadAgency(i, 0, "polres", "")),
        ("polres", LogAction(i, 0, "patrol", None)),
        ("polres", ResolveIncident(i, 0, "done")),
        ("polres", RequestClosure(i, 0, "")),
        ("desk_pilkada", ApproveClosure(i, 0, "")),
    ):
        ledger.execute(envelope_for(agency), command)
    return i


def test_the_retention_rule_erases_closed_incidents_unless_held(tmp_path: Path) -> None:
    keys = keys_at(tmp_path / "k.sqlite", OLD)
    ledger = Ledger(REF, env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, personal_keys=keys)
    still_open, expired, held = _reported(ledger), _closed(ledger), _closed(ledger)
    ledger.execute(envelope_for("kejari"), PlaceLegalHold(held, 0, "Gakkumdu 3"))
    year = timedelta(days=365)
    assert ledger.erase_expired_personal_data(year) == 0  # closed just now
    later = datetime.now(UTC) + year + timedelta(seconds=1)
    assert ledger.erase_expired_personal_data(year, later) == 1
    assert ledger.erase_expired_personal_data(year, later) == 0  # nothing left to erase

    def erased(incident: UUID) -> bool:
        return all(s.erased for s in ledger.get_incident(incident).subjects.values())

    assert erased(expired) and not erased(held) and not erased(still_open)
    basis = [
        e.reason for e in ledger.events.get(expired) if isinstance(e, Incident.PersonalDataErased)
    ]
    assert basis == ["retention rule: 365 days after closure"]
    # The keys are gone, not only marked: nothing opens the erased data.
    assert set(keys.incidents_with_keys()) == {still_open, held}


def test_a_caller_cannot_take_the_retention_rules_request_id(tmp_path: Path) -> None:
    """The retention rule erases as the coordinator under request id ``retention/{incident}``.
    Before, an officer of the coordinator could send any command under that id first: the
    rule was then refused (``REQUEST_ID_REUSED``) at every run, logged a warning, and the
    incident's personal data was never erased. Now a caller's request id may not begin with
    the ledger's own prefixes, and the rule erases."""
    keys = keys_at(tmp_path / "k.sqlite", OLD)
    ledger = Ledger(REF, env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, personal_keys=keys)
    expired, other = _closed(ledger), _reported(ledger)
    for taken in (f"retention/{expired}", f"find/{uuid4().hex}"):
        with pytest.raises(InvalidArgument) as refused:
            ledger.execute(envelope_for("desk_pilkada", taken), VerifyIncident(other, 0, ""))
        assert refused.value.field == "request_id"
    later = datetime.now(UTC) + timedelta(days=366)
    assert ledger.erase_expired_personal_data(timedelta(days=365), later) == 1
    assert all(s.erased for s in ledger.get_incident(expired).subjects.values())
    ledger.close()


def test_a_read_of_personal_data_does_not_turn_away_a_command_sent_before_it(
    tmp_path: Path,
) -> None:
    """A read is recorded as an event of the incident (who, whose, why); a command sent
    with the version before it still runs, as no decision rests on a read. A change
    since that version is a conflict as ever, before and after the incident is loaded
    from the store again."""
    store = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(tmp_path / "l")}
    keys = keys_at(tmp_path / "k.sqlite", OLD)
    ledger = Ledger(REF, env=store, personal_keys=keys)
    i = _reported(ledger)
    verified = ledger.execute(envelope_for("desk_pilkada"), VerifyIncident(i, 1, "")).version

    def read() -> int:
        return ledger.execute(
            envelope_for("bawaslu"), ReadPersonalData(i, 0, "checking the laporan")
        ).version

    assert read() == verified + 1
    assigned = ledger.execute(
        envelope_for("desk_pilkada"), AssignLeadAgency(i, verified, "polres", "")
    ).version
    assert assigned == verified + 2
    read()
    read()
    with pytest.raises(VersionConflict):  # assigned since: the form is stale
        ledger.execute(envelope_for("polres"), LogAction(i, verified, "patrol", None))
    ledger.close()
    again = Ledger(REF, env=store, personal_keys=keys)  # loaded from the store
    with pytest.raises(VersionConflict):
        again.execute(envelope_for("polres"), LogAction(i, verified, "patrol", None))
    with pytest.raises(VersionConflict):  # a version it never had
        again.execute(envelope_for("polres"), LogAction(i, assigned + 3, "patrol", None))
    logged = again.execute(envelope_for("polres"), LogAction(i, assigned, "patrol", None))
    assert logged.version == assigned + 3
    again.close()

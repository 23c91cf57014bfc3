"""Personal data of reporters and witnesses through the real gRPC server, on each store:
sealed on report, read only by the allowed agencies with a purpose (each read recorded),
found by phone or NIK, erased unless a legal hold is in force (docs/personal-data.md)."""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import personal_data_pb2 as pd
from services.common.config import ConfigError, LedgerSettings
from services.common.grpc_errors import error_info, localized_message
from services.common.sql import open_database
from tests.ledgerctl_support import Ctl
from tests.support import (
    REFERENCE_FILE,
    Client,
    running_ledger,
    settings_for,
    store_environment,
)

NIK = "1706014107900003"
PHONE_LOCAL = "0812-7345-6690"
PHONE = "+6281273456690"
NAME = "Siti Canaryah"
WITNESS_NIK = "1706024508850001"


def reason(error: grpc.RpcError) -> str:
    info = error_info(error)  # type: ignore[arg-type]
    assert info is not None, "every error carries an ErrorInfo"
    return str(info.reason)


def field(error: grpc.RpcError) -> str:
    info = error_info(error)  # type: ignore[arg-type]
    assert info is not None
    return str(info.metadata["field"])


def personal(*, anonymous: bool = False) -> pd.PersonalData:
    return pd.PersonalData(
        reporter=pd.Person(name=NAME, phone=PHONE_LOCAL, nik=NIK, address="Jl. Kenari 7"),
        reporter_anonymous=anonymous,
        witnesses=[pd.Person(name="Budi Saksi", nik=WITNESS_NIK)],
    )


def report_with_people(ledger: Client, **kwargs: object) -> str:
    return ledger.report(personal_data=personal(**kwargs)).incident  # type: ignore[arg-type]


def read(
    ledger: Client,
    agency: str,
    name: str,
    purpose: str = "verify the report",
    subjects: tuple[str, ...] = (),
) -> Any:
    return ledger.stub.ReadPersonalData(
        api.ReadPersonalDataRequest(
            request_id=secrets.token_hex(8), name=name, purpose=purpose, subjects=subjects
        ),
        metadata=ledger.md(agency),
    )


def accesses(ledger: Client, agency: str, name: str) -> api.ListPersonalDataAccessesResponse:
    return ledger.stub.ListPersonalDataAccesses(
        api.ListPersonalDataAccessesRequest(name=name), metadata=ledger.md(agency)
    )


def erase(ledger: Client, agency: str, name: str) -> api.ErasePersonalDataResponse:
    return ledger.stub.ErasePersonalData(
        api.ErasePersonalDataRequest(
            request_id=secrets.token_hex(8),
            name=name,
            legal_basis="subject's request 17/2024",
            everyone=True,
        ),
        metadata=ledger.md(agency),
    )


def hold(ledger: Client, agency: str, name: str, *, lift: bool = False) -> None:
    if lift:
        ledger.stub.LiftLegalHold(
            api.LiftLegalHoldRequest(
                request_id=secrets.token_hex(8), name=name, reason="case closed"
            ),
            metadata=ledger.md(agency),
        )
    else:
        ledger.stub.PlaceLegalHold(
            api.PlaceLegalHoldRequest(
                request_id=secrets.token_hex(8), name=name, reason="Gakkumdu case 3/2024"
            ),
            metadata=ledger.md(agency),
        )


def find(ledger: Client, agency: str, **key: str) -> api.FindPersonalDataResponse:
    # The longest request id a command takes: the search derives one per incident from it.
    return ledger.stub.FindPersonalData(
        api.FindPersonalDataRequest(
            request_id=secrets.token_hex(64), purpose="subject access request 5/2024", **key
        ),
        metadata=ledger.md(agency),
    )


def test_a_reader_with_a_purpose_sees_the_data_and_the_read_is_recorded(ledger: Client) -> None:
    name = report_with_people(ledger)
    answer = read(ledger, "bawaslu", name)
    people = {s.role: s.person for s in answer.subjects}
    assert people[pb.DATA_SUBJECT_ROLE_REPORTER] == pd.Person(
        name=NAME, phone=PHONE, nik=NIK, address="Jl. Kenari 7"
    )
    assert people[pb.DATA_SUBJECT_ROLE_WITNESS].nik == WITNESS_NIK
    record = accesses(ledger, "desk_pilkada", name)
    assert [(a.actor.agency, a.purpose, a.event_id) for a in record.accesses] == [
        ("bawaslu", "verify the report", answer.result.event_id)
    ]
    assert set(record.accesses[0].subjects) == {s.subject_id for s in answer.subjects}
    assert all(not s.HasField("person") for s in record.subjects)


def test_the_events_carry_ciphertext_only(ledger: Client) -> None:
    name = report_with_people(ledger)
    events = ledger.stub.ListIncidentEvents(
        api.ListIncidentEventsRequest(parent=name), metadata=ledger.md("desk_pilkada")
    ).events
    payload = events[0].payload_json
    assert "ciphertext" in payload
    for plain in (NIK, PHONE, NAME, WITNESS_NIK, "Kenari"):
        assert plain not in payload


def test_a_data_key_moved_to_another_subject_in_the_store_is_data_loss(
    either_store: dict[str, str], tmp_path: Path
) -> None:
    """An intruder swaps the wrapped keys of a report's two people in the key table: each is
    bound to its subject, so neither opens, and the read answers DATA_LOSS naming the
    subject (PERSONAL_DATA_UNREADABLE), as for a missing key, never INTERNAL."""
    with running_ledger(settings_for(tmp_path, either_store)) as client:
        name = report_with_people(client)
        incident = name.removeprefix("incidents/")
        db = open_database(either_store)
        try:
            with db.transaction() as cur:
                cur.execute(
                    db.q(
                        "SELECT subject_id, wrapped_key FROM personal_data_keys "
                        "WHERE incident_id = ? ORDER BY subject_id"
                    ),
                    (incident,),
                )
                (first, first_key), (second, second_key) = cur.fetchall()
                update = db.q("UPDATE personal_data_keys SET wrapped_key = ? WHERE subject_id = ?")
                cur.execute(update, (second_key, first))
                cur.execute(update, (first_key, second))
        finally:
            db.close()
        with pytest.raises(grpc.RpcError) as caught:
            read(client, "bawaslu", name)
        assert caught.value.code() is grpc.StatusCode.DATA_LOSS, caught.value.details()
        assert reason(caught.value) == "PERSONAL_DATA_UNREADABLE"
        info = error_info(caught.value)  # type: ignore[arg-type]
        assert info is not None and info.metadata["subject"] in {str(first), str(second)}
        # Nothing was disclosed, and no read is recorded (it was, each try adding another,
        # the record saying that everyone of the incident had been read).
        assert accesses(client, "desk_pilkada", name).accesses == []


def test_one_person_s_lost_key_leaves_the_others_readable_by_name(
    either_store: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The witness's key row deleted in the store: a read of everyone is DATA_LOSS, and the
    reporter's data, which nothing changed, is still read by naming them (the read records
    the reporter alone), through the API and ledgerctl, whose refusal says how."""
    with running_ledger(settings_for(tmp_path, either_store)) as client:
        name = report_with_people(client)
        incident = client.stub.GetIncident(
            api.GetIncidentRequest(name=name), metadata=client.md("bawaslu")
        ).incident
        roles = {s.role: s.subject_id for s in incident.data_subjects}
        reporter, witness = (
            roles[pb.DATA_SUBJECT_ROLE_REPORTER],
            roles[pb.DATA_SUBJECT_ROLE_WITNESS],
        )
        db = open_database(either_store)
        try:
            with db.transaction() as cur:
                cur.execute(db.q("DELETE FROM personal_data_keys WHERE subject_id = ?"), (witness,))
        finally:
            db.close()
        with pytest.raises(grpc.RpcError) as caught:
            read(client, "bawaslu", name)
        assert caught.value.code() is grpc.StatusCode.DATA_LOSS
        assert error_info(caught.value).metadata["subject"] == witness  # type: ignore[arg-type,union-attr]
        answer = read(client, "bawaslu", name, subjects=(reporter,))
        shown = {s.subject_id: s for s in answer.subjects}
        assert shown[reporter].person.nik == NIK
        assert not shown[witness].HasField("person")
        assert [list(a.subjects) for a in accesses(client, "desk_pilkada", name).accesses] == [
            [reporter]
        ]
        with pytest.raises(grpc.RpcError) as unknown:
            read(client, "bawaslu", name, subjects=(reporter, str(uuid.uuid4())))
        assert unknown.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert field(unknown.value) == "subjects[1]"
        ctl = Ctl(client, capsys)
        code, _out, err = ctl.run("bawaslu", "pii", "read", name, "-p", "verify the report")
        assert code == 7 and "--subject" in err and witness[:8] in err, (code, err)
        out = ctl.ok(
            "bawaslu", "pii", "read", name, "-p", "verify the report", "--subject", "pelapor"
        )
        assert NAME in out and "not read" in out, out
        assert len(accesses(client, "desk_pilkada", name).accesses) == 2


def test_an_agency_without_the_right_is_denied_and_nothing_is_recorded(ledger: Client) -> None:
    name = report_with_people(ledger)
    version = ledger.stub.GetIncident(
        api.GetIncidentRequest(name=name), metadata=ledger.md("kpu")
    ).incident.version
    with pytest.raises(grpc.RpcError) as denied:
        read(ledger, "kpu", name)
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason(denied.value) == "PERSONAL_DATA_NOT_PERMITTED"
    for plain in (NIK, PHONE, NAME):
        assert plain not in (denied.value.details() or "")
    with pytest.raises(grpc.RpcError) as searching:
        find(ledger, "kpu", nik=NIK)
    assert searching.value.code() is grpc.StatusCode.PERMISSION_DENIED
    after = ledger.stub.GetIncident(api.GetIncidentRequest(name=name), metadata=ledger.md("kpu"))
    assert after.incident.version == version
    assert not accesses(ledger, "desk_pilkada", name).accesses


def test_a_reading_needs_a_purpose(ledger: Client) -> None:
    name = report_with_people(ledger)
    with pytest.raises(grpc.RpcError) as refused:
        read(ledger, "bawaslu", name, purpose="")
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_an_anonymous_reporter_is_known_to_the_reporting_agency_only(ledger: Client) -> None:
    name = report_with_people(ledger, anonymous=True)
    others = read(ledger, "bawaslu", name)
    # Named, as GetIncident names them, without their data (left out, the answer read as
    # if the report named the witness alone).
    assert [(s.role, s.anonymous, s.HasField("person")) for s in others.subjects] == [
        (pb.DATA_SUBJECT_ROLE_REPORTER, True, False),
        (pb.DATA_SUBJECT_ROLE_WITNESS, False, True),
    ]
    assert others.subjects[0].state == pb.DATA_SUBJECT_STATE_PRESENT
    own = read(ledger, "kesbangpol", name)
    reporter = next(s for s in own.subjects if s.role == pb.DATA_SUBJECT_ROLE_REPORTER)
    assert reporter.person.nik == NIK
    assert reporter.anonymous


def test_bad_personal_data_is_refused_without_echoing_it(ledger: Client) -> None:
    for person, named in (
        (pd.Person(name="A", nik="12345"), "personal_data.reporter.nik"),
        (pd.Person(name="A", phone="12"), "personal_data.reporter.phone"),
        (pd.Person(phone=PHONE), "personal_data.reporter.name"),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            ledger.report(personal_data=pd.PersonalData(reporter=person))
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert field(refused.value) == named
        assert "12345" not in (refused.value.details() or "")


def test_a_person_of_the_report_in_its_title_is_refused_in_both_languages(
    ledger: Client,
) -> None:
    for title, description, named in (
        (f"Money handed out, says {NAME.upper()}", "", "title"),
        ("Money handed out", f"call back on {PHONE_LOCAL}", "description"),
    ):
        for language, words in (("en", "names a person of the report"), ("id", "menyebut")):
            request = api.ReportIncidentRequest(
                request_id=secrets.token_hex(8),
                title=title,
                description=description,
                category="money_politics",
                location=pb.Location(kecamatan="kota_mukomuko"),
                personal_data=personal(),
            )
            metadata = (*ledger.md("kesbangpol"), ("accept-language", language))
            with pytest.raises(grpc.RpcError) as refused:
                ledger.stub.ReportIncident(request, metadata=metadata)
            error = refused.value
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert reason(error) == "PERSONAL_DATA_IN_TEXT" and field(error) == named
            text = localized_message(error)  # type: ignore[arg-type]
            assert text is not None and text.locale == language and words in text.message
            assert named in text.message
            for value in (NAME, "6690", NIK):  # neither message echoes what matched
                assert value.casefold() not in (error.details() or "").casefold()
                assert value.casefold() not in text.message.casefold()
    # The same texts without personal data are the reporter's own business.
    ledger.report(title=f"Money handed out, says {NAME}")


def test_subject_access_by_phone_or_nik_finds_only_that_person(ledger: Client) -> None:
    first = report_with_people(ledger)
    second = report_with_people(ledger)
    by_phone = find(ledger, "desk_pilkada", phone=PHONE)
    assert {s.incident for s in by_phone.subjects} == {first, second}
    assert {s.person.nik for s in by_phone.subjects} == {NIK}
    by_nik = find(ledger, "desk_pilkada", nik=WITNESS_NIK)
    assert {s.role for s in by_nik.subjects} == {pb.DATA_SUBJECT_ROLE_WITNESS}
    # Each incident's read is recorded, and the trail comes with the answer.
    assert all(s.accesses for s in by_nik.subjects)
    assert len(accesses(ledger, "desk_pilkada", first).accesses) == 2


def search(ledger: Client, agency: str, request_id: str, **key: str) -> Any:
    return ledger.stub.FindPersonalData(
        api.FindPersonalDataRequest(
            request_id=request_id, purpose="subject access request 5/2024", **key
        ),
        metadata=ledger.md(agency),
    )


def test_a_search_never_discloses_an_anonymous_reporter_to_another_agency(
    ledger: Client,
) -> None:
    """A witness reached on the anonymous reporter's phone (one household's number): a
    search by that phone finds both people, and answers with the witness alone, as the
    read it records names the witness alone. The same for a search whose request id found
    the witness before (answered from that read): the reporter is never in its answer."""
    name = ledger.report(
        personal_data=pd.PersonalData(
            reporter=pd.Person(name=NAME, phone=PHONE_LOCAL, nik=NIK),
            reporter_anonymous=True,
            witnesses=[pd.Person(name="Budi Saksi", phone=PHONE_LOCAL, nik=WITNESS_NIK)],
        )
    ).incident
    request_id = secrets.token_hex(8)
    found = search(ledger, "bawaslu", request_id, phone=PHONE)
    assert [(s.incident, s.role) for s in found.subjects] == [(name, pb.DATA_SUBJECT_ROLE_WITNESS)]
    assert NIK not in str(found) and NAME not in str(found)
    witness = found.subjects[0].subject_id
    reads = accesses(ledger, "desk_pilkada", name).accesses
    assert [list(a.subjects) for a in reads] == [[witness]]
    by_nik = search(ledger, "bawaslu", request_id, nik=NIK)
    assert not by_nik.subjects
    assert [list(a.subjects) for a in accesses(ledger, "desk_pilkada", name).accesses] == [
        [witness]
    ]


def test_a_request_id_used_again_for_another_search_discloses_nothing_unrecorded(
    ledger: Client,
) -> None:
    """A search's read is recorded per incident under a request id derived from the
    caller's: sent again, it is answered from that read. Another person searched with the
    same request id is another request (REQUEST_ID_REUSED): their data is never disclosed
    without a read of it recorded."""
    name = report_with_people(ledger)
    request_id = secrets.token_hex(8)
    first = search(ledger, "bawaslu", request_id, nik=NIK)
    assert [s.person.nik for s in first.subjects] == [NIK]
    assert search(ledger, "bawaslu", request_id, nik=NIK) == first  # a retry: the same answer
    with pytest.raises(grpc.RpcError) as reused:
        search(ledger, "bawaslu", request_id, nik=WITNESS_NIK)
    assert reused.value.code() is grpc.StatusCode.ALREADY_EXISTS
    assert reason(reused.value) == "REQUEST_ID_REUSED"
    assert WITNESS_NIK not in (reused.value.details() or "")
    reads = accesses(ledger, "desk_pilkada", name).accesses
    assert [list(a.subjects) for a in reads] == [[first.subjects[0].subject_id]]


def test_erasure_destroys_the_data_and_the_index(ledger: Client) -> None:
    name = report_with_people(ledger)
    erase(ledger, "desk_pilkada", name)
    after = read_states(ledger, name)
    assert after == {pb.DATA_SUBJECT_STATE_ERASED}
    assert not find(ledger, "desk_pilkada", nik=NIK).subjects
    with pytest.raises(grpc.RpcError) as again:
        erase(ledger, "desk_pilkada", name)
    assert again.value.code() is grpc.StatusCode.FAILED_PRECONDITION


def test_an_erasure_must_say_whose_data_it_erases(ledger: Client) -> None:
    """An empty list of subjects erased everyone the incident names: a slip of a caller's
    code, and no erasure can be undone. Now it is INVALID_ARGUMENT unless ``everyone`` is
    set, as are subjects and ``everyone`` together; nothing is erased or recorded."""
    name = report_with_people(ledger)
    subjects = [s.subject_id for s in accesses(ledger, "desk_pilkada", name).subjects]
    assert len(subjects) == 2

    def version() -> int:
        request = api.GetIncidentRequest(name=name)
        return ledger.stub.GetIncident(request, metadata=ledger.md("kpu")).incident.version

    before = version()
    for shape in ({}, {"subjects": subjects[:1], "everyone": True}):
        with pytest.raises(grpc.RpcError) as refused:
            ledger.stub.ErasePersonalData(
                api.ErasePersonalDataRequest(
                    request_id=secrets.token_hex(8),
                    name=name,
                    legal_basis="subject's request 17/2024",
                    **shape,  # type: ignore[arg-type]
                ),
                metadata=ledger.md("desk_pilkada"),
            )
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, shape
        assert "subjects" in (refused.value.details() or ""), refused.value.details()
    assert read_states(ledger, name) == {pb.DATA_SUBJECT_STATE_PRESENT}
    assert version() == before

    ledger.stub.ErasePersonalData(
        api.ErasePersonalDataRequest(
            request_id=secrets.token_hex(8),
            name=name,
            legal_basis="subject's request 17/2024",
            subjects=subjects[:1],
        ),
        metadata=ledger.md("desk_pilkada"),
    )
    states = {s.subject_id: s.state for s in accesses(ledger, "desk_pilkada", name).subjects}
    assert states == {
        subjects[0]: pb.DATA_SUBJECT_STATE_ERASED,
        subjects[1]: pb.DATA_SUBJECT_STATE_PRESENT,
    }


def read_states(ledger: Client, name: str) -> set[int]:
    record = accesses(ledger, "desk_pilkada", name)
    return {s.state for s in record.subjects}


def test_a_legal_hold_blocks_erasure_until_lifted(ledger: Client) -> None:
    name = report_with_people(ledger)
    with pytest.raises(grpc.RpcError) as not_theirs:
        hold(ledger, "kpu", name)
    assert not_theirs.value.code() is grpc.StatusCode.PERMISSION_DENIED
    hold(ledger, "kejari", name)
    with pytest.raises(grpc.RpcError) as held:
        erase(ledger, "desk_pilkada", name)
    assert held.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert reason(held.value) == "LEGAL_HOLD"
    assert read_states(ledger, name) == {pb.DATA_SUBJECT_STATE_PRESENT}
    assert read(ledger, "bawaslu", name).subjects[0].person.name == NAME
    assert [h.agency for h in accesses(ledger, "desk_pilkada", name).legal_holds] == ["kejari"]
    hold(ledger, "kejari", name, lift=True)
    erase(ledger, "desk_pilkada", name)
    assert read_states(ledger, name) == {pb.DATA_SUBJECT_STATE_ERASED}


def test_an_auditor_erases_and_holds_nothing(tmp_path: Path) -> None:
    """Erasures and legal holds are commands: an auditor gets READ_ONLY_ROLE, as from every
    command; nothing is recorded. (A reference file that lists an auditor among the erasers
    or the legal-hold agencies is refused when it is loaded:
    tests/unit/test_reference_personal_data.py.)"""
    reference = REFERENCE_FILE
    with (
        store_environment("sqlite", tmp_path) as env,
        running_ledger(settings_for(tmp_path, env, reference_file=reference)) as client,
    ):
        name = report_with_people(client)

        def version() -> int:
            request = api.GetIncidentRequest(name=name)
            return client.stub.GetIncident(request, metadata=client.md("kpu")).incident.version

        def refused_to_the_auditor(attempt: Callable[[], object]) -> None:
            before = version()
            with pytest.raises(grpc.RpcError) as refused:
                attempt()
            assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert reason(refused.value) == "READ_ONLY_ROLE"
            assert version() == before

        refused_to_the_auditor(lambda: erase(client, "inspektorat", name))
        refused_to_the_auditor(lambda: hold(client, "inspektorat", name))
        hold(client, "kejari", name)  # a hold in force: lifting one is a command too
        refused_to_the_auditor(lambda: hold(client, "inspektorat", name, lift=True))
        assert read_states(client, name) == {pb.DATA_SUBJECT_STATE_PRESENT}
        holds = accesses(client, "desk_pilkada", name).legal_holds
        assert [h.agency for h in holds] == ["kejari"]


def test_a_batch_report_takes_personal_data(ledger: Client) -> None:
    report = api.DeviceReport(
        device_report_id="0b6c5a8e-0d8e-4a51-9a8c-1a2b3c4d5e6f",
        device_id="hp-01",
        title="Envelopes handed out",
        category="money_politics",
        location=pb.Location(kecamatan="ipuh"),
        personal_data=personal(),
    )
    report.device_record_time.GetCurrentTime()
    answer = ledger.stub.IngestReports(
        api.IngestReportsRequest(reports=[report]), metadata=ledger.md("kesbangpol")
    )
    (result,) = answer.results
    assert result.outcome == api.INGEST_OUTCOME_CREATED
    assert {s.person.name for s in read(ledger, "bawaslu", result.result.incident).subjects} == {
        NAME,
        "Budi Saksi",
    }
    # Sent again: the same report, recorded once (the fingerprint holds a keyed digest).
    again = ledger.stub.IngestReports(
        api.IngestReportsRequest(reports=[report]), metadata=ledger.md("kesbangpol")
    )
    assert again.results[0].outcome == api.INGEST_OUTCOME_DUPLICATE
    # A report of the batch writing its witness's NIK into its description is refused alone.
    leaking = api.DeviceReport()
    leaking.CopyFrom(report)
    leaking.device_report_id = "5d0f7a9e-2b1c-4e8f-9a0b-7c6d5e4f3a2b"
    leaking.description = f"witness NIK {WITNESS_NIK[:8]} {WITNESS_NIK[8:]}"
    batch = ledger.stub.IngestReports(
        api.IngestReportsRequest(reports=[leaking]), metadata=ledger.md("kesbangpol")
    )
    (refused,) = batch.results
    assert refused.outcome == api.INGEST_OUTCOME_INVALID
    assert "description" in refused.error.message and WITNESS_NIK[:8] not in refused.error.message


def test_a_batch_seals_each_report_s_people_for_its_own_incident(ledger: Client) -> None:
    def device_report(n: int, person: pd.Person) -> api.DeviceReport:
        report = api.DeviceReport(
            device_report_id=f"0b6c5a8e-0d8e-4a51-9a8c-00000000000{n}",
            device_id="hp-02",
            title=f"Laporan {n}",
            category="money_politics",
            location=pb.Location(kecamatan="ipuh"),
            personal_data=pd.PersonalData(reporter=person),
        )
        report.device_record_time.GetCurrentTime()
        return report

    people = [
        pd.Person(name="Satu", nik="1706014107900001"),
        pd.Person(name="Dua", nik="12"),  # refused: the others are recorded
        pd.Person(name="Tiga", phone="081211112222"),
    ]
    answer = ledger.stub.IngestReports(
        api.IngestReportsRequest(reports=[device_report(n, p) for n, p in enumerate(people)]),
        metadata=ledger.md("kesbangpol"),
    )
    outcomes = [r.outcome for r in answer.results]
    assert outcomes == [
        api.INGEST_OUTCOME_CREATED,
        api.INGEST_OUTCOME_INVALID,
        api.INGEST_OUTCOME_CREATED,
    ]
    for result, expected in ((answer.results[0], "Satu"), (answer.results[2], "Tiga")):
        (subject,) = read(ledger, "bawaslu", result.result.incident).subjects
        assert subject.person.name == expected


def test_key_rotation_and_a_wrong_key_across_restarts(tmp_path: Path) -> None:
    """Data written under the old key-encryption key reads after rotation; a key that is
    not the one the table was written with stops the start, naming it."""
    old = "kek-old:" + base64.b64encode(secrets.token_bytes(32)).decode()
    new = "kek-new:" + base64.b64encode(secrets.token_bytes(32)).decode()
    with store_environment("sqlite", tmp_path) as env:

        def settings(keys: str) -> LedgerSettings:
            return settings_for(tmp_path, env, personal_data_keys=keys)

        with running_ledger(settings(old)) as first:
            name = report_with_people(first)
        with running_ledger(settings(f"{new},{old}")) as rotated:  # moved under the new key
            assert read(rotated, "bawaslu", name).subjects[0].person.name == NAME
        with running_ledger(settings(new)) as only_new:
            assert read(only_new, "bawaslu", name).subjects[0].person.name == NAME
        with pytest.raises(ConfigError, match="kek-new"), running_ledger(settings(old)):
            pass
        wrong = "kek-new:" + base64.b64encode(secrets.token_bytes(32)).decode()
        with pytest.raises(ConfigError, match="does not open"), running_ledger(settings(wrong)):
            pass

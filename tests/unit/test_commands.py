"""Commands as objects: the idempotency fingerprint covers every field of every command
and keeps, for the commands that existed before, the bytes stored in their records;
the gRPC adapter's table covers every command."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from incidentledger.v1 import ledger_service_pb2 as api
from services.common.errors import AlreadyExists, InvalidArgument
from services.ledger import wire
from services.ledger.api.servicer import LedgerServicer
from services.ledger.application import Ledger
from services.ledger.domain.commands import (
    MAX_TEXT,
    AcceptHandover,
    AddSupportingAgency,
    ApproveClosure,
    AssessSeverity,
    AssignLeadAgency,
    Command,
    EscalateIncident,
    IncidentCommand,
    LogAction,
    MergeIncident,
    ProposeHandover,
    RecordCorrection,
    RecordDecision,
    RejectIncident,
    ReopenIncident,
    ReportIncident,
    RequestClosure,
    ResolveIncident,
    VerifyIncident,
    command_name,
    command_types,
    text,
)
from services.ledger.domain.incident import Envelope, Incident, RejectionReason
from services.ledger.domain.personal import Person, PersonalData
from services.ledger.domain.requests import RequestRecord, request_fingerprint, request_key
from tests.unit.incident_builders import COORDINATOR, REF, REPORTER, envelope_for

# ------------------------------------------------ the fingerprint as it was computed


def former_fingerprint(command: str, params: dict[str, Any], occurred_at: datetime | None) -> str:
    """The former application's fingerprint, written out: SHA-256 (hex) of
    ``canonical_json({"command": command, **params, "occurred_at": occurred_at})``, that is
    JSON with sorted keys, no spaces, UTF-8, times in UTC to the microsecond, UUIDs as text."""

    def default(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.astimezone(UTC).isoformat(timespec="microseconds")
        if isinstance(value, UUID):
            return str(value)
        raise TypeError(type(value).__name__)

    document = {"command": command, **params, "occurred_at": occurred_at}
    encoded = json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=default
    )
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def _on_incident(c: IncidentCommand, **params: Any) -> dict[str, Any]:
    # The former ``_on_incident``: the incident and expected version, then the command's own.
    return {"incident": str(c.incident), "expected_version": c.expected_version, **params}


# Each command's parameters as the former application listed them, by hand, per command.
FORMER_PARAMS: dict[type[Command], Callable[[Any], dict[str, Any]]] = {
    ReportIncident: lambda c: {
        "title": c.title,
        "description": c.description,
        "category": c.category,
        "severity": c.severity,
        "location": c.location,
    },
    VerifyIncident: lambda c: _on_incident(c, comment=c.comment),
    RejectIncident: lambda c: _on_incident(c, reason=c.reason.value, comment=c.comment),
    # A merge went straight to _execute: neither the incident nor its expected version.
    MergeIncident: lambda c: {"target": str(c.target), "comment": c.comment},
    AssessSeverity: lambda c: _on_incident(c, severity=c.severity, comment=c.comment),
    AssignLeadAgency: lambda c: _on_incident(c, agency=c.agency, comment=c.comment),
    AddSupportingAgency: lambda c: _on_incident(c, agency=c.agency, comment=c.comment),
    ProposeHandover: lambda c: _on_incident(c, to_agency=c.to_agency, reason=c.reason),
    AcceptHandover: lambda c: _on_incident(c, comment=c.comment),
    RecordDecision: lambda c: _on_incident(
        c,
        deciding_agencies=list(c.deciding_agencies),
        forum=c.forum,
        summary=c.summary,
        rationale=c.rationale,
        scope=c.scope,
        valid_from=c.valid_from,
        valid_until=c.valid_until,
    ),
    LogAction: lambda c: _on_incident(c, action=c.action, location=c.location),
    EscalateIncident: lambda c: _on_incident(c, reason=c.reason),
    ResolveIncident: lambda c: _on_incident(c, resolution=c.resolution),
    RequestClosure: lambda c: _on_incident(c, comment=c.comment),
    ApproveClosure: lambda c: _on_incident(c, comment=c.comment),
    ReopenIncident: lambda c: _on_incident(c, reason=c.reason),
    RecordCorrection: lambda c: _on_incident(
        c,
        event_id=str(c.event_id),
        field=c.field,
        old_value=c.old_value,
        new_value=c.new_value,
        reason=c.reason,
    ),
}


def former(command: Command, occurred_at: datetime | None) -> str:
    params = FORMER_PARAMS[type(command)](command)
    return former_fingerprint(command_name(command), params, occurred_at)


INCIDENT = UUID("6f1c1a52-3d0e-4c8e-9a57-0d1f6c2b9e01")
TARGET = UUID("0b7e2f34-95a1-4f0c-b8d2-7c3e5a9f1d22")
EVENT = UUID("c4d9e8f1-2a3b-4c5d-8e7f-9a0b1c2d3e44")
AT = datetime(2024, 11, 27, 7, 30, 15, 123456, tzinfo=UTC)
DAY = datetime(2024, 11, 27, 8, tzinfo=UTC)
PLACE = {
    "kecamatan": "ipuh",
    "desa": "Medan Jaya",
    "tps": "TPS 3",
    "latitude": -2.5,
    "longitude": 101.25,
}

# Checked commands and the fingerprints the application computed for them before
# commands were objects (read from its canonical JSON while it ran these commands).
RECORDED: list[tuple[Command, datetime | None, str]] = [
    (
        ReportIncident("Pembelian suara — TPS 3", "amplop ✉", "money_politics", "medium", PLACE),
        AT,
        "7ac6b6d2c322992dde8dd15b09055b0b4427259bbf49ccb5fbdff36ade97ef7f",
    ),
    (
        VerifyIncident(INCIDENT, 1, "ok"),
        None,
        "7a75ef62bcdc4e703ce66cfc329e6d732f8a517c016a0a7d8d4d575f5e86e6f4",
    ),
    (
        RejectIncident(INCIDENT, 2, RejectionReason.OUT_OF_SCOPE, "not ours"),
        None,
        "beb4959e9b62bd194b686d31f839afaeed836377376fe5fccc4cfcc5437b5aa6",
    ),
    (
        MergeIncident(INCIDENT, 0, TARGET, "duplicate"),
        None,
        "f4e23fc188d37c4b34d714f224da55b3bf7f8e988c0f337d747a0e3178294924",
    ),
    (
        AssessSeverity(INCIDENT, 3, "high", "bigger"),
        None,
        "c5f32db4c9e4fd7fb3b7c2f13be003a1bfb50342a8e2bbbd2bfcf4be0b653784",
    ),
    (
        AssignLeadAgency(INCIDENT, 0, "polres", "police"),
        None,
        "6184e6095bcc4c962c8672e9ee3938b3193de6911861bb5167ca1aa2eeeb9bd2",
    ),
    (
        AddSupportingAgency(INCIDENT, 0, "kodim", ""),
        None,
        "1fd580204921169bb36975f4e853672c02b128053081ab62e2740b6bd2dcc712",
    ),
    (
        ProposeHandover(INCIDENT, 4, "kodim", "military takes over"),
        None,
        "83629fb46c92861b48ea3d3979f110dc0d5333618360383a6aa2fa4efa838fe6",
    ),
    (
        AcceptHandover(INCIDENT, 5, "taken"),
        None,
        "c59f6dace953e1c46ea62d8fcda6fc269c392983d8688ce5c1b33ea3e1eebbd3",
    ),
    (
        RecordDecision(
            INCIDENT, 6, ("polres", "kodim"), "Rapat", "s", "r", None, DAY, DAY + timedelta(days=1)
        ),
        AT,
        "45aa4aec87c1b8414566ece145d87b66c40310ba3c37999fff66b16231c962a9",
    ),
    (
        RecordDecision(
            INCIDENT,
            0,
            ("polres",),
            "F",
            "s",
            "r",
            {"kecamatan": "ipuh", "desa": "", "tps": ""},
            DAY,
            DAY + timedelta(days=1, microseconds=1),
        ),
        None,
        "0ef7b7dbee60b71f855e6679da8ff0183a3710f3babfa46dedec9d9970cfa6cd",
    ),
    (
        LogAction(INCIDENT, 7, "patrol sent", None),
        None,
        "c692b84e90d2fbcc8b5f57a6ebd1812fd4c0be745cd5247ac089cea3b4829a1b",
    ),
    (
        LogAction(
            INCIDENT, 0, "patrol", {"kecamatan": "ipuh", "desa": "", "tps": "", "latitude": 1e-05}
        ),
        None,
        "0cf5fcef677120be66de28f654aab7cbd3494218b08b2be9ae458d57a29d5b6d",
    ),
    (
        EscalateIncident(INCIDENT, 0, "worse"),
        None,
        "e6e3689e3c254b32cf956da1682194f4095382129b294f08a75b16d7058e3c7c",
    ),
    (
        ResolveIncident(INCIDENT, 8, "done"),
        None,
        "a92371b4097660a25ce7615f2bc5be5d76bf82a12ef5725d6d683c6ffce86330",
    ),
    (
        RequestClosure(INCIDENT, 0, ""),
        None,
        "3ceb2c8ac04a9943e6ae2996e2ceaaa420bdeb2a1b3484e5123f0a52eab91ac1",
    ),
    (
        ApproveClosure(INCIDENT, 9, "ok"),
        None,
        "7f895f029a45e31ea9f84f2df5b802f3ec973cecfb1a2f7cb714afd7a198159a",
    ),
    (
        ReopenIncident(INCIDENT, 10, "again"),
        None,
        "2567c035e13e8ad1e702b519cf68789fdddf3f11e0bdcc9a5d7ade0c3cb620bf",
    ),
    (
        RecordCorrection(INCIDENT, 11, EVENT, "title", "a", "b", "typo"),
        None,
        "291cbe8fe0b1693440400b01a9a4bd2c0e695e7407fd1f213720ad3624a8d5b2",
    ),
]


@pytest.mark.parametrize(
    ("command", "occurred_at", "digest"),
    RECORDED,
    ids=[f"{command_name(c)}-{n}" for n, (c, _, _) in enumerate(RECORDED)],
)
def test_fingerprints_keep_the_bytes_recorded_before(
    command: Command, occurred_at: datetime | None, digest: str
) -> None:
    assert former(command, occurred_at) == digest
    assert request_fingerprint(command, occurred_at) == digest


def test_every_command_that_existed_before_has_its_former_formula() -> None:
    assert {command_name(c) for c in FORMER_PARAMS} == {command_name(c) for c, _, _ in RECORDED}
    assert set(FORMER_PARAMS) <= set(command_types())


# ------------------------------------------------------------ commands, generated

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
PLACES = st.fixed_dictionaries(
    {"kecamatan": TEXT, "desa": TEXT, "tps": TEXT},
    optional={
        "latitude": st.floats(-90, 90, allow_nan=False),
        "longitude": st.floats(-180, 180, allow_nan=False),
    },
)
BY_TYPE: dict[Any, st.SearchStrategy[Any]] = {
    str: TEXT,
    int: st.integers(0, 2**31 - 1),
    bool: st.booleans(),
    UUID: st.uuids(),
    datetime: st.datetimes(timezones=st.just(UTC)),
    RejectionReason: st.sampled_from(RejectionReason),
    tuple[str, ...]: st.lists(TEXT, max_size=4).map(tuple),
    dict[str, Any]: PLACES,
    dict[str, Any] | None: st.none() | PLACES,
    tuple[UUID, ...]: st.lists(st.uuids(), max_size=3).map(tuple),
    tuple[UUID, ...] | None: st.none() | st.lists(st.uuids(), max_size=3).map(tuple),
    # Personal data is fingerprinted by its keyed digest, which the application derives from
    # the data: here a plain hash of the name stands for it (other data, another digest).
    PersonalData | None: st.none()
    | TEXT.map(
        lambda name: PersonalData(
            reporter=Person(name=name), digest=hashlib.sha256(name.encode()).hexdigest()
        )
    ),
}


def field_values(command_type: type[Command]) -> dict[str, st.SearchStrategy[Any]]:
    hints = typing.get_type_hints(command_type)
    return {f.name: BY_TYPE[hints[f.name]] for f in dataclasses.fields(command_type)}


def commands_of(command_type: type[Command]) -> st.SearchStrategy[Command]:
    return st.builds(command_type, **field_values(command_type))


def former_commands_of(command_type: type[Command]) -> st.SearchStrategy[Command]:
    """Commands as they could be sent before a field was added to them: the fields added
    since (``OMITTED_WHEN_NONE``) unset."""
    values = field_values(command_type)
    values.update(dict.fromkeys(command_type.OMITTED_WHEN_NONE, st.none()))
    return st.builds(command_type, **values)


def fingerprinted(command_type: type[Command]) -> list[str]:
    return [
        f.name
        for f in dataclasses.fields(command_type)
        if f.name not in command_type.UNFINGERPRINTED
    ]


@st.composite
def changed_field(
    draw: st.DrawFn, command_types: tuple[type[Command], ...]
) -> tuple[Command, Command]:
    """A command, and the same with one fingerprinted field changed."""
    command_type = draw(st.sampled_from(command_types))
    command = draw(commands_of(command_type))
    name = draw(st.sampled_from(fingerprinted(command_type)))
    old = getattr(command, name)
    new = draw(field_values(command_type)[name].filter(lambda value: value != old))
    return command, dataclasses.replace(command, **{name: new})


OCCURRED = st.none() | st.datetimes(timezones=st.just(UTC))


@settings(max_examples=400, deadline=None)
@given(changed_field(command_types()), OCCURRED)
def test_changing_any_field_of_any_command_changes_its_fingerprint(
    pair: tuple[Command, Command], occurred_at: datetime | None
) -> None:
    before, after = pair
    assert request_fingerprint(before, occurred_at) != request_fingerprint(after, occurred_at)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(list(FORMER_PARAMS)).flatmap(former_commands_of), OCCURRED)
def test_fingerprints_are_the_former_formula_for_any_command_that_existed_before(
    command: Command, occurred_at: datetime | None
) -> None:
    # A field added to one of these commands would change its fingerprints: a retry of a
    # request recorded before would then be refused (REQUEST_ID_REUSED), not replayed.
    assert request_fingerprint(command, occurred_at) == former(command, occurred_at)


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(command_types()).flatmap(commands_of), OCCURRED, OCCURRED)
def test_the_stated_time_is_fingerprinted(
    command: Command, first: datetime | None, second: datetime | None
) -> None:
    if first != second:
        assert request_fingerprint(command, first) != request_fingerprint(command, second)


def test_only_a_merge_and_an_erasure_leave_fields_out_of_their_fingerprints() -> None:
    # An erasure's ``everyone`` is what its empty ``subjects`` says (the check requires
    # the one without the other): fingerprinted, it would change the fingerprints of
    # erasures recorded before it existed.
    left_out = {command_name(c): c.UNFINGERPRINTED for c in command_types() if c.UNFINGERPRINTED}
    assert left_out == {
        "MergeIncident": frozenset({"incident", "expected_version"}),
        "ErasePersonalData": frozenset({"everyone"}),
    }


def test_a_field_may_not_take_a_reserved_name() -> None:
    @dataclass(frozen=True)
    class Odd(Command):
        command: str

    with pytest.raises(TypeError, match="reserved"):
        request_fingerprint(Odd("x"), None)


# ----------------------------------------------------- a command added by a test


@dataclass(frozen=True)
class Acknowledge(IncidentCommand):
    """A command the ledger does not have: a dataclass and its rule, nothing else."""

    note: str = dataclasses.field(metadata=text(MAX_TEXT, required=True))
    urgent: bool

    def apply(self, envelope: Envelope, incident: Incident, *others: Incident) -> None:
        incident.verify(envelope, self.note)


@settings(max_examples=100, deadline=None)
@given(changed_field((Acknowledge,)), OCCURRED)
def test_a_new_command_is_fingerprinted_over_all_its_fields(
    pair: tuple[Command, Command], occurred_at: datetime | None
) -> None:
    before, after = pair
    assert request_fingerprint(before, occurred_at) != request_fingerprint(after, occurred_at)


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    app = Ledger(REF, env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    yield app
    app.close()


def _reported(ledger: Ledger) -> UUID:
    place = {"kecamatan": "ipuh", "desa": "Medan Jaya"}
    report = ReportIncident("Crowd", "", "money_politics", "high", place)
    return ledger.execute(envelope_for(REPORTER), report).incident_id


def test_a_new_command_runs_with_its_checks_and_idempotency(ledger: Ledger) -> None:
    incident = _reported(ledger)
    with pytest.raises(InvalidArgument) as caught:
        ledger.execute(envelope_for(COORDINATOR), Acknowledge(incident, 1, "", urgent=False))
    assert caught.value.field == "note"
    envelope = envelope_for(COORDINATOR, "ack-1")
    first = ledger.execute(envelope, Acknowledge(incident, 1, "seen", urgent=False))
    assert first.version == 2
    assert ledger.execute(envelope, Acknowledge(incident, 1, "seen", urgent=False)) == first
    with pytest.raises(AlreadyExists) as reused:
        ledger.execute(envelope, Acknowledge(incident, 1, "seen", urgent=True))
    assert reused.value.reason == "REQUEST_ID_REUSED"
    record: RequestRecord = ledger.load_aggregate(request_key(COORDINATOR, "ack-1"))
    assert (record.command, record.incident_version) == ("Acknowledge", 2)


def test_records_store_the_former_fingerprint(ledger: Ledger) -> None:
    incident = _reported(ledger)
    envelope = envelope_for(COORDINATOR, "verify-1", occurred_at=AT)
    ledger.execute(envelope, VerifyIncident(incident, 1, "checked"))
    record: RequestRecord = ledger.load_aggregate(request_key(COORDINATOR, "verify-1"))
    params = {"incident": str(incident), "expected_version": 1, "comment": "checked"}
    assert record.fingerprint == former_fingerprint("VerifyIncident", params, AT)
    # The default severity is settled before the fingerprint, as it was.
    report = ReportIncident("Crowd", "", "money_politics", "", {"kecamatan": "ipuh"})
    ledger.execute(envelope_for(REPORTER, "report-1"), report)
    stored: RequestRecord = ledger.load_aggregate(request_key(REPORTER, "report-1"))
    settled = dataclasses.replace(report, severity=REF.default_severity)
    assert stored.fingerprint == former(settled, None) != former(report, None)


def test_a_merge_s_request_id_on_another_duplicate_or_version_is_refused(ledger: Ledger) -> None:
    """A merge's fingerprint leaves out its incident and expected version (the bytes stored
    before); its record keeps the incident it merged, at the version its event took, and a
    retry must repeat those too."""
    duplicate, other, target = _reported(ledger), _reported(ledger), _reported(ledger)
    envelope = envelope_for(COORDINATOR, "merge-1")
    first = ledger.execute(envelope, MergeIncident(duplicate, 0, target, "same"))
    assert (first.incident_id, first.version) == (duplicate, 2)
    # The same merge replays, whether it stated the version it expected (1) or none (0).
    assert ledger.execute(envelope, MergeIncident(duplicate, 0, target, "same")) == first
    assert ledger.execute(envelope, MergeIncident(duplicate, 1, target, "same")) == first
    for changed in (
        MergeIncident(other, 0, target, "same"),
        MergeIncident(duplicate, 2, target, "same"),
    ):
        with pytest.raises(AlreadyExists) as reused:
            ledger.execute(envelope, changed)
        assert reused.value.reason == "REQUEST_ID_REUSED"
        assert reused.value.metadata["original_command"] == "MergeIncident"
    assert ledger.get_incident(other).version == 1  # not merged
    record: RequestRecord = ledger.load_aggregate(request_key(COORDINATOR, "merge-1"))
    merge = MergeIncident(duplicate, 0, target, "same")
    assert record.fingerprint == former(merge, None)  # the stored bytes are unchanged


# ------------------------------------------------------------ the gRPC adapter's table


def _request_for(command_type: type[Command]) -> Any:
    """A request message of the command that converts."""
    message = getattr(api, f"{command_name(command_type)}Request")()
    descriptor = message.DESCRIPTOR.fields_by_name
    for name in ("name", "target"):
        if name in descriptor:
            setattr(message, name, f"incidents/{uuid4()}")
    if "corrected_event_id" in descriptor:
        message.corrected_event_id = str(uuid4())
    for name in ("valid_from", "valid_until"):
        if name in descriptor:
            getattr(message, name).FromDatetime(DAY)
    if "location" in descriptor:
        message.location.kecamatan = "ipuh"
    if "rejection_reason" in descriptor:
        message.rejection_reason = 1
    if "subjects" in descriptor:
        message.subjects.append(str(uuid4()))
    return message


def test_the_table_converts_each_command_request_to_its_command() -> None:
    assert set(wire.COMMANDS) == {
        getattr(api, f"{command_name(c)}Request") for c in command_types()
    }
    for command_type in command_types():
        assert type(wire.command_from_proto(_request_for(command_type))) is command_type


def test_every_rpc_answering_a_command_result_goes_through_the_table() -> None:
    service = api.DESCRIPTOR.services_by_name["LedgerService"]
    answering = {
        method.name
        for method in service.methods
        if "result" in method.output_type.fields_by_name
        and method.output_type.fields_by_name["result"].message_type is api.CommandResult.DESCRIPTOR
    }
    assert answering == {command_name(c) for c in command_types()}
    for name in answering:
        assert name in vars(LedgerServicer)

"""Fuzzing the ledger's gRPC API with random, odd and malformed requests.

Requests are generated from the protobuf descriptors of every LedgerService,
SituationService and AuditService method: any field set or not, integers at and
beyond their edges, out-of-range enum values, odd, empty, huge and control-character
strings, bad and real resource names, invalid timestamps; and raw bodies that are
not protobuf at all or are mutilated encodings. Each call must end with a status
the API documents for it (never INTERNAL or UNKNOWN), an error must carry an
ErrorInfo, a refused call must record nothing, and the server must still answer
its health check. After the run the ledger must still verify and its projections
must have caught up.

The run is small by default (for CI); ``TEST_FUZZ_EXAMPLES`` sets the number of
examples per test and store, for example ``TEST_FUZZ_EXAMPLES=5000`` for a long run.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from incidentledger.v1 import audit_service_pb2 as audit
from incidentledger.v1 import audit_service_pb2_grpc as audit_grpc
from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import situation_service_pb2
from services.common.grpc_errors import error_info
from services.ledger.domain.incident import Incident, Status
from tests.support import Client, running_ledger, settings_for, store_environment
from tests.unit.incident_builders import incident_in

EXAMPLES = int(os.environ.get("TEST_FUZZ_EXAMPLES", "120"))
CALL_TIMEOUT = 30.0
MAX_DEPTH = 3
Code = grpc.StatusCode

# --------------------------------------------------------------------------- the RPCs


@dataclass(frozen=True)
class Rpc:
    path: str
    request: Descriptor
    response: type[Message]
    streaming: bool
    allowed: frozenset[grpc.StatusCode]

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


# Every call may be refused for its credentials, its limits or a malformed request.
ANY_CALL = frozenset(
    {
        Code.OK,
        Code.UNAUTHENTICATED,
        Code.RESOURCE_EXHAUSTED,
        Code.INVALID_ARGUMENT,
        Code.PERMISSION_DENIED,
    }
)
# Commands: a missing incident, a forbidden transition, a stale version, a reused id.
COMMAND = ANY_CALL | {Code.NOT_FOUND, Code.FAILED_PRECONDITION, Code.ABORTED, Code.ALREADY_EXISTS}
# Queries: a missing incident, a position never recorded (FAILED_PRECONDITION) or not
# yet applied by the projections (UNAVAILABLE).
QUERY = ANY_CALL | {Code.NOT_FOUND, Code.FAILED_PRECONDITION, Code.UNAVAILABLE}


def rpcs() -> list[Rpc]:
    found = []
    for module in (api, situation_service_pb2, audit):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                is_command = "request_id" in method.input_type.fields_by_name
                found.append(
                    Rpc(
                        path=f"/{service.full_name}/{method.name}",
                        request=method.input_type,
                        response=GetMessageClass(method.output_type),
                        streaming=method.server_streaming,
                        allowed=COMMAND if is_command else QUERY,
                    )
                )
    return found


RPCS = rpcs()


def test_every_service_is_fuzzed() -> None:
    services = {rpc.path.split("/")[1] for rpc in RPCS}
    assert services == {
        "incidentledger.v1.LedgerService",
        "incidentledger.v1.SituationService",
        "incidentledger.v1.AuditService",
    }
    names = {rpc.name for rpc in RPCS}
    assert {"ReportIncident", "RecordCorrection", "ListIncidents", "StreamEvents"} <= names


# --------------------------------------------------------------------------- the target


@dataclass(frozen=True)
class Pool:
    """Values worth trying for a field: ``good`` ones reach far, ``bad`` ones nearly pass."""

    good: list[str]
    bad: list[str]


@dataclass
class Target:
    """A running ledger with some history, and the values worth trying on it."""

    client: Client
    pools: dict[str, Pool]
    strategies: dict[str, st.SearchStrategy[Message]] = dataclasses.field(default_factory=dict)
    seen: Counter[tuple[str, str]] = dataclasses.field(default_factory=Counter)  # (status, reason)

    def position(self) -> int:
        return self.client.server.ledger.recorder.max_notification_id() or 0

    def requests(self, rpc: Rpc) -> st.SearchStrategy[Message]:
        if rpc.path not in self.strategies:
            self.strategies[rpc.path] = requests(rpc.request, self.pools)
        return self.strategies[rpc.path]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
    tmp_path = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    with (
        store_environment(request.param, tmp_path) as store_env,
        running_ledger(settings_for(tmp_path, store_env)) as client,
    ):
        incidents = [incident_in(status) for status in Status for _ in range(2)]
        client.server.ledger.save(*incidents)
        yield Target(client, value_pools(client, incidents))


def value_pools(client: Client, incidents: list[Incident]) -> dict[str, Pool]:
    """Strings worth trying, by field name: real and near-miss names, codes, filters."""
    reference = client.server.ledger.reference
    auditor = client.md("inspektorat")
    names = [f"incidents/{incident.id}" for incident in incidents]
    event_ids = [
        event.event_id
        for name in names
        for event in client.stub.ListIncidentEvents(
            api.ListIncidentEventsRequest(parent=name), metadata=auditor
        ).events
    ]
    page_tokens = [
        client.stub.ListIncidents(
            api.ListIncidentsRequest(page_size=1), metadata=auditor
        ).next_page_token,
        client.stub.ListIncidentEvents(
            api.ListIncidentEventsRequest(parent=names[-1], page_size=1), metadata=auditor
        ).next_page_token,
    ]
    resource_names = Pool(
        names,
        [
            f"incidents/{uuid.uuid4()}",
            "incidents/",
            "incidents/not-a-uuid",
            names[0].upper(),
            names[0] + "/events",
            "incidents/" + "0" * 32,
            "incident/" + names[0][10:],
        ],
    )
    agencies = Pool(list(reference.agencies), ["nobody", "POLRES"])
    return {
        "name": resource_names,
        "parent": resource_names,
        "target": resource_names,
        "incident": resource_names,
        "corrected_event_id": Pool(event_ids, [str(uuid.uuid4()), "not-an-id"]),
        "agency": agencies,
        "to_agency": agencies,
        "deciding_agencies": agencies,
        "kecamatan": Pool(list(reference.kecamatan), ["atlantis", "IPUH"]),
        # A desa must lie in the kecamatan: plausibly none, wildly any.
        "desa": Pool([""], sorted({d for k in reference.kecamatan.values() for d in k.desa})),
        "category": Pool(list(reference.categories), ["alien_landing"]),
        "severity": Pool(list(reference.severities), ["apocalyptic"]),
        "field": Pool(
            [
                "title",
                "description",
                "severity",
                "category",
                "occurred_at",
                "location.kecamatan",
                "location.desa",
                "location.tps",
                "summary",
                "rationale",
                "action",
                "resolution",
                "forum",
                "valid_from",
                "valid_until",
            ],
            ["nonsense", "location", "location.", "actor"],
        ),
        "old_value": Pool(
            ["Crowd at the square", "low", "crowd_gathering", "kota_mukomuko", "Koto Jaya"], []
        ),
        "new_value": Pool(["high", "critical", "hoax", "ipuh", "2026-11-28T00:00:00Z"], []),
        "filter": Pool(
            [
                "",
                'status = "REPORTED"',
                'kecamatan = "kota_mukomuko" AND severity != "low"',
                'lead_agency = "polres"',
            ],
            [
                'status = "NOPE"',
                'title = "x"',
                "status =",
                'status = "REPORTED" OR status = "CLOSED"',
                '"',
                "AND AND",
            ],
        ),
        "page_token": Pool(page_tokens, ["garbage", "AAAA", "eyJ9", "x" * 500]),
    }


# --------------------------------------------------------------------------- strategies
#
# Every request is a "plausible" one (values that pass validation and reach the ledger:
# real names and codes, small integers, recent times) with any subset of its fields
# replaced by "wild" ones (unset, or at and beyond the edges of their types).

INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}

ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\t\n\r",
    "\u202eevil",
    "\U0001f600" * 3,
    "' OR 1=1 --",
    "../../etc/passwd",
    "%s%n",
    "null",
]
NOW = 1_795_000_000  # late 2026, when the seeded history was recorded


def wild_integers(low: int, high: int) -> st.SearchStrategy[int]:
    edges = [e for e in (low, high, -1, 0, 1, 2, 2**31 - 1, 2**53 + 1) if low <= e <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def wild_strings(pool: Pool | None, name: str) -> st.SearchStrategy[str]:
    choices: list[st.SearchStrategy[str]] = [
        st.sampled_from(ODD_STRINGS),
        st.tuples(plausible_strings(pool, name), st.sampled_from(ODD_STRINGS)).map("".join),
        st.text(max_size=30),
        st.text(st.characters(codec="utf-8"), max_size=300),
        st.builds(
            lambda char, count: char * count,
            st.sampled_from("xé字\U0001f600"),
            st.one_of(st.sampled_from([128, 129, 200, 201, 4000, 4001]), st.integers(1, 60_000)),
        ),
    ]
    if pool is not None:
        choices.append(st.sampled_from(pool.good + pool.bad))
    return st.one_of(choices)


# A fresh request id for most commands: Hypothesis repeats the values it draws, and a
# command with a used id is only ever ALREADY_EXISTS or a replay.
FRESH_ID = st.builds(lambda: str(uuid.uuid4()))


def plausible_strings(pool: Pool | None, name: str) -> st.SearchStrategy[str]:
    if name == "request_id":
        return st.one_of(*[FRESH_ID] * 9, st.sampled_from(["fuzz-1", "fuzz-2"]))
    if pool is not None and pool.good:
        return st.sampled_from(pool.good)
    # Free text: words, words with something odd, or any characters at all.
    words = st.text(st.characters(codec="ascii", categories=["L", "N", "Zs"]), min_size=1)
    return st.one_of(
        words,
        st.tuples(words, st.sampled_from(ODD_STRINGS), words).map("".join),
        st.text(min_size=1, max_size=40),
    )


def wild_timestamps() -> st.SearchStrategy[Timestamp]:
    seconds = st.one_of(
        st.integers(-62_135_596_800, 253_402_300_799),  # years 1 to 9999
        wild_integers(-(2**63), 2**63 - 1),
    )
    nanos = st.one_of(st.just(0), wild_integers(-(2**31), 2**31 - 1))
    return st.builds(lambda s, n: Timestamp(seconds=s, nanos=n), seconds, nanos)


def plausible_timestamps() -> st.SearchStrategy[Timestamp]:
    return st.builds(
        lambda s, n: Timestamp(seconds=s, nanos=n),
        st.integers(NOW - 30 * 86400, NOW + 30 * 86400),
        st.integers(0, 999_999_999),
    )


def scalar(field: FieldDescriptor, pools: dict[str, Pool], wild: bool) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in INT_RANGES:
        return (
            wild_integers(*INT_RANGES[kind]) if wild else st.one_of(st.just(0), st.integers(1, 6))
        )
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.floats() if wild else st.floats(-3.5, 102.5)
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32) if wild else st.floats(-3.5, 102.5, width=32)
    if kind == FieldDescriptor.TYPE_STRING:
        pool = pools.get(field.name)
        return wild_strings(pool, field.name) if wild else plausible_strings(pool, field.name)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        numbers = [value.number for value in field.enum_type.values]
        if wild:
            return st.one_of(st.sampled_from(numbers), wild_integers(-(2**31), 2**31 - 1))
        return st.sampled_from([n for n in numbers if n] or numbers)
    raise AssertionError(f"no strategy for {field.full_name} (type {kind})")


def field_values(
    descriptor: Descriptor, pools: dict[str, Pool], wild: bool, depth: int
) -> dict[str, st.SearchStrategy[Any]]:
    values: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        value: st.SearchStrategy[Any]
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                raise AssertionError(f"map fields are not fuzzed yet: {field.full_name}")
            if depth >= MAX_DEPTH:
                continue
            value = requests(field.message_type, pools, depth + 1, wild_only=wild)
        else:
            value = scalar(field, pools, wild)
        if field.is_repeated:
            value = st.lists(value, min_size=0 if wild else 1, max_size=4)
        values[field.name] = value
    return values


def build(descriptor: Descriptor, values: dict[str, Any]) -> Message:
    message = GetMessageClass(descriptor)()
    for name, value in values.items():
        field = descriptor.fields_by_name[name]
        if field.is_repeated:
            target = getattr(message, name)
            for item in value:
                if field.message_type is not None:
                    target.add().CopyFrom(item)
                else:
                    target.append(item)
        elif field.message_type is not None:
            getattr(message, name).CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def requests(
    descriptor: Descriptor, pools: dict[str, Pool], depth: int = 0, *, wild_only: bool = False
) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor``: plausible ones with any subset of fields gone wild."""
    if descriptor.full_name == "google.protobuf.Timestamp":
        return wild_timestamps() if wild_only else plausible_timestamps()
    wild = st.fixed_dictionaries({}, optional=field_values(descriptor, pools, True, depth))
    if wild_only:
        return wild.map(lambda values: build(descriptor, values))
    plausible = st.fixed_dictionaries(field_values(descriptor, pools, False, depth))
    names = [field.name for field in descriptor.fields]

    def overlay(drawn: tuple[dict[str, Any], dict[str, Any], set[str]]) -> Message:
        good, bad, replaced = drawn
        values = {k: v for k, v in good.items() if k not in replaced}
        values.update({k: v for k, v in bad.items() if k in replaced})
        return build(descriptor, values)

    replaced = (
        st.one_of(st.sets(st.sampled_from(names), max_size=1), st.sets(st.sampled_from(names)))
        if names
        else st.just(set[str]())
    )
    return st.tuples(plausible, wild, replaced).map(overlay)


def mutilated(body: bytes) -> st.SearchStrategy[bytes]:
    """``body`` truncated, with bytes flipped, or with random bytes spliced in."""
    if not body:
        return st.binary(min_size=1, max_size=64)
    cut = st.integers(0, len(body) - 1)
    return st.one_of(
        cut.map(lambda i: body[:i]),
        st.tuples(cut, st.integers(1, 255)).map(
            lambda p: body[: p[0]] + bytes([body[p[0]] ^ p[1]]) + body[p[0] + 1 :]
        ),
        st.tuples(cut, st.binary(min_size=1, max_size=16)).map(
            lambda p: body[: p[0]] + p[1] + body[p[0] :]
        ),
    )


# --------------------------------------------------------------------------- one call


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    error: grpc.RpcError | None


def credentials(target: Target) -> st.SearchStrategy[tuple[tuple[str, str], ...]]:
    valid = [target.client.md(agency) for agency in sorted(target.client.tokens)]
    invalid = [
        (),
        (("authorization", "Bearer not-a-token"),),
        (("authorization", "Basic a2VzYmFuZ3BvbDpwYXNz"),),
        (("authorization", "Bearer"),),
    ]
    coordinator = st.just(target.client.md("desk_pilkada"))  # may do the most
    return st.one_of(coordinator, st.sampled_from(valid), st.sampled_from(invalid))


def call(target: Target, rpc: Rpc, body: bytes, metadata: tuple[tuple[str, str], ...]) -> Outcome:
    """Send ``body`` as the raw request; read a stream's first few responses."""
    channel = target.client.channel
    try:
        if rpc.streaming:
            responses = channel.unary_stream(rpc.path, None, None)(
                body, metadata=metadata, timeout=CALL_TIMEOUT
            )
            try:
                for n, response in enumerate(responses):
                    rpc.response.FromString(response)
                    if n >= 20:
                        break
            finally:
                responses.cancel()  # type: ignore[no-untyped-call]
        else:
            rpc.response.FromString(
                channel.unary_unary(rpc.path, None, None)(
                    body, metadata=metadata, timeout=CALL_TIMEOUT
                )
            )
    except grpc.RpcError as error:
        return Outcome(error.code(), error.details() or "", error)
    return Outcome(Code.OK, "", None)


def check(target: Target, rpc: Rpc, body: bytes, metadata: tuple[tuple[str, str], ...]) -> None:
    before = target.position()
    outcome = call(target, rpc, body, metadata)
    assert outcome.code in rpc.allowed, f"{rpc.name} answered {outcome.code}: {outcome.details}"
    reason = ""
    if outcome.error is not None:
        info = error_info(outcome.error)  # type: ignore[arg-type]
        assert info is not None and info.domain == "ledger.incidentledger", outcome.details
        assert target.position() == before, f"refused {rpc.name} recorded an event"
        reason = info.reason
    target.seen[outcome.code.name, reason] += 1
    health = health_pb2_grpc.HealthStub(target.client.channel).Check(
        health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def assert_still_sound(target: Target) -> None:
    """The fuzzed ledger verifies and its projections catch up with its last position."""
    client = target.client
    coordinator = client.md("desk_pilkada")
    report = audit_grpc.AuditServiceStub(client.channel).VerifyLedger(
        audit.VerifyLedgerRequest(), metadata=coordinator, timeout=60
    )
    assert report.ok, report.divergence
    client.stub.ListIncidents(
        api.ListIncidentsRequest(min_position=target.position()), metadata=coordinator, timeout=15
    )


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_random_requests(target: Target) -> None:
    @FUZZ_SETTINGS
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        rpc = data.draw(st.sampled_from(RPCS), label="rpc")
        request = data.draw(target.requests(rpc), label="request")
        check(target, rpc, request.SerializeToString(), data.draw(credentials(target)))

    target.seen.clear()
    one()
    # The run reached the servicers: some calls answered, some refused on their content.
    assert ("OK", "") in target.seen
    assert ("INVALID_ARGUMENT", "INVALID_FIELD") in target.seen
    assert_still_sound(target)


def test_malformed_request_bodies(target: Target) -> None:
    @FUZZ_SETTINGS
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        rpc = data.draw(st.sampled_from(RPCS), label="rpc")
        valid = data.draw(target.requests(rpc), label="request").SerializeToString()
        body = data.draw(
            st.one_of(st.binary(max_size=256), mutilated(valid), mutilated(valid)), label="body"
        )
        check(target, rpc, body, data.draw(credentials(target)))

    target.seen.clear()
    one()
    assert ("INVALID_ARGUMENT", "MALFORMED_REQUEST") in target.seen
    assert_still_sound(target)


# --------------------------------------------------------------------------- regressions
#
# What fuzzing found, on every store.


def test_an_error_quoting_a_huge_value_still_reaches_the_client(ledger: Client) -> None:
    # The message quoted the whole value: 24 KB of trailers, which the client refused.
    name = ledger.report("kesbangpol").incident
    before = ledger.server.ledger.recorder.max_notification_id()
    with pytest.raises(grpc.RpcError) as caught:
        ledger.stub.AssessSeverity(
            api.AssessSeverityRequest(request_id=str(uuid.uuid4()), name=name, severity="é" * 4000),
            metadata=ledger.md("desk_pilkada"),
        )
    assert caught.value.code() == Code.INVALID_ARGUMENT
    info = error_info(caught.value)  # type: ignore[arg-type]
    assert info is not None and info.reason == "INVALID_FIELD"
    assert info.metadata["field"] == "severity"
    assert len((caught.value.details() or "").encode()) <= 512
    assert ledger.server.ledger.recorder.max_notification_id() == before


@pytest.mark.parametrize(
    ("field", "odd"),
    [
        ("title", api.ReportIncidentRequest(title="Crowd\x00")),
        ("request_id", api.ReportIncidentRequest(request_id="r\x00")),
        ("location.tps", api.ReportIncidentRequest(location=pb.Location(tps="TPS\x00001"))),
    ],
)
def test_text_with_a_nul_character_is_refused(
    ledger: Client, field: str, odd: api.ReportIncidentRequest
) -> None:
    # PostgreSQL cannot store U+0000 in text: the command was recorded, and then the
    # projections failed on it for ever.
    valid = api.ReportIncidentRequest(
        request_id=str(uuid.uuid4()),
        title="Crowd at the square",
        category="crowd_gathering",
        location=pb.Location(kecamatan="kota_mukomuko", tps="TPS 001"),
    )
    valid.MergeFrom(odd)
    before = ledger.server.ledger.recorder.max_notification_id()
    with pytest.raises(grpc.RpcError) as caught:
        ledger.stub.ReportIncident(valid, metadata=ledger.md("kesbangpol"))
    assert caught.value.code() == Code.INVALID_ARGUMENT
    info = error_info(caught.value)  # type: ignore[arg-type]
    assert info is not None and info.metadata["field"] == field
    assert ledger.server.ledger.recorder.max_notification_id() == before
    position = ledger.report("kesbangpol").position
    ledger.stub.ListIncidents(
        api.ListIncidentsRequest(min_position=position), metadata=ledger.md("kesbangpol")
    )


def test_a_body_that_does_not_parse_is_invalid_argument(ledger: Client) -> None:
    # gRPC answered INTERNAL ("Exception deserializing request!").
    method = ledger.channel.unary_unary(
        "/incidentledger.v1.SituationService/GetProjectionStatus", None, None
    )
    with pytest.raises(grpc.RpcError) as caught:
        method(b"\x00\x00\x00\x00\x00", metadata=ledger.md("polres"))
    assert caught.value.code() == Code.INVALID_ARGUMENT
    info = error_info(caught.value)  # type: ignore[arg-type]
    assert info is not None and info.reason == "MALFORMED_REQUEST"
    # Credentials come first.
    with pytest.raises(grpc.RpcError) as caught:
        method(b"\x00\x00\x00\x00\x00")
    assert caught.value.code() == Code.UNAUTHENTICATED
    stream = ledger.channel.unary_stream("/incidentledger.v1.AuditService/StreamEvents", None, None)
    with pytest.raises(grpc.RpcError) as caught:
        list(stream(b"\xff", metadata=ledger.md("inspektorat")))
    assert caught.value.code() == Code.INVALID_ARGUMENT

"""The Python client (clients/python) against a real ledger: every method, errors, retries."""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger_client import (
    AlreadyExists,
    CommandResult,
    IllegalTransition,
    IncidentNotFound,
    IncidentStatus,
    InvalidArgument,
    LedgerClient,
    Location,
    PermissionDenied,
    PositionNotRecorded,
    RejectionReason,
    RequestIdReused,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
    VerifyProgress,
    VersionConflict,
)
from tests.support import Client

Factory = Callable[..., LedgerClient]

if TYPE_CHECKING:  # generic in grpc-stubs only
    Interceptor = grpc.UnaryUnaryClientInterceptor[Any, Any]
    GenericHandler = grpc.GenericRpcHandler[bytes, bytes]
else:
    Interceptor = grpc.UnaryUnaryClientInterceptor
    GenericHandler = grpc.GenericRpcHandler


@pytest.fixture
def client_for(ledger: Client) -> Iterator[Factory]:
    """``client_for("polres")``: a LedgerClient with that agency's token (closed afterwards)."""
    with ExitStack() as stack:

        def make(agency: str, **options: Any) -> LedgerClient:
            target = options.pop("target", ledger.address)
            client = LedgerClient(target, ledger.tokens[agency], **options)
            return stack.enter_context(client)

        yield make


def test_the_whole_lifecycle_and_every_query_through_the_client(client_for: Factory) -> None:
    kesbangpol, desk, polres, kodim = (
        client_for(a) for a in ("kesbangpol", "desk_pilkada", "polres", "kodim")
    )
    auditor = client_for("inspektorat")
    start = datetime.now(UTC)
    reported = kesbangpol.report(
        "Planned mass gathering at the town square",
        "crowd_gathering",
        Location("ipuh", desa="Pasar Ipuh", tps="TPS 03", latitude=-2.6, longitude=101.5),
        description="Several hundred expected",
        severity="medium",
        occur_time=start - timedelta(minutes=5),
    )
    assert isinstance(reported, CommandResult)
    assert reported.incident.startswith("incidents/")
    assert reported.version == 1 and reported.position >= 1
    assert reported.record_time is not None and reported.record_time.tzinfo is not None
    name = reported.incident

    steps: list[CommandResult] = [reported]
    steps.append(desk.verify(name, comment="confirmed", expected_version=1))
    steps.append(desk.assess_severity(name, "high", comment="growing", expected_version=2))
    steps.append(desk.assign_lead(name, "polres"))
    steps.append(polres.add_supporting_agency(name, "satpolpp"))
    now = datetime.now(UTC)
    steps.append(
        desk.record_decision(
            name,
            ["desk_pilkada", "polres"],
            "Forkopimda",
            "Gatherings restricted for three days",
            rationale="clash risk",
            valid_from=now,
            valid_until=now + timedelta(days=3),
        )
    )
    steps.append(polres.log_action(name, "patrol deployed", location="ipuh"))
    steps.append(polres.propose_handover(name, "kodim", reason="military district takes over"))
    steps.append(kodim.accept_handover(name, comment="accepted"))
    steps.append(kesbangpol.escalate(name, "crowd growing"))
    steps.append(kodim.resolve(name, "crowd dispersed peacefully"))
    steps.append(kodim.request_closure(name))
    steps.append(desk.approve_closure(name))
    closed_at = steps[-1]
    steps.append(desk.reopen(name, "it gathers again"))
    steps.append(
        kesbangpol.correct(
            name,
            reported.event_id,
            "title",
            "Planned mass gathering at the town square",
            "Planned mass gathering at Lapangan Merdeka",
            reason="place named wrongly",
        )
    )
    assert [s.version for s in steps] == list(range(1, 16))
    assert all(s.incident == name for s in steps)
    positions = [s.position for s in steps]
    assert positions == sorted(positions)

    incident = auditor.get_incident(name)
    assert incident.status is IncidentStatus.REOPENED
    assert incident.title == "Planned mass gathering at Lapangan Merdeka"
    assert incident.severity == "high"
    assert incident.lead_agency == "kodim"
    assert "satpolpp" in incident.supporting_agencies
    assert incident.escalation_level == 1
    assert incident.version == 15
    assert incident.reporter.agency == "kesbangpol"
    assert incident.location == Location(
        "ipuh", desa="Pasar Ipuh", tps="TPS 03", latitude=-2.6, longitude=101.5
    )
    (decision,) = incident.decisions
    assert decision.deciding_agencies == ("desk_pilkada", "polres")
    assert decision.valid_until is not None and decision.valid_until > now
    assert incident.pending_handover is None
    past = auditor.get_incident(name, as_of_position=closed_at.position)
    assert (past.status, past.version) == (IncidentStatus.CLOSED, 13)
    with pytest.raises(IncidentNotFound):
        auditor.get_incident(name, as_of_time=start)

    events = list(auditor.incident_events(name, page_size=4))
    assert [e.version for e in events] == list(range(1, 16))
    assert [e.event_id for e in events] == [s.event_id for s in steps]
    assert events[0].type == "Reported"
    assert events[0].actor.agency == "kesbangpol"
    assert events[0].occur_time == start - timedelta(minutes=5)
    assert events[1].previous_hash == events[0].hash
    assert isinstance(events[0].payload, dict)
    assert events[-1].payload["field"] == "title"

    # Rejection and merge, on incidents of their own.
    hoax = kesbangpol.report("A rumour", "hoax", "xiv_koto").incident
    rejected = desk.reject(hoax, "HOAX", "checked and false")
    dup_of = kesbangpol.report("Clash at the market", "supporter_clash", "penarik").incident
    duplicate = polres.report("Clash near the market", "supporter_clash", "penarik").incident
    merged = desk.merge(duplicate, dup_of, comment="same clash", expected_version=1)
    assert auditor.get_incident(hoax).rejection_reason is RejectionReason.HOAX
    assert auditor.get_incident(duplicate).merged_into == dup_of
    assert auditor.get_incident(dup_of).merged_incidents == (duplicate,)

    # The read side, reading our own writes.
    listed = list(auditor.list_incidents(min_position=merged.position))
    assert [i.name for i in listed] == [name, hoax, dup_of, duplicate]
    rejected_list = list(
        auditor.list_incidents('status = "REJECTED"', min_position=rejected.position)
    )
    assert [i.name for i in rejected_list] == [hoax]
    assert [i.name for i in auditor.list_incidents(as_of_time=start)] == []

    vmap = auditor.vulnerability_map(min_position=merged.position)
    assert vmap.position >= merged.position
    ipuh = next(k for k in vmap.kecamatan if k.kecamatan == "ipuh")
    assert ipuh.score > 0 and ipuh.band in ("low", "medium", "high")
    assert [r.incident for r in ipuh.reasons] == [name]
    assert auditor.vulnerability_map(start).kecamatan[0].score == 0

    in_force = auditor.decisions_in_force(kecamatan="ipuh", min_position=merged.position)
    assert [d.summary for d in in_force] == ["Gatherings restricted for three days"]
    assert in_force[0].recorded_by == "desk_pilkada"
    assert auditor.decisions_in_force(now + timedelta(days=4)) == []

    workload = {w.agency: w for w in auditor.workload(min_position=merged.position)}
    assert workload["kodim"].open == 1
    by_agency = auditor.response_times(min_position=merged.position)
    assert sum(g.acknowledge.count for g in by_agency) == 1
    assert sum(g.verify.count for g in by_agency) >= 1
    assert auditor.response_times("severity", min_position=merged.position)
    assert auditor.response_times("category")
    with pytest.raises(ValueError, match="group_by"):
        auditor.response_times("planet")  # type: ignore[arg-type]
    status = auditor.projection_status()
    assert status.position >= merged.position and status.ledger_position >= merged.position

    # Audit: the history stream, verification, checkpoints.
    history = list(auditor.history())
    assert len(history) == 15 + 6  # 3 reports, a rejection, a merge on both incidents
    assert history[-1].position >= merged.position
    assert [e.position for e in history] == sorted(e.position for e in history)
    assert [e.event_id for e in auditor.history(incident=name)] == [s.event_id for s in steps]
    assert {e.actor.agency for e in auditor.history(agency="kodim")} == {"kodim"}
    assert {e.incident for e in auditor.history(kecamatan="penarik")} == {dup_of, duplicate}
    window = list(auditor.history(after=steps[2].position, until=steps[5].position))
    assert [e.event_id for e in window] == [s.event_id for s in steps[3:6]]
    assert list(auditor.history(start=datetime.now(UTC) + timedelta(hours=1))) == []
    assert list(auditor.history(end=start)) == []

    first = auditor.create_checkpoint()
    assert first.events == 21 and len(first.signature) == 64
    second = auditor.create_checkpoint()
    report = auditor.verify_ledger()
    assert report.ok and report.divergence is None
    assert (report.events, report.incidents) == (21, 4)
    assert report.checkpoints_checked >= 1
    *progress, last = auditor.stream_verify_ledger()
    assert last == report, "the stream ends with the same result"
    so_far = [p for p in progress if isinstance(p, VerifyProgress)]
    assert so_far and len(so_far) == len(progress), "progress, then the result"
    assert so_far[0].position == 0 and so_far[0].ledger_position >= first.position
    with pytest.raises(PermissionDenied):
        next(client_for("polres").stream_verify_ledger())
    listed_checkpoints = list(auditor.checkpoints(page_size=1))
    assert [c.position for c in listed_checkpoints][-1] == second.position
    assert first.position in [c.position for c in listed_checkpoints]


def test_errors_are_typed_and_carry_their_details(client_for: Factory) -> None:
    kesbangpol, desk, polres = (client_for(a) for a in ("kesbangpol", "desk_pilkada", "polres"))
    result = kesbangpol.report("Something", "crowd_gathering", "ipuh")
    desk.verify(result.incident)

    with pytest.raises(VersionConflict) as conflict:
        desk.assess_severity(result.incident, "high", expected_version=1)
    assert conflict.value.current_version == 2
    assert conflict.value.expected_version == 1
    assert conflict.value.code == "ABORTED"
    assert conflict.value.reason == "VERSION_CONFLICT"
    assert conflict.value.domain == "ledger.incidentledger"

    with pytest.raises(IllegalTransition) as illegal:
        desk.resolve(result.incident, "nothing to resolve")
    assert illegal.value.status == "VERIFIED"
    assert illegal.value.command
    assert illegal.value.code == "FAILED_PRECONDITION"

    with pytest.raises(PermissionDenied) as denied:
        polres.verify(kesbangpol.report("Other", "hoax", "ipuh").incident)
    assert denied.value.reason == "COORDINATOR_ONLY"

    with pytest.raises(IncidentNotFound) as missing:
        polres.get_incident(f"incidents/{uuid.uuid4()}")
    assert missing.value.code == "NOT_FOUND"

    with pytest.raises(InvalidArgument) as invalid:
        kesbangpol.report("Bad", "no_such_category", "ipuh")
    assert invalid.value.field == "category"

    with pytest.raises(InvalidArgument):
        list(polres.list_incidents("colour = 'red'"))

    with pytest.raises(PositionNotRecorded):
        list(polres.list_incidents(min_position=result.position + 1000))

    # The same request_id: the original result; with another request: REQUEST_ID_REUSED.
    request_id = secrets.token_hex(8)
    once = kesbangpol.report("Twice", "hoax", "ipuh", request_id=request_id)
    again = kesbangpol.report("Twice", "hoax", "ipuh", request_id=request_id)
    assert again == once
    with pytest.raises(RequestIdReused) as reused:
        kesbangpol.report("Something else", "hoax", "ipuh", request_id=request_id)
    assert isinstance(reused.value, AlreadyExists)

    with pytest.raises(ValueError, match="BORING"):
        desk.reject(once.incident, "BORING", "no")


def test_credentials_are_checked_and_an_unreachable_ledger_is_unavailable(
    ledger: Client,
) -> None:
    with (
        LedgerClient(ledger.address, "not-a-real-token") as stranger,
        pytest.raises(Unauthenticated),
    ):
        stranger.report("x", "hoax", "ipuh")
    with LedgerClient(ledger.address, "") as anonymous:
        with pytest.raises(Unauthenticated) as caught:
            list(anonymous.list_incidents())
        assert caught.value.reason == "CREDENTIALS_MISSING"
    retry = RetryPolicy(retries=2, initial_backoff=0.01, max_backoff=0.02)
    with LedgerClient("127.0.0.1:9", "t", timeout=1.0, retry=retry) as nowhere:
        began = time.monotonic()
        with pytest.raises(Unavailable):
            nowhere.projection_status()
        assert time.monotonic() - began < 10


def test_pagination_walks_every_page_lazily(ledger: Client) -> None:
    calls: list[str] = []

    class Counting(Interceptor):
        def intercept_unary_unary(
            self, continuation: Callable[..., Any], details: Any, request: Any
        ) -> Any:
            calls.append(details.method.rsplit("/", 1)[-1])
            return continuation(details, request)

    channel = grpc.intercept_channel(grpc.insecure_channel(ledger.address), Counting())
    try:
        client = LedgerClient(token=ledger.tokens["kesbangpol"], channel=channel)
        names = [client.report(f"Report {n}", "hoax", "ipuh").incident for n in range(7)]
        pages = client.list_incidents('kecamatan = "ipuh"', page_size=2)
        assert calls.count("ListIncidents") == 0, "nothing is fetched before iteration"
        assert [i.name for i in pages] == names
        assert calls.count("ListIncidents") == 4
        assert [i.name for i in client.list_incidents(page_size=500)] == names
        assert calls.count("ListIncidents") == 5
        for name in names[:2]:
            for n in range(4):
                client.escalate(name, f"reason {n}")
        assert [e.version for e in client.incident_events(names[0], page_size=2)] == [
            1,
            2,
            3,
            4,
            5,
        ]
        assert calls.count("ListIncidentEvents") == 3
        client.close()  # the channel was passed in: still usable
        assert len(list(client.list_incidents(page_size=3))) == 7
    finally:
        channel.close()


class FlakyProxy:
    """A gRPC proxy on loopback that forwards every unary call to the ledger, except that
    the first call of ``method`` is forwarded (so the ledger records it) and then its answer
    is lost: the client sees UNAVAILABLE (``mode="unavailable"``) or no answer before its
    deadline (``mode="slow"``)."""

    def __init__(self, upstream: str, method: str, mode: str) -> None:
        self.method = method
        self.mode = mode
        self.requests: list[bytes] = []
        self._upstream = grpc.insecure_channel(upstream)
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(8))
        proxy = self

        class Handler(GenericHandler):
            def service(
                self, details: grpc.HandlerCallDetails
            ) -> grpc.RpcMethodHandler[bytes, bytes]:
                method = details.method
                return grpc.unary_unary_rpc_method_handler(
                    lambda request, context: proxy.forward(method, request, context)
                )

        self._server.add_generic_rpc_handlers((Handler(),))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    def forward(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        metadata = tuple((k, v) for k, v in context.invocation_metadata() if k == "authorization")
        with self._lock:
            first = method.endswith(self.method) and not self.requests
            if method.endswith(self.method):
                self.requests.append(request)
        try:
            response: bytes = self._upstream.unary_unary(method, None, None)(
                request, metadata=metadata, timeout=10
            )
        except grpc.RpcError as error:
            context.set_trailing_metadata(error.trailing_metadata())  # type: ignore[arg-type]
            context.abort(error.code(), error.details() or "")
        if first and self.mode == "unavailable":
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset by the proxy")
        if first and self.mode == "slow":
            time.sleep(1.5)
        return response

    def close(self) -> None:
        self._server.stop(0)
        self._upstream.close()


@pytest.mark.parametrize("mode", ["unavailable", "slow"])
def test_a_command_retried_after_a_lost_answer_returns_the_original_result(
    ledger: Client, mode: str
) -> None:
    proxy = FlakyProxy(ledger.address, "ReportIncident", mode)
    try:
        retry = RetryPolicy(retries=3, initial_backoff=0.05, max_backoff=0.1)
        with LedgerClient(
            f"127.0.0.1:{proxy.port}", ledger.tokens["kesbangpol"], timeout=1.0, retry=retry
        ) as client:
            result = client.report("Reported once", "hoax", "ipuh")
            events = list(client.incident_events(result.incident))
            incidents = list(client.list_incidents(min_position=result.position))
    finally:
        proxy.close()
    assert len(proxy.requests) == 2, "the first answer was lost, the retry got through"
    first, second = (api.ReportIncidentRequest.FromString(r) for r in proxy.requests)
    assert first == second and len(first.request_id) == 32, "the same request_id both times"
    assert [i.name for i in incidents] == [result.incident], "one incident recorded"
    assert [(e.event_id, e.position) for e in events] == [(result.event_id, result.position)]
    assert events[0].request_id == first.request_id

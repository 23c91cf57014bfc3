"""Hostile but authenticated input on a real ledger: what an agency can send within the
API's limits must not break the ledger's answers for anyone."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import situation_service_pb2 as sit
from incidentledger.v1 import situation_service_pb2_grpc as sit_grpc
from incidentledger_client import LedgerClient
from services.common.grpc_errors import error_info
from services.ledger.domain.incident import MAX_DECISIONS
from tests.ledgerctl_support import Ctl
from tests.support import Client, rid, running_ledger, settings_for, store_environment, ts

COORDINATOR = "desk_pilkada"
#: What a gRPC client takes in one message by default.
CLIENT_RECEIVE_LIMIT = 4 * 1024 * 1024
#: The longest texts a decision takes, in 4-byte characters: 33 kB in the incident.
LONGEST = "\U0001f600" * 4000


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    tmp_path: Path = tmp_path_factory.mktemp("hostile")
    with (
        store_environment("popo", tmp_path) as store_env,
        running_ledger(settings_for(tmp_path, store_env)) as client,
    ):
        yield client


def refusal(error: grpc.RpcError) -> tuple[grpc.StatusCode, str, str]:
    info = error_info(error)  # type: ignore[arg-type]
    assert info is not None, error.details()
    return error.code(), info.reason, info.metadata.get("field", "")


@pytest.mark.parametrize(
    ("field", "new_value", "reason"),
    [
        ("title", "x" * 201, "FIELD_TOO_LONG"),
        ("title", "   ", "INVALID_FIELD"),
        ("location.tps", "9" * 33, "FIELD_TOO_LONG"),
    ],
)
def test_a_correction_keeps_the_corrected_fields_own_limit(
    ledger: Client, field: str, new_value: str, reason: str
) -> None:
    """A correction's ``new_value`` may hold 4,000 characters, but a corrected title is still
    a title (200, required) and a TPS a TPS (32). Before, a title was corrected to 4,000
    characters, or to blanks, and recorded."""
    reported = ledger.report("kesbangpol")
    old = {"title": "Planned mass gathering at the town square", "location.tps": ""}[field]
    with pytest.raises(grpc.RpcError) as refused:
        ledger.stub.RecordCorrection(
            api.RecordCorrectionRequest(
                request_id=rid(),
                name=reported.incident,
                corrected_event_id=reported.event_id,
                field=field,
                old_value=old,
                new_value=new_value,
                reason="typo",
            ),
            metadata=ledger.md("kesbangpol"),
        )
    assert refusal(refused.value) == (grpc.StatusCode.INVALID_ARGUMENT, reason, "new_value")
    incident = ledger.stub.GetIncident(
        api.GetIncidentRequest(name=reported.incident), metadata=ledger.md("kesbangpol")
    ).incident
    assert incident.version == 1, "nothing recorded"


def decide(ledger: Client, name: str) -> api.RecordDecisionResponse:
    now = datetime.now(UTC)
    return ledger.stub.RecordDecision(
        api.RecordDecisionRequest(
            request_id=rid(),
            name=name,
            deciding_agencies=[COORDINATOR],
            forum="\U0001f600" * 200,
            summary=LONGEST,
            rationale=LONGEST,
            valid_from=ts(now),
            valid_until=ts(now + timedelta(days=3)),
        ),
        metadata=ledger.md(COORDINATOR),
    )


@pytest.fixture(scope="module")
def decided(ledger: Client) -> list[str]:
    """Two incidents, each with as many decisions as it may hold, every text at its limit."""
    names = []
    for _ in range(2):
        name = ledger.report("bpbd", description=LONGEST).incident
        ledger.stub.VerifyIncident(
            api.VerifyIncidentRequest(request_id=rid(), name=name), metadata=ledger.md(COORDINATOR)
        )
        for _ in range(MAX_DECISIONS):
            decide(ledger, name)
        names.append(name)
    return names


def test_an_incident_records_so_many_decisions_and_still_reads_whole(
    ledger: Client, decided: list[str]
) -> None:
    """Every answer that shows an incident carries its decisions in full. Before, an
    agency involved in an incident could record decisions until the incident was larger
    than gRPC sends (about 125 at the texts' limits): GetIncident failed for everyone, and
    so did every page of ListIncidents that held it. Now the 101st is refused, and the
    incident with 100 still reads whole."""
    name = decided[0]
    with pytest.raises(grpc.RpcError) as refused:
        decide(ledger, name)
    assert refusal(refused.value)[:2] == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "TOO_MANY_DECISIONS",
    )
    incident = ledger.stub.GetIncident(
        api.GetIncidentRequest(name=name), metadata=ledger.md("bpbd")
    ).incident
    assert len(incident.decisions) == MAX_DECISIONS
    assert {d.summary for d in incident.decisions} == {LONGEST}
    assert incident.ByteSize() < CLIENT_RECEIVE_LIMIT


def test_pages_of_large_incidents_and_events_are_cut_to_what_a_client_takes(
    ledger: Client, decided: list[str]
) -> None:
    """A page of 50 incidents (or 1,000 events) can be larger than gRPC sends. Before, the
    page holding the two incidents failed (RESOURCE_EXHAUSTED) for every caller, and no
    page after it could be asked for: the board stopped there. Now a page ends before
    2 MiB (one item at least) and the next page goes on from there."""
    seen: list[str] = []
    token = ""
    while True:
        page = ledger.stub.ListIncidents(
            api.ListIncidentsRequest(page_size=500, page_token=token),
            metadata=ledger.md("bpbd"),
        )
        assert page.ByteSize() < CLIENT_RECEIVE_LIMIT
        seen += [i.name for i in page.incidents]
        token = page.next_page_token
        if not token:
            break
    assert set(decided) <= set(seen)
    assert len(seen) == len(set(seen)), "each once"
    for name in decided:
        versions: list[int] = []
        token = ""
        while True:
            events = ledger.stub.ListIncidentEvents(
                api.ListIncidentEventsRequest(parent=name, page_size=1000, page_token=token),
                metadata=ledger.md("bpbd"),
            )
            assert events.ByteSize() < CLIENT_RECEIVE_LIMIT
            versions += [e.version for e in events.events]
            token = events.next_page_token
            if not token:
                break
        assert versions == list(range(1, MAX_DECISIONS + 3)), "every event once, in order"


#: A title that drives a terminal: clear the screen, print in red, set the window's title,
#: then read the rest right to left (a bidirectional override, and an isolate).
DRIVING = "Rally \x1b[2J\x1b[31mOWNED\x1b[0m \x1b]0;pwned\x07\r\x9b31m \u202eTPS 12 \u2067x"


def test_ledgerctl_shows_control_characters_and_brackets_as_text(ctl: Ctl) -> None:
    """Whoever reports writes the title and description that every officer's ledgerctl
    prints. Before, an escape sequence in a title reached the reader's terminal as it
    was (``ledgerctl list`` cleared the screen), and a description with ``[/b]`` made
    ``ledgerctl show`` fail (rich read it as markup). Now both are shown as text."""
    reported = ctl.ledger.report(
        "kesbangpol", title=DRIVING, description="[/b] [red]not red[/red] [link=x]y[/link]"
    )
    name = reported.incident
    for args in (("list",), ("show", name)):
        out = ctl.ok("kesbangpol", *args)
        assert not set(out) & {"\x1b", "\x07", "\r", "\x9b", "\u202e", "\u2067"}, (args, out)
        assert "OWNED" in out and "␛" in out, (args, out)
    shown = ctl.ok("kesbangpol", "show", name)
    assert "[/b] [red]not red[/red] [link=x]y[/link]" in shown, shown
    # Shown before the tables are laid out: their borders stay in line (rich counted each
    # control character as no width, and it was then printed one column wide).
    for args in (("list",), ("board",)):
        out = ctl.ok("kesbangpol", *args)
        lines = out.splitlines()
        top = next(n for n, line in enumerate(lines) if line.startswith("┏"))
        end = next(n for n, line in enumerate(lines) if n > top and line.startswith("└"))
        table = lines[top : end + 1]  # the first table (the board's workload table follows)
        assert "OWNED" in "".join(table), (args, out)
        assert len({len(line) for line in table}) == 1, (args, out)


def test_decisions_in_force_come_in_pages_a_client_takes(
    ledger: Client, decided: list[str]
) -> None:
    """ListDecisionsInForce was not paged: the 200 decisions in force of two incidents, at
    their texts' limits, made it larger than gRPC sends (6.4 MB), for every caller, and the
    situation room's decisions page failed. Now it comes in pages that end before 2 MiB
    (500 decisions at most), each page at the first page's time, and the Python client
    follows them."""
    situation = sit_grpc.SituationServiceStub(ledger.channel)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = situation.ListDecisionsInForce(
            sit.ListDecisionsInForceRequest(page_token=token), metadata=ledger.md("bpbd")
        )
        assert page.ByteSize() < CLIENT_RECEIVE_LIMIT
        seen += [d.event_id for d in page.decisions]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages > 1
    assert len(seen) == len(set(seen)) == 2 * MAX_DECISIONS, "each once"
    with LedgerClient(ledger.address, token=ledger.tokens["bpbd"]) as client:
        assert [str(d.event_id) for d in client.decisions_in_force()] == seen


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"title": "\u200b\u200b"}, "title"),  # zero-width spaces: reads as empty
        ({"title": "\ufeff"}, "title"),  # a byte order mark alone
        ({"request_id": "   "}, "request_id"),  # blanks are no request id (AIP-155)
    ],
)
def test_what_reads_as_nothing_is_refused(
    ledger: Client, change: dict[str, object], field: str
) -> None:
    """Accepted before, each recorded for good: a title no one can see, a request id of
    blanks."""
    values: dict[str, object] = {"request_id": rid(), "title": "Rally"} | change
    location = pb.Location(kecamatan="ipuh")
    before = len(
        ledger.stub.ListIncidents(api.ListIncidentsRequest(), metadata=ledger.md("kpu")).incidents
    )
    request = api.ReportIncidentRequest(category="crowd_gathering", location=location, **values)  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as caught:
        ledger.stub.ReportIncident(request, metadata=ledger.md("kesbangpol"))
    assert refusal(caught.value) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", field)
    after = ledger.stub.ListIncidents(api.ListIncidentsRequest(), metadata=ledger.md("kpu"))
    assert len(after.incidents) == before


def test_a_correction_to_an_unknown_kecamatan_names_the_value_as_a_report_does(
    ledger: Client,
) -> None:
    name = ledger.report().incident
    reported = ledger.stub.ListIncidentEvents(
        api.ListIncidentEventsRequest(parent=name), metadata=ledger.md("kesbangpol")
    ).events[0]
    request = api.RecordCorrectionRequest(
        request_id=rid(),
        name=name,
        corrected_event_id=reported.event_id,
        field="location.kecamatan",
        old_value=reported.location.kecamatan,
        new_value="atlantis",
        reason="misheard",
    )
    with pytest.raises(grpc.RpcError) as caught:
        ledger.stub.RecordCorrection(request, metadata=ledger.md("kesbangpol"))
    info = error_info(caught.value)  # type: ignore[arg-type]
    assert info is not None
    assert dict(info.metadata) | {"field": "new_value"} == {
        "field": "new_value",
        "check": "unknown",
        "value": "atlantis",
        "what": "kecamatan",
    }, info


def test_two_authorizations_an_overlong_filter_and_two_past_moments_are_refused(
    ledger: Client,
) -> None:
    """Each was taken silently before: the first of two authorization headers (even of two
    agencies), a filter over its limit as an ordinary INVALID_FIELD (docs/api.md says
    FIELD_TOO_LONG), and as_of_position beside as_of_time (the position won)."""
    name = ledger.report().incident
    two = (*ledger.md("kesbangpol"), *ledger.md("polres"))
    with pytest.raises(grpc.RpcError) as caught:
        ledger.stub.GetIncident(api.GetIncidentRequest(name=name), metadata=two)
    assert refusal(caught.value)[:2] == (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_MALFORMED")
    with pytest.raises(grpc.RpcError) as caught:
        ledger.stub.ListIncidents(
            api.ListIncidentsRequest(filter='status = "' + "A" * 1000 + '"'),
            metadata=ledger.md("kpu"),
        )
    assert refusal(caught.value) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "FIELD_TOO_LONG",
        "filter",
    )
    both = api.GetIncidentRequest(name=name, as_of_position=1, as_of_time=ts(datetime.now(UTC)))
    with pytest.raises(grpc.RpcError) as caught:
        ledger.stub.GetIncident(both, metadata=ledger.md("kpu"))
    assert refusal(caught.value) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "as_of_time",
    )

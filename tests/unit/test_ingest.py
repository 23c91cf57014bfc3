"""Ledger.ingest (IngestReports) on the in-memory store: outcomes, idempotency shared with
ReportIncident, the device's provenance, and the transactions a batch is saved in, with a
store that fails on purpose. The same on SQLite and PostgreSQL, through the API:
tests/integration/test_ingest.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import OperationalError, StoredEvent

from services.common.errors import (
    AlreadyExists,
    IngestTooLarge,
    InvalidArgument,
    PermissionDenied,
)
from services.ledger.application import (
    IngestItem,
    IngestLimits,
    IngestOutcome,
    IngestResult,
    Ledger,
)
from services.ledger.domain.commands import ReportIncident
from services.ledger.domain.incident import DEVICE_FIELDS, Incident
from tests.unit.incident_builders import AUDITOR, LOCATION, REF, REPORTER, actor, envelope_for

NOW = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)
CREATED, DUPLICATE, CONFLICT, INVALID = (
    IngestOutcome.CREATED,
    IngestOutcome.DUPLICATE,
    IngestOutcome.CONFLICT,
    IngestOutcome.INVALID,
)


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    app = Ledger(REF, env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=lambda: NOW)
    yield app
    app.close()


def item(title: str = "Ballot box carried off", **changes: Any) -> IngestItem:
    command = ReportIncident(
        title=title,
        description=changes.pop("description", ""),
        category=changes.pop("category", "crowd_gathering"),
        severity="",
        location=changes.pop("location", dict(LOCATION)),
    )
    values: dict[str, Any] = {
        "device_id": "hp-panwascam-07",
        "report_id": uuid4(),
        "record_time": NOW - timedelta(hours=20),
        "command": command,
    }
    values.update(changes)
    return IngestItem(**values)


def ingest(
    ledger: Ledger, items: Sequence[IngestItem | InvalidArgument], agency: str = REPORTER
) -> list[IngestResult]:
    return ledger.ingest(actor(agency), items)


#: What a report stores: its event, its request record and the claim of its reference code.
PER_REPORT = 3


def recorded(ledger: Ledger) -> int:
    return ledger.recorder.max_notification_id() or 0


def outcomes(results: Sequence[IngestResult]) -> list[IngestOutcome]:
    return [r.outcome for r in results]


def reported_event(ledger: Ledger, incident_id: UUID) -> Incident.Reported:
    (stored,) = ledger.incident_events(incident_id, after_version=0, limit=2)
    assert isinstance(stored.event, Incident.Reported)
    return stored.event


# ----------------------------------------------------------------- outcomes


def test_a_mixed_batch_gets_one_result_per_report_in_order(ledger: Ledger) -> None:
    earlier = item("Recorded yesterday")
    (first,) = ingest(ledger, [earlier])
    new = item("Money handed out at TPS 4")
    changed = item("Other content", report_id=earlier.report_id)
    unconvertible = InvalidArgument("location", "is required")
    before = recorded(ledger)
    results = ingest(
        ledger,
        [new, earlier, changed, item(""), unconvertible, item(category="picnic"), new],
    )
    assert outcomes(results) == [CREATED, DUPLICATE, CONFLICT, INVALID, INVALID, INVALID, DUPLICATE]
    assert results[1].result == first.result, "a duplicate answers with the original result"
    assert results[6].result == results[0].result, "the same report twice in one batch"
    conflict = results[2].error
    assert isinstance(conflict, AlreadyExists) and conflict.reason == "REQUEST_ID_REUSED"
    assert str(earlier.report_id) in conflict.message
    assert [r.error.field for r in results[3:6] if r.error] == ["title", "location", "category"]
    assert all(r.result is None for r in results[2:6])
    # Only the new report was recorded: its event, its request record, its code's claim.
    assert recorded(ledger) == before + PER_REPORT
    created = results[0].result
    assert created is not None and created.version == 1
    assert ledger.get_incident(created.incident_id).title == "Money handed out at TPS 4"


def test_invalid_reports_name_the_field_as_report_incident_would(ledger: Ledger) -> None:
    long_title = "x" * 201
    cases = {
        "device_id": item(device_id=""),
        "title": item(long_title),
        "occur_time": item(occurred_at=NOW + timedelta(days=1)),
        "correlation_id": item(correlation_id="c" * 129),
        "location.tps": item(location={**LOCATION, "tps": "T" * 33}),
    }
    results = ingest(ledger, list(cases.values()))
    assert outcomes(results) == [INVALID] * len(cases)
    assert [r.error.field for r in results if r.error] == list(cases)
    assert recorded(ledger) == 0
    long_device = ingest(ledger, [item(device_id="d" * 65)])[0].error
    assert long_device is not None and long_device.reason == "FIELD_TOO_LONG"


def test_a_report_sent_alone_and_in_a_batch_is_one_request(ledger: Ledger) -> None:
    """The report's request id is {device_id}/{report_id}: sent as ReportIncident with it,
    or in a batch, it is recorded once and answered alike."""
    report = item("Sent alone first")
    single = envelope_for(REPORTER, request_id=report.request_id)
    alone = ledger.execute(single, report.command)
    (batched,) = ingest(ledger, [report])
    assert batched.outcome is DUPLICATE and batched.result == alone
    other = item("Sent in a batch first")
    (first,) = ingest(ledger, [other])
    assert (
        ledger.execute(envelope_for(REPORTER, request_id=other.request_id), other.command)
        == first.result
    )
    with pytest.raises(AlreadyExists):
        ledger.execute(envelope_for(REPORTER, request_id=other.request_id), item("Else").command)


def test_the_same_device_report_of_another_agency_is_another_report(ledger: Ledger) -> None:
    report = item()
    (mine,) = ingest(ledger, [report])
    (theirs,) = ingest(ledger, [report], agency="bawaslu")
    assert (mine.outcome, theirs.outcome) == (CREATED, CREATED)
    assert mine.result and theirs.result and mine.result.incident_id != theirs.result.incident_id


def test_a_batch_sent_three_times_records_each_report_once(ledger: Ledger) -> None:
    batch = [item(f"Report {n}") for n in range(20)]
    first = ingest(ledger, batch)
    stored = recorded(ledger)
    for _ in range(2):
        again = ingest(ledger, batch)
        assert outcomes(again) == [DUPLICATE] * 20
        assert [r.result for r in again] == [r.result for r in first]
    assert recorded(ledger) == stored == 20 * PER_REPORT


def test_a_batch_sent_again_is_answered_without_walking_the_log(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each report sent again is answered from its record, with its event's position: on the
    # in-memory store, found from the store's index, not by reading the whole log once per
    # report (a resent backlog of 500 took seconds, and the tests' calls timed out).
    items = [item(f"Laporan {n}") for n in range(20)]
    first = ingest(ledger, items)

    def no_walk(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the notification log was read to find a position")

    monkeypatch.setattr(ledger.recorder, "select_notifications", no_walk)
    again = ingest(ledger, items)
    assert [r.outcome for r in again] == [DUPLICATE] * 20
    assert [r.result.position for r in again if r.result] == [
        r.result.position for r in first if r.result
    ]


def test_over_500_reports_is_invalid_and_records_nothing(ledger: Ledger) -> None:
    limit = IngestLimits().max_reports
    assert limit == 500, "the documented default"
    with pytest.raises(InvalidArgument) as refused:
        ingest(ledger, [item(f"r{n}") for n in range(limit + 1)])
    assert refused.value.field == "reports"
    assert recorded(ledger) == 0
    assert outcomes(ingest(ledger, [item(f"r{n}") for n in range(limit)])) == [CREATED] * limit


def test_the_limits_are_settings_and_over_them_nothing_is_recorded() -> None:
    app = Ledger(
        REF,
        env={"PERSISTENCE_MODULE": "eventsourcing.popo"},
        clock=lambda: NOW,
        ingest_limits=IngestLimits(max_reports=3, max_bytes=2048),
    )
    try:
        with pytest.raises(InvalidArgument) as refused:
            app.ingest(actor(REPORTER), [item(f"r{n}") for n in range(4)])
        assert refused.value.field == "reports"
        with pytest.raises(IngestTooLarge) as too_large:
            app.ingest(actor(REPORTER), [item("r")], size=2049)
        assert too_large.value.code == "RESOURCE_EXHAUSTED"
        assert too_large.value.metadata == {"bytes": "2049", "limit": "2048"}
        assert recorded(app) == 0
        results = app.ingest(actor(REPORTER), [item(f"r{n}") for n in range(3)], size=2048)
        assert outcomes(results) == [CREATED] * 3
    finally:
        app.close()


def test_an_auditor_s_batch_is_refused_as_a_whole(ledger: Ledger) -> None:
    with pytest.raises(PermissionDenied) as refused:
        ingest(ledger, [item(""), item()], agency=AUDITOR)
    assert refused.value.reason == "READ_ONLY_ROLE"
    assert recorded(ledger) == 0


def test_an_empty_batch_is_answered_with_no_results(ledger: Ledger) -> None:
    assert ingest(ledger, []) == []


# ----------------------------------------------------------------- provenance


def test_the_reported_event_keeps_the_device_s_times_and_the_clock_skew(ledger: Ledger) -> None:
    occurred = NOW - timedelta(days=1)
    report = item(occurred_at=occurred, correlation_id="sync-42")
    (result,) = ledger.ingest(
        actor(REPORTER), [report], send_time=NOW + timedelta(minutes=7, milliseconds=250)
    )
    assert result.result is not None
    event = reported_event(ledger, result.result.incident_id)
    assert event.device_id == "hp-panwascam-07"
    assert event.device_report_id == report.report_id
    assert event.device_record_time == report.record_time
    assert event.device_clock_skew_ms == 7 * 60_000 + 250, "device ahead of the ledger"
    assert event.occurred_at == occurred, "the device's occurrence time, as stated"
    assert event.timestamp != report.record_time, "recorded at the ledger's time"
    assert (event.request_id, event.causation_id) == (report.request_id, report.request_id)
    assert event.correlation_id == "sync-42"
    (behind,) = ledger.ingest(actor(REPORTER), [item()], send_time=NOW - timedelta(hours=2))
    assert behind.result is not None
    skew = reported_event(ledger, behind.result.incident_id).device_clock_skew_ms
    assert skew == -2 * 3600_000


def test_an_occurrence_time_is_judged_by_the_clock_of_a_device_that_runs_ahead(
    ledger: Ledger,
) -> None:
    # A phone two hours fast reports what happened an hour ago by the true time: by its
    # clock, an hour ago; by the server's, an hour ahead.
    fast = timedelta(hours=2)
    occurred = NOW + timedelta(hours=1)
    (kept,) = ledger.ingest(actor(REPORTER), [item(occurred_at=occurred)], send_time=NOW + fast)
    assert kept.outcome is CREATED, kept.error
    assert kept.result is not None
    event = reported_event(ledger, kept.result.incident_id)
    assert event.occurred_at == occurred, "kept as the device stated it, beside its skew"
    assert event.device_clock_skew_ms == fast // timedelta(milliseconds=1)
    # Without the call's send time nothing says the clock is fast: in the future.
    (unknown,) = ingest(ledger, [item(occurred_at=occurred)])
    assert unknown.outcome is INVALID and unknown.error is not None
    assert "after the server's clock" in unknown.error.message
    # Past the device's own clock (and its tolerance) it is in the future for the device too.
    (beyond,) = ledger.ingest(
        actor(REPORTER), [item(occurred_at=NOW + fast + timedelta(minutes=6))], send_time=NOW + fast
    )
    assert beyond.outcome is INVALID and beyond.error is not None
    assert beyond.error.field == "occur_time"
    assert "after the device's clock (2026-11-28T17:00:00+07:00, 7200 s ahead)" in (
        beyond.error.message
    )
    assert beyond.error.metadata["device_now"] == "2026-11-28T17:00:00+07:00"
    # A device whose clock is behind gains nothing: judged by the server's clock.
    (slow,) = ledger.ingest(
        actor(REPORTER), [item(occurred_at=NOW + timedelta(minutes=6))], send_time=NOW - fast
    )
    assert slow.outcome is INVALID


def test_a_device_clock_days_or_years_ahead_judges_nothing(ledger: Ledger) -> None:
    """A send time of the year 5000 made every occurrence time plausible: any caller could
    record a report of the year 4999, for good. Past a day ahead the device's clock is not
    used; its skew is still recorded as measured, and times at the end of 9999 (later than
    any date WIB can state) are refused, not a crash."""
    far = datetime(5000, 1, 1, tzinfo=UTC)
    results = ledger.ingest(
        actor(REPORTER),
        [
            item(occurred_at=datetime(4999, 1, 1, tzinfo=UTC)),
            item(record_time=datetime(4999, 6, 1, tzinfo=UTC)),
            item(occurred_at=NOW - timedelta(hours=1)),
        ],
        send_time=far,
    )
    future, unstated, past = results
    assert future.outcome is INVALID and future.error is not None
    assert "too far off to judge by" in future.error.message, future.error.message
    assert unstated.outcome is CREATED and unstated.result is not None
    event = reported_event(ledger, unstated.result.incident_id)
    assert event.occurred_at == event.timestamp, "not the device's year 4999"
    assert event.device_clock_skew_ms == (far - NOW) // timedelta(milliseconds=1)
    assert past.outcome is CREATED
    # A day ahead is still a phone set to the wrong zone: judged by its clock.
    day = timedelta(hours=23)
    (zone_wrong,) = ledger.ingest(
        actor(REPORTER), [item(occurred_at=NOW + timedelta(hours=22))], send_time=NOW + day
    )
    assert zone_wrong.outcome is CREATED, zone_wrong.error
    end = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    (last,) = ledger.ingest(actor(REPORTER), [item(occurred_at=end)], send_time=end)
    assert last.outcome is INVALID and last.error is not None
    assert "9999-12-31T23:59:59+00:00" in last.error.message, last.error.message


def test_a_report_without_its_occurrence_time_happened_when_the_device_recorded_it(
    ledger: Ledger,
) -> None:
    # A backlog handed over days later: not "happened at the import".
    recorded_then = NOW - timedelta(days=6)
    report = item(record_time=recorded_then)
    (first,) = ingest(ledger, [report])
    assert first.outcome is CREATED and first.result is not None
    event = reported_event(ledger, first.result.incident_id)
    assert event.occurred_at == recorded_then
    assert event.timestamp != recorded_then, "recorded at the ledger's time"
    # Sent again: the same report (its fingerprint is of what the device stated).
    (again,) = ingest(ledger, [report])
    assert again.outcome is DUPLICATE and again.result == first.result
    # A clock reset to 1970 is no occurrence time: the record time, as for any report.
    (reset,) = ingest(ledger, [item(record_time=datetime(1970, 1, 1, tzinfo=UTC))])
    assert reset.result is not None
    reset_event = reported_event(ledger, reset.result.incident_id)
    assert reset_event.occurred_at == reset_event.timestamp
    # A time the device stated stays what happened.
    stated = NOW - timedelta(days=8)
    (given,) = ingest(ledger, [item(record_time=recorded_then, occurred_at=stated)])
    assert given.result is not None
    assert reported_event(ledger, given.result.incident_id).occurred_at == stated


@pytest.mark.parametrize("device", ["retention", "find"])
def test_a_device_named_as_the_ledger_s_own_requests_is_refused_naming_device_id(
    ledger: Ledger, device: str
) -> None:
    (refused,) = ingest(ledger, [item(device_id=device)])
    assert refused.outcome is INVALID and refused.error is not None
    assert refused.error.field == "device_id", refused.error.message
    assert "may not be 'retention' or 'find'" in refused.error.message
    (kept,) = ingest(ledger, [item(device_id=f"{device}-hp-1")])
    assert kept.outcome is CREATED


def test_without_a_send_time_no_skew_and_other_reports_have_no_device_fields(
    ledger: Ledger,
) -> None:
    (ingested,) = ingest(ledger, [item()])
    assert ingested.result is not None
    fields = vars(reported_event(ledger, ingested.result.incident_id))
    assert set(DEVICE_FIELDS) - set(fields) == {"device_clock_skew_ms"}
    single = ledger.execute(envelope_for(REPORTER), item().command)
    assert not set(DEVICE_FIELDS) & set(vars(reported_event(ledger, single.incident_id)))


# ----------------------------------------------------------------- transactions


class FailingRecorder:
    """Stands in front of the store's ``insert_events``: counts each transaction's events,
    and fails those ``fails`` picks (with the exception it returns)."""

    def __init__(
        self, ledger: Ledger, fails: Callable[[int, Sequence[StoredEvent]], Exception | None]
    ) -> None:
        self.transactions: list[int] = []
        self._insert = ledger.recorder.insert_events
        self._fails = fails

    def __call__(self, stored: Sequence[StoredEvent], **kwargs: Any) -> Any:
        error = self._fails(len(self.transactions), stored)
        self.transactions.append(len(stored))
        if error is not None:
            raise error
        return self._insert(stored, **kwargs)


def holds(title: str) -> Callable[[int, Sequence[StoredEvent]], Exception | None]:
    """Fails every transaction holding the report titled ``title``."""
    marker = f'"title":"{title}"'.encode()

    def fails(_n: int, stored: Sequence[StoredEvent]) -> Exception | None:
        bad = any(marker in event.state for event in stored)
        return RuntimeError("the store refused this report") if bad else None

    return fails


@pytest.fixture
def store(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> Callable[..., FailingRecorder]:
    def install(fails: Callable[[int, Sequence[StoredEvent]], Exception | None]) -> FailingRecorder:
        recorder = FailingRecorder(ledger, fails)
        monkeypatch.setattr(ledger.recorder, "insert_events", recorder)
        return recorder

    return install


def test_a_batch_is_saved_in_one_transaction(
    ledger: Ledger, store: Callable[..., FailingRecorder]
) -> None:
    recorder = store(lambda _n, _stored: None)
    assert outcomes(ingest(ledger, [item(f"r{n}") for n in range(300)])) == [CREATED] * 300
    assert recorder.transactions == [300 * PER_REPORT], "300 reports and their records, together"


def test_a_failed_batch_transaction_falls_back_to_smaller_ones(
    ledger: Ledger, store: Callable[..., FailingRecorder]
) -> None:
    recorder = store(lambda n, _stored: RuntimeError("lost the transaction") if n == 0 else None)
    results = ingest(ledger, [item(f"r{n}") for n in range(10)])
    assert outcomes(results) == [CREATED] * 10
    assert recorder.transactions == [30, 15, 15], "the batch, then its two halves"
    assert recorded(ledger) == 10 * PER_REPORT
    positions = [r.result.position for r in results if r.result]
    assert positions == sorted(positions), "in the order of the batch"


def test_a_report_the_store_refuses_fails_the_call_after_the_others_are_saved(
    ledger: Ledger, store: Callable[..., FailingRecorder]
) -> None:
    batch = [item(f"r{n}") for n in range(16)]
    batch[5] = item("poison")
    recorder = store(holds("poison"))
    with pytest.raises(RuntimeError, match="refused this report"):
        ingest(ledger, batch)
    # Halving goes down to the one report: 0-15 and 0-7 fail, 0-3 is saved, 4-7 and 4-5
    # fail, 4 is saved, 5 fails the call; the reports after it are not saved yet.
    per = PER_REPORT
    assert recorder.transactions == [16 * per, 8 * per, 4 * per, 4 * per, 2 * per, per, per]
    assert recorded(ledger) == per * 5  # reports 0-4
    # Sent again without it: the saved ones are duplicates, the rest saved in one go.
    del batch[5]
    again = ingest(ledger, batch)
    assert outcomes(again) == [DUPLICATE] * 5 + [CREATED] * 10
    assert recorder.transactions[7:] == [10 * per], "the recorded five found before the save"
    assert recorded(ledger) == per * 15


def test_a_batch_sent_again_saves_only_its_new_reports_in_one_transaction(
    ledger: Ledger, store: Callable[..., FailingRecorder]
) -> None:
    old = [item(f"old {n}") for n in range(3)]
    first = ingest(ledger, old)
    recorder = store(lambda _n, _stored: None)
    new = [item(f"new {n}") for n in range(4)]
    results = ingest(ledger, [new[0], *old, *new[1:]])
    assert outcomes(results) == [CREATED, *[DUPLICATE] * 3, *[CREATED] * 3]
    assert [r.result for r in results[1:4]] == [r.result for r in first]
    assert recorder.transactions == [4 * PER_REPORT], "the recorded three never reach the insert"
    assert outcomes(ingest(ledger, [*old, *new])) == [DUPLICATE] * 7
    assert recorder.transactions == [4 * PER_REPORT], "a batch sent again whole inserts nothing"


def test_reports_recorded_by_a_racing_call_after_the_check_are_caught_by_the_store(
    ledger: Ledger, store: Callable[..., FailingRecorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    old = [item(f"old {n}") for n in range(3)]
    first = ingest(ledger, old)
    # As if another call recorded them between this call's check and its save.
    monkeypatch.setattr(ledger.positions, "existing", lambda _ids: set())
    recorder = store(lambda _n, _stored: None)
    new = [item(f"new {n}") for n in range(4)]
    results = ingest(ledger, [new[0], *old, *new[1:]])
    assert outcomes(results) == [CREATED, *[DUPLICATE] * 3, *[CREATED] * 3]
    assert [r.result for r in results[1:4]] == [r.result for r in first]
    assert recorder.transactions == [7 * PER_REPORT, 4 * PER_REPORT], (
        "refused for the three recorded, then the four"
    )
    assert recorded(ledger) == PER_REPORT * 7


def test_an_unreachable_store_fails_the_call_at_once(
    ledger: Ledger, store: Callable[..., FailingRecorder]
) -> None:
    recorder = store(lambda _n, _stored: OperationalError("connection refused"))
    with pytest.raises(OperationalError):
        ingest(ledger, [item(f"r{n}") for n in range(8)])
    assert recorder.transactions == [8 * PER_REPORT], (
        "no halving: smaller transactions would fail as well"
    )

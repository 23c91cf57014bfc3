"""The Mukomuko Pilkada demo: ``make demo`` (or ``python -m demo.run``).

Plays a polling day (demo/mukomuko.yaml) through the public API (the typed client
library), each step as its agency with that agency's own token and at its time on the
election-day clock, sent as the event's ``occur_time`` and printed beside the step. A
subscriber on the notifier prints what it receives meanwhile. The day ends with the board,
the vulnerability map (also written as SVG, data/demo-map.svg), the decisions in force,
response times and ``audit verify``.

The stack: ``DEMO_STACK`` (see :mod:`demo.stack`). The day: the ledger refuses an
``occur_time`` in the future, so the polling day is played on a day that has passed,
yesterday unless ``DEMO_DAY`` (or ``--day``) names another; the steps keep their times.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from rich.console import Console
from rich.markup import escape

from demo.stack import (
    DEFAULT_TOKENS_FILE,
    RUN_ROOM,
    Choice,
    Stack,
    StackError,
    choose,
    connect_address,
    listening,
    own_stack,
)
from incidentledger_client import (
    CommandResult,
    DecisionInForce,
    DeviceReport,
    Incident,
    IncidentEvent,
    IngestOutcome,
    IngestSummary,
    LedgerClient,
    LedgerError,
    Location,
    Notification,
    NotifierClient,
    VerifyReport,
)
from incidentledger_client.cli import output
from incidentledger_client.cli.commands.intake import OUTCOMES
from incidentledger_client.cli.config import DEFAULT_ZONE, ConfigError, token_for_agency
from incidentledger_client.i18n import (
    N_,
    Language,
    _,
    current,
    format_clock,
    format_date,
    labels,
    ngettext,
    using,
)
from incidentledger_client.i18n import choose as choose_language
from incidentledger_client.types import DurationStats, ResponseTimes

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = Path(__file__).resolve().parent / "mukomuko.yaml"
#: Commands whose line also shows how long after the report they came (on the day's clock).
MILESTONES = frozenset({"verify", "reject", "merge", "resolve", "approve_closure"})
#: Keys of a step that are not the command's arguments.
STEP_KEYS = frozenset({"at", "as", "do", "save", "say", "incident"})
#: The step of a field device syncing its backlog (``device``, ``reports``: each with its
#: ``at``, when the officer saved it offline, its ``save`` key and ``report``'s arguments).
SYNC = "sync_backlog"
#: How long after the incident the officer saved the report on the device.
SAVED_AFTER = timedelta(minutes=3)
#: The columns of the day's incidents: times after the report, on the day's clock.
COLUMNS = (
    N_("incident"),
    N_("title"),
    N_("status"),
    N_("lead"),
    N_("reported"),
    N_("verified"),
    N_("first action"),
    N_("resolved"),
    N_("closed"),
)
#: The keys of a step (and of the scenario) whose values are text for people, played in the
#: demo's language from the scenario's texts file (``mukomuko.id.yaml``); the others are
#: codes and names (agencies, categories, places), the same in every language. A rejection's
#: ``reason`` is a code (HOAX), any other ``reason`` is text.
TEXT_KEYS = frozenset(
    {"title", "say", "description", "comment", "action", "resolution", "summary", "rationale"}
)
#: The incident states the response-time figures leave out, as the ledger's do.
NOT_SCORED = frozenset({"REJECTED", "MERGED"})


class ScenarioError(Exception):
    """The scenario or the day asked for cannot be played; the message says why."""


@dataclass(frozen=True)
class Scenario:
    title: str
    polling_day: str
    zone: ZoneInfo
    steps: list[dict[str, Any]]
    times: list[clock_time]

    @classmethod
    def load(cls, path: Path, language: Language = "en") -> Scenario:
        """The scenario at ``path``, its texts in ``language`` (see :func:`texts_in`)."""
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        texts = texts_in(path, language)
        steps: list[dict[str, Any]] = [translated(step, texts) for step in data["steps"]]
        times: list[clock_time] = []
        for n, step in enumerate(steps):
            at = step.get("at")
            try:
                times.append(clock_time.fromisoformat(str(at)))
            except ValueError:
                raise ScenarioError(
                    f"step {n + 1}: at must be HH:MM (quoted), got {at!r}"
                ) from None
            if len(times) > 1 and times[-1] < times[-2]:
                raise ScenarioError(f"step {n + 1} at {at} comes before the step it follows")
            for report in step.get("reports", []):
                try:
                    saved = clock_time.fromisoformat(str(report.get("at")))
                except ValueError:
                    raise ScenarioError(
                        f"step {n + 1}: a report's at must be HH:MM (quoted)"
                    ) from None
                if saved > times[-1]:
                    raise ScenarioError(f"step {n + 1}: a report saved after the sync at {at}")
        return cls(
            title=texts.get(str(data.get("title", "demo")), str(data.get("title", "demo"))),
            polling_day=str(data.get("polling_day", "")),
            zone=ZoneInfo(str(data.get("zone", DEFAULT_ZONE))),
            steps=steps,
            times=times,
        )


def texts_path(path: Path, language: Language) -> Path:
    """The scenario's texts in ``language``: ``mukomuko.id.yaml`` beside ``mukomuko.yaml``."""
    return path.with_name(f"{path.stem}.{language}{path.suffix}")


def texts_in(path: Path, language: Language) -> dict[str, str]:
    """The scenario's texts in ``language`` (English text -> translation): the ``texts`` of
    its texts file; none for English or without one (the texts are then played as written)."""
    found = texts_path(path, language)
    if language == "en" or not found.is_file():
        return {}
    texts = yaml.safe_load(found.read_text(encoding="utf-8")).get("texts") or {}
    return {str(k): str(v) for k, v in texts.items()}


def step_texts(step: dict[str, Any]) -> list[str]:
    """The texts for people of a step (what a translation of the scenario translates),
    those of the reports a device syncs (``reports``) included."""
    own = [
        str(value)
        for key, value in step.items()
        if key in TEXT_KEYS or (key == "reason" and step.get("do") != "reject")
    ]
    return own + [text for report in step.get("reports") or () for text in step_texts(report)]


def translated(step: dict[str, Any], texts: dict[str, str]) -> dict[str, Any]:
    """The step with its texts for people in the language of ``texts``."""
    wanted = set(step_texts(step))
    out = {k: texts.get(v, v) if isinstance(v, str) and v in wanted else v for k, v in step.items()}
    if isinstance(step.get("reports"), list):
        out["reports"] = [translated(report, texts) for report in step["reports"]]
    return out


def choose_day(requested: str | None, scenario: Scenario, now: datetime) -> tuple[date, str]:
    """The day the scenario is played on, and why: yesterday in the scenario's zone, or the
    day asked for if its last step is not in the future (the ledger would refuse it)."""
    if not requested:
        return (now.astimezone(scenario.zone) - timedelta(days=1)).date(), N_("yesterday")
    try:
        day = date.fromisoformat(requested)
    except ValueError:
        raise ScenarioError(f"DEMO_DAY must be YYYY-MM-DD, got {requested!r}") from None
    last = datetime.combine(day, scenario.times[-1], scenario.zone)
    if last > now:
        raise ScenarioError(
            f"DEMO_DAY {day}: its last step ({last:%H:%M %Z}) is still to come, and the ledger "
            "refuses an occur_time in the future (LEDGER_MAX_CLOCK_SKEW_SECONDS); choose a day "
            "that has passed, or leave DEMO_DAY unset for yesterday"
        )
    if day.year < 2000:
        raise ScenarioError(f"DEMO_DAY {day} is before the ledger's era (2000)")
    return day, "DEMO_DAY"


def clock(moment: datetime, zone: ZoneInfo) -> str:
    """A time on the election-day clock as the demo prints it: ``06:10 WIB`` (Indonesian
    ``06.10 WIB``)."""
    return format_clock(moment, zone)


def day_text(day: date | str | None) -> str:
    """A day as the demo prints it: ``2026-11-27`` (Indonesian ``27 Nov 2026``); a text
    that is not a day as it is."""
    if day is None:
        return "-"
    try:
        return format_date(day if isinstance(day, date) else date.fromisoformat(day))
    except ValueError:
        return str(day)


def minutes(delta: timedelta) -> str:
    total = round(delta.total_seconds() / 60)
    if total < 60:
        return _("{minutes} min").format(minutes=total)
    return _("{hours} h {minutes:02d} min").format(hours=total // 60, minutes=total % 60)


@dataclass
class DemoResult:
    day: date | None = None
    incidents: dict[str, str] = field(default_factory=dict)  # local key -> incident name
    results: dict[str, CommandResult] = field(default_factory=dict)  # key.report -> result
    occurred: dict[str, datetime] = field(default_factory=dict)  # local key -> reported at
    notifications: list[Notification] = field(default_factory=list)
    verify: VerifyReport | None = None
    decisions: list[DecisionInForce] = field(default_factory=list)
    steps: int = 0
    last_position: int = 0


class Subscriber:
    """Prints every notification it receives, in a thread."""

    def __init__(self, notifier: NotifierClient, console: Console, zone: ZoneInfo) -> None:
        self.received: list[Notification] = []
        self.error: Exception | None = None
        self._console = console
        self._zone = zone
        # The reading thread does not inherit the context's language: it is passed on.
        self._language = current()
        self._subscription = notifier.subscribe(heartbeat_seconds=1)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        self._wait(lambda: bool(self._subscription.cursor), 10.0)

    def _read(self) -> None:
        with using(self._language):
            self._follow()

    def _follow(self) -> None:
        try:
            for note in self._subscription:
                self.received.append(note)
                when = clock(note.event.occur_time, self._zone) if note.event.occur_time else "-"
                self._console.print(
                    "           "
                    + _(
                        "[dim]notifier -> {when}[/dim] [cyan]{type}[/cyan] {title} now {status}"
                    ).format(
                        when=when,
                        type=labels.event_type(note.event.type),
                        title=escape(repr(note.incident.title)),
                        status=labels.status(note.incident.status.value),
                    )
                )
        except LedgerError as error:
            self.error = error

    def _wait(self, done: Callable[[], bool], timeout: float) -> None:
        # The stream's own thread appends; this polls it with a deadline (the demo only
        # waits to print the notifications before the summary, and goes on without them).
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline and self.error is None:
            time.sleep(0.05)

    def wait_for_position(self, position: int, timeout: float = 20.0) -> None:
        self._wait(lambda: any(n.event.position >= position for n in self.received), timeout)

    def close(self) -> None:
        self._subscription.close()
        self._thread.join(5)


def _resolve(value: Any, result: DemoResult) -> Any:
    if isinstance(value, str) and value.startswith("@"):
        key, _, part = value[1:].partition(".")
        if part == "report":
            return result.results[f"{key}.report"].event_id
        return result.incidents[key]
    if isinstance(value, list):
        return [_resolve(v, result) for v in value]
    return value


def _first(events: list[IncidentEvent], kind: str) -> datetime | None:
    return next((e.occur_time for e in events if e.type == kind), None)


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), as the ledger's."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def stats(values: list[float]) -> DurationStats:
    if not values:
        return DurationStats(0, 0.0, 0.0)
    return DurationStats(len(values), percentile(values, 0.5), percentile(values, 0.9))


def day_response_times(
    incidents: dict[str, Incident], events: dict[str, list[IncidentEvent]]
) -> list[ResponseTimes]:
    """The ledger's definitions (Reported -> first ActionLogged, Verified, Resolved, grouped
    by the current lead), computed from the occur times the agencies reported."""
    groups: dict[str, list[list[float]]] = {}
    for key, incident in incidents.items():
        if incident.status.value in NOT_SCORED:
            continue
        reported = _first(events[key], "Reported")
        samples = groups.setdefault(incident.lead_agency, [[], [], []])
        for n, kind in enumerate(("ActionLogged", "Verified", "Resolved")):
            reached = _first(events[key], kind)
            if reached is not None and reported is not None:
                samples[n].append((reached - reported).total_seconds())
    return [
        ResponseTimes(agency, stats(s[0]), stats(s[1]), stats(s[2]))
        for agency, s in sorted(groups.items())
    ]


def play(
    scenario_path: Path,
    stack: Stack,
    console: Console,
    svg_path: Path | None,
    *,
    day: date | None = None,
    why: str = "",
    delay: float = 0.0,
) -> DemoResult:
    """Play the scenario on ``day`` (default yesterday, see :func:`choose_day`) in the
    current language (its narration, and the texts the officers type); return what
    happened."""
    scenario = Scenario.load(scenario_path, current())
    zone = scenario.zone
    result = DemoResult()
    if day is None:
        day, why = choose_day(None, scenario, datetime.now(zone))
    result.day = day
    with ExitStack() as closing:
        clients: dict[str, LedgerClient] = {}

        def client(agency: str) -> LedgerClient:
            if agency not in clients:
                token = token_for_agency(agency, stack.tokens_file)
                clients[agency] = closing.enter_context(LedgerClient(stack.ledger, token))
            return clients[agency]

        console.rule(f"[bold]{escape(scenario.title)}")
        zone_name = datetime.combine(day, scenario.times[0], zone).tzname()
        console.print(
            _(
                "The polling day ({polling_day}) is played on [bold]{day}[/bold] ({why}: the "
                "ledger refuses an occur_time in the future, so the day is one that has passed): "
                "each step at its time on that day's clock ({zone}), sent as the event's "
                "occur_time."
            ).format(
                polling_day=day_text(scenario.polling_day),
                day=day_text(day),
                why=_(why) if why else _("given"),
                zone=zone_name,
            )
        )
        console.print(
            _("Ledger {ledger}, notifier {notifier}.").format(
                ledger=stack.ledger, notifier=stack.notifier
            )
        )
        notifier = closing.enter_context(
            NotifierClient(stack.notifier, token_for_agency("desk_pilkada", stack.tokens_file))
        )
        subscriber = Subscriber(notifier, console, zone)
        try:
            for step, at in zip(scenario.steps, scenario.times, strict=True):
                moment = datetime.combine(day, at, zone)
                if step["do"] == SYNC:
                    _sync_backlog(step, moment, zone, client(step["as"]), result, console)
                    continue
                done = _play_step(step, moment, client, result)
                line = (
                    f"[bold cyan]{clock(moment, zone)}[/bold cyan] [bold]{step['as']:>12}[/bold] "
                    f"{escape(str(step.get('say', step['do'])))} "
                    f"[dim]({step['do']} {output.short_id(done.incident)} v{done.version}"
                )
                key = step.get("incident", step.get("save", ""))
                if step["do"] in MILESTONES and key in result.occurred:
                    line += ", " + _("{minutes} after the report").format(
                        minutes=minutes(moment - result.occurred[key])
                    )
                console.print(line + ")[/dim]")
                if delay:
                    time.sleep(delay)
            subscriber.wait_for_position(result.last_position)
        finally:
            subscriber.close()
            result.notifications = list(subscriber.received)
        end = datetime.combine(day, scenario.times[-1], zone)
        _summary(client("desk_pilkada"), client("inspektorat"), result, end, zone, console)
        result.decisions = _map_and_decisions(
            client("desk_pilkada"), result, zone, console, svg_path
        )
        result.verify = client("inspektorat").verify_ledger()
        console.rule("[bold]audit verify")
        v = result.verify
        # "audit verify: ok (54 events, ...": the command's name and its verdict as they are.
        console.print(
            "audit verify: "
            + ("ok" if v.ok else "[red]DIVERGENCE[/red]")
            + " "
            + f"({output.verified_counts(v.events, v.incidents, v.checkpoints_checked)})"
        )
        if v.divergence is not None:
            console.print(escape(str(v.divergence)))
        console.print(
            _("the subscriber received {count} notifications").format(
                count=len(result.notifications)
            )
        )
    return result


def _play_step(
    step: dict[str, Any],
    moment: datetime,
    client: Callable[[str], LedgerClient],
    result: DemoResult,
) -> CommandResult:
    args = {k: _resolve(v, result) for k, v in step.items() if k not in STEP_KEYS}
    command = step["do"]
    if isinstance(args.get("location"), dict):
        args["location"] = Location(**args["location"])
    if "valid_days" in args:
        args["valid_from"] = moment
        args["valid_until"] = moment + timedelta(days=float(args.pop("valid_days")))
    method = getattr(client(step["as"]), command)
    if command == "report":
        done: CommandResult = method(
            args.pop("title"), args.pop("category"), args.pop("location"), occur_time=moment, **args
        )
        result.incidents[step["save"]] = done.incident
        result.results[f"{step['save']}.report"] = done
        result.occurred[step["save"]] = moment
    else:
        done = method(result.incidents[step["incident"]], occur_time=moment, **args)
    result.steps += 1
    result.last_position = max(result.last_position, done.position)
    return done


def _sync_backlog(
    step: dict[str, Any],
    moment: datetime,
    zone: ZoneInfo,
    ledger: LedgerClient,
    result: DemoResult,
    console: Console,
) -> None:
    """A field device, offline since morning, hands over the reports its officer saved
    (``IngestReports`` through ``iter_ingest_reports``); then, as if the answer had been
    lost, it sends the same backlog again: nothing is recorded twice."""
    reports: list[DeviceReport] = []
    for report in step["reports"]:
        at = datetime.combine(moment.date(), clock_time.fromisoformat(str(report["at"])), zone)
        location = report["location"]
        reports.append(
            DeviceReport(
                report_id=str(uuid.uuid4()),  # made on the device when the officer saved it
                device_id=step["device"],
                record_time=at + SAVED_AFTER,
                title=report["title"],
                category=report["category"],
                location=Location(**location) if isinstance(location, dict) else location,
                severity=report.get("severity", ""),
                description=report.get("description", ""),
                occur_time=at,
            )
        )
    console.print(
        f"[bold cyan]{clock(moment, zone)}[/bold cyan] [bold]{step['as']:>12}[/bold] "
        f"{escape(str(step['say']))} [dim]({SYNC} {step['device']}, "
        + ngettext("{count} report", "{count} reports", len(reports)).format(count=len(reports))
        + ")[/dim]"
    )
    summary = IngestSummary()
    synced = ledger.iter_ingest_reports(reports)
    for spec, report, ingested in zip(step["reports"], reports, synced, strict=True):
        summary.add(ingested)
        if ingested.result is None:
            raise ScenarioError(f"the backlog's report {report.title!r}: {ingested.error}")
        key = spec["save"]
        result.incidents[key] = ingested.result.incident
        result.results[f"{key}.report"] = ingested.result
        result.occurred[key] = report.occur_time or moment
        result.steps += 1
        result.last_position = max(result.last_position, ingested.result.position)
        saved = _("saved offline at {time}:").format(time=clock(report.occur_time or moment, zone))
        console.print(
            f"           [dim]{escape(saved)}[/dim] "
            f"{escape(report.title)} [dim]({_(OUTCOMES[ingested.outcome])} "
            f"{output.short_id(ingested.result.incident)})[/dim]"
        )
    recorded = _("{created} of {total} reports recorded in one call").format(
        created=summary[IngestOutcome.CREATED], total=summary.total
    )
    console.print(f"           [dim]{escape(recorded)}[/dim]")
    again = IngestSummary.of(ledger.iter_ingest_reports(reports))
    resent = _(
        "the phone sends the backlog again (its answer lost): {duplicate} of {total} recorded "
        "before, {created} recorded twice"
    ).format(
        duplicate=again[IngestOutcome.DUPLICATE],
        total=again.total,
        created=again[IngestOutcome.CREATED],
    )
    console.print(f"           [dim]{escape(resent)}[/dim]")


def _summary(
    desk: LedgerClient,
    auditor: LedgerClient,
    result: DemoResult,
    end: datetime,
    zone: ZoneInfo,
    console: Console,
) -> None:
    """The board, the day's incidents and the response times."""
    console.rule("[bold]" + _("Board"))
    incidents = list(desk.list_incidents(min_position=result.last_position))
    open_work = [i for i in incidents if i.status.value in output.BOARD_STATUSES]
    counts = {s: sum(i.status.value == s for i in open_work) for s in output.BOARD_STATUSES}
    reference = desk.reference_data()
    ranks = {v.code: v.rank for v in reference.severities}
    shown = output.sort_board(open_work, "severity", ranks)
    console.print(
        output.board(shown, counts, zone, reference.status_names(), reference.kecamatan_names())
    )
    console.print(
        "[dim]"
        + _(
            "'reported' on the board is when the ledger recorded the report (its own clock, "
            "today); the clock times beside the steps are when things happened on the day."
        )
        + "[/dim]"
    )

    mine = {key: auditor.get_incident(name) for key, name in result.incidents.items()}
    events = {key: list(auditor.incident_events(name)) for key, name in result.incidents.items()}
    console.rule(
        "[bold]" + _("The day, {day}, on the election-day clock").format(day=day_text(result.day))
    )
    rows = []
    for key, incident in mine.items():
        reported = _first(events[key], "Reported")
        after = []
        for kind in ("Verified", "ActionLogged", "Resolved", "ClosureApproved"):
            reached = _first(events[key], kind)
            after.append(
                minutes(reached - reported) if reached is not None and reported else output.NO_DATA
            )
        final = labels.status(incident.status.value)
        if incident.merged_into:
            final += " " + _("into {incident}").format(
                incident=output.short_id(incident.merged_into)
            )
        rows.append(
            [
                output.short_id(incident.name),
                incident.title,
                final,
                incident.lead_agency or "-",
                clock(reported, zone) if reported else "-",
                *after,
            ]
        )
    console.print(
        output.rows_table(
            _(
                "Incidents of the day (times after the report, from the occur_time of each "
                "event; the day ends {end})"
            ).format(end=clock(end, zone)),
            COLUMNS,
            rows,
            no_wrap=["incident", "status", "reported"],
        )
    )

    console.rule("[bold]" + _("Response times"))
    ledger_table = output.response_times_table(
        "agency",
        desk.response_times("agency", min_position=result.last_position),
        _("Response times by agency, from the ledger (record times)"),
    )
    console.print(ledger_table)
    console.print(
        "[dim]"
        + _(
            "The ledger measures response times from record times (its own clock), every "
            "incident it holds: for this demo they show how fast the steps were sent (fractions "
            "of a second, shown as 0:00:00), not the day. The same figures from the occur times "
            "of this day's incidents:"
        )
        + "[/dim]"
    )
    day_table = output.response_times_table(
        "agency",
        day_response_times(mine, events),
        _("Response times by agency, on the election-day clock (occur times)"),
    )
    console.print(day_table)


def _map_and_decisions(
    desk: LedgerClient,
    result: DemoResult,
    zone: ZoneInfo,
    console: Console,
    svg_path: Path | None,
) -> list[DecisionInForce]:
    """The map and the decisions in force now: a past time would ask what the ledger knew
    then (its record clock), and it learnt of the day only during the demo."""
    console.rule("[bold]" + _("Vulnerability map now"))
    vmap = desk.vulnerability_map(min_position=result.last_position)
    console.print(output.map_table(vmap, zone))
    if svg_path is not None:
        svg_path.parent.mkdir(parents=True, exist_ok=True)
        svg_path.write_text(
            output.map_svg(vmap, _("Vulnerability map, Pilkada Mukomuko"), zone),
            encoding="utf-8",
        )
        console.print(_("map written to {path}").format(path=svg_path))
    console.rule("[bold]" + _("Decisions in force now"))
    decisions = desk.decisions_in_force(min_position=result.last_position)
    names = desk.reference_data().kecamatan_names()
    console.print(output.decisions_table(decisions, zone, names))
    return decisions


def tokens_file_for(env: dict[str, str] | os._Environ[str]) -> Path:
    """The development tokens of a stack not the demo's own: ``LEDGER_TOKENS_FILE``, else
    those ``make run`` writes (``$LEDGER_DATA_DIR/credentials/dev-tokens.yaml``)."""
    if env.get("LEDGER_TOKENS_FILE"):
        return Path(env["LEDGER_TOKENS_FILE"])
    if env.get("LEDGER_DATA_DIR"):
        return Path(env["LEDGER_DATA_DIR"]) / "credentials" / "dev-tokens.yaml"
    return DEFAULT_TOKENS_FILE


#: Why the demo plays against a stack it did not start (demo.stack's words; "DEMO_STACK"
#: is the setting's name), marked for the catalog.
GIVEN_REASONS = (N_("make run's stack is up"),)


@contextmanager
def _given(choice: Choice, tokens_file: Path, console: Console) -> Iterator[Stack]:
    silent = [a for a in (choice.ledger, choice.notifier) if not listening(a)]
    if silent:
        raise StackError(
            f"nothing answers on {', '.join(silent)} ({choice.why}); start the stack (make run) "
            "or leave DEMO_STACK unset for a stack of the demo's own"
        )
    if not tokens_file.is_file():
        raise StackError(
            f"no development tokens at {tokens_file}: the demo acts as each agency with the "
            "tokens its ledger wrote on its first start; set LEDGER_TOKENS_FILE to that file "
            "($LEDGER_DATA_DIR/credentials/dev-tokens.yaml of the stack)"
        )
    console.print(
        "[yellow]"
        + _("playing against {ledger}, {notifier}").format(
            ledger=choice.ledger, notifier=choice.notifier
        )
        + f"[/yellow] ({_(choice.why)})"
    )
    # make run's situation room, when it answers (SITUATION_ROOM_LISTEN, default 8080).
    room = connect_address(os.environ.get("SITUATION_ROOM_LISTEN") or RUN_ROOM)
    yield Stack(choice.ledger, choice.notifier, tokens_file, room if listening(room) else "")


def show_room(stack: Stack, console: Console) -> None:
    """Where the situation room shows the day, and how the coordinator signs in to it."""
    token = token_for_agency("desk_pilkada", stack.tokens_file)
    console.rule("[bold]" + _("The situation room"))
    console.print(
        _("The situation room shows the day: [bold]http://{address}/[/bold]").format(
            address=stack.room
        )
    )
    console.print(
        _("Sign in as the coordinator: agency {agency}, token {token}").format(
            agency="Desk Pilkada (desk_pilkada)", token=token
        )
    )


def wait_for_stop(console: Console) -> None:
    """Until Ctrl-C or SIGTERM (both then stop the demo's own stack in order)."""

    def stop(_signal: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    console.print(_("Ctrl-C stops the stack and the page."))
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            signal.pause()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo.run", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--scenario", type=Path, default=SCENARIO)
    parser.add_argument(
        "--day",
        default=os.environ.get("DEMO_DAY"),
        help="YYYY-MM-DD to play the polling day on, a day that has passed (env DEMO_DAY; "
        "default yesterday)",
    )
    parser.add_argument("--svg", type=Path, default=ROOT / "data" / "demo-map.svg")
    parser.add_argument("--delay", type=float, default=0.3, help="seconds between steps")
    parser.add_argument(
        "--lang",
        help="id or en: the language of the narration, the tables and the texts the officers "
        "type (else LEDGER_LANG, then the locale, as ledgerctl)",
    )
    parser.add_argument(
        "--stay",
        action="store_true",
        help="on a stack of its own, start the situation room too and keep it showing the day "
        "until Ctrl-C (make demo does)",
    )
    args = parser.parse_args(argv)
    console = Console()
    try:
        language = choose_language(args.lang, os.environ)
    except ValueError as error:
        console.print(f"[red]the demo cannot run: {escape(str(error))}")
        return 2
    with using(language):
        return _run(args, console)


def _run(args: argparse.Namespace, console: Console) -> int:
    try:
        scenario = Scenario.load(args.scenario, current())
        day, why = choose_day(args.day, scenario, datetime.now(scenario.zone))
        choice = choose(os.environ.get("DEMO_STACK"), os.environ)
        stack: AbstractContextManager[Stack]
        if choice.own:
            console.print(f"[yellow]{choice.why}[/yellow]")
            stack = own_stack(console, room=args.stay)
        else:
            stack = _given(choice, tokens_file_for(os.environ), console)
        with stack as running:
            result = play(
                args.scenario, running, console, args.svg, day=day, why=why, delay=args.delay
            )
            if running.room:
                show_room(running, console)
                if choice.own:
                    wait_for_stop(console)
    except StackError as error:
        console.print(f"[red]the demo's stack: {escape(str(error))}")
        return 2
    except (ScenarioError, ConfigError) as error:
        console.print(f"[red]the demo cannot run: {escape(str(error))}")
        return 2
    except LedgerError as error:
        console.print(f"[red]the demo failed: {escape(str(error))}")
        return 1
    except KeyboardInterrupt:
        console.print("[red]interrupted")  # a stack of its own was stopped on the way out
        return 130
    return 0 if result.verify is not None and result.verify.ok else 1


if __name__ == "__main__":
    sys.exit(main())

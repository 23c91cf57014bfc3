"""A field device's backlog as a JSON Lines file: one report per line, read into
:class:`~incidentledger_client.types.DeviceReport` for
:meth:`~incidentledger_client.LedgerClient.ingest_reports`.

Each line is one JSON object in the form of the API's ``DeviceReport`` (as ``grpcurl``
writes it, see docs/api.md "Field intake"): ``device_report_id`` (the UUID the device made
when the officer saved the report), ``device_id``, ``device_record_time`` (ISO 8601 with a
zone), ``title``, ``category``, ``location`` (``kecamatan``, optional ``desa``, ``tps``,
``latitude``, ``longitude``), and optionally ``description``, ``severity``, ``occur_time``,
``correlation_id`` and ``personal_data`` (``reporter``, ``reporter_anonymous``,
``witnesses``; each person ``name``, ``phone``, ``nik``, ``address``), which the ledger
seals. Blank lines are skipped, and a byte order mark at the start (which
Windows editors write in a UTF-8 file) is not part of the first line. The file is read whole
before anything is sent (:func:`read_backlog`), so a line that cannot be read refuses the
file, naming the line; what the ledger refuses (an unknown category, a title too long) is
that report's ``INVALID`` result, after the others are sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from incidentledger_client.personal import Person, PersonalData
from incidentledger_client.types import DeviceReport, Location

#: The fields a line may have (unknown ones are refused: a typo would lose data silently).
FIELDS = frozenset(
    {
        "device_report_id",
        "device_id",
        "device_record_time",
        "title",
        "category",
        "location",
        "description",
        "severity",
        "occur_time",
        "correlation_id",
        "personal_data",
    }
)
REQUIRED = ("device_report_id", "device_id", "device_record_time", "title", "category", "location")
LOCATION_FIELDS = frozenset({"kecamatan", "desa", "tps", "latitude", "longitude"})
#: ``personal_data`` as the API's ``PersonalData`` writes it, and each person in it.
PERSONAL_FIELDS = frozenset({"reporter", "reporter_anonymous", "witnesses"})
PERSON_FIELDS = frozenset({"name", "phone", "nik", "address"})


class BacklogError(ValueError):
    """A line of the backlog that cannot be read: ``line`` (from 1), ``field`` (or ``""``
    when the line is not a JSON object) and ``problem``, one of ``not_json``,
    ``not_object``, ``missing``, ``unknown``, ``not_text``, ``not_time``, ``not_number``,
    ``not_boolean``, ``not_list``, ``repeated`` (a report id of the device used by an earlier
    line for other content).

    :func:`read_backlog` raises the first one, with every unreadable line of the file in
    ``lines`` (itself first), so that all of them are fixed at once, not one per try, and
    the reports of the lines that could be read in ``readable`` (to send them without the
    others, as ``ledgerctl ingest --skip-unreadable`` does)."""

    def __init__(self, line: int, field: str, problem: str) -> None:
        super().__init__(f"line {line}: {field or 'the line'}: {problem}")
        self.line = line
        self.field = field
        self.problem = problem
        self.lines: tuple[BacklogError, ...] = (self,)
        self.readable: tuple[BacklogLine, ...] = ()


@dataclass(frozen=True)
class BacklogLine:
    """A report of the backlog and the line it is on (from 1)."""

    line: int
    report: DeviceReport


def read_backlog(path: Path | str) -> list[BacklogLine]:
    """Every report of the file, in order (each a :class:`BacklogLine`: its ``line`` number
    and its ``report``, a :class:`~incidentledger_client.types.DeviceReport`; send
    ``[line.report for line in lines]``); raises :class:`BacklogError` when a line cannot be
    read: the first such line, with all of them in its ``lines``."""
    # utf-8-sig: the byte order mark of a file saved by a Windows editor is dropped, not read as
    # the first line's first character (which made the line "not JSON").
    with Path(path).open(encoding="utf-8-sig") as file:
        reports: list[BacklogLine] = []
        unreadable: list[BacklogError] = []
        seen: dict[tuple[str, str], DeviceReport] = {}
        for number, text in enumerate(file, start=1):
            try:
                line = _line(number, text)
                if line is not None:
                    _once(line, seen)
            except BacklogError as error:
                unreadable.append(error)
                continue
            if line is not None:
                reports.append(line)
    if unreadable:
        first = unreadable[0]
        first.lines = tuple(unreadable)
        first.readable = tuple(reports)
        raise first
    return reports


def parse_lines(lines: Iterable[str]) -> Iterator[BacklogLine]:
    """The reports of these lines (numbered from 1), skipping blank ones; raises
    :class:`BacklogError` at the first line that cannot be read."""
    for number, text in enumerate(lines, start=1):
        line = _line(number, text)
        if line is not None:
            yield line


def _line(number: int, text: str) -> BacklogLine | None:
    """The report on line ``number``, None for a blank line."""
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise BacklogError(number, "", "not_json") from None
    if not isinstance(value, dict):
        raise BacklogError(number, "", "not_object")
    return BacklogLine(number, _report(number, value))


def _report(line: int, value: dict[str, Any]) -> DeviceReport:
    for name in value:
        if name not in FIELDS:
            raise BacklogError(line, name, "unknown")
    for name in REQUIRED:
        if value.get(name) in (None, ""):
            raise BacklogError(line, name, "missing")
    location = value["location"]
    if not isinstance(location, dict):
        raise BacklogError(line, "location", "not_object")
    for name in location:
        if name not in LOCATION_FIELDS:
            raise BacklogError(line, f"location.{name}", "unknown")
    occur = value.get("occur_time")
    return DeviceReport(
        report_id=_text(line, value, "device_report_id"),
        device_id=_text(line, value, "device_id"),
        record_time=_time(line, "device_record_time", value["device_record_time"]),
        title=_text(line, value, "title"),
        category=_text(line, value, "category"),
        location=Location(
            _text(line, location, "kecamatan", "location."),
            desa=_text(line, location, "desa", "location."),
            tps=_text(line, location, "tps", "location."),
            latitude=_number(line, location, "latitude"),
            longitude=_number(line, location, "longitude"),
        ),
        description=_text(line, value, "description"),
        severity=_text(line, value, "severity"),
        occur_time=_time(line, "occur_time", occur) if occur not in (None, "") else None,
        correlation_id=_text(line, value, "correlation_id"),
        personal_data=_personal_data(line, value.get("personal_data")),
    )


def _once(line: BacklogLine, seen: dict[tuple[str, str], DeviceReport]) -> None:
    """A report id of the device written twice with other content: the ledger recorded
    whichever came first and refused the other for good (a changed report needs a new id),
    which could not be put right on the phone. Refused with the file, before anything is
    sent. The same line twice is the same report (answered as recorded before)."""
    report = line.report
    try:
        report_id = str(UUID(report.report_id))
    except ValueError:
        report_id = report.report_id  # the ledger says what is wrong with it
    key = (report.device_id, report_id)
    first = seen.setdefault(key, report)
    if first != report:
        raise BacklogError(line.line, "device_report_id", "repeated")


def _personal_data(line: int, value: Any) -> PersonalData | None:
    """The people a device's report names (sealed by the ledger): a caller's or a witness's
    phone noted at a TPS belongs here, never in the description, which is not sealed."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BacklogError(line, "personal_data", "not_object")
    for name in value:
        if name not in PERSONAL_FIELDS:
            raise BacklogError(line, f"personal_data.{name}", "unknown")
    anonymous = value.get("reporter_anonymous", False)
    if not isinstance(anonymous, bool):
        raise BacklogError(line, "personal_data.reporter_anonymous", "not_boolean")
    witnesses = value.get("witnesses", [])
    if not isinstance(witnesses, list):
        raise BacklogError(line, "personal_data.witnesses", "not_list")
    reporter = value.get("reporter")
    return PersonalData(
        reporter=None if reporter is None else _person(line, reporter, "personal_data.reporter"),
        anonymous=anonymous,
        witnesses=tuple(
            _person(line, w, f"personal_data.witnesses[{n}]") for n, w in enumerate(witnesses)
        ),
    )


def _person(line: int, value: Any, field: str) -> Person:
    if not isinstance(value, dict):
        raise BacklogError(line, field, "not_object")
    for name in value:
        if name not in PERSON_FIELDS:
            raise BacklogError(line, f"{field}.{name}", "unknown")
    return Person(
        _text(line, value, "name", f"{field}."),
        phone=_text(line, value, "phone", f"{field}."),
        nik=_text(line, value, "nik", f"{field}."),
        address=_text(line, value, "address", f"{field}."),
    )


def _text(line: int, value: dict[str, Any], name: str, prefix: str = "") -> str:
    text = value.get(name, "")
    if not isinstance(text, str):
        raise BacklogError(line, prefix + name, "not_text")
    return text


def _time(line: int, name: str, text: Any) -> datetime:
    try:
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise BacklogError(line, name, "not_time") from None
    if not isinstance(text, str) or moment.tzinfo is None:
        raise BacklogError(line, name, "not_time")  # a device's time without a zone is a guess
    return moment


def _number(line: int, location: dict[str, Any], name: str) -> float | None:
    value = location.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BacklogError(line, f"location.{name}", "not_number")
    return float(value)

"""The API documentation cannot go stale: docs/api.md and docs/events.md against the code.

Every error the services raise is found in their source (each construction of a
:class:`LedgerError` class, with its ``reason=`` or the class's default) and must be a row
of docs/api.md's table with the same status code and at least the service that raises it;
every row must be raised somewhere. Every event type, recorded by real commands, must have
its section in docs/events.md listing exactly the fields of its ``payload_json``.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import LedgerError
from services.ledger.application import Ledger, StoredIncidentEvent
from services.ledger.domain.incident import Incident, incident_event_classes
from services.ledger.wire import event_to_proto
from tests.support import reference, store_environment
from tests.unit.test_audit_encoding import build_history

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"
API_DOC = ROOT / "docs" / "api.md"
EVENTS_DOC = ROOT / "docs" / "events.md"
# Which service's answers the code under services/<dir>/ ends up in.
# A module of services/common may serve either service (or both): its errors are checked
# against the table's codes, and the table says which service raises them.
SERVICES_OF_DIR: dict[str, set[str]] = {
    "ledger": {"ledger"},
    "notifier": {"notifier"},
    "common": set(),
}
_ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]*)` \| `([A-Z_]+)` \| ([a-z, ]+) \| (.+) \|$")


@dataclass(frozen=True)
class Raised:
    reason: str
    code: str
    services: frozenset[str]
    where: str


@dataclass(frozen=True)
class Row:
    code: str
    services: frozenset[str]


def error_classes() -> dict[str, type[LedgerError]]:
    found: dict[str, type[LedgerError]] = {"LedgerError": LedgerError}
    pending: list[type[LedgerError]] = [LedgerError]
    while pending:
        for sub in pending.pop().__subclasses__():
            found[sub.__name__] = sub
            pending.append(sub)
    return found


def default_reason(cls: type[LedgerError]) -> str:
    """The reason of ``cls(...)`` called without ``reason=``."""
    parameter = inspect.signature(cls.__init__).parameters.get("reason")
    if parameter is not None and isinstance(parameter.default, str):
        return parameter.default
    return cls.reason


def raised_errors() -> list[Raised]:
    """Every error construction under services/, with its reason, code and services."""
    classes = error_classes()
    found: list[Raised] = []
    for path in sorted(SERVICES.rglob("*.py")):
        relative = path.relative_to(SERVICES)
        services = frozenset(SERVICES_OF_DIR.get(relative.parts[0], {"ledger", "notifier"}))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            cls = classes.get(name or "")
            if cls is None:
                continue
            where = f"services/{relative}:{node.lineno}"
            given = next((k.value for k in node.keywords if k.arg == "reason"), None)
            if given is None:
                reason = default_reason(cls)
            else:
                assert isinstance(given, ast.Constant) and isinstance(given.value, str), (
                    f"{where}: a reason must be a string literal, so that docs/api.md can be "
                    "checked against it"
                )
                reason = given.value
            found.append(Raised(reason, cls.code, services, where))
    return found


def documented() -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for line in API_DOC.read_text(encoding="utf-8").splitlines():
        match = _ROW.match(line)
        if match is None:
            continue
        reason, code, services, _ = match.groups()
        assert reason not in rows, f"docs/api.md lists {reason} twice"
        rows[reason] = Row(code, frozenset(s.strip() for s in services.split(",")))
    return rows


def test_the_scan_finds_errors_of_both_services() -> None:
    raised = raised_errors()
    reasons = {r.reason for r in raised}
    # A few known ones of each kind: class defaults, explicit reasons, both services.
    assert {"INVALID_FIELD", "VERSION_CONFLICT", "ROLE_REQUIRED", "NOT_OWNER"} <= reasons
    assert {"CURSOR_EXPIRED", "SHUTTING_DOWN", "STORE_UNAVAILABLE"} <= reasons
    assert len(documented()) > 40


def test_every_reason_raised_is_in_the_error_table_with_its_code_and_service() -> None:
    rows = documented()
    problems = []
    for raised in raised_errors():
        row = rows.get(raised.reason)
        if row is None:
            problems.append(f"{raised.where}: {raised.reason} is not in docs/api.md")
        elif row.code != raised.code:
            problems.append(
                f"{raised.where}: {raised.reason} is {raised.code}, docs/api.md says {row.code}"
            )
        elif raised.services and not raised.services <= row.services:
            problems.append(
                f"{raised.where}: {raised.reason} comes from {sorted(raised.services)}, "
                f"docs/api.md says {sorted(row.services)}"
            )
    assert not problems, "\n".join(problems)


def test_every_reason_in_the_error_table_is_raised() -> None:
    stale = set(documented()) - {r.reason for r in raised_errors()}
    assert not stale, f"docs/api.md lists reasons nothing raises: {sorted(stale)}"


def test_the_error_domains_are_the_services_own() -> None:
    from services.ledger.server import ERROR_DOMAIN as LEDGER_DOMAIN
    from services.notifier.server import ERROR_DOMAIN as NOTIFIER_DOMAIN

    text = API_DOC.read_text(encoding="utf-8")
    assert f"| `{LEDGER_DOMAIN}` |" in text
    assert f"| `{NOTIFIER_DOMAIN}` |" in text
    assert LEDGER_DOMAIN != NOTIFIER_DOMAIN


def documented_payloads() -> dict[str, set[str]]:
    """The fields docs/events.md lists under each ``### `Type``` heading."""
    sections: dict[str, set[str]] = {}
    current: set[str] | None = None
    for line in EVENTS_DOC.read_text(encoding="utf-8").splitlines():
        heading = re.fullmatch(r"### `(\w+)`", line)
        if heading is not None:
            assert heading.group(1) not in sections, f"{heading.group(1)} is documented twice"
            current = sections[heading.group(1)] = set()
        elif current is not None and (row := re.match(r"\| `(\w+)` \|", line)) is not None:
            current.add(row.group(1))
    return sections


def recorded_payloads(tmp_path: Path) -> dict[str, set[str]]:
    """The payload fields of every event type, as ``payload_json`` carries them."""
    with store_environment("popo", tmp_path) as store_env:
        ledger = Ledger(reference(), env=store_env)
        try:
            build_history(ledger, extra=0)
            found: dict[str, set[str]] = {}
            for n in ledger.recorder.select_notifications(1, 10_000):
                event = ledger.mapper.to_domain_event(n)
                if isinstance(event, Incident.Event):
                    message = event_to_proto(StoredIncidentEvent(event, n.id))
                    found.setdefault(message.type, set()).update(json.loads(message.payload_json))
            return found
        finally:
            ledger.close()


def test_every_event_type_and_its_payload_is_in_events_md(tmp_path: Path) -> None:
    recorded = recorded_payloads(tmp_path)
    assert set(recorded) == {cls.__name__ for cls in incident_event_classes()}
    assert documented_payloads() == recorded


def test_ledgerctl_decides_for_every_exhausted_reason_whether_waiting_helps() -> None:
    """ledgerctl's exit 6 says "try again later". A RESOURCE_EXHAUSTED that no wait cures (a
    file over the limit, a 51st webhook) must say otherwise, so each of them in the table is
    decided here: a new one fails this test until someone says which it is."""
    from incidentledger_client import DataLoss, ResourceExhausted
    from incidentledger_client.cli.errors import exit_code_for

    waiting_helps = {
        "RATE_LIMITED",
        "TOO_MANY_STREAMS",
        "AUTH_THROTTLED",
        "EVIDENCE_STORE_FULL",
    }
    never = {"EVIDENCE_TOO_LARGE": 2, "INGEST_TOO_LARGE": 2, "TOO_MANY_WEBHOOKS": 4}
    exhausted = {r for r, row in documented().items() if row.code == "RESOURCE_EXHAUSTED"}
    assert exhausted == waiting_helps | set(never), exhausted
    for reason in exhausted:
        code = exit_code_for(ResourceExhausted("RESOURCE_EXHAUSTED", reason, "over"))
        assert code == never.get(reason, 6), (reason, code)
    for reason, row in documented().items():
        if row.code == "DATA_LOSS":
            assert exit_code_for(DataLoss("DATA_LOSS", reason, "changed")) == 7, reason

"""The projections' tables: their columns, the statements that create them and the
upserts that write a batch's rows."""

from __future__ import annotations

from collections.abc import Sequence

INCIDENT_COLUMNS = (
    "incident_id",
    "seq",
    "version",
    "status",
    "title",
    "category",
    "severity",
    "severity_event_id",
    "report_event_id",
    "kecamatan",
    "desa",
    "lead_agency",
    "supporting_agencies",
    "pending_handover_to",
    "close_requested",
    "escalation_level",
    "reporter_agency",
    "reported_at",
    "occurred_at",
    "acknowledged_at",
    "verified_at",
    "resolved_at",
    "last_change_at",
    "last_change_position",
    "last_event_type",
    # Added after the others (ADDED_COLUMNS): an existing table gains it with "".
    "reference",
)
DECISION_COLUMNS = (
    "event_id",
    "incident_id",
    "position",
    "summary",
    "forum",
    "rationale",
    "deciding_agencies",
    "kecamatan",
    "desa",
    "valid_from",
    "valid_until",
    "recorded_at",
    "recorded_by",
)
_INT_COLUMNS = frozenset(
    {
        "seq",
        "version",
        "close_requested",
        "escalation_level",
        "reported_at",
        "occurred_at",
        "last_change_at",
        "last_change_position",
        "position",
        "valid_from",
        "valid_until",
        "recorded_at",
    }
)
_NULLABLE = frozenset({"acknowledged_at", "verified_at", "resolved_at"})


def _ddl(table: str, columns: Sequence[str], key: str) -> str:
    def kind(column: str) -> str:
        if column in _NULLABLE:
            return "BIGINT"
        if column in _INT_COLUMNS:
            return "BIGINT NOT NULL"
        return "TEXT NOT NULL"

    body = ", ".join(f"{c} {kind(c)}{' PRIMARY KEY' if c == key else ''}" for c in columns)
    return f"CREATE TABLE IF NOT EXISTS {table} ({body})"


SCHEMA = (
    _ddl("proj_incident", INCIDENT_COLUMNS, "incident_id"),
    "CREATE UNIQUE INDEX IF NOT EXISTS proj_incident_seq ON proj_incident (seq)",
    _ddl("proj_decision", DECISION_COLUMNS, "event_id"),
    "CREATE INDEX IF NOT EXISTS proj_decision_validity ON proj_decision (valid_until)",
    "CREATE TABLE IF NOT EXISTS projection_position"
    " (id INTEGER PRIMARY KEY, position BIGINT NOT NULL)",
)
TABLES = ("proj_incident", "proj_decision")
#: Columns added to a table after it was first created: a table made before gains each,
#: empty (``''``), when the schema is created. Empty is what those rows hold anyway: the
#: reference code of an incident reported before codes existed.
ADDED_COLUMNS = (("proj_incident", "reference"),)


def _upsert(table: str, columns: Sequence[str], key: str) -> str:
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != key)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608 - names are constants
        f"VALUES ({', '.join('?' for _ in columns)}) "
        f"ON CONFLICT ({key}) DO UPDATE SET {updates}"
    )


UPSERT_INCIDENT = _upsert("proj_incident", INCIDENT_COLUMNS, "incident_id")
UPSERT_DECISION = _upsert("proj_decision", DECISION_COLUMNS, "event_id")
SELECT_CHUNK = 500

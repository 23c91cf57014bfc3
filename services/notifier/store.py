"""The notifier's durable state: webhooks, delivery jobs (with dead letters) and the delivery log.

A job is written, one per matching webhook and event, before the stream message
is acknowledged: that is the durable hand-off. Jobs are claimed with a lease, so
a crashed worker's jobs return to the queue, and several notifier replicas can
share the work. A job waits while an earlier job of the same webhook and
incident is still pending, so deliveries keep each incident's order.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import structlog

from services.common.sql import Database

log = structlog.get_logger(__name__)

PENDING, INFLIGHT, DELIVERED, DEAD, CANCELLED = (
    "pending",
    "inflight",
    "delivered",
    "dead",
    "cancelled",
)


def _schema(dialect: str) -> list[str]:
    serial = (
        "BIGSERIAL PRIMARY KEY" if dialect == "postgres" else "INTEGER PRIMARY KEY AUTOINCREMENT"
    )
    real = "DOUBLE PRECISION" if dialect == "postgres" else "REAL"
    return [
        "CREATE TABLE IF NOT EXISTS webhooks ("
        " id TEXT PRIMARY KEY, agency TEXT NOT NULL, url TEXT NOT NULL, secret TEXT NOT NULL,"
        f" filter TEXT NOT NULL, created_at {real} NOT NULL, request_key TEXT UNIQUE NOT NULL,"
        " fingerprint TEXT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0)",
        "CREATE TABLE IF NOT EXISTS delivery_jobs ("
        " id TEXT PRIMARY KEY, webhook_id TEXT NOT NULL, stream_seq BIGINT NOT NULL,"
        " position BIGINT NOT NULL, event_id TEXT NOT NULL, incident TEXT NOT NULL,"
        " agency TEXT NOT NULL, payload TEXT NOT NULL, status TEXT NOT NULL,"
        f" attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at {real} NOT NULL,"
        f" lease_until {real}, first_attempt_at {real}, last_attempt_at {real},"
        " last_error TEXT NOT NULL DEFAULT '', UNIQUE (webhook_id, stream_seq))",
        "CREATE INDEX IF NOT EXISTS delivery_jobs_due ON delivery_jobs (status, next_attempt_at)",
        "CREATE INDEX IF NOT EXISTS delivery_jobs_order"
        " ON delivery_jobs (webhook_id, incident, stream_seq)",
        f"CREATE TABLE IF NOT EXISTS delivery_log ( id {serial}, event_id TEXT NOT NULL,"
        " incident TEXT NOT NULL, position BIGINT NOT NULL, agency TEXT NOT NULL,"
        " channel TEXT NOT NULL, target TEXT NOT NULL, outcome TEXT NOT NULL,"
        f" attempt INTEGER NOT NULL, error TEXT NOT NULL, at {real} NOT NULL)",
        "CREATE INDEX IF NOT EXISTS delivery_log_incident ON delivery_log (incident, id)",
        "CREATE INDEX IF NOT EXISTS delivery_log_agency ON delivery_log (agency, id)",
    ]


@dataclass(frozen=True)
class WebhookRow:
    id: str
    agency: str
    url: str
    secret: str
    filter: str
    created_at: float
    fingerprint: str


@dataclass(frozen=True)
class NewJob:
    webhook_id: str
    stream_seq: int
    position: int
    event_id: str
    incident: str
    agency: str
    payload: str


@dataclass(frozen=True)
class Job:
    id: str
    webhook_id: str
    stream_seq: int
    position: int
    event_id: str
    incident: str
    agency: str
    payload: str
    attempts: int
    first_attempt_at: float | None
    last_attempt_at: float | None
    last_error: str


@dataclass(frozen=True)
class LogEntry:
    event_id: str
    incident: str
    position: int
    agency: str
    channel: str
    target: str
    outcome: str
    attempt: int
    error: str
    at: float


_JOB_COLUMNS = (
    "id, webhook_id, stream_seq, position, event_id, incident, agency, payload, attempts,"
    " first_attempt_at, last_attempt_at, last_error"
)


class NotifierStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def create_schema(self) -> None:
        with self._db.transaction() as cur:
            for statement in _schema(self._db.dialect):
                cur.execute(statement)

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ webhooks

    def add_webhook(
        self,
        *,
        agency: str,
        url: str,
        secret: str,
        filter_json: str,
        request_key: str,
        fingerprint: str,
    ) -> WebhookRow:
        """The new webhook, or the one an earlier request with the same key created."""
        row = WebhookRow(
            f"wh_{uuid.uuid4().hex}", agency, url, secret, filter_json, time.time(), fingerprint
        )
        with self._db.transaction() as cur:
            cur.execute(
                self._db.q(
                    "INSERT INTO webhooks (id, agency, url, secret, filter, created_at,"
                    " request_key, fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (request_key) DO NOTHING"
                ),
                (
                    row.id,
                    agency,
                    url,
                    secret,
                    filter_json,
                    row.created_at,
                    request_key,
                    fingerprint,
                ),
            )
            cur.execute(
                self._db.q(
                    "SELECT id, agency, url, secret, filter, created_at, fingerprint"
                    " FROM webhooks WHERE request_key = ?"
                ),
                (request_key,),
            )
            found = cur.fetchone()
        return WebhookRow(*found)

    def webhooks(
        self, agency: str | None = None, *, after: str = "", limit: int = 1000
    ) -> list[WebhookRow]:
        sql = (
            "SELECT id, agency, url, secret, filter, created_at, fingerprint FROM webhooks"
            " WHERE deleted = 0 AND id > ?"
        )
        params: list[object] = [after]
        if agency is not None:
            sql += " AND agency = ?"
            params.append(agency)
        sql += " ORDER BY id LIMIT ?"
        params.append(limit)
        with self._db.transaction() as cur:
            cur.execute(self._db.q(sql), params)
            return [WebhookRow(*r) for r in cur.fetchall()]

    def webhook(self, webhook_id: str) -> WebhookRow | None:
        with self._db.transaction() as cur:
            cur.execute(
                self._db.q(
                    "SELECT id, agency, url, secret, filter, created_at, fingerprint"
                    " FROM webhooks WHERE id = ? AND deleted = 0"
                ),
                (webhook_id,),
            )
            found = cur.fetchone()
        return WebhookRow(*found) if found else None

    def delete_webhook(self, webhook_id: str) -> None:
        with self._db.transaction() as cur:
            cur.execute(self._db.q("UPDATE webhooks SET deleted = 1 WHERE id = ?"), (webhook_id,))
            cur.execute(
                self._db.q(
                    "UPDATE delivery_jobs SET status = ? WHERE webhook_id = ? AND status IN (?, ?)"
                ),
                (CANCELLED, webhook_id, PENDING, DEAD),
            )

    # ---------------------------------------------------------------------- jobs

    def add_jobs(self, jobs: Iterable[NewJob]) -> None:
        """Store new jobs; a job already there (a redelivered message) is left alone."""
        now = time.time()
        rows = [
            (
                f"dl_{uuid.uuid4().hex}",
                j.webhook_id,
                j.stream_seq,
                j.position,
                j.event_id,
                j.incident,
                j.agency,
                j.payload,
                PENDING,
                now,
            )
            for j in jobs
        ]
        if not rows:
            return
        with self._db.transaction() as cur:
            cur.executemany(
                self._db.q(
                    "INSERT INTO delivery_jobs (id, webhook_id, stream_seq, position, event_id,"
                    " incident, agency, payload, status, next_attempt_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (webhook_id, stream_seq) DO NOTHING"
                ),
                rows,
            )

    def claim_due(self, limit: int, lease_seconds: float) -> list[Job]:
        """Due jobs whose incident has no earlier job still waiting, leased to the caller."""
        now = time.time()
        with self._db.transaction() as cur:
            cur.execute(
                self._db.q(
                    f"SELECT {_JOB_COLUMNS} FROM delivery_jobs j"  # noqa: S608
                    " WHERE ((j.status = ? AND j.next_attempt_at <= ?)"
                    " OR (j.status = ? AND j.lease_until < ?))"
                    " AND NOT EXISTS (SELECT 1 FROM delivery_jobs e"
                    " WHERE e.webhook_id = j.webhook_id AND e.incident = j.incident"
                    " AND e.stream_seq < j.stream_seq AND e.status IN (?, ?))"
                    " ORDER BY j.stream_seq LIMIT ? FOR UPDATE SKIP LOCKED"
                ),
                (PENDING, now, INFLIGHT, now, PENDING, INFLIGHT, limit),
            )
            jobs = [Job(*r) for r in cur.fetchall()]
            cur.executemany(
                self._db.q("UPDATE delivery_jobs SET status = ?, lease_until = ? WHERE id = ?"),
                [(INFLIGHT, now + lease_seconds, j.id) for j in jobs],
            )
        return jobs

    def finish(
        self, job: Job, *, outcome: str, attempt: int, error: str, retry_at: float, entry: LogEntry
    ) -> None:
        """Record an attempt: delivered, failed (retry at ``retry_at``) or dead letter."""
        status = {"delivered": DELIVERED, "failed": PENDING, "dead_letter": DEAD}[outcome]
        now = entry.at
        with self._db.transaction() as cur:
            cur.execute(
                self._db.q(
                    "UPDATE delivery_jobs SET status = ?, attempts = ?, next_attempt_at = ?,"
                    " lease_until = NULL, last_attempt_at = ?, last_error = ?,"
                    " first_attempt_at = COALESCE(first_attempt_at, ?) WHERE id = ?"
                ),
                (status, attempt, retry_at, now, error, now, job.id),
            )
            self._insert_log(cur, [entry])

    def dead_letters(self, agency: str | None, *, after: str = "", limit: int = 100) -> list[Job]:
        sql = f"SELECT {_JOB_COLUMNS} FROM delivery_jobs WHERE status = ? AND id > ?"  # noqa: S608
        params: list[object] = [DEAD, after]
        if agency is not None:
            sql += " AND agency = ?"
            params.append(agency)
        sql += " ORDER BY id LIMIT ?"
        params.append(limit)
        with self._db.transaction() as cur:
            cur.execute(self._db.q(sql), params)
            return [Job(*r) for r in cur.fetchall()]

    def dead_letter_count(self) -> int:
        """How many dead letters wait for a replay."""
        with self._db.transaction() as cur:
            cur.execute(self._db.q("SELECT COUNT(*) FROM delivery_jobs WHERE status = ?"), (DEAD,))
            row = cur.fetchone()
        return int(row[0]) if row else 0

    def dead_letter(self, job_id: str) -> Job | None:
        with self._db.transaction() as cur:
            cur.execute(
                self._db.q(
                    f"SELECT {_JOB_COLUMNS} FROM delivery_jobs WHERE id = ? AND status = ?"  # noqa: S608
                ),
                (job_id, DEAD),
            )
            found = cur.fetchone()
        return Job(*found) if found else None

    def replay(self, job_id: str) -> bool:
        """Put a dead letter back in the queue with its attempts starting over."""
        with self._db.transaction() as cur:
            cur.execute(
                self._db.q(
                    "UPDATE delivery_jobs SET status = ?, attempts = 0, next_attempt_at = ?,"
                    " last_error = '' WHERE id = ? AND status = ?"
                ),
                (PENDING, time.time(), job_id, DEAD),
            )
            return bool(cur.rowcount)

    # ---------------------------------------------------------------- delivery log

    def log(self, entries: list[LogEntry]) -> None:
        if entries:
            with self._db.transaction() as cur:
                self._insert_log(cur, entries)

    def _insert_log(self, cur: object, entries: list[LogEntry]) -> None:
        cur.executemany(  # type: ignore[attr-defined]
            self._db.q(
                "INSERT INTO delivery_log (event_id, incident, position, agency, channel,"
                " target, outcome, attempt, error, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            [
                (
                    e.event_id,
                    e.incident,
                    e.position,
                    e.agency,
                    e.channel,
                    e.target,
                    e.outcome,
                    e.attempt,
                    e.error,
                    e.at,
                )
                for e in entries
            ],
        )

    def deliveries(
        self, *, incident: str | None, agency: str | None, after: int, limit: int
    ) -> list[tuple[int, LogEntry]]:
        sql = (
            "SELECT id, event_id, incident, position, agency, channel, target, outcome,"
            " attempt, error, at FROM delivery_log WHERE id > ?"
        )
        params: list[object] = [after]
        if incident is not None:
            sql += " AND incident = ?"
            params.append(incident)
        if agency is not None:
            sql += " AND agency = ?"
            params.append(agency)
        sql += " ORDER BY id LIMIT ?"
        params.append(limit)
        with self._db.transaction() as cur:
            cur.execute(self._db.q(sql), params)
            return [(int(r[0]), LogEntry(*r[1:])) for r in cur.fetchall()]


class DeliveryLog:
    """Writes live-stream delivery records in batches, off the streaming path.

    Records are flushed every ``interval`` seconds (and on close): a crash loses at
    most that much of the gRPC delivery log; webhook deliveries are logged in the
    same transaction as their outcome.
    """

    def __init__(self, store: NotifierStore, interval: float = 0.2) -> None:
        self._store = store
        self._interval = interval
        self._queue: queue.SimpleQueue[LogEntry] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delivery-log", daemon=True)
        self._thread.start()

    def record(self, entry: LogEntry) -> None:
        self._queue.put(entry)

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(10)
        self._flush()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            self._flush()

    def _flush(self) -> None:
        entries: list[LogEntry] = []
        while True:
            try:
                entries.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if entries:
            try:
                self._store.log(entries)
            except Exception as exc:  # kept for the next flush rather than lost
                log.warning("delivery_log.flush_failed", error=str(exc), entries=len(entries))
                for entry in entries:
                    self._queue.put(entry)

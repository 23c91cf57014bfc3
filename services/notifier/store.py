"""The notifier's durable state: webhooks, delivery jobs (with dead letters) and the delivery log.

A job is written, one per matching webhook and event, before the stream message
is acknowledged: that is the durable hand-off. Jobs are claimed with a lease, so
a crashed worker's jobs return to the queue, and several notifier replicas can
share the work. Deliveries keep each incident's order with any number of replicas:
a job (stream sequence s) is claimed only when every stream message before s has
been handled, by whichever replica took it (the caller says how far that is: the
durable consumer's ack floor, see :mod:`services.notifier.engine`), so every earlier
job of its incident is stored; and only when none of those earlier jobs of the same
webhook and incident is still pending or in flight.

Webhook secrets are stored sealed (:mod:`services.notifier.sealing`); a deleted
webhook's secret is erased with it.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import structlog

from services.common.config import ConfigError
from services.common.errors import TooManyWebhooks, WebhookExists
from services.common.failurelog import FailureLog
from services.common.sql import Database
from services.common.store_format import NOTIFIER_FORMAT, check_format, record_format
from services.notifier.sealing import SEALED_PREFIX, SecretBox

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
        " last_error TEXT NOT NULL DEFAULT '')",
        "CREATE INDEX IF NOT EXISTS delivery_jobs_due ON delivery_jobs (status, next_attempt_at)",
        "CREATE INDEX IF NOT EXISTS delivery_jobs_order"
        " ON delivery_jobs (webhook_id, incident, stream_seq)",
        # The claim's test for an earlier job of the incident still waiting, from the index
        # alone: without it each due job read the incident's earlier rows, delivered ones
        # and their payloads included (28 ms a claim with 1,500 jobs waiting, on SQLite).
        "CREATE INDEX IF NOT EXISTS delivery_jobs_waiting"
        " ON delivery_jobs (webhook_id, incident, status, stream_seq)",
        # The claim reads the pending jobs, then the leased ones, in stream order.
        "CREATE INDEX IF NOT EXISTS delivery_jobs_claim ON delivery_jobs (status, stream_seq)",
        # A webhook's last delivery, one index seek (failing_since, read every second):
        # without it, a scan of every job the webhook was ever sent.
        "CREATE INDEX IF NOT EXISTS delivery_jobs_delivered"
        " ON delivery_jobs (webhook_id, status, last_attempt_at)",
        f"CREATE TABLE IF NOT EXISTS delivery_log ( id {serial}, event_id TEXT NOT NULL,"
        " incident TEXT NOT NULL, position BIGINT NOT NULL, agency TEXT NOT NULL,"
        " channel TEXT NOT NULL, target TEXT NOT NULL, outcome TEXT NOT NULL,"
        f" attempt INTEGER NOT NULL, error TEXT NOT NULL, at {real} NOT NULL)",
        "CREATE INDEX IF NOT EXISTS delivery_log_incident ON delivery_log (incident, id)",
        "CREATE INDEX IF NOT EXISTS delivery_log_agency ON delivery_log (agency, id)",
    ]


def _drop_stream_seq_uniqueness(cur: Any, dialect: str) -> None:
    """Stores made before: their jobs were unique by (webhook, stream sequence) as well as
    by delivery id. A stream made anew (a NATS store lost, a ledger restored from a backup)
    numbers its messages from 1 again, so a new event came with the sequence of an old job
    and its job was dropped as a repeat (``ON CONFLICT DO NOTHING``): never delivered, no
    dead letter, no warning. A job is one event to one webhook (its id, the primary key);
    the sequence only orders. Idempotent, run at every start; an earlier version works on
    the table without it (it inserts with the same ``ON CONFLICT DO NOTHING``)."""
    if dialect == "postgres":
        cur.execute(
            "ALTER TABLE IF EXISTS delivery_jobs"
            " DROP CONSTRAINT IF EXISTS delivery_jobs_webhook_id_stream_seq_key"
        )
        return
    cur.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'delivery_jobs'")
    row = cur.fetchone()
    if row is None or "UNIQUE (webhook_id, stream_seq)" not in str(row[0]):
        return
    # SQLite drops a constraint only by making the table again; the indexes go with the
    # old table and are made again by the schema's statements, next.
    cur.execute("ALTER TABLE delivery_jobs RENAME TO delivery_jobs_former")
    cur.execute(_schema("sqlite")[1])
    cur.execute("INSERT INTO delivery_jobs SELECT * FROM delivery_jobs_former")
    cur.execute("DROP TABLE delivery_jobs_former")
    log.info("notifier.jobs_unique_by_delivery_only")


class DeletedWebhookReplayedError(Exception):
    """A request's key that created a webhook since deleted: the request is not made again
    (its id is spent), and answering with the deleted webhook would say it exists."""

    def __init__(self, webhook_id: str) -> None:
        super().__init__(webhook_id)
        self.webhook_id = webhook_id


@dataclass(frozen=True)
class WebhookBacklog:
    """What a webhook's receiver has still to get: deliveries not made yet (``waiting``,
    the oldest stored or first attempted at ``oldest``, epoch seconds) and dead letters."""

    waiting: int = 0
    oldest: float | None = None
    dead: int = 0


@dataclass(frozen=True)
class WebhookRow:
    id: str
    agency: str
    url: str
    secret: str
    filter: str
    created_at: float
    fingerprint: str


def delivery_id(webhook_id: str, event_id: str) -> str:
    """The delivery id (``X-Ledger-Delivery``) of an event to a webhook: the same whenever
    the event reaches the webhook again. The relay publishes an event again after a store
    or a stream restored from a backup (docs/fan-out.md, "Foreign messages"), under a new
    stream sequence; with a random id per job, a notifier whose store did not hold the
    first job delivered it again under a new id, which receivers that remember ids could
    not recognise as a repeat (docs/operations.md, "Backups")."""
    if not event_id:  # every event has one; never let two events share an id
        return f"dl_{uuid.uuid4().hex}"
    digest = hashlib.sha256(f"{webhook_id}\n{event_id}".encode()).hexdigest()
    return f"dl_{digest[:32]}"


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


@dataclass(frozen=True)
class Outcome:
    """One delivery attempt's result, as :meth:`NotifierStore.finish_all` records it."""

    job: Job
    outcome: str  # delivered, failed, dead_letter
    attempt: int
    error: str
    retry_at: float
    entry: LogEntry


_JOB_COLUMNS = (
    "id, webhook_id, stream_seq, position, event_id, incident, agency, payload, attempts,"
    " first_attempt_at, last_attempt_at, last_error"
)


class NotifierStore:
    def __init__(self, db: Database, box: SecretBox) -> None:
        self._db = db
        self._box = box

    def create_schema(self) -> None:
        """The notifier's tables, made where missing; first of all, a stop
        (StoreTooNewError) on a store that a later version migrated."""
        check_format(self._db, "notifier", NOTIFIER_FORMAT)
        with self._db.transaction() as cur:
            _drop_stream_seq_uniqueness(cur, self._db.dialect)
            for statement in _schema(self._db.dialect):
                cur.execute(statement)
        record_format(self._db, "notifier", NOTIFIER_FORMAT)
        self._seal_stored_secrets()

    def _seal_stored_secrets(self) -> None:
        """Stores from before sealing: seal the plaintext secrets of live webhooks and
        erase those of deleted ones (idempotent; run at every start)."""
        with self._db.transaction() as cur:
            cur.execute(
                self._db.q("UPDATE webhooks SET secret = '' WHERE deleted = 1 AND secret <> ''")
            )
            purged = cur.rowcount
            cur.execute(
                self._db.q(
                    "SELECT id, secret FROM webhooks WHERE deleted = 0 AND secret NOT LIKE ?"
                    " FOR UPDATE"
                ),
                (f"{SEALED_PREFIX}%",),
            )
            plain = cur.fetchall()
            cur.executemany(
                self._db.q("UPDATE webhooks SET secret = ? WHERE id = ?"),
                [(self._box.seal(secret, wid), wid) for wid, secret in plain],
            )
        if purged or plain:
            log.info("notifier.webhook_secrets_sealed", sealed=len(plain), erased=purged)
        self._check_key()

    def _check_key(self) -> None:
        """Refuse (:class:`ConfigError`) a webhook key that does not open the stored
        secrets: with another key (a lost key file, which a development notifier replaces
        with a new one) the notifier started, answered ListWebhooks INTERNAL and failed
        every delivery of every webhook, for good, logging a warning and "working again"
        at each retry."""
        with self._db.transaction() as cur:
            cur.execute(self._db.q("SELECT id, secret FROM webhooks WHERE deleted = 0"))
            rows = [(str(wid), str(secret)) for wid, secret in cur.fetchall()]
        closed: list[str] = []
        for wid, secret in rows:
            try:
                self._box.open(secret, wid)
            except ConfigError:
                closed.append(wid)
        if closed:
            named = ", ".join(closed[:3]) + (", …" if len(closed) > 3 else "")
            what = (
                "the file was missing, and the development key generated in its place is "
                "not theirs: put back the key file they were sealed with"
                if self._box.generated
                else "give the notifier the key they were sealed with"
            )
            raise ConfigError(
                f"the stored secrets of {len(closed)} of {len(rows)} webhooks ({named}) do "
                f"not open with the key of {self._box.source}: {what} (a backup of the "
                "keys, docs/operations.md, Backups)"
            )

    def _opened(self, found: tuple[object, ...]) -> WebhookRow:
        row = WebhookRow(*found)  # type: ignore[arg-type]
        return replace(row, secret=self._box.open(row.secret, row.id))

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
        max_per_agency: int = 0,
    ) -> WebhookRow:
        """The new webhook, or the one an earlier request with the same key created.
        :class:`TooManyWebhooks` when the agency has ``max_per_agency`` webhooks (0: no limit)
        and the request created none before; :class:`WebhookExists` when another request
        of the agency made one of the same URL and filter, not deleted."""
        row = WebhookRow(
            f"wh_{uuid.uuid4().hex}", agency, url, secret, filter_json, time.time(), fingerprint
        )
        sealed = self._box.seal(secret, row.id)
        with self._db.transaction() as cur:
            if max_per_agency:
                cur.execute(
                    self._db.q(
                        "SELECT (SELECT COUNT(*) FROM webhooks WHERE agency = ? AND deleted = 0),"
                        " (SELECT COUNT(*) FROM webhooks WHERE request_key = ?)"
                    ),
                    (agency, request_key),
                )
                held, replayed = cur.fetchone()
                if not replayed and held >= max_per_agency:
                    raise TooManyWebhooks(agency, max_per_agency)
            self._refuse_twin(cur, agency, url, filter_json, "request_key", request_key)
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
                    sealed,
                    filter_json,
                    row.created_at,
                    request_key,
                    fingerprint,
                ),
            )
            cur.execute(
                self._db.q(
                    "SELECT id, agency, url, secret, filter, created_at, fingerprint, deleted"
                    " FROM webhooks WHERE request_key = ?"
                ),
                (request_key,),
            )
            found = cur.fetchone()
        if found[7]:
            raise DeletedWebhookReplayedError(str(found[0]))
        return self._opened(found[:7])

    @property
    def shared(self) -> bool:
        """Whether other replicas may use this store too (PostgreSQL; SQLite is one process's)."""
        return self._db.dialect == "postgres"

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
        with self._db.read() as cur:
            cur.execute(self._db.q(sql), params)
            return [self._opened(r) for r in cur.fetchall()]

    def webhook(self, webhook_id: str) -> WebhookRow | None:
        with self._db.read() as cur:
            cur.execute(
                self._db.q(
                    "SELECT id, agency, url, secret, filter, created_at, fingerprint"
                    " FROM webhooks WHERE id = ? AND deleted = 0"
                ),
                (webhook_id,),
            )
            found = cur.fetchone()
        return self._opened(found) if found else None

    def update_webhook(
        self,
        webhook_id: str,
        *,
        url: str | None = None,
        secret: str | None = None,
        filter_json: str | None = None,
    ) -> WebhookRow | None:
        """Change a webhook's URL, secret (sealed, as at creation) or filter; ``None`` leaves
        one as it is. Its id, agency and creation time stay, and so do its request key and
        fingerprint: a retried creation still finds it (changed since). ``None`` when the
        webhook does not exist (or was deleted meanwhile)."""
        changes: dict[str, str] = {}
        if url is not None:
            changes["url"] = url
        if secret is not None:
            changes["secret"] = self._box.seal(secret, webhook_id)
        if filter_json is not None:
            changes["filter"] = filter_json
        with self._db.transaction() as cur:
            if changes:
                assignments = ", ".join(f"{column} = ?" for column in changes)
                cur.execute(
                    self._db.q(
                        f"UPDATE webhooks SET {assignments} WHERE id = ? AND deleted = 0"  # noqa: S608 - fixed column names
                    ),
                    (*changes.values(), webhook_id),
                )
            cur.execute(
                self._db.q(
                    "SELECT id, agency, url, secret, filter, created_at, fingerprint"
                    " FROM webhooks WHERE id = ? AND deleted = 0"
                ),
                (webhook_id,),
            )
            found = cur.fetchone()
            if found is not None and ("url" in changes or "filter" in changes):
                # Changed into another of its agency's: the transaction is rolled back.
                self._refuse_twin(
                    cur, str(found[1]), str(found[2]), str(found[4]), "id", webhook_id
                )
        return self._opened(found) if found else None

    def _refuse_twin(
        self, cur: Any, agency: str, url: str, filter_json: str, column: str, value: str
    ) -> None:
        """:class:`WebhookExists` when the agency has another webhook (``column`` not
        ``value``: ``request_key`` or ``id``) of this URL and filter, not deleted: both
        would deliver each event, under two delivery ids."""
        cur.execute(
            self._db.q(
                "SELECT id FROM webhooks WHERE agency = ? AND url = ? AND filter = ?"  # noqa: S608
                f" AND deleted = 0 AND {column} <> ?"  # a fixed column name
            ),
            (agency, url, filter_json, value),
        )
        same = cur.fetchone()
        if same is not None:
            raise WebhookExists(agency, str(same[0]))

    def delete_webhook(self, webhook_id: str) -> None:
        """Delete a webhook: its secret is erased, its waiting jobs are cancelled."""
        with self._db.transaction() as cur:
            cur.execute(
                self._db.q("UPDATE webhooks SET deleted = 1, secret = '' WHERE id = ?"),
                (webhook_id,),
            )
            cur.execute(
                self._db.q(
                    "UPDATE delivery_jobs SET status = ? WHERE webhook_id = ? AND status IN (?, ?)"
                ),
                (CANCELLED, webhook_id, PENDING, DEAD),
            )

    # ---------------------------------------------------------------------- jobs

    def add_jobs(self, jobs: Iterable[NewJob]) -> None:
        """Store new jobs; a job already there (a redelivered message, or the same event
        published again under another stream sequence) is left alone."""
        now = time.time()
        rows = [
            (
                delivery_id(j.webhook_id, j.event_id),
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
                    " ON CONFLICT DO NOTHING"
                ),
                rows,
            )

    def claim_due(
        self,
        limit: int,
        lease_seconds: float,
        *,
        per_webhook: int,
        handled_through: int,
        busy: Mapping[str, int] | None = None,
    ) -> list[Job]:
        """Due jobs whose incident has no earlier job still waiting, leased to the caller.

        ``handled_through``: every stream message up to this sequence has been handled
        (its jobs stored). A job of a later message may wait for an earlier job of its
        incident that another replica has not stored yet, so it waits (until the
        message just before it is handled).

        At most ``per_webhook`` jobs per webhook, counting the ``busy`` ones the caller is
        delivering already: a job is claimed only when its endpoint has a free slot, so its
        lease starts when its delivery does and never runs out while it waits its turn.
        """
        busy = dict(busy or {})
        full = sorted(w for w, n in busy.items() if n >= per_webhook)
        now = time.time()
        exclude = f" AND j.webhook_id NOT IN ({', '.join('?' * len(full))})" if full else ""
        # Pending jobs that are due and leases that ran out, each read in stream order
        # (an index on (status, stream_seq)) up to the number wanted: the first jobs of
        # their incidents come first, so the reads stop early instead of testing every
        # waiting job and sorting them all (one query with OR did: 9 ms a claim with
        # 1,500 jobs waiting, on SQLite). The first of the two together are the claim's.
        wanted = limit * per_webhook
        found: list[Any] = []  # rows of _JOB_COLUMNS
        with self._db.transaction() as cur:
            for status, due in (
                (PENDING, "j.next_attempt_at <= ?"),
                (INFLIGHT, "j.lease_until < ?"),
            ):
                cur.execute(
                    self._db.q(
                        f"SELECT {_JOB_COLUMNS} FROM delivery_jobs j"  # noqa: S608
                        f" WHERE j.status = ? AND {due}{exclude}"
                        " AND j.stream_seq <= ?"
                        " AND NOT EXISTS (SELECT 1 FROM delivery_jobs e"
                        " WHERE e.webhook_id = j.webhook_id AND e.incident = j.incident"
                        " AND e.stream_seq < j.stream_seq AND e.status IN (?, ?))"
                        " ORDER BY j.stream_seq LIMIT ? FOR UPDATE SKIP LOCKED"
                    ),
                    (status, now, *full, handled_through + 1, PENDING, INFLIGHT, wanted),
                )
                found.extend(cur.fetchall())
            found.sort(key=lambda row: int(row[2]))  # stream_seq
            jobs: list[Job] = []
            for row in found[:wanted]:
                job = Job(*row)
                if len(jobs) < limit and busy.get(job.webhook_id, 0) < per_webhook:
                    busy[job.webhook_id] = busy.get(job.webhook_id, 0) + 1
                    jobs.append(job)
            cur.executemany(
                self._db.q("UPDATE delivery_jobs SET status = ?, lease_until = ? WHERE id = ?"),
                [(INFLIGHT, now + lease_seconds, j.id) for j in jobs],
            )
        return jobs

    def finish(
        self, job: Job, *, outcome: str, attempt: int, error: str, retry_at: float, entry: LogEntry
    ) -> None:
        """Record an attempt: delivered, failed (retry at ``retry_at``) or dead letter."""
        self.finish_all([Outcome(job, outcome, attempt, error, retry_at, entry)])

    def finish_all(self, outcomes: Sequence[Outcome]) -> None:
        """Record attempts in one transaction (the deliveries that ended meanwhile): each
        job's new state and its delivery log entry, all or none."""
        if not outcomes:
            return
        rows = []
        for o in outcomes:
            status = {"delivered": DELIVERED, "failed": PENDING, "dead_letter": DEAD}[o.outcome]
            now = o.entry.at
            rows.append((status, o.attempt, o.retry_at, now, o.error, now, o.job.id))
        with self._db.transaction() as cur:
            cur.executemany(
                self._db.q(
                    "UPDATE delivery_jobs SET status = ?, attempts = ?, next_attempt_at = ?,"
                    " lease_until = NULL, last_attempt_at = ?, last_error = ?,"
                    " first_attempt_at = COALESCE(first_attempt_at, ?) WHERE id = ?"
                ),
                rows,
            )
            self._insert_log(cur, [o.entry for o in outcomes])

    def webhooks_by_id(self, webhook_ids: Iterable[str]) -> dict[str, WebhookRow]:
        """The webhooks of these ids that are not deleted (one read for a claimed batch)."""
        ids = sorted(set(webhook_ids))
        if not ids:
            return {}
        with self._db.read() as cur:
            cur.execute(
                self._db.q(
                    "SELECT id, agency, url, secret, filter, created_at, fingerprint"  # noqa: S608
                    f" FROM webhooks WHERE id IN ({', '.join('?' * len(ids))}) AND deleted = 0"
                ),
                ids,
            )
            found = cur.fetchall()
        return {row.id: row for row in (self._opened(f) for f in found)}

    def dead_letters(
        self, agency: str | None, *, after: tuple[int, str] = (-1, ""), limit: int = 100
    ) -> list[Job]:
        """Dead letters in position order (then by id), after the cursor (position, id)."""
        sql = (
            f"SELECT {_JOB_COLUMNS} FROM delivery_jobs WHERE status = ?"  # noqa: S608
            " AND (position > ? OR (position = ? AND id > ?))"
        )
        params: list[object] = [DEAD, after[0], after[0], after[1]]
        if agency is not None:
            sql += " AND agency = ?"
            params.append(agency)
        sql += " ORDER BY position, id LIMIT ?"
        params.append(limit)
        with self._db.read() as cur:
            cur.execute(self._db.q(sql), params)
            return [Job(*r) for r in cur.fetchall()]

    def dead_letter_count(self) -> int:
        """How many dead letters wait for a replay."""
        with self._db.read() as cur:
            cur.execute(self._db.q("SELECT COUNT(*) FROM delivery_jobs WHERE status = ?"), (DEAD,))
            row = cur.fetchone()
        return int(row[0]) if row else 0

    def backlogs(self, webhook_ids: Sequence[str]) -> dict[str, WebhookBacklog]:
        """Each webhook's deliveries not made yet and dead letters (:class:`WebhookBacklog`;
        a webhook with neither is left out), in one query: what ListWebhooks shows."""
        if not webhook_ids:
            return {}
        marks = ", ".join("?" for _ in webhook_ids)
        with self._db.read() as cur:
            cur.execute(
                self._db.q(
                    "SELECT webhook_id, status, COUNT(*),"  # noqa: S608 - placeholders only
                    " MIN(COALESCE(first_attempt_at, next_attempt_at)) FROM delivery_jobs"
                    f" WHERE webhook_id IN ({marks}) AND status IN (?, ?, ?)"
                    " GROUP BY webhook_id, status"
                ),
                (*webhook_ids, PENDING, INFLIGHT, DEAD),
            )
            rows = cur.fetchall()
        found: dict[str, WebhookBacklog] = {}
        for webhook_id, status, count, oldest in rows:
            backlog = found.get(str(webhook_id), WebhookBacklog())
            if status == DEAD:
                backlog = replace(backlog, dead=int(count))
            else:  # pending and in flight: both still to be delivered
                times = [float(t) for t in (oldest, backlog.oldest) if t is not None]
                backlog = replace(
                    backlog,
                    waiting=backlog.waiting + int(count),
                    oldest=min(times) if times else None,
                )
            found[str(webhook_id)] = backlog
        return found

    def waiting(self) -> tuple[int, float | None]:
        """The webhook deliveries not made yet (stored, being attempted or to be retried,
        dead letters left out), and when the oldest of them was stored or first attempted
        (None when there is none): what a receiver has still to get."""
        with self._db.read() as cur:
            cur.execute(
                self._db.q(
                    "SELECT COUNT(*), MIN(COALESCE(first_attempt_at, next_attempt_at))"
                    " FROM delivery_jobs WHERE status IN (?, ?)"
                ),
                (PENDING, INFLIGHT),
            )
            row = cur.fetchone()
        if not row or not row[0]:
            return 0, None
        return int(row[0]), float(row[1])

    def failing_since(self) -> float | None:
        """When the webhook failing longest started failing: the first attempt of its jobs
        that failed (waiting for a retry, under way again, or dead letters) after its last
        delivery; None when no webhook (not deleted) has a failed job since it last took
        one. A receiver that is down shows here for as long as it stays down: its
        deliveries become dead letters after a few minutes, leaving the waiting ones young.
        It ends with the receiver's next delivery (a new event, or a replay)."""
        with self._db.read() as cur:
            cur.execute(
                self._db.q(
                    "SELECT MIN(j.first_attempt_at) FROM delivery_jobs j"
                    " JOIN webhooks w ON w.id = j.webhook_id AND w.deleted = 0"
                    " WHERE j.status IN (?, ?, ?) AND j.attempts > 0 AND j.first_attempt_at > "
                    " COALESCE((SELECT MAX(d.last_attempt_at) FROM delivery_jobs d"
                    " WHERE d.webhook_id = j.webhook_id AND d.status = ?), 0)"
                ),
                (PENDING, INFLIGHT, DEAD, DELIVERED),
            )
            row = cur.fetchone()
        return None if not row or row[0] is None else float(row[0])

    def dead_letter(self, job_id: str) -> Job | None:
        """The job, if it is a dead letter or was one and has been replayed (not a
        cancelled job: its webhook is gone)."""
        with self._db.read() as cur:
            cur.execute(
                self._db.q(
                    f"SELECT {_JOB_COLUMNS} FROM delivery_jobs WHERE id = ? AND status <> ?"  # noqa: S608
                ),
                (job_id, CANCELLED),
            )
            found = cur.fetchone()
        return Job(*found) if found else None

    def replay(self, job_id: str) -> int:
        """Put a dead letter back in the queue with its attempts starting over, and with it
        the earlier dead letters of the same webhook and incident: replayed in any order,
        an incident's events still reach the endpoint in position order. Returns how many
        went back (0: it was no longer a dead letter)."""
        with self._db.transaction() as cur:
            cur.execute(
                self._db.q(
                    "SELECT webhook_id, incident, stream_seq FROM delivery_jobs"
                    " WHERE id = ? AND status = ? FOR UPDATE"
                ),
                (job_id, DEAD),
            )
            found = cur.fetchone()
            if found is None:
                return 0
            webhook_id, incident, stream_seq = found
            cur.execute(
                self._db.q(
                    "UPDATE delivery_jobs SET status = ?, attempts = 0, next_attempt_at = ?,"
                    " last_error = '' WHERE webhook_id = ? AND incident = ? AND stream_seq <= ?"
                    " AND status = ?"
                ),
                (PENDING, time.time(), webhook_id, incident, stream_seq, DEAD),
            )
            return int(cur.rowcount)

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
        self,
        *,
        incident: str | None,
        agency: str | None,
        after: int,
        limit: int,
        newest_first: bool = False,
    ) -> list[tuple[int, LogEntry]]:
        """The delivery log after the row ``after``, in the order it was logged, or with
        ``newest_first`` before it (``after`` is then a row to go on below)."""
        sql = (
            "SELECT id, event_id, incident, position, agency, channel, target, outcome,"
            " attempt, error, at FROM delivery_log WHERE id > ?"
        )
        if newest_first:
            sql = sql.replace("id > ?", "id < ?")
        params: list[object] = [after]
        if incident is not None:
            sql += " AND incident = ?"
            params.append(incident)
        if agency is not None:
            sql += " AND agency = ?"
            params.append(agency)
        sql += " ORDER BY id DESC LIMIT ?" if newest_first else " ORDER BY id LIMIT ?"
        params.append(limit)
        with self._db.read() as cur:
            cur.execute(self._db.q(sql), params)
            return [(int(r[0]), LogEntry(*r[1:])) for r in cur.fetchall()]


class DeliveryLog:
    """Writes live-stream delivery records in batches, off the streaming path.

    Records are flushed every ``interval`` seconds (and on close): a crash loses at
    most that much of the gRPC delivery log; webhook deliveries are logged in the
    same transaction as their outcome. While the store is away the records are kept
    and tried again at each flush, with one warning every ``FAILURE_LOG_SECONDS``
    (not one per flush) and one line when they are written again.
    """

    #: While flushes keep failing, at most one ``delivery_log.flush_failed`` this often.
    FAILURE_LOG_SECONDS = 30.0

    def __init__(self, store: NotifierStore, interval: float = 0.2) -> None:
        self._store = store
        self._interval = interval
        self._failures = FailureLog(
            "delivery_log.flush_failed",
            "delivery_log.flushed_again",
            logger=log,
            reminder_seconds=self.FAILURE_LOG_SECONDS,
        )
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
        if not entries:
            return
        try:
            self._store.log(entries)
        except Exception as exc:  # kept for the next flush rather than lost
            for entry in entries:
                self._queue.put(entry)
            self._failures.failed(error=str(exc), entries=len(entries))
            return
        self._failures.succeeded(entries=len(entries))

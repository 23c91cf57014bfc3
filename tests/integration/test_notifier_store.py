"""The notifier's store on real SQLite and PostgreSQL: webhook secrets at rest, file modes."""

from __future__ import annotations

import base64
import secrets
import stat
import time
from pathlib import Path

import pytest

from services.common.config import ConfigError, NotifierSettings
from services.common.datafiles import prepare_sqlite_file
from services.common.sql import open_database
from services.notifier.sealing import DEVELOPMENT_KEY_MARK, SecretBox, load_secret_box
from services.notifier.store import (
    Job,
    LogEntry,
    NewJob,
    NotifierStore,
    Outcome,
    WebhookBacklog,
    _schema,
)

SECRET = "a-webhook-secret-nobody-may-read"


def settings(tmp_path: Path) -> NotifierSettings:
    return NotifierSettings(data_dir=tmp_path / "data", nats_url="nats://127.0.0.1:1")


def open_store(env: dict[str, str], box: SecretBox) -> NotifierStore:
    store = NotifierStore(open_database(env), box)
    store.create_schema()
    return store


def stored_secrets(env: dict[str, str]) -> dict[str, str]:
    """What the database itself holds, read around the store."""
    db = open_database(env)
    try:
        with db.transaction() as cur:
            cur.execute("SELECT id, secret FROM webhooks")
            return {str(r[0]): str(r[1]) for r in cur.fetchall()}
    finally:
        db.close()


def add(store: NotifierStore, key: str) -> str:
    row = store.add_webhook(
        agency="bpbd",
        url=f"https://bpbd.example.go.id/hook/{key}",  # one URL a webhook (WEBHOOK_EXISTS)
        secret=SECRET,
        filter_json="{}",
        request_key=key,
        fingerprint=key,
    )
    assert row.secret == SECRET
    return row.id


def test_webhook_secrets_are_sealed_at_rest_and_erased_with_their_webhook(
    either_store: dict[str, str], tmp_path: Path
) -> None:
    box = load_secret_box(settings(tmp_path))
    store = open_store(either_store, box)
    try:
        kept, deleted = add(store, "a"), add(store, "b")
        store.delete_webhook(deleted)
        at_rest = stored_secrets(either_store)
        assert SECRET not in at_rest[kept] and at_rest[kept].startswith("aesgcm1:")
        assert at_rest[deleted] == "", "a deleted webhook keeps no secret"
        found = store.webhook(kept)
        assert found is not None and found.secret == SECRET
        assert [w.secret for w in store.webhooks()] == [SECRET]
    finally:
        store.close()
    if "SQLITE_DBNAME" in either_store:
        for path in Path(either_store["SQLITE_DBNAME"]).parent.glob("ledger.sqlite*"):
            assert SECRET.encode() not in path.read_bytes(), path
    # Another key does not open it (and says which setting to look at).
    with pytest.raises(ConfigError, match="NOTIFIER_WEBHOOK_KEY_FILE"):
        SecretBox(b"k" * 32).open(at_rest[kept], kept)
    # The same key from the same file, next time: still readable.
    again = open_store(either_store, load_secret_box(settings(tmp_path)))
    try:
        found = again.webhook(kept)
        assert found is not None and found.secret == SECRET
    finally:
        again.close()


def test_plaintext_secrets_from_before_are_sealed_at_start_and_stay_usable(
    either_store: dict[str, str], tmp_path: Path
) -> None:
    box = load_secret_box(settings(tmp_path))
    open_store(either_store, box).close()
    db = open_database(either_store)
    with db.transaction() as cur:  # rows as the notifier wrote them before secrets were sealed
        for wid, deleted in (("wh_old", 0), ("wh_gone", 1)):
            cur.execute(
                db.q(
                    "INSERT INTO webhooks (id, agency, url, secret, filter, created_at,"
                    " request_key, fingerprint, deleted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                (wid, "kpu", "https://kpu.example/h", SECRET, "{}", 1.0, wid, wid, deleted),
            )
    db.close()
    store = open_store(either_store, box)
    try:
        at_rest = stored_secrets(either_store)
        assert at_rest["wh_old"].startswith("aesgcm1:") and SECRET not in at_rest["wh_old"]
        assert at_rest["wh_gone"] == ""
        found = store.webhook("wh_old")
        assert found is not None and found.secret == SECRET
    finally:
        store.close()


def test_a_key_that_does_not_open_the_stored_secrets_stops_the_start(
    either_store: dict[str, str], tmp_path: Path
) -> None:
    """A lost key file: a development notifier generated a new key, started, answered
    ListWebhooks INTERNAL and failed every webhook's deliveries for good. It now refuses
    to start, naming the webhooks and the key file to put back."""
    store = open_store(either_store, load_secret_box(settings(tmp_path)))
    try:
        hook = add(store, "a")
    finally:
        store.close()
    key_file = settings(tmp_path).resolved_webhook_key_file
    kept = key_file.read_bytes()
    key_file.unlink()
    box = load_secret_box(settings(tmp_path))  # generated again, as at a start
    assert box.generated
    with pytest.raises(ConfigError) as refused:
        open_store(either_store, box).close()
    message = str(refused.value)
    assert hook in message and str(key_file) in message, message
    assert "was missing" in message and "put back" in message, message
    with pytest.raises(ConfigError, match="give the notifier the key they were sealed with"):
        open_store(either_store, load_secret_box(settings(tmp_path))).close()
    key_file.write_bytes(kept)  # put back: it starts, and the secret opens
    again = open_store(either_store, load_secret_box(settings(tmp_path)))
    try:
        found = again.webhook(hook)
        assert found is not None and found.secret == SECRET
    finally:
        again.close()


def test_the_key_and_the_sqlite_file_are_private_to_their_owner(tmp_path: Path) -> None:
    data = tmp_path / "data"
    load_secret_box(settings(tmp_path))
    key = data / "keys" / "notifier-webhook.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    database = tmp_path / "fresh" / "notifier.sqlite"
    prepare_sqlite_file(str(database))
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert stat.S_IMODE(database.parent.stat().st_mode) == 0o700
    store = open_store(
        {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(database)},
        load_secret_box(settings(tmp_path)),
    )
    store.close()
    assert stat.S_IMODE(database.stat().st_mode) == 0o600


def test_production_needs_the_key_setting(tmp_path: Path) -> None:
    env = {
        "NATS_URL": "nats://127.0.0.1:4222",
        "LEDGER_ENVIRONMENT": "production",
        "LEDGER_PAGE_TOKEN_SECRET": "x" * 32,
        "LEDGER_TOKENS_FILE": "/t.yaml",
        "LEDGER_DATA_DIR": str(tmp_path),
    }
    with pytest.raises(ConfigError, match="NOTIFIER_WEBHOOK_KEY_FILE is required in production"):
        NotifierSettings.from_env(env)
    key = tmp_path / "webhook.key"
    key.write_bytes(b"\x01" * 32)
    key.chmod(0o600)  # production refuses a key file others may read
    given = NotifierSettings.from_env({**env, "NOTIFIER_WEBHOOK_KEY_FILE": str(key)})
    assert given.resolved_webhook_key_file == key
    load_secret_box(given)  # read, never generated
    assert not (tmp_path / "keys").exists()


def test_production_refuses_the_development_key_whatever_its_file(tmp_path: Path) -> None:
    """make run's key, copied or pointed at, sealed a production notifier's webhook secrets."""
    box = load_secret_box(settings(tmp_path))
    generated = settings(tmp_path).resolved_webhook_key_file
    assert generated.read_bytes().startswith(DEVELOPMENT_KEY_MARK)
    copied = tmp_path / "notifier-webhook.key"
    copied.write_bytes(generated.read_bytes())
    copied.chmod(0o600)
    production = {
        "NATS_URL": "nats://127.0.0.1:4222",
        "LEDGER_ENVIRONMENT": "production",
        "LEDGER_PAGE_TOKEN_SECRET": "x" * 32,
        "LEDGER_TOKENS_FILE": "/t.yaml",
        "LEDGER_DATA_DIR": str(tmp_path / "production"),
    }
    for named in (copied, generated):
        given = NotifierSettings.from_env({**production, "NOTIFIER_WEBHOOK_KEY_FILE": str(named)})
        with pytest.raises(
            ConfigError,
            match=f"NOTIFIER_WEBHOOK_KEY_FILE {named} is a development key the notifier generated",
        ):
            load_secret_box(given)
    # The same file read as a configured key outside production: the same key.
    configured = NotifierSettings(
        data_dir=tmp_path / "other", nats_url="nats://127.0.0.1:1", webhook_key_file=copied
    )
    sealed = box.seal(SECRET, "w-1")
    assert load_secret_box(configured).open(sealed, "w-1") == SECRET
    # A key made for production (openssl rand -base64 32) is taken.
    made = tmp_path / "made.key"
    made.write_text(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    made.chmod(0o600)
    made_for_production = {**production, "NOTIFIER_WEBHOOK_KEY_FILE": str(made)}
    load_secret_box(NotifierSettings.from_env(made_for_production))


def test_jobs_are_claimed_only_into_free_slots_of_their_endpoint(
    either_store: dict[str, str], tmp_path: Path
) -> None:
    store = open_store(either_store, load_secret_box(settings(tmp_path)))
    try:
        store.add_jobs(
            NewJob(hook, seq, seq, f"ev{seq}", f"incidents/{seq}", "bpbd", "{}")
            for seq, hook in enumerate(["wh_a"] * 6 + ["wh_b"] * 2 + ["wh_c"] * 2, start=1)
        )
        first = store.claim_due(
            10, 30, per_webhook=4, handled_through=10, busy={"wh_a": 1, "wh_c": 4}
        )
        assert [j.webhook_id for j in first] == ["wh_a"] * 3 + ["wh_b"] * 2
        assert (
            store.claim_due(
                10, 30, per_webhook=4, handled_through=10, busy={"wh_a": 4, "wh_b": 2, "wh_c": 4}
            )
            == []
        )
        rest = store.claim_due(10, 30, per_webhook=4, handled_through=10, busy={"wh_a": 3})
        assert [j.stream_seq for j in rest] == [4, 9, 10], "one free slot for wh_a, two for wh_c"
    finally:
        store.close()


def test_a_job_waits_until_every_earlier_stream_message_is_handled(
    either_store: dict[str, str], tmp_path: Path
) -> None:
    """Two replicas store the jobs of neighbouring messages at their own pace: the job of
    message 3 is stored, that of message 2 (same incident) not yet. The job of message 3
    waits until message 2 is handled, then until its job is delivered."""
    store = open_store(either_store, load_secret_box(settings(tmp_path)))

    def job(seq: int, incident: str) -> NewJob:
        return NewJob("wh_a", seq, seq, f"ev{seq}", incident, "bpbd", "{}")

    def claim(handled_through: int) -> list[int]:
        claimed = store.claim_due(10, 30, per_webhook=4, handled_through=handled_through)
        return [j.stream_seq for j in claimed]

    try:
        store.add_jobs([job(1, "incidents/x"), job(3, "incidents/y"), job(4, "incidents/y")])
        assert claim(handled_through=1) == [1], "3 waits: message 2 may be an earlier job of y"
        store.add_jobs([job(2, "incidents/y")])
        assert claim(handled_through=4) == [2], "3 and 4 wait for 2, now stored, to finish"
    finally:
        store.close()


def test_an_event_published_again_keeps_its_delivery_id(
    either_store: dict[str, str], tmp_path: Path
) -> None:
    """After a restore the relay publishes events again under new stream sequences
    (docs/fan-out.md, "Foreign messages"). A job still in the store is not made twice; a
    store restored from before the first job makes it again, under the id the receiver
    has seen, so that receivers that remember ids recognise the repeat."""
    box = load_secret_box(settings(tmp_path))
    store = open_store(either_store, box)
    try:
        store.add_jobs([NewJob("wh_a", 7, 40, "ev-40", "incidents/x", "bpbd", "{}")])
        (first,) = store.claim_due(10, 30, per_webhook=4, handled_through=7)
        store.add_jobs([NewJob("wh_a", 3, 40, "ev-40", "incidents/x", "bpbd", "{}")])
        assert store.waiting()[0] == 1, "the same event again is no second delivery"
        store.add_jobs([NewJob("wh_b", 3, 40, "ev-40", "incidents/x", "bpbd", "{}")])
        (other,) = store.claim_due(10, 30, per_webhook=4, handled_through=7)
        assert other.webhook_id == "wh_b" and other.id != first.id
    finally:
        store.close()
    # The notifier's store restored from a backup taken before the job was stored.
    restored = tmp_path / "restored"
    restored.mkdir()
    env = {**either_store}
    if "SQLITE_DBNAME" in env:
        env["SQLITE_DBNAME"] = str(restored / "notifier.sqlite")
    else:
        db = open_database(either_store)
        try:
            with db.transaction() as cur:
                cur.execute("DELETE FROM delivery_jobs")
        finally:
            db.close()
    again = open_store(env, box)
    try:
        again.add_jobs([NewJob("wh_a", 2, 40, "ev-40", "incidents/x", "bpbd", "{}")])
        (repeat,) = again.claim_due(10, 30, per_webhook=4, handled_through=2)
        assert repeat.id == first.id, "the receiver has seen this delivery id already"
    finally:
        again.close()


def test_a_new_stream_s_event_at_an_old_job_s_sequence_is_delivered(
    either_store: dict[str, str], tmp_path: Path
) -> None:
    """A stream made anew (NATS's store lost, the ledger restored from a backup) numbers
    its messages from 1 again: its events come with the sequences of jobs the store holds
    from the former stream. Each is another event, so another delivery: it was dropped as
    a repeat (never delivered, no dead letter), until the new stream passed the old one."""
    store = open_store(either_store, load_secret_box(settings(tmp_path)))
    try:
        store.add_jobs([NewJob("wh_a", 272, 814, "ev-before", "incidents/x", "bpbd", "{}")])
        (old,) = store.claim_due(10, 30, per_webhook=4, handled_through=272)
        at = time.time()
        log = LogEntry(
            old.event_id, old.incident, 814, "bpbd", "webhook", "t", "delivered", 1, "", at
        )
        store.finish_all([Outcome(old, "delivered", 1, "", at, log)])
        # The new stream: its message 272 is another event, at the same ledger position.
        store.add_jobs([NewJob("wh_a", 272, 814, "ev-after", "incidents/y", "bpbd", "{}")])
        (new,) = store.claim_due(10, 30, per_webhook=4, handled_through=272)
        assert (new.event_id, new.stream_seq) == ("ev-after", 272)
        assert new.id != old.id
    finally:
        store.close()


def test_a_store_made_when_jobs_were_unique_by_sequence_loses_that_rule_at_start(
    either_store: dict[str, str], tmp_path: Path
) -> None:
    box = load_secret_box(settings(tmp_path))
    open_store(either_store, box).close()
    db = open_database(either_store)
    try:
        with db.transaction() as cur:  # the table as earlier versions made it, one job in it
            cur.execute("DROP TABLE delivery_jobs")
            former = _schema(db.dialect)[1].replace(
                "DEFAULT '')", "DEFAULT '', UNIQUE (webhook_id, stream_seq))"
            )
            cur.execute(former)
    finally:
        db.close()
    store = open_store(either_store, box)  # the start removes it
    try:
        store.add_jobs([NewJob("wh_a", 5, 5, "ev-1", "incidents/x", "bpbd", "{}")])
        store.add_jobs([NewJob("wh_a", 5, 9, "ev-2", "incidents/y", "bpbd", "{}")])
        claimed = store.claim_due(10, 30, per_webhook=4, handled_through=5)
        assert sorted(j.event_id for j in claimed) == ["ev-1", "ev-2"]
    finally:
        store.close()
    open_store(either_store, box).close()  # and again: nothing left to do


def test_the_deliveries_waiting_are_those_not_made_yet(
    either_store: dict[str, str], tmp_path: Path
) -> None:
    """What the gauges of deliveries waiting read: stored, under way and to be retried
    jobs, not those delivered or dead letters; the oldest from its first attempt."""
    store = open_store(either_store, load_secret_box(settings(tmp_path)))

    def entry(job: Job, outcome: str, at: float) -> Outcome:
        log = LogEntry(
            job.event_id, job.incident, job.position, "bpbd", "webhook", "t", outcome, 1, "", at
        )
        return Outcome(job, outcome, 1, "", at + 60, log)

    try:
        assert store.waiting() == (0, None)
        stored_at = time.time()
        store.add_jobs(
            NewJob("wh_a", seq, seq, f"ev{seq}", f"incidents/{seq}", "bpbd", "{}")
            for seq in range(1, 5)
        )
        count, oldest = store.waiting()
        assert count == 4 and oldest is not None and abs(oldest - stored_at) < 60
        jobs = store.claim_due(10, 30, per_webhook=4, handled_through=4)
        assert store.waiting()[0] == 4  # under way: still waiting
        first_attempt = stored_at - 3600  # as if attempted an hour ago
        store.finish_all(
            [
                entry(jobs[0], "delivered", stored_at),
                entry(jobs[1], "dead_letter", stored_at),
                entry(jobs[2], "failed", first_attempt),
            ]
        )
        assert store.waiting() == (2, first_attempt)  # the retry, and the job under way
        # Per webhook, what ListWebhooks shows: the same, and the dead letters apart.
        store.add_jobs([NewJob("wh_b", 5, 5, "ev5", "incidents/5", "bpbd", "{}")])
        backlogs = store.backlogs(["wh_a", "wh_b", "wh_c"])
        assert backlogs["wh_a"] == WebhookBacklog(waiting=2, oldest=first_attempt, dead=1)
        assert backlogs["wh_b"].waiting == 1 and backlogs["wh_b"].dead == 0
        assert "wh_c" not in backlogs  # nothing waits for it
        assert store.backlogs([]) == {}
        store.finish_all([entry(jobs[3], "delivered", stored_at)])
        assert store.waiting() == (2, first_attempt)
    finally:
        store.close()


def test_a_webhook_failing_is_timed_from_its_first_failure_since_its_last_delivery(
    either_store: dict[str, str], tmp_path: Path
) -> None:
    """What the gauge of a receiver down reads: how long a webhook has had failed attempts
    and no delivery since. Its deliveries become dead letters after a few minutes (8
    attempts, 1 s to 64 s apart), so the oldest waiting delivery never gets old; this
    does. A delivery to the webhook ends it; a webhook deleted is no longer failing."""
    store = open_store(either_store, load_secret_box(settings(tmp_path)))
    now = time.time()

    def entry(job: Job, outcome: str, at: float) -> Outcome:
        log = LogEntry(
            job.event_id, job.incident, job.position, "bpbd", "webhook", "t", outcome, 1, "e", at
        )
        return Outcome(job, outcome, 1, "e", now + 3600, log)  # no retry due

    try:
        down, up = add(store, "down"), add(store, "up")
        assert store.failing_since() is None
        store.add_jobs(
            NewJob(hook, seq, seq, f"ev{seq}", f"incidents/{seq}", "bpbd", "{}")
            for seq, hook in enumerate([down, down, up, up], start=1)
        )
        jobs = {j.stream_seq: j for j in store.claim_due(10, 30, per_webhook=4, handled_through=4)}
        assert store.failing_since() is None, "attempts under way have not failed yet"
        store.finish_all(
            [
                entry(jobs[1], "dead_letter", now - 1800),  # down for half an hour
                entry(jobs[2], "failed", now - 600),
                entry(jobs[3], "failed", now - 900),  # up: failed once, delivered since
                entry(jobs[4], "delivered", now - 60),
            ]
        )
        assert store.failing_since() == now - 1800
        store.add_jobs([NewJob(down, 5, 5, "ev5", "incidents/5", "bpbd", "{}")])
        (fifth,) = store.claim_due(10, 30, per_webhook=4, handled_through=5)
        store.finish_all([entry(fifth, "delivered", now)])
        assert store.failing_since() is None, "the receiver answered again"
        store.finish_all([entry(jobs[2], "failed", now + 10)])  # first attempted at now - 600
        assert store.failing_since() is None, "its first failure came before the delivery"
        store.add_jobs([NewJob(up, 6, 6, "ev6", "incidents/6", "bpbd", "{}")])
        (sixth,) = store.claim_due(10, 30, per_webhook=4, handled_through=6)
        store.finish_all([entry(sixth, "failed", now + 20)])
        assert store.failing_since() == now + 20
        store.delete_webhook(up)
        assert store.failing_since() is None
    finally:
        store.close()

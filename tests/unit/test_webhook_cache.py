"""When a notifier replica reads the webhooks again: a webhook created on another replica
gets every event recorded after it, not only those handled after this replica's next
periodic read."""

from __future__ import annotations

from services.notifier.webhook_cache import WebhookCache


def test_a_batch_recorded_after_the_last_read_reads_the_webhooks_again() -> None:
    now = [1000.0]
    cache = WebhookCache(clock=lambda: now[0])
    assert cache.needs_load(newest_recorded=999.0)  # never read
    cache.loaded([], cache.read_started())
    now[0] = 1000.5
    # An event recorded well before the read: no webhook made since can want it.
    assert not cache.needs_load(newest_recorded=998.0)
    # Recorded after the read (or within the clocks' margin of it): a webhook may have
    # been created meanwhile on another replica, so read again. (The 5 s cache missed it.)
    assert cache.needs_load(newest_recorded=1000.2)
    assert cache.needs_load(newest_recorded=999.5)


def test_the_webhooks_are_read_at_least_every_few_seconds_and_after_a_change() -> None:
    now = [1000.0]
    cache = WebhookCache(clock=lambda: now[0])
    cache.loaded([], cache.read_started())
    now[0] = 1004.0
    assert not cache.needs_load(newest_recorded=0.0)
    now[0] = 1005.5
    assert cache.needs_load(newest_recorded=0.0)  # deletions on other replicas
    cache.loaded([], cache.read_started())
    cache.invalidate()  # created or deleted on this replica
    assert cache.needs_load(newest_recorded=0.0)


def test_a_read_counts_from_when_it_started() -> None:
    now = [1000.0]
    cache = WebhookCache(clock=lambda: now[0])
    started = cache.read_started()
    now[0] = 1003.0  # a slow read: a webhook created during it may be missing
    cache.loaded([], started)
    assert cache.needs_load(newest_recorded=1000.5)


def test_a_store_of_one_process_is_read_only_after_changes_and_periodically() -> None:
    now = [1000.0]
    cache = WebhookCache(clock=lambda: now[0], shared=False)
    cache.loaded([], cache.read_started())
    now[0] = 1001.0
    assert not cache.needs_load(newest_recorded=1000.9)  # no other replica makes webhooks
    cache.invalidate()
    assert cache.needs_load(newest_recorded=0.0)


def test_a_change_made_during_a_read_is_read_next_time() -> None:
    now = [1000.0]
    cache = WebhookCache(clock=lambda: now[0], shared=False)
    started = cache.read_started()
    cache.invalidate()  # changed on this replica while the read was under way
    cache.loaded([], started)
    assert cache.needs_load(newest_recorded=0.0), "the read may hold the webhook as it was"
    cache.loaded([], cache.read_started())
    assert not cache.needs_load(newest_recorded=0.0)

"""The event store's PostgreSQL connections: checked before use, failing fast while the
server is unreachable, and back within about a second once it answers again.

The eventsourcing library keeps its connections in a psycopg_pool pool and retries
each operation ten times, 0.2 s apart, whenever getting a connection fails. With the
pool as the library builds it, a caller waited for a connection up to
``POSTGRES_CONNECT_TIMEOUT`` on each of the ten tries while the server was down (a
command took 29 s to fail), a connection the server had ended was handed out
unchecked (the first use after a restart failed), and reconnection backed off
exponentially (commands resumed 8 s after the server was back). :class:`StorePool`
replaces that pool before the library opens it:

- every connection is checked with an empty query before it is handed out
  (``POSTGRES_PRE_PING`` always on), and a dead one is replaced;
- reconnection attempts are at most ``RECONNECT_SECONDS`` apart;
- once a connection attempt has failed, and until one succeeds, a caller waits for a
  connection only until the next attempt has had its chance (``RECONNECT_SECONDS``
  and a little more); then :class:`StoreUnreachableError`, which the library does not
  retry: the caller answers ``UNAVAILABLE`` within about a second, and a caller that
  comes just after the server is back gets the connection made for it;
- a caller already waiting for a connection notices such a failure within
  ``SLICE_SECONDS``.

New connections get the session timeouts of :class:`services.common.sql.StoreTimeouts`,
libpq's ``connect_timeout``, so that an attempt against an unreachable host ends, and its
``tcp_user_timeout`` and keepalives, so that a connection to a host that died ends too.
"""

from __future__ import annotations

import threading
from time import monotonic
from typing import Any

from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.postgres import ConnectionPool, PostgresFactory
from psycopg import Connection
from psycopg_pool import PoolTimeout
from psycopg_pool.base import AttemptWithBackoff

from services.common.sql import StoreTimeouts
from services.common.store_errors import StoreUnreachableError

SLICE_SECONDS = 0.05  # a caller waiting for a connection looks this often for an outage
RECONNECT_SECONDS = 0.5  # at most between two reconnection attempts
# During an outage, how long a caller waits for a connection: the next attempt's result.
OUTAGE_WAIT_SECONDS = RECONNECT_SECONDS + 0.2


class QuickReconnect(AttemptWithBackoff):
    """Reconnection attempts 0.1 s apart at first, then twice as far, up to ``most``."""

    INITIAL_DELAY = 0.1

    def __init__(self, *, timeout: float, most: float) -> None:
        super().__init__(timeout=timeout)
        self._most = most

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, self._most)


class StorePool(ConnectionPool[Connection[Any]]):
    """The library's pool, failing fast during an outage (see the module's notes)."""

    def __init__(self, *args: Any, reconnect_seconds: float, **kwargs: Any) -> None:
        self._reconnect_seconds = reconnect_seconds
        self._unreachable = threading.Event()
        super().__init__(*args, **kwargs)

    @property
    def unreachable(self) -> bool:
        """True from a failed connection attempt until the next successful one."""
        return self._unreachable.is_set()

    def _connect(self, timeout: float | None = None) -> Connection[Any]:
        try:
            conn = super()._connect(timeout)
        except Exception:
            self._unreachable.set()
            raise
        self._unreachable.clear()
        return conn

    def _add_connection(self, attempt: AttemptWithBackoff | None, growing: bool = False) -> None:
        if attempt is None:
            attempt = QuickReconnect(timeout=self.reconnect_timeout, most=self._reconnect_seconds)
        super()._add_connection(attempt, growing)

    def getconn(self, timeout: float | None = None) -> Connection[Any]:
        deadline = monotonic() + (self.timeout if timeout is None else timeout)
        outage_deadline: float | None = None
        while True:
            now = monotonic()
            if not self._unreachable.is_set():
                outage_deadline = None
            elif outage_deadline is None:
                outage_deadline = now + OUTAGE_WAIT_SECONDS
            end = deadline if outage_deadline is None else min(deadline, outage_deadline)
            if now >= end:
                if outage_deadline is not None:
                    raise StoreUnreachableError(
                        "the store is unreachable (its last connection attempt failed)"
                    )
                raise PoolTimeout(
                    f"no connection within {self.timeout if timeout is None else timeout:.2f} s"
                )
            # In short slices: the pool pauses after each connection that fails its
            # check (one the server ended) for up to the slice, and an outage that
            # begins meanwhile is noticed at the next slice.
            try:
                return super().getconn(min(end - now, SLICE_SECONDS))
            except PoolTimeout:
                continue


def bound_store(factory: InfrastructureFactory[Any]) -> InfrastructureFactory[Any]:
    """The factory, its PostgreSQL datastore (if any) given a :class:`StorePool`.

    Call it before the factory builds a recorder: until then the library's own pool is
    not open, so it is simply replaced.
    """
    if not isinstance(factory, PostgresFactory):
        return factory
    datastore = factory.datastore
    old = datastore.pool
    if not isinstance(old.kwargs, dict):  # pragma: no cover - the library passes a dict
        raise TypeError("the library's pool settings are not a dict")
    timeouts = StoreTimeouts.from_env(factory.env)
    datastore.lock_timeout = timeouts.lock  # the library's SET LOCAL before its inserts
    datastore.pool = StorePool(
        connection_class=old.connection_class,
        kwargs={**old.kwargs, **timeouts.connection_kwargs()},
        min_size=old.min_size,
        max_size=old.max_size,
        open=False,
        configure=datastore.after_connect_func(),
        check=ConnectionPool.check_connection,
        timeout=old.timeout,
        max_waiting=old.max_waiting,
        max_lifetime=old.max_lifetime,
        get_password_func=old.get_password_func,
        name="event-store",
        reconnect_seconds=RECONNECT_SECONDS,
    )
    return factory

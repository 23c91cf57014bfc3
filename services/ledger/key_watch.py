"""The watch over this ledger's own signing key: has a rotation retired it?

Several replicas share one store. A rotation (docs/operations.md) is done by starting one
replica with the new key, which records the old key in ``ledger_retired_keys``; a replica
left running with the old key would go on sealing new events with it, and those events
are refused for good (at load, by every checkpoint, by the audit): nothing re-seals them.
So each running ledger asks the store, every ``LEDGER_STORE_CHECK_SECONDS`` (the interval
of its other store check), whether its key is recorded as retired; from the first yes on
it records nothing more (commands answer ``UNAVAILABLE``, ``SIGNING_KEY_RETIRED``, and
another replica takes them), its health turns ``NOT_SERVING`` so that a load balancer
sends callers elsewhere, and it logs once what happened and what to do.

The question alone leaves a window of up to one interval in which the replica still seals
with the retired key; each commit therefore also looks its key up in its own transaction
(``Ledger.guard_commits``, services/ledger/store.py), which closes it: this watch is what
turns the health NOT_SERVING (a replica that gets no command would not notice otherwise)
and what covers a store that had no table of retired keys when the replica started.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

from services.common.errors import SigningKeyRetired
from services.common.sql import DatabaseClosedError
from services.common.store_errors import STORE_CONNECTION_ERRORS

log = structlog.get_logger(__name__)

#: When, for which key, and up to which position a key was retired (Checkpoints.retirement).
Retirement = tuple[str, str, int]


class RetiredKeyWatch:
    """Asks ``lookup`` (the store's record of this ledger's key, None while it is not
    retired) every ``interval`` seconds in a thread of its own; at the first retirement
    found, calls ``on_retired`` once with the refusal commands answer from then on, and
    stops asking (a retired key is never reinstated)."""

    def __init__(
        self,
        key_id: str,
        lookup: Callable[[], Retirement | None],
        interval: float,
        on_retired: Callable[[SigningKeyRetired], None],
    ) -> None:
        self._key_id = key_id
        self._lookup = lookup
        self._interval = interval
        self._on_retired = on_retired
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._retired = threading.Event()
        self._thread = threading.Thread(target=self._run, name="key-watch", daemon=True)

    @property
    def retired(self) -> bool:
        """Whether the key was found retired."""
        return self._retired.is_set()

    def check(self) -> bool:
        """Ask once now; True when the key is retired (``on_retired`` has been called)."""
        if self._retired.is_set():
            return True
        found = self._lookup()
        if found is None:
            return False
        retired_at, successor, position = found
        self._retired.set()
        log.error(
            "ledger.signing_key_retired",
            key_id=self._key_id,
            retired_at=retired_at,
            successor=successor,
            position=position,
            note=(
                "another replica rotated the signing key: this one records nothing more "
                "and reports NOT_SERVING; restart it with the current signing key "
                "(LEDGER_SIGNING_KEY_FILE holding key "
                f"{successor}, and LEDGER_RETIRED_SIGNING_KEYS_FILE listing this one)"
            ),
        )
        self._on_retired(SigningKeyRetired(self._key_id, retired_at, successor))
        return True

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Ask now rather than at the end of the interval (a commit found the key retired)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                if self.check():
                    return
            except STORE_CONNECTION_ERRORS:  # the store watch says so; asked again next time
                continue
            except DatabaseClosedError:  # the service stops
                return

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

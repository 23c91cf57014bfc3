"""The ledger's own sweep of the evidence bucket: what interrupted uploads left behind.

An upload cut short by a kill of the ledger leaves its pending entry and chunks; one whose
ledger stopped between storing the file and recording its event leaves an object no event
names. This thread deletes both once they are older than ``LEDGER_EVIDENCE_SWEEP_GRACE_SECONDS``
(:class:`services.ledger.audit.evidence_check.OrphanSweep`): at start, then every
``LEDGER_EVIDENCE_SWEEP_SECONDS``. Every replica runs it; what makes that safe (an upload
under way on another replica is never taken for a leftover) is in
services/ledger/evidence_store.py.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import structlog
from prometheus_client import Counter

from services.common.config import EvidenceSettings
from services.common.errors import Unavailable
from services.common.metrics import Metrics
from services.common.store_errors import STORE_CONNECTION_ERRORS
from services.ledger.application import Ledger
from services.ledger.audit.evidence_check import OrphanSweep
from services.ledger.evidence_store import EvidenceObjects

log = structlog.get_logger(__name__)


class EvidenceSweeper:
    """Runs :class:`OrphanSweep` in a thread of its own (see the module's docstring)."""

    def __init__(
        self,
        ledger: Ledger,
        objects: EvidenceObjects,
        settings: EvidenceSettings,
        metrics: Metrics,
    ) -> None:
        self._sweep = OrphanSweep(ledger, objects, timedelta(seconds=settings.sweep_grace_seconds))
        self._interval = settings.sweep_seconds
        self._grace = settings.sweep_grace_seconds
        self._swept: Counter = metrics.counter(
            "ledger_evidence_swept",
            "objects the evidence sweep deleted, by kind (pending: an upload cut short; "
            "object: a complete file no event names)",
            ["kind"],
            known=[("pending",), ("object",)],
        )
        self._runs: Counter = metrics.counter(
            "ledger_evidence_sweeps",
            "evidence sweeps run, by outcome (done, failed)",
            ["outcome"],
            known=[("done",), ("failed",)],
        )
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="evidence-sweep", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.sweep_once()
            self._stopping.wait(self._interval)

    def sweep_once(self) -> None:
        try:
            swept = self._sweep.run(datetime.now(UTC))
        except (Unavailable, *STORE_CONNECTION_ERRORS) as exc:
            if self._stopping.is_set():  # cut short by the ledger's stop: not a failure
                return
            # NATS or the store is away: the next run retries.
            self._runs.labels("failed").inc()
            log.warning("evidence.sweep_failed", error=type(exc).__name__)
            return
        for item in swept:
            kind = "pending" if item.pending else "object"
            self._swept.labels(kind).inc()
            log.info(
                "evidence.swept",
                object=item.name,
                kind=kind,
                size=item.size_bytes,
                stored_at=item.stored_at.isoformat() if item.stored_at else None,
            )
        self._runs.labels("done").inc()
        log.info("evidence.sweep_done", swept=len(swept), grace_seconds=self._grace)

    def halt(self) -> None:
        """No run after the one under way, if any (which the evidence store's close ends)."""
        self._stopping.set()

    def stop(self) -> None:
        self.halt()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

"""The garbage collector after a service's start-up.

A service's process holds, after start-up, hundreds of thousands of long-lived objects
(modules, protobuf descriptors, reference data, caches). A full (generation 2) collection
walks every one of them and stops the whole process while it does: measured on the
ledger at 200 commands/s, 54-175 ms per full collection, the largest pauses of the run
(docs/performance.md, "Garbage collection"). ``gc.freeze()`` moves the objects alive at
that moment into a permanent generation the collector no longer visits; the objects the
service creates from then on are collected as before.
"""

from __future__ import annotations

import gc

import structlog

log = structlog.get_logger(__name__)


def freeze_after_start(service: str) -> None:
    """Collect what start-up left behind, then freeze the survivors (call once, last in
    the service's start-up)."""
    gc.collect()
    gc.freeze()
    log.debug(f"{service}.heap_frozen", objects=gc.get_freeze_count())

"""Reads from the projections with the guarantees queries promise.

- Read-your-writes: a query with ``min_position`` (a command's result) waits, up to
  its deadline, until the projections have applied that position.
- A query without it includes what was recorded before it was asked, unless another
  replica holds the projections' position for longer than ``REPLICA_BATCH_WAIT_SECONDS``
  (it froze inside a batch): then it answers from what is applied, without waiting more.
- Time travel: a query about a past time reads projections rebuilt in memory from
  the log up to the last position recorded at that time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from services.common.errors import InvalidArgument, Unavailable
from services.ledger.application import Ledger
from services.ledger.projections import Projections
from services.ledger.projections.service import ProjectionReader

MAX_WAIT_SECONDS = 10.0
# How long a query without min_position waits for another replica's batch (a batch of
# 500 events takes milliseconds; a longer hold is a replica that froze inside one).
REPLICA_BATCH_WAIT_SECONDS = 1.0


@dataclass(frozen=True)
class View:
    reader: ProjectionReader
    position: int
    # True when the reader must catch up before answering (no position was asked for).
    catch_up_first: bool
    # True for a view of the past: incidents are shown as of ``position``.
    historical: bool


class ReadModel:
    def __init__(self, ledger: Ledger, projections: Projections) -> None:
        self.ledger = ledger
        self.projections = projections

    @contextmanager
    def view(
        self,
        *,
        min_position: int = 0,
        as_of: datetime | None = None,
        timeout: float | None = None,
    ) -> Iterator[View]:
        if as_of is not None and as_of < datetime.now(UTC):
            position = self.ledger.position_at(as_of)
            with self.projections.as_of(position) as past:
                yield View(past, position, catch_up_first=False, historical=True)
            return
        if min_position:
            self.wait_for(min_position, timeout)
            yield View(self.projections, self.projections.position(), False, False)
            return
        recorded = self.ledger.recorder.max_notification_id() or 0
        position = self.projections.catch_up()
        if position < recorded:  # another replica holds the position: it applies them
            self.projections.wait_for(recorded, REPLICA_BATCH_WAIT_SECONDS)
            position = self.projections.position()
        yield View(self.projections, position, False, False)

    def wait_for(self, position: int, timeout: float | None) -> None:
        if position < 0:  # also refused with every request's checks, before the servicer
            raise InvalidArgument("min_position", "must not be negative")
        self.ledger.check_recorded(position, "min_position")
        wait = min(timeout if timeout is not None else MAX_WAIT_SECONDS, MAX_WAIT_SECONDS)
        if not self.projections.wait_for(position, max(wait, 0.0)):
            lag = self.projections.lag()
            raise Unavailable(
                f"the projections have not reached position {position} yet; retry",
                reason="PROJECTION_LAGGING",
                metadata={
                    "min_position": str(position),
                    "projection_position": str(self.projections.position()),
                    "lag_events": str(lag.events),
                },
            )

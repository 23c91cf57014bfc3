"""Live subscriptions (gRPC Subscribe): each reads the stream with an ordered consumer
from its cursor, on the engine's loop; the gRPC threads pull from them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import nats
import structlog

from incidentledger.v1 import incident_pb2 as pb
from services.common.errors import FailedPrecondition, Unavailable

if TYPE_CHECKING:
    from services.notifier.engine import Engine

# The engine's logger: these lines are the engine's.
log = structlog.get_logger("services.notifier.engine")

BATCH = 256  # messages handed to a live subscriber's thread at once


class LiveSubscription:
    """One gRPC subscriber's ordered consumer; its methods are called from the gRPC thread."""

    def __init__(self, engine: Engine, sub: Any, start_seq: int, epoch: str = "") -> None:
        self._engine = engine
        self._sub = sub
        self.cursor_seq = start_seq - 1
        self.epoch = epoch  # of the stream, for the cursors given out (messages.stream_epoch)
        # The consumer's own count of what it delivered: it starts again at 1 when the client
        # library sets the ordered consumer up anew (NATS back after an outage, or the
        # stream made again under it).
        self._consumer_seq = 0
        engine.live.add(self)

    def next_batch(self, timeout: float) -> list[tuple[int, pb.EventNotification]]:
        """The messages waiting (at least one), as (stream sequence, notification), or
        an empty list after ``timeout``. One hop to the engine's loop per batch.

        FAILED_PRECONDITION (CURSOR_EXPIRED) once the stream was made again under this
        subscription (its data lost, a restore): the client library carries the ordered
        consumer over to the new stream from the old stream's sequence, so the new events
        numbered at or below it never came, silently, and the cursors given out named the
        stream that is gone. Checked when the consumer was set up anew, and while idle."""
        try:
            msgs = self._engine.call(self._take(timeout), timeout + 5)
        except (TimeoutError, nats.errors.TimeoutError):
            self._check_epoch(fresh=False)
            return []
        except nats.errors.ConnectionClosedError:
            raise Unavailable(
                "the notifier lost its connection to the event stream; resume from your cursor",
                reason="STREAM_UNAVAILABLE",
            ) from None
        consumer_seqs = [int(msg.metadata.sequence.consumer) for msg in msgs]
        if consumer_seqs[0] <= self._consumer_seq:
            self._check_epoch(fresh=True)
        self._consumer_seq = consumer_seqs[-1]
        seqs = [int(msg.metadata.sequence.stream) for msg in msgs]
        # Never an event at or before the subscriber's cursor again (a consumer that
        # started over too early): it has it, or it asked to start after it.
        batch = [
            (seq, pb.EventNotification.FromString(msg.data))
            for seq, msg in zip(seqs, msgs, strict=True)
            if seq > self.cursor_seq
        ]
        self.cursor_seq = max(self.cursor_seq, seqs[-1])
        return batch

    def _check_epoch(self, *, fresh: bool) -> None:
        if not self.epoch:
            return  # a stream that said no creation time: nothing to compare
        now = self._engine.call(self._engine.stream_epoch_now(fresh), 15)
        if now is not None and now != self.epoch:
            raise FailedPrecondition(
                "the event stream was made again while you were subscribed (its data lost, "
                "or restored): the cursors given out count in the stream that is gone. "
                "Subscribe from now, and read what you missed from the ledger",
                reason="CURSOR_EXPIRED",
            )

    async def _take(self, timeout: float) -> list[Any]:
        msgs = [await self._sub.next_msg(timeout=timeout)]
        while len(msgs) < BATCH and self._sub.pending_msgs > 0:
            msgs.append(await self._sub.next_msg(timeout=1.0))
        return msgs

    def close(self) -> None:
        self._engine.live.discard(self)
        if not self._engine.running:
            return  # the engine closed the connection, and with it this consumer
        try:
            self._engine.call(self._sub.unsubscribe(), 5)
        except Exception as exc:  # the connection may be gone; nothing is left to free
            log.debug("subscription.close_failed", error=str(exc))

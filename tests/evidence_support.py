"""Test support for evidence: what someone with write access to NATS could do to a stored
file behind the ledger's back."""

from __future__ import annotations

import nats


async def change_one_byte(nats_url: str, bucket: str, name: str) -> None:
    """Replace the object's (only) chunk with one whose 100th byte differs, leaving the
    object's recorded digest as it was."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        store = await js.object_store(bucket)
        info = await store.get_info(name)
        stream, subject = f"OBJ_{bucket}", f"$O.{bucket}.C.{info.nuid}"
        chunk = await js.get_last_msg(stream, subject)
        assert chunk.seq is not None
        data = bytearray(chunk.data or b"")
        data[100] ^= 0x01
        await js.delete_msg(stream, chunk.seq)
        await js.publish(subject, bytes(data))
    finally:
        await nc.close()

"""What a caller sends reaches the server's log only bounded (a real ledger process).

A request id is the caller's text: before authentication only a short summary of it is
logged, after authentication at most the longest request id the ledger accepts, so that
megabyte-sized request ids cannot turn the log into a disk-filling channel.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import grpc
import pytest

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import ledger_service_pb2_grpc as api_grpc
from tests.support import dev_tokens, service_process

HUGE = 1_000_000  # characters of request id per call
CALLS = 20
# 20 calls without valid credentials plus a few authenticated ones: a few hundred bytes of
# log each when bounded (measured about 400), 20 MB when the request id is written in full.
LOG_BOUND = 64 * 1024


def test_a_huge_request_id_reaches_the_log_only_bounded(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with service_process("services.ledger", {"LEDGER_DATA_DIR": str(data)}) as ledger:
        channel = grpc.insecure_channel(f"127.0.0.1:{ledger.port}")
        stub = api_grpc.LedgerServiceStub(channel)
        token = dev_tokens(data)["kesbangpol"]
        before = ledger.log_path.stat().st_size
        credentials: list[tuple[tuple[str, str], ...]] = [
            (),
            (("authorization", "Bearer not-a-token"),),
            (("authorization", f"Bearer {token}"),),
        ]
        codes = set()
        try:
            for n in range(CALLS):
                marker = secrets.token_hex(4)
                request = api.ReportIncidentRequest(
                    request_id=marker + "x" * HUGE,
                    title="Rally",
                    category="crowd_gathering",
                    location=pb.Location(kecamatan="ipuh"),
                )
                with pytest.raises(grpc.RpcError) as caught:
                    stub.ReportIncident(
                        request, metadata=credentials[n % len(credentials)], timeout=30
                    )
                codes.add(caught.value.code())
        finally:
            channel.close()
        assert codes == {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT}
        written = ledger.log_path.stat().st_size - before
        assert written < LOG_BOUND, f"{CALLS} calls wrote {written} bytes of log"
        lines = [line for line in ledger.log_lines() if line.get("event") == "request"]
        assert len(lines) >= CALLS  # every call was logged, bounded
        assert all(len(str(line.get("request_id", ""))) < 256 for line in lines)

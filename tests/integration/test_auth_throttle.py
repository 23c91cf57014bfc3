"""Guessing bearer tokens is throttled per peer (a real ledger process, its log and metrics)."""

from __future__ import annotations

import secrets
from pathlib import Path

import grpc
import pytest

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import ledger_service_pb2_grpc as api_grpc
from services.common.grpc_errors import error_info, retry_info
from tests.fanout_support import wait_until
from tests.metrics_support import Scrape
from tests.support import dev_tokens, service_process

FAILURES = 5
WINDOW = 3.0
GUESSES = 200


def _call(stub: api_grpc.LedgerServiceStub, token: str) -> grpc.StatusCode:
    try:
        stub.ListIncidents(
            api.ListIncidentsRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=10
        )
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_guessing_tokens_is_throttled_and_the_peer_gets_back_in_after_the_window(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    env = {
        "LEDGER_DATA_DIR": str(data),
        "LEDGER_AUTH_MAX_FAILURES": str(FAILURES),
        "LEDGER_AUTH_WINDOW_SECONDS": str(WINDOW),
        "LEDGER_METRICS_LISTEN": "127.0.0.1:0",
    }
    with service_process("services.ledger", env) as ledger:
        valid = dev_tokens(data)["kesbangpol"]
        channel = grpc.insecure_channel(f"127.0.0.1:{ledger.port}")
        stub = api_grpc.LedgerServiceStub(channel)
        try:
            assert _call(stub, valid) == grpc.StatusCode.OK
            codes = [_call(stub, secrets.token_urlsafe(32)) for _ in range(GUESSES)]
            # The first guesses are told they are wrong; then the address is refused.
            assert codes[:FAILURES] == [grpc.StatusCode.UNAUTHENTICATED] * FAILURES
            assert set(codes[FAILURES:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            # Refused with the reason and when to come back; a valid token from the same
            # machine too (its answer must not tell a guesser that a guess was right).
            with_valid = None
            try:
                stub.ListIncidents(
                    api.ListIncidentsRequest(),
                    metadata=(("authorization", f"Bearer {valid}"),),
                    timeout=10,
                )
            except grpc.RpcError as error:
                with_valid = error
            assert with_valid is not None
            assert with_valid.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            info = error_info(with_valid)  # type: ignore[arg-type]
            assert info is not None and info.reason == "AUTH_THROTTLED"
            assert info.metadata["key"] == "peer"
            delay = retry_info(with_valid)  # type: ignore[arg-type]
            assert delay is not None
            assert 0 < delay.retry_delay.ToNanoseconds() <= WINDOW * 1e9
            # Not locked out for ever: after the window the valid client is served again.
            wait_until(
                lambda: _call(stub, valid) == grpc.StatusCode.OK,
                timeout=WINDOW + 10,
                what="the throttle's window to end",
            )
        finally:
            channel.close()
        started = next(line for line in ledger.log_lines() if line["event"] == "ledger.started")
        refused = Scrape(int(str(started["metrics_port"]))).total(
            "ledger_auth_throttled_total", key="peer"
        )
        assert refused >= GUESSES - FAILURES + 1
        lines = ledger.log_lines()
        # One line for the burst, not one per refused attempt.
        throttled = [line for line in lines if line["event"] == "auth.throttled"]
        assert len(throttled) == 1, throttled
        assert throttled[0]["peer"] == "ipv4:127.0.0.1"
        refused_lines = [
            line
            for line in lines
            if line["event"] == "request" and line.get("status") == "RESOURCE_EXHAUSTED"
        ]
        assert refused_lines == []


def test_refused_requests_are_logged_with_the_caller_s_address(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with service_process("services.ledger", {"LEDGER_DATA_DIR": str(data)}) as ledger:
        polres = (("authorization", f"Bearer {dev_tokens(data)['polres']}"),)
        with grpc.insecure_channel(f"127.0.0.1:{ledger.port}") as channel:
            stub = api_grpc.LedgerServiceStub(channel)
            assert _call(stub, secrets.token_urlsafe(32)) == grpc.StatusCode.UNAUTHENTICATED
            reported = stub.ReportIncident(
                api.ReportIncidentRequest(
                    request_id="r-1",
                    title="Crowd at the market",
                    category="crowd_gathering",
                    location=pb.Location(kecamatan="ipuh"),
                ),
                metadata=polres,
                timeout=10,
            )
            with pytest.raises(grpc.RpcError) as caught:  # the coordinator's command
                stub.VerifyIncident(
                    api.VerifyIncidentRequest(
                        request_id="r-2", name=reported.result.incident, comment="seen"
                    ),
                    metadata=polres,
                    timeout=10,
                )
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

        def refused() -> list[dict[str, object]]:
            return [
                line
                for line in ledger.log_lines()
                if line["event"] == "request"
                and line.get("status") in {"UNAUTHENTICATED", "PERMISSION_DENIED"}
            ]

        wait_until(lambda: len(refused()) == 2, timeout=10, what="both refusals logged")
        for line in refused():
            assert str(line["peer"]).startswith("ipv4:127.0.0.1:"), line

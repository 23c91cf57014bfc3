"""The clients ping their connections (gRPC keepalive: a frozen server is found within
30 s) and the servers accept those pings: with gRPC's defaults a server answers a client
that pings an idle connection with GOAWAY ``too_many_pings`` after two pings, dropping a
healthy connection every few pings. (An integration test: it waits out three pings.)"""

from __future__ import annotations

import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from incidentledger_client._transport import (
    KEEPALIVE_TIME_MS,
    KEEPALIVE_TIMEOUT_MS,
    channel_options,
)
from services.common.auth import Principal, TokenStore, token_hash
from services.common.grpc_server import RequestInterceptor
from services.common.serving import MIN_CLIENT_PING_INTERVAL_MS, new_server
from tests.netns import SeparateHost


def test_the_clients_find_a_silent_server_within_seconds_and_the_servers_allow_it() -> None:
    options = dict(channel_options(()))
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.http2.max_pings_without_data"] == 0
    # The ping in flight is waited for as long as a keepalive ping, not gRPC's 60 s.
    assert options["grpc.http2.ping_timeout_ms"] == KEEPALIVE_TIMEOUT_MS
    assert KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS <= 30_000
    # Not tighter: a ping waits behind the data sent before it (an upload on a slow link).
    assert KEEPALIVE_TIMEOUT_MS >= 20_000
    assert MIN_CLIENT_PING_INTERVAL_MS < KEEPALIVE_TIME_MS


def test_an_idle_client_connection_that_pings_is_not_sent_away() -> None:
    server = new_server(
        max_workers=2,
        max_message_bytes=1 << 20,
        interceptor=RequestInterceptor(TokenStore({}, development=True), "test.example"),
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=channel_options(()))
    left = threading.Event()

    def watch(state: grpc.ChannelConnectivity) -> None:
        if state in (grpc.ChannelConnectivity.IDLE, grpc.ChannelConnectivity.TRANSIENT_FAILURE):
            left.set()

    try:
        stub = health_pb2_grpc.HealthStub(channel)
        stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        left.clear()  # from here on, READY
        channel.subscribe(watch)
        # Three pings' time without a call: with gRPC's server defaults a GOAWAY closes the
        # connection (the channel goes IDLE) after the second (measured: 6 s at one ping
        # every 2 s).
        dropped = left.wait(3 * KEEPALIVE_TIME_MS / 1000 + 1)
        assert not dropped, "the server sent the pinging client away"
        stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    finally:
        channel.close()
        server.stop(None)


#: A streaming call's client, run on the other host: it follows the stream and says when it
#: has the first message.
FOLLOWER = """
import sys, grpc
channel = grpc.insecure_channel(sys.argv[1])
follow = channel.unary_stream("/test.Live/Follow")
md = (("authorization", "Bearer " + sys.argv[2]),)
for n, _ in enumerate(follow(b"", metadata=md, timeout=600)):
    if n == 0:
        print("following", flush=True)
"""


def test_a_stream_to_a_client_whose_host_went_silent_ends_and_frees_its_thread() -> None:
    """A live stream (a subscription, events streamed to an auditor) holds one of the
    server's request threads while it is open. When the client's host dies, or the network
    to it is cut, nothing answers. What ends the stream is gRPC's own bound on data sent and
    not acknowledged (``TCP_USER_TIMEOUT``, 20 s by default on a server's connections; the
    kernel's own would wait 15 minutes and more): measured here at about 21 s, so this test
    pins it (a subscription sends at least its heartbeats). Server keepalive pings, tried,
    added nothing to it."""
    opened, ended = threading.Event(), threading.Event()

    def follow(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        opened.set()
        try:
            while context.is_active():
                yield b"tick"
                time.sleep(0.2)
        finally:
            ended.set()

    token = secrets.token_hex(16)
    tokens = TokenStore({token_hash(token): Principal("kpu", "kpu-1")}, development=True)
    server = new_server(
        max_workers=2,
        max_message_bytes=1 << 20,
        interceptor=RequestInterceptor(tokens, "test.example"),
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Live", {"Follow": grpc.unary_stream_rpc_method_handler(follow)}
            )
        ]
    )
    client = SeparateHost()
    follower: subprocess.Popen[str] | None = None
    try:
        port = server.add_insecure_port(f"{client.near}:0")
        server.start()
        follower = subprocess.Popen(
            [*client.launcher(), sys.executable, "-c", FOLLOWER, f"{client.near}:{port}", token],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert follower.stdout is not None
        assert follower.stdout.readline() == "following\n"
        assert opened.is_set() and not ended.is_set()
        client.cut()
        assert ended.wait(60), "the stream to the silent client stayed open"
    finally:
        if follower is not None:
            follower.kill()
            follower.wait()
        server.stop(None)
        client.close()

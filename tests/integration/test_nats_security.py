"""The relay and the notifier against a real nats-server that requires TLS and a password."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import secrets
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import ledger_service_pb2_grpc as api_grpc
from incidentledger.v1 import notifier_service_pb2 as napi
from incidentledger.v1 import notifier_service_pb2_grpc as napi_grpc
from services.common.config import EvidenceSettings, NatsClientSettings, RelaySettings
from services.common.natsconn import connect_options
from services.common.natsserver import NatsServer, NatsServerTls
from services.ledger.evidence_store import EvidenceObjects, HashingSink
from services.notifier.server import build as build_notifier
from tests.fanout_support import (
    Stack,
    Subscriber,
    notifier_settings,
    wait_fanout_ready,
    wait_until,
    webhook_receiver,
)
from tests.integration.test_fanout import create_webhook, process_env
from tests.support import (
    ServiceProcess,
    dev_tokens,
    running_ledger,
    service_process,
    settings_for,
    store_environment,
)
from tests.tls_support import CertificateAuthority
from tests.unit.test_deploy import NATS_AUTH_EXAMPLE

pytestmark = pytest.mark.nats

USER = "ledger-services"


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "pki")


@pytest.fixture
def password() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture
def secured_nats(tmp_path: Path, ca: CertificateAuthority, password: str) -> Iterator[NatsServer]:
    """A nats-server that requires TLS (server certificate of the test CA) and a password."""
    server_cert = ca.server("nats")
    server = NatsServer(
        tmp_path / "nats",
        log_file=tmp_path / "nats-server.log",
        tls=NatsServerTls(server_cert.cert_file, server_cert.key_file),
        user=USER,
        password=password,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_events_flow_through_a_nats_server_with_tls_and_a_password(
    tmp_path: Path, ca: CertificateAuthority, password: str, secured_nats: NatsServer
) -> None:
    nats_settings = NatsClientSettings(tls_ca_file=ca.ca_file, user=USER, password=password)
    relay = RelaySettings(nats_url=secured_nats.url, nats=nats_settings, poll_seconds=0.2)
    with (
        store_environment("sqlite", tmp_path) as env,
        running_ledger(settings_for(tmp_path, env, relay=relay)) as ledger,
    ):
        notifier = build_notifier(notifier_settings(tmp_path, secured_nats.url, nats=nats_settings))
        wait_fanout_ready(ledger, notifier)
        channel = grpc.insecure_channel(f"127.0.0.1:{notifier.port}")
        subscriber = Subscriber(
            napi_grpc.NotifierServiceStub(channel),
            ledger.md("bpbd"),
            napi.SubscribeRequest(filter=napi.EventFilter(kecamatan=["air_manjunto"])),
        )
        try:
            subscriber.wait_started()
            result = ledger.report(
                "bpbd", category="flood", location=pb.Location(kecamatan="air_manjunto")
            )
            subscriber.wait_for(1)
            received = subscriber.notifications[0].notification
            assert received.event.event_id == result.event_id
            assert ledger.server.relay is not None
            assert ledger.server.relay.status.connected
        finally:
            subscriber.close()
            channel.close()
            notifier.stop(1.0)

    # Without the password, or without TLS, the server lets nobody in.
    async def refused(settings: NatsClientSettings) -> None:
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(
                secured_nats.url,
                allow_reconnect=False,
                connect_timeout=2,
                **connect_options(settings),
            )

    asyncio.run(refused(NatsClientSettings(tls_ca_file=ca.ca_file)))
    asyncio.run(refused(NatsClientSettings(tls_ca_file=ca.ca_file, user=USER, password="nope")))
    assert b"PONG" not in plaintext_reply(secured_nats.url, USER, password)


def plaintext_reply(url: str, user: str, password: str) -> bytes:
    """What a NATS server answers CONNECT (right credentials) and PING sent without TLS.

    The nats client upgrades to TLS by itself when the server asks for it, so the
    plaintext client is a socket: it reads the server's INFO, which must require TLS,
    then reads the answer until the server closes the connection or answers PONG.
    """
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        reader = sock.makefile("rb")
        info = json.loads(reader.readline().removeprefix(b"INFO "))
        assert info.get("tls_required") is True, info
        connect = json.dumps({"verbose": False, "user": user, "pass": password})
        sock.sendall(f"CONNECT {connect}\r\nPING\r\n".encode())
        answer = b""
        while line := reader.readline():
            answer += line
            if line.startswith(b"PONG"):
                break
        return answer


def relay_status(service: ServiceProcess) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        return int(
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(service="relay"), timeout=5)
            .status
        )


def events(service: ServiceProcess) -> list[str]:
    """The names of the lines ``service`` logged, in order."""
    return [str(line.get("event")) for line in service.log_lines()]


def logged(service: ServiceProcess, event: str) -> bool:
    return any(line.get("event") == event for line in service.log_lines())


def test_a_wrong_password_leaves_the_relay_disconnected_and_no_secret_in_the_logs(
    tmp_path: Path, ca: CertificateAuthority, password: str, secured_nats: NatsServer
) -> None:
    wrong = f"wrong-{secrets.token_urlsafe(16)}"
    (tmp_path / "secrets").mkdir()
    password_file = tmp_path / "secrets" / "nats-password"
    password_file.write_text(wrong + "\n")
    password_file.chmod(0o600)
    env = {
        **process_env(tmp_path, {}, secured_nats.url),
        "LEDGER_LOG_LEVEL_CHILD": "DEBUG",
        "NATS_TLS_CA_FILE": str(ca.ca_file),
        "NATS_USER": USER,
        "NATS_PASSWORD_FILE": str(password_file),
    }
    # The notifier gets the wrong password in the URL itself, which it must not log either.
    host_port = secured_nats.url.removeprefix("nats://")
    notifier_env = {
        **{k: v for k, v in env.items() if not k.startswith("NATS_")},
        "NATS_TLS_CA_FILE": str(ca.ca_file),
        "NATS_URL": f"nats://{USER}:{wrong}@{host_port}",
    }
    with (
        service_process("services.ledger", env) as ledger,
        service_process("services.notifier", notifier_env) as notifier,
    ):
        wait_until(lambda: logged(ledger, "relay.session_failed"), what="a refused relay")
        # Not connected since its start: told once at once, then once a minute.
        wait_until(lambda: logged(notifier, "notifier.nats_unreachable"), what="a refused notifier")
        refused = next(
            line
            for line in notifier.log_lines()
            if line.get("event") == "notifier.nats_unreachable"
        )
        assert "Authorization Violation" in str(refused["last_error"]), refused
        assert relay_status(ledger) == health_pb2.HealthCheckResponse.NOT_SERVING
        failures = [
            line for line in ledger.log_lines() if line.get("event") == "relay.session_failed"
        ]
        assert "Authorization Violation" in str(failures[0]["error"])
        started = next(
            line for line in notifier.log_lines() if line.get("event") == "notifier.started"
        )
        assert started["nats"] == f"nats://{USER}:***@{host_port}"
    for service in (ledger, notifier):
        text = service.log_path.read_text()
        assert wrong not in text, f"{service.module} logged the password"
        assert password not in text


def test_client_certificates_and_the_tls_handshake_first_with_nats(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    server_cert, client = ca.server("nats"), ca.client("ledger", "relay")
    token = secrets.token_urlsafe(16)
    server = NatsServer(
        tmp_path / "nats",
        tls=NatsServerTls(
            server_cert.cert_file, server_cert.key_file, ca_file=ca.ca_file, handshake_first=True
        ),
        token=token,
    )
    with server:

        async def connects(settings: NatsClientSettings) -> bool:
            client = await nats.connect(
                server.url, allow_reconnect=False, connect_timeout=2, **connect_options(settings)
            )
            await client.close()
            return True

        async def refused(
            settings: NatsClientSettings, error: type[Exception], match: str, timeout: float
        ) -> None:
            with pytest.raises(error, match=match):
                await nats.connect(
                    server.url,
                    allow_reconnect=False,
                    connect_timeout=timeout,
                    **connect_options(settings),
                )

        full = NatsClientSettings(
            tls_ca_file=ca.ca_file,
            tls_cert_file=client.cert_file,
            tls_key_file=client.key_file,
            tls_handshake_first=True,
            token=token,
        )
        assert asyncio.run(connects(full))
        without_certificate = NatsClientSettings(
            tls_ca_file=ca.ca_file, tls_handshake_first=True, token=token
        )
        # The server's TLS handshake asks for the client's certificate.
        asyncio.run(refused(without_certificate, ssl.SSLError, "CERTIFICATE_REQUIRED", 2))
        late_handshake = NatsClientSettings(
            tls_ca_file=ca.ca_file,
            tls_cert_file=client.cert_file,
            tls_key_file=client.key_file,
            token=token,
        )
        # The server waits for a TLS handshake, never sends INFO, and closes the connection
        # after its TLS timeout (2 s): the client waits longer, to see that close.
        asyncio.run(refused(late_handshake, nats.errors.Error, "expecting INFO", 10))


def test_a_server_stopped_before_it_was_ready_leaves_no_configuration_file(
    tmp_path: Path,
) -> None:
    # The file holds the password; a node of a cluster whose start failed is stopped so.
    server = NatsServer(tmp_path / "store", user=USER, password="s3cret-not-for-disk")
    server.spawn()
    try:
        conf = server._conf  # a private temporary file, mode 0600
        assert conf is not None and "s3cret-not-for-disk" in conf.read_text()
    finally:
        server.stop()
    assert not conf.exists()


# --- the production users and their permissions (deploy/nats/auth.example.conf) -------------


def production_users(passwords: dict[str, str]) -> str:
    """deploy/nats/auth.example.conf, with these passwords in place of its placeholders."""
    text = NATS_AUTH_EXAMPLE.read_text(encoding="utf-8")
    for user, secret in passwords.items():
        placeholder = f"REPLACE-{user}-password"
        assert placeholder in text, placeholder
        text = text.replace(placeholder, secret)
    return text


def violations(server_log: Path) -> list[str]:
    """The server's "Publish Violation" / "Subscription Violation" lines, as user and subject."""
    found = re.findall(
        r'"\$G/user:(\w+)" - (\w+ Violation) - Subject "([^"]+)"', server_log.read_text()
    )
    return [f"{user}: {kind} {subject}" for user, kind, subject in found]


def test_only_the_ledger_publishes_on_its_subjects_while_the_notifier_consumes(
    tmp_path: Path,
) -> None:
    passwords = {"ledger": secrets.token_urlsafe(24), "notifier": secrets.token_urlsafe(24)}
    server_log = tmp_path / "nats-server.log"
    server = NatsServer(
        tmp_path / "nats", log_file=server_log, authorization=production_users(passwords)
    )
    server.start()  # its URL names the port it binds at its start
    as_ledger = NatsClientSettings(user="ledger", password=passwords["ledger"])
    as_notifier = NatsClientSettings(user="notifier", password=passwords["notifier"])
    relay = RelaySettings(nats_url=server.url, nats=as_ledger, poll_seconds=0.2)
    with (
        server,
        store_environment("sqlite", tmp_path) as env,
        webhook_receiver() as receiver,
    ):
        settings = settings_for(tmp_path, env, relay=relay)
        notifier = build_notifier(notifier_settings(tmp_path, server.url, nats=as_notifier))
        channel = grpc.insecure_channel(f"127.0.0.1:{notifier.port}")
        try:
            with running_ledger(settings) as ledger:
                wait_fanout_ready(ledger, notifier)
                stack = Stack(ledger, notifier, channel, napi_grpc.NotifierServiceStub(channel))
                create_webhook(stack, receiver, "bpbd", kecamatan=["ipuh"])
                subscriber = stack.subscribe("bpbd", filter=napi.EventFilter(kecamatan=["ipuh"]))
                ledger.report("bpbd", category="flood", location=pb.Location(kecamatan="ipuh"))
                subscriber.wait_for(1)
            # A new relay session reads the stream's last message to find its position.
            with running_ledger(settings) as ledger:
                ledger.report("bpbd", category="flood", location=pb.Location(kecamatan="ipuh"))
                subscriber.wait_for(2)
                wait_until(lambda: len(receiver.verified()) == 2, what="both webhook deliveries")
            subscriber.close()
        finally:
            channel.close()
            notifier.stop(1.0)
        assert not subscriber.error, subscriber.error

        async def as_the_notifier() -> tuple[int, int]:
            refused: list[Exception] = []

            async def error(exc: Exception) -> None:
                refused.append(exc)

            nc = await nats.connect(
                server.url, allow_reconnect=False, error_cb=error, **connect_options(as_notifier)
            )
            try:
                js = nc.jetstream(timeout=1)
                subject = "ledger.v1.events.ipuh.flood.reported"
                headers = {"Ledger-Position": "1000", "Nats-Msg-Id": "1000"}
                with pytest.raises(nats.errors.TimeoutError):  # dropped: no acknowledgement
                    await js.publish(subject, b"not a ledger event", headers=headers)
                await nc.publish(subject, b"not a ledger event", headers=headers)
                with pytest.raises(nats.errors.TimeoutError):  # the stream is not its own either
                    await js.purge_stream("LEDGER_EVENTS")
                await nc.flush()
                wait = asyncio.get_running_loop().time() + 10
                while len(refused) < 3 and asyncio.get_running_loop().time() < wait:
                    await asyncio.sleep(0.05)
                assert all("permissions violation" in str(e) for e in refused), refused
                # Its consumer acknowledged everything it was given.
                consumer = await js.consumer_info("LEDGER_EVENTS", "notifier")
                state = (await js.stream_info("LEDGER_EVENTS")).state
                return state.messages, consumer.num_ack_pending or 0
            finally:
                await nc.close()

        messages, ack_pending = asyncio.run(as_the_notifier())
    assert messages == 2, "only the ledger's two events are on the stream"
    assert ack_pending == 0
    subject = "ledger.v1.events.ipuh.flood.reported"
    assert violations(server_log) == [
        f"notifier: Publish Violation {subject}",
        f"notifier: Publish Violation {subject}",
        "notifier: Publish Violation $JS.API.STREAM.PURGE.LEDGER_EVENTS",
    ], "the services' own work needs nothing the configuration refuses"


def test_a_relay_session_refused_a_permission_names_the_violation(tmp_path: Path) -> None:
    """A request that the server refuses for lack of permission is never answered: the relay's
    session ends with ``nats: timeout``, and only nats-py's error callback hears the server's
    ``Permissions Violation``. The session's failure (its log line and the relay's status)
    names it, not only the timeout."""
    passwords = {"ledger": secrets.token_urlsafe(24), "notifier": secrets.token_urlsafe(24)}
    users = production_users(passwords)
    permission = '"$JS.API.STREAM.INFO.LEDGER_EVENTS"\n'
    ledger_user = users.index("user: ledger")
    assert users.index(permission) > ledger_user, "the template changed: pick another permission"
    # Taken from the ledger's user only (the first; the notifier's has it too).
    server = NatsServer(tmp_path / "nats", authorization=users.replace(permission, "\n", 1))
    server.start()  # its URL names the port it binds at its start
    as_ledger = NatsClientSettings(user="ledger", password=passwords["ledger"])
    relay_settings = RelaySettings(
        nats_url=server.url, nats=as_ledger, poll_seconds=0.2, publish_timeout_seconds=1
    )
    with (
        server,
        store_environment("sqlite", tmp_path) as env,
        running_ledger(settings_for(tmp_path, env, relay=relay_settings)) as ledger,
    ):
        relay = ledger.server.relay
        assert relay is not None
        wait_until(lambda: relay.status.last_error != "", what="a failed relay session")
        error = relay.status.last_error
        assert "timeout" in error, error
        # nats-py says it in lower case: "permissions violation for publish to ...".
        assert "permissions violation" in error.lower(), error
        assert "$js.api.stream.info.ledger_events" in error.lower(), error
        assert not relay.status.connected


@pytest.mark.parametrize(
    ("backlog", "poll_seconds"),
    [(1, "0.2"), (300, "0.01")],
    ids=["one event", "a backlog the encoder takes longer than a poll to read"],
)
def test_a_relay_refused_at_each_publish_says_so_once_and_backs_off(
    tmp_path: Path, backlog: int, poll_seconds: str
) -> None:
    """The ledger's user may not publish on the events' subjects (a permission taken from
    it): each relay session finds its position, then times out at its first publish.
    Before, each such session logged ``relay.session_recovered`` once it had found its
    position, ``relay.session_failed`` a second later, and was retried after 0.2 s, its
    backoff started afresh: two lines a session, forever, where the operator is promised a
    line at the first failure, a reminder every half minute, and ``recovered`` when the
    relay publishes again. Now a session counts as working once it has published (or found
    nothing to publish).

    With a backlog, the encoder's first batch of a session may not be ready within the
    relay's poll: that empty wait counted as "nothing to publish", and a session whose
    publishes were never acknowledged (a NATS whose disk is full does the same as this
    refusal) said it had recovered. Now only the end of the log does."""
    passwords = {"ledger": secrets.token_urlsafe(24), "notifier": secrets.token_urlsafe(24)}
    users = production_users(passwords)
    permission = '"ledger.v1.>"\n'
    ledger_user = users.index("user: ledger")
    assert users.index(permission) > ledger_user, "the template changed: pick another permission"
    server = NatsServer(tmp_path / "nats", authorization=users.replace(permission, "\n", 1))
    server.start()  # its URL names the port it binds at its start
    (tmp_path / "secrets").mkdir()
    password_file = tmp_path / "secrets" / "nats-password"
    password_file.write_text(passwords["ledger"] + "\n")
    password_file.chmod(0o600)
    env = {
        **process_env(tmp_path, {}, server.url),
        "NATS_USER": "ledger",
        "NATS_PASSWORD_FILE": str(password_file),
        "LEDGER_RELAY_POLL_SECONDS": poll_seconds,
    }
    statuses: list[int] = []  # the relay's health, each change as the ledger said it

    def watch_relay(call: Any) -> None:
        with contextlib.suppress(grpc.RpcError):  # cancelled at the end of the test
            statuses.extend(answer.status for answer in call)

    with server, service_process("services.ledger", env) as ledger:
        token = dev_tokens(tmp_path / "data")["bpbd"]
        with grpc.insecure_channel(f"127.0.0.1:{ledger.port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="relay")
            )
            watcher = threading.Thread(target=watch_relay, args=(watch,), daemon=True)
            watcher.start()
            for n in range(backlog):
                api_grpc.LedgerServiceStub(channel).ReportIncident(
                    api.ReportIncidentRequest(
                        request_id=f"refused-{n}",
                        title="A report the relay may not publish",
                        category="flood",
                        location=pb.Location(kecamatan="ipuh"),
                    ),
                    metadata=(("authorization", f"Bearer {token}"),),
                )
            wait_until(
                lambda: events(ledger).count("relay.publishing") >= 4,
                timeout=60,
                what="four relay sessions",
            )
            watch.cancel()
            watcher.join(10)
        said = events(ledger)
        (failed,) = [x for x in ledger.log_lines() if x.get("event") == "relay.session_failed"]
    assert said.count("relay.session_failed") == 1, said
    # What was not acknowledged, and where to look (before: "TimeoutError: ", nothing more).
    assert "NATS acknowledged none or only part of" in str(failed["error"]), failed
    assert "NATS server's log" in str(failed["error"]), failed
    assert "relay.session_recovered" not in said, said
    # Nor does its health say SERVING between failures (before: once a session had found
    # its position, then NOT_SERVING a second later, each session).
    assert statuses, "the watch saw no status"
    assert health_pb2.HealthCheckResponse.SERVING not in statuses, statuses


def test_the_ledger_user_may_keep_evidence_in_its_bucket(tmp_path: Path) -> None:
    """The object store calls of evidence (create the bucket, put, stat, read, list, the
    sweep's conditional delete) as the production ledger user: none refused."""
    passwords = {"ledger": secrets.token_urlsafe(24), "notifier": secrets.token_urlsafe(24)}
    server_log = tmp_path / "nats-server.log"
    server = NatsServer(
        tmp_path / "nats", log_file=server_log, authorization=production_users(passwords)
    )
    as_ledger = NatsClientSettings(user="ledger", password=passwords["ledger"])
    source = tmp_path / "photo.jpg"
    source.write_bytes(b"\xff\xd8\xff\xe0" + secrets.token_bytes(300_000))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    with server:
        objects = EvidenceObjects(server.url, as_ledger, EvidenceSettings())
        try:
            name = f"sha256-{digest}"
            assert objects.put_chunks(iter([source.read_bytes()])).sha256 == digest
            assert objects.put_chunks(iter([source.read_bytes()])).sha256 == digest  # stored once
            assert objects.stat(name) is not None
            sink = HashingSink()
            objects.read_into(name, sink)
            assert (sink.sha256, sink.size) == (digest, 300_004)
            listed = objects.list_objects()
            assert [o.name for o in listed] == [name]
            assert objects.delete_unchanged(listed[0])
            assert objects.stat(name) is None
        finally:
            objects.close()
    assert violations(server_log) == []

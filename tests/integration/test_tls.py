"""The ledger's gRPC port over TLS and mutual TLS, with certificates made by the test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from incidentledger.v1 import incident_pb2 as pb
from incidentledger.v1 import ledger_service_pb2 as api
from incidentledger.v1 import ledger_service_pb2_grpc as api_grpc
from incidentledger_client import CertificateNotVerified, LedgerClient, NotifierClient, RetryPolicy
from incidentledger_client.cli import main as ledgerctl
from services.common.config import ServerTls
from services.common.grpc_errors import error_info
from tests.fanout_support import wait_until
from tests.ledgerctl_support import without_server_log
from tests.support import (
    REFERENCE_FILE,
    Client,
    dev_users,
    rid,
    running_ledger,
    service_process,
    settings_for,
    store_environment,
)
from tests.tls_support import CertificateAuthority, Issued


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "pki")


@contextmanager
def tls_ledger(tmp_path: Path, tls: ServerTls) -> Iterator[Client]:
    with (
        store_environment("popo", tmp_path) as env,
        running_ledger(settings_for(tmp_path, env, tls=tls)) as client,
    ):
        yield client


def secure_stub(
    ledger: Client, roots: Path, client: Issued | None = None
) -> tuple[grpc.Channel, api_grpc.LedgerServiceStub]:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=roots.read_bytes(),
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    channel = grpc.secure_channel(f"localhost:{ledger.server.port}", credentials)
    return channel, api_grpc.LedgerServiceStub(channel)


def report_request(title: str = "Rally at the square") -> api.ReportIncidentRequest:
    return api.ReportIncidentRequest(
        request_id=rid(),
        title=title,
        category="crowd_gathering",
        location=pb.Location(kecamatan="kota_mukomuko"),
    )


def reason(error: grpc.RpcError) -> str:
    info = error_info(error)  # type: ignore[arg-type]
    assert info is not None, "every error carries an ErrorInfo"
    return str(info.reason)


def test_server_tls_refuses_plaintext_and_serves_a_tls_client_with_a_token(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    server = ca.server()
    with tls_ledger(tmp_path, ServerTls.load(server.cert_file, server.key_file)) as ledger:
        with grpc.insecure_channel(f"127.0.0.1:{ledger.server.port}") as plain:
            with pytest.raises(grpc.RpcError) as refused:
                api_grpc.LedgerServiceStub(plain).ReportIncident(
                    report_request(), metadata=ledger.md("kesbangpol"), timeout=5
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        channel, stub = secure_stub(ledger, ca.ca_file)
        with channel:
            result = stub.ReportIncident(
                report_request(), metadata=ledger.md("kesbangpol"), timeout=10
            ).result
            assert result.version == 1
            # Without a token and without a client certificate: who is it?
            with pytest.raises(grpc.RpcError) as anonymous:
                stub.ReportIncident(report_request(), timeout=10)
            assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # Health checking needs no credentials, over TLS too.
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING

        # A client that trusts another CA does not accept this server.
        other = CertificateAuthority(tmp_path / "other", "Other CA")
        channel, stub = secure_stub(ledger, other.ca_file)
        with channel, pytest.raises(grpc.RpcError) as untrusted:
            stub.ReportIncident(report_request(), metadata=ledger.md("kesbangpol"), timeout=5)
        assert untrusted.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_the_certificate_names_the_agency(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    server = ca.server()
    tls = ServerTls.load(server.cert_file, server.key_file, ca.ca_file, "require")
    polres = ca.client("polres", "aiptu.rahman")
    with tls_ledger(tmp_path, tls) as ledger:
        channel, stub = secure_stub(ledger, ca.ca_file, polres)
        with channel:
            # A certificate and no token: the certificate is the credential.
            result = stub.ReportIncident(report_request(), timeout=10).result
            events = stub.ListIncidentEvents(
                api.ListIncidentEventsRequest(parent=result.incident), timeout=10
            ).events
            assert [(e.actor.agency, e.actor.officer) for e in events] == [
                ("polres", "aiptu.rahman")
            ]
            # A token of the same agency: allowed; its officer is recorded.
            with_token = stub.ReportIncident(
                report_request(), metadata=ledger.md("polres"), timeout=10
            ).result
            events = stub.ListIncidentEvents(
                api.ListIncidentEventsRequest(parent=with_token.incident), timeout=10
            ).events
            officer = dev_users(ledger.data_dir)["polres"].officer  # not the certificate's CN
            assert [(e.actor.agency, e.actor.officer) for e in events] == [("polres", officer)]
            # A token of another agency with this certificate: refused.
            with pytest.raises(grpc.RpcError) as mismatch:
                stub.ReportIncident(report_request(), metadata=ledger.md("kpu"), timeout=10)
            assert mismatch.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert reason(mismatch.value) == "CREDENTIALS_MISMATCH"

        # A certificate of the right CA for an agency the reference data does not know.
        stranger = ca.client("not_an_agency", "someone")
        channel, stub = secure_stub(ledger, ca.ca_file, stranger)
        with channel, pytest.raises(grpc.RpcError) as unknown:
            stub.ReportIncident(report_request(), timeout=10)
        assert unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason(unknown.value) == "CERTIFICATE_AGENCY_UNKNOWN"

        # No client certificate at all: the handshake fails (a token does not help).
        channel, stub = secure_stub(ledger, ca.ca_file)
        with channel, pytest.raises(grpc.RpcError) as missing:
            stub.ReportIncident(report_request(), metadata=ledger.md("polres"), timeout=5)
        assert missing.value.code() == grpc.StatusCode.UNAVAILABLE

        # A certificate for "polres" signed by a CA the server does not trust.
        forger = CertificateAuthority(tmp_path / "forger", "Forger CA")
        forged = forger.client("polres", "aiptu.rahman")
        channel, stub = secure_stub(ledger, ca.ca_file, forged)
        with channel, pytest.raises(grpc.RpcError) as refused:
            stub.ReportIncident(report_request(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_client_library_and_ledgerctl_speak_mutual_tls(
    tmp_path: Path, ca: CertificateAuthority, capsys: pytest.CaptureFixture[str]
) -> None:
    server = ca.server()
    tls = ServerTls.load(server.cert_file, server.key_file, ca.ca_file, "require")
    bpbd = ca.client("bpbd", "ops.desk")
    with tls_ledger(tmp_path, tls) as ledger:
        target = f"localhost:{ledger.server.port}"
        with LedgerClient(
            target,
            tls=ca.ca_file,
            client_cert=bpbd.cert_file,
            client_key=bpbd.key_file,
            retries=0,
        ) as client:
            result = client.report("Flood warning", "flood", "air_manjunto")
            reporter = client.get_incident(result.incident).reporter
            assert (reporter.agency, reporter.officer) == ("bpbd", "ops.desk")

        capsys.readouterr()
        code = ledgerctl(
            [
                "--address",
                target,
                "--tls-ca",
                str(ca.ca_file),
                "--tls-cert",
                str(bpbd.cert_file),
                "--tls-key",
                str(bpbd.key_file),
                "--json",
                "report",
                "River rising",
                "flood",
                "air_manjunto",
            ]
        )
        out = without_server_log(capsys.readouterr().out)
        assert code == 0, out
        assert json.loads(out)["version"] == 1


def test_a_certificate_not_for_client_authentication_is_refused_at_the_handshake_and_logged(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    """The TLS handshake refuses a client certificate whose extended key usage leaves out
    clientAuth (no call is made: the client sees UNAVAILABLE); the ledger's log says so,
    one line for a burst of attempts, and not gRPC's own line for each."""
    server = ca.server()
    not_for_clients = ca.server("not-for-clients")  # extended key usage: serverAuth only
    env = {
        "LEDGER_DATA_DIR": str(tmp_path / "data"),
        "LEDGER_LISTEN": "127.0.0.1:0",
        "LEDGER_REFERENCE_FILE": str(REFERENCE_FILE),
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(tmp_path / "data" / "ledger.sqlite"),
        "LEDGER_TLS_CERT_FILE": str(server.cert_file),
        "LEDGER_TLS_KEY_FILE": str(server.key_file),
        "LEDGER_TLS_CLIENT_CA_FILE": str(ca.ca_file),
        "LEDGER_TLS_CLIENT_AUTH": "require",
        "NATS_URL": "",  # no relay
    }
    with service_process("services.ledger", env) as ledger:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca.ca_file.read_bytes(),
            private_key=not_for_clients.key_pem,
            certificate_chain=not_for_clients.cert_pem,
        )
        for _ in range(5):
            with grpc.secure_channel(f"localhost:{ledger.port}", credentials) as channel:
                stub = api_grpc.LedgerServiceStub(channel)
                with pytest.raises(grpc.RpcError) as refused:
                    stub.ReportIncident(report_request(), timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        def refusals() -> list[dict[str, object]]:
            return [e for e in ledger.log_lines() if e.get("event") == "tls.handshake_refused"]

        wait_until(lambda: bool(refusals()), 10, "no tls.handshake_refused line")
        # Bounded: the burst is one line (more attempts within the window are counted).
        assert len(refusals()) == 1
        assert "unsupported certificate purpose" in str(refusals()[0]["reason"])
        raw = ledger.log_path.read_text(errors="replace")
        # The core's own line, one per refused connection, is not passed on: the bounded
        # line above stands for them all.
        assert "Handshake failed" not in raw


def test_a_server_certificate_the_client_does_not_verify_fails_at_once_with_its_cause(
    tmp_path: Path, ca: CertificateAuthority, capsys: pytest.CaptureFixture[str]
) -> None:
    """A certificate that does not verify will not on a retry: the client library raises
    CertificateNotVerified on the first attempt that shows it (not after its 20 s retry
    budget), naming the CA setting or the host name; ledgerctl and a subscription too."""
    server = ca.server("ledger-example", "ledger.example")  # not for localhost
    other = CertificateAuthority(tmp_path / "other", "Other CA")
    with tls_ledger(tmp_path, ServerTls.load(server.cert_file, server.key_file)) as ledger:
        target = f"localhost:{ledger.server.port}"
        for roots, cause in ((other.ca_file, "ca"), (ca.ca_file, "host_name")):
            started = time.monotonic()
            with (
                LedgerClient(target, tls=roots, retry=RetryPolicy(budget=20)) as client,
                pytest.raises(CertificateNotVerified) as refused,
            ):
                client.get_incident("incidents/none")
            assert time.monotonic() - started < 10, "retried a certificate that cannot verify"
            assert refused.value.code == "UNAVAILABLE"
            assert refused.value.cause == cause
            if cause == "ca":
                assert f"the CA file {roots}" in str(refused.value)
            else:
                assert "not for the host name 'localhost'" in str(refused.value)

            with (
                NotifierClient(target, tls=roots) as notifier,
                pytest.raises(CertificateNotVerified) as watched,
            ):
                next(iter(notifier.subscribe(max_reconnects=100)))
            assert watched.value.cause == cause
            with (
                LedgerClient(target, tls=roots) as client,
                pytest.raises(CertificateNotVerified) as streamed,
            ):
                list(client.history())
            assert streamed.value.cause == cause

        capsys.readouterr()
        started = time.monotonic()
        code = ledgerctl(["--address", target, "--tls-ca", str(ca.ca_file), "list"])
        err = capsys.readouterr().err
        assert code == 6
        assert time.monotonic() - started < 10
        assert "not for the host name localhost" in err, err


def test_a_server_that_refuses_the_client_s_certificate_fails_at_once(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    """A server that requires a client certificate closes the connection after the TLS
    handshake, which gRPC reports as any lost connection ("Socket closed"): the client
    library tells them apart and raises CertificateNotVerified (cause client_certificate)
    on the first attempt, not after its retry budget, for unary calls and streams alike."""
    server = ca.server()
    tls = ServerTls.load(server.cert_file, server.key_file, ca.ca_file, "require")
    forged = CertificateAuthority(tmp_path / "forger", "Forger CA").client("polres", "x")
    with tls_ledger(tmp_path, tls) as ledger:
        target = f"localhost:{ledger.server.port}"
        cases: list[tuple[Path | None, Path | None, str]] = [
            (None, None, "requires a client certificate"),
            (
                forged.cert_file,
                forged.key_file,
                f"does not accept the client certificate {forged.cert_file}",
            ),
        ]
        for cert, key, named in cases:
            started = time.monotonic()
            with LedgerClient(
                target,
                tls=ca.ca_file,
                retry=RetryPolicy(budget=20),
                client_cert=cert,
                client_key=key,
            ) as client:
                with pytest.raises(CertificateNotVerified) as unary:
                    client.get_incident("incidents/none")
                with pytest.raises(CertificateNotVerified) as streamed:
                    list(client.history())
            with (
                NotifierClient(
                    target, tls=ca.ca_file, client_cert=cert, client_key=key
                ) as notifier,
                pytest.raises(CertificateNotVerified) as watched,
            ):
                next(iter(notifier.subscribe(max_reconnects=100)))
            assert time.monotonic() - started < 10, "retried a refused certificate"
            for refused in (unary, streamed, watched):
                assert refused.value.cause == "client_certificate"
                assert named in str(refused.value)
        # A client the server accepts is served on the same kind of channel.
        polres = ca.client("polres", "aiptu.rahman")
        with LedgerClient(
            target, tls=ca.ca_file, client_cert=polres.cert_file, client_key=polres.key_file
        ) as client:
            assert client.reference_data().caller_agency == "polres"


def test_ledgerctl_keeps_grpc_cores_own_lines_off_the_terminal(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    """gRPC's C core logs each handshake it fails (``I... ssl_transport_security.cc...]
    Handshake failed ...``) on stderr: ledgerctl's own entry point sets GRPC_VERBOSITY before
    grpc is imported, so the person at the terminal reads only ledgerctl's message."""
    server = ca.server()
    other = CertificateAuthority(tmp_path / "other", "Other CA")
    with tls_ledger(tmp_path, ServerTls.load(server.cert_file, server.key_file)) as ledger:
        env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
        address = f"127.0.0.1:{ledger.server.port}"
        command = [sys.executable, "-m", "ledgerctl", "--address", address]
        done = subprocess.run(
            [*command, "--tls-ca", str(other.ca_file), "--agency", "polres", "list"],
            capture_output=True,
            text=True,
            env={**env, "LEDGER_DATA_DIR": str(ledger.data_dir)},
            timeout=60,
            check=False,
        )
    assert done.returncode == 6, done.stderr
    assert "does not verify" in done.stderr, done.stderr
    assert "ssl_transport_security" not in done.stderr, done.stderr
    assert "Handshake failed" not in done.stderr, done.stderr

"""Channels, credentials and the retry loop shared by the clients."""

from __future__ import annotations

import os
import random
import socket
import ssl
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from incidentledger_client.errors import (
    CertificateNotVerified,
    LedgerError,
    error_reason,
    from_rpc_error,
    retry_delay,
    status_code,
)

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""The only codes retried: the call may not have reached the server, or its answer was lost.
Commands are idempotent by request_id, so a retry never records twice."""


#: The shortest deadline a retry gets (one round trip on a slow link).
MIN_ATTEMPT_SECONDS = 0.5

#: How often the clients' channels ping each connection (gRPC keepalive), and how long an
#: unanswered ping is waited for before the connection is dropped: a server that stops
#: answering with its connection open (a frozen process or VM, a dead peer behind a NAT) is
#: found within ``KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS`` (30 s), whether or not a call
#: is under way on it. The servers accept pings this often (``services/common/serving.py``).
#: Not shorter: a ping queues behind the data already sent, and a field device's upload on
#: a slow, buffered mobile uplink (evidence, a backlog) can hold it for seconds; a tighter
#: timeout would drop such a connection mid-upload, again at every retry.
KEEPALIVE_TIME_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 20_000

#: Channel options of the clients' own channels (the caller's ``options`` come after and win):
#: a channel whose server went away tries to connect again at least every 2 s (gRPC's
#: default grows to 120 s), so a restarted server is reached within the retry budget; and it
#: pings its connections, idle ones too (``max_pings_without_data`` 0: without it gRPC stops
#: after two pings on an idle connection). A silent one is dropped: its calls fail at once
#: (``UNAVAILABLE``, retried) rather than at their deadline, and with several addresses
#: (``round_robin``) the silent server is left out until a new connection to it is answered.
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # gRPC core waits for an unanswered ping already in flight (one sent as the connection
    # opened, which a keepalive ping then joins) this long, 60 s by default, whatever
    # keepalive_timeout_ms says (grpc/grpc#34647): without it a frozen server went unnoticed.
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)


def channel_options(options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """:data:`DEFAULT_CHANNEL_OPTIONS` with the caller's ``options`` (same names replaced)."""
    merged = dict(DEFAULT_CHANNEL_OPTIONS)
    merged.update(options)
    return list(merged.items())


def new_request_id() -> str:
    """A fresh request id (uuid4, hex)."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter for UNAVAILABLE and DEADLINE_EXCEEDED.

    Attempt ``n`` (from 0) waits a random time in ``[0, min(max_backoff,
    initial_backoff * multiplier**n)]`` before the next one. Retries go on for ``budget``
    seconds from the start of the call (no wait ends later than that, and a retry's
    deadline is cut to what is left), or until ``retries`` retries after the first attempt
    if that is set (0 = never retry). A RESOURCE_EXHAUSTED that carries a RetryInfo (the
    agency's request rate was exceeded) is retried after the delay the server names, if
    that fits in what is left of the budget.

    The defaults outlast a restart of a service (3-6 s measured): 20 s of retries, at
    least one every 2 s once the backoff has grown, so a restarted server is found about
    a second after it is back.
    """

    retries: int | None = None
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    budget: float = 20.0
    #: Called before each retry with the attempt (from 0) and the seconds left of the
    #: budget: a command line says, at the first one, why nothing happens yet.
    on_retry: Callable[[int, float], None] | None = field(default=None, compare=False)

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        # Without a retry count the attempts are unbounded: keep the power finite.
        growth = self.multiplier ** min(attempt, 64)
        ceiling = min(self.max_backoff, self.initial_backoff * growth)
        return ceiling * rng()


#: How long a transfer's attempt must have run before it fails for the retry budget to
#: start again (see :func:`call_with_retry`): a refused connection fails at once, and
#: attempts that keep failing so still end with the budget.
TRANSFER_ATTEMPT_SECONDS = 5.0


def call_with_retry(
    call: Callable[[], T],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    rng: Callable[[], float] = random.random,
    clock: Callable[[], float] = time.monotonic,
    request_id: str | None = None,
    fatal: Callable[[grpc.RpcError], LedgerError | None] | None = None,
    transfer: bool = False,
) -> T:
    """Run ``call`` (one RPC attempt), retrying retryable failures; map errors.

    ``transfer``: each attempt is a file's transfer, which may rightly take longer than the
    whole budget; an attempt that ran at least :data:`TRANSFER_ATTEMPT_SECONDS` before it
    failed (the server was there, and restarted or lost its store meanwhile) starts the
    budget again, which otherwise counts from the first attempt: a 60 MB upload cut at 18 s
    by a ledger's restart was never sent again (the budget, 20 s, spent by the upload).

    ``fatal`` turns a failure that no retry can mend (the server's certificate not verified)
    into the error to raise at once; None: an ordinary failure.

    The caller builds the request once, so every attempt sends the same request (and the
    same request_id). A non-retryable failure, or the last retryable one, is raised as a
    :class:`~incidentledger_client.errors.LedgerError` carrying ``request_id`` and
    ``unanswered_attempts``. When the retries end on a failure without the server's answer
    (the last attempt cut short by the budget, a lost connection) after the server had
    answered an earlier attempt with a reason (``STORE_UNAVAILABLE``), that answer is raised:
    it says what is wrong, the cut-short attempt only that time ran out.
    """
    started = clock()
    attempt = 0
    answer: grpc.RpcError | None = None  # the server's last retryable answer with a reason
    unanswered = 0

    def give_up(error: grpc.RpcError) -> LedgerError:
        said = answer if answer is not None and _unanswered(error) else error
        raised = from_rpc_error(said, request_id)
        raised.unanswered_attempts = unanswered
        return raised

    while True:
        began = clock()
        try:
            return call()
        except grpc.RpcError as error:
            if transfer and clock() - began >= TRANSFER_ATTEMPT_SECONDS:
                started = clock()
            final = fatal(error) if fatal is not None else None
            if final is not None:
                final.request_id = final.request_id or request_id
                raise final from None
            code = status_code(error)
            if code in RETRYABLE:
                if _unanswered(error):
                    unanswered += 1
                else:
                    answer = error
            left = policy.budget - (clock() - started)
            if policy.retries is not None and attempt >= policy.retries:
                raise give_up(error) from None
            if code in RETRYABLE:
                wait = min(policy.delay(attempt, rng), left)
                if wait < 0 or left <= 0:
                    raise give_up(error) from None
            else:
                server_wait = retry_delay(error)  # the server says when to come back
                if server_wait is None or server_wait > left:
                    raise give_up(error) from None
                wait = server_wait
            if policy.on_retry is not None:
                policy.on_retry(attempt, left)
            sleep(wait)
            attempt += 1


def _unanswered(error: grpc.RpcError) -> bool:
    """A retryable failure without the server's reason: no answer in time, or a connection
    refused or lost. Unless refused, the request may have reached the server (and a command
    been recorded); an answer with a reason (STORE_UNAVAILABLE) says that it was not taken."""
    return status_code(error) in RETRYABLE and not error_reason(error)


#: What gRPC says when this client rejects the server's certificate: its host name check,
#: and BoringSSL's chain check (not signed by a trusted CA, expired, ...).
_HOST_NAME_FAILED = "Hostname Verification Check failed"
_VERIFY_FAILED = "CERTIFICATE_VERIFY_FAILED"


def certificate_failure(
    error: grpc.RpcError, target: str, ca: str, request_id: str | None = None
) -> CertificateNotVerified | None:
    """The error to raise when ``error`` says that this client did not verify the server's
    certificate (``target``: the address's host is the name checked; ``ca``: where the
    trusted CAs came from, as the message names it); None for any other failure.

    gRPC reports only the last address's error (``localhost``: perhaps ``::1`` refused while
    ``127.0.0.1`` presented the certificate), so an attempt may not show it: the retries
    go on until one does, or the budget ends."""
    if status_code(error) != grpc.StatusCode.UNAVAILABLE:
        return None
    details = getattr(error, "details", None)
    text = str(details() or "") if callable(details) else str(error)
    host = _host(target)
    if _HOST_NAME_FAILED in text:
        cause = "host_name"
        message = (
            f"the server at {target} presented a TLS certificate that is not for the host name "
            f"{host!r}: use an address whose host name the certificate names (or have a "
            f"certificate issued for {host!r})"
        )
    elif _VERIFY_FAILED in text:
        cause = "ca"
        why = text.split(_VERIFY_FAILED, 1)[1].lstrip(": ").split(": OK", 1)[0].strip()
        message = (
            f"the server at {target} presented a TLS certificate that {ca} does not verify"
            f"{f' ({why})' if why else ''}: give the CA that issued it"
        )
    else:
        return None
    return CertificateNotVerified(
        "UNAVAILABLE",
        "",
        message,
        {"cause": cause, "ca": ca, "host": host},
        request_id=request_id,
    )


#: How long the handshake probe waits for the server's verdict on a client certificate.
PROBE_SECONDS = 2.0
#: What gRPC says when the server closed the connection during the TLS handshake; also when
#: a server or a proxy in front of it goes away, which is why the handshake is tried again
#: (:func:`handshake_refusal`) before the call is given up.
_SOCKET_CLOSED = "Socket closed"


@dataclass(frozen=True)
class TlsMaterial:
    """What a TLS channel was made with: the trusted roots (None: the system's) and the
    client certificate and key (PEM), for :func:`handshake_refusal`."""

    roots: bytes | None
    pair: tuple[bytes, bytes] | None


def handshake_refusal(target: str, material: TlsMaterial) -> str | None:
    """How the server at ``target`` refuses a TLS connection made with ``material``, or
    None: it accepted it, or it could not be asked.

    gRPC reports a server that refuses the client's certificate only as "Socket closed",
    as it reports a server going away. This connection of its own tells them apart: with
    TLS 1.3 the client's handshake is done before the server judges its certificate, and
    a gRPC server that accepts it sends its HTTP/2 settings at once, while one that refuses
    it closes the connection without a byte (measured with grpcio 1.85: no certificate, or
    one of another CA). With TLS 1.2 the refusal is an alert during the handshake. A server
    going away refuses the connection or ends it during the handshake: not a refusal. Only
    the server's verdict on this client is asked for: the server's certificate is checked
    by gRPC (:func:`certificate_failure`)."""
    if "," in target or "/" in target or ":" not in target:
        return None  # several addresses or a resolver scheme: no one server to ask
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])  # as gRPC: a server closes a connection without it
    try:
        with tempfile.TemporaryDirectory() as private:  # mode 0700, removed at once
            if material.pair is not None:
                # The ssl module loads a certificate and its key only from files.
                cert_file, key_file = Path(private, "cert.pem"), Path(private, "key.pem")
                cert_file.write_bytes(material.pair[0])
                key_file.write_bytes(material.pair[1])
                context.load_cert_chain(cert_file, key_file)
            with (
                socket.create_connection((host, int(port)), PROBE_SECONDS) as raw,
                context.wrap_socket(raw, server_hostname=host) as tls,
            ):
                if tls.recv(1) == b"":
                    return "the connection closed once the handshake was done"
    except ssl.SSLError as error:
        reason = str(error.reason or "")
        if "_ALERT_" in reason and ("CERTIFICATE" in reason or "UNKNOWN_CA" in reason):
            return reason
    except (OSError, ValueError):
        pass  # not listening, closed during the handshake, no answer: not a refusal
    return None


def _host(target: str) -> str:
    """The host name of a ``host:port`` target (``dns:///host:port``, ``[::1]:port`` too)."""
    name = target.split("///", 1)[-1] if "///" in target else target.removeprefix("dns:")
    if name.startswith("["):
        return name[1:].split("]", 1)[0]
    return name.rsplit(":", 1)[0] if name.count(":") == 1 else name


def describe_client_certificate(certificate: ClientCertificate | None) -> str:
    """Where the client certificate came from, as an error names it."""
    if certificate is None:
        return "the client certificate"
    if isinstance(certificate.cert, str | Path):
        return f"the client certificate {certificate.cert}"
    if certificate.cert is None:
        for variable in certificate.cert_env:
            if os.environ.get(variable):
                return f"the client certificate {os.environ[variable]} (${variable})"
    return "the client certificate given (client_cert=...)"


def describe_ca(tls: bool | str | bytes | Path | None, env_vars: Sequence[str]) -> str:
    """Where the CAs that verify the server come from, as an error names them."""
    if isinstance(tls, bytes):
        return "the CA certificates given (tls=...)"
    if isinstance(tls, str | Path):
        return f"the CA file {tls}"
    if tls is None:
        for variable in env_vars:
            if os.environ.get(variable):
                return f"the CA file {os.environ[variable]} (${variable})"
    return "the system's CAs (no CA file given)"


def _read_certificates(
    tls: bool | str | bytes | Path | None, env_vars: Sequence[str]
) -> bytes | bool:
    """``True``/bytes/path for TLS (bytes or a file: root certificates), ``False`` for plaintext.

    ``None``: the CA file named by the first of ``env_vars`` that is set, else plaintext.
    """
    if isinstance(tls, bool):
        return tls
    certificates = _read_pem(tls, env_vars)
    return False if certificates is None else certificates


def _read_pem(value: str | bytes | Path | None, env_vars: Sequence[str]) -> bytes | None:
    """PEM bytes, or the file they are in; ``None``: the file named by the first set variable."""
    if value is None:
        path = next((os.environ[v] for v in env_vars if os.environ.get(v)), "")
        return Path(path).read_bytes() if path else None
    return value if isinstance(value, bytes) else Path(value).read_bytes()


@dataclass(frozen=True)
class ClientCertificate:
    """Where a client certificate and its key come from (for mutual TLS).

    ``cert``/``key``: PEM bytes or a path to a PEM file; ``None``: the files named by the
    first of ``cert_env``/``key_env`` that is set, else no client certificate.
    """

    cert: str | bytes | Path | None = None
    key: str | bytes | Path | None = None
    cert_env: Sequence[str] = ()
    key_env: Sequence[str] = ()

    def load(self) -> tuple[bytes, bytes] | None:
        cert, key = _read_pem(self.cert, self.cert_env), _read_pem(self.key, self.key_env)
        if (cert is None) != (key is None):
            raise ValueError("a client certificate and its private key go together")
        return (cert, key) if cert is not None and key is not None else None


def make_channel(
    target: str,
    tls: bool | str | bytes | Path | None,
    tls_env: Sequence[str],
    options: Sequence[tuple[str, Any]] = (),
    client_certificate: ClientCertificate | None = None,
) -> grpc.Channel:
    """A channel to ``target``: TLS when ``tls`` (or the ``tls_env`` CA file) says so.

    A client certificate (mutual TLS) turns TLS on (with the system's roots unless a CA is
    given). ``tls=False`` means plaintext: a client certificate given as an argument is then
    an error, one named by the environment is not used.
    """
    if tls is False:
        if client_certificate is not None and (
            client_certificate.cert is not None or client_certificate.key is not None
        ):
            raise ValueError("a client certificate needs TLS, but tls=False")
        return grpc.insecure_channel(target, options=list(options))
    material = tls_material(tls, tls_env, client_certificate)
    if material is None:
        return grpc.insecure_channel(target, options=list(options))
    key, chain = (material.pair[1], material.pair[0]) if material.pair else (None, None)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=material.roots, private_key=key, certificate_chain=chain
    )
    return grpc.secure_channel(target, credentials, options=list(options))


def tls_material(
    tls: bool | str | bytes | Path | None,
    tls_env: Sequence[str],
    client_certificate: ClientCertificate | None,
) -> TlsMaterial | None:
    """What :func:`make_channel` makes a TLS channel with; None for plaintext."""
    if tls is False:
        return None
    certificates = _read_certificates(tls, tls_env)
    pair = client_certificate.load() if client_certificate is not None else None
    if certificates is False and pair is None:
        return None
    roots = certificates if isinstance(certificates, bytes) else None
    return TlsMaterial(roots, pair)


class Transport:
    """A channel, the bearer token's metadata, the default timeout and the retry policy."""

    def __init__(
        self,
        *,
        target: str | None,
        target_env: str,
        default_target: str,
        token: str | None,
        auth_env: str,
        tls: bool | str | bytes | Path | None,
        tls_env: Sequence[str],
        timeout: float | None,
        retry: RetryPolicy,
        channel: grpc.Channel | None,
        options: Sequence[tuple[str, Any]],
        client_certificate: ClientCertificate | None = None,
        language: str | None = None,
    ) -> None:
        self.target = target or os.environ.get(target_env) or default_target
        resolved_token = token if token is not None else os.environ.get(auth_env, "")
        self.metadata: Metadata = (
            (("authorization", f"Bearer {resolved_token}"),) if resolved_token else ()
        )
        if language:
            # AIP-193: errors then carry a google.rpc.LocalizedMessage in this language.
            self.metadata = (*self.metadata, ("accept-language", language))
        self.timeout = timeout
        self.retry = retry
        self.ca = describe_ca(tls, tls_env)
        self._owns_channel = channel is None
        self.channel = (
            channel
            if channel is not None
            else make_channel(
                self.target, tls, tls_env, channel_options(options), client_certificate
            )
        )
        # A channel given is the caller's: how it was made is not known here.
        self._tls = None if channel is not None else tls_material(tls, tls_env, client_certificate)
        self._cert_source = describe_client_certificate(client_certificate)

    def unary(self, method: Callable[..., T], request: Any, timeout: float | None = None) -> T:
        """One unary RPC with the default deadline per attempt and retries.

        A retry's deadline is cut to what is left of the retry budget, so that a call ends
        within ``max(timeout, budget)``. A failure names the request's ``request_id``.
        """
        per_attempt = self.timeout if timeout is None else timeout
        started = time.monotonic()
        attempts = 0

        def attempt() -> T:
            nonlocal attempts
            deadline = per_attempt
            if attempts:
                left = max(MIN_ATTEMPT_SECONDS, self.retry.budget - (time.monotonic() - started))
                deadline = left if deadline is None else min(deadline, left)
            attempts += 1
            return method(request, timeout=deadline, metadata=self.metadata)

        request_id = getattr(request, "request_id", None)
        return self.retrying(attempt, str(request_id or "") or None)

    def retrying(
        self, call: Callable[[], T], request_id: str | None = None, *, transfer: bool = False
    ) -> T:
        """:func:`call_with_retry` with this transport's policy, a certificate that this
        client does not verify raised at once (:class:`CertificateNotVerified`)."""
        return call_with_retry(
            call,
            self.retry,
            request_id=request_id,
            fatal=self.certificate_failure,
            transfer=transfer,
        )

    def certificate_failure(self, error: grpc.RpcError) -> CertificateNotVerified | None:
        """The error to raise at once when ``error`` says that a certificate was not
        verified: the server's by this client (see :func:`certificate_failure`), or this
        client's by the server, which refused the handshake (cause ``client_certificate``;
        see :func:`handshake_refusal`)."""
        found = certificate_failure(error, self.target, self.ca)
        if (
            found is not None
            or self._tls is None
            or status_code(error) != grpc.StatusCode.UNAVAILABLE
        ):
            return found
        details = getattr(error, "details", None)
        if _SOCKET_CLOSED not in (str(details() or "") if callable(details) else str(error)):
            return None
        alert = handshake_refusal(self.target, self._tls)
        if alert is None:
            return None
        if self._tls.pair is None:
            message = (
                f"the server at {self.target} refused the TLS connection ({alert}): it requires "
                "a client certificate (mutual TLS): give your agency's"
            )
        else:
            message = (
                f"the server at {self.target} refused the TLS connection ({alert}): it does not "
                f"accept {self._cert_source}: it must be signed by the CA the server trusts "
                "for clients, and be for client authentication"
            )
        return CertificateNotVerified(
            "UNAVAILABLE",
            "",
            message,
            {"cause": "client_certificate", "refusal": alert, "host": _host(self.target)},
        )

    def close(self) -> None:
        if self._owns_channel:
            self.channel.close()

"""What ledgerctl answers to an error: its exit code, and a hint of what to do about it.

Exit codes: 0 ok, 1 other error, 2 usage or configuration error (and a request too large to
ever be taken), 3 not found, 4 conflict (ABORTED, ALREADY_EXISTS, FAILED_PRECONDITION, a limit
reached), 5 permission or authentication, 6 server error or unavailable (worth trying again
later), 7 stored data changed or lost (DATA_LOSS: trying again does not help).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, tzinfo

from incidentledger_client import (
    Aborted,
    AlreadyExists,
    Cancelled,
    CertificateNotVerified,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    LedgerError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from incidentledger_client.addresses import listening
from incidentledger_client.cli import output
from incidentledger_client.cli.state import State
from incidentledger_client.i18n import N_, _, format_time

(
    EXIT_OK,
    EXIT_OTHER,
    EXIT_USAGE,
    EXIT_NOT_FOUND,
    EXIT_CONFLICT,
    EXIT_PERMISSION,
    EXIT_SERVER,
    EXIT_DATA_LOSS,
) = (0, 1, 2, 3, 4, 5, 6, 7)
#: When the reader of ledgerctl's output closed it (``| head -1``): the status a shell gives a
#: tool that SIGPIPE ended, 128 + 13, which ledgerctl keeps (Python ignores the signal).
EXIT_OUTPUT_CLOSED = 141
#: Ctrl-C: the status a shell gives a tool that SIGINT ended, 128 + 2.
EXIT_INTERRUPTED = 130
#: Exit code per error class (the first matching class in order wins).
EXIT_CODES: tuple[tuple[type[LedgerError], int], ...] = (
    (InvalidArgument, EXIT_USAGE),
    (NotFound, EXIT_NOT_FOUND),
    (Aborted, EXIT_CONFLICT),
    (AlreadyExists, EXIT_CONFLICT),
    (FailedPrecondition, EXIT_CONFLICT),
    (PermissionDenied, EXIT_PERMISSION),
    (Unauthenticated, EXIT_PERMISSION),
    (Unavailable, EXIT_SERVER),
    (DeadlineExceeded, EXIT_SERVER),
    (Internal, EXIT_SERVER),
    (DataLoss, EXIT_DATA_LOSS),
    (ResourceExhausted, EXIT_SERVER),
    (Cancelled, EXIT_OTHER),
)
#: Exit code per error reason, before the classes: a RESOURCE_EXHAUSTED that no wait cures
#: is not the server failing. A script that tries again on 6 would send a file over the
#: limit, or create a 51st webhook, forever.
REASON_EXIT_CODES: dict[str, int] = {
    "EVIDENCE_TOO_LARGE": EXIT_USAGE,
    "INGEST_TOO_LARGE": EXIT_USAGE,
    "TOO_MANY_WEBHOOKS": EXIT_CONFLICT,
}


class InterruptedCommandError(Exception):
    """Ctrl-C stopped a command that has something to say about what it leaves behind (a file
    not written, reports sent so far): the message, on stderr, and exit code 130; ``metadata``
    says it to a program (the error object's, with --json)."""

    def __init__(self, message: str, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.metadata = metadata or {}


def exit_code_for(error: LedgerError) -> int:
    if error.reason in REASON_EXIT_CODES:
        return REASON_EXIT_CODES[error.reason]
    for cls, code in EXIT_CODES:
        if isinstance(error, cls):
            return code
    return EXIT_OTHER


def _field_note(field: str) -> str:
    """The request field a refusal names, as the person at the terminal knows it: the
    bytes of a file they attached travel in the upload's ``chunk`` field, which they never
    typed."""
    if field == "chunk":
        return _("(in the file's content)")
    return _("(field {field})").format(field=field)


def said(error: LedgerError) -> str:
    """What a person reads of the server's refusal: in English the server's own message, which
    names the case; in another language the server's message in it (AIP-193
    LocalizedMessage, asked for with accept-language). --json keeps the English one, the same
    in every language.

    A refused field's LocalizedMessage is often the reason's general sentence ("The value of
    title is not acceptable."), while the English message, the field violation's description
    ("title: is required"), says what is wrong with it: in English that description alone, in
    another language the translated sentence with the description after it, so that nothing
    is lost. A refusal whose metadata names its ``check`` has a sentence of its own, which
    says as much as the description: in another language that sentence alone."""
    field, localized, described = error.field, error.localized_message, error.message
    english = not error.locale or error.locale.split("-")[0] == "en"
    if not field:
        # The reason's sentence is general ("There is no personal data here that you may read
        # or erase."); the server's own message says which case it is ("no personal data is
        # left to erase: already erased"): in English that one, elsewhere the translation.
        return described if english else (localized or described)
    prefix = f"{field}: "
    # The bytes of an attached file travel in the upload's chunk field, which the person never
    # typed: the description without it, and a note that says where the fault is.
    if field == "chunk" and described.startswith(prefix):
        described = described[len(prefix) :]
    names_field = described.startswith(prefix)
    text = described
    if localized and not english and localized != described:
        if error.metadata.get("check"):
            # The ledger's sentence for the check that failed (docs/api.md: era, future,
            # ahead, window) says the whole case, times included: the English after it only
            # said it twice.
            names_field = field in localized
            text = localized
        else:
            text = f"{localized} ({described})"
    return text if names_field else f"{text} {_field_note(field)}"


@dataclass(frozen=True)
class Hint:
    message: str
    metadata: dict[str, str]


#: The services ledgerctl calls, as the messages name them (the code stays in the metadata).
SERVICES = {"ledger": N_("ledger"), "notifier": N_("notifier")}
#: What gRPC says when the client itself rejects the server's certificate.
_VERIFY_FAILED = ("certificate verify failed", "CERTIFICATE_VERIFY_FAILED", "self signed")
#: What it says when the far end is not speaking TLS, or TLS is spoken to a plaintext port.
_NOT_TLS = ("WRONG_VERSION_NUMBER", "wrong version number", "Trying to connect an http1.x server")


def _ca_named(tls_ca: str | None) -> str:
    """The CA the client verified the server with, as the messages name it."""
    if tls_ca:
        return tls_ca
    if os.environ.get("LEDGER_TLS_CA"):
        return "$LEDGER_TLS_CA"
    return _("of the system (no --tls-ca given)")


def _refused(text: str) -> bool:
    return "Connection refused" in text or "DNS resolution failed" in text


def never_reached(error: LedgerError, address: str) -> bool:
    """Whether ``error`` says that nothing reached the server at ``address``: the connection
    refused (or the name not found) and nothing listening there, so no command of the
    call can have been recorded. gRPC reports only its last address's error (localhost:
    often ::1 refused while 127.0.0.1 answered): whether anything listens decides."""
    if not isinstance(error, Unavailable | DeadlineExceeded) or error.reason:
        return False
    return _refused(error.message) and not listening(address)


def explain(error: LedgerError, st: State) -> Hint | None:
    """What to do about an error, in words that name the address, the setting it came from and
    the flag that fixes it; None when the server's message says it already."""
    if not st.used:
        return None
    settings = st.settings
    service = st.used[-1]
    setting = "address" if service == "ledger" else "notifier_address"
    address = getattr(settings, setting)
    where = _("{service} at {address} (from {source})").format(
        service=_(SERVICES.get(service, service)), address=address, source=settings.source(setting)
    )
    meta = {"service": service, "address": address, "address_from": settings.source(setting)}
    text = error.message
    if isinstance(error, Unavailable | DeadlineExceeded) and error.reason:
        # The server answered, with its reason (STORE_UNAVAILABLE, PROJECTION_LAGGING): the
        # address, the network and TLS are fine, so none of the hints below applies.
        return _answered_unavailable(error, st, where, meta)
    if isinstance(error, Unavailable | DeadlineExceeded):
        has_cert = bool(settings.tls_cert or os.environ.get("LEDGER_TLS_CLIENT_CERT"))
        # A client certificate turns TLS on too (with the system's CAs).
        tls = bool(settings.tls_ca or os.environ.get("LEDGER_TLS_CA")) or has_cert
        if isinstance(error, CertificateNotVerified) and error.cause == "host_name":
            return Hint(
                _(
                    "the {where} presented a certificate that is not for the host name {host}: "
                    "give an address whose host name the certificate names (--address)"
                ).format(where=where, host=error.metadata.get("host", "")),
                {**meta, "cause": "host_name"},
            )
        # The server refused this client's certificate (or its lack of one): hints below.
        refused_client = (
            isinstance(error, CertificateNotVerified) and error.cause == "client_certificate"
        )
        if (isinstance(error, CertificateNotVerified) and not refused_client) or any(
            s in text for s in _VERIFY_FAILED
        ):
            return Hint(
                _(
                    "the {where} presented a certificate that the CA {ca} does not verify: "
                    "check --tls-ca (tls_ca) and that the address matches the server's "
                    "certificate"
                ).format(where=where, ca=_ca_named(settings.tls_ca)),
                meta,
            )
        if tls and any(s in text for s in _NOT_TLS):
            return Hint(
                _("the {where} does not speak TLS: drop --tls-ca (tls_ca)").format(where=where),
                meta,
            )
        refused = _refused(text)
        if never_reached(error, address):
            return Hint(
                _(
                    "cannot reach the {where}: is it running (make run), and is the address "
                    "right? ledgerctl config view shows every setting and its source"
                ).format(where=where),
                meta,
            )
        closed = refused_client or refused or "Socket closed" in text or "handshake" in text.lower()
        if tls and not has_cert and closed:
            return Hint(
                _(
                    "the TLS handshake with the {where} failed: the server requires a client "
                    "certificate (mutual TLS): give your agency's with --tls-cert and "
                    "--tls-key (tls_cert, tls_key)"
                ).format(where=where),
                meta,
            )
        if tls and has_cert and closed:
            return Hint(
                _(
                    "the TLS handshake with the {where} failed: the server refused the client "
                    "certificate --tls-cert (tls_cert): it must be signed by the CA the server "
                    "trusts for its clients and, if it names its uses, be for client "
                    "authentication (clientAuth); the server logs why (tls.handshake_refused)"
                ).format(where=where),
                meta,
            )
        if not tls and closed:
            return Hint(
                _(
                    "the {where} closed the connection: it probably speaks TLS: verify it "
                    "with its CA, --tls-ca ca.pem (tls_ca), and if it asks for one, give a "
                    "client certificate with --tls-cert and --tls-key"
                ).format(where=where),
                meta,
            )
        if st.request_id:
            # The request may have reached the ledger and been recorded, its answer lost on
            # the way back: typed again as it was, it would get a new id and be recorded
            # twice. The same id is recorded at most once.
            return Hint(
                _(
                    "no answer came from the {where} in time: the command may have been "
                    "recorded all the same. Do not simply type it again: send it again with "
                    "the same request id, --request-id {request_id}, and it is recorded at "
                    "most once"
                ).format(where=where, request_id=st.request_id),
                meta,
            )
        return Hint(_("cannot reach the {where}").format(where=where), meta)
    if isinstance(error, Unauthenticated):
        if not settings.token and not settings.tls_cert:
            return Hint(
                _(
                    "no credentials: act as an agency with --agency NAME before the command "
                    "(ledgerctl --agency NAME webhooks ...: after it, --agency may be the "
                    "command's own option, a filter), its token from the development tokens "
                    "file {file}, written by the ledger on its first start; or pass the token "
                    "your ledger's administrator gave you with --token or LEDGER_TOKEN, or a "
                    "client certificate with --tls-cert and --tls-key"
                ).format(file=settings.tokens_file),
                meta,
            )
        if settings.token:
            return Hint(
                _(
                    "the token from {source} was refused by the {where}: check it "
                    "(ledgerctl config view) or ask for a new one"
                ).format(source=settings.source("token"), where=where),
                meta,
            )
    if error.reason == "OLD_VALUE_MISMATCH":
        return _recorded_time(error, st.zone(ask_ledger=False))
    step = _next_step(error)
    if step is not None:
        return step
    if error.reason == "PERSONAL_DATA_UNREADABLE":
        # One person's changed or lost key must not keep the others' data from those who
        # need it: a read of them alone opens nothing of that person's.
        return Hint(
            _(
                "the stored data of subject {subject} was changed or its key lost, and "
                "nothing was read or recorded: read the others the report names with "
                "--subject (ledgerctl pii accesses shows them), and tell the operator and "
                "the auditors"
            ).format(subject=output.short_id(error.metadata.get("subject", ""))),
            {},
        )
    return None


def _next_step(error: LedgerError) -> Hint | None:
    """What the officer does next, for the refusals whose words say only what went wrong
    (a duty officer's review: each left them to guess the command that helps)."""
    meta = error.metadata
    if error.reason == "VERSION_CONFLICT":
        current, expected = meta.get("current_version", ""), meta.get("expected_version", "")
        if not (current.isdigit() and expected.isdigit()) or int(expected) > int(current):
            return None  # a version ahead: the ledger's words say to check it
        return Hint(
            _(
                "read it again (ledgerctl show, ledgerctl history) and, if your decision "
                "still holds, send the command with -V {current}"
            ).format(current=current),
            {},
        )
    if error.reason == "NOT_INVOLVED":
        return Hint(
            _(
                "your agency neither leads nor supports this incident: ask the coordinator to "
                "add it in support (ledgerctl support INCIDENT AGENCY, by the coordinator)"
            ),
            {},
        )
    if error.reason == "REQUEST_ID_REUSED":
        return Hint(
            _(
                "that request id was used for another request: leave out --request-id "
                "(ledgerctl makes a new one), or give the id of the request you meant"
            ),
            {},
        )
    if error.reason == "ILLEGAL_TRANSITION":
        if meta.get("status") == "MERGED" and meta.get("merged_into"):
            survivor = meta.get("merged_into_reference") or meta["merged_into"]
            return Hint(
                _("the incident was merged into {survivor}: act on that one").format(
                    survivor=survivor
                ),
                {},
            )
        if meta.get("status") == "REPORTED":
            return Hint(
                _(
                    "the incident is not verified yet: the coordinator verifies it first "
                    "(ledgerctl verify INCIDENT)"
                ),
                {},
            )
    return None


#: The correctable fields that hold a time.
_TIME_FIELDS = frozenset({"occurred_at", "valid_from", "valid_until"})


def _recorded_time(error: LedgerError, zone: tzinfo) -> Hint | None:
    """The recorded value of a time, when a correction named another, as ledgerctl shows
    times (``9 Des 2026 08.00 WIB``; the ledger says it in ISO 8601, in the zone OLD was
    sent in: 2026-12-09T08:00:00+07:00)."""
    field, recorded = error.metadata.get("field", ""), error.metadata.get("recorded_value", "")
    if field not in _TIME_FIELDS:
        return None
    try:
        moment = datetime.fromisoformat(recorded)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return Hint(
        _("the recorded {field} is {time}: give it as OLD").format(
            field=field, time=format_time(moment, zone)
        ),
        {},
    )


def _answered_unavailable(
    error: LedgerError, st: State, where: str, meta: dict[str, str]
) -> Hint | None:
    """What to do about the server's own UNAVAILABLE (the client raises it rather than the
    deadline of a last attempt that the retry budget cut short)."""
    if error.reason == "STORE_UNAVAILABLE":
        problem = _("the {where} cannot reach its database").format(where=where)
    elif error.reason == "STORE_FULL":
        problem = _("the database of the {where} has no space left (its disk is full)").format(
            where=where
        )
    elif st.request_id:
        problem = _("the {where} cannot take the command now").format(where=where)
    else:
        return None  # a query: the server's message says what is wrong and what to do
    if not st.request_id:
        return Hint(problem, meta)
    meta = {**meta, "unanswered_attempts": str(error.unanswered_attempts)}
    if error.unanswered_attempts:
        # The ledger's answer says that the attempt it answered was not taken; an attempt
        # that got no answer (cut short by --timeout) may have been recorded all the same.
        return Hint(
            _(
                "{problem}, and an attempt that got no answer in time may have recorded the "
                "command all the same. Do not simply type it again: send it again later with "
                "the same request id, --request-id {request_id}, and it is recorded at most once"
            ).format(problem=problem, request_id=st.request_id),
            meta,
        )
    # Every attempt was answered that the command could not be taken; the same request id
    # is still the one to send it again with (should a commit's answer have been lost in
    # the database, the ledger records it at most once).
    return Hint(
        _(
            "{problem}: send the command again later with the same request id, --request-id "
            "{request_id}, and it is recorded at most once"
        ).format(problem=problem, request_id=st.request_id),
        meta,
    )

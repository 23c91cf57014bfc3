"""The ledgerctl commands (typer). See ``ledgerctl --help`` and ``ledgerctl COMMAND --help``.

Exit codes: 0 ok, 1 other error, 2 usage or configuration error, 3 not found,
4 conflict (ABORTED, ALREADY_EXISTS, FAILED_PRECONDITION), 5 permission or authentication,
6 server error or unavailable.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.main
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from incidentledger_client import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    LedgerClient,
    LedgerError,
    Location,
    NotFound,
    NotifierClient,
    PermissionDenied,
    ResourceExhausted,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
    __version__,
)
from incidentledger_client.addresses import listening
from incidentledger_client.cli import arguments, config, names, output, times
from incidentledger_client.types import (
    CommandResult,
    EventFilter,
    ReferenceData,
    VerifyProgress,
    VerifyReport,
    Webhook,
)

EXIT_OK, EXIT_OTHER, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_PERMISSION, EXIT_SERVER = (
    0,
    1,
    2,
    3,
    4,
    5,
    6,
)
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
    (DataLoss, EXIT_SERVER),
    (ResourceExhausted, EXIT_SERVER),
    (Cancelled, EXIT_OTHER),
)

EPILOG = (
    "Exit codes: 0 ok, 1 other, 2 usage, 3 not found, 4 conflict, 5 permission, "
    "6 server/unavailable."
)

#: -h as well as --help, on every command (click passes it down to the subcommands).
CONTEXT = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="ledgerctl",
    help="Command-line tool of the incident ledger: report and handle incidents, follow the "
    "situation, audit the ledger. Global options (--agency, --json, ...) go anywhere on the "
    "line.",
    epilog="Example: ledgerctl report 'Mass gathering' crowd_gathering kota_mukomuko "
    "--severity high -a kesbangpol\n\n" + EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings=CONTEXT,
)


def _group(help_: str, example: str) -> typer.Typer:
    return typer.Typer(help=help_, epilog=f"Example: {example}", no_args_is_help=True)


handover_app = _group(
    "Propose or accept a handover of the lead.",
    "ledgerctl -a satpolpp handover propose 0b6f12 polres --reason 'needs police'",
)
close_app = _group(
    "Request or approve the closure of a resolved incident.",
    "ledgerctl -a polres close request 0b6f12",
)
webhooks_app = _group(
    "Webhooks of your agency: register, list, update, delete, deliveries, dead letters, replay.",
    "ledgerctl -a bpbd webhooks list",
)
audit_app = _group(
    "Audit: verify the hash chains, export the history, as-of views.",
    "ledgerctl -a inspektorat audit verify",
)
config_app = _group(
    "ledgerctl's own settings: the effective values and where each came from, contexts.",
    "ledgerctl config view --context production",
)
app.add_typer(handover_app, name="handover")
app.add_typer(close_app, name="close")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(audit_app, name="audit")
app.add_typer(config_app, name="config")


@dataclass
class State:
    """The root options, resolved into settings only when a command needs them (so --help,
    --version, completion and ``config`` work whatever the configuration says)."""

    options: dict[str, Any] = field(default_factory=dict)
    as_json: bool = False
    _resolved: config.Settings | None = None
    _ledger: LedgerClient | None = None
    _notifier: NotifierClient | None = None
    _reference: ReferenceData | None = None
    #: The services this run has called ("ledger", "notifier"): an error names their address.
    used: list[str] = field(default_factory=list)

    @property
    def settings(self) -> config.Settings:
        if self._resolved is None:
            self._resolved = config.resolve(**self.options)
        return self._resolved

    def ledger(self) -> LedgerClient:
        if "ledger" not in self.used:
            self.used.append("ledger")
        if self._ledger is None:
            settings = self.settings
            self._ledger = LedgerClient(
                settings.address,
                settings.token or None,
                tls=settings.tls_ca,
                client_cert=settings.tls_cert,
                client_key=settings.tls_key,
                timeout=settings.timeout,
                retry=self._retry(),
            )
        return self._ledger

    def _retry(self) -> RetryPolicy | None:
        """With ``--timeout``, the whole command gives up then (retries included): a person
        asking for 2 s does not wait the client's default 20 s for a server that is down."""
        timeout = self.settings.timeout
        return RetryPolicy(budget=timeout) if timeout else None

    def reference(self) -> ReferenceData:
        """The ledger's reference data, fetched once per run (one small call)."""
        if self._reference is None:
            self._reference = self.ledger().reference_data()
        return self._reference

    def notifier(self) -> NotifierClient:
        if "notifier" not in self.used:
            self.used.append("notifier")
        if self._notifier is None:
            settings = self.settings
            self._notifier = NotifierClient(
                settings.notifier_address,
                settings.token or None,
                tls=settings.tls_ca,
                client_cert=settings.tls_cert,
                client_key=settings.tls_key,
                timeout=settings.timeout,
                retry=self._retry(),
            )
        return self._notifier

    def close(self) -> None:
        for client in (self._ledger, self._notifier):
            if client is not None:
                client.close()


def state(ctx: typer.Context) -> State:
    value = ctx.find_root().obj
    if not isinstance(value, State):
        raise RuntimeError("ledgerctl: no state (the root callback did not run)")
    return value


def _show_version(value: bool) -> None:
    if value:
        output.emit_line(f"ledgerctl {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def root(
    ctx: typer.Context,
    address: Annotated[
        str | None, typer.Option(help="Ledger address host:port (env LEDGER_ADDRESS).")
    ] = None,
    notifier_address: Annotated[
        str | None, typer.Option(help="Notifier address host:port (env NOTIFIER_ADDRESS).")
    ] = None,
    token: Annotated[str | None, typer.Option(help="Bearer token (env LEDGER_TOKEN).")] = None,
    agency: Annotated[
        str | None,
        typer.Option(
            "--agency",
            "-a",
            help="Act as this agency: its token from the tokens file (env LEDGER_AGENCY).",
        ),
    ] = None,
    tokens_file: Annotated[
        Path | None,
        typer.Option(help="Development tokens file (default data/credentials/dev-tokens.yaml)."),
    ] = None,
    config_file: Annotated[
        Path | None,
        typer.Option("--config", help="TOML config file (default ~/.config/ledgerctl.toml)."),
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Deadline of each call, seconds.")] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option(help="TLS: verify the servers with this CA file (env LEDGER_TLS_CA)."),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            help="Mutual TLS: client certificate, O = agency (env LEDGER_TLS_CLIENT_CERT)."
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(help="Mutual TLS: the certificate's key (env LEDGER_TLS_CLIENT_KEY)."),
    ] = None,
    zone: Annotated[
        str | None,
        typer.Option(
            help="Time zone of the times shown and typed (env LEDGERCTL_ZONE; default "
            "Asia/Jakarta, WIB)."
        ),
    ] = None,
    context: Annotated[
        str | None,
        typer.Option(
            "--context",
            help="Use this context (profile) of the config file (env LEDGERCTL_CONTEXT).",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Machine-readable JSON on stdout (errors on stderr).")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_show_version, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Command-line tool of the incident ledger."""
    options = {
        "address": address,
        "notifier_address": notifier_address,
        "token": token,
        "agency": agency,
        "tokens_file": tokens_file,
        "config": config_file,
        "timeout": timeout,
        "tls_ca": tls_ca,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "zone": zone,
        "context": context,
    }
    # main() hands its State in, to explain an error with what the run used.
    st = ctx.obj if isinstance(ctx.obj, State) else State()
    st.options, st.as_json = options, as_json
    ctx.obj = st
    ctx.call_on_close(st.close)


def incident_name(ctx: typer.Context, value: str) -> str:
    """``incidents/ID`` from the full name, the id, a unique prefix of 6+ characters (as tables
    show them) or, once the ledger has them, a reference code; a usage error otherwise (an
    ambiguous prefix lists the candidates)."""
    ledger = state(ctx).ledger()
    resolver = names.IncidentResolver(
        # One listing of every incident: the ledger has no lookup by prefix (see names.py).
        list_incidents=lambda: ledger.list_incidents(page_size=1000),
        # The hook for reference codes: a lookup goes here once the ledger records them.
        by_reference=None,
    )
    try:
        return resolver.resolve(value)
    except names.IncidentNameError as error:
        raise typer.BadParameter(str(error), param_hint="INCIDENT") from None


#: Lifecycle statuses, as the ledger names them.
STATUSES = (
    "REPORTED",
    "VERIFIED",
    "ASSIGNED",
    "RESPONDING",
    "RESOLVED",
    "CLOSED",
    "REJECTED",
    "MERGED",
    "REOPENED",
)


def choose(value: str, known: Sequence[str], what: str, param: str) -> str:
    """``value`` as spelled in ``known``, compared without case; else a usage error with a
    "did you mean" suggestion and the known values."""
    folded = value.strip().lower()
    for candidate in known:
        if candidate.lower() == folded:
            return candidate
    raise typer.BadParameter(
        f"unknown {what} {value!r}{config.suggest(value, known)}; known: {', '.join(known)}",
        param_hint=param,
    )


def code(ctx: typer.Context, kind: str, value: str, param: str) -> str:
    """A reference code (agency, kecamatan, category, severity) checked and spelled as the
    ledger lists it: codes are case-insensitive, and a typo gets a suggestion."""
    ref = state(ctx).reference()
    known: dict[str, Sequence[str]] = {
        "agency": [a.code for a in ref.agencies],
        "kecamatan": [k.code for k in ref.kecamatan],
        "category": [c.code for c in ref.categories],
        "severity": [v.code for v in ref.severities],
    }
    return choose(value, known[kind], kind, param)


def maybe_code(ctx: typer.Context, kind: str, value: str | None, param: str) -> str | None:
    return code(ctx, kind, value, param) if value else value


def codes(ctx: typer.Context, kind: str, values: list[str] | None, param: str) -> list[str]:
    return [code(ctx, kind, v, param) for v in values or []]


def desa_name(ctx: typer.Context, kecamatan: str, value: str) -> str:
    """A desa of the kecamatan, compared without case."""
    if not value:
        return value
    ref = state(ctx).reference()
    listed = next((k.desa for k in ref.kecamatan if k.code == kecamatan), ())
    return choose(value, listed, f"desa of {kecamatan}", "--desa") if listed else value


def moment(ctx: typer.Context, value: str | None, param: str) -> datetime | None:
    """A time typed by a person (ISO, a zone, relative forms), in UTC; None stays None."""
    if value is None:
        return None
    try:
        return times.parse_time(value, state(ctx).settings.zone)
    except times.TimeError as error:
        raise typer.BadParameter(str(error), param_hint=param) from None


TIME_HELP = (
    "e.g. 2026-11-28T10:00, '2026-11-28 10:00 WIB', -2h, 'yesterday 18:00'; without a zone in "
    "the configured zone (Asia/Jakarta by default)"
)


def done(ctx: typer.Context, verb: str, result: CommandResult) -> None:
    st = state(ctx)
    if st.as_json:
        output.emit_json(result)
    else:
        output.command_result(output.console(), verb, result)


Name = Annotated[
    str,
    typer.Argument(
        help="The incident: incidents/ID, the ID, or its first 6+ characters as tables show.",
        metavar="INCIDENT",
    ),
]
Version = Annotated[
    int,
    typer.Option(
        "--expected-version",
        "-V",
        help="Fail with a conflict unless at this version (0: no check).",
    ),
]
Comment = Annotated[str, typer.Option("--comment", "-m", help="A comment recorded with the event.")]
RequestId = Annotated[str | None, typer.Option(help="Idempotency key (default: a fresh uuid).")]


def _options(version: int, request_id: str | None) -> dict[str, Any]:
    return {"expected_version": version, "request_id": request_id}


# --------------------------------------------------------------------------------- commands


@app.command(
    epilog="Example: ledgerctl -a kesbangpol report 'Mass gathering at the square' "
    "crowd_gathering kota_mukomuko --desa 'Pasar Mukomuko' --severity high"
)
def report(
    ctx: typer.Context,
    title: Annotated[str, typer.Argument(help="Short title.")],
    category: Annotated[
        str, typer.Argument(help="Category code, e.g. crowd_gathering, flood, hoax.")
    ],
    kecamatan: Annotated[str, typer.Argument(help="Kecamatan code, e.g. kota_mukomuko.")],
    desa: Annotated[str, typer.Option(help="Desa (village) name.")] = "",
    tps: Annotated[str, typer.Option(help="Polling station, e.g. 'TPS 03'.")] = "",
    latitude: Annotated[float | None, typer.Option(help="Latitude.")] = None,
    longitude: Annotated[float | None, typer.Option(help="Longitude.")] = None,
    severity: Annotated[str, typer.Option(help="low, medium, high or critical.")] = "",
    description: Annotated[str, typer.Option(help="Longer description.")] = "",
    request_id: RequestId = None,
) -> None:
    """Report a new incident."""
    category = code(ctx, "category", category, "CATEGORY")
    kecamatan = code(ctx, "kecamatan", kecamatan, "KECAMATAN")
    desa = desa_name(ctx, kecamatan, desa)
    severity = code(ctx, "severity", severity, "--severity") if severity else ""
    result = (
        state(ctx)
        .ledger()
        .report(
            title,
            category,
            Location(kecamatan, desa=desa, tps=tps, latitude=latitude, longitude=longitude),
            description=description,
            severity=severity,
            request_id=request_id,
        )
    )
    done(ctx, "reported", result)


@app.command(epilog="Example: ledgerctl -a desk_pilkada verify 0b6f12 -m 'confirmed by phone'")
def verify(
    ctx: typer.Context,
    name: Name,
    comment: Comment = "",
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Confirm a reported incident (coordinator)."""
    result = (
        state(ctx)
        .ledger()
        .verify(incident_name(ctx, name), comment=comment, **_options(expected_version, request_id))
    )
    done(ctx, "verified", result)


@app.command(
    epilog="Example: ledgerctl -a desk_pilkada reject 0b6f12 HOAX "
    "-m 'Bawaslu checked: no tampering'"
)
def reject(
    ctx: typer.Context,
    name: Name,
    reason: Annotated[str, typer.Argument(help="INVALID, HOAX or OUT_OF_SCOPE.")],
    comment: Comment = "",
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Reject a reported incident (coordinator)."""
    reason = choose(reason, ("INVALID", "HOAX", "OUT_OF_SCOPE"), "reason", "REASON")
    result = (
        state(ctx)
        .ledger()
        .reject(
            incident_name(ctx, name),
            reason.upper(),
            comment,
            **_options(expected_version, request_id),
        )
    )
    done(ctx, "rejected", result)


@app.command(epilog="Example: ledgerctl -a desk_pilkada merge 1a2b3c 0b6f12")
def merge(
    ctx: typer.Context,
    name: Name,
    target: Annotated[str, typer.Argument(help="The incident it duplicates.")],
    comment: Comment = "",
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Merge a reported incident into another as a duplicate (coordinator)."""
    result = (
        state(ctx)
        .ledger()
        .merge(
            incident_name(ctx, name),
            incident_name(ctx, target),
            comment=comment,
            **_options(expected_version, request_id),
        )
    )
    done(ctx, "merged", result)


@app.command(epilog="Example: ledgerctl -a polres assess 0b6f12 critical -m 'crowd growing'")
def assess(
    ctx: typer.Context,
    name: Name,
    severity: Annotated[str, typer.Argument(help="low, medium, high or critical.")],
    comment: Comment = "",
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Assess (or re-assess) an incident's severity."""
    severity = code(ctx, "severity", severity, "SEVERITY")
    result = (
        state(ctx)
        .ledger()
        .assess_severity(
            incident_name(ctx, name),
            severity,
            comment=comment,
            **_options(expected_version, request_id),
        )
    )
    done(ctx, "assessed", result)


@app.command(epilog="Example: ledgerctl -a desk_pilkada assign 0b6f12 polres")
def assign(
    ctx: typer.Context,
    name: Name,
    agency: Annotated[str, typer.Argument(help="The lead agency, e.g. polres.")],
    comment: Comment = "",
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Assign the lead agency (coordinator)."""
    agency = code(ctx, "agency", agency, "AGENCY")
    result = (
        state(ctx)
        .ledger()
        .assign_lead(
            incident_name(ctx, name),
            agency,
            comment=comment,
            **_options(expected_version, request_id),
        )
    )
    done(ctx, "assigned", result)


@app.command(epilog="Example: ledgerctl -a polres support 0b6f12 satpolpp")
def support(
    ctx: typer.Context,
    name: Name,
    agency: Annotated[str, typer.Argument(help="The supporting agency.")],
    comment: Comment = "",
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Add a supporting agency (lead or coordinator)."""
    agency = code(ctx, "agency", agency, "AGENCY")
    result = (
        state(ctx)
        .ledger()
        .add_supporting_agency(
            incident_name(ctx, name),
            agency,
            comment=comment,
            **_options(expected_version, request_id),
        )
    )
    done(ctx, "supported", result)


@handover_app.command(
    "propose",
    epilog="Example: ledgerctl -a satpolpp handover propose 0b6f12 polres --reason 'needs police'",
)
def handover_propose(
    ctx: typer.Context,
    name: Name,
    to_agency: Annotated[str, typer.Argument(help="The proposed new lead.")],
    reason: Annotated[str, typer.Option(help="Why.")] = "",
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Propose to hand the lead over (lead or coordinator)."""
    to_agency = code(ctx, "agency", to_agency, "TO_AGENCY")
    result = (
        state(ctx)
        .ledger()
        .propose_handover(
            incident_name(ctx, name),
            to_agency,
            reason=reason,
            **_options(expected_version, request_id),
        )
    )
    done(ctx, "handover proposed", result)


@handover_app.command("accept", epilog="Example: ledgerctl -a polres handover accept 0b6f12")
def handover_accept(
    ctx: typer.Context,
    name: Name,
    comment: Comment = "",
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Accept a proposed handover (the proposed agency)."""
    result = (
        state(ctx)
        .ledger()
        .accept_handover(
            incident_name(ctx, name), comment=comment, **_options(expected_version, request_id)
        )
    )
    done(ctx, "handover accepted", result)


@app.command(
    epilog="Example: ledgerctl -a desk_pilkada decide 0b6f12 'Gatherings restricted' "
    "--forum Forkopimda "
    "--by desk_pilkada --by polres --rationale 'tension' --days 3"
)
def decide(
    ctx: typer.Context,
    name: Name,
    summary: Annotated[str, typer.Argument(help="What was decided.")],
    forum: Annotated[str, typer.Option(help="The forum that decided, e.g. Forkopimda.")],
    by: Annotated[list[str], typer.Option("--by", help="A deciding agency (repeat).")],
    rationale: Annotated[str, typer.Option(help="Why (required).")],
    kecamatan: Annotated[
        str | None, typer.Option(help="Scope (default: the incident's place).")
    ] = None,
    days: Annotated[
        float | None, typer.Option(help="Valid for this many days from --valid-from (or now).")
    ] = None,
    valid_from: Annotated[
        str | None, typer.Option(help=f"Valid from (default now): {TIME_HELP}.")
    ] = None,
    valid_until: Annotated[str | None, typer.Option(help=f"Valid until: {TIME_HELP}.")] = None,
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Record a decision (a deciding agency involved, or the coordinator)."""
    by = codes(ctx, "agency", by, "--by")
    kecamatan = maybe_code(ctx, "kecamatan", kecamatan, "--kecamatan")
    until = moment(ctx, valid_until, "--valid-until")
    start = moment(ctx, valid_from, "--valid-from") or datetime.now(UTC)
    if days is not None:
        until = start + timedelta(days=days)
    if until is None:
        raise typer.BadParameter(
            "a decision needs a validity window: --days N (from now, or from --valid-from "
            "TIME), or --valid-until TIME (with --valid-from TIME to start other than now)",
            param_hint="--days/--valid-until",
        )
    result = (
        state(ctx)
        .ledger()
        .record_decision(
            incident_name(ctx, name),
            by,
            forum,
            summary,
            rationale=rationale,
            scope=kecamatan,
            valid_from=start,
            valid_until=until,
            **_options(expected_version, request_id),
        )
    )
    done(ctx, "decided", result)


@app.command(epilog="Example: ledgerctl -a bpbd act 0b6f12 'Sandbags placed around TPS 03'")
def act(
    ctx: typer.Context,
    name: Name,
    action: Annotated[str, typer.Argument(help="What was done.")],
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Log an action (lead, supporting agency or coordinator)."""
    result = (
        state(ctx)
        .ledger()
        .log_action(incident_name(ctx, name), action, **_options(expected_version, request_id))
    )
    done(ctx, "action logged", result)


@app.command(epilog="Example: ledgerctl -a satpolpp escalate 0b6f12 'crowd out of control'")
def escalate(
    ctx: typer.Context,
    name: Name,
    reason: Annotated[str, typer.Argument(help="Why.")] = "",
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Escalate an incident one level."""
    result = (
        state(ctx)
        .ledger()
        .escalate(incident_name(ctx, name), reason, **_options(expected_version, request_id))
    )
    done(ctx, "escalated", result)


@app.command(epilog="Example: ledgerctl -a polres resolve 0b6f12 'crowd dispersed peacefully'")
def resolve(
    ctx: typer.Context,
    name: Name,
    resolution: Annotated[str, typer.Argument(help="How it was resolved.")],
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Mark a responding incident resolved (lead or coordinator)."""
    result = (
        state(ctx)
        .ledger()
        .resolve(incident_name(ctx, name), resolution, **_options(expected_version, request_id))
    )
    done(ctx, "resolved", result)


@close_app.command("request", epilog="Example: ledgerctl -a polres close request 0b6f12")
def close_request(
    ctx: typer.Context,
    name: Name,
    comment: Comment = "",
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Ask the coordinator to close a resolved incident (lead)."""
    result = (
        state(ctx)
        .ledger()
        .request_closure(
            incident_name(ctx, name), comment=comment, **_options(expected_version, request_id)
        )
    )
    done(ctx, "closure requested", result)


@close_app.command("approve", epilog="Example: ledgerctl -a desk_pilkada close approve 0b6f12")
def close_approve(
    ctx: typer.Context,
    name: Name,
    comment: Comment = "",
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Approve a requested closure (coordinator)."""
    result = (
        state(ctx)
        .ledger()
        .approve_closure(
            incident_name(ctx, name), comment=comment, **_options(expected_version, request_id)
        )
    )
    done(ctx, "closed", result)


@app.command(epilog="Example: ledgerctl -a polres reopen 0b6f12 'crowd returned'")
def reopen(
    ctx: typer.Context,
    name: Name,
    reason: Annotated[str, typer.Argument(help="Why.")] = "",
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Reopen a resolved or closed incident (lead or coordinator)."""
    result = (
        state(ctx)
        .ledger()
        .reopen(incident_name(ctx, name), reason, **_options(expected_version, request_id))
    )
    done(ctx, "reopened", result)


@app.command(
    epilog="Example: ledgerctl -a kesbangpol correct 0b6f12 severity low high "
    "--reason 'typo in the report'"
)
def correct(
    ctx: typer.Context,
    name: Name,
    field_name: Annotated[
        str, typer.Argument(help="The field, e.g. severity, title, location.desa.", metavar="FIELD")
    ],
    old_value: Annotated[str, typer.Argument(help="The recorded value (checked).", metavar="OLD")],
    new_value: Annotated[str, typer.Argument(help="The corrected value.", metavar="NEW")],
    event: Annotated[
        str | None,
        typer.Option(
            help="The corrected event id (default: the latest event that recorded FIELD)."
        ),
    ] = None,
    reason: Annotated[str, typer.Option(help="Why.")] = "",
    expected_version: Version = 0,
    request_id: RequestId = None,
) -> None:
    """Record a correction of a field of an earlier event."""
    ledger = state(ctx).ledger()
    incident = incident_name(ctx, name)
    event_id = event or _event_recording(ledger, incident, field_name)
    result = ledger.correct(
        incident,
        event_id,
        field_name,
        old_value,
        new_value,
        reason=reason,
        **_options(expected_version, request_id),
    )
    done(ctx, "corrected", result)


def _event_recording(ledger: LedgerClient, incident: str, field_name: str) -> str:
    """The latest event whose payload records ``field_name`` (else the report)."""
    events = list(ledger.incident_events(incident))
    top = field_name.split(".", 1)[0]
    for event in reversed(events):
        if top in event.payload or (top == "location" and event.type == "Reported"):
            return event.event_id
    if not events:
        raise typer.BadParameter(f"{incident} has no events")
    return events[0].event_id


# ---------------------------------------------------------------------------------- queries


@app.command(epilog="Example: ledgerctl show 0b6f12 --as-of 2026-11-28T10:00:00")
def show(
    ctx: typer.Context,
    name: Name,
    as_of: Annotated[
        str | None, typer.Option(help=f"As it stood at this time: {TIME_HELP}.")
    ] = None,
) -> None:
    """Show an incident with its timeline."""
    st = state(ctx)
    ledger = st.ledger()
    when = moment(ctx, as_of, "--as-of")
    incident = ledger.get_incident(incident_name(ctx, name), as_of_time=when)
    events = [e for e in ledger.incident_events(incident.name) if e.version <= incident.version]
    if st.as_json:
        output.emit_json({"incident": incident, "events": [_event_json(e) for e in events]})
    else:
        output.incident_detail(output.console(), incident, events, st.settings.tz())


def _event_json(event: Any) -> dict[str, Any]:
    value: dict[str, Any] = output.to_jsonable(event)
    value.pop("payload_json", None)
    value["payload"] = event.payload
    return value


@app.command(epilog="Example: ledgerctl history 0b6f12")
def history(ctx: typer.Context, name: Name) -> None:
    """The events of one incident, oldest first."""
    st = state(ctx)
    events = list(st.ledger().incident_events(incident_name(ctx, name)))
    if st.as_json:
        output.emit_json([_event_json(e) for e in events])
    else:
        output.console().print(output.timeline(events, st.settings.tz()))


@app.command(
    "list", epilog="Example: ledgerctl list --status ASSIGNED --kecamatan ipuh --lead polres"
)
def list_(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="Only this status, e.g. ASSIGNED.")] = None,
    severity: Annotated[str | None, typer.Option(help="Only this severity.")] = None,
    category: Annotated[str | None, typer.Option(help="Only this category.")] = None,
    kecamatan: Annotated[str | None, typer.Option(help="Only this kecamatan.")] = None,
    lead: Annotated[str | None, typer.Option(help="Only with this lead agency.")] = None,
    filter_: Annotated[
        str | None, typer.Option("--filter", help="A raw AIP-160 filter (ANDed).")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many (0: all).")] = 0,
) -> None:
    """List incidents as a table, with filters."""
    clauses = [
        f'{key} = "{value}"'
        for key, value in (
            ("status", choose(status, STATUSES, "status", "--status") if status else None),
            ("severity", maybe_code(ctx, "severity", severity, "--severity")),
            ("category", maybe_code(ctx, "category", category, "--category")),
            ("kecamatan", maybe_code(ctx, "kecamatan", kecamatan, "--kecamatan")),
            ("lead_agency", maybe_code(ctx, "agency", lead, "--lead")),
        )
        if value
    ]
    if filter_:
        clauses.append(filter_)
    st = state(ctx)
    incidents = []
    for incident in st.ledger().list_incidents(" AND ".join(clauses)):
        incidents.append(incident)
        if limit and len(incidents) >= limit:
            break
    if st.as_json:
        output.emit_json(incidents)
    else:
        output.console().print(output.incidents_table(incidents, f"Incidents ({len(incidents)})"))


BOARD_SORTS = ("severity", "age", "updated", "status")


@app.command(
    epilog="Example: ledgerctl board --kecamatan kota_mukomuko --limit 20 --sort age  "
    "(--limit 0 shows every open incident)"
)
def board(
    ctx: typer.Context,
    kecamatan: Annotated[str | None, typer.Option(help="Only this kecamatan.")] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", help="Show at most this many incidents (0: all).")
    ] = 40,
    sort: Annotated[
        str,
        typer.Option(
            help="severity (most severe first, then oldest), age (oldest first), "
            "updated (latest change first) or status (lifecycle order)."
        ),
    ] = "severity",
) -> None:
    """The board: open work, most severe first (limited), counts per status, workload."""
    kecamatan = maybe_code(ctx, "kecamatan", kecamatan, "--kecamatan")
    sort = choose(sort, BOARD_SORTS, "sort", "--sort")
    if limit < 0:
        raise typer.BadParameter("must be 0 (all) or more", param_hint="--limit")
    st = state(ctx)
    ledger = st.ledger()
    ranks = {v.code: v.rank for v in st.reference().severities}
    listed = ledger.list_incidents(f'kecamatan = "{kecamatan}"' if kecamatan else "", page_size=500)
    open_work = [i for i in listed if i.status.value in output.BOARD_STATUSES]
    counts = {s: 0 for s in output.BOARD_STATUSES}
    for incident in open_work:
        counts[incident.status.value] += 1
    shown = output.sort_board(open_work, sort, ranks)[: limit or None]
    workload = ledger.workload()
    if st.as_json:
        columns = {s: [i for i in shown if i.status.value == s] for s in output.BOARD_STATUSES}
        output.emit_json(
            {
                "counts": counts,
                "total": len(open_work),
                "shown": len(shown),
                "sort": sort,
                "incidents": shown,
                "columns": columns,
                "workload": workload,
            }
        )
        return
    out = output.console()
    out.print(output.board(shown, counts, st.settings.tz()))
    if len(shown) < len(open_work):
        out.print(
            f"showing {len(shown)} of {len(open_work)} open incidents, by {sort} "
            "(--limit N for more, --limit 0 for all)",
            markup=False,
        )
    out.print(
        output.rows_table(
            "Workload per agency",
            ("agency", "open", "unacknowledged", "overdue"),
            ((w.agency, w.open, w.unacknowledged, w.overdue) for w in workload),
        )
    )


@app.command("map", epilog="Example: ledgerctl map --svg data/map.svg")
def map_(
    ctx: typer.Context,
    svg: Annotated[Path | None, typer.Option(help="Also render the map to this SVG file.")] = None,
    at: Annotated[str | None, typer.Option(help=f"As it stood at this time: {TIME_HELP}.")] = None,
) -> None:
    """The vulnerability map per kecamatan: score and band, coloured; optionally as SVG."""
    st = state(ctx)
    vmap = st.ledger().vulnerability_map(moment(ctx, at, "--at"))
    if svg is not None:
        svg.parent.mkdir(parents=True, exist_ok=True)
        svg.write_text(output.map_svg(vmap, zone=st.settings.tz()), encoding="utf-8")
    if st.as_json:
        output.emit_json(vmap)
    else:
        out = output.console()
        out.print(output.map_table(vmap, st.settings.tz()))
        if svg is not None:
            out.print(f"map written to {svg}")


@app.command(epilog="Example: ledgerctl decisions --kecamatan kota_mukomuko")
def decisions(
    ctx: typer.Context,
    kecamatan: Annotated[str | None, typer.Option(help="Only this kecamatan.")] = None,
    at: Annotated[
        str | None, typer.Option(help=f"In force at this time (default now): {TIME_HELP}.")
    ] = None,
) -> None:
    """Decisions in force."""
    kecamatan = maybe_code(ctx, "kecamatan", kecamatan, "--kecamatan")
    st = state(ctx)
    found = st.ledger().decisions_in_force(moment(ctx, at, "--at"), kecamatan)
    if st.as_json:
        output.emit_json(found)
    else:
        output.console().print(output.decisions_table(found, st.settings.tz()))


@app.command("response-times", epilog="Example: ledgerctl response-times --by severity")
def response_times(
    ctx: typer.Context,
    by: Annotated[str, typer.Option(help="agency, severity, category or kecamatan.")] = "agency",
) -> None:
    """Median and p90 time to acknowledge, verify and resolve, each with its sample size (n);
    "—" where no incident reached that step."""
    by = choose(by, ("agency", "severity", "category", "kecamatan"), "grouping", "--by")
    st = state(ctx)
    groups = st.ledger().response_times(by)  # type: ignore[arg-type]
    if st.as_json:
        output.emit_json(groups)
        return

    output.console().print(output.response_times_table(by, groups))


@app.command(
    epilog="Example: ledgerctl -a bpbd watch --kecamatan air_manjunto "
    "--min-severity high --count 10"
)
def watch(
    ctx: typer.Context,
    kecamatan: Annotated[
        list[str] | None, typer.Option(help="Only these kecamatan (repeat).")
    ] = None,
    category: Annotated[
        list[str] | None, typer.Option(help="Only these categories (repeat).")
    ] = None,
    min_severity: Annotated[str, typer.Option(help="At least this severity.")] = "",
    event_type: Annotated[
        list[str] | None, typer.Option(help="Only these event types (repeat).")
    ] = None,
    mine: Annotated[bool, typer.Option(help="Only incidents involving my agency.")] = False,
    count: Annotated[int, typer.Option(help="Stop after this many notifications (0: never).")] = 0,
    cursor: Annotated[str | None, typer.Option(help="Resume from this cursor.")] = None,
) -> None:
    """Live updates from the notifier, with filters (Ctrl-C stops)."""
    kecamatan = codes(ctx, "kecamatan", kecamatan, "--kecamatan")
    category = codes(ctx, "category", category, "--category")
    min_severity = code(ctx, "severity", min_severity, "--min-severity") if min_severity else ""
    st = state(ctx)
    seen = 0
    out = output.console()
    zone = st.settings.tz()
    with st.notifier().subscribe(
        kecamatan=kecamatan or (),
        categories=category or (),
        min_severity=min_severity,
        event_types=event_type or (),
        involving_my_agency=mine,
        cursor=cursor,
    ) as subscription:
        try:
            for note in subscription:
                seen += 1
                if st.as_json:  # JSON Lines: one object per notification, flushed
                    output.emit_json_line(
                        {
                            "event": _event_json(note.event),
                            "incident": note.incident,
                            "cursor": note.cursor,
                        }
                    )
                else:
                    out.print(
                        f"{output.when(note.event.record_time, zone)} "
                        f"[bold]{note.event.type}[/bold] "
                        f"{output.short_id(note.incident.name)} {note.incident.title!r} "
                        f"{note.incident.status.value} {note.incident.severity} "
                        f"{note.incident.location.kecamatan} by {note.event.actor.agency}"
                    )
                if count and seen >= count:
                    break
        except KeyboardInterrupt:
            pass


# --------------------------------------------------------------------------- reference data


def _reference_table(
    ctx: typer.Context, title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]
) -> None:
    output.console().print(output.rows_table(title, columns, rows, no_wrap=("code",)))


@app.command(epilog="Example: ledgerctl agencies")
def agencies(ctx: typer.Context) -> None:
    """The agencies and their roles (coordinator, responder, auditor)."""
    st = state(ctx)
    ref = st.reference()
    if st.as_json:
        output.emit_json(ref.agencies)
        return
    rows = [(a.code, a.name, a.role) for a in ref.agencies]
    _reference_table(ctx, f"Agencies ({ref.regency})", ("code", "name", "role"), rows)


@app.command(epilog="Example: ledgerctl kecamatan")
def kecamatan(ctx: typer.Context) -> None:
    """The kecamatan with their desa."""
    st = state(ctx)
    ref = st.reference()
    if st.as_json:
        output.emit_json(ref.kecamatan)
        return
    rows = [(k.code, k.name, ", ".join(k.desa)) for k in ref.kecamatan]
    _reference_table(ctx, f"Kecamatan ({ref.regency})", ("code", "name", "desa"), rows)


@app.command(epilog="Example: ledgerctl categories")
def categories(ctx: typer.Context) -> None:
    """The incident categories with their IKP dimension."""
    st = state(ctx)
    ref = st.reference()
    if st.as_json:
        output.emit_json(ref.categories)
        return
    rows = [(c.code, c.name, c.dimension) for c in ref.categories]
    _reference_table(ctx, "Categories", ("code", "name", "IKP dimension"), rows)


@app.command(epilog="Example: ledgerctl severities")
def severities(ctx: typer.Context) -> None:
    """The severities, lowest first (and the default of a report that gives none)."""
    st = state(ctx)
    ref = st.reference()
    if st.as_json:
        output.emit_json({"severities": ref.severities, "default": ref.default_severity})
        return
    rows = [
        (v.code, v.name, v.rank, "default" if v.code == ref.default_severity else "")
        for v in ref.severities
    ]
    _reference_table(ctx, "Severities", ("code", "name", "rank", ""), rows)


# --------------------------------------------------------------------------------- webhooks


@webhooks_app.command(
    "register",
    epilog="Example: ledgerctl -a bpbd webhooks register https://bpbd.example/hook "
    "--secret S --kecamatan air_manjunto",
)
def webhooks_register(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="The HTTPS endpoint.")],
    secret: Annotated[
        str, typer.Option(help="Shared secret for the signature.", envvar="WEBHOOK_SECRET")
    ],
    kecamatan: Annotated[
        list[str] | None, typer.Option(help="Only these kecamatan (repeat).")
    ] = None,
    category: Annotated[
        list[str] | None, typer.Option(help="Only these categories (repeat).")
    ] = None,
    min_severity: Annotated[str, typer.Option(help="At least this severity.")] = "",
    mine: Annotated[bool, typer.Option(help="Only incidents involving my agency.")] = False,
) -> None:
    """Register a webhook for your agency."""
    kecamatan = codes(ctx, "kecamatan", kecamatan, "--kecamatan")
    category = codes(ctx, "category", category, "--category")
    min_severity = code(ctx, "severity", min_severity, "--min-severity") if min_severity else ""
    st = state(ctx)
    hook = st.notifier().create_webhook(
        url,
        secret,
        kecamatan=kecamatan or (),
        categories=category or (),
        min_severity=min_severity,
        involving_my_agency=mine,
    )
    if st.as_json:
        output.emit_json(hook)
    else:
        output.console().print(f"registered {hook.name} -> {hook.url}")


@webhooks_app.command("list", epilog="Example: ledgerctl -a bpbd webhooks list")
def webhooks_list(ctx: typer.Context) -> None:
    """List your agency's webhooks."""
    st = state(ctx)
    hooks = list(st.notifier().webhooks())
    if st.as_json:
        output.emit_json(hooks)
    else:
        output.console().print(
            output.rows_table(
                "Webhooks",
                ("name", "url", "created"),
                ((h.name, h.url, output.when(h.create_time, st.settings.tz())) for h in hooks),
            )
        )


@webhooks_app.command("dead-letters", epilog="Example: ledgerctl -a bpbd webhooks dead-letters")
def webhooks_dead_letters(ctx: typer.Context) -> None:
    """Deliveries that gave up."""
    st = state(ctx)
    letters = list(st.notifier().dead_letters())
    if st.as_json:
        output.emit_json(letters)
    else:
        output.console().print(
            output.rows_table(
                "Dead letters",
                ("name", "webhook", "incident", "attempts", "last error"),
                (
                    (d.name, d.webhook, output.short_id(d.incident), d.attempts, d.last_error)
                    for d in letters
                ),
                no_wrap=("name", "incident"),
            )
        )


@webhooks_app.command("replay", epilog="Example: ledgerctl -a bpbd webhooks replay --all")
def webhooks_replay(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(help="Dead letters to replay.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Replay every dead letter.")] = False,
) -> None:
    """Replay dead letters (with a progress bar)."""
    st = state(ctx)
    notifier = st.notifier()
    if all_ and names:
        raise typer.BadParameter("name dead letters or pass --all, not both")
    chosen = [d.name for d in notifier.dead_letters()] if all_ else list(names or [])
    if not chosen and not all_:
        raise typer.BadParameter("name dead letters or pass --all")
    if not chosen:  # --all with nothing to replay: done, and said so
        if st.as_json:
            output.emit_json({"replayed": []})
        else:
            output.console().print("no dead letters: nothing to replay")
        return
    with _progress(st, "replaying", len(chosen)) as meter:
        for name in chosen:
            notifier.replay_dead_letter(name)
            meter.step()
    if st.as_json:
        output.emit_json({"replayed": chosen})
    else:
        output.console().print(f"replayed {len(chosen)} dead letter(s)")


def _webhook(ctx: typer.Context, name: str) -> Webhook:
    """One of the agency's webhooks by its name, or the id after "webhooks/"."""
    wanted = name if name.startswith("webhooks/") else f"webhooks/{name}"
    hooks = list(state(ctx).notifier().webhooks())
    for hook in hooks:
        if hook.name == wanted:
            return hook
    known = [h.name for h in hooks]
    raise typer.BadParameter(
        f"your agency has no webhook {name!r}{config.suggest(wanted, known)}"
        f" (yours: {', '.join(known) or 'none'})",
        param_hint="WEBHOOK",
    )


@webhooks_app.command("delete", epilog="Example: ledgerctl -a bpbd webhooks delete webhooks/3f2a")
def webhooks_delete(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="The webhook.", metavar="WEBHOOK")]
) -> None:
    """Delete one of your agency's webhooks: deliveries to it stop."""
    st = state(ctx)
    hook = _webhook(ctx, name)
    st.notifier().delete_webhook(hook.name)
    if st.as_json:
        output.emit_json({"deleted": hook.name})
    else:
        output.console().print(f"deleted {hook.name} ({hook.url})", markup=False)


@webhooks_app.command(
    "update",
    epilog="Example: ledgerctl -a bpbd webhooks update webhooks/3f2a "
    "--url https://bpbd.example/v2/hook --min-severity high",
)
def webhooks_update(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The webhook.", metavar="WEBHOOK")],
    url: Annotated[str | None, typer.Option(help="The new endpoint.")] = None,
    secret: Annotated[
        str | None,
        typer.Option(help="A new shared secret (16-256 characters).", envvar="WEBHOOK_SECRET"),
    ] = None,
    kecamatan: Annotated[
        list[str] | None, typer.Option(help="Only these kecamatan (repeat; replaces).")
    ] = None,
    category: Annotated[
        list[str] | None, typer.Option(help="Only these categories (repeat; replaces).")
    ] = None,
    min_severity: Annotated[
        str | None, typer.Option(help="At least this severity ('' for any).")
    ] = None,
    mine: Annotated[
        bool | None, typer.Option("--mine/--all-incidents", help="Only incidents involving me.")
    ] = None,
) -> None:
    """Change a webhook's endpoint, secret or filter in place; what is not given stays.

    The webhook keeps its name; deliveries not yet made go to the new endpoint, signed with
    the new secret. Filter options change only what they name (the rest of the filter stays).
    """
    st = state(ctx)
    old = _webhook(ctx, name)
    new_filter = None
    if kecamatan or category or min_severity is not None or mine is not None:
        kept = old.filter
        agencies = kept.agencies
        if mine is False:  # the owner's agency stands for "involving me" in a stored filter
            agencies = tuple(a for a in agencies if a != old.agency)
        new_filter = EventFilter(
            kecamatan=tuple(codes(ctx, "kecamatan", kecamatan, "--kecamatan"))
            if kecamatan
            else kept.kecamatan,
            categories=tuple(codes(ctx, "category", category, "--category"))
            if category
            else kept.categories,
            min_severity=(
                kept.min_severity
                if min_severity is None
                else code(ctx, "severity", min_severity, "--min-severity")
                if min_severity
                else ""
            ),
            event_types=kept.event_types,
            involving_my_agency=bool(mine),
            agencies=agencies,
        )
    if url is None and secret is None and new_filter is None:
        raise typer.BadParameter(
            "nothing to change: give --url, --secret or a filter option "
            "(--kecamatan, --category, --min-severity, --mine/--all-incidents)"
        )
    hook = st.notifier().update_webhook(old.name, url=url, secret=secret, filter=new_filter)
    if st.as_json:
        output.emit_json(hook)
    else:
        output.console().print(
            f"updated {hook.name}\n  url:     {hook.url}\n  filter:  {_filter_text(hook.filter)}"
            f"\n  created: {output.when(hook.create_time, st.settings.tz())}",
            markup=False,
            soft_wrap=True,
        )


def _filter_text(event_filter: EventFilter) -> str:
    """A webhook's filter in a few words ("everything" when it matches every event)."""
    parts = [
        f"{label}: {', '.join(values)}"
        for label, values in (
            ("kecamatan", event_filter.kecamatan),
            ("categories", event_filter.categories),
            ("event types", event_filter.event_types),
            ("agencies", event_filter.agencies),
        )
        if values
    ]
    if event_filter.min_severity:
        parts.insert(0, f"severity >= {event_filter.min_severity}")
    return "; ".join(parts) or "everything"


@webhooks_app.command(
    "deliveries", epilog="Example: ledgerctl -a bpbd webhooks deliveries --incident 0b6f12"
)
def webhooks_deliveries(
    ctx: typer.Context,
    incident: Annotated[str | None, typer.Option(help="Only this incident.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many (0: all).")] = 50,
) -> None:
    """The delivery log of your agency: which event went where, how, with what outcome."""
    st = state(ctx)
    name = incident_name(ctx, incident) if incident else None
    found = []
    for delivery in st.notifier().deliveries(incident=name, agency=st.settings.agency or None):
        found.append(delivery)
        if limit and len(found) >= limit:
            break
    if st.as_json:
        output.emit_json(found)
        return
    zone = st.settings.tz()
    output.console().print(
        output.rows_table(
            f"Deliveries ({len(found)})",
            ("time", "incident", "position", "channel", "target", "outcome", "attempt", "error"),
            (
                (
                    output.local_time(d.time, zone),
                    output.short_id(d.incident),
                    d.position,
                    d.channel,
                    d.target,
                    d.outcome,
                    d.attempt,
                    d.error,
                )
                for d in found
            ),
            no_wrap=("time", "incident"),
        )
    )


# ------------------------------------------------------------------------------------ audit


class Meter:
    """What a progress bar is told: work done so far, as a count or a position reached."""

    def __init__(self, progress: Progress | None = None, task: Any = None) -> None:
        self._progress = progress
        self._task = task
        self._started = time.monotonic()
        self.items = 0

    def _update(self, **fields: Any) -> None:
        if self._progress is not None:
            rate = self.items / max(time.monotonic() - self._started, 1e-6)
            self._progress.update(self._task, rate=f"{rate:,.0f}/s", **fields)

    def step(self) -> None:
        """One more item done."""
        self.items += 1
        self._update(advance=1)

    def reached(self, done: int) -> None:
        """One more item done, and everything up to ``done`` of the total covered (a position
        in the log: a filtered export skips positions, and they are done all the same)."""
        self.items += 1
        self._update(completed=done)

    def measured(self, done: int, total: int, items: int) -> None:
        """As the server measures it: ``done`` of ``total`` (which grows to ``done`` if it
        passes it), ``items`` done so far (the rate)."""
        self.items = items
        self._update(completed=done, total=max(total, done))

    def finish(self, total: int) -> None:
        """All done: the bar shows total/total."""
        self._update(total=total, completed=total)


@contextmanager
def _progress(st: State, what: str, total: int | None, unit: str = "") -> Iterator[Meter]:
    """A progress bar with count and rate on stderr (only on a terminal, never with --json)."""
    err = output.error_console()
    if st.as_json or not err.is_terminal:
        yield Meter()
        return
    with Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=err,
    ) as progress:
        yield Meter(progress, progress.add_task(what, total=total, rate=""))


def follow_verification(
    items: Iterable[VerifyProgress | VerifyReport], meter: Meter
) -> VerifyReport:
    """The verification's report, its progress shown on ``meter`` as it comes (positions
    against the ledger's size when it started; events checked make the rate)."""
    end = 0
    for item in items:
        if isinstance(item, VerifyReport):
            meter.finish(end)
            return item
        end = max(end, item.ledger_position, item.position)
        meter.measured(item.position, item.ledger_position, item.events_checked)
    raise Unavailable("UNAVAILABLE", "", "the verification ended without its result")


@audit_app.command("verify", epilog="Example: ledgerctl -a inspektorat audit verify")
def audit_verify(ctx: typer.Context) -> None:
    """Recompute every hash chain and check the checkpoints (coordinator, auditors).

    Exit code 6 (server) is not used for a broken chain: a verify that finds divergence exits 1.
    """
    st = state(ctx)
    with _progress(st, "verifying", None, "positions") as meter:
        report_ = follow_verification(st.ledger().stream_verify_ledger(), meter)
    if st.as_json:
        output.emit_json(report_)
    else:
        out = output.console()
        if report_.ok:
            out.print(
                f"[bold green]ledger verified[/bold green]: {report_.events} events, "
                f"{report_.incidents} incidents, {report_.checkpoints_checked} checkpoints checked"
            )
        else:
            d = report_.divergence
            out.print(f"[bold red]LEDGER DIVERGES[/bold red]: {d}")
    if not report_.ok:
        raise typer.Exit(EXIT_OTHER)


@audit_app.command(
    "export", epilog="Example: ledgerctl -a inspektorat audit export history.jsonl --after 0"
)
def audit_export(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="JSON Lines file to write ('-' for stdout).")],
    after: Annotated[int, typer.Option(help="Positions after this one.")] = 0,
    until: Annotated[int, typer.Option(help="Up to this position (0: the end).")] = 0,
    incident: Annotated[str | None, typer.Option(help="Only this incident.")] = None,
    agency: Annotated[str | None, typer.Option(help="Only events by this agency.")] = None,
    kecamatan: Annotated[str | None, typer.Option(help="Only this kecamatan.")] = None,
) -> None:
    """Export the history (events in log order) as JSON Lines, with a progress bar.

    One event envelope per line, as the replay stream gives them. For a file that verifies
    offline (with its chains and checkpoints), run `python -m services.ledger.audit export`
    where the store is; `ledgerctl audit verify` checks the ledger online.
    """
    import json

    agency = maybe_code(ctx, "agency", agency, "--agency")
    kecamatan = maybe_code(ctx, "kecamatan", kecamatan, "--kecamatan")
    st = state(ctx)
    ledger = st.ledger()
    end = until or ledger.projection_status().ledger_position
    total = max(end - after, 0)
    events = ledger.history(
        after,
        until,
        incident=incident_name(ctx, incident) if incident else None,
        agency=agency,
        kecamatan=kecamatan,
    )
    # The bar counts positions of the log covered (the events exported are fewer when a filter
    # skips some, or when positions belong to no incident), so it ends full.
    with _progress(st, "exporting", total or None, "positions") as meter:
        if str(path) == "-":
            for event in events:
                output.emit_line(json.dumps(_event_json(event), ensure_ascii=False))
                meter.reached(event.position - after)
        else:
            with path.open("w", encoding="utf-8") as file:
                for event in events:
                    file.write(json.dumps(_event_json(event), ensure_ascii=False) + "\n")
                    meter.reached(event.position - after)
        meter.finish(total)
    count = meter.items
    if str(path) != "-":
        if st.as_json:
            output.emit_json({"path": str(path), "events": count})
        else:
            output.console().print(f"exported {count} events to {path}")


@audit_app.command(
    "as-of",
    epilog="Example: ledgerctl audit as-of 'yesterday 18:00' --incident 0b6f12  "
    "(or 2026-11-28T10:00, '2 hours ago'; a form with a leading dash after --: -- -2h)",
)
def audit_as_of(
    ctx: typer.Context,
    at: Annotated[str, typer.Argument(help=f"The time: {TIME_HELP}.", metavar="TIME")],
    incident: Annotated[
        str | None, typer.Option(help="One incident as it stood (else the list).")
    ] = None,
) -> None:
    """The incidents (or one incident) as they stood at a past time."""
    st = state(ctx)
    then = moment(ctx, at, "TIME")
    ledger = st.ledger()
    if incident:
        found = ledger.get_incident(incident_name(ctx, incident), as_of_time=then)
        if st.as_json:
            output.emit_json(found)
        else:
            events = [e for e in ledger.incident_events(found.name) if e.version <= found.version]
            output.incident_detail(output.console(), found, events, st.settings.tz())
        return
    incidents = list(ledger.list_incidents(as_of_time=then))
    if st.as_json:
        output.emit_json(incidents)
    else:
        output.console().print(
            output.incidents_table(
                incidents, f"Incidents as of {output.when(then, st.settings.tz())}"
            )
        )


# ----------------------------------------------------------------------------------- config


def _masked(name: str, value: Any) -> Any:
    if name == "token" and value:
        text = str(value)
        return f"{text[:4]}…({len(text)} characters)"
    return value


@config_app.command("view", epilog="Example: ledgerctl config view --context production")
def config_view(ctx: typer.Context) -> None:
    """The effective settings and where each came from (flag, environment, config file)."""
    st = state(ctx)
    settings = st.settings
    rows = [
        (name, _masked(name, getattr(settings, name)), settings.source(name))
        for name in config.SETTINGS
    ]
    if st.as_json:
        output.emit_json(
            {
                "config_file": settings.config_file or None,
                "context": settings.context or None,
                "settings": {n: {"value": v, "source": src} for n, v, src in rows},
            }
        )
        return
    out = output.console()
    out.print(f"config file: {settings.config_file or '(none)'}", markup=False)
    out.print(f"context: {settings.context or '(none)'}", markup=False)
    out.print(output.rows_table("Effective settings", ("setting", "value", "from"), rows))


@config_app.command("contexts", epilog="Example: ledgerctl config contexts")
def config_contexts(ctx: typer.Context) -> None:
    """The contexts (profiles) of the config file; the current one is marked."""
    st = state(ctx)
    file = config.load_config_file(st.options.get("config"))
    contexts = config.contexts_of(file)
    current = st.settings.context
    if st.as_json:
        output.emit_json(
            {"current": current or None, "contexts": {n: dict(c) for n, c in contexts.items()}}
        )
        return
    output.console().print(
        output.rows_table(
            f"Contexts in {file.path or '(no config file)'}",
            ("", "context", "address"),
            (
                ("*" if n == current else "", n, c.get("address", config.DEFAULT_ADDRESS))
                for n, c in sorted(contexts.items())
            ),
        )
    )


@config_app.command("use-context", epilog="Example: ledgerctl config use-context production")
def config_use_context(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="The context.")]
) -> None:
    """Make a context the current one (writes current_context into the config file)."""
    st = state(ctx)
    file = config.load_config_file(st.options.get("config"))
    contexts = config.contexts_of(file)
    if file.path is None or name not in contexts:
        known = sorted(contexts)
        raise config.ConfigError(
            f"no context {name!r}{config.suggest(name, known)} "
            f"(known: {', '.join(known) or 'none'}; add [contexts.{name}] to the config file)"
        )
    config.set_current_context(file.path, name)
    if st.as_json:
        output.emit_json({"current": name})
    else:
        output.console().print(f"current context: {name}", markup=False)


@app.command(
    epilog="Example: ledgerctl completion bash > ~/.local/share/bash-completion/completions/"
    "ledgerctl  (zsh: into a directory of $fpath as _ledgerctl; fish: "
    "~/.config/fish/completions/ledgerctl.fish)"
)
def completion(
    shell: Annotated[str, typer.Argument(help="bash, zsh or fish.", metavar="SHELL")],
) -> None:
    """Print the shell completion script for bash, zsh or fish."""
    # typer writes the scripts that call back into ledgerctl with _LEDGERCTL_COMPLETE set.
    from typer._completion_shared import get_completion_script

    if shell not in {"bash", "zsh", "fish"}:
        raise typer.BadParameter(
            f"must be bash, zsh or fish{config.suggest(shell, ('bash', 'zsh', 'fish'))}",
            param_hint="SHELL",
        )
    output.emit_line(
        get_completion_script(prog_name="ledgerctl", complete_var=COMPLETE_VAR, shell=shell)
    )


# ------------------------------------------------------------------------------------- main

#: The variable the completion scripts set when they ask ledgerctl for completions.
COMPLETE_VAR = "_LEDGERCTL_COMPLETE"


def exit_code_for(error: LedgerError) -> int:
    for cls, code in EXIT_CODES:
        if isinstance(error, cls):
            return code
    return EXIT_OTHER


@dataclass(frozen=True)
class Hint:
    message: str
    metadata: dict[str, str]


#: What gRPC says when the client itself rejects the server's certificate.
_VERIFY_FAILED = ("certificate verify failed", "CERTIFICATE_VERIFY_FAILED", "self signed")
#: What it says when the far end is not speaking TLS, or TLS is spoken to a plaintext port.
_NOT_TLS = ("WRONG_VERSION_NUMBER", "wrong version number", "Trying to connect an http1.x server")


def explain(error: LedgerError, st: State) -> Hint | None:
    """What to do about an error, in words that name the address, the setting it came from and
    the flag that fixes it; None when the server's message says it already."""
    if not st.used:
        return None
    settings = st.settings
    service = st.used[-1]
    setting = "address" if service == "ledger" else "notifier_address"
    address = getattr(settings, setting)
    where = f"{service} at {address} (from {settings.source(setting)})"
    meta = {"service": service, "address": address, "address_from": settings.source(setting)}
    text = error.message
    if isinstance(error, Unavailable | DeadlineExceeded):
        tls = bool(settings.tls_ca or os.environ.get("LEDGER_TLS_CA"))
        has_cert = bool(settings.tls_cert or os.environ.get("LEDGER_TLS_CLIENT_CERT"))
        if any(s in text for s in _VERIFY_FAILED):
            return Hint(
                f"the {where} presented a certificate that the CA "
                f"{settings.tls_ca or '$LEDGER_TLS_CA'} does not verify: check --tls-ca "
                "(tls_ca) and that the address matches the server's certificate",
                meta,
            )
        if tls and any(s in text for s in _NOT_TLS):
            return Hint(f"the {where} does not speak TLS: drop --tls-ca (tls_ca)", meta)
        refused = "Connection refused" in text or "DNS resolution failed" in text
        # gRPC reports only its last address's error (localhost: often ::1 refused while
        # 127.0.0.1 answered): whether anything listens decides between the two stories.
        if refused and not listening(address):
            return Hint(
                f"cannot reach the {where}: is it running (make run), and is the address "
                "right? ledgerctl config view shows every setting and its source",
                meta,
            )
        closed = refused or "Socket closed" in text or "handshake" in text.lower()
        if tls and not has_cert and closed:
            return Hint(
                f"the TLS handshake with the {where} failed: the server requires a client "
                "certificate (mutual TLS): give your agency's with --tls-cert and --tls-key "
                "(tls_cert, tls_key)",
                meta,
            )
        if not tls and closed:
            return Hint(
                f"the {where} closed the connection: it probably speaks TLS: verify it with "
                "its CA, --tls-ca ca.pem (tls_ca), and if it asks for one, give a client "
                "certificate with --tls-cert and --tls-key",
                meta,
            )
        return Hint(f"cannot reach the {where}", meta)
    if isinstance(error, Unauthenticated):
        if not settings.token and not settings.tls_cert:
            return Hint(
                "no credentials: act as an agency with --agency NAME (its token from the "
                f"development tokens file {settings.tokens_file}, written by the ledger on its "
                "first start), or pass the token your ledger's administrator gave you with "
                "--token or LEDGER_TOKEN, or a client certificate with --tls-cert and --tls-key",
                meta,
            )
        if settings.token:
            return Hint(
                f"the token from {settings.source('token')} was refused by the {where}: "
                "check it (ledgerctl config view) or ask for a new one",
                meta,
            )
    return None


def _wants_json(argv: list[str]) -> bool:
    head = argv[: argv.index("--")] if "--" in argv else argv
    return "--json" in head


def _fail(
    as_json: bool,
    exit_code: int,
    code: str,
    message: str,
    reason: str = "",
    metadata: dict[str, str] | None = None,
) -> int:
    """Report an error on stderr: a line for people, a JSON object with --json."""
    if as_json:
        output.emit_error_json(
            {
                "error": {
                    "code": code,
                    "reason": reason,
                    "message": message,
                    "metadata": metadata or {},
                    "exit_code": exit_code,
                }
            }
        )
    else:
        label = f"{code} {reason}" if reason else code
        output.error_console().print(
            f"ledgerctl: {label}: {message}", markup=False, highlight=False
        )
    return exit_code


def main(argv: list[str] | None = None) -> int:
    """Run ledgerctl; return its exit code (see the module docstring)."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    as_json = _wants_json(args)
    st = State()
    command = typer.main.get_command(app)
    args = arguments.hoist_globals(command, args)
    if os.environ.get(COMPLETE_VAR):
        # A completion script asks: typer's shell classes answer (it registers them only
        # when its own --install-completion options are on, which ledgerctl replaces).
        from typer._completion_classes import completion_init

        completion_init()
    try:
        command.main(
            args=args,
            prog_name="ledgerctl",
            standalone_mode=False,
            complete_var=COMPLETE_VAR,
            obj=st,
        )
    except typer.Exit as stop:
        return stop.exit_code
    except typer.Abort:
        return _fail(as_json, EXIT_OTHER, "ABORTED", "aborted")
    except typer.TyperException as error:  # usage errors (exit code 2) and the like
        show = getattr(error, "show", None)
        if as_json or not callable(show):
            return _fail(as_json, error.exit_code, "USAGE", error.format_message())
        show()
        return error.exit_code
    except config.ConfigError as error:
        return _fail(as_json, EXIT_USAGE, "CONFIGURATION", str(error))
    except LedgerError as error:
        detail = f" (field {error.field})" if error.field and not as_json else ""
        message, metadata = f"{error.message}{detail}", dict(error.metadata)
        try:
            hint = explain(error, st)
        except config.ConfigError:  # the settings themselves are at fault: say only the error
            hint = None
        if hint is not None:
            message = f"{hint.message} ({message})"
            metadata.update(hint.metadata)
        return _fail(as_json, exit_code_for(error), error.code, message, error.reason, metadata)
    return EXIT_OK

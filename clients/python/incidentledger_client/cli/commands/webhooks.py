"""``ledgerctl webhooks``: an agency's webhooks: register, list, update, delete, and the
delivery log."""

from __future__ import annotations

import os
from datetime import tzinfo
from typing import Annotated

import typer

from incidentledger_client import NotFound
from incidentledger_client.cli import config, output
from incidentledger_client.cli.commands import group
from incidentledger_client.cli.commands.incidents import RequestId
from incidentledger_client.cli.inputs import code, codes, incident_name
from incidentledger_client.cli.state import state
from incidentledger_client.i18n import N_, _, format_number, labels
from incidentledger_client.types import EventFilter, Webhook

app = group(
    "Webhooks of your agency: register, list, update, delete, deliveries, dead letters, replay.",
    "ledgerctl -a bpbd webhooks list",
)


@app.command(
    "register",
    epilog="Example: ledgerctl -a bpbd webhooks register https://bpbd.example/hook "
    '--secret "$(openssl rand -hex 16)" --kecamatan air_manjunto',
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
    event_type: Annotated[
        list[str] | None,
        typer.Option(help="Only events of these types, as the API names them (repeat)."),
    ] = None,
    agency: Annotated[
        list[str] | None, typer.Option(help="Only incidents involving these agencies (repeat).")
    ] = None,
    mine: Annotated[bool, typer.Option(help="Only incidents involving my agency.")] = False,
    request_id: RequestId = None,
) -> None:
    """Register a webhook for your agency."""
    kecamatan = codes(ctx, "kecamatan", kecamatan, "--kecamatan")
    category = codes(ctx, "category", category, "--category")
    agencies = codes(ctx, "agency", agency, "--agency")
    min_severity = code(ctx, "severity", min_severity, "--min-severity") if min_severity else ""
    st = state(ctx)
    hook = st.notifier().create_webhook(
        url,
        secret,
        kecamatan=kecamatan or (),
        categories=category or (),
        min_severity=min_severity,
        event_types=event_type or (),
        agencies=agencies or (),
        involving_my_agency=mine,
        request_id=request_id,
    )
    if st.as_json:
        output.emit_json(hook)
    else:
        output.console().print(
            _("registered {name} -> {url}").format(name=hook.name, url=hook.url), markup=False
        )


@app.command("list", epilog="Example: ledgerctl -a bpbd webhooks list")
def webhooks_list(ctx: typer.Context) -> None:
    """List your agency's webhooks."""
    st = state(ctx)
    hooks = list(st.notifier().webhooks())
    if st.as_json:
        output.emit_json(hooks)
    else:
        zone = st.zone(ask_ledger=False)
        output.console().print(
            output.rows_table(
                _("Webhooks"),
                (N_("name"), "url", N_("filter"), N_("created"), N_("waiting"), N_("dead letters")),
                (
                    (
                        h.name,
                        h.url,
                        output.filter_text(h.filter),
                        output.when(h.create_time, zone),
                        _waiting(h, zone),
                        format_number(h.dead_letters) if h.dead_letters else "",
                    )
                    for h in hooks
                ),
            )
        )


def _waiting(hook: Webhook, zone: tzinfo) -> str:
    """The deliveries its receiver has still to get, and since when the oldest waits."""
    if not hook.waiting_deliveries:
        return ""
    count = format_number(hook.waiting_deliveries)
    if hook.oldest_waiting_time is None:
        return count
    return _("{count}, the oldest since {time}").format(
        count=count, time=output.when(hook.oldest_waiting_time, zone)
    )


#: The fewest characters of a webhook's id (after ``wh_``) that name it, as for incidents.
MIN_WEBHOOK_PREFIX = 4


def _webhook(ctx: typer.Context, name: str) -> Webhook:
    """One of the agency's webhooks by its name, its id (after "webhooks/"), or the first
    4 or more characters of the id, with or without its ``wh_``, that only it starts with."""
    wanted = name if name.startswith("webhooks/") else f"webhooks/{name}"
    hooks = list(state(ctx).notifier().webhooks())
    for hook in hooks:
        if hook.name == wanted:
            return hook
    start = wanted.removeprefix("webhooks/").removeprefix("wh_").lower()
    if len(start) >= MIN_WEBHOOK_PREFIX:
        matches = [
            hook
            for hook in hooks
            if hook.name.removeprefix("webhooks/").removeprefix("wh_").startswith(start)
        ]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise typer.BadParameter(
                _("{name} is ambiguous: {count} of your webhooks start with it: {names}").format(
                    name=repr(name), count=len(matches), names=", ".join(h.name for h in matches)
                ),
                param_hint="WEBHOOK",
            )
    known = [h.name for h in hooks]
    # Not found (exit 3), as the notifier says a webhook it does not have: a deleted one
    # deleted again read as a usage error (2).
    raise NotFound(
        "NOT_FOUND",
        "WEBHOOK_NOT_FOUND",
        _("your agency has no webhook {name}{suggestion} (yours: {yours})").format(
            name=repr(name),
            suggestion=config.suggest(wanted, known),
            yours=", ".join(known) or _("none"),
        ),
    )


@app.command(
    "delete",
    epilog="Example: ledgerctl -a bpbd webhooks delete wh_3f2a (the first characters of its id)",
)
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
        output.console().print(
            _("deleted {name} ({url})").format(name=hook.name, url=hook.url), markup=False
        )


@app.command(
    "update",
    epilog="Example: ledgerctl -a bpbd webhooks update wh_3f2a "
    "--url https://bpbd.example/v2/hook --min-severity high",
)
def webhooks_update(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The webhook.", metavar="WEBHOOK")],
    url: Annotated[str | None, typer.Option(help="The new endpoint.")] = None,
    # No envvar here, unlike register: a WEBHOOK_SECRET left in the shell would otherwise
    # replace the secret on every update, whatever the update was for.
    secret: Annotated[
        str | None, typer.Option(help="A new shared secret (16-256 characters).")
    ] = None,
    secret_from_env: Annotated[
        bool,
        typer.Option(
            "--secret-from-env",
            help="Take the new secret from WEBHOOK_SECRET (it stays off the command line).",
        ),
    ] = False,
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
    if secret_from_env:
        if secret is not None:
            raise typer.BadParameter("give --secret or --secret-from-env, not both")
        secret = os.environ.get("WEBHOOK_SECRET")
        if not secret:
            raise typer.BadParameter("--secret-from-env: WEBHOOK_SECRET is not set")
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
            f"updated {hook.name}\n  url:     {hook.url}"
            f"\n  filter:  {output.filter_text(hook.filter)}"
            f"\n  created: {output.when(hook.create_time, st.zone(ask_ledger=False))}",
            markup=False,
            soft_wrap=True,
        )


@app.command(
    "deliveries", epilog="Example: ledgerctl -a bpbd webhooks deliveries --incident 0b6f12"
)
def webhooks_deliveries(
    ctx: typer.Context,
    incident: Annotated[str | None, typer.Option(help="Only this incident.")] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", help="The latest this many (0: all).")
    ] = 50,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            metavar="AGENCY",
            help="Deliveries to this agency, or 'all' for every agency's (the coordinator "
            "and auditors; other agencies see their own).",
        ),
    ] = None,
) -> None:
    """The delivery log of your agency: which event went where, how, with what outcome."""
    if limit < 0:  # the notifier would refuse its page size, naming page_size
        raise typer.BadParameter(_("must be 0 (all) or more"), param_hint="--limit")
    st = state(ctx)
    name = incident_name(ctx, incident) if incident else None
    if to is None:
        agency = st.settings.agency or None
    else:
        agency = None if to.strip().lower() == "all" else to.strip()
    found = []
    # The latest, read from the newest back (a day's log is long), shown in time order.
    for delivery in st.notifier().deliveries(
        incident=name,
        agency=agency,
        page_size=limit,  # the notifier keeps pages to its own largest
        newest_first=bool(limit),
    ):
        found.append(delivery)
        if limit and len(found) >= limit:
            break
    if limit:
        found.reverse()
    if st.as_json:
        output.emit_json(found)
        return
    zone = st.zone(ask_ledger=False)
    # The agency notified, when the list may hold other agencies' deliveries than the caller's.
    several = agency != (st.settings.agency or None)
    columns: list[str] = [N_("time"), N_("incident"), N_("position"), N_("agency")]
    columns += [N_("channel"), N_("target"), N_("outcome"), N_("attempt"), N_("error")]
    rows: list[tuple[object, ...]] = [
        (
            # To the second: a delivery's retries come seconds apart.
            output.local_time(d.time, zone, seconds=True),
            output.short_id(d.incident),
            d.position,
            d.agency,
            d.channel,
            d.target,
            labels.delivery(d.outcome),
            d.attempt,
            d.error,
        )
        for d in found
    ]
    if not several:
        del columns[3]
        rows = [row[:3] + row[4:] for row in rows]
    output.console().print(
        output.rows_table(
            (
                _("Deliveries (the latest {count})")
                if limit and len(found) >= limit
                else _("Deliveries ({count})")
            ).format(count=len(found)),
            columns,
            rows,
            no_wrap=("time", "incident"),
        )
    )

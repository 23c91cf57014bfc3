"""``ledgerctl webhooks dead-letters`` and ``replay``: the deliveries that gave up, and
their replay."""

from __future__ import annotations

from typing import Annotated

import typer

from incidentledger_client.cli import output
from incidentledger_client.cli.progress import progress_bar
from incidentledger_client.cli.state import state
from incidentledger_client.i18n import N_, _

#: Commands of the webhooks group (``ledgerctl webhooks dead-letters``, ...).
app = typer.Typer()


@app.command("dead-letters", epilog="Example: ledgerctl -a bpbd webhooks dead-letters")
def webhooks_dead_letters(ctx: typer.Context) -> None:
    """Deliveries that gave up."""
    st = state(ctx)
    letters = list(st.notifier().dead_letters())
    if st.as_json:
        output.emit_json(letters)
    else:
        output.console().print(
            output.rows_table(
                _("Dead letters"),
                (N_("name"), N_("webhook"), N_("incident"), N_("attempts"), N_("last error")),
                (
                    (d.name, d.webhook, output.short_id(d.incident), d.attempts, d.last_error)
                    for d in letters
                ),
                no_wrap=("name", "incident"),
            )
        )


@app.command("replay", epilog="Example: ledgerctl -a bpbd webhooks replay --all")
def webhooks_replay(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(help="Dead letters to replay.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Replay every dead letter.")] = False,
) -> None:
    """Replay dead letters (with a progress bar)."""
    st = state(ctx)
    notifier = st.notifier()
    if all_ and names:
        raise typer.BadParameter(_("name dead letters or pass --all, not both"))
    chosen = [d.name for d in notifier.dead_letters()] if all_ else list(names or [])
    if not chosen and not all_:
        raise typer.BadParameter(_("name dead letters or pass --all"))
    if not chosen:  # --all with nothing to replay: done, and said so
        if st.as_json:
            output.emit_json({"replayed": [], "count": 0})
        else:
            output.console().print(_("no dead letters: nothing to replay"))
        return
    replayed = 0  # the earlier dead letters of each one's incident go with it
    with progress_bar(st, _("replaying"), len(chosen)) as meter:
        for name in chosen:
            replayed += notifier.replay_dead_letter(name)
            meter.step()
    if st.as_json:
        output.emit_json({"replayed": chosen, "count": replayed})
    else:
        output.console().print(_("replayed {count} dead letter(s)").format(count=replayed))

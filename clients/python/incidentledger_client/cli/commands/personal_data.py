"""``ledgerctl pii``: reporters' and witnesses' personal data (docs/personal-data.md): read
with a purpose, subject access by phone or NIK, erase, legal holds, and who read it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo
from typing import Annotated

import typer

from incidentledger_client.cli import output
from incidentledger_client.cli.commands import group
from incidentledger_client.cli.commands.incidents import Name, RequestId, done
from incidentledger_client.cli.inputs import incident_name
from incidentledger_client.cli.state import state
from incidentledger_client.i18n import N_, _, format_number
from incidentledger_client.personal import (
    DataSubject,
    PersonalDataAccess,
    PersonalDataErasure,
    SubjectSummary,
)
from incidentledger_client.types import Incident

#: The group ``ledgerctl pii ...``.
app = group(
    "Personal data of reporters and witnesses: read (with a purpose), find, erase, hold.",
    "ledgerctl -a bawaslu pii read 0b6f12 --purpose 'verify the report'",
)

Purpose = Annotated[
    str,
    typer.Option(
        "--purpose",
        "-p",
        help="Why you read it (required, 5-500 characters); recorded with the read.",
    ),
]
#: The fewest characters of a subject's id that name it on the command line.
MIN_SUBJECT_PREFIX = 4

Reason = Annotated[
    str, typer.Option("--reason", "-m", help="The case or ground (required), recorded.")
]


#: Whose data, as the person at the terminal names them (``--subject``, repeatable).
Subjects = Annotated[
    list[str] | None,
    typer.Option(
        "--subject",
        help="Whose data: a subject as `pii accesses` shows it (its id or first "
        "characters), or reporter, or witness (when there is one); repeat for more.",
    ),
]


def _people_table(title: str, subjects: Sequence[DataSubject], chosen: Sequence[str] = ()) -> None:
    def state_of(subject: DataSubject) -> str:
        if subject.state == "ERASED":
            return _("erased")
        if subject.person:
            return _("present")
        if chosen and subject.subject_id not in chosen:
            return _("not read (not named with --subject)")
        return _("not shown to your agency")

    output.console().print(
        output.rows_table(
            title,
            (
                N_("incident"),
                N_("subject"),
                N_("role"),
                N_("state"),
                N_("name"),
                N_("phone"),
                N_("NIK"),
                N_("address"),
            ),
            (
                (
                    output.short_id(s.incident),
                    output.short_id(s.subject_id),
                    _("reporter (anonymous)") if s.anonymous else output.role_name(s.role),
                    state_of(s),
                    s.person.name if s.person else "-",
                    s.person.phone if s.person else "-",
                    s.person.nik if s.person else "-",
                    s.person.address if s.person else "-",
                )
                for s in subjects
            ),
            no_wrap=("incident", "subject"),
        )
    )


def _accesses_table(
    title: str,
    accesses: Sequence[PersonalDataAccess],
    zone: tzinfo,
    *,
    incidents: bool = False,
) -> None:
    """The recorded reads, oldest first; ``incidents``: with the incident each one read
    (a subject access spans reports: the reads of two read as one list)."""
    ordered = sorted(accesses, key=lambda a: a.access_time or datetime.min.replace(tzinfo=UTC))
    columns = (N_("time"), N_("agency"), N_("officer"), N_("people"), N_("purpose"))
    output.console().print(
        output.rows_table(
            title,
            ((N_("incident"), *columns) if incidents else columns),
            (
                (
                    *((output.short_id(a.incident),) if incidents else ()),
                    output.when(a.access_time, zone),
                    a.agency,
                    a.officer,
                    len(a.subjects),
                    a.purpose,
                )
                for a in ordered
            ),
        )
    )


def _erasures_table(erasures: Sequence[PersonalDataErasure], zone: tzinfo) -> None:
    """Who erased whose data, when, on what legal basis (oldest first, as recorded)."""
    output.console().print(
        output.rows_table(
            _("Erasures"),
            (N_("time"), N_("agency"), N_("officer"), N_("subject"), N_("legal basis")),
            (
                (
                    output.when(e.erase_time, zone),
                    e.agency,
                    e.officer,
                    ", ".join(output.short_id(s) for s in e.subjects),
                    e.legal_basis,
                )
                for e in erasures
            ),
            no_wrap=("subject",),
        )
    )


def _subjects_table(
    title: str, subjects: Sequence[DataSubject], accesses: Sequence[PersonalDataAccess]
) -> None:
    """The people an incident names, without their data (the access log never carries it):
    whether each one's data is still there, and how many recorded reads took it."""
    states = {"PRESENT": _("present"), "ERASED": _("erased")}
    output.console().print(
        output.rows_table(
            title,
            (N_("subject"), N_("role"), N_("state"), N_("reads")),
            (
                (
                    output.short_id(s.subject_id),
                    _("reporter (anonymous)") if s.anonymous else output.role_name(s.role),
                    states.get(s.state, s.state),
                    format_number(sum(1 for a in accesses if s.subject_id in a.subjects)),
                )
                for s in subjects
            ),
            no_wrap=("subject",),
        )
    )


@app.command("read", epilog="Example: ledgerctl -a bawaslu pii read 0b6f12 -p 'verify report'")
def pii_read(
    ctx: typer.Context,
    name: Name,
    purpose: Purpose,
    subject: Subjects = None,
    request_id: RequestId = None,
) -> None:
    """Read the personal data of an incident's report (everyone you may read, or only those
    named with --subject); the read is recorded first."""
    st = state(ctx)
    incident = incident_name(ctx, name)
    chosen = _chosen_subjects(st.ledger().get_incident(incident), subject) if subject else ()
    result, subjects = st.ledger().read_personal_data(
        incident, purpose, subjects=chosen, request_id=request_id
    )
    if st.as_json:
        output.emit_json({"result": result, "subjects": subjects})
    else:
        _people_table(_("Personal data (this read is recorded)"), subjects, chosen)


def _chosen_subjects(incident: Incident, given: Sequence[str]) -> tuple[str, ...]:
    """The ids of the people ``given`` names (:func:`chosen_subject`), each once."""
    try:
        return tuple(dict.fromkeys(chosen_subject(incident.data_subjects, each) for each in given))
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--subject") from None


@app.command(
    "find",
    epilog="Example: ledgerctl -a desk_pilkada pii find --nik 1706014107900003 -p 'request 5'",
)
def pii_find(
    ctx: typer.Context,
    purpose: Purpose,
    phone: Annotated[str, typer.Option(help="Phone, +62... or 08...")] = "",
    nik: Annotated[str, typer.Option(help="NIK, 16 digits.")] = "",
    request_id: RequestId = None,
) -> None:
    """Subject access: a person's data in every report that names them, and who read it."""
    st = state(ctx)
    subjects = st.ledger().find_personal_data(purpose, phone=phone, nik=nik, request_id=request_id)
    if st.as_json:
        output.emit_json(subjects)
        return
    if not subjects:
        # Said in words, not as two empty tables: no incident names them, nothing was read.
        output.console().print(_("no report names this person"))
        return
    _people_table(_("Reports naming this person"), subjects)
    _accesses_table(
        _("Who read their data"),
        [a for s in subjects for a in s.accesses],
        st.zone(),
        incidents=True,
    )


@app.command(
    "erase",
    epilog="Example: ledgerctl -a desk_pilkada pii erase 0b6f12 --subject reporter "
    "--legal-basis 'request 5'",
)
def pii_erase(
    ctx: typer.Context,
    name: Name,
    legal_basis: Annotated[
        str,
        typer.Option("--legal-basis", help="The request or rule the erasure follows (required)."),
    ],
    subject: Subjects = None,
    everyone: Annotated[
        bool, typer.Option("--all", help="Everyone the report names (instead of --subject).")
    ] = False,
    request_id: RequestId = None,
) -> None:
    """Erase personal data for good: the keys of the people named are destroyed (refused
    under a legal hold). Say whose: --subject, or --all for everyone."""
    if everyone and subject:
        raise typer.BadParameter(_("name the people with --subject or pass --all, not both"))
    if not everyone and not subject:
        # No default: an erasure cannot be undone, and "everyone" was one keystroke away
        # from "the person who asked".
        raise typer.BadParameter(
            _(
                "say whose data to erase: --subject (as `pii accesses` shows the people), "
                "or --all for everyone the report names"
            )
        )
    st = state(ctx)
    incident = incident_name(ctx, name)
    chosen = _chosen_subjects(st.ledger().get_incident(incident), subject) if subject else ()
    result = st.ledger().erase_personal_data(
        incident, legal_basis, subjects=chosen, everyone=everyone, request_id=request_id
    )
    # Whose data is gone, said (the answer named only the incident): each person as the
    # incident names them after the erasure.
    named = st.ledger().get_incident(incident, as_of_position=result.position).data_subjects
    erased = [
        s for s in named if s.state.value == "ERASED" and (everyone or s.subject_id in chosen)
    ]
    if st.as_json:
        output.emit_json({"result": result, "erased": erased})
        return
    done(ctx, _("erased"), result)
    output.console().print(
        _("erased the data of: {people}").format(
            people=", ".join(
                f"{_('reporter') if s.role == 'reporter' else _('witness')} "
                f"{output.short_id(s.subject_id)}"
                for s in erased
            )
            or "-"
        ),
        markup=False,
    )


def chosen_subject(named: Sequence[SubjectSummary], given: str) -> str:
    """The id of the person ``given`` names among ``named``: their id, its first characters
    (four or more, as tables show it), ``reporter``, or ``witness`` where there is one."""
    text = given.strip().lower()
    roles = {
        "reporter": "reporter",
        "witness": "witness",
        "pelapor": "reporter",
        "saksi": "witness",
    }
    if text in roles:
        matches = [s for s in named if s.role == roles[text]]
    elif len(text.replace("-", "")) >= MIN_SUBJECT_PREFIX:
        matches = [s for s in named if s.subject_id.lower().startswith(text)]
    else:
        matches = []
    if len(matches) == 1:
        return matches[0].subject_id
    shown = ", ".join(
        f"{output.short_id(s.subject_id)} ({output.role_name(s.role)})" for s in named
    ) or _("nobody")
    if matches:
        raise ValueError(
            _("{given} names more than one person here: {shown}").format(given=given, shown=shown)
        )
    raise ValueError(
        _("{given} names no person of this incident; it names: {shown}").format(
            given=given, shown=shown
        )
    )


@app.command("hold", epilog="Example: ledgerctl -a kejari pii hold 0b6f12 -m 'Gakkumdu 3/2024'")
def pii_hold(ctx: typer.Context, name: Name, reason: Reason, request_id: RequestId = None) -> None:
    """Place a legal hold: erasure is refused until it is lifted."""
    result = (
        state(ctx)
        .ledger()
        .place_legal_hold(incident_name(ctx, name), reason, request_id=request_id)
    )
    done(ctx, _("held"), result)


@app.command("release", epilog="Example: ledgerctl -a kejari pii release 0b6f12 -m 'case closed'")
def pii_release(
    ctx: typer.Context, name: Name, reason: Reason, request_id: RequestId = None
) -> None:
    """Lift your agency's legal hold."""
    result = (
        state(ctx).ledger().lift_legal_hold(incident_name(ctx, name), reason, request_id=request_id)
    )
    done(ctx, _("released"), result)


@app.command("accesses", epilog="Example: ledgerctl -a inspektorat pii accesses 0b6f12")
def pii_accesses(ctx: typer.Context, name: Name) -> None:
    """Who read an incident's personal data, when and why; its people and legal holds."""
    st = state(ctx)
    record = st.ledger().personal_data_accesses(incident_name(ctx, name))
    if st.as_json:
        output.emit_json(record)
        return
    _accesses_table(_("Reads of personal data"), record.accesses, st.zone())
    _subjects_table(_("People named"), record.subjects, record.accesses)
    if record.erasures:
        _erasures_table(record.erasures, st.zone())
    for hold in record.legal_holds:
        output.console().print(
            _("legal hold by {agency}: {reason}").format(agency=hold.agency, reason=hold.reason)
        )

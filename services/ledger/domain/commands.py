"""The commands on incidents: one frozen dataclass each, with its fields and their limits.

A command is named by its class, which is also its RPC's name and what idempotency
records store (``RequestRecord.command``), so a class is never renamed. Each field
declares the check the ledger makes on it before acting (:func:`text`, :func:`severity`,
...): :func:`checked` runs them in declaration order, then the command's own
cross-field check (:meth:`Command.check`). The application fingerprints a checked
command over all its fields (see ``requests.request_fingerprint``), then applies its
rule to the aggregate: :meth:`CreatingCommand.create` or :meth:`IncidentCommand.apply`.

Adding a command is a dataclass here, its rule in :class:`Incident`, its request
message in the proto with an entry in the table of services/ledger/wire.py and a one-line
method of the gRPC servicer, and a test (ARCHITECTURE.md, "How to add a command";
tests/integration/test_add_a_command.py applies such a change to a copy of the tree).
"""

from __future__ import annotations

import dataclasses
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime
from functools import cached_property
from typing import Any, ClassVar
from uuid import UUID, uuid4

from services.common.errors import InvalidArgument
from services.common.reference import PersonalDataPolicy, ReferenceData, Role, unknown_code
from services.ledger.domain.incident import DeviceRecord, Envelope, Incident, RejectionReason
from services.ledger.domain.personal import (
    INTO_PERSONAL_DATA,
    PersonalData,
    check_free_text,
    check_in_words,
    check_no_personal_number,
    check_purpose,
    checked_personal_data,
)
from services.ledger.domain.times import TimeBounds

MAX_TITLE = 200
MAX_TEXT = 4000
MAX_SHORT = 128
MAX_TPS = 32

#: The corrected fields whose own limit is not the correction's (``new_value``, 4000): its
#: length, and whether it is required (a value the command that recorded it would take).
#: Before, a title or a forum was corrected to 4,000 characters, a TPS to 4,000, and a
#: required text to blanks.
CORRECTED_TEXTS: dict[str, tuple[int, bool]] = {
    "title": (MAX_TITLE, True),
    "forum": (MAX_TITLE, True),
    "location.tps": (MAX_TPS, False),
    "summary": (MAX_TEXT, True),
    "rationale": (MAX_TEXT, True),
    "action": (MAX_TEXT, True),
    "resolution": (MAX_TEXT, True),
}

#: The metadata keys of a command's fields.
CHECK = "check"
MAX_LENGTH = "max_length"
REQUIRED = "required"


class Rules:
    """What the checks of a command consult: the reference data, the bounds of the times
    callers may state, and the time now (read once per command, when first needed)."""

    def __init__(
        self, reference: ReferenceData, time_bounds: TimeBounds, clock: Callable[[], datetime]
    ) -> None:
        self.reference = reference
        self.time_bounds = time_bounds
        self._clock = clock

    @cached_property
    def now(self) -> datetime:
        return self._clock()


#: A field's check: given the rules, the field's name and its value, raises
#: InvalidArgument or returns the value to act on.
Check = Callable[[Rules, str, Any], Any]


def blank(value: str) -> bool:
    """Whether ``value`` says nothing: only spaces and invisible format characters (a
    zero-width space, a byte order mark), which read as empty wherever it is shown."""
    return all(c.isspace() or unicodedata.category(c) == "Cf" for c in value)


def check_text(name: str, value: str, limit: int, *, required: bool = False) -> str:
    if required and blank(value):
        if value.strip():
            raise InvalidArgument(
                name, "is required: it holds only invisible formatting characters"
            )
        raise InvalidArgument(name, "is required")
    if len(value) > limit:
        raise InvalidArgument(name, f"is longer than {limit} characters", reason="FIELD_TOO_LONG")
    return value


def _spec(check: Check, **metadata: Any) -> dict[str, Any]:
    return {CHECK: check, **metadata}


def text(limit: int, *, required: bool = False) -> dict[str, Any]:
    """A text of at most ``limit`` characters; not blank when ``required``."""
    return _spec(
        lambda _rules, name, value: check_text(name, value, limit, required=required),
        max_length=limit,
        required=required,
    )


def category() -> dict[str, Any]:
    """A category of the reference data."""

    def check(rules: Rules, name: str, value: str) -> str:
        rules.reference.check_category(value, name)
        return value

    return _spec(check)


def severity(*, default: bool = False) -> dict[str, Any]:
    """A severity of the reference data; when ``default``, empty means the default one."""

    def check(rules: Rules, name: str, value: str) -> str:
        if default:
            value = value or rules.reference.default_severity
        rules.reference.check_severity(value, name)
        return value

    return _spec(check)


def people() -> dict[str, Any]:
    """The people a report names (services/ledger/domain/personal.py), normalised."""
    return _spec(lambda _rules, name, value: checked_personal_data(value, name))


def purpose() -> dict[str, Any]:
    """Why personal data is read or erased, in words."""
    return _spec(lambda _rules, name, value: check_purpose(value, name))


def hold_reason() -> dict[str, Any]:
    """A legal hold's reason: a text (as ``text(MAX_TEXT, required=True)``) in words
    (:func:`check_in_words`) without a number as long as a phone or NIK
    (:func:`check_no_personal_number`)."""

    def check(_rules: Rules, name: str, value: str) -> str:
        text = check_text(name, value, MAX_TEXT, required=True)
        return check_in_words(name, check_no_personal_number(name, text))

    return _spec(check, max_length=MAX_TEXT, required=True)


def location() -> dict[str, Any]:
    """A place in the reference data (kecamatan, desa), or None where it is optional."""

    def check(rules: Rules, name: str, value: Mapping[str, Any] | None) -> Any:
        if value is not None:
            check_location(rules.reference, value, name)
        return value

    return _spec(check)


def responder() -> dict[str, Any]:
    """An agency that can act (not an auditing one)."""

    def check(rules: Rules, name: str, value: str) -> str:
        if not value:
            raise InvalidArgument(name, "is required")
        if rules.reference.agency(value, name).role is Role.AUDITOR:
            raise InvalidArgument(name, f"{value} is an auditing agency and cannot act")
        return value

    return _spec(check)


def agencies() -> dict[str, Any]:
    """One or more distinct agencies of the reference data that can act: an auditing agency
    reads everything and writes nothing, so it decides nothing either (a decision's deciding
    agencies). They need not be involved in the incident: a Forkopimda decision binds the
    agencies of the forum, whichever of them leads the incident."""

    def check(rules: Rules, name: str, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise InvalidArgument(name, "at least one agency is required")
        if len(set(value)) != len(value):
            raise InvalidArgument(name, "lists an agency twice")
        for n, agency in enumerate(value):
            if rules.reference.agency(agency, f"{name}[{n}]").role is Role.AUDITOR:
                raise InvalidArgument(
                    f"{name}[{n}]", f"{agency} is an auditing agency and cannot decide"
                )
        return value

    return _spec(check)


def planned_time() -> dict[str, Any]:
    """A planned time: not before the ledger's era, not too far ahead."""

    def check(rules: Rules, name: str, value: datetime) -> datetime:
        rules.time_bounds.check_planned(name, value, rules.now, rules.reference.tz())
        return value

    return _spec(check)


def check_location(reference: ReferenceData, location: Mapping[str, Any], name: str) -> None:
    reference.check_location(
        str(location.get("kecamatan", "")), str(location.get("desa", "")), name
    )
    check_text(f"{name}.tps", str(location.get("tps", "")), MAX_TPS)
    lat, lon = location.get("latitude"), location.get("longitude")
    if lat is not None and not -90 <= lat <= 90:
        raise InvalidArgument(f"{name}.latitude", "must be between -90 and 90")
    if lon is not None and not -180 <= lon <= 180:
        raise InvalidArgument(f"{name}.longitude", "must be between -180 and 180")


# ------------------------------------------------------------------ the kinds


@dataclass(frozen=True)
class Command:
    """A request to change the ledger, as the application receives it."""

    #: Fields left out of the idempotency fingerprint. Only for fingerprints already
    #: stored before commands were objects: see :class:`MergeIncident`.
    UNFINGERPRINTED: ClassVar[frozenset[str]] = frozenset()
    #: Fields added to a command after its fingerprints were first stored: left out of
    #: the fingerprint while None, so that a retry of a request recorded before replays.
    OMITTED_WHEN_NONE: ClassVar[frozenset[str]] = frozenset()

    def check(self, rules: Rules) -> None:
        """Checks across fields, after each field's own (none by default)."""

    def could_have_recorded(self, incident_id: UUID, version: int) -> bool:
        """Whether a request record with this command's fingerprint, of an event of
        ``incident_id`` at ``version``, can be this command's: what a retry must repeat
        beyond the fingerprint. Only a command that leaves fields out of its fingerprint
        (:attr:`UNFINGERPRINTED`) checks them here, against what the record keeps."""
        return True


@dataclass(frozen=True)
class CreatingCommand(Command, ABC):
    """A command that creates an incident."""

    @abstractmethod
    def create(self, envelope: Envelope, reference_prefix: str, *, draw: int = 0) -> Incident:
        """The new incident, its reference code under ``reference_prefix`` ; ``draw``: which try
        for a free code this is, from 0 (a retry after the last code was taken)."""


@dataclass(frozen=True)
class IncidentCommand(Command, ABC):
    """A command on an existing incident (``expected_version`` 0: any version)."""

    incident: UUID
    expected_version: int

    def other_incidents(self) -> tuple[tuple[UUID, str], ...]:
        """The other incidents the command changes, with the request field naming each."""
        return ()

    @abstractmethod
    def apply(self, envelope: Envelope, incident: Incident, *others: Incident) -> None:
        """The command's rule on the aggregate(s) (``others`` as :meth:`other_incidents`)."""

    def run(
        self, reference: ReferenceData, envelope: Envelope, incident: Incident, *others: Incident
    ) -> None:
        """The rule as the application runs it: :meth:`apply`, unless the rule also
        consults the reference data (:class:`PersonalDataCommand`)."""
        self.apply(envelope, incident, *others)


@dataclass(frozen=True)
class PersonalDataCommand(IncidentCommand, ABC):
    """A command on the personal data of an incident: its rule consults who may do what
    (the reference data's ``personal_data`` policy)."""

    def apply(self, envelope: Envelope, incident: Incident, *others: Incident) -> None:
        raise TypeError(f"{command_name(self)} runs with the reference data's policy (run)")

    def run(
        self, reference: ReferenceData, envelope: Envelope, incident: Incident, *others: Incident
    ) -> None:
        self.apply_policy(reference.personal_data, envelope, incident)

    @abstractmethod
    def apply_policy(
        self, policy: PersonalDataPolicy, envelope: Envelope, incident: Incident
    ) -> None: ...


def command_name(command: Command | type[Command]) -> str:
    """The command's name: its RPC's, and the one idempotency records store."""
    return (command if isinstance(command, type) else type(command)).__name__


def checked(command: Command, rules: Rules) -> Command:
    """The command once its fields pass their checks (in declaration order), with the
    values the checks settled (a report's default severity)."""
    settled: dict[str, Any] = {}
    for spec in fields(command):
        check: Check | None = spec.metadata.get(CHECK)
        if check is None:
            continue
        value = getattr(command, spec.name)
        result = check(rules, spec.name, value)
        if result is not value:
            settled[spec.name] = result
    command = replace(command, **settled) if settled else command
    command.check(rules)  # on the settled values (a report's normalised phones)
    return command


# ------------------------------------------------------------------ the commands


@dataclass(frozen=True)
class ReportIncident(CreatingCommand):
    title: str = dataclasses.field(metadata=text(MAX_TITLE, required=True))
    description: str = dataclasses.field(metadata=text(MAX_TEXT))
    category: str = dataclasses.field(metadata=category())
    severity: str = dataclasses.field(metadata=severity(default=True))
    location: dict[str, Any] = dataclasses.field(metadata=location())
    personal_data: PersonalData | None = dataclasses.field(default=None, metadata=people())

    OMITTED_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"personal_data"})

    def check(self, rules: Rules) -> None:
        # The title and description are not sealed: the people the report names must
        # not be written into them (services/ledger/domain/personal.py).
        check_free_text(self.personal_data, {"title": self.title, "description": self.description})
        # A NIK or a mobile number of anyone: a field device's report, or a caller's number
        # typed into the description, kept it unsealed for good.
        for field, value in (("title", self.title), ("description", self.description)):
            check_no_personal_number(field, value, INTO_PERSONAL_DATA)

    def create(
        self,
        envelope: Envelope,
        reference_prefix: str,
        device: DeviceRecord | None = None,
        *,
        draw: int = 0,
    ) -> Incident:
        """The incident reported; ``device``: the field device it came from, if any
        (``IngestReports``: the same command, recorded with the device's provenance).
        Personal data must have been sealed (by the application) for the incident, whose
        id it then fixes; ``draw`` > 0 draws another reference code (the last was taken)."""
        return Incident.report(envelope, **self._report_args(reference_prefix, device, draw))

    def reported(
        self,
        envelope: Envelope,
        reference_prefix: str,
        device: DeviceRecord | None = None,
        *,
        draw: int = 0,
    ) -> Incident.Reported:
        """The event :meth:`create` records, made without the incident (by
        :meth:`Incident.reported`, the same rules): for a field device's batch."""
        return Incident.reported(envelope, **self._report_args(reference_prefix, device, draw))

    def _report_args(
        self, reference_prefix: str, device: DeviceRecord | None, draw: int
    ) -> dict[str, Any]:
        sealed = None
        if self.personal_data is not None:
            sealed = self.personal_data.sealed
            if sealed is None:
                raise TypeError("personal data must be sealed before the report is made")
        return {
            "title": self.title,
            "description": self.description,
            "category": self.category,
            "severity": self.severity,
            "location": self.location,
            "incident_id": sealed.incident_id if sealed else uuid4(),
            "reference_prefix": reference_prefix,
            "reference_draw": draw,
            "device": device,
            "personal": sealed,
        }


@dataclass(frozen=True)
class VerifyIncident(IncidentCommand):
    comment: str = dataclasses.field(metadata=text(MAX_TEXT))

    def apply(self, envelope: Envelope, incident: Incident, *others: Incident) -> None:
        incident.verify(envelope, self.comment)


@dataclass(frozen=True)
class RejectIncident(IncidentCommand):
    reason: RejectionReason
    comment: str = dataclasses.field(metadata=text(MAX_TEXT, required=True))

    def apply(self, envelope: Envelope, incident: Incident, *others: Incident) -> None:
        incident.reject(envelope, self.reason, self.comment)


@dataclass(frozen=True)
class MergeIncident(IncidentCommand):
    """Merges the incident (a duplicate) into ``target``.

    Its fingerprint leaves out ``incident`` and ``expected_version``, as it did before
    commands were objects, so that a retry of a merge recorded then still replays. The
    record keeps them nonetheless (:meth:`could_have_recorded`): a retry that names
    another duplicate, or expects another version, is another request.
    """

    UNFINGERPRINTED: ClassVar[frozenset[str]] = frozenset({"incident", "expected_version"})

    target: UUID
    comment: str = dataclasses.field(metadata=text(MAX_TEXT))

    def could_have_recorded(self, incident_id: UUID, version: int) -> bool:
        # The record is of the duplicate's Merged event: one version after the one expected
        # (0, none expected, cannot be told from any other).
        return incident_id == self.incident and self.expected_version in {0, version - 1}

    def other_incidents(self) -> tuple[tuple[UUID, str], ...]:
        return ((self.target, "target"),)

    def apply(self, envelope: Envelope, incident: Incident, *others: Incident) -> None:
        (target,) = others
        incident.merge_into(envelope, target, self.comment)


@dataclass(frozen=True)
class AssessSeverity(IncidentCommand):
    severity: str = dataclasses.field(metadata=severity())
    comment: str = dataclasses.field(metadata=text(MAX_TEXT))

    def apply(self, envelope: Envelope, incident: Incident, *others: Incident) -> None:
        incident.assess_severity(envelope, self.severity, self.comment)


@dataclass(frozen=True)
class AssignLeadAgency(IncidentCommand):
    agency: str = dataclasses.field(metadata=responder())
    comment: str = dataclasses.field(metadata=text(MAX_TEXT))

    def apply(self, envelope: Envelope, incident: Incident, *others: Incident) -> None:
        incident.assign_lead(envelope, self.agency, self.comment)


@dataclass(frozen=True)
class AddSupportingAgency(IncidentCommand):
    agency: str = dataclasses.field(metadata=responder())
    comment: str = dataclasses.field(metadata=text(MAX_TEXT))

    def apply(self, envelope: Envelope, incident: Incident, *others: Incident) -> None:
        incident.add_supporting_agency(envelope, self.agency, self.comment)


@dataclass(frozen=True)
class ProposeHandover(IncidentCommand):
    to_agency: str = dataclasses.field(metadata=responder())
    reason: str = dataclasses.field(metadata=text(MAX_TEXT, required=True))

    def apply(self, envelope: Envelope, incident: Incident, *others: Incident) -> None:
        incident.propose_handover(envelope, self.to_agency, self.reason)


@dataclass(frozen=True)
class AcceptHandover(IncidentCommand):
    comment: str = dataclasses.field(metadata=text(MAX_TEXT))

    def apply(self, envelope: Envelope, incident: Incident, *others: Incident) -> None:
        incident.accept_handover(envelope, self.comment)


@dataclass(frozen=True)
class RecordDecision(IncidentCommand):
    """A decision; without a ``scope``, it covers the incident's location."""

    deciding_agencies: tuple[str, ...] = dataclasses.field(metadata=agencies())
    forum: str = dataclasses.field(metadata=text(MAX_TITLE, required=True))
    summary: str = dataclasses.field(metadata=text(MAX_TEXT, required=True))
    rationale: str = dataclasses.field(metadata=text(MAX_TEXT, required=True))
    scope: dict[str, Any] | None = dataclasses.field(metadata=location())
    valid_from: datetime = dataclasses.field(metadata=planned_time())
    valid_until: datetime = dataclasses.field(metadata=planned_time())

    def apply(self, envelope: Envelope, incident: Incident, *others: Incident) -> None:
        raise TypeError("RecordDecision runs with the reference data (run)")

    def run(
        self, reference: ReferenceData, envelope: Envelope, incident: Incident, *others: Incident
    ) -> None:
        # The regency's zone: a refusal states the window's ends as its officers read them
        # (a Timestamp carries no zone of the caller's).
        incident.record_decision(
            envelope,
            deciding_agencies=list(self.deciding_agencies),
            forum=self.forum,
            summary=self.summary,
            rationale=self.rationale,
            scope=self.scope or incident.location,
            valid_from=self.valid_from,
            valid_until=self.valid_until,
            zone=reference.tz(),
        )


@dataclass(frozen=True)
class LogAction(IncidentCommand):
    """An action taken; without a ``location``, at the incident's location."""

    action: str = dataclasses.field(metadata=text(MAX_TEXT, required=True))
    location: dict[str, Any] | None = dataclasses.field(metadata=location())

    def apply(self, envelope: Envelope, incident: Incident, *others: Incident) -> None:
        incident.log_action(envelope, self.action, self.location or incident.location)


@dataclass(frozen=True)
class EscalateIncident(IncidentCommand):
    reason: str = dataclasses.field(metadata=text(MAX_TEXT, required=True))

    def apply(self, envelope: Envelope, incident: Incident, *others: Incident) -> None:
        incident.escalate(envelope, self.reason)


@dataclass(frozen=True)
class ResolveIncident(IncidentCommand):
    resolution: str = dataclasses.field(metadata=text(MAX_TEXT, required=True))

    def apply(self, envelope: Envelope, incident: Incident, *others: Incident) -> None:
        incident.resolve(envelope, self.resolution)


@dataclass(frozen=True)
class RequestClosure(IncidentCommand):
    comment: str = dataclasses.field(metadata=text(MAX_TEXT))

    def apply(self, envelope: Envelope, incident: Incident, *others: Incident) -> None:
        incident.request_closure(envelope, self.comment)


@dataclass(frozen=True)
class ApproveClosure(IncidentCommand):
    comment: str = dataclasses.field(metadata=text(MAX_TEXT))

    def apply(self, envelope: Envelope, incident: Incident, *others: Incident) -> None:
        incident.approve_closure(envelope, self.comment)


@dataclass(frozen=True)
class ReopenIncident(IncidentCommand):
    reason: str = dataclasses.field(metadata=text(MAX_TEXT, required=True))

    def apply(self, envelope: Envelope, incident: Incident, *others: Incident) -> None:
        incident.reopen(envelope, self.reason)


@dataclass(frozen=True)
class RecordCorrection(IncidentCommand):
    """Corrects ``field`` of the event ``event_id`` from ``old_value`` to ``new_value``."""

    event_id: UUID
    field: str = dataclasses.field(metadata=text(MAX_SHORT, required=True))
    old_value: str = dataclasses.field(metadata=text(MAX_TEXT))
    new_value: str = dataclasses.field(metadata=text(MAX_TEXT))
    reason: str = dataclasses.field(metadata=text(MAX_TEXT, required=True))

    def check(self, rules: Rules) -> None:
        check_corrected_value(rules, self.field, self.new_value)

    def apply(self, envelope: Envelope, incident: Incident, *others: Incident) -> None:
        raise TypeError("RecordCorrection runs with the reference data (run)")

    def run(
        self, reference: ReferenceData, envelope: Envelope, incident: Incident, *others: Incident
    ) -> None:
        # The regency's zone: a refusal states a recorded time in it when old_value names
        # none (as the decision's window is stated).
        incident.correct(
            envelope,
            event_id=self.event_id,
            field=self.field,
            old_value=self.old_value,
            new_value=self.new_value,
            reason=self.reason,
            zone=reference.tz(),
            desa_of=reference.desa_of,
        )


# ---------------------------------------------- personal data (docs/personal-data.md)


@dataclass(frozen=True)
class ReadPersonalData(PersonalDataCommand):
    """Records a read of the incident's personal data, for a stated purpose; the
    application decrypts what the recorded access names."""

    purpose: str = dataclasses.field(metadata=purpose())
    #: The subjects to read; None: everyone the caller may read.
    subjects: tuple[UUID, ...] | None = None

    OMITTED_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"subjects"})

    def apply_policy(
        self, policy: PersonalDataPolicy, envelope: Envelope, incident: Incident
    ) -> None:
        incident.record_personal_data_access(envelope, self.purpose, policy, named=self.subjects)


@dataclass(frozen=True)
class ErasePersonalData(PersonalDataCommand):
    """Erases the subjects' data, or with ``everyone`` the data of everyone the incident
    names; the application destroys their keys once the erasure is recorded."""

    subjects: tuple[UUID, ...]
    legal_basis: str = dataclasses.field(metadata=purpose())
    everyone: bool = False

    #: ``everyone`` says what an empty ``subjects`` said before it was required: the
    #: fingerprint of an erasure recorded before it stays the same.
    UNFINGERPRINTED: ClassVar[frozenset[str]] = frozenset({"everyone"})

    def check(self, rules: Rules) -> None:
        # An erasure cannot be undone: an empty list of subjects, a caller's slip, erased
        # everyone the incident names.
        if self.everyone and self.subjects:
            raise InvalidArgument("subjects", "names subjects while everyone is set: say one")
        if not self.everyone and not self.subjects:
            raise InvalidArgument(
                "subjects",
                "is required: the subject ids to erase (Incident.data_subjects), or set "
                "everyone to erase everyone the incident names",
            )

    def apply_policy(
        self, policy: PersonalDataPolicy, envelope: Envelope, incident: Incident
    ) -> None:
        incident.erase_personal_data(envelope, self.subjects, self.legal_basis, policy)


@dataclass(frozen=True)
class PlaceLegalHold(PersonalDataCommand):
    reason: str = dataclasses.field(metadata=hold_reason())

    def apply_policy(
        self, policy: PersonalDataPolicy, envelope: Envelope, incident: Incident
    ) -> None:
        incident.place_legal_hold(envelope, self.reason, policy)


@dataclass(frozen=True)
class LiftLegalHold(PersonalDataCommand):
    reason: str = dataclasses.field(metadata=hold_reason())

    def apply_policy(
        self, policy: PersonalDataPolicy, envelope: Envelope, incident: Incident
    ) -> None:
        incident.lift_legal_hold(envelope, self.reason, policy)


def check_corrected_value(rules: Rules, field: str, new_value: str) -> None:
    """A corrected value must be one the field could have held."""
    reference = rules.reference
    if field in CORRECTED_TEXTS:
        limit, required = CORRECTED_TEXTS[field]
        check_text("new_value", new_value, limit, required=required)
    if field == "severity":
        reference.check_severity(new_value, "new_value")
    elif field == "category":
        reference.check_category(new_value, "new_value")
    elif field == "location.kecamatan" and new_value not in reference.kecamatan:
        raise unknown_code("new_value", "kecamatan", new_value, reference.kecamatan)
    elif field in {"valid_from", "valid_until", "occurred_at"}:
        try:
            value = datetime.fromisoformat(new_value)
        except ValueError:
            raise InvalidArgument(
                "new_value", "must be an ISO-8601 time with its UTC offset"
            ) from None
        if value.tzinfo is None:
            # Read as UTC it would be seven hours off for an officer in WIB: the offset
            # says which instant is meant. The example is in the regency's zone (WIB in
            # Mukomuko, WITA in a regency of Sulawesi).
            local = value.replace(tzinfo=reference.tz())
            raise InvalidArgument(
                "new_value",
                f"{new_value!r} has no UTC offset: write the zone, e.g. "
                f"{local.isoformat()} ({local.tzname()}) or {new_value}Z (UTC)",
            )
        # Refusals state the times in the zone the caller wrote (an officer's +07:00).
        if field == "occurred_at":
            rules.time_bounds.check_occurred("new_value", value, rules.now, value.tzinfo)
        else:
            rules.time_bounds.check_planned("new_value", value, rules.now, value.tzinfo)


def command_types() -> tuple[type[Command], ...]:
    """Every command of this module, in declaration order."""
    kinds = (Command, CreatingCommand, IncidentCommand, PersonalDataCommand)
    return tuple(
        value
        for value in globals().values()
        if isinstance(value, type)
        and issubclass(value, Command)
        and value.__module__ == __name__
        and value not in kinds
    )

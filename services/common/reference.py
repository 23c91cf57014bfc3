"""Reference data: agencies with roles, kecamatan and desa, categories, severities, and the
regency's words for the statuses and roles.

Loaded from a YAML file at start; nothing regency-specific is in code. Shared by the
ledger (its domain checks commands against it) and the notifier (it checks filters and
who may see what), which must not import each other (see ``.importlinter``).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from services.common.errors import InvalidArgument, PermissionDenied
from services.common.vocabulary import STATUSES

#: The prefix of reference codes when the reference data names none.
DEFAULT_REFERENCE_PREFIX = "INC"
#: The regency's time zone unless the file names one (``zone``): WIB, as in Mukomuko.
DEFAULT_ZONE = "Asia/Jakarta"


class Role(enum.Enum):
    COORDINATOR = "coordinator"
    RESPONDER = "responder"
    AUDITOR = "auditor"


#: The roles' codes, as the reference data's section ``roles`` names them.
ROLES: tuple[str, ...] = tuple(r.value for r in Role)


def one_of(codes: Iterable[str]) -> str:
    """The end of an "unknown code" message: the codes it may be (the reference data's,
    sorted), so that a caller need not look them up to correct a typo."""
    return f"; one of: {', '.join(sorted(codes))}"


def unknown_code(field: str, what: str, value: str, codes: Iterable[str] = ()) -> InvalidArgument:
    """The refusal of a code the reference data does not have: its message names the codes
    it may be; its metadata (``check`` ``unknown``, ``value``, ``what``) lets a message in
    the caller's language say which value was refused, not only that one was."""
    listed = one_of(codes) if codes else ""
    return InvalidArgument(
        field,
        f"unknown {what} {value!r}{listed}",
        metadata={"check": "unknown", "value": value, "what": what},
    )


@dataclass(frozen=True)
class Agency:
    code: str
    name: str
    role: Role


@dataclass(frozen=True)
class Kecamatan:
    code: str
    name: str
    desa: frozenset[str]


@dataclass(frozen=True)
class Category:
    code: str
    name: str
    dimension: str
    #: The name in other languages, by language tag ("id"), from the file's ``names``.
    names: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Severity:
    code: str
    name: str
    rank: int
    names: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Term:
    """A status or a role as the regency words it (sections ``statuses`` and ``roles``).

    The codes are the system's (``REPORTED``, ``responder``), not the regency's: a file
    only names them. Without a name in the file, ``name`` is the code and ``names`` is
    empty, and clients show the words of their own catalogs.
    """

    code: str
    name: str
    names: Mapping[str, str] = field(default_factory=dict)


def _terms(raw: Any, codes: tuple[str, ...], section: str) -> dict[str, Term]:
    """The section ``statuses`` or ``roles``: every one of ``codes``, in their order, with
    the name and names the file gives (it may leave some or all out; none is invented)."""
    terms = {code: Term(code, code) for code in codes}
    if raw is None:
        return terms
    if not isinstance(raw, list):
        raise ReferenceDataError(f"{section}: a list of entries with code, name and names")
    named: set[str] = set()
    for entry in raw:
        code = entry["code"]
        if code not in terms:
            raise ReferenceDataError(f"{section}: unknown code {code!r}; the codes are {codes}")
        if code in named:
            raise ReferenceDataError(f"{section}: {code!r} is listed twice")
        named.add(code)
        terms[code] = Term(code, str(entry.get("name") or code), _names(entry))
    return terms


def _default_statuses() -> dict[str, Term]:
    return _terms(None, STATUSES, "statuses")


def _default_roles() -> dict[str, Term]:
    return _terms(None, ROLES, "roles")


def _names(raw: Any) -> dict[str, str]:
    """An entry's ``names`` (``{id: "Politik uang"}``): language tags to non-empty texts."""
    names = raw.get("names") or {}
    if not isinstance(names, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and v for k, v in names.items()
    ):
        raise ReferenceDataError(f"names of {raw.get('code')!r}: a mapping of language to text")
    return dict(names)


IKP_DIMENSIONS = frozenset(
    {"social_political_context", "election_administration", "contestation", "participation"}
)


class ReferenceDataError(ValueError):
    """The reference data file is malformed."""


# Defaults of the projections' settings, used when the reference data file has no
# ``vulnerability`` or ``overdue_after_hours`` section (see services/ledger/projections).
DEFAULT_HALF_LIFE_DAYS = 7.0
DEFAULT_OPEN_MULTIPLIER = 1.5
DEFAULT_SCALE = 20.0
IKP_HIGH = 49.33
IKP_MEDIUM = 13.47
DEFAULT_MAX_REASONS = 50
DEFAULT_OVERDUE_HOURS: dict[str, float] = {
    "critical": 1.0,
    "high": 4.0,
    "medium": 24.0,
    "low": 72.0,
}
FALLBACK_OVERDUE_HOURS = 24.0


@dataclass(frozen=True)
class VulnerabilityModel:
    """Weights of the vulnerability map (formula in services/ledger/projections).

    ``severity_weights`` and ``dimension_weights`` fall back to 1.0 for a code they
    do not list.
    """

    severity_weights: dict[str, float] = field(default_factory=dict)
    dimension_weights: dict[str, float] = field(default_factory=dict)
    half_life_days: float = DEFAULT_HALF_LIFE_DAYS
    open_multiplier: float = DEFAULT_OPEN_MULTIPLIER
    scale: float = DEFAULT_SCALE
    high_threshold: float = IKP_HIGH
    medium_threshold: float = IKP_MEDIUM
    max_reasons: int = DEFAULT_MAX_REASONS

    def severity_weight(self, severity: str) -> float:
        return self.severity_weights.get(severity, 1.0)

    def dimension_weight(self, dimension: str) -> float:
        return self.dimension_weights.get(dimension, 1.0)

    def band(self, score: float) -> str:
        if score >= self.high_threshold:
            return "high"
        if score >= self.medium_threshold:
            return "medium"
        return "low"

    @classmethod
    def from_mapping(
        cls, raw: Mapping[str, Any] | None, severities: Mapping[str, Severity]
    ) -> VulnerabilityModel:
        """The section ``vulnerability`` of the file; defaults for what it leaves out.

        Default severity weights double with each rank (1, 2, 4, 8, ...); default
        dimension weights are 1.0.
        """
        raw = raw or {}
        bands = raw.get("bands") or {}
        severity_weights = {s.code: float(2 ** (s.rank - 1)) for s in severities.values()}
        severity_weights.update(
            {str(k): float(v) for k, v in (raw.get("severity_weights") or {}).items()}
        )
        dimension_weights = dict.fromkeys(sorted(IKP_DIMENSIONS), 1.0)
        dimension_weights.update(
            {str(k): float(v) for k, v in (raw.get("dimension_weights") or {}).items()}
        )
        model = cls(
            severity_weights=severity_weights,
            dimension_weights=dimension_weights,
            half_life_days=float(raw.get("half_life_days", DEFAULT_HALF_LIFE_DAYS)),
            open_multiplier=float(raw.get("open_multiplier", DEFAULT_OPEN_MULTIPLIER)),
            scale=float(raw.get("scale", DEFAULT_SCALE)),
            high_threshold=float(bands.get("high", IKP_HIGH)),
            medium_threshold=float(bands.get("medium", IKP_MEDIUM)),
            max_reasons=int(raw.get("max_reasons", DEFAULT_MAX_REASONS)),
        )
        numbers = [
            *model.severity_weights.values(),
            *model.dimension_weights.values(),
            model.open_multiplier,
        ]
        if any(not math.isfinite(n) or n < 0 for n in numbers):
            raise ValueError("vulnerability weights must be finite and not negative")
        if model.half_life_days <= 0 or model.scale <= 0 or model.max_reasons < 0:
            raise ValueError("half_life_days and scale must be positive, max_reasons >= 0")
        if not 0 <= model.medium_threshold <= model.high_threshold <= 100:
            raise ValueError("bands: 0 <= medium <= high <= 100")
        return model


@dataclass(frozen=True)
class PersonalDataPolicy:
    """Who may do what with reporters' and witnesses' personal data (section
    ``personal_data`` of the file): agency codes. The incident's reporting agency may
    always read and erase what it recorded; an anonymous reporter is readable by the
    reporting agency only. Without the section only the coordinator reads and erases,
    and nobody places legal holds."""

    readers: frozenset[str] = frozenset()
    erasers: frozenset[str] = frozenset()
    legal_hold: frozenset[str] = frozenset()

    @classmethod
    def from_mapping(
        cls, raw: Mapping[str, Any] | None, agencies: Mapping[str, Agency]
    ) -> PersonalDataPolicy:
        coordinator = [a.code for a in agencies.values() if a.role is Role.COORDINATOR]
        raw = raw or {}

        def codes(key: str, default: list[str], *, acts: bool) -> frozenset[str]:
            listed = raw.get(key, default)
            if not isinstance(listed, list) or not all(isinstance(c, str) for c in listed):
                raise ValueError(f"personal_data.{key}: a list of agency codes")
            unknown = sorted(set(listed) - set(agencies))
            if unknown:
                raise ValueError(f"personal_data.{key}: unknown agencies {unknown}")
            # An auditor records nothing (the incident refuses it READ_ONLY_ROLE): listed
            # where an agency acts, it would be a rule the ledger never applies.
            auditors = sorted(c for c in listed if agencies[c].role is Role.AUDITOR)
            if acts and auditors:
                raise ValueError(
                    f"personal_data.{key}: {auditors} audit and record nothing; "
                    "an auditor may be among the readers only"
                )
            return frozenset(listed)

        return cls(
            readers=codes("readers", coordinator, acts=False),
            erasers=codes("erasers", coordinator, acts=True),
            legal_hold=codes("legal_hold", [], acts=True),
        )


def _overdue_hours(
    raw: Mapping[str, Any] | None, severities: Mapping[str, Severity]
) -> dict[str, float]:
    hours = {code: DEFAULT_OVERDUE_HOURS.get(code, FALLBACK_OVERDUE_HOURS) for code in severities}
    hours.update({str(k): float(v) for k, v in (raw or {}).items()})
    if any(not math.isfinite(h) or h <= 0 for h in hours.values()):
        raise ValueError("overdue_after_hours must be positive")
    return hours


@dataclass(frozen=True)
class ReferenceData:
    regency: str
    agencies: dict[str, Agency]
    kecamatan: dict[str, Kecamatan]
    categories: dict[str, Category]
    severities: dict[str, Severity]
    default_severity: str
    # The projections' settings (sections ``vulnerability`` and ``overdue_after_hours``).
    vulnerability: VulnerabilityModel = field(default_factory=VulnerabilityModel)
    overdue_after_hours: dict[str, float] = field(default_factory=dict)
    personal_data: PersonalDataPolicy = field(default_factory=PersonalDataPolicy)
    # The first part of every reference code (``MKM`` in ``MKM-7QK3-9V``): one to six
    # letters A-Z, ``reference_prefix`` in the file.
    reference_prefix: str = DEFAULT_REFERENCE_PREFIX
    # The regency's words for every status and role (sections ``statuses`` and ``roles``),
    # in the system's order; only named where the file names them.
    statuses: dict[str, Term] = field(default_factory=_default_statuses)
    roles: dict[str, Term] = field(default_factory=_default_roles)
    # The regency's time zone (IANA name, ``zone`` in the file): the ledger's refusals state
    # times in it when the caller's value names no zone of its own.
    zone: str = DEFAULT_ZONE

    def tz(self) -> ZoneInfo:
        """The regency's time zone (ZoneInfo caches it: one object per name)."""
        return ZoneInfo(self.zone)

    def overdue_after_seconds(self, severity: str) -> float:
        """How long an incident of this severity may stay open before it is overdue."""
        return 3600.0 * self.overdue_after_hours.get(severity, FALLBACK_OVERDUE_HOURS)

    @property
    def coordinator(self) -> str:
        return next(a.code for a in self.agencies.values() if a.role is Role.COORDINATOR)

    def agency(self, code: str, field: str) -> Agency:
        try:
            return self.agencies[code]
        except KeyError:
            raise unknown_code(field, "agency", code, self.agencies) from None

    def require_role(self, agency: str, roles: set[Role], action: str) -> None:
        """PERMISSION_DENIED unless the agency has one of ``roles``."""
        if self.agencies[agency].role not in roles:
            allowed = " or ".join(sorted(r.value for r in roles))
            raise PermissionDenied(
                f"only the {allowed} may {action}",
                reason="ROLE_REQUIRED",
                metadata={"action": action, "caller_agency": agency},
            )

    def check_category(self, code: str, field: str = "category") -> None:
        if code not in self.categories:
            raise unknown_code(field, "category", code, self.categories)

    def check_severity(self, code: str, field: str = "severity") -> None:
        if code not in self.severities:
            raise unknown_code(field, "severity", code, self.severities)

    def desa_of(self, kecamatan: str) -> frozenset[str] | None:
        """The desa of ``kecamatan``; None for a kecamatan the reference data does not know."""
        known = self.kecamatan.get(kecamatan)
        return None if known is None else known.desa

    def check_location(self, kecamatan: str, desa: str, field: str = "location") -> None:
        if not kecamatan:
            raise InvalidArgument(f"{field}.kecamatan", "is required")
        known = self.kecamatan.get(kecamatan)
        if known is None:
            raise unknown_code(f"{field}.kecamatan", "kecamatan", kecamatan, self.kecamatan)
        if desa and desa not in known.desa:
            raise InvalidArgument(
                f"{field}.desa",
                f"unknown desa {desa!r} in kecamatan {known.name} (GetReferenceData lists "
                "each kecamatan's)",
                metadata={"check": "unknown", "value": desa, "what": "desa"},
            )

    @classmethod
    def load(cls, path: Path) -> ReferenceData:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ReferenceDataError(f"cannot read reference data {path}: {exc}") from exc
        return cls.from_mapping(raw, source=str(path))

    @classmethod
    def from_mapping(cls, raw: Any, source: str = "<mapping>") -> ReferenceData:
        try:
            agencies = {
                a["code"]: Agency(a["code"], a["name"], Role(a["role"])) for a in raw["agencies"]
            }
            kecamatan = {
                k["code"]: Kecamatan(k["code"], k["name"], frozenset(k.get("desa", [])))
                for k in raw["kecamatan"]
            }
            categories = {
                c["code"]: Category(c["code"], c["name"], c["dimension"], _names(c))
                for c in raw["categories"]
            }
            severities = {
                s["code"]: Severity(s["code"], s["name"], int(s["rank"]), _names(s))
                for s in raw["severities"]
            }
            data = cls(
                regency=str(raw["regency"]),
                agencies=agencies,
                kecamatan=kecamatan,
                categories=categories,
                severities=severities,
                default_severity=str(raw["default_severity"]),
                vulnerability=VulnerabilityModel.from_mapping(raw.get("vulnerability"), severities),
                overdue_after_hours=_overdue_hours(raw.get("overdue_after_hours"), severities),
                personal_data=PersonalDataPolicy.from_mapping(raw.get("personal_data"), agencies),
                reference_prefix=str(raw.get("reference_prefix", DEFAULT_REFERENCE_PREFIX)),
                statuses=_terms(raw.get("statuses"), STATUSES, "statuses"),
                roles=_terms(raw.get("roles"), ROLES, "roles"),
                zone=str(raw.get("zone", DEFAULT_ZONE)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ReferenceDataError(f"malformed reference data in {source}: {exc!r}") from exc
        coordinators = [a for a in agencies.values() if a.role is Role.COORDINATOR]
        if len(coordinators) != 1:
            raise ReferenceDataError(f"{source}: exactly one agency must have role coordinator")
        unknown = {c.dimension for c in categories.values()} - IKP_DIMENSIONS
        if unknown:
            raise ReferenceDataError(f"{source}: unknown IKP dimensions {sorted(unknown)}")
        if not re.fullmatch(r"[A-Z]{1,6}", data.reference_prefix):
            raise ReferenceDataError(f"{source}: reference_prefix must be 1 to 6 letters A-Z")
        if data.default_severity not in severities:
            raise ReferenceDataError(f"{source}: default_severity is not a listed severity")
        try:
            data.tz()
        except (ZoneInfoNotFoundError, ValueError):
            raise ReferenceDataError(
                f"{source}: zone {data.zone!r} is not a time zone (an IANA name such as "
                "Asia/Jakarta, Asia/Makassar or Asia/Jayapura)"
            ) from None
        return data

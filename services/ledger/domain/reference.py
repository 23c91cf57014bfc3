"""Reference data: agencies with roles, kecamatan and desa, categories, severities.

Loaded from a YAML file at start; nothing regency-specific is in code.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.common.errors import InvalidArgument


class Role(enum.Enum):
    COORDINATOR = "coordinator"
    RESPONDER = "responder"
    AUDITOR = "auditor"


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


@dataclass(frozen=True)
class Severity:
    code: str
    name: str
    rank: int


IKP_DIMENSIONS = frozenset(
    {"social_political_context", "election_administration", "contestation", "participation"}
)


class ReferenceDataError(ValueError):
    """The reference data file is malformed."""


@dataclass(frozen=True)
class ReferenceData:
    regency: str
    agencies: dict[str, Agency]
    kecamatan: dict[str, Kecamatan]
    categories: dict[str, Category]
    severities: dict[str, Severity]
    default_severity: str

    @property
    def coordinator(self) -> str:
        return next(a.code for a in self.agencies.values() if a.role is Role.COORDINATOR)

    def agency(self, code: str, field: str) -> Agency:
        try:
            return self.agencies[code]
        except KeyError:
            raise InvalidArgument(field, f"unknown agency {code!r}") from None

    def check_category(self, code: str, field: str = "category") -> None:
        if code not in self.categories:
            raise InvalidArgument(field, f"unknown category {code!r}")

    def check_severity(self, code: str, field: str = "severity") -> None:
        if code not in self.severities:
            raise InvalidArgument(field, f"unknown severity {code!r}")

    def check_location(self, kecamatan: str, desa: str, field: str = "location") -> None:
        if not kecamatan:
            raise InvalidArgument(f"{field}.kecamatan", "is required")
        known = self.kecamatan.get(kecamatan)
        if known is None:
            raise InvalidArgument(f"{field}.kecamatan", f"unknown kecamatan {kecamatan!r}")
        if desa and desa not in known.desa:
            raise InvalidArgument(
                f"{field}.desa", f"unknown desa {desa!r} in kecamatan {known.name}"
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
                c["code"]: Category(c["code"], c["name"], c["dimension"]) for c in raw["categories"]
            }
            severities = {
                s["code"]: Severity(s["code"], s["name"], int(s["rank"])) for s in raw["severities"]
            }
            data = cls(
                regency=str(raw["regency"]),
                agencies=agencies,
                kecamatan=kecamatan,
                categories=categories,
                severities=severities,
                default_severity=str(raw["default_severity"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ReferenceDataError(f"malformed reference data in {source}: {exc!r}") from exc
        coordinators = [a for a in agencies.values() if a.role is Role.COORDINATOR]
        if len(coordinators) != 1:
            raise ReferenceDataError(f"{source}: exactly one agency must have role coordinator")
        unknown = {c.dimension for c in categories.values()} - IKP_DIMENSIONS
        if unknown:
            raise ReferenceDataError(f"{source}: unknown IKP dimensions {sorted(unknown)}")
        if data.default_severity not in severities:
            raise ReferenceDataError(f"{source}: default_severity is not a listed severity")
        return data

"""The reference data's names in other languages (``names``), as a regency's file gives them:
categories and severities, and the words for the statuses and roles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from incidentledger_client import i18n
from incidentledger_client.i18n import labels
from services.common.reference import (
    ROLES,
    Category,
    ReferenceData,
    ReferenceDataError,
    Severity,
    Term,
)
from services.common.vocabulary import STATUSES

CONFIG = Path(__file__).resolve().parents[2] / "config" / "mukomuko-pilkada.yaml"


def _raw() -> Any:
    return yaml.safe_load(CONFIG.read_text(encoding="utf-8"))


def test_every_category_and_severity_of_mukomuko_has_an_indonesian_name() -> None:
    data = ReferenceData.load(CONFIG)
    entries: list[Category | Severity] = [*data.categories.values(), *data.severities.values()]
    for entry in entries:
        assert entry.names.get("id"), entry.code
        assert entry.names["id"] != entry.name, entry.code
    assert data.categories["money_politics"].names == {"id": "Politik uang"}


def test_names_are_optional_and_checked() -> None:
    raw = _raw()
    for category in raw["categories"]:
        category.pop("names", None)
    assert all(c.names == {} for c in ReferenceData.from_mapping(raw).categories.values())
    raw["categories"][0]["names"] = {"id": ""}
    with pytest.raises(ReferenceDataError, match="names of"):
        ReferenceData.from_mapping(raw)
    raw["categories"][0]["names"] = ["Politik uang"]
    with pytest.raises(ReferenceDataError, match="names of"):
        ReferenceData.from_mapping(raw)


def test_mukomuko_words_every_status_and_role_as_the_glossary_does() -> None:
    """The file's Indonesian words are the catalog's, which follow docs/glossary-id.md."""
    data = ReferenceData.load(CONFIG)
    assert tuple(data.statuses) == STATUSES and tuple(data.roles) == ROLES
    with i18n.using("id"):
        for status in data.statuses.values():
            assert status.names["id"] == labels.status(status.code), status.code
        for role in data.roles.values():
            assert role.names["id"] == labels.role(role.code), role.code
    assert data.statuses["RESPONDING"] == Term(
        "RESPONDING", "Responding", {"id": "Dalam penanganan"}
    )
    assert data.roles["coordinator"].names == {"id": "koordinator"}


def test_statuses_and_roles_are_optional_and_checked() -> None:
    raw = _raw()
    del raw["statuses"], raw["roles"]
    plain = ReferenceData.from_mapping(raw)
    # Every code is there, named by its code only: clients fall back to their catalogs.
    assert list(plain.statuses.values()) == [Term(code, code) for code in STATUSES]
    assert list(plain.roles.values()) == [Term(code, code) for code in ROLES]
    # A file may word only some of them.
    raw["statuses"] = [{"code": "ASSIGNED", "names": {"id": "Diserahkan ke instansi"}}]
    some = ReferenceData.from_mapping(raw)
    assert some.statuses["ASSIGNED"] == Term(
        "ASSIGNED", "ASSIGNED", {"id": "Diserahkan ke instansi"}
    )
    assert some.statuses["REPORTED"] == Term("REPORTED", "REPORTED")
    for section, entries, said in [
        ("statuses", [{"code": "ACKNOWLEDGED", "name": "Acknowledged"}], "unknown code"),
        ("statuses", [{"code": "reported"}], "unknown code"),
        ("statuses", [{"code": "CLOSED"}, {"code": "CLOSED"}], "listed twice"),
        ("statuses", {"CLOSED": "Ditutup"}, "a list of entries"),
        ("roles", [{"code": "observer"}], "unknown code"),
        ("roles", [{"code": "auditor", "names": {"id": ""}}], "names of"),
        ("roles", [{"name": "Auditor"}], "code"),
    ]:
        broken = _raw()
        broken[section] = entries
        with pytest.raises(ReferenceDataError, match=said):
            ReferenceData.from_mapping(broken)

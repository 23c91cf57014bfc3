"""The reference data's names in other languages (``names``), as a regency's file gives them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.reference import Category, ReferenceData, ReferenceDataError, Severity

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

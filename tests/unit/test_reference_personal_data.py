"""The reference file's personal-data section: an auditor listed among the agencies that
erase or place legal holds is refused when the file is loaded (the incident refuses every
command of an auditor, READ_ONLY_ROLE, so such a line would be a rule never applied); an
auditor may be among the readers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.reference import ReferenceData, ReferenceDataError

CONFIG = Path(__file__).resolve().parents[2] / "config" / "mukomuko-pilkada.yaml"


def _raw() -> Any:
    return yaml.safe_load(CONFIG.read_text(encoding="utf-8"))


@pytest.mark.parametrize("key", ["erasers", "legal_hold"])
def test_an_auditor_among_those_who_act_on_personal_data_is_refused_at_load(key: str) -> None:
    raw = _raw()
    raw["personal_data"][key].append("inspektorat")
    with pytest.raises(ReferenceDataError, match=rf"personal_data\.{key}: \['inspektorat'\]"):
        ReferenceData.from_mapping(raw)


def test_an_auditor_may_be_among_the_readers() -> None:
    raw = _raw()
    raw["personal_data"]["readers"].append("inspektorat")
    assert "inspektorat" in ReferenceData.from_mapping(raw).personal_data.readers

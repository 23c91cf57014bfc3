"""docs/configuration.md is generated from the settings' declarations and kept up to date."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common import config, configdoc
from services.common.config import PROJECT_ROOT


def test_the_committed_reference_is_what_the_declarations_generate() -> None:
    committed = configdoc.DOC_FILE.read_text(encoding="utf-8")
    assert committed == configdoc.render(), (
        "docs/configuration.md is stale: run python -m services.common.configdoc"
    )
    assert configdoc.main(["--check"]) == 0


def test_the_reference_lists_every_variable_in_its_group_s_table() -> None:
    text = configdoc.render()
    for variable in config.variables():
        (row,) = [line for line in text.splitlines() if line.startswith(f"| `{variable.name}`")]
        cells = row.split(" | ")
        assert len(cells) == 6, row
        assert variable.description in row
        assert (cells[0] == f"| `{variable.name}` or `{variable.name}_FILE`") == variable.secret
    assert "/work/" not in text and str(PROJECT_ROOT) not in text  # no machine's paths


def test_a_stale_reference_is_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text(configdoc.render().replace("`14222`", "`4222`"), encoding="utf-8")
    monkeypatch.setattr(configdoc, "DOC_FILE", stale)
    assert configdoc.main(["--check"]) == 1
    assert "is stale" in capsys.readouterr().err


def test_the_readme_points_to_the_reference() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/configuration.md" in readme

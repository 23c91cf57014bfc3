"""Every relative link of the documentation reaches its file, and its anchor a heading there.

The README, ARCHITECTURE.md and docs/*.md link to each other by path and by heading
anchor (``docs/fan-out.md#webhooks``); a page moved or a heading renamed must not leave a
link pointing at nothing. Anchors are computed as GitHub computes them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", ROOT / "ARCHITECTURE.md", *(ROOT / "docs").glob("*.md")])
# [text](target) outside inline code; an image's ![alt](target) too.
_LINK = re.compile(r"\[(?:[^\]`]|`[^`]*`)*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """The lines outside fenced code blocks, numbered from 1."""
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        opened = _FENCE.match(line)
        if opened:
            if fence is None:
                fence = opened[1]
            elif opened[1] == fence:
                fence = None
            continue
        if fence is None:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text without markup, lower case, punctuation
    removed (letters, digits, ``_``, ``-`` and spaces kept), spaces turned into ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").replace("*", "")
    text = text.strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in "_- ")
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a page, repeated headings numbered as GitHub does."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(page.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match[2])
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> Iterator[tuple[int, str]]:
    """Each link's line and target; a link's text may run over several lines."""
    text = page.read_text(encoding="utf-8")
    lines = [""] * len(text.splitlines())
    for number, line in prose_lines(text):
        lines[number - 1] = line
    prose = "\n".join(lines)
    # Inline code is no link (its line breaks are kept, for the line numbers).
    prose = re.sub(r"`[^`]*`", lambda code: "``" + "\n" * code[0].count("\n"), prose)
    for match in _LINK.finditer(prose):
        yield prose.count("\n", 0, match.start()) + 1, match[1]


def broken_links(page: Path) -> list[str]:
    problems = []
    for number, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        where = f"{page.relative_to(ROOT)}:{number}: {target}"
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            problems.append(f"{where}: no such file")
            continue
        if not resolved.is_relative_to(ROOT):
            problems.append(f"{where}: outside the repository")
            continue
        if anchor:
            if resolved.suffix != ".md":
                problems.append(f"{where}: an anchor into a file that is not Markdown")
            elif anchor not in anchors(resolved):
                problems.append(f"{where}: no heading with that anchor")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_the_pages_link_to_each_other() -> None:
    """The README reaches every page of docs/ and the architecture; the check sees links."""
    readme_targets = {target.partition("#")[0] for _, target in links(ROOT / "README.md")}
    for page in PAGES:
        if page.name != "README.md":
            assert str(page.relative_to(ROOT)) in readme_targets, f"README.md misses {page}"


def test_anchors_are_github_s() -> None:
    assert slug("TLS on the gRPC ports (both services)") == "tls-on-the-grpc-ports-both-services"
    assert slug("NATS: TLS and credentials") == "nats-tls-and-credentials"
    assert slug("Several replicas, and what happens when parts fail") == (
        "several-replicas-and-what-happens-when-parts-fail"
    )
    assert slug("`Reported`") == "reported"
    assert slug("1. Canonical JSON") == "1-canonical-json"


def test_a_broken_link_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("# B\n\n## Some part\n", encoding="utf-8")
    page = tmp_path / "a.md"
    page.write_text(
        "# A\n\n[ok](docs/b.md#some-part) [here](#a) [gone](docs/c.md) "
        "[bad](docs/b.md#other) `[code](x.md)`\n\n```\n[fenced](y.md)\n```\n"
        "[over two\nlines](#nowhere)\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "a.md:3: docs/c.md: no such file",
        "a.md:3: docs/b.md#other: no heading with that anchor",
        "a.md:8: #nowhere: no heading with that anchor",
    ]

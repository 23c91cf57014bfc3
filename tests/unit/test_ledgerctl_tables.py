"""Tables that fit the terminal (ledgerctl's FittedTable): rendered at several widths and
held to what an officer must be able to read: codes whole, words unbroken, no line wider
than the terminal, and the least needed columns left out first."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console, RenderableType

from incidentledger_client.cli.tables import Column, FittedTable

CODES = ("MKM-3V73-PV", "MKM-YJ2Z-XX")
TITLES = (
    "Massa berkumpul di alun-alun Kota Mukomuko menjelang kampanye",
    "Dugaan politik uang di TPS 03",
)
WORDS = {w for t in TITLES for w in t.split()} | {"kota_mukomuko", "penanganan", "Dilaporkan"}


def board() -> FittedTable:
    """The shape of the Indonesian board: what goes first is the highest ``drop``."""
    table = FittedTable(
        [
            Column("kejadian", wrap=False),
            Column("keparahan", drop=1, wrap=False),
            Column("tahap"),
            Column("dilaporkan"),
            Column("judul"),
            Column("lokasi", drop=3),
            Column("penanggung jawab", drop=2),
        ],
        title="Papan",
    )
    for code, title, status, place in zip(
        CODES, TITLES, ("Dalam penanganan", "Dilaporkan"), ("kota_mukomuko", "ipuh"), strict=True
    ):
        table.add_row(code, "tinggi", status, "5 Des 2026 23.17 WIB", title, place, "polres")
    return table


def render(table: RenderableType, width: int) -> list[str]:
    screen = io.StringIO()
    Console(file=screen, width=width, color_system=None).print(table)
    return screen.getvalue().splitlines()


def headers(lines: list[str]) -> set[str]:
    """The header words of a rendered table (the lines between its top and its rule)."""
    top = next(n for n, line in enumerate(lines) if line.startswith("┏"))
    rule = next(n for n, line in enumerate(lines) if line.startswith("┡"))
    return {w for line in lines[top + 1 : rule] for w in re.findall(r"[\w ]+", line) if w.strip()}


def cell_words(lines: list[str]) -> set[str]:
    return {w for line in lines for cell in line.split("│") for w in cell.split()}


# Worked out by hand: a column's least width is its longest word (a code, a no-wrap
# column's whole text) and 2 of padding; the borders take one more than the columns.
# kejadian 11+2, keparahan 9+2, tahap 10+2 (penanganan), dilaporkan 10+2, judul 9+2
# (berkumpul), lokasi 13+2 (kota_mukomuko), penanggung jawab 10+2: 86 + 8 = 94 in all;
# without lokasi 71 + 7 = 78; then without penanggung jawab 59 + 6 = 65; then without
# keparahan 48 + 5 = 53.
@pytest.mark.parametrize(
    ("width", "left_out"),
    [
        (200, set()),
        (94, set()),
        (93, {"lokasi"}),
        (78, {"lokasi"}),
        (77, {"lokasi", "penanggung jawab"}),
        (65, {"lokasi", "penanggung jawab"}),
        (64, {"lokasi", "penanggung jawab", "keparahan"}),
        (53, {"lokasi", "penanggung jawab", "keparahan"}),
    ],
)
def test_columns_are_left_out_least_needed_first_and_the_rest_are_read_whole(
    width: int, left_out: set[str]
) -> None:
    lines = render(board(), width)
    assert all(len(line) <= width for line in lines), "\n".join(lines)
    shown = " ".join(sorted(headers(lines)))
    for column in ("kejadian", "keparahan", "tahap", "dilaporkan", "judul", "lokasi"):
        assert (column in shown) == (column not in left_out), (width, shown)
    assert ("penanggung" in shown) == ("penanggung jawab" not in left_out), shown
    words = cell_words(lines)
    for code in CODES:
        assert code in words, "\n".join(lines)  # never cut nor folded
    kept = {w for w in WORDS if w != "kota_mukomuko" or "lokasi" not in left_out}
    assert kept <= words, sorted(kept - words)  # no word broken over two lines


@pytest.mark.parametrize("width", [52, 40, 30])
def test_a_table_that_cannot_fit_shows_each_row_as_a_record(width: int) -> None:
    """Where not even the columns always shown fit whole, rich squeezed them: headers, codes,
    times and words cut (MKM-3V|73-PV, 05.57.4|5 WIB, dilapo|rkan). Each row is a record
    then, a field a line, every column there and nothing cut."""
    lines = [line.rstrip() for line in render(board(), width)]
    text = "\n".join(lines)
    assert all(len(line) <= width for line in lines), text
    assert "┃" not in text and "│" not in text, text  # no table to squeeze
    words = {w for line in lines for w in line.split()}
    for code in CODES:
        assert f"kejadian: {code}" in lines, text
    assert words >= WORDS, sorted(WORDS - words)  # no word broken over two lines
    reported = "dilaporkan: 5 Des 2026 23.17 WIB"
    if width >= len(reported):
        assert reported in lines, text
    else:  # the time whole on the line under its heading
        at = lines.index("dilaporkan:")
        assert lines[at + 1] == "  5 Des 2026 23.17 WIB", text
    for header in ("keparahan:", "tahap:", "judul:", "lokasi:", "penanggung jawab:"):
        assert sum(line.startswith(header) for line in lines) == 2, (header, text)
    # A field too long for its line: its heading, then its value under it, between words.
    if width < len("judul: " + TITLES[0]):
        title = lines.index("judul:")
        assert lines[title + 1].startswith("  Massa"), text


def test_a_record_breaks_a_place_only_between_its_parts() -> None:
    from incidentledger_client.cli.tables import Parts

    table = FittedTable([Column("kode referensi", wrap=False), Column("lokasi")])
    table.add_row(CODES[0], Parts(("Teras Terunjam", "Mandi Angin", "TPS 03")))
    lines = [line.rstrip() for line in render(table, 24)]
    assert lines[1:6] == [
        "kode referensi:",
        "  MKM-3V73-PV",
        "lokasi:",
        "  Teras Terunjam /",
        "  Mandi Angin / TPS 03",
    ], lines


def test_a_row_must_have_a_cell_per_column() -> None:
    table = FittedTable([Column("a"), Column("b", drop=1)])
    with pytest.raises(ValueError, match="1 cells for 2 columns"):
        table.add_row("only one")


def test_a_wide_table_gives_way_to_its_long_form_where_it_does_not_fit() -> None:
    from rich.table import Table

    from incidentledger_client.cli.tables import WideOrLong

    wide, long = Table(title="wide"), Table(title="long")
    for n in range(10):
        wide.add_column(f"column{n}")
    wide.add_row(*(f"figure{n}" for n in range(10)))
    long.add_column("column")
    long.add_column("figure")
    for n in range(10):
        long.add_row(f"column{n}", f"figure{n}")
    # Ten columns of 7 letters, 2 of padding each, and 11 borders: 101 at the least.
    assert "wide" in "\n".join(render(WideOrLong(wide, long), 101))
    narrow = render(WideOrLong(wide, long), 100)
    assert "long" in "\n".join(narrow) and all(len(line) <= 100 for line in narrow)


def places(width: int) -> list[str]:
    """A list's shape with its places by name: the title wraps, a place breaks only between
    its parts (the kecamatan, the desa, the TPS)."""
    from incidentledger_client.cli.tables import Parts

    table = FittedTable(
        [
            Column("kode referensi", wrap=False),
            Column("judul"),
            Column("kategori", drop=2),
            Column("lokasi", drop=1),
        ],
        title="Kejadian",
    )
    table.add_row(CODES[0], TITLES[0], "crowd_gathering", Parts(("Malin Deman", "", "TPS 05")))
    table.add_row(
        CODES[1], TITLES[1], "money_politics", Parts(("Teras Terunjam", "Mandi Angin", "TPS 03"))
    )
    return render(table, width)


# kode referensi 11+2, judul 9+2 (berkumpul), kategori 15+2 (crowd_gathering), lokasi
# 16+2 ("Teras Terunjam /", a part and its separator, never broken): 59 + 5 = 64.
@pytest.mark.parametrize(("width", "category"), [(200, True), (64, True), (63, False)])
def test_a_place_breaks_only_between_its_parts(width: int, category: bool) -> None:
    lines = places(width)
    text = "\n".join(lines)
    assert all(len(line) <= width for line in lines), text
    assert ("kategori" in text) == category, text
    assert "lokasi" in text, text  # left out after the category, not squeezed to a word
    cells = [cell.strip() for line in lines for cell in line.split("│")]
    for part in ("Malin Deman /", "TPS 05", "Teras Terunjam /", "Mandi Angin /", "TPS 03"):
        assert any(part in cell for cell in cells), (part, text)  # whole on one line
    if width == 200:
        assert "Teras Terunjam / Mandi Angin / TPS 03" in text, text


def test_parts_show_their_control_characters_and_leave_out_empty_parts() -> None:
    from incidentledger_client.cli.tables import Parts

    assert Parts(("Ipuh", "", "TPS\x1b[2J 01")).plain == "Ipuh / TPS␛[2J 01"
    assert Parts(("Ipuh", "Pasar Ipuh")).lines(11) == ["Ipuh /", "Pasar Ipuh"]
    assert Parts(()).plain == ""

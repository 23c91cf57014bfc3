"""Tables that fit the terminal they are printed on.

A rich table wider than the terminal is squeezed: every column gives up width, codes are cut
short (``MKM-3V73-…``) and a column can shrink to nothing. At 80 columns the board in
Indonesian lost its title and place columns and cut every reference code, the one thing an
officer reads out over the phone; the incident list folded every word letter by letter. Here
a table is made when the terminal's width is known: columns that cannot fit are left out,
least needed first, so that those shown keep their codes and times whole and their words
unbroken. A table that fits keeps every column; piped output is wide (200 columns) and so
keeps every column too. Where not even the columns always shown fit (a 40-column terminal),
the rows are shown as records, a field a line (:class:`Records`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderableType
from rich.measure import Measurement
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

UNBOUNDED = 1_000_000  # a width no table reaches

#: The control characters a terminal acts on (C0 but line breaks and tabs, DEL, C1), each
#: shown as a visible character instead: its Unicode control picture (ESC as ␛), else �.
#: And the bidirectional embeddings, overrides and isolates (U+202A-U+202E,
#: U+2066-U+2069): in a terminal or a pasted report that lays text out by direction, one in
#: a title reverses what follows it (``TPS 12`` read as ``21 SPT``, a kecamatan's name
#: backwards); the marks (U+200E, U+200F), which only order neutral characters, stay.
CONTROLS = {
    **{c: 0x2400 + c for c in range(0x20) if chr(c) not in "\n\t"},
    0x7F: 0x2421,
    **{c: 0xFFFD for c in range(0x80, 0xA0)},
    **{c: 0xFFFD for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))},
}


def shown(cell: RenderableType) -> RenderableType:
    """A cell with its control characters as visible ones, before the table is laid out:
    rich counts a control character as no width, and the console that shows it (one
    column wide) afterwards pushed its line's borders out of line."""
    if isinstance(cell, str):
        return cell.translate(CONTROLS)
    if isinstance(cell, Text):
        plain = cell.plain.translate(CONTROLS)
        if plain != cell.plain:
            cell = cell.copy()
            cell.plain = plain  # one character for one: the styles' spans stay where they were
    return cell


class Parts:
    """Text made of parts, ``Malin Deman / Lubuk Bento / TPS 05``, that breaks over lines
    only between its parts, each part kept whole on a line (a name such as *Malin Deman*
    is one thing to read, not two words): in a table, its column is as narrow as its
    longest part and no narrower, as a code's is as narrow as the code."""

    SEPARATOR = "/"

    def __init__(self, parts: Iterable[str]) -> None:
        self.parts = [p.translate(CONTROLS) for p in parts if p]
        # Each part but the last ends with the separator, so that a line breaks after it.
        self._pieces = [f"{p} {self.SEPARATOR}" for p in self.parts[:-1]] + self.parts[-1:]

    @property
    def plain(self) -> str:
        return " ".join(self._pieces)

    def __str__(self) -> str:
        return self.plain

    def lines(self, width: int) -> list[str]:
        """The parts on lines of at most ``width`` cells (a part wider on a line of its own)."""
        lines: list[str] = []
        for piece in self._pieces:
            if lines and cell_len(lines[-1]) + 1 + cell_len(piece) <= width:
                lines[-1] += " " + piece
            else:
                lines.append(piece)
        return lines

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        least = max((cell_len(p) for p in self._pieces), default=0)
        return Measurement(least, cell_len(self.plain)).clamp(max_width=options.max_width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Text]:
        # A part wider than the column (only when nothing else fits) is folded by rich.
        yield Text("\n".join(self.lines(options.max_width)), overflow="fold")


@dataclass(frozen=True)
class Column:
    """One column of a :class:`FittedTable`."""

    header: str  # as shown (translated by the caller)
    #: 0: always shown. Otherwise, when the terminal is too narrow, the column with the
    #: highest ``drop`` is left out first (and of equals, the rightmost).
    drop: int = 0
    #: False: never wrapped (codes, times, numbers): shown whole or left out.
    wrap: bool = True
    justify: Any = "left"
    style: str = ""
    options: dict[str, Any] = field(default_factory=dict)  # more of rich's add_column


class FittedTable:
    """A table with its columns chosen for the width it is printed at (see the module)."""

    def __init__(self, columns: Sequence[Column], **table: Any) -> None:
        self.columns = list(columns)
        self.rows: list[tuple[RenderableType, ...]] = []
        self._table = table  # rich Table's options: title, box, ...

    def add_row(self, *cells: RenderableType) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(tuple(shown(cell) for cell in cells))

    @property
    def row_count(self) -> int:
        return len(self.rows)

    def fitted(self, console: Console, options: ConsoleOptions) -> Table | Records:
        """The table with the columns that fit ``options.max_width``; its rows as records
        (:class:`Records`) where not even the columns always shown fit whole."""
        # Each column's least and widest text, measured once (a cell at a time, without a
        # limit: within one, rich clamps the measures to it).
        unbounded = options.update_width(UNBOUNDED)
        least, most = [], []
        for column in range(len(self.columns)):
            header, *cells = (Measurement.get(console, unbounded, c) for c in self._cells(column))
            # A column that never wraps needs its longest text; its header wraps all the same.
            widest = max((m.maximum for m in cells), default=0)
            words = max((m.minimum for m in cells), default=0)
            wraps = self.columns[column].wrap
            least.append(max(header.minimum, words if wraps else widest))
            most.append(max(header.maximum, widest))
        kept = list(range(len(self.columns)))
        while True:
            room = options.max_width - self._overhead(console, unbounded, kept)
            fits = sum(least[i] for i in kept) <= room
            droppable = [i for i in kept if self.columns[i].drop > 0]
            if fits or not droppable:
                break
            kept.remove(max(droppable, key=lambda i: (self.columns[i].drop, i)))
        if not fits:
            # Nothing left to leave out, and still too wide: squeezed, rich would cut codes,
            # times and words (MKM-3V|73-PV, 05.57.4|5 WIB). One record per row instead.
            return Records(self.columns, self.rows, self._table.get("title"))
        if sum(most[i] for i in kept) <= room:
            return self._made(kept)  # all whole
        return self._made(kept, shared([least[i] for i in kept], [most[i] for i in kept], room))

    def _overhead(self, console: Console, unbounded: ConsoleOptions, kept: Sequence[int]) -> int:
        """What the kept columns' padding and the borders take: a table of the headers
        alone, measured, less its headers."""
        headers = Table(**self._table)
        for i in kept:
            headers.add_column(self._header(self.columns[i]))
        words = sum(
            Measurement.get(console, unbounded, self._header(self.columns[i])).minimum for i in kept
        )
        return Measurement.get(console, unbounded, headers).minimum - words

    def _cells(self, index: int) -> Iterator[RenderableType]:
        yield self._header(self.columns[index])
        for row in self.rows:
            yield row[index]

    @staticmethod
    def _header(column: Column) -> Text:
        # A header may wrap in a column that does not: "kode referensi" over a code.
        return Text(column.header, no_wrap=False)

    def _made(self, kept: Sequence[int], widths: Sequence[int] | None = None) -> Table:
        table = Table(**self._table)
        for n, i in enumerate(kept):
            column = self.columns[i]
            table.add_column(
                self._header(column),
                justify=column.justify,
                style=column.style,
                no_wrap=not column.wrap,
                width=None if widths is None else widths[n],
                # A word longer than its column (only when nothing fits) is folded, not cut.
                overflow="fold",
                **column.options,
            )
        for row in self.rows:
            table.add_row(*(row[i] for i in kept))
        return table

    def __rich_console__(
        self, console: Console, options: ConsoleOptions
    ) -> Iterator[Table | Records]:
        yield self.fitted(console, options)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.fitted(console, options))


class Records:
    """A table's rows for a terminal too narrow for its columns: each row a record, a field a
    line (``tahap: Dalam penanganan``), the records apart by a blank line. A field too long
    for its line has its heading on a line and its value under it, wrapped between words
    (a place between its parts); no column is left out, and a code, a time or a word is cut
    only where it is wider than the terminal itself."""

    INDENT = 2

    def __init__(
        self,
        columns: Sequence[Column],
        rows: Sequence[tuple[RenderableType, ...]],
        title: RenderableType | None = None,
    ) -> None:
        self.columns, self.rows, self.title = list(columns), list(rows), title

    def __rich_console__(
        self, console: Console, options: ConsoleOptions
    ) -> Iterator[RenderableType]:
        width = options.max_width
        if self.title:
            title = self.title if isinstance(self.title, Text) else Text(str(self.title))
            yield Text(title.plain, style="table.title", justify="left", overflow="fold")
        for row in self.rows:
            yield Text("")
            for column, cell in zip(self.columns, row, strict=True):
                yield from self._field(console, options, column.header, cell, width)
        yield Text("")  # apart from what follows, as a table's bottom border sets it apart

    def _field(
        self,
        console: Console,
        options: ConsoleOptions,
        header: str,
        cell: RenderableType,
        width: int,
    ) -> Iterator[RenderableType]:
        value = cell if isinstance(cell, Text | Parts) else Text(str(cell))
        if not value.plain.strip():
            return
        label = f"{header}: " if header else ""
        if "\n" not in value.plain and cell_len(label + value.plain) <= width:
            line = Text(label, style="bold")
            line.append_text(value if isinstance(value, Text) else Text(value.plain))
            yield line
            return
        if label:
            yield Text(label.rstrip(), style="bold", overflow="fold")
        indented = options.update_width(max(width - self.INDENT, 1))
        body = value if isinstance(value, Parts) else value.copy()
        if isinstance(body, Text):
            body.overflow = "fold"  # only a word wider than the terminal
        for rendered in console.render_lines(body, indented, pad=False):
            yield _Indented(rendered, self.INDENT)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(1, options.max_width)


class _Indented:
    """A rendered line of segments, after ``indent`` spaces."""

    def __init__(self, line: list[Segment], indent: int) -> None:
        self.line, self.indent = line, indent

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Segment]:
        yield Segment(" " * self.indent)
        yield from self.line
        yield Segment.line()


class WideOrLong:
    """A table's wide form where it fits, else its long form (the same figures in more rows
    and fewer columns): a wide table squeezed into a narrow terminal cuts every figure."""

    def __init__(self, wide: Table, long: Table) -> None:
        self.wide, self.long = wide, long

    def chosen(self, console: Console, options: ConsoleOptions) -> Table:
        unbounded = options.update_width(UNBOUNDED)
        fits = Measurement.get(console, unbounded, self.wide).minimum <= options.max_width
        return self.wide if fits else self.long

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Table]:
        yield self.chosen(console, options)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.chosen(console, options))


def shared(least: Sequence[int], most: Sequence[int], room: int) -> list[int]:
    """Widths within ``room`` (at least ``sum(least)``): each column its longest word; then
    whole, the columns that need least more to show their widest text on one line (a time,
    an author), as long as the room lasts; then the rest in proportion to what each still
    needs. Rich shares a short width out from the widest columns down and can leave one
    narrower than its longest word (kota_mukomu|ko)."""
    widths = list(least)
    spare = room - sum(least)
    for n in sorted(range(len(least)), key=lambda n: most[n] - least[n]):
        want = most[n] - widths[n]
        if want > spare:
            break
        widths[n], spare = most[n], spare - want
    wants = [m - w for m, w in zip(most, widths, strict=True)]
    wanted = sum(wants)
    given = [spare * want // wanted if wanted else 0 for want in wants]
    widths = [w + g for w, g in zip(widths, given, strict=True)]
    for n in sorted(range(len(wants)), key=lambda n: -wants[n]):  # what rounding left
        if sum(widths) >= room:
            break
        if widths[n] < most[n]:
            widths[n] += 1
    return widths

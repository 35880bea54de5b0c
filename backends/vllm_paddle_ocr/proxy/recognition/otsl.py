"""OTSL table markup (what PaddleOCR-VL answers for tables) converted to HTML.

OTSL cells: ``<fcel>`` a cell with text, ``<ecel>`` an empty cell, ``<lcel>`` merged with the cell
to its left, ``<ucel>`` merged with the cell above, ``<xcel>`` merged both ways; ``<nl>`` ends a row.

Repairs applied (the model's output is often slightly off):

- text before the first tag of a row is dropped; rows without any tag are skipped;
- rows are brought to one width: the width minimising the total padding/truncation over all
  rows, never cutting off a ``<fcel>``; short rows are padded with ``<ecel>``;
- a merge tag with no anchor cell to extend becomes an empty cell;
- spans never overlap: a cell claims positions in row-major order, and stops where another
  cell already claimed one.

Malformed (``otsl_to_html`` returns ``None``, the caller keeps the raw text): no ``<fcel>`` or
``<ecel>`` anywhere, so there is no cell to show; or rows so uneven that the padded grid would
exceed ``MAX_GRID_CELLS`` (a runaway first row over a runaway column would otherwise make a grid
quadratic in the answer's length).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

FCEL, ECEL, LCEL, UCEL, XCEL, NL = "<fcel>", "<ecel>", "<lcel>", "<ucel>", "<xcel>", "<nl>"
CELL_TAGS: tuple[str, ...] = (FCEL, ECEL, LCEL, UCEL, XCEL)
_ANCHORS = (FCEL, ECEL)
_EXTENDS_RIGHT = (LCEL, XCEL)
_EXTENDS_DOWN = (UCEL, XCEL)
_CELL_RE = re.compile(r"(<fcel>|<ecel>|<lcel>|<ucel>|<xcel>)")
# More cells than the model can write within its context: only padding can make a grid this big.
MAX_GRID_CELLS = 100_000


@dataclass(frozen=True)
class Cell:
    """One table cell placed on the grid."""

    row: int
    col: int
    rowspan: int
    colspan: int
    text: str


@dataclass(frozen=True)
class Table:
    """A rectangular grid of cells; every position is covered by exactly one cell."""

    num_rows: int
    num_cols: int
    cells: tuple[Cell, ...]


def parse_rows(otsl: str) -> list[list[tuple[str, str]]]:
    """Split OTSL into rows of (tag, text) pairs, before any width repair."""
    rows: list[list[tuple[str, str]]] = []
    for line in otsl.strip().split(NL):
        parts = _CELL_RE.split(line)
        # parts = [leading text, tag, text, tag, text, ...]; leading text is dropped
        row = [(parts[i], parts[i + 1]) for i in range(1, len(parts) - 1, 2)]
        if row:
            rows.append(row)
    return rows


def choose_width(rows: list[list[tuple[str, str]]]) -> int:
    """Pick the row width needing the least padding and cutting, keeping every <fcel>."""
    lengths = [len(r) for r in rows]
    keep = max((i + 1 for r in rows for i, (tag, _) in enumerate(r) if tag == FCEL), default=0)
    best_width, best_cost = keep, None
    for width in range(keep, max(keep, max(lengths)) + 1):
        cost = sum(abs(n - width) for n in lengths)
        if best_cost is None or cost < best_cost:
            best_width, best_cost = width, cost
    return best_width


def parse_table(otsl: str) -> Table | None:
    """Parse OTSL into a repaired grid of cells; None when there is no cell or the grid would be absurd."""
    rows = parse_rows(otsl)
    if not rows or not any(tag in _ANCHORS for r in rows for tag, _ in r):
        return None
    width = choose_width(rows)
    if len(rows) * width > MAX_GRID_CELLS:
        return None
    grid = [(r + [(ECEL, "")] * width)[:width] for r in rows]
    n_rows = len(grid)
    claimed = [[False] * width for _ in range(n_rows)]
    cells: list[Cell] = []
    for r in range(n_rows):
        for c in range(width):
            if claimed[r][c]:
                continue
            tag, text = grid[r][c]
            if tag not in _ANCHORS:
                cells.append(Cell(r, c, 1, 1, ""))
                claimed[r][c] = True
                continue
            colspan = 1
            while c + colspan < width and grid[r][c + colspan][0] in _EXTENDS_RIGHT and not claimed[r][c + colspan]:
                colspan += 1
            rowspan = 1
            while (
                r + rowspan < n_rows
                and grid[r + rowspan][c][0] in _EXTENDS_DOWN
                and not any(grid[r + rowspan][k][0] in _ANCHORS for k in range(c, c + colspan))
                and not any(claimed[r + rowspan][k] for k in range(c, c + colspan))
            ):
                rowspan += 1
            for rr in range(r, r + rowspan):
                for cc in range(c, c + colspan):
                    claimed[rr][cc] = True
            cells.append(Cell(r, c, rowspan, colspan, text.strip() if tag == FCEL else ""))
    return Table(n_rows, width, tuple(cells))


def table_to_html(table: Table) -> str:
    """Render a grid as a plain <table> (no thead, escaped text, spans only when > 1)."""
    by_row: dict[int, list[Cell]] = {}
    for cell in table.cells:
        by_row.setdefault(cell.row, []).append(cell)
    out = ["<table>"]
    for r in range(table.num_rows):
        out.append("<tr>")
        for cell in sorted(by_row.get(r, []), key=lambda x: x.col):
            attrs = ""
            if cell.rowspan > 1:
                attrs += f' rowspan="{cell.rowspan}"'
            if cell.colspan > 1:
                attrs += f' colspan="{cell.colspan}"'
            out.append(f"<td{attrs}>{html.escape(cell.text)}</td>")
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def otsl_to_html(otsl: str) -> str | None:
    """Convert OTSL to an HTML table, or None when the text holds no table cell."""
    table = parse_table(otsl)
    return None if table is None else table_to_html(table)

"""OTSL -> HTML: structure, repairs, malformed input, and parity with paddlex on well-formed tables."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.recognition.otsl import Cell, otsl_to_html, parse_table

# ---------------------------------------------------------------- generators


@st.composite
def grids(draw: st.DrawFn) -> tuple[int, int, list[Cell]]:
    """A random partition of a rows x cols grid into rectangular cells with texts."""
    rows, cols = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    claimed = [[False] * cols for _ in range(rows)]
    cells = []
    for r in range(rows):
        for c in range(cols):
            if claimed[r][c]:
                continue
            max_cs = 1
            while c + max_cs < cols and not claimed[r][c + max_cs]:
                max_cs += 1
            cs = draw(st.integers(1, max_cs))
            rs = draw(st.integers(1, rows - r))
            for rr in range(r, r + rs):
                for cc in range(c, c + cs):
                    claimed[rr][cc] = True
            text = draw(st.one_of(st.just(""), st.text(alphabet="ab c&<>\"'1.", min_size=1, max_size=6)))
            cells.append(Cell(r, c, rs, cs, text.strip()))
    return rows, cols, cells


def encode(rows: int, cols: int, cells: list[Cell]) -> str:
    """OTSL for a grid partition: anchor top-left, lcel/ucel/xcel elsewhere."""
    tags = [[""] * cols for _ in range(rows)]
    for cell in cells:
        for r in range(cell.row, cell.row + cell.rowspan):
            for c in range(cell.col, cell.col + cell.colspan):
                if (r, c) == (cell.row, cell.col):
                    tags[r][c] = f"<fcel>{cell.text}" if cell.text else "<ecel>"
                elif r == cell.row:
                    tags[r][c] = "<lcel>"
                elif c == cell.col:
                    tags[r][c] = "<ucel>"
                else:
                    tags[r][c] = "<xcel>"
    return "".join("".join(row) + "<nl>" for row in tags)


def covered_widths(table) -> list[int]:
    widths = [0] * table.num_rows
    for cell in table.cells:
        for r in range(cell.row, cell.row + cell.rowspan):
            widths[r] += cell.colspan
    return widths


# ---------------------------------------------------------------- examples


def test_spans_and_escaping() -> None:
    html = otsl_to_html("<fcel>Name<lcel><fcel>x<nl><fcel>a & b<fcel><i><ucel><nl>")
    assert html == (
        '<table><tr><td colspan="2">Name</td><td rowspan="2">x</td></tr>'
        "<tr><td>a &amp; b</td><td>&lt;i&gt;</td></tr></table>"
    )


def test_no_thead_and_plain_td() -> None:
    html = otsl_to_html("<fcel>h1<fcel>h2<nl><fcel>1<fcel>2<nl>")
    assert html is not None
    assert "<th" not in html and "thead" not in html
    assert html.count("<tr>") == 2 and html.count("<td>") == 4


def test_short_rows_padded_with_empty_cells() -> None:
    assert otsl_to_html("<fcel>a<fcel>b<fcel>c<nl><fcel>d<nl><fcel>e<fcel>f<fcel>g<nl>") == (
        "<table><tr><td>a</td><td>b</td><td>c</td></tr>"
        "<tr><td>d</td><td></td><td></td></tr>"
        "<tr><td>e</td><td>f</td><td>g</td></tr></table>"
    )


def test_stray_trailing_empty_cell_is_cut_to_the_common_width() -> None:
    html = otsl_to_html("<fcel>a<fcel>b<nl><fcel>c<fcel>d<ecel><nl><fcel>e<fcel>f<nl>")
    assert html is not None and html.count("<td>") == 6


def test_a_text_cell_beyond_the_common_width_is_kept() -> None:
    table = parse_table("<fcel>a<nl><fcel>b<nl><fcel>c<fcel>d<fcel>e<nl>")
    assert table is not None and table.num_cols == 3


def test_missing_final_newline_and_text_before_first_tag() -> None:
    assert otsl_to_html("Table: <fcel>a<fcel>b") == "<table><tr><td>a</td><td>b</td></tr></table>"


def test_orphan_merge_tags_become_empty_cells() -> None:
    # nothing left of the first <lcel> nor above the first-row <ucel>
    assert otsl_to_html("<lcel><fcel>a<ucel><nl><fcel>b<ecel><fcel>c<nl>") == (
        "<table><tr><td></td><td>a</td><td></td></tr><tr><td>b</td><td></td><td>c</td></tr></table>"
    )


def test_conflicting_spans_do_not_overlap() -> None:
    # a spans right and (by its first column) down, but the cell below its second column is a text cell
    table = parse_table("<fcel>a<lcel><nl><ucel><fcel>b<nl>")
    assert table is not None
    assert covered_widths(table) == [2, 2]
    assert Cell(1, 1, 1, 1, "b") in table.cells


@pytest.mark.parametrize("text", ["", "plain words", "<nl><nl>", "<lcel><ucel><nl>", "<b>bold</b>"])
def test_malformed_gives_none(text: str) -> None:
    assert otsl_to_html(text) is None


def test_a_runaway_row_over_a_runaway_column_is_kept_as_text() -> None:
    otsl = "".join(f"<fcel>{k}" for k in range(1000)) + "<nl>" + "".join(f"<fcel>{k}<nl>" for k in range(1000))
    assert otsl_to_html(otsl) is None  # padded, it would be a million cells
    padded = "<table><tr><td>a</td><td>b</td></tr><tr><td>c</td><td></td></tr></table>"
    assert otsl_to_html("<fcel>a<fcel>b<nl><fcel>c<nl>") == padded


def test_blank_rows_are_skipped() -> None:
    assert otsl_to_html("<fcel>a<nl><nl>\n<nl><fcel>b<nl>") == "<table><tr><td>a</td></tr><tr><td>b</td></tr></table>"


# ---------------------------------------------------------------- properties


@given(grids())
def test_well_formed_tables_round_trip(grid: tuple[int, int, list[Cell]]) -> None:
    rows, cols, cells = grid
    table = parse_table(encode(rows, cols, cells))
    assert table is not None
    assert (table.num_rows, table.num_cols) == (rows, cols)
    assert sorted(table.cells, key=lambda c: (c.row, c.col)) == sorted(cells, key=lambda c: (c.row, c.col))


TOKENS = st.sampled_from(["<fcel>", "<ecel>", "<lcel>", "<ucel>", "<xcel>", "<nl>", "x", " ", "<", "&", "\n", "<fcel"])


@settings(max_examples=300)
@given(st.lists(TOKENS, max_size=40).map("".join))
def test_never_raises_and_rows_cover_full_width(text: str) -> None:
    table = parse_table(text)
    html = otsl_to_html(text)
    if table is None:
        assert html is None
        return
    assert covered_widths(table) == [table.num_cols] * table.num_rows
    assert html is not None and html.startswith("<table>") and html.endswith("</table>")
    assert html.count("<tr>") == table.num_rows
    spans = [int(n) for n in re.findall(r'colspan="(\d+)"', html)]
    assert sum(spans) + html.count("<td") - len(spans) == sum(c.colspan for c in table.cells)


# ---------------------------------------------------------------- parity with paddlex


@pytest.fixture(scope="module")
def paddlex_otsl():
    uilts = pytest.importorskip("paddlex.inference.pipelines.paddleocr_vl.uilts")
    return uilts.convert_otsl_to_html


@settings(max_examples=200, deadline=None)
@given(grids())
def test_same_html_as_paddlex_on_well_formed_tables(paddlex_otsl, grid: tuple[int, int, list[Cell]]) -> None:
    rows, cols, cells = grid
    # paddlex misreads a <fcel> without text, so compare on tables whose text cells have text
    otsl = encode(rows, cols, cells)
    assert otsl_to_html(otsl) == paddlex_otsl(otsl)


@pytest.mark.parametrize(
    "otsl",
    [
        "<fcel>a<fcel>b<fcel>c<nl><fcel>d<nl><fcel>e<fcel>f<fcel>g<nl>",
        "<fcel>a<fcel>b<nl><fcel>c<fcel>d<ecel><nl><fcel>e<fcel>f<nl>",
        "<fcel>a<nl><fcel>b<nl><fcel>c<fcel>d<fcel>e<nl>",
        "<fcel>a<lcel><lcel><nl><ucel><xcel><xcel><nl><fcel>1<fcel>2<fcel>3",
        "<fcel>x < y & z<fcel>'q'<nl>",
        "no table here",
    ],
)
def test_same_html_as_paddlex_on_repaired_tables(paddlex_otsl, otsl: str) -> None:
    assert (otsl_to_html(otsl) or "") == paddlex_otsl(otsl)

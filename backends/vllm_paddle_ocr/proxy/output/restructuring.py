"""A document's pages restructured as PaddleX does: tables continued across pages merged, titles re-levelled.

Used by /restructure-pages and by restructurePages on /layout-parsing.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..blocks import ParsedBlock

# Grid positions (cells times their spans) a table may cover for its width to be worked out: far
# beyond any real table, small enough that laying one out stays quick.
MAX_TABLE_GRID_SLOTS = 1_000_000


class _TableRows:
    """Rows of an HTML table: where each ``<tr>`` sits in the text and what its cells hold."""

    def __init__(self, html: str) -> None:
        from html.parser import HTMLParser

        self.html = html
        self.rows: list[tuple[int, int]] = []  # (start, end) offsets of each <tr>...</tr>
        self.cells: list[list[tuple[str, int, int]]] = []  # (text, colspan, rowspan) per row
        line_starts = [0] + [k + 1 for k, ch in enumerate(html) if ch == "\n"]
        rows, cells = self.rows, self.cells
        state: dict[str, Any] = {"row": None, "cell": None}

        def offset(parser: HTMLParser) -> int:
            line, col = parser.getpos()
            return line_starts[line - 1] + col

        def span(attrs: list[tuple[str, str | None]], name: str) -> int:
            value = dict(attrs).get(name)
            try:
                return max(1, int(value or 1))
            except ValueError:
                return 1

        class Parser(HTMLParser):
            def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
                if tag == "tr":
                    if state["row"] is not None:  # an unclosed row ends where the next begins
                        rows.append((state["row"], offset(self)))
                    state["row"] = offset(self)
                    cells.append([])
                elif tag in ("td", "th") and cells:
                    state["cell"] = [[], span(attrs, "colspan"), span(attrs, "rowspan")]

            def handle_data(self, data: str) -> None:
                if state["cell"] is not None:
                    state["cell"][0].append(data)

            def handle_endtag(self, tag: str) -> None:
                if tag in ("td", "th") and state["cell"] is not None:
                    text, colspan, rowspan = state["cell"]
                    cells[-1].append(("".join(text), colspan, rowspan))
                    state["cell"] = None
                elif tag == "tr" and state["row"] is not None:
                    start = offset(self)
                    rows.append((state["row"], html.index(">", start) + 1))
                    state["row"] = None

        parser = Parser(convert_charrefs=True)
        parser.feed(html)
        parser.close()
        self.cells = cells[: len(rows)]

    def total_columns(self) -> int | None:
        """Widest row, counting cells that reach down from rows above; None for a grid too big to lay out.

        The spans come from the client on /restructure-pages: ``colspan="1000000000"`` must not
        lay out a billion columns, so past ``MAX_TABLE_GRID_SLOTS`` the width is left unknown.
        """
        rows = len(self.cells)
        slots = sum(colspan * min(rowspan, rows - r) for r, row in enumerate(self.cells) for _, colspan, rowspan in row)
        if slots > MAX_TABLE_GRID_SLOTS:
            return None
        taken: dict[int, set[int]] = {}
        widest = 0
        for r, row in enumerate(self.cells):
            col = 0
            for _, colspan, rowspan in row:
                while col in taken.get(r, set()):
                    col += 1
                for rr in range(r, min(r + rowspan, rows)):
                    taken.setdefault(rr, set()).update(range(col, col + colspan))
                col += colspan
                widest = max(widest, col)
        return widest


def _half_width(text: str) -> str:
    return "".join(chr(ord(ch) - 0xFEE0) if 0xFF01 <= ord(ch) <= 0xFF5E else ch for ch in text)


def _same_cells(a: list[tuple[str, int, int]], b: list[tuple[str, int, int]]) -> bool:
    def key(cell: tuple[str, int, int]) -> tuple[str, int]:
        return "".join(_half_width(cell[0]).split()), cell[1]

    return len(a) == len(b) and all(key(x) == key(y) for x, y in zip(a, b))


def _repeated_header_rows(first: _TableRows, second: _TableRows, limit: int = 5) -> int:
    """How many leading rows the continuation repeats (same texts and colspans), up to ``limit``."""
    count = 0
    for a, b in zip(first.cells[:limit], second.cells[:limit]):
        if not _same_cells(a, b):
            break
        count += 1
    return count


_AFTER_TABLE = frozenset({"footer", "vision_footnote", "number", "footnote", "footer_image", "seal"})
_BEFORE_CONTINUATION = frozenset({"header", "header_image", "number", "seal"})


def can_merge_tables(prev_page: Sequence[ParsedBlock], prev: int, page: Sequence[ParsedBlock], cur: int) -> bool:
    """Whether table ``page[cur]`` continues table ``prev_page[prev]``.

    Same width within 10%, nothing but page furniture after the first part and before the second,
    and the same column count (or a matching last row / first data row).
    """
    a, b = prev_page[prev], page[cur]
    wa, wb = a.bbox[2] - a.bbox[0], b.bbox[2] - b.bbox[0]
    if wa == 0 or wb == 0 or abs(wb - wa) / min(wa, wb) >= 0.1:
        return False
    if any(x.label not in _AFTER_TABLE for x in prev_page[prev + 1 :]):
        return False
    if any(x.label not in _BEFORE_CONTINUATION for x in page[:cur]):
        return False
    if not a.content or not b.content:
        return False
    first, second = _TableRows(a.content), _TableRows(b.content)
    columns = first.total_columns()
    if columns is not None and columns == second.total_columns():
        return True
    if not first.cells or not second.cells:
        return False
    skip = _repeated_header_rows(first, second)
    if len(second.cells) <= skip:
        return False
    last, data = first.cells[-1], second.cells[skip]
    return sum(c[1] for c in last) == sum(c[1] for c in data) or len(last) == len(data)


def merge_table_html(first: str, second: str) -> str:
    """The first table with the second's rows appended, its repeated header rows left out."""
    a, b = _TableRows(first), _TableRows(second)
    if not a.rows:
        return first
    skip = _repeated_header_rows(a, b)
    extra = "".join(second[s:e] for s, e in b.rows[skip:])
    end = a.rows[-1][1]
    return first[:end] + extra + first[end:]


GlobalIds = list[list[tuple[int, int]]]


def _numbered(pages: Sequence[Sequence[ParsedBlock]]) -> list[list[int]]:
    """Document-wide block numbers, page after page."""
    out, n = [], 0
    for page in pages:
        out.append(list(range(n, n + len(page))))
        n += len(page)
    return out


def merge_tables_across_pages(pages: Sequence[Sequence[ParsedBlock]]) -> tuple[list[list[ParsedBlock]], GlobalIds]:
    """Join each page's first table to the previous page's last table when it continues it.

    Returns the pages (merged rows in the first part, the continuation emptied) and each block's
    (global_block_id, global_group_id): a continuation's group is the first part's id.
    """
    out = [list(p) for p in pages]
    ids = _numbered(out)
    group = {i: i for page_ids in ids for i in page_ids}
    for p in range(len(out) - 1, 0, -1):
        cur = next((k for k, x in enumerate(out[p]) if x.label == "table"), None)
        prev = next((k for k in range(len(out[p - 1]) - 1, -1, -1) if out[p - 1][k].label == "table"), None)
        if cur is None or prev is None or not can_merge_tables(out[p - 1], prev, out[p], cur):
            continue
        first, second = out[p - 1][prev], out[p][cur]
        out[p - 1][prev] = replace(first, content=merge_table_html(first.content, second.content))
        out[p][cur] = replace(second, content="")
        group[ids[p][cur]] = ids[p - 1][prev]
    flat = [i for page_ids in ids for i in page_ids]
    for i in flat:  # follow chains: page 3 -> page 2 -> page 1
        if group[i] != i:
            group[i] = group[group[i]]
    return out, [[(i, group[i]) for i in page_ids] for page_ids in ids]


# Title numbering styles and the level each implies.
_NUMBERED_IN_BRACKETS = re.compile(r"^\s*(?:[\(（])?(\d+(?:\.\d+)*)[\)）]")
_ROMAN = re.compile(r"^\s*([IVX]+)(?:[\.．\)\s]|$)", re.I)
_CHINESE = re.compile(
    r"^\s*(?:第|[（\(])?([一二三四五六七八九十]{1,2})(?:[章节篇卷部条题讲课回）\)]|(?![a-zA-Z\u4e00-\u9fa5]))"
)
_LETTER = re.compile(r"^\s*([A-Z])(?:[\.．\)\s])", re.I)
_DECIMAL = re.compile(r"^\s*(\d+(?:\.\d+)*)(?![）)])(?:[\.]?\s*|(?=[A-Z]))")

# Section names that are top-level headings whatever their size (compared upper-case, no spaces).
TOP_LEVEL_TITLES = frozenset(
    "ABSTRACT SUMMARY RESUME CONTENTS REFERENCES REFERENCE APPENDIX APPENDICES ACKNOWLEDGMENTS INTRODUCTION "
    "BACKGROUNDANDRELATEDWORK BACKGROUND RELATEDWORK THEORETICALMODELS DATA METHOD METHODS METHODOLOGY "
    "TOPICANALYSIS RESULT RESULTS DISCUSSION CONCLUSIONS CONCLUSION LIMITATIONS "
    "绪论 引言 参考文献 附录 研究背景 相关工作 研究方法 实验结果 讨论 结论 致谢 目录".split()
)


def numbering_level(title: str) -> tuple[str | None, int]:
    """(numbering style, level it implies) of a title, or (None, -1) when it is not numbered."""
    text = title.strip()
    if _NUMBERED_IN_BRACKETS.match(text):
        return "bracketed", 4
    if _ROMAN.match(text):
        return "roman", 1
    if _CHINESE.match(text):
        return "chinese", 1
    if _LETTER.match(text):
        return "letter", 2
    decimal = _DECIMAL.match(text)
    if decimal:
        return "decimal", decimal.group(1).count(".") + 1
    return None, -1


def title_line_height(block: ParsedBlock) -> int:
    """Height of one text line of a title block (width, for vertical titles)."""
    x1, y1, x2, y2 = block.bbox
    h, w = y2 - y1, x2 - x1
    lines = block.content.strip().count("\n") + 1
    if h <= 0 or w / h >= 1.0:
        return int(h / lines)
    return int(w / lines)


def _kmeans_1d(values: Sequence[int], k: int) -> list[float]:
    """Centres of the best split of 1-D values into k clusters (least squared distance), equal values together.

    Dynamic programming over the distinct values weighted by their counts. The best last cut only
    moves right as the prefix grows, so each cluster count is solved by divide and conquer: a long
    document (or a /restructure-pages body of many titles) costs O(k d log d), not O(k n^2).
    """
    counts = Counter(values)
    xs = sorted(counts)
    d = len(xs)
    size, total, squares = [0], [0], [0]  # prefix sums over the distinct values, exact integers
    for x in xs:
        size.append(size[-1] + counts[x])
        total.append(total[-1] + counts[x] * x)
        squares.append(squares[-1] + counts[x] * x * x)

    def cost(i: int, j: int) -> float:  # distinct values i..j-1 in one cluster
        s = total[j] - total[i]
        return squares[j] - squares[i] - s * s / (size[j] - size[i])

    inf = float("inf")
    best = [0.0] + [inf] * d  # best cost of the first j distinct values in c - 1 clusters
    cuts: list[list[int]] = []
    for c in range(1, k + 1):
        previous, best, cut = best, [inf] * (d + 1), [0] * (d + 1)
        pending = [(c, d, c - 1, d - 1)]  # (first j, last j, lowest cut, highest cut)
        while pending:
            lo, hi, cut_lo, cut_hi = pending.pop()
            if lo > hi:
                continue
            j = (lo + hi) // 2
            for i in range(cut_lo, min(j - 1, cut_hi) + 1):
                value = previous[i] + cost(i, j)
                if value < best[j]:
                    best[j], cut[j] = value, i
            pending += [(lo, j - 1, cut_lo, cut[j]), (j + 1, hi, cut[j], cut_hi)]
        cuts.append(cut)
    centres, j = [], d
    for cut in reversed(cuts):
        i = cut[j]
        centres.append((total[j] - total[i]) / (size[j] - size[i]))
        j = i
    return centres


def height_levels(heights: Sequence[int], max_levels: int = 4) -> dict[int, int]:
    """Level (1 = largest) of each title line height, from up to four size clusters."""
    distinct = sorted(set(heights))
    if not distinct:
        return {}
    centres = sorted(_kmeans_1d(heights, min(max_levels, len(distinct))), reverse=True)
    return {h: min(range(len(centres)), key=lambda c: abs(h - centres[c])) + 1 for h in distinct}


def title_levels(titles: Sequence[ParsedBlock]) -> list[int]:
    """A level for each paragraph title of a document (in order), voting numbering, order and size.

    Numbered titles: the level their numbering implies, the order in which numbering styles first
    appear (decimal numbers relative to the first one) and the size cluster vote; the majority
    wins, else the order. Well-known section names are level 1; the rest go by size.
    """
    styles = [numbering_level(t.content) for t in titles]
    heights = [title_line_height(t) for t in titles]
    by_size = height_levels(heights)
    style_rank: dict[str, int] = {}
    for style, level in styles:
        if level > 0 and style is not None and style not in style_rank:
            style_rank[style] = len(style_rank) + 1
    first_decimal = 0
    out = []
    for t, (style, level), h in zip(titles, styles, heights):
        name = t.content.upper().strip().rstrip("：: ").replace(" ", "")
        if level > 0 and style is not None:
            order = style_rank[style]
            if style == "decimal":
                if first_decimal:
                    order += level - first_decimal
                else:
                    first_decimal = level
            votes = [level, order, by_size[h]]
            top = max(votes, key=votes.count)
            out.append(top if votes.count(top) > 1 else order)
        elif name in TOP_LEVEL_TITLES:
            out.append(1)
        else:
            out.append(by_size[h])
    return out


def relevel_titles(pages: Sequence[Sequence[ParsedBlock]]) -> list[list[ParsedBlock]]:
    """The pages with every paragraph title's ``title_level`` set from the whole document."""
    where = [(p, k) for p, page in enumerate(pages) for k, b in enumerate(page) if b.label == "paragraph_title"]
    levels = title_levels([pages[p][k] for p, k in where])
    out = [list(page) for page in pages]
    for (p, k), level in zip(where, levels):
        out[p][k] = replace(out[p][k], title_level=level)
    return out


def restructure_pages(
    pages: Sequence[Sequence[ParsedBlock]], *, merge_tables: bool = True, relevel: bool = True
) -> tuple[list[list[ParsedBlock]], GlobalIds]:
    """Both restructuring steps; returns the pages and each block's global (block, group) ids."""
    if merge_tables:
        out, ids = merge_tables_across_pages(pages)
    else:
        out = [list(p) for p in pages]
        ids = [[(i, i) for i in page_ids] for page_ids in _numbered(out)]
    if relevel:
        out = relevel_titles(out)
    return out, ids

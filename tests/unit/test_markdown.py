"""Page markdown and prunedResult: exact strings, and parity with paddlex's result class."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.blocks import ParsedBlock, picture_path
from vllm_paddle_ocr.backends.vllm_paddle_ocr.recipe import DEFAULT_MARKDOWN_IGNORE_LABELS
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.output.markdown import (
    MarkdownStyle,
    chart_table_html,
    formula_with_number,
    page_markdown,
    title_markdown,
)
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.output.pruned import (
    blocks_from_pruned,
    concatenated_pruned,
    pruned_result,
)
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.output.restructuring import (
    height_levels,
    merge_tables_across_pages,
    numbering_level,
    restructure_pages,
    title_levels,
    title_line_height,
)
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.options import page_options
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.recognition.prompts import Recognition
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.protocol import InferRequest

WIDTH = 400


def pb(label: str, content: str = "", bbox: tuple[int, int, int, int] = (0, 0, 100, 50), **kw: Any) -> ParsedBlock:
    return ParsedBlock(label, bbox, content, **kw)


# ---------------------------------------------------------------- titles


@pytest.mark.parametrize(
    ("title", "heading"),
    [
        ("Introduction", "## Introduction"),
        ("1 Introduction", "## 1 Introduction"),
        ("1.2 Related work", "### 1.2 Related work"),
        ("1.2.3Details", "#### 1.2.3 Details"),
        ("2. Method", "### 2. Method"),
        ("Summary.", "## Summary"),
        ("（一）总则", "## （一） 总则"),
        ("IV. Results", "### IV. Results"),
        ("Soft-\nwrapped title", "## Softwrapped title"),
    ],
)
def test_title_levels(title: str, heading: str) -> None:
    assert title_markdown(title) == heading


@pytest.fixture(scope="module")
def px_format():
    return pytest.importorskip("paddlex.inference.common.result.converter.markdown_format_funcs")


TITLE_TEXT = st.text(alphabet="1234567890.、 ()（）一二十IVXab-\n", max_size=14)


@settings(max_examples=300, deadline=None)
@given(TITLE_TEXT)
def test_title_levels_match_paddlex(px_format, title: str) -> None:
    class Title:
        content = title

    assert title_markdown(title) == px_format.format_title(Title)


# ---------------------------------------------------------------- page markdown


def test_page_markdown_prettified() -> None:
    blocks = [
        pb("doc_title", "Report"),
        pb("header", "running head"),
        pb("paragraph_title", "1.1 Scope"),
        pb("text", "line one\nline two"),
        pb("table", "<table><tr><td>a</td></tr></table>"),
        pb("image", bbox=(0, 0, 200, 100), picture="imgs/img_in_image_box_0_0_200_100.jpg"),
        pb("figure_title", "Figure 1: a\ncat"),
        pb("display_formula", "$$E=mc^2$$"),
        pb("formula_number", "(1)"),
    ]
    text, paths = page_markdown(blocks, page_width=WIDTH)
    assert text == (
        "# Report\n\n### 1.1 Scope\n\nline one\n\nline two\n\n"
        "\n<table border=1 style='margin: auto; word-wrap: break-word;'><tr>"
        "<td style='text-align: center; word-wrap: break-word;'>a</td></tr></table>\n\n"
        '<div style="text-align: center;">'
        '<img src="imgs/img_in_image_box_0_0_200_100.jpg" alt="Image" width="50%" /></div>\n'
        '\n\n<div style="text-align: center;">Figure 1: a cat</div>\n\n\n$$E=mc^2$$'
    )
    assert paths == ["imgs/img_in_image_box_0_0_200_100.jpg"]


def test_page_markdown_plain() -> None:
    blocks = [
        pb("table", "<html><body><table><tr><td>a</td></tr></table></body></html>"),
        pb("image", picture="imgs/x.jpg"),
        pb("figure_title", "Figure 1"),
    ]
    text, _ = page_markdown(blocks, page_width=WIDTH, style=MarkdownStyle(prettify=False))
    assert text == "\n\n<table><tr><td>a</td></tr></table>\n\n![](imgs/x.jpg)\n\nFigure 1"


def test_formula_numbers_only_with_show_formula_number() -> None:
    blocks = [pb("display_formula", " $$ x+1 $$ "), pb("formula_number", "(2)")]
    assert page_markdown(blocks, page_width=WIDTH)[0] == " $$ x+1 $$ "
    shown = page_markdown(blocks, page_width=WIDTH, show_formula_number=True)[0]
    assert shown == formula_with_number(" $$ x+1 $$ ", "(2)") == "$$  x+1   \\tag*{(2)}$$"


def test_ignore_labels_override_defaults_but_pictures_are_still_listed() -> None:
    blocks = [pb("header", "head"), pb("header_image", picture="imgs/h.jpg"), pb("text", "body")]
    assert page_markdown(blocks, page_width=WIDTH)[0] == "body"
    text, paths = page_markdown(
        blocks, page_width=WIDTH, ignore_labels=["text"], figure_paths=["imgs/f.jpg", "imgs/h.jpg"]
    )
    assert text.startswith("head\n\n<div") and "body" not in text
    assert paths == ["imgs/h.jpg", "imgs/f.jpg"]


def test_chart_recognition_renders_a_table_and_seals_show_their_text() -> None:
    content = "year | sales\n2023 | 5"
    assert chart_table_html(content).startswith("<table border=1 style='margin: auto; width: max-content;'>\n  <thead>")
    style = MarkdownStyle(recognition=Recognition(chart=True, seal=True))
    text, _ = page_markdown(
        [pb("chart", content), pb("seal", "ACME\nLtd", picture="imgs/s.jpg")], page_width=WIDTH, style=style
    )
    assert "<th style='text-align: center;'>year</th>" in text
    assert 'width="25%" />\n\nACME\nLtd\n\n</div>' in text


# ---------------------------------------------------------------- prunedResult


def test_pruned_result_shape() -> None:
    settings_ = page_options(InferRequest(file="x")).model_settings()
    boxes = [{"cls_id": 22, "label": "text", "score": 0.9, "coordinate": [0, 0, 10, 10], "order": 1}]
    blocks = [pb("doc_title", "T", group_id=0), pb("image", picture="imgs/i.jpg"), pb("text", "b", group_id=5)]
    res = pruned_result(blocks, width=WIDTH, height=600, model_settings=settings_, layout_boxes=boxes)
    assert list(res) == ["page_count", "width", "height", "model_settings", "parsing_res_list", "layout_det_res"]
    assert res["page_count"] is None and res["layout_det_res"] == {"boxes": boxes}
    assert res["parsing_res_list"][1] == {
        "block_label": "image",
        "block_content": "",
        "block_bbox": [0, 0, 100, 50],
        "block_id": 1,
        "block_order": None,
        "group_id": 1,
    }
    assert [r["block_order"] for r in res["parsing_res_list"]] == [1, None, 2]
    assert [r["group_id"] for r in res["parsing_res_list"]] == [0, 1, 5]


def test_pruned_result_without_layout_and_with_spotting() -> None:
    settings_ = page_options(InferRequest(file="x", useLayoutDetection=False, promptLabel="spotting")).model_settings()
    spotting = {"rec_polys": [], "rec_texts": []}
    res = pruned_result(
        [pb("spotting", "a")], width=5, height=5, model_settings=settings_, spotting={"rec_texts": ["a"]}
    )
    assert "layout_det_res" not in res and res["spotting_res"] == {"rec_texts": ["a"]}
    # present whenever a spotting block was read, even with nothing found
    assert pruned_result([], width=5, height=5, model_settings=settings_, spotting=spotting)["spotting_res"] == spotting
    assert "spotting_res" not in pruned_result([], width=5, height=5, model_settings=settings_, spotting={})


def test_block_polygons_and_global_ids() -> None:
    block = pb("text", "x", polygon=((0.0, 0.0), (5.0, 0.0), (5.0, 5.0)))
    res = pruned_result([block], width=5, height=5, model_settings={"use_layout_detection": False}, global_ids=[(7, 3)])
    item = res["parsing_res_list"][0]
    assert item["block_polygon_points"] == [[0.0, 0.0], [5.0, 0.0], [5.0, 5.0]]
    assert (item["global_block_id"], item["global_group_id"]) == (7, 3)


# ---------------------------------------------------------------- parity with paddlex's result class

LABELS = (
    "doc_title", "paragraph_title", "text", "ocr", "vertical_text", "abstract", "content", "reference_content",
    "algorithm", "table", "image", "chart", "seal", "header", "footer", "header_image", "footer_image",
    "number", "footnote", "aside_text", "figure_title", "vision_footnote", "display_formula", "inline_formula",
    "formula_number", "spotting", "reference", "unknown_label",
)  # fmt: skip
CONTENT = st.text(alphabet="ab 1.2-\n$<>|Abstract", max_size=20)


@st.composite
def pages(draw: st.DrawFn) -> dict[str, Any]:
    blocks = []
    for _ in range(draw(st.integers(0, 8))):
        label = draw(st.sampled_from(LABELS))
        x1, y1 = draw(st.integers(0, 300)), draw(st.integers(0, 500))
        bbox = (x1, y1, x1 + draw(st.integers(1, 100)), y1 + draw(st.integers(1, 100)))
        if label == "table":
            content = draw(st.sampled_from(["<table><tr><td>1</td><th>h</th></tr></table>", "raw"]))
        else:
            content = draw(CONTENT)
        picture = (
            picture_path(label, bbox) if label in ("image", "seal", "chart", "header_image", "footer_image") else None
        )
        group = draw(st.one_of(st.none(), st.integers(0, 9)))
        blocks.append(ParsedBlock(label, bbox, content, group, picture))
    return {
        "blocks": blocks,
        "style": MarkdownStyle(
            draw(st.booleans()),
            Recognition(*draw(st.tuples(st.booleans(), st.booleans(), st.booleans()))),
            draw(st.booleans()),
        ),
        "ignore": draw(st.sampled_from([DEFAULT_MARKDOWN_IGNORE_LABELS, (), ("text", "table")])),
        "show_number": draw(st.booleans()),
        "format_content": draw(st.booleans()),
    }


@pytest.fixture(scope="module")
def px_result():
    return pytest.importorskip("paddlex.inference.pipelines.paddleocr_vl.result")


def _paddlex_page(px_result, page: dict[str, Any], settings_: dict[str, Any], figures: list[str]):
    objs = []
    for b in page["blocks"]:
        obj = px_result.PaddleOCRVLBlock(b.label, list(b.bbox), b.content, group_id=b.group_id)
        if b.picture is not None:
            obj.image = {"path": b.picture, "img": None}
        objs.append(obj)
    return px_result.PaddleOCRVLResult(
        {
            "input_path": None,
            "page_index": None,
            "page_count": None,
            "width": WIDTH,
            "height": 600,
            "model_settings": settings_,
            "parsing_res_list": objs,
            "layout_det_res": {"input_path": None, "page_index": None, "boxes": []},
            "imgs_in_doc": [{"path": p, "img": None} for p in figures],
            "spotting_res": {},
            "doc_preprocessor_res": None,
            "table_res_list": [],
        }
    )


def _prune(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _prune(v) for k, v in obj.items() if k not in ("input_path", "page_index")}
    if isinstance(obj, list):
        return [_prune(v) for v in obj]
    return obj


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pages())
def test_markdown_and_pruned_result_match_paddlex(px_result, page: dict[str, Any]) -> None:
    style: MarkdownStyle = page["style"]
    settings_ = {
        "use_doc_preprocessor": False,
        "use_layout_detection": style.use_layout_detection,
        "use_chart_recognition": style.recognition.chart,
        "use_seal_recognition": style.recognition.seal,
        "use_ocr_for_image_block": style.recognition.ocr_for_image_blocks,
        "format_block_content": page["format_content"],
        "merge_layout_blocks": True,
        "markdown_ignore_labels": list(page["ignore"]),
        "return_layout_polygon_points": True,
    }
    figures = ["imgs/img_in_image_box_1_1_9_9.jpg"]
    theirs = _paddlex_page(px_result, page, settings_, figures)
    expected_md = theirs._to_markdown(pretty=style.prettify, show_formula_number=page["show_number"])

    text, paths = page_markdown(
        page["blocks"],
        page_width=WIDTH,
        style=style,
        ignore_labels=page["ignore"],
        show_formula_number=page["show_number"],
        figure_paths=figures,
    )
    assert text == expected_md["markdown_texts"]
    assert paths == list(expected_md["markdown_images"])

    ours = pruned_result(
        page["blocks"],
        width=WIDTH,
        height=600,
        model_settings=settings_,
        layout_boxes=[],
        recognition=style.recognition,
    )
    assert ours == _prune(theirs.json["res"])


# ---------------------------------------------------------------- restructuring pages


def table(rows: list[list[str]], bbox: tuple[int, int, int, int] = (10, 10, 390, 300)) -> ParsedBlock:
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return pb("table", f"<table>{body}</table>", bbox)


def test_blocks_from_pruned_strip_headings_and_restore_some_pictures() -> None:
    pruned = {
        "model_settings": {"use_chart_recognition": False},
        "parsing_res_list": [
            {
                "block_label": "paragraph_title",
                "block_content": "## 1 Intro",
                "block_bbox": [0, 0, 9, 9],
                "group_id": 0,
            },
            {"block_label": "chart", "block_content": "", "block_bbox": [1, 2, 3, 4], "group_id": 1},
            {"block_label": "header_image", "block_content": "", "block_bbox": [1, 2, 3, 4], "group_id": 2},
        ],
    }
    blocks = blocks_from_pruned(pruned)
    assert blocks[0].content == "1 Intro" and blocks[0].group_id == 0
    assert blocks[1].picture == "imgs/img_in_chart_box_1_2_3_4.jpg" and blocks[2].picture is None


def test_a_continued_table_is_merged_without_its_repeated_header() -> None:
    first = table([["Name", "Qty"], ["a", "1"]])
    second = table([["Name", "Qty"], ["b", "2"], ["c", "3"]], (12, 5, 392, 200))
    pages, ids = merge_tables_across_pages([[pb("text", "x"), first, pb("footer", "p1")], [pb("header", "h"), second]])
    assert pages[0][1].content == (
        "<table><tr><td>Name</td><td>Qty</td></tr><tr><td>a</td><td>1</td></tr>"
        "<tr><td>b</td><td>2</td></tr><tr><td>c</td><td>3</td></tr></table>"
    )
    assert pages[1][1].content == ""
    assert ids == [[(0, 0), (1, 1), (2, 2)], [(3, 3), (4, 1)]]


def test_tables_continue_over_several_pages() -> None:
    parts = [table([["h"], [str(k)]]) for k in range(3)]
    pages, ids = merge_tables_across_pages([[p] for p in parts])
    assert pages[0][0].content.count("<tr>") == 4 and pages[1][0].content == pages[2][0].content == ""
    assert [page_ids[0][1] for page_ids in ids] == [0, 0, 0]


@pytest.mark.timeout(60)
def test_tables_with_absurd_spans_are_compared_without_laying_them_out() -> None:
    huge = '<td colspan="1000000000" rowspan="1000000000">Title</td>'
    first = pb("table", f"<table><tr>{huge}</tr><tr><td>a</td><td>b</td></tr></table>", (0, 0, 400, 300))
    second = pb("table", "<table><tr><td>c</td><td>d</td></tr></table>", (0, 0, 400, 300))
    pages, _ = merge_tables_across_pages([[first], [second]])
    assert pages[0][0].content.count("<tr>") == 3 and pages[1][0].content == ""


@pytest.mark.parametrize(
    "pages",
    [
        [[table([["a", "b"]])], [table([["c", "d"]], (10, 10, 200, 100))]],  # much narrower
        [[table([["a", "b"]]), pb("text", "after")], [table([["c", "d"]])]],  # text follows the first part
        [[table([["a", "b"]])], [pb("text", "before"), table([["c", "d"]])]],  # text precedes the second
        [[table([["a", "b"]])], [table([["c", "d", "e"]])]],  # other columns
    ],
)
def test_tables_that_do_not_continue_stay_apart(pages: list[list[ParsedBlock]]) -> None:
    merged, ids = merge_tables_across_pages(pages)
    assert merged == pages and all(g == b for page_ids in ids for b, g in page_ids)


@pytest.fixture(scope="module")
def px_merge():
    pytest.importorskip("bs4")
    return pytest.importorskip("paddlex.inference.pipelines.layout_parsing.merge_table")


CELL = st.sampled_from(["a", "b", "Ｈ", "1", "x y"])


@st.composite
def table_pages(draw: st.DrawFn) -> list[list[ParsedBlock]]:
    pages = []
    header = draw(st.lists(CELL, min_size=1, max_size=3))
    for _ in range(draw(st.integers(2, 4))):
        page = []
        if draw(st.booleans()):
            page.append(pb(draw(st.sampled_from(["header", "text", "number"])), "h"))
        width = len(header) + draw(st.sampled_from([0, 0, 0, 1]))
        rows = ([header] if draw(st.booleans()) else []) + [
            [draw(CELL) for _ in range(width)] for _ in range(draw(st.integers(1, 3)))
        ]
        page.append(table(rows, (10, 10, draw(st.sampled_from([390, 395, 300])), 300)))
        if draw(st.booleans()):
            page.append(pb(draw(st.sampled_from(["footer", "text", "footnote"])), "f"))
        pages.append(page)
    return pages


@settings(max_examples=150, deadline=None)
@given(table_pages())
def test_table_merging_matches_paddlex(px_merge, px_result, pages: list[list[ParsedBlock]]) -> None:
    from bs4 import BeautifulSoup

    objs, n = [], 0
    for page in pages:
        row = []
        for b in page:
            row.append(
                px_result.PaddleOCRVLBlock(b.label, list(b.bbox), b.content, global_block_id=n, global_group_id=n)
            )
            n += 1
        objs.append(row)
    theirs = px_merge.merge_tables_across_pages(objs)
    ours, ids = merge_tables_across_pages(pages)
    for page_ours, page_theirs, page_ids in zip(ours, theirs, ids):
        for b, t, (block_id, group_id) in zip(page_ours, page_theirs, page_ids):
            assert str(BeautifulSoup(b.content, "html.parser")) == t.content
            assert (block_id, group_id) == (t.global_block_id, t.global_group_id)


@pytest.mark.parametrize(
    ("title", "style"),
    [
        ("1.2 Scope", ("decimal", 2)),
        ("3 Results", ("decimal", 1)),
        ("(2) Notes", ("bracketed", 4)),
        ("IV. Discussion", ("roman", 1)),
        ("第三章 方法", ("chinese", 1)),
        ("B. Appendix", ("letter", 2)),
        ("Introduction", (None, -1)),
    ],
)
def test_numbering_styles(title: str, style: tuple) -> None:
    assert numbering_level(title) == style


def test_height_levels_rank_sizes() -> None:
    assert height_levels([30, 20, 20, 12]) == {30: 1, 20: 2, 12: 3}
    levels = height_levels([40, 39, 30, 29, 20, 19, 10, 9])
    assert levels[40] == levels[39] == 1 and levels[10] == levels[9] == 4


def _least_squares(values: list[int], k: int) -> float:
    """The smallest within-cluster squared distance of any split of the sorted distinct values into k runs."""
    from itertools import combinations

    xs = sorted(set(values))

    def spread(run: list[int]) -> float:
        members = [v for v in values if v in run]
        mean = sum(members) / len(members)
        return sum((v - mean) ** 2 for v in members)

    return min(
        sum(spread(xs[a:b]) for a, b in zip((0, *cuts), (*cuts, len(xs))))
        for cuts in combinations(range(1, len(xs)), k - 1)
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=14))
def test_height_clusters_are_the_least_squares_split(heights: list[int]) -> None:
    levels = height_levels(heights)
    k = len(set(levels.values()))
    assert k == min(4, len(set(heights)))
    groups: dict[int, list[int]] = {}
    for h in heights:
        groups.setdefault(levels[h], []).append(h)
    spread = sum(sum((h - sum(g) / len(g)) ** 2 for h in g) for g in groups.values())
    assert spread == pytest.approx(_least_squares(heights, k), abs=1e-6)


@pytest.mark.timeout(60)
def test_a_long_document_of_titles_is_relevelled_without_quadratic_work() -> None:
    titles = [pb("paragraph_title", "Section", (0, 0, 400, h)) for h in (40, 30, 20, 12) * 12_500]
    levels = title_levels(titles)
    assert len(levels) == 50_000 and levels[:4] == [1, 2, 3, 4] and levels[-4:] == [1, 2, 3, 4]


def test_relevelled_titles_in_markdown() -> None:
    pages = [
        [
            pb("paragraph_title", "1 Introduction", (0, 0, 300, 30)),
            pb("paragraph_title", "1.1 Scope", (0, 40, 300, 60)),
        ],
        [pb("paragraph_title", "2 Method", (0, 0, 300, 30)), pb("paragraph_title", "Conclusion", (0, 40, 300, 60))],
    ]
    out, ids = restructure_pages(pages, merge_tables=False)
    assert [b.title_level for page in out for b in page] == [1, 2, 1, 1]
    assert page_markdown(out[0], page_width=WIDTH)[0] == "## 1 Introduction\n\n### 1.1 Scope"
    assert ids == [[(0, 0), (1, 1)], [(2, 2), (3, 3)]]


@pytest.fixture(scope="module")
def px_title_level():
    return pytest.importorskip("paddlex.inference.pipelines.layout_parsing.title_level")


TITLE = st.sampled_from(
    ["1 Intro", "1.1 Scope", "1.2.3 Deep", "2 Method", "(1) Note", "IV. Part", "A. Annex", "第二章 方法",
     "Results", "Conclusion", "Plain heading", "references:"]
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(TITLE, st.integers(10, 40), st.integers(50, 300)), min_size=1, max_size=8))
def test_title_levels_match_paddlex_given_the_same_size_clusters(
    px_title_level, monkeypatch_module, titles: list[tuple[str, int, int]]
) -> None:
    blocks = [pb("paragraph_title", t, (0, 0, w, h)) for t, h, w in titles]
    monkeypatch_module.setattr(
        px_title_level, "cluster_global_heights", lambda entries: height_levels([e["height"] for e in entries])
    )
    entries = [{"content": b.content, "height": title_line_height(b), "level": None} for b in blocks]
    expected = [e["level"] for e in px_title_level.compute_levels_for_entries(entries)]
    assert title_levels(blocks) == expected


@pytest.fixture(scope="module")
def monkeypatch_module():
    patcher = pytest.MonkeyPatch()
    yield patcher
    patcher.undo()


def test_concatenated_pruned_result() -> None:
    settings_ = page_options(InferRequest(file="x")).model_settings()
    pages = [
        {"width": 400, "height": 600, "model_settings": settings_, "layout_det_res": {"boxes": [k]}} for k in range(2)
    ]
    res = concatenated_pruned(pages, [pb("text", "a"), pb("text", "b")], [(0, 0), (1, 1)])
    assert res["page_count"] == 2 and res["width"] == 400
    assert res["layout_det_res"] == [{"boxes": [0]}, {"boxes": [1]}]
    assert [r["global_block_id"] for r in res["parsing_res_list"]] == [0, 1]

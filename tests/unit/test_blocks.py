"""Block geometry: filtering, merging, table figures, crops, margins, planning; paddlex as oracle."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.blocks import (
    Block,
    Figure,
    TableMarker,
    block_orders,
    clip_box,
    crop,
    filter_overlaps,
    finish_page,
    ink_bounds,
    merge_text_blocks,
    overlap_of_smaller,
    pad_to_aspect,
    page_figures,
    paint_markers,
    picture_path,
    picture_tag,
    plan_page,
    restore_table_figures,
    stack_image,
    stack_layout,
    table_figure_markers,
    trim_formula_margin,
)
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.layout.base import LayoutBox, whole_page_box
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.recognition.prompts import Recognition

PAGE = (400, 600)
NON_MERGE = Recognition().non_merge_labels()


def b(label: str, x1: int, y1: int, x2: int, y2: int) -> Block:
    return Block(label, (x1, y1, x2, y2))


@st.composite
def boxes(
    draw: st.DrawFn, labels: tuple[str, ...] = ("text", "table", "image", "inline_formula", "reference", "chart")
) -> Block:
    x1, y1 = draw(st.integers(0, 380)), draw(st.integers(0, 580))
    x2, y2 = draw(st.integers(x1 + 1, 400)), draw(st.integers(y1 + 1, 600))
    return Block(draw(st.sampled_from(labels)), (x1, y1, x2, y2), score=0.9)


# ---------------------------------------------------------------- basics


def box(label: str, x1: int, y1: int, x2: int, y2: int) -> LayoutBox:
    return LayoutBox(0, label, 0.9, (x1, y1, x2, y2))


def test_a_detector_box_becomes_a_block_with_an_integer_box() -> None:
    block = Block.from_box(LayoutBox(22, "text", 0.98, (1.0, 2.7, 30.0, 40.2), 3))
    assert block == Block("text", (1, 2, 30, 40), 0.98, 22, 3)
    assert Block.from_box(whole_page_box("ocr", 640, 480)).bbox == (0, 0, 640, 480)
    polygon = ((0.0, 0.0), (9.0, 0.0), (9.0, 9.0))
    assert Block.from_box(LayoutBox(22, "text", 0.5, (0, 0, 9, 9), polygon_points=polygon)).polygon == polygon


def test_a_box_is_written_as_paddlex_writes_it() -> None:
    plain = LayoutBox(22, "text", 0.98, (1.0, 2.0, 30.0, 40.0))
    assert plain.as_paddlex() == {"cls_id": 22, "label": "text", "score": 0.98, "coordinate": [1.0, 2.0, 30.0, 40.0], "order": None}
    polygon = LayoutBox(22, "text", 0.98, (0, 0, 9, 9), 2, ((0.0, 0.0), (9.0, 9.0))).as_paddlex()
    assert polygon["order"] == 2 and polygon["polygon_points"] == [[0.0, 0.0], [9.0, 9.0]]


def test_geometry_helpers() -> None:
    assert overlap_of_smaller((0, 0, 10, 10), (5, 0, 25, 10)) == 0.5
    assert overlap_of_smaller((0, 0, 0, 10), (0, 0, 5, 5)) == 0.0
    assert clip_box((-5, 10, 50, 700), 40, 600) == (0, 10, 40, 600)
    assert clip_box((50, 50, 60, 60), 40, 40) is None
    assert picture_path("image", (1, 2, 3, 4)) == "imgs/img_in_image_box_1_2_3_4.jpg"


# ---------------------------------------------------------------- filtering


def test_references_and_slivers_are_dropped() -> None:
    kept = filter_overlaps([b("reference", 0, 0, 100, 100), b("text", 0, 0, 5, 100), b("text", 0, 200, 100, 300)])
    assert kept == [b("text", 0, 200, 100, 300)]


def test_inline_formula_inside_text_is_dropped() -> None:
    kept = filter_overlaps([b("text", 0, 0, 200, 50), b("inline_formula", 10, 10, 40, 40)])
    assert [x.label for x in kept] == ["text"]


def test_smaller_of_two_overlapping_text_blocks_is_dropped() -> None:
    kept = filter_overlaps([b("text", 0, 0, 100, 100), b("paragraph_title", 5, 5, 95, 60)])
    assert [x.label for x in kept] == ["text"]


def test_picture_and_caption_overlapping_are_both_kept() -> None:
    blocks = [b("image", 0, 0, 100, 100), b("figure_title", 5, 5, 95, 60)]
    assert filter_overlaps(blocks) == blocks


def test_text_inside_a_table_is_dropped_but_pictures_in_it_kept() -> None:
    table, text, image = b("table", 0, 0, 300, 300), b("text", 10, 10, 100, 100), b("image", 150, 150, 250, 250)
    assert filter_overlaps([table, text, image]) == [table, image]


def test_polygon_overlap_can_keep_both() -> None:
    a = Block("text", (0, 0, 100, 100), polygon=((0, 0), (100, 0), (0, 100)))
    c = Block("text", (0, 0, 90, 90), polygon=((100, 100), (100, 0), (0, 100)))
    assert len(filter_overlaps([a, c])) == 1
    assert len(filter_overlaps([a, c], use_polygons=True, polygon_overlap=lambda p, q: 0.1)) == 2


@settings(max_examples=200)
@given(st.lists(boxes(), max_size=8))
def test_filtering_is_idempotent_and_keeps_order(blocks: list[Block]) -> None:
    blocks = [Block(x.label, x.bbox, order=k) for k, x in enumerate(blocks)]
    kept = filter_overlaps(blocks)
    assert filter_overlaps(kept) == kept
    positions = [x.order for x in kept]
    assert positions == sorted(positions)
    assert all(x.label != "reference" and x.width >= 6 and x.height >= 6 for x in kept)


@pytest.fixture(scope="module")
def px():
    return pytest.importorskip("paddlex.inference.pipelines.paddleocr_vl.uilts")


def _paddlex_box(x: Block) -> dict:
    return {"cls_id": 0, "label": x.label, "score": x.score, "coordinate": list(x.bbox)}


@settings(max_examples=200, deadline=None)
@given(st.lists(boxes(), max_size=8))
def test_filtering_matches_paddlex(px, blocks: list[Block]) -> None:
    theirs = px.filter_overlap_boxes({"boxes": [_paddlex_box(x) for x in blocks]}, "rect")["boxes"]
    assert [(x.label, x.bbox) for x in filter_overlaps(blocks)] == [
        (t["label"], tuple(t["coordinate"])) for t in theirs
    ]


# ---------------------------------------------------------------- merging


def test_stack_layout_alignments() -> None:
    blocks = [b("text", 0, 0, 10, 10)] * 3
    stack = stack_layout(blocks, [(100, 10), (60, 20), (120, 5)], ["right", "center"])
    assert stack.size == (120, 35)
    assert stack.offsets == ((10, 0), (50, 10), (0, 30))


def test_side_by_side_text_blocks_merge_into_one_picture() -> None:
    left, right = b("text", 0, 0, 100, 40), b("text", 110, 5, 200, 45)
    out = merge_text_blocks([left, right], NON_MERGE, PAGE)
    assert [m.block.group_id for m in out] == [0, 0]
    assert out[0].stack is not None and out[0].stack.size == (100, 80)
    assert out[1].follower and out[1].stack is None


def test_stacked_text_beside_a_picture_merges_and_the_picture_follows() -> None:
    upper, image, lower = b("text", 10, 10, 200, 60), b("image", 160, 70, 390, 200), b("text", 10, 65, 150, 120)
    out = merge_text_blocks([upper, image, lower], NON_MERGE, PAGE)
    assert [m.block.label for m in out] == ["text", "text", "image"]
    assert out[0].stack is not None and out[0].stack.offsets == ((0, 0), (0, 50))
    assert out[2].block.group_id is None


def test_stacked_text_without_a_picture_stays_apart() -> None:
    out = merge_text_blocks([b("text", 10, 10, 200, 60), b("text", 10, 65, 150, 120)], NON_MERGE, PAGE)
    assert [m.block.group_id for m in out] == [0, 1]
    assert all(m.stack is None and not m.follower for m in out)


def test_tall_groups_are_not_merged_and_get_no_group() -> None:
    out = merge_text_blocks([b("vertical_text", 0, 0, 10, 100)], NON_MERGE, PAGE)
    assert out[0].block.group_id is None


@pytest.fixture(scope="module")
def page_array() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, size=(PAGE[1], PAGE[0], 3), dtype=np.uint8)


TEXTY = ("text", "text", "text", "image", "table", "paragraph_title")


@st.composite
def text_columns(draw: st.DrawFn) -> list[Block]:
    """Text blocks stacked with small gaps and jittered edges, pictures beside, some side by side."""
    out: list[Block] = []
    y = draw(st.integers(0, 40))
    left = draw(st.integers(0, 60))
    while y < 560 and len(out) < 7:
        h = draw(st.integers(8, 60))
        x1 = left + draw(st.integers(-8, 8))
        x2 = min(400, x1 + draw(st.integers(60, 250)))
        label = draw(st.sampled_from(["text", "text", "text", "image", "table", "doc_title"]))
        if label in ("image", "table"):
            px1 = draw(st.integers(100, 300))
            out.append(Block(label, (px1, max(0, y - 30), min(400, px1 + 100), min(600, y + 80))))
        else:
            out.append(Block(label, (max(0, x1), y, x2, min(600, y + h))))
        if draw(st.booleans()) and x2 < 350:
            gap = draw(st.integers(1, 40))
            out.append(Block("text", (x2 + gap, y + 2, min(400, x2 + gap + 40), min(600, y + h))))
        y += h + draw(st.integers(0, 25))
    return out


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.lists(boxes(TEXTY), max_size=7), text_columns()))
def test_merging_matches_paddlex(px, page_array: np.ndarray, blocks: list[Block]) -> None:
    blocks = filter_overlaps(blocks)
    theirs = px.merge_blocks(
        [
            {"img": page_array[y1:y2, x1:x2].copy(), "box": [x1, y1, x2, y2], "label": x.label}
            for x in blocks
            for x1, y1, x2, y2 in [x.bbox]
        ],
        non_merge_labels=sorted(NON_MERGE),
    )
    ours = merge_text_blocks(blocks, NON_MERGE, PAGE)
    assert [(m.block.label, m.block.bbox, m.block.group_id) for m in ours] == [
        (t["label"], tuple(t["box"]), t.get("group_id")) for t in theirs
    ]
    page = Image.fromarray(page_array)
    for m, t in zip(ours, theirs):
        assert m.follower == (t["img"] is None)
        if m.stack is not None:
            assert np.array_equal(np.asarray(stack_image(page, m.stack)), t["img"])


# ---------------------------------------------------------------- pictures in tables


def test_page_figures_clip_and_name_from_the_detected_box() -> None:
    figures = page_figures([b("image", 10, 10, 500, 50), b("text", 0, 0, 5, 5), b("seal", 1, 1, 1, 9)], PAGE)
    assert figures == [Figure("image", (10, 10, 400, 50), "imgs/img_in_image_box_10_10_500_50.jpg")]


def test_markers_for_pictures_inside_a_table() -> None:
    table = (100, 100, 300, 300)
    figures = [
        Figure("image", (120, 120, 180, 180), "imgs/a.jpg"),
        Figure("image", (200, 200, 210, 260), "imgs/small.jpg"),
        Figure("image", (250, 250, 350, 350), "imgs/out.jpg"),
    ]
    markers, inside = table_figure_markers(table, figures)
    assert inside == ["imgs/a.jpg", "imgs/small.jpg"]
    assert len(markers) == 1 and markers[0].box == (20, 20, 80, 80) and markers[0].path == "imgs/a.jpg"
    assert markers[0].token.startswith("[F") and not set(markers[0].token[2:-1]) & set("019")


def test_markers_match_paddlex(px) -> None:
    table = (100, 100, 300, 300)
    figures = [Figure("image", (100 + 40 * k, 110, 130 + 40 * k, 150), f"imgs/{k}.jpg") for k in range(6)]
    figures.append(Figure("seal", (120, 200, 140, 210), "imgs/tiny.jpg"))
    markers, inside = table_figure_markers(table, figures)
    _, token_map, dropped = px.tokenize_figure_of_table(
        np.full((200, 200, 3), 255, np.uint8), list(table), [{"coordinate": f.bbox, "path": f.path} for f in figures]
    )
    assert {m.token: m.path for m in markers} == token_map
    assert inside == dropped


def test_restore_puts_picture_tags_back() -> None:
    markers = [
        TableMarker("[F23]", (0, 0, 30, 30), "imgs/a.jpg"),
        TableMarker("[F34]", (0, 0, 30, 30), "imgs/gone.jpg"),
    ]
    html = "<td>[F23]</td><td>[F34]</td><td>[F5]</td>"
    out = restore_table_figures(html, markers, {"imgs/a.jpg": "", "imgs/b.jpg": "x"})
    assert out == f"<td>{picture_tag('imgs/a.jpg')}</td><td>[F34]</td><td>[F5]</td>"
    assert picture_tag("imgs/a.jpg") == '<img src="imgs/a.jpg" alt="Image"" />'
    with_text = restore_table_figures("[F23]", markers, {"imgs/a.jpg": "seal text"})
    assert with_text == picture_tag("imgs/a.jpg") + "\n\nseal text\n\n"


def test_restore_matches_paddlex(px) -> None:
    class Pic:
        def __init__(self, content: str) -> None:
            self.content = content

    markers = [TableMarker("[F23]", (0, 0, 30, 30), "imgs/a.jpg"), TableMarker("[F34]", (0, 0, 30, 30), "imgs/b.jpg")]
    text = "<td>[F23]</td><td>[F34]</td><td>[F7]</td>"
    pictures = {"imgs/a.jpg": "", "imgs/b.jpg": "ocr"}
    expected = px.untokenize_figure_of_table(
        text, {m.token: m.path for m in markers}, {k: Pic(v) for k, v in pictures.items()}
    )
    assert restore_table_figures(text, markers, pictures) == expected


def test_painted_marker_whitens_the_picture_and_writes_dark_text() -> None:
    image = Image.new("RGB", (200, 120), (40, 40, 40))
    out = paint_markers(image, [TableMarker("[F23]", (20, 20, 120, 100), "imgs/a.jpg")])
    region = np.asarray(out)[20:101, 20:121]
    assert (region == 255).mean() > 0.6 and (region < 128).any()
    assert np.asarray(out)[5, 5].tolist() == [40, 40, 40]
    assert image.getpixel((50, 50)) == (40, 40, 40)  # input untouched


# ---------------------------------------------------------------- crops and margins


def test_crop_is_the_exact_box_and_polygons_whiten_the_outside() -> None:
    page = Image.new("RGB", (50, 40), (0, 0, 0))
    block = Block("text", (10, 5, 30, 25), polygon=((10, 5), (30, 5), (10, 25)))
    assert crop(page, block).size == (20, 20)
    masked = crop(page, block, use_polygon=True)
    assert masked.getpixel((1, 1)) == (0, 0, 0) and masked.getpixel((19, 19)) == (255, 255, 255)


def test_ink_bounds_and_trim() -> None:
    gray = np.full((40, 60), 250, np.uint8)
    gray[10:20, 15:45] = 10
    assert ink_bounds(gray) == (15, 10, 45, 20)
    assert ink_bounds(np.full((5, 5), 7, np.uint8)) is None
    image = Image.fromarray(np.stack([gray] * 3, axis=-1))
    assert trim_formula_margin(image).size == (30, 10)
    thin = np.full((40, 60), 250, np.uint8)
    thin[10:12, 5:50] = 0
    assert trim_formula_margin(Image.fromarray(thin)).size == (60, 40)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_ink_bounds_match_paddlex_crop_margin(px, seed: int) -> None:
    rng = np.random.default_rng(seed)
    gray = rng.choice(np.array([255, 240, 200, 90, 0], np.uint8), size=(20, 30), p=[0.7, 0.1, 0.1, 0.05, 0.05])
    cropped = px.crop_margin(gray)
    box = ink_bounds(gray)
    if box is None:
        assert cropped.shape == gray.shape
    else:
        assert np.array_equal(gray[box[1] : box[3], box[0] : box[2]], cropped)


# ---------------------------------------------------------------- plan and assembly


def test_plan_assigns_tasks_pictures_and_hides_figures_in_tables() -> None:
    detected = [
        box("doc_title", 10, 10, 390, 40),
        box("table", 10, 50, 390, 300),
        box("image", 20, 60, 100, 140),
        box("display_formula", 10, 310, 390, 350),
        box("chart", 10, 360, 200, 500),
        box("text", 10, 510, 390, 590),
    ]
    plan = plan_page(detected, PAGE, Recognition())
    kinds = [None if p.task is None else p.task.kind for p in plan.blocks]
    assert [p.block.label for p in plan.blocks] == ["doc_title", "table", "image", "display_formula", "chart", "text"]
    assert kinds == ["ocr", "table", None, "formula", None, "ocr"]
    assert plan.blocks[1].task is not None and [m.path for m in plan.blocks[1].task.markers] == [
        "imgs/img_in_image_box_20_60_100_140.jpg"
    ]
    assert plan.blocks[2].hidden and plan.blocks[2].picture == "imgs/img_in_image_box_20_60_100_140.jpg"
    assert plan.blocks[3].task is not None and plan.blocks[3].task.trim_margin
    assert plan.blocks[4].picture == "imgs/img_in_chart_box_10_360_200_500.jpg"
    assert [f.path for f in plan.figures] == ["imgs/img_in_image_box_20_60_100_140.jpg"]
    assert [k for k, _ in plan.tasks()] == [0, 1, 3, 5]

    marker = plan.blocks[1].task.markers[0].token
    parsed = finish_page(plan, {0: "Title", 1: f"<table><tr><td>{marker}</td></tr></table>", 3: "$$x$$", 5: "body"})
    assert [p.label for p in parsed] == ["doc_title", "table", "display_formula", "chart", "text"]
    assert picture_tag("imgs/img_in_image_box_20_60_100_140.jpg") in parsed[1].content
    assert parsed[3].picture is not None and parsed[3].content == ""
    # a group id is the list position before pictures inside tables leave it (as in PaddleX)
    assert [p.group_id for p in parsed] == [0, None, 3, None, 5]


def test_plan_without_layout_detection_has_one_block_and_no_figures() -> None:
    plan = plan_page([whole_page_box("seal", 400, 600)], PAGE, Recognition(seal=True), collect_figures=False)
    assert plan.figures == () and plan.blocks[0].task is not None and plan.blocks[0].task.prompt == "Seal Recognition:"
    assert plan.blocks[0].picture == "imgs/img_in_seal_box_0_0_400_600.jpg"


def test_spotting_task_upscales() -> None:
    plan = plan_page([whole_page_box("spotting", 400, 600)], PAGE, Recognition(), collect_figures=False)
    assert plan.blocks[0].task is not None and plan.blocks[0].task.upscale and plan.blocks[0].task.prompt == "Spotting:"


def test_block_orders_skip_unordered_and_ignored_labels() -> None:
    labels = ["doc_title", "image", "figure_title", "text", "number", "table", "text", "formula_number"]
    assert block_orders(labels, ["number"]) == [1, None, None, 2, None, None, 3, 4]
    assert block_orders(labels, []) == [1, None, None, 2, 3, None, 4, 5]


def test_only_pictures_thinner_than_the_limit_are_padded():
    from PIL import Image

    upright = Image.new("RGB", (4, 1000), "black")
    padded = pad_to_aspect(upright, 100)
    assert padded.size == (10, 1000)
    assert padded.getpixel((0, 500)) == (255, 255, 255) and padded.getpixel((5, 500)) == (0, 0, 0)
    usual = Image.new("RGB", (300, 40))
    assert pad_to_aspect(usual, 100) is usual

"""PaddleX's layout post-processing on hand-made raw detections: each step's effect on the boxes.

That the steps equal paddlex's own, on the model's real outputs, is shown in
tests/integration/test_layout_parity.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.layout.base import LayoutSettings
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.layout.postprocess import RawDetections, postprocess
from vllm_paddle_ocr.backends.vllm_paddle_ocr.recipe import PP_DOCLAYOUT_V2_LABELS as LABELS

TEXT, TABLE, IMAGE, TITLE, HEADER = (LABELS.index(n) for n in ("text", "table", "image", "paragraph_title", "header"))
PAGE = (1000, 1400)


def settings(threshold=0.5, nms=False, unclip=(1.0, 1.0), merge="union", shape="auto") -> LayoutSettings:
    return LayoutSettings(threshold, nms, unclip, merge, shape)


def rows(*boxes: tuple) -> np.ndarray:
    """(class, score, x1, y1, x2, y2, rank[, votes]) tuples as the model's float32 rows."""
    full = [(*box, 0.0) if len(box) == 7 else box for box in boxes]
    return np.array(full, dtype=np.float32)


def run(raw: np.ndarray, config: LayoutSettings, masks=None, page=PAGE):
    return postprocess(RawDetections(raw, masks), page, config, LABELS)


def test_boxes_come_in_reading_order_numbered_without_the_unordered_labels():
    raw = rows(
        (TEXT, 0.9, 100, 600, 900, 700, 2),
        (HEADER, 0.8, 100, 10, 900, 60, 0),
        (TITLE, 0.95, 100, 100, 900, 150, 1),
        (TEXT, 0.3, 100, 800, 900, 900, 3),  # under the threshold
    )
    boxes = run(raw, settings())
    assert [(b.label, b.order) for b in boxes] == [("header", None), ("paragraph_title", 1), ("text", 2)]
    assert boxes[1].coordinate == (100, 100, 900, 150) and boxes[1].score == pytest.approx(0.95)


def test_per_class_thresholds_default_to_a_half():
    raw = rows((TEXT, 0.45, 0, 0, 10, 10, 0), (TABLE, 0.45, 20, 20, 40, 40, 1), (TITLE, 0.55, 50, 50, 60, 60, 2))
    kept = run(raw, settings(threshold={TEXT: 0.4, TABLE: 0.5}))
    assert [b.label for b in kept] == ["text", "paragraph_title"]


def test_equal_ranks_are_ordered_by_votes():
    raw = rows((TEXT, 0.9, 0, 0, 10, 10, 1, 5.0), (TITLE, 0.9, 0, 20, 10, 30, 1, 9.0), (TEXT, 0.9, 0, 40, 10, 50, 0, 1.0))
    assert [b.coordinate[1] for b in run(raw, settings())] == [40, 20, 0]


def test_nms_drops_overlaps_within_a_class_and_near_copies_across_classes():
    raw = rows(
        (TEXT, 0.9, 100, 100, 500, 300, 0),
        (TEXT, 0.8, 110, 105, 505, 300, 1),  # same class, IoU ~0.94: dropped
        (TABLE, 0.7, 110, 105, 505, 300, 2),  # another class, IoU under 0.98: kept
        (TABLE, 0.6, 100, 100, 500, 300, 3),  # another class, the same box: dropped
    )
    assert len(run(raw, settings(nms=False))) == 4
    assert [(b.label, b.score) for b in run(raw, settings(nms=True))] == [("text", pytest.approx(0.9)), ("table", pytest.approx(0.7))]


def test_merge_modes_keep_the_outer_or_the_inner_boxes():
    raw = rows((TABLE, 0.9, 100, 100, 900, 900, 0), (TEXT, 0.9, 200, 200, 400, 300, 1), (TEXT, 0.9, 950, 950, 990, 990, 2))
    assert len(run(raw, settings(merge="union"))) == 3
    assert [b.label for b in run(raw, settings(merge="large"))] == ["table", "text"]  # the text inside goes
    small = run(raw, settings(merge="small"))
    assert [b.coordinate for b in small] == [(200, 200, 400, 300), (950, 950, 990, 990)]  # the table holding it goes
    # Per class: only boxes inside a table go.
    assert len(run(raw, settings(merge={TABLE: "large", TEXT: "union"}))) == 2


def test_an_image_covering_the_page_is_dropped_unless_it_is_all_there_is():
    page_sized = (IMAGE, 0.9, 0, 0, 1000, 1400, 0)
    assert [b.label for b in run(rows(page_sized, (TEXT, 0.9, 10, 10, 50, 50, 1)), settings())] == ["text"]
    assert [b.label for b in run(rows(page_sized), settings())] == ["image"]


def test_unclip_grows_boxes_and_the_page_clips_them():
    raw = rows((TEXT, 0.9, 100, 100, 300, 200, 0), (TITLE, 0.9, 900, 1300, 1100, 1500, 1), (TEXT, 0.9, 1200, 10, 1300, 20, 2))
    boxes = run(raw, settings(unclip=(1.5, 2.0)))
    assert boxes[0].coordinate == (50, 50, 350, 250)
    assert boxes[1].coordinate == (850, 1200, 1000, 1400)  # clipped to the page
    assert len(boxes) == 2  # the box outside the page is gone
    per_class = run(raw, settings(unclip={TITLE: (1.0, 1.0), TEXT: (2.0, 1.0)}))
    assert per_class[0].coordinate == (0, 100, 400, 200)


def test_masks_give_polygons_in_the_shape_mode_asked_for():
    raw = rows((TEXT, 0.9, 0, 0, 400, 400, 0), (TABLE, 0.9, 500, 500, 900, 900, 1))
    masks = np.zeros((2, 200, 200), dtype=np.uint8)
    # An L-shaped region for the first box (page 1000 x 1000 -> masks at 800/4 = 200: a quarter of page pixels x 0.8).
    masks[0, 0:80, 0:40] = 1
    masks[0, 40:80, 0:80] = 1
    page = (1000, 1000)
    assert all(b.polygon_points is None for b in run(raw, settings(shape="rect"), masks, page))
    poly = run(raw, settings(shape="poly"), masks, page)
    points = np.array(poly[0].polygon_points)
    assert len(points) >= 6  # the L's corners, not a rectangle
    assert points[:, 0].min() >= 0 and points[:, 0].max() <= 400 and points[:, 1].max() <= 400
    assert poly[1].polygon_points == ((500, 500), (900, 500), (900, 900), (500, 900))  # empty mask: the box
    quad = run(raw, settings(shape="quad"), masks, page)
    assert len(quad[0].polygon_points) == 4
    with pytest.raises(ValueError, match="N x 8"):
        postprocess(RawDetections(np.zeros((3, 6), np.float32)), page, settings(), LABELS)

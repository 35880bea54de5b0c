"""The real paddlex layout detector on a random-weight PP-DocLayoutV2: structure of what comes back.

Random weights give random boxes, so these tests check shapes, ranges, option effects and reading
order, never which regions were found.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.fixtures.tiny_layout import LABELS
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.layout.base import LayoutBox, LayoutModelError, layout_settings
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.layout.paddle import PaddlexLayoutDetector
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.options import LayoutOptions, layout_options
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.protocol import InferRequest

pytestmark = pytest.mark.integration

PAGE_SIZE = (850, 1100)
# Labels paddlex keeps out of the reading order (order None).
UNORDERED = {
    "figure_title", "vision_footnote", "image", "chart", "table", "header", "header_image",
    "footer", "footer_image", "footnote", "aside_text",
}  # fmt: skip


@pytest.fixture(scope="module")
def detector(tiny_layout_dir: Path) -> PaddlexLayoutDetector:
    return PaddlexLayoutDetector.from_dir(tiny_layout_dir)


@pytest.fixture(scope="module")
def page() -> Image.Image:
    """A white page with a title bar, paragraphs and a boxed table."""
    image = Image.new("RGB", PAGE_SIZE, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([200, 60, 650, 110], fill="black")
    for top in range(160, 700, 70):
        draw.rectangle([80, top, 770, top + 40], fill="black")
    draw.rectangle([80, 760, 770, 1020], outline="black", width=6)
    for x in (310, 540):
        draw.line([x, 760, x, 1020], fill="black", width=4)
    return image


@pytest.fixture(scope="module")
def default_boxes(detector, page) -> list[LayoutBox]:
    return detector.detect(page)


def test_loads_the_dynamic_model_with_its_labels(detector, tiny_layout_dir):
    from paddlex.modules.base.utils.pdparams2safetensors.inference_meta import build_inference_meta

    assert detector.model_name == "PP-DocLayoutV2"
    assert detector.engine == "paddle_dynamic"
    assert detector.spec.model_dir == tiny_layout_dir
    # The 25 labels, in id order, are the ones paddlex itself writes for PP-DocLayoutV2.
    assert detector.labels == LABELS == tuple(build_inference_meta("PP-DocLayoutV2")["label_list"])


def test_boxes_have_the_documented_structure(default_boxes):
    assert default_boxes, "the fixture model must find at least one box per page at the default thresholds"
    defaults = layout_settings(None).threshold
    width, height = PAGE_SIZE
    for box in default_boxes:
        assert isinstance(box, LayoutBox)
        assert box.label in LABELS and LABELS[box.cls_id] == box.label
        assert defaults[box.cls_id] < box.score <= 1.0
        x1, y1, x2, y2 = box.coordinate
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert box.polygon_points is None  # PP-DocLayoutV2 gives rectangles only


def test_reading_order_numbers_the_ordered_labels(default_boxes):
    orders = [box.order for box in default_boxes if box.order is not None]
    assert orders == list(range(1, len(orders) + 1))
    for box in default_boxes:
        assert (box.order is None) == (box.label in UNORDERED)


def test_numpy_pages_give_the_same_boxes(detector, page, default_boxes):
    import numpy as np

    assert detector.detect(np.asarray(page)) == default_boxes


def test_higher_thresholds_keep_fewer_boxes(detector, page):
    counts = [len(detector.detect(page, LayoutOptions(threshold=t, nms=False))) for t in (0.0, 0.5, 0.99)]
    assert counts[0] >= counts[1] >= counts[2]
    assert counts[0] > counts[2]
    assert counts[2] == 0  # random-weight scores stay below 0.99


def test_per_class_thresholds_with_json_keys(detector, page):
    # No NMS and no merging, so that boxes of other classes cannot remove boxes of the kept one.
    everything = detector.detect(page, LayoutOptions(threshold=0.0, nms=False, merge_bboxes_mode="union"))
    kept = everything[0].cls_id
    only_one = {str(i): (0.0 if i == kept else 1.0) for i in range(len(LABELS))}  # as JSON sends them
    request = InferRequest(file="x", layoutThreshold=only_one, layoutNms=False, layoutMergeBboxesMode="union")
    boxes = detector.detect(page, layout_options(request, LABELS))
    assert boxes and {box.cls_id for box in boxes} == {kept}
    assert len(boxes) == sum(box.cls_id == kept for box in everything)


def test_unclip_ratio_grows_the_boxes(detector, page):
    plain = detector.detect(page, LayoutOptions(threshold=0.0, nms=False))
    grown = detector.detect(page, LayoutOptions(threshold=0.0, nms=False, unclip_ratio=(1.5, 1.5)))
    area = lambda b: (b.coordinate[2] - b.coordinate[0]) * (b.coordinate[3] - b.coordinate[1])  # noqa: E731
    assert sum(map(area, grown)) > sum(map(area, plain))


def test_a_dir_missing_its_config_is_refused(tiny_layout_dir, tmp_path):
    broken = tmp_path / "PP-DocLayoutV2"
    shutil.copytree(tiny_layout_dir, broken)
    (broken / "config.json").unlink()
    with pytest.raises(LayoutModelError, match="config.json is missing"):
        PaddlexLayoutDetector.from_dir(broken)

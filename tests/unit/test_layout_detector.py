"""The layout detector's pure parts: engine and model choice from a directory, option mapping, results."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pydantic import ValidationError

from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.layout_model import (
    LayoutModelSpec,
    choose_engine,
    inspect_model_dir,
    model_name_for,
)
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.layout.base import LayoutBox, LayoutModelError, layout_settings
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.layout.paddle import (
    PaddlexLayoutDetector,
    box_from_paddlex,
    predict_kwargs,
    to_bgr_array,
)
from vllm_paddle_ocr.backends.vllm_paddle_ocr.recipe import PP_DOCLAYOUT_V2_LABELS
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.options import LayoutOptions, OptionsError, layout_options
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.protocol import InferRequest

TEXT, SEAL, TABLE, CHART, DOC_TITLE = (
    PP_DOCLAYOUT_V2_LABELS.index(name) for name in ("text", "seal", "table", "chart", "doc_title")
)


def make_dir(path: Path, *names: str, model_name: str | None = "PP-DocLayoutV2") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name in names:
        (path / name).write_bytes(b"")
    if model_name is not None:
        (path / "inference.yml").write_text(f"Global:\n  model_name: {model_name}\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- engine choice


@pytest.mark.parametrize(
    ("files", "engine"),
    [
        (("inference.json", "inference.pdiparams"), "paddle_static"),
        (("inference.pdmodel", "inference.pdiparams"), "paddle_static"),
        (("model.safetensors", "config.json"), "paddle_dynamic"),
        (("inference.onnx",), "onnxruntime"),
        # Both formats: the official one wins, as in paddlex.
        (("inference.json", "inference.pdiparams", "model.safetensors", "config.json"), "paddle_static"),
        (("model.safetensors", "config.json", "inference.onnx"), "paddle_dynamic"),
    ],
)
def test_engine_follows_the_files_present(files, engine):
    assert choose_engine(("inference.yml", *files)) == engine


def test_engine_needs_inference_yml():
    with pytest.raises(LayoutModelError, match="has no inference.yml") as err:
        choose_engine(["inference.json", "inference.pdiparams"], "/models/layout")
    assert "/models/layout" in str(err.value)


def test_half_a_model_names_the_missing_file():
    with pytest.raises(LayoutModelError) as err:
        choose_engine(["inference.yml", "inference.pdiparams"])
    message = str(err.value)
    assert "inference.json" in message and "missing" in message
    with pytest.raises(LayoutModelError, match="config.json is missing"):
        choose_engine(["inference.yml", "model.safetensors"])


def test_empty_dir_says_what_a_layout_model_needs(tmp_path):
    with pytest.raises(LayoutModelError) as err:
        inspect_model_dir(tmp_path)
    message = str(err.value)
    for needed in ("inference.yml", "inference.json", "inference.pdiparams", "model.safetensors", "inference.onnx"):
        assert needed in message
    assert "Found: nothing" in message


def test_missing_dir_is_reported(tmp_path):
    with pytest.raises(LayoutModelError, match="does not exist"):
        inspect_model_dir(tmp_path / "absent")


def test_weights_without_inference_yml_are_refused(tmp_path):
    make_dir(tmp_path / "PP-DocLayoutV2", "inference.json", "inference.pdiparams", model_name=None)
    with pytest.raises(LayoutModelError, match="inference.yml"):
        inspect_model_dir(tmp_path / "PP-DocLayoutV2")


# ---------------------------------------------------------------- model name


def test_model_name_comes_from_inference_yml(tmp_path):
    path = make_dir(tmp_path / "layout", "inference.json", "inference.pdiparams", model_name="PP-DocLayoutV3")
    assert inspect_model_dir(path) == LayoutModelSpec(path, "PP-DocLayoutV3", "paddle_static", "static", "inference.json")


def test_model_name_falls_back_to_the_dir_name():
    assert model_name_for({"mode": "paddle"}, "PP-DocLayoutV2") == "PP-DocLayoutV2"
    assert model_name_for(None, "PP-DocLayoutV3") == "PP-DocLayoutV3"


def test_requested_name_must_match_the_dir():
    assert model_name_for({"Global": {"model_name": "PP-DocLayoutV2"}}, "x", "PP-DocLayoutV2") == "PP-DocLayoutV2"
    assert model_name_for({}, "layout", "PP-DocLayoutV3") == "PP-DocLayoutV3"
    with pytest.raises(LayoutModelError, match="says 'PP-DocLayoutV2'"):
        model_name_for({"Global": {"model_name": "PP-DocLayoutV2"}}, "x", "PP-DocLayoutV3")


def test_unsupported_model_is_refused():
    with pytest.raises(LayoutModelError, match="PP-DocLayoutV2 or PP-DocLayoutV3"):
        model_name_for({"Global": {"model_name": "PP-DocLayout_plus-L"}}, "PP-DocLayout_plus-L")
    with pytest.raises(LayoutModelError, match="unsupported layout model 'layout'"):
        model_name_for({}, "layout")


# ---------------------------------------------------------------- request -> options -> engine keywords


def req(**fields: Any) -> InferRequest:
    return InferRequest.model_validate({"file": "x", **fields})


def kwargs_for(model_name: str = "PP-DocLayoutV2", **fields: Any) -> dict[str, Any]:
    """paddlex's keywords for a request's layout fields, through the one path a request takes."""
    return predict_kwargs(layout_settings(layout_options(req(**fields), PP_DOCLAYOUT_V2_LABELS), model_name))


def test_unset_options_get_paddleocr_vl_defaults():
    kwargs = kwargs_for()
    assert kwargs == predict_kwargs(layout_settings(None))
    threshold = kwargs["threshold"]
    assert isinstance(threshold, dict) and sorted(threshold) == list(range(25))
    assert threshold[TEXT] == 0.4 and threshold[DOC_TITLE] == 0.4
    assert threshold[SEAL] == 0.45 and threshold[TABLE] == 0.5
    assert kwargs["layout_nms"] is True
    assert kwargs["layout_unclip_ratio"] == (1.0, 1.0)
    merge = kwargs["layout_merge_bboxes_mode"]
    assert merge[CHART] == "large" and merge[DOC_TITLE] == "large" and merge[TEXT] == "union"
    assert kwargs["layout_shape_mode"] == "auto"
    assert kwargs["filter_overlap_boxes"] is False


def test_v3_default_threshold_is_flat():
    assert kwargs_for("PP-DocLayoutV3")["threshold"] == 0.3


def test_defaults_are_fresh_copies():
    kwargs = kwargs_for()
    kwargs["threshold"][TEXT] = 0.99
    kwargs["layout_merge_bboxes_mode"][TEXT] = "small"
    again = kwargs_for()
    assert again["threshold"][TEXT] == 0.4 and again["layout_merge_bboxes_mode"][TEXT] == "union"


def test_numbers_get_the_types_paddlex_tests_for():
    # paddlex filters only with isinstance(threshold, float) and unclips only a float or a pair.
    kwargs = kwargs_for(layoutThreshold=0, layoutUnclipRatio=1, layoutMergeBboxesMode="small", layoutNms=False)
    assert kwargs["threshold"] == 0.0 and type(kwargs["threshold"]) is float
    assert kwargs["layout_unclip_ratio"] == (1.0, 1.0)
    assert all(type(v) is float for v in kwargs["layout_unclip_ratio"])
    assert kwargs["layout_merge_bboxes_mode"] == "small"
    assert kwargs["layout_nms"] is False


def test_per_class_keys_from_json_become_ints():
    kwargs = kwargs_for(
        layoutThreshold={"22": 0.3, "21": 1},
        layoutUnclipRatio={"3": 1.2, "21": [1.0, 1.5]},
        layoutMergeBboxesMode={"5": "large", "text": "small"},
    )
    assert kwargs["threshold"] == {22: 0.3, 21: 1.0}
    assert all(type(k) is int and type(v) is float for k, v in kwargs["threshold"].items())
    assert kwargs["layout_unclip_ratio"] == {3: (1.2, 1.2), 21: (1.0, 1.5)}
    assert kwargs["layout_merge_bboxes_mode"] == {5: "large", TEXT: "small"}


def test_shape_mode_is_passed_through():
    assert kwargs_for("PP-DocLayoutV3", layoutShapeMode="poly")["layout_shape_mode"] == "poly"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"layoutMergeBboxesMode": "biggest"}, "layoutMergeBboxesMode"),
        ({"layoutMergeBboxesMode": {"3": "biggest"}}, "layoutMergeBboxesMode"),
        ({"layoutUnclipRatio": [1.0, 1.0, 1.0]}, "layoutUnclipRatio"),
        ({"layoutShapeMode": "circle"}, "layoutShapeMode"),
        ({"layoutThreshold": 1.5}, "between 0 and 1"),
    ],
)
def test_invalid_values_are_refused_where_the_request_is_read(fields, message):
    with pytest.raises(ValidationError, match=message):
        req(**fields)


def test_class_names_need_the_models_labels():
    with pytest.raises(OptionsError, match="keys must be class ids; got: 'text'"):
        layout_options(req(layoutThreshold={"text": 0.3}))


# ---------------------------------------------------------------- results and images


def test_box_from_paddlex():
    raw = {"cls_id": 22, "label": "text", "score": 0.875, "coordinate": [10, 20, 300, 40], "order": 3}
    assert box_from_paddlex(raw) == LayoutBox(22, "text", 0.875, (10, 20, 300, 40), 3, None)
    picture = {"cls_id": 14, "label": "image", "score": 0.9, "coordinate": [0, 0, 5, 5], "order": None}
    assert box_from_paddlex(picture).order is None


def test_box_from_paddlex_takes_numpy_values():
    np = pytest.importorskip("numpy")
    raw = {
        "cls_id": np.int64(5),
        "label": "display_formula",
        "score": np.float32(0.5),
        "coordinate": [np.float32(1.5), np.float32(2.0), np.float32(30.0), np.float32(40.25)],
        "order": np.int64(1),
        "polygon_points": np.array([[1.5, 2.0], [30.0, 2.0], [30.0, 40.25]], dtype=np.float32),
    }
    box = box_from_paddlex(raw)
    assert (box.cls_id, box.score, box.order) == (5, 0.5, 1)
    assert box.coordinate == (1.5, 2.0, 30.0, 40.25) and all(type(v) is float for v in box.coordinate)
    assert box.polygon_points == ((1.5, 2.0), (30.0, 2.0), (30.0, 40.25))


def test_images_become_bgr_arrays():
    np = pytest.importorskip("numpy")
    from PIL import Image

    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # red
    for image in (Image.fromarray(rgb), rgb, np.dstack([rgb, np.full((4, 6), 255, np.uint8)])):
        bgr = to_bgr_array(image)
        assert bgr.shape == (4, 6, 3) and bgr.flags["C_CONTIGUOUS"]
        assert (bgr[..., 2] == 200).all() and (bgr[..., 0] == 0).all()
    gray = to_bgr_array(Image.fromarray(np.full((3, 3), 7, np.uint8)))
    assert gray.shape == (3, 3, 3) and (gray == 7).all()
    with pytest.raises(ValueError, match="HxWx3"):
        to_bgr_array(np.zeros((2, 2, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        to_bgr_array(np.zeros((2, 2, 3), dtype=np.float32))


# ---------------------------------------------------------------- the paddlex edge around a stand-in model


class RecordingModel:
    """Stands in for a paddlex layout model: records calls, returns one box per image, checks overlap."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Any], dict[str, Any]]] = []
        self.running = 0
        self.max_running = 0

    def predict(self, images, batch_size=None, **kwargs):
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        time.sleep(0.02)
        self.calls.append((images, {"batch_size": batch_size, **kwargs}))
        self.running -= 1
        for image in images:
            height, width = image.shape[:2]
            box = {"cls_id": 22, "label": "text", "score": 0.9, "coordinate": [0, 0, width, height], "order": 1}
            yield {"boxes": [box]}


def recording_detector(model_name: str = "PP-DocLayoutV2") -> tuple[PaddlexLayoutDetector, RecordingModel]:
    model = RecordingModel()
    spec = LayoutModelSpec(Path("layout"), model_name, "paddle_dynamic")
    return PaddlexLayoutDetector(model, spec, PP_DOCLAYOUT_V2_LABELS), model


def test_detect_sends_bgr_pages_and_mapped_options():
    np = pytest.importorskip("numpy")
    from PIL import Image

    detector, model = recording_detector("PP-DocLayoutV3")
    boxes = detector.detect(Image.new("RGB", (30, 20), (255, 0, 0)), LayoutOptions(threshold={22: 0.6}))
    assert boxes == [LayoutBox(22, "text", 0.9, (0, 0, 30, 20), 1)]
    (images, kwargs), = model.calls
    assert len(images) == 1 and images[0].shape == (20, 30, 3)
    assert (images[0][..., 2] == 255).all() and (images[0][..., 0] == 0).all()
    assert kwargs["threshold"] == {22: 0.6} and kwargs["batch_size"] == 1
    assert kwargs["filter_overlap_boxes"] is False
    assert detector.detect(np.zeros((5, 5, 3), np.uint8))[0].coordinate == (0, 0, 5, 5)


def test_detect_batch_returns_one_list_per_page():
    np = pytest.importorskip("numpy")
    detector, model = recording_detector()
    pages = [np.zeros((10, 10 + i, 3), np.uint8) for i in range(3)]
    result = detector.detect_batch(pages)
    assert [boxes[0].coordinate[2] for boxes in result] == [10, 11, 12]
    assert len(model.calls) == 1 and model.calls[0][1]["batch_size"] == 3
    assert detector.detect_batch([]) == []


def test_concurrent_detects_never_overlap_in_the_model():
    np = pytest.importorskip("numpy")
    detector, model = recording_detector()
    page = np.zeros((8, 8, 3), np.uint8)
    threads = [threading.Thread(target=detector.detect, args=(page,)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(model.calls) == 6
    assert model.max_running == 1

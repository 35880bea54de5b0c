"""A request split into layout, VLM and page options, with errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from vllm_paddle_ocr.backends.vllm_paddle_ocr.recipe import (
    PP_DOCLAYOUT_V2_LABELS,
    V2_DEFAULT_MERGE_BBOXES_MODE,
    V2_DEFAULT_THRESHOLD,
)
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.options import (
    OptionsError,
    layout_options,
    page_options,
    request_options,
    skip_special_tokens_for,
    vlm_options,
)
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.protocol import InferRequest


def req(**fields: Any) -> InferRequest:
    return InferRequest.model_validate({"file": "x", **fields})


# ---------------------------------------------------------------- layout


def test_layout_defaults_are_left_to_the_model() -> None:
    opts = layout_options(req())
    assert (opts.threshold, opts.nms, opts.unclip_ratio, opts.merge_bboxes_mode, opts.shape_mode) == (
        None,
        None,
        None,
        None,
        "auto",
    )


def test_per_class_json_keys_become_class_ids() -> None:
    opts = layout_options(
        req(
            layoutThreshold={"22": 0.3, "5": 1},
            layoutUnclipRatio={"21": 1.1, "14": [1.0, 1.2]},
            layoutMergeBboxesMode={"3": "small"},
        ),
        PP_DOCLAYOUT_V2_LABELS,
    )
    assert opts.threshold == {22: 0.3, 5: 1.0}
    assert isinstance(opts.threshold[5], float)
    assert opts.unclip_ratio == {21: (1.1, 1.1), 14: (1.0, 1.2)}
    assert opts.merge_bboxes_mode == {3: "small"}


def test_scalars_are_normalised() -> None:
    opts = layout_options(req(layoutThreshold=1, layoutUnclipRatio=2, layoutMergeBboxesMode="large", layoutNms=False))
    assert opts.threshold == 1.0 and isinstance(opts.threshold, float)
    assert opts.unclip_ratio == (2.0, 2.0)
    assert opts.merge_bboxes_mode == "large" and opts.nms is False


def test_labels_may_name_classes_when_known() -> None:
    assert layout_options(req(layoutThreshold={"text": 0.2}), PP_DOCLAYOUT_V2_LABELS).threshold == {22: 0.2}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"layoutThreshold": {"text": 0.2}}, "`layoutThreshold` keys must be class ids; got: 'text'"),
        ({"layoutThreshold": {"-1": 0.2}}, "class ids must be >= 0"),
    ],
)
def test_bad_class_keys_without_labels(fields: dict, message: str) -> None:
    with pytest.raises(OptionsError, match=message) as info:
        layout_options(req(**fields))
    assert info.value.field == next(iter(fields))


def test_class_ids_are_range_checked_with_labels() -> None:
    with pytest.raises(OptionsError, match="class ids must be 0-24; got: '25'"):
        layout_options(req(layoutMergeBboxesMode={"25": "large"}), PP_DOCLAYOUT_V2_LABELS)


def test_v2_defaults_match_paddlex_config() -> None:
    yaml = pytest.importorskip("yaml")
    paddlex = pytest.importorskip("paddlex")
    import os

    path = os.path.join(os.path.dirname(paddlex.__file__), "configs", "pipelines", "PaddleOCR-VL.yaml")
    with open(path, encoding="utf-8") as f:
        layout = yaml.safe_load(f)["SubModules"]["LayoutDetection"]
    assert V2_DEFAULT_THRESHOLD == layout["threshold"]
    assert V2_DEFAULT_MERGE_BBOXES_MODE == layout["layout_merge_bboxes_mode"]
    assert tuple(layout["layout_unclip_ratio"]) == (1.0, 1.0) and layout["layout_nms"] is True


# ---------------------------------------------------------------- VLM


def test_default_chat_body() -> None:
    body = vlm_options(req()).chat_body(
        model="PaddleOCR-VL-0.9B", image_url="data:image/jpeg;base64,AA", prompt="OCR:", kind="ocr"
    )
    assert body == {
        "model": "PaddleOCR-VL-0.9B",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AA"}},
                    {"type": "text", "text": "OCR:"},
                ],
            }
        ],
        "temperature": 0.0,
        "max_completion_tokens": 4096,
        "skip_special_tokens": True,
        "mm_processor_kwargs": {"min_pixels": 112896, "max_pixels": 1003520},
    }


def test_sampling_fields_only_when_set() -> None:
    fields = vlm_options(req(temperature=0.7, topP=0.9, repetitionPenalty=1.05, maxNewTokens=100)).request_fields(
        "table"
    )
    assert fields["temperature"] == 0.7 and fields["top_p"] == 0.9
    assert fields["repetition_penalty"] == 1.05 and fields["max_completion_tokens"] == 100


def test_spotting_has_its_own_pixel_range_and_keeps_special_tokens() -> None:
    opts = vlm_options(req(maxPixels=2000000))
    fields = opts.request_fields("spotting", skip_special_tokens=skip_special_tokens_for(["ocr", "spotting"]))
    assert fields["mm_processor_kwargs"] == {"min_pixels": 112896, "max_pixels": 1605632}
    assert fields["skip_special_tokens"] is False
    assert skip_special_tokens_for(["ocr", "table"]) is True


def test_request_pixels_then_extra_args_per_kind() -> None:
    opts = vlm_options(
        req(minPixels=1000, maxPixels=5000, vlmExtraArgs={"table_max_pixels": 9000, "formula_min_pixels": 2000})
    )
    assert opts.pixel_limits("ocr") == (1000, 5000)
    assert opts.pixel_limits("table") == (1000, 9000)
    assert opts.pixel_limits("formula") == (2000, 5000)


def test_extra_args_override_request_fields() -> None:
    opts = vlm_options(
        req(temperature=0.2, vlmExtraArgs={"temperature": 0.5, "max_new_tokens": 64, "min_pixels": 3000})
    )
    assert opts.temperature == 0.5 and opts.max_completion_tokens == 64
    assert opts.pixel_limits("chart") == (3000, 1003520)


def test_unknown_extra_args_are_ignored_and_reported() -> None:
    opts = vlm_options(req(vlmExtraArgs={"use_cache": True, "skip_special_tokens": False, "top_p": None}))
    assert opts.ignored_extra_args == ("skip_special_tokens", "use_cache")
    assert "top_p" not in opts.request_fields("ocr")


@pytest.mark.parametrize(
    "extra",
    [
        {"temperature": -1},
        {"top_p": 0},
        {"repetition_penalty": "high"},
        {"max_new_tokens": 1.5},
        {"max_new_tokens": True},
        {"table_min_pixels": 0},
    ],
)
def test_bad_extra_args_are_refused_where_the_request_is_read(extra: dict) -> None:
    with pytest.raises(ValidationError) as info:
        req(vlmExtraArgs=extra)
    (error,) = info.value.errors()
    assert error["loc"] == ("vlmExtraArgs", next(iter(extra)))


def test_pixel_ranges_that_cross_name_the_field() -> None:
    with pytest.raises(OptionsError) as info:
        vlm_options(req(vlmExtraArgs={"seal_min_pixels": 5000, "seal_max_pixels": 100}))
    assert info.value.error_dict()["loc"] == "body.vlmExtraArgs"
    assert info.value.error_dict()["msg"].startswith("Value error, minimum pixels (5000) for seal blocks")
    with pytest.raises(OptionsError) as info:
        vlm_options(req(minPixels=5000, maxPixels=5000, vlmExtraArgs={"table_max_pixels": 100}))
    assert info.value.field == "vlmExtraArgs"


# ---------------------------------------------------------------- page


def test_page_defaults_and_model_settings() -> None:
    page = page_options(req())
    assert page.use_layout_detection and page.merge_layout_blocks and page.prettify_markdown
    assert page.model_settings() == {
        "use_doc_preprocessor": False,
        "use_layout_detection": True,
        "use_chart_recognition": False,
        "use_seal_recognition": False,
        "use_ocr_for_image_block": False,
        "format_block_content": False,
        "merge_layout_blocks": True,
        "markdown_ignore_labels": [
            "number",
            "footnote",
            "header",
            "header_image",
            "footer",
            "footer_image",
            "aside_text",
        ],
        "return_layout_polygon_points": True,
    }


def test_markdown_ignore_labels_override_and_rect_shape() -> None:
    page = page_options(req(markdownIgnoreLabels=["header"], layoutShapeMode="rect", mergeLayoutBlocks=False))
    assert page.markdown_ignore_labels == ("header",)
    assert page.model_settings()["return_layout_polygon_points"] is False
    assert page.merge_layout_blocks is False


def test_no_layout_detection_uses_the_prompt_label() -> None:
    page = page_options(req(useLayoutDetection=False, promptLabel="chart"), model_version="0.9B")
    assert page.prompt_label == "chart" and page.recognition.chart
    assert page_options(req(useLayoutDetection=False)).prompt_label == "ocr"
    assert page_options(req(promptLabel="table")).prompt_label is None  # ignored with layout detection


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"useLayoutDetection": False, "promptLabel": "spotting"}, "promptLabel", "needs PaddleOCR-VL 1.5"),
        ({"useSealRecognition": True}, "useSealRecognition", "needs PaddleOCR-VL 1.5"),
        ({"useDocUnwarping": True}, "useDocUnwarping", "not supported by this server"),
        ({"outputFormats": ["docx"]}, "outputFormats", "not supported by this server"),
    ],
)
def test_unsupported_combinations(fields: dict, field: str, message: str) -> None:
    with pytest.raises(OptionsError, match=message) as info:
        page_options(req(**fields), model_version="0.9B")
    assert info.value.field == field


def test_doc_preprocessing_when_allowed() -> None:
    page = page_options(req(useDocOrientationClassify=True), allow_doc_preprocessing=True)
    assert page.model_settings()["use_doc_preprocessor"] is True


def test_request_options_bundle() -> None:
    opts = request_options(req(useSealRecognition=True, temperature=0.1), model_version="1.5")
    assert opts.page.recognition.seal and opts.vlm.temperature == 0.1 and opts.layout.shape_mode == "auto"

"""Label -> prompt, picture labels, promptLabel for pages without layout detection."""

from __future__ import annotations

import pytest
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.recognition.prompts import (
    PromptLabelError,
    Recognition,
    check_prompt_label,
    has_v15_prompts,
    kind_for_label,
    prompt_for_label,
    recognition_for_prompt_label,
)

DEFAULT = Recognition()


@pytest.mark.parametrize(
    ("label", "prompt"),
    [
        ("table", "Table Recognition:"),
        ("display_formula", "Formula Recognition:"),
        ("inline_formula", "Formula Recognition:"),
        ("formula", "Formula Recognition:"),
        ("formula_number", "OCR:"),
        ("text", "OCR:"),
        ("header", "OCR:"),
        ("footer", "OCR:"),
        ("number", "OCR:"),
        ("doc_title", "OCR:"),
        ("spotting", "Spotting:"),
    ],
)
def test_prompts_by_label(label: str, prompt: str) -> None:
    assert prompt_for_label(label, DEFAULT) == prompt


@pytest.mark.parametrize("label", ["image", "header_image", "footer_image", "chart", "seal"])
def test_pictures_are_not_recognised_by_default(label: str) -> None:
    assert prompt_for_label(label, DEFAULT) is None
    assert label in DEFAULT.picture_labels()


def test_chart_and_seal_recognition_switch_their_prompts_on() -> None:
    rec = Recognition(chart=True, seal=True)
    assert prompt_for_label("chart", rec) == "Chart Recognition:"
    assert prompt_for_label("seal", rec) == "Seal Recognition:"
    assert {"chart", "seal"}.isdisjoint(rec.picture_labels())


def test_ocr_for_image_blocks_sends_pictures_as_ocr() -> None:
    rec = Recognition(ocr_for_image_blocks=True)
    assert prompt_for_label("image", rec) == "OCR:"
    assert prompt_for_label("chart", rec) is None  # chart still needs chart recognition


def test_image_labels_keep_seals_and_unrecognised_charts() -> None:
    assert DEFAULT.image_labels() == {"image", "header_image", "footer_image", "seal", "chart"}
    assert Recognition(chart=True, seal=True).image_labels() == {"image", "header_image", "footer_image", "seal"}


def test_tables_and_pictures_never_merge() -> None:
    assert DEFAULT.non_merge_labels() == {"image", "header_image", "footer_image", "chart", "seal", "table"}
    assert Recognition(True, True, True).non_merge_labels() == {"table"}


def test_kinds_select_pixel_limits() -> None:
    assert kind_for_label("display_formula", DEFAULT) == "formula"
    assert kind_for_label("vertical_text", DEFAULT) == "ocr"


@pytest.mark.parametrize(("given", "label"), [(None, "ocr"), ("ocr", "ocr"), ("TABLE", "table"), ("chart", "chart")])
def test_prompt_label_defaults_and_case(given: str | None, label: str) -> None:
    assert check_prompt_label(given, "0.9B") == label


def test_unknown_prompt_label_lists_the_allowed_ones() -> None:
    with pytest.raises(PromptLabelError, match="one of: ocr, formula, table, chart, seal, spotting; got: poem"):
        check_prompt_label("poem")


@pytest.mark.parametrize("label", ["seal", "spotting"])
def test_seal_and_spotting_need_version_1_5(label: str) -> None:
    assert check_prompt_label(label, "1.5") == label
    with pytest.raises(PromptLabelError, match="needs PaddleOCR-VL 1.5 or later"):
        check_prompt_label(label, "0.9B")
    assert has_v15_prompts("1.6") and not has_v15_prompts("0.9B")


def test_prompt_label_chart_or_seal_turns_that_recognition_on() -> None:
    assert recognition_for_prompt_label("chart", DEFAULT).chart
    assert recognition_for_prompt_label("seal", DEFAULT).seal
    assert recognition_for_prompt_label("table", DEFAULT) == DEFAULT

"""Which prompt each layout label gets, and which labels stay pictures instead of text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vllm_paddle_ocr.plugin.errors import VllmPaddleOcrError

# Task kinds: the prompt and the pixel limits of a request both follow from the kind.
Kind = Literal["ocr", "table", "chart", "formula", "seal", "spotting"]

PROMPTS: dict[str, str] = {
    "ocr": "OCR:",
    "table": "Table Recognition:",
    "chart": "Chart Recognition:",
    "formula": "Formula Recognition:",
    "seal": "Seal Recognition:",
    "spotting": "Spotting:",
}

# Layout labels that are pictures by nature (never recognised unless useOcrForImageBlock).
IMAGE_LABELS: tuple[str, ...] = ("image", "header_image", "footer_image")

# promptLabel values accepted when layout detection is off, in PaddleX's order.
PROMPT_LABELS: tuple[str, ...] = ("ocr", "formula", "table", "chart", "seal", "spotting")

# Prompts only the 1.5 generation and later were trained on.
V15_ONLY_KINDS: frozenset[str] = frozenset({"seal", "spotting"})


class PromptLabelError(VllmPaddleOcrError):
    """A promptLabel this model cannot answer."""


def has_v15_prompts(model_version: str) -> bool:
    """True for PaddleOCR-VL 1.5 and later (``model_version`` as in model_repo: 0.9B, 1.5, 1.6)."""
    return model_version != "0.9B"


@dataclass(frozen=True)
class Recognition:
    """Which optional recognitions a request switched on."""

    chart: bool = False
    seal: bool = False
    ocr_for_image_blocks: bool = False

    def picture_labels(self) -> frozenset[str]:
        """Labels kept as pictures and not sent to the VLM."""
        labels = set() if self.ocr_for_image_blocks else set(IMAGE_LABELS)
        if not self.chart:
            labels.add("chart")
        if not self.seal:
            labels.add("seal")
        return frozenset(labels)

    def image_labels(self) -> frozenset[str]:
        """Labels whose crop is also saved as a markdown picture (seals always are)."""
        labels = set(IMAGE_LABELS) | {"seal"}
        if not self.chart:
            labels.add("chart")
        return frozenset(labels)

    def non_merge_labels(self) -> frozenset[str]:
        """Labels never merged with neighbouring text blocks."""
        return self.picture_labels() | {"table"}


def kind_for_label(label: str, recognition: Recognition) -> Kind | None:
    """The recognition task for a block label, or None when the block stays a picture."""
    if label in recognition.picture_labels():
        return None
    if label == "table":
        return "table"
    if label == "chart" and recognition.chart:
        return "chart"
    if "formula" in label and label != "formula_number":
        return "formula"
    if label == "spotting":
        return "spotting"
    if label == "seal" and recognition.seal:
        return "seal"
    return "ocr"


def prompt_for_label(label: str, recognition: Recognition) -> str | None:
    """The prompt text for a block label, or None when the block stays a picture."""
    kind = kind_for_label(label, recognition)
    return None if kind is None else PROMPTS[kind]


def check_prompt_label(prompt_label: str | None, model_version: str = "1.5") -> str:
    """Validate ``promptLabel`` (layout detection off) and return the block label to use.

    Missing means "ocr"; case is ignored as PaddleX does.
    """
    label = (prompt_label or "ocr").lower()
    if label not in PROMPT_LABELS:
        raise PromptLabelError(f"`promptLabel` must be one of: {', '.join(PROMPT_LABELS)}; got: {prompt_label}")
    if label in V15_ONLY_KINDS and not has_v15_prompts(model_version):
        raise PromptLabelError(
            f"`promptLabel` {label!r} needs PaddleOCR-VL 1.5 or later; this server runs "
            f"PaddleOCR-VL-{model_version}. Use one of: ocr, formula, table, chart"
        )
    return label


def recognition_for_prompt_label(label: str, recognition: Recognition) -> Recognition:
    """Layout detection off: asking for chart or seal switches that recognition on."""
    if label == "chart":
        return Recognition(True, recognition.seal, recognition.ocr_for_image_blocks)
    if label == "seal":
        return Recognition(recognition.chart, True, recognition.ocr_for_image_blocks)
    return recognition

"""A ``/layout-parsing`` request turned into the options of each stage, in one pass after the schema.

Three groups: layout detection (what a layout engine runs with), VLM generation (the body of each
chat completion sent to vLLM) and page assembly (markdown and ``prunedResult``). The schema
(`protocol.InferRequest`) has checked every value's type and range; what it cannot know is checked
here, once: class ids against the layout model's labels, features the served model lacks, and
ranges that combine several fields. Such a value is an :class:`OptionsError`, which names the field
and what it accepts. Engines only fill in defaults.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vllm_paddle_ocr.plugin.errors import VllmPaddleOcrError

from ..recipe import (
    DEFAULT_MARKDOWN_IGNORE_LABELS,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_PIXELS,
    DEFAULT_TEMPERATURE,
    SPOTTING_PIXELS,
)
from .page_range import PageRange
from .protocol import InferRequest
from .recognition.prompts import (
    Kind,
    PromptLabelError,
    Recognition,
    check_prompt_label,
    has_v15_prompts,
    recognition_for_prompt_label,
)

PIXEL_KINDS: tuple[str, ...] = ("ocr", "table", "chart", "formula", "seal")
T = TypeVar("T")


class OptionsError(VllmPaddleOcrError):
    """A request option has a value this server cannot use; the message says what is allowed."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name

    def error_dict(self) -> dict[str, str]:
        """One entry of a PaddleX-style 422 errorMsg list."""
        return {"type": "value_error", "loc": f"body.{self.field}", "msg": f"Value error, {self}"}


# ---------------------------------------------------------------- layout detection


@dataclass(frozen=True)
class LayoutOptions:
    """Layout detection settings a request gave; None means PaddleOCR-VL's default (see layout.base)."""

    threshold: float | dict[int, float] | None = None
    nms: bool | None = None
    unclip_ratio: tuple[float, float] | dict[int, tuple[float, float]] | None = None
    merge_bboxes_mode: str | dict[int, str] | None = None
    shape_mode: str = "auto"


def _class_id(field_name: str, key: Any, labels: Sequence[str]) -> int:
    """A per-class dict key: a class id (JSON makes it a string) or, when labels are known, a label."""
    if isinstance(key, int) and not isinstance(key, bool):
        class_id = key
    elif isinstance(key, str) and key.strip().lstrip("-").isdigit():
        class_id = int(key)
    elif isinstance(key, str) and key in labels:
        return labels.index(key)
    else:
        names = f" or a label ({', '.join(labels)})" if labels else ""
        raise OptionsError(field_name, f"`{field_name}` keys must be class ids{names}; got: {key!r}")
    if class_id < 0 or (labels and class_id >= len(labels)):
        top = f" 0-{len(labels) - 1}" if labels else " >= 0"
        raise OptionsError(field_name, f"`{field_name}` class ids must be{top}; got: {key!r}")
    return class_id


def _ratio_pair(value: Any) -> tuple[float, float]:
    """An unclip ratio as a (width, height) pair: one number stands for both."""
    if isinstance(value, (list, tuple)):
        return (float(value[0]), float(value[1]))
    return (float(value), float(value))


def _per_class(field_name: str, value: Any, convert: Any, labels: Sequence[str]) -> Any:
    """A layout option as engines take it: None, one converted value, or converted values by class id."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {_class_id(field_name, k, labels): convert(v) for k, v in value.items()}
    return convert(value)


def layout_options(request: InferRequest, labels: Sequence[str] = ()) -> LayoutOptions:
    """Layout settings of a request, per-class dict keys turned into class ids.

    ``labels`` are the layout model's classes in id order (e.g. PP_DOCLAYOUT_V2_LABELS): keys may
    then name a label and ids are range-checked; with () any non-negative id is accepted.
    """
    return LayoutOptions(
        threshold=_per_class("layoutThreshold", request.layoutThreshold, float, labels),
        nms=request.layoutNms,
        unclip_ratio=_per_class("layoutUnclipRatio", request.layoutUnclipRatio, _ratio_pair, labels),
        merge_bboxes_mode=_per_class("layoutMergeBboxesMode", request.layoutMergeBboxesMode, str, labels),
        shape_mode=request.layoutShapeMode,
    )


# ---------------------------------------------------------------- VLM generation


@dataclass(frozen=True)
class VlmOptions:
    """Sampling and image-size settings for the chat completion of every block."""

    temperature: float = DEFAULT_TEMPERATURE
    max_completion_tokens: int = DEFAULT_MAX_NEW_TOKENS
    top_p: float | None = None
    repetition_penalty: float | None = None
    pixels: Mapping[str, tuple[int, int]] = field(
        default_factory=lambda: {k: (DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS) for k in PIXEL_KINDS}
    )
    ignored_extra_args: tuple[str, ...] = ()

    def pixel_limits(self, kind: Kind) -> tuple[int, int]:
        """(min_pixels, max_pixels) for a task kind; spotting has its own fixed range."""
        if kind == "spotting":
            return SPOTTING_PIXELS
        return self.pixels[kind]

    def request_fields(self, kind: Kind, *, skip_special_tokens: bool = True) -> dict[str, Any]:
        """Every chat-completion field except ``model`` and ``messages`` (vLLM reads them at top level)."""
        min_pixels, max_pixels = self.pixel_limits(kind)
        body: dict[str, Any] = {"temperature": self.temperature}
        if self.top_p is not None:
            body["top_p"] = self.top_p
        body["max_completion_tokens"] = self.max_completion_tokens
        body["skip_special_tokens"] = skip_special_tokens
        if self.repetition_penalty is not None:
            body["repetition_penalty"] = self.repetition_penalty
        body["mm_processor_kwargs"] = {"min_pixels": min_pixels, "max_pixels": max_pixels}
        return body

    def chat_body(
        self, *, model: str, image_url: str, prompt: str, kind: Kind, skip_special_tokens: bool = True
    ) -> dict[str, Any]:
        """The whole chat-completion body for one block: its image first, then the prompt."""
        message = {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_url}},
                {"type": "text", "text": prompt},
            ],
        }
        return {
            "model": model,
            "messages": [message],
            **self.request_fields(kind, skip_special_tokens=skip_special_tokens),
        }


def skip_special_tokens_for(kinds: Iterable[str]) -> bool:
    """Spotting answers are made of special location tokens, so keep them whenever one is asked."""
    return "spotting" not in set(kinds)


def vlm_options(request: InferRequest) -> VlmOptions:
    """Generation settings: request fields, then ``vlmExtraArgs`` on top (PaddleX's precedence)."""
    extra = request.vlmExtraArgs
    given = extra.model_dump(exclude_none=True) if extra is not None else {}
    ignored = tuple(sorted((extra.model_extra or {}) if extra is not None else ()))

    def pick(key: str, own: T | None, default: T) -> T:
        value = given.get(key, own)
        return default if value is None else value

    base = (pick("min_pixels", request.minPixels, DEFAULT_MIN_PIXELS), pick("max_pixels", request.maxPixels, DEFAULT_MAX_PIXELS))
    pixels: dict[str, tuple[int, int]] = {}
    for kind in PIXEL_KINDS:
        low, high = given.get(f"{kind}_min_pixels", base[0]), given.get(f"{kind}_max_pixels", base[1])
        if low > high:
            per_kind = f"{kind}_min_pixels" in given or f"{kind}_max_pixels" in given
            raise OptionsError(
                "vlmExtraArgs" if per_kind or "min_pixels" in given or "max_pixels" in given else "minPixels",
                f"minimum pixels ({low}) for {kind} blocks cannot be greater than the maximum ({high})",
            )
        pixels[kind] = (low, high)
    return VlmOptions(
        temperature=pick("temperature", request.temperature, DEFAULT_TEMPERATURE),
        max_completion_tokens=pick("max_new_tokens", request.maxNewTokens, DEFAULT_MAX_NEW_TOKENS),
        top_p=given.get("top_p", request.topP),
        repetition_penalty=given.get("repetition_penalty", request.repetitionPenalty),
        pixels=pixels,
        ignored_extra_args=ignored,
    )


# ---------------------------------------------------------------- page assembly


@dataclass(frozen=True)
class PageOptions:
    """What the pipeline does around recognition and how pages are written out."""

    use_layout_detection: bool = True
    prompt_label: str | None = None  # block label used when layout detection is off
    recognition: Recognition = Recognition()
    merge_layout_blocks: bool = True
    markdown_ignore_labels: tuple[str, ...] = DEFAULT_MARKDOWN_IGNORE_LABELS
    format_block_content: bool = False
    use_doc_preprocessor: bool = False
    return_layout_polygon_points: bool = True
    prettify_markdown: bool = True
    show_formula_number: bool = False
    return_markdown_images: bool = True
    restructure_pages: bool = False
    merge_tables: bool = True
    relevel_titles: bool = True
    page_range: PageRange | None = None  # None: every page

    def model_settings(self) -> dict[str, Any]:
        """``prunedResult.model_settings`` as PaddleX reports it."""
        return {
            "use_doc_preprocessor": self.use_doc_preprocessor,
            "use_layout_detection": self.use_layout_detection,
            "use_chart_recognition": self.recognition.chart,
            "use_seal_recognition": self.recognition.seal,
            "use_ocr_for_image_block": self.recognition.ocr_for_image_blocks,
            "format_block_content": self.format_block_content,
            "merge_layout_blocks": self.merge_layout_blocks,
            "markdown_ignore_labels": list(self.markdown_ignore_labels),
            "return_layout_polygon_points": self.return_layout_polygon_points,
        }


def page_options(
    request: InferRequest, *, model_version: str = "1.5", allow_doc_preprocessing: bool = False
) -> PageOptions:
    """Pipeline switches of a request, with PaddleX's defaults for those left out."""
    if request.outputFormats:
        raise OptionsError(
            "outputFormats", "`outputFormats` (document exports) is not supported by this server; leave it out"
        )
    wants_preprocessing = bool(request.useDocOrientationClassify or request.useDocUnwarping)
    if wants_preprocessing and not allow_doc_preprocessing:
        name = "useDocOrientationClassify" if request.useDocOrientationClassify else "useDocUnwarping"
        raise OptionsError(name, f"`{name}` is not supported by this server; leave it out or set it to false")
    seal = bool(request.useSealRecognition)
    if seal and not has_v15_prompts(model_version):
        raise OptionsError(
            "useSealRecognition",
            f"`useSealRecognition` needs PaddleOCR-VL 1.5 or later; this server runs PaddleOCR-VL-{model_version}",
        )
    recognition = Recognition(bool(request.useChartRecognition), seal, bool(request.useOcrForImageBlock))
    use_layout = True if request.useLayoutDetection is None else request.useLayoutDetection
    prompt_label = None
    if not use_layout:
        try:
            prompt_label = check_prompt_label(request.promptLabel, model_version)
        except PromptLabelError as exc:
            raise OptionsError("promptLabel", str(exc)) from None
        recognition = recognition_for_prompt_label(prompt_label, recognition)
    ignore = (
        DEFAULT_MARKDOWN_IGNORE_LABELS if request.markdownIgnoreLabels is None else tuple(request.markdownIgnoreLabels)
    )
    return PageOptions(
        use_layout_detection=use_layout,
        prompt_label=prompt_label,
        recognition=recognition,
        merge_layout_blocks=True if request.mergeLayoutBlocks is None else request.mergeLayoutBlocks,
        markdown_ignore_labels=ignore,
        format_block_content=bool(request.formatBlockContent),
        use_doc_preprocessor=wants_preprocessing,
        return_layout_polygon_points=request.layoutShapeMode != "rect",
        prettify_markdown=request.prettifyMarkdown,
        show_formula_number=request.showFormulaNumber,
        return_markdown_images=request.returnMarkdownImages,
        restructure_pages=request.restructurePages,
        merge_tables=request.mergeTables,
        relevel_titles=request.relevelTitles,
        page_range=PageRange.parse(request.pageRange) if request.pageRange is not None else None,
    )


@dataclass(frozen=True)
class RequestOptions:
    """All options of one ``/layout-parsing`` request."""

    layout: LayoutOptions
    vlm: VlmOptions
    page: PageOptions


def request_options(
    request: InferRequest,
    *,
    model_version: str = "1.5",
    layout_labels: Sequence[str] = (),
    allow_doc_preprocessing: bool = False,
) -> RequestOptions:
    """Check and split a request into per-stage options; raises OptionsError."""
    return RequestOptions(
        layout=layout_options(request, layout_labels),
        vlm=vlm_options(request),
        page=page_options(request, model_version=model_version, allow_doc_preprocessing=allow_doc_preprocessing),
    )

"""A ``/layout-parsing`` request turned into the options of each stage.

Three groups: layout detection (passed to paddlex's layout model), VLM generation (the body of
each chat completion sent to vLLM) and page assembly (markdown and ``prunedResult``). Values a
schema cannot check (dict keys, ``vlmExtraArgs``, combinations) are checked here and reported as
:class:`OptionsError`, which names the field and what it accepts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vllm_paddle_ocr.plugin.errors import VllmPaddleOcrError

from .output.markdown import DEFAULT_MARKDOWN_IGNORE_LABELS
from .recognition.prompts import Kind, PromptLabelError, Recognition, check_prompt_label, has_v15_prompts, recognition_for_prompt_label
from .protocol import MERGE_BBOXES_MODES, InferRequest

# PP-DocLayoutV2 class ids, in order (PP-DocLayoutV3 numbers its classes differently).
PP_DOCLAYOUT_V2_LABELS: tuple[str, ...] = (
    "abstract", "algorithm", "aside_text", "chart", "content", "display_formula", "doc_title",
    "figure_title", "footer", "footer_image", "footnote", "formula_number", "header",
    "header_image", "image", "inline_formula", "number", "paragraph_title", "reference",
    "reference_content", "seal", "table", "text", "vertical_text", "vision_footnote",
)  # fmt: skip

# PaddleX's pipeline configuration for PaddleOCR-VL (PP-DocLayoutV2), used when a request sets nothing.
_LOWER_THRESHOLD = {"display_formula": 0.4, "doc_title": 0.4, "inline_formula": 0.4,
                    "paragraph_title": 0.4, "text": 0.4, "vertical_text": 0.4, "seal": 0.45}  # fmt: skip
_LARGE_MERGE = {"chart", "display_formula", "doc_title", "inline_formula", "paragraph_title"}
V2_DEFAULT_THRESHOLD: dict[int, float] = {
    i: _LOWER_THRESHOLD.get(label, 0.5) for i, label in enumerate(PP_DOCLAYOUT_V2_LABELS)
}
V2_DEFAULT_MERGE_BBOXES_MODE: dict[int, str] = {
    i: "large" if label in _LARGE_MERGE else "union" for i, label in enumerate(PP_DOCLAYOUT_V2_LABELS)
}
V3_DEFAULT_THRESHOLD = 0.3  # PaddleOCR-VL 1.5/1.6 with PP-DocLayoutV3
DEFAULT_UNCLIP_RATIO: tuple[float, float] = (1.0, 1.0)
DEFAULT_LAYOUT_NMS = True

# Generation defaults PaddleX uses against an OpenAI-compatible vLLM server.
DEFAULT_TEMPERATURE = 0.0
DEFAULT_MAX_NEW_TOKENS = 4096
DEFAULT_MIN_PIXELS = 112896
DEFAULT_MAX_PIXELS = 1003520
SPOTTING_PIXELS: tuple[int, int] = (112896, 1605632)
PIXEL_KINDS: tuple[str, ...] = ("ocr", "table", "chart", "formula", "seal")


# vlmExtraArgs keys PaddleX acts on; anything else it silently ignores (and so do we).
EXTRA_ARG_KEYS: frozenset[str] = frozenset(
    {"min_pixels", "max_pixels", "temperature", "top_p", "repetition_penalty", "max_new_tokens"}
    | {f"{kind}_{bound}_pixels" for kind in PIXEL_KINDS for bound in ("min", "max")}
)


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
    """Layout detection settings; None means PaddleOCR-VL's default (see layout_detector.predict_kwargs)."""

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


def _ratio_pair(field_name: str, value: Any) -> tuple[float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        pair = (float(value), float(value))
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        pair = (float(value[0]), float(value[1]))
    else:
        raise OptionsError(field_name, f"`{field_name}` must be a number or two numbers; got: {value!r}")
    if pair[0] <= 0 or pair[1] <= 0:
        raise OptionsError(field_name, f"`{field_name}` must be > 0; got: {value!r}")
    return pair


def layout_options(request: InferRequest, labels: Sequence[str] = ()) -> LayoutOptions:
    """Layout settings of a request, per-class dict keys turned into class ids.

    ``labels`` are the layout model's classes in id order (e.g. PP_DOCLAYOUT_V2_LABELS): keys may
    then name a label and ids are range-checked; with () any non-negative id is accepted.
    """
    threshold: float | dict[int, float] | None = None
    if isinstance(request.layoutThreshold, dict):
        threshold = {_class_id("layoutThreshold", k, labels): float(v) for k, v in request.layoutThreshold.items()}
    elif request.layoutThreshold is not None:
        threshold = float(request.layoutThreshold)

    unclip: tuple[float, float] | dict[int, tuple[float, float]] | None = None
    if isinstance(request.layoutUnclipRatio, dict):
        unclip = {
            _class_id("layoutUnclipRatio", k, labels): _ratio_pair("layoutUnclipRatio", v)
            for k, v in request.layoutUnclipRatio.items()
        }
    elif request.layoutUnclipRatio is not None:
        unclip = _ratio_pair("layoutUnclipRatio", request.layoutUnclipRatio)

    merge: str | dict[int, str] | None = None
    if isinstance(request.layoutMergeBboxesMode, dict):
        merge = {}
        for k, v in request.layoutMergeBboxesMode.items():
            if v not in MERGE_BBOXES_MODES:
                raise OptionsError(
                    "layoutMergeBboxesMode",
                    f"`layoutMergeBboxesMode` values must be one of: {', '.join(MERGE_BBOXES_MODES)}; got: {v!r}",
                )
            merge[_class_id("layoutMergeBboxesMode", k, labels)] = v
    elif request.layoutMergeBboxesMode is not None:
        merge = request.layoutMergeBboxesMode

    return LayoutOptions(threshold, request.layoutNms, unclip, merge, request.layoutShapeMode)


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


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise OptionsError(name, f"`{name}` must be a positive integer; got: {value!r}")
    return value


def _number(name: str, value: Any, *, low: float, low_ok: bool, high: float | None = None) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value >= low if low_ok else value > low) and (high is None or value <= high)
    if not ok:
        bound = f"{'≥' if low_ok else '>'} {low:g}" + (f" and ≤ {high:g}" if high is not None else "")
        raise OptionsError(name, f"`{name}` must be a number {bound}; got: {value!r}")
    return float(value)


def vlm_options(request: InferRequest) -> VlmOptions:
    """Generation settings: request fields, then ``vlmExtraArgs`` on top (PaddleX's precedence)."""
    extra = dict(request.vlmExtraArgs or {})
    ignored = tuple(sorted(k for k in extra if k not in EXTRA_ARG_KEYS))
    extra = {k: v for k, v in extra.items() if k in EXTRA_ARG_KEYS and v is not None}

    def pick(key: str, own: Any) -> tuple[str, Any]:
        return (f"vlmExtraArgs.{key}", extra[key]) if key in extra else (key, own)

    name, value = pick("temperature", request.temperature)
    temperature = DEFAULT_TEMPERATURE if value is None else _number(name, value, low=0, low_ok=True)
    name, value = pick("top_p", request.topP)
    top_p = None if value is None else _number(name, value, low=0, low_ok=False, high=1)
    name, value = pick("repetition_penalty", request.repetitionPenalty)
    repetition_penalty = None if value is None else _number(name, value, low=0, low_ok=False)
    name, value = pick("max_new_tokens", request.maxNewTokens)
    max_tokens = DEFAULT_MAX_NEW_TOKENS if value is None else _positive_int(name, value)

    name, value = pick("min_pixels", request.minPixels)
    base_min = DEFAULT_MIN_PIXELS if value is None else _positive_int(name, value)
    name, value = pick("max_pixels", request.maxPixels)
    base_max = DEFAULT_MAX_PIXELS if value is None else _positive_int(name, value)
    pixels: dict[str, tuple[int, int]] = {}
    for kind in PIXEL_KINDS:
        low_key, high_key = f"{kind}_min_pixels", f"{kind}_max_pixels"
        low = _positive_int(f"vlmExtraArgs.{low_key}", extra[low_key]) if low_key in extra else base_min
        high = _positive_int(f"vlmExtraArgs.{high_key}", extra[high_key]) if high_key in extra else base_max
        if low > high:
            raise OptionsError(
                "vlmExtraArgs" if (low_key in extra or high_key in extra) else "minPixels",
                f"minimum pixels ({low}) for {kind} blocks cannot be greater than the maximum ({high})",
            )
        pixels[kind] = (low, high)
    return VlmOptions(temperature, max_tokens, top_p, repetition_penalty, pixels, ignored)


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

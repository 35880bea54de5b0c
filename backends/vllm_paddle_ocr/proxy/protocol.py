"""PaddleX's serving contract for PaddleOCR-VL: ``/layout-parsing`` and ``/restructure-pages``.

Field names, types, defaults and checks follow paddlex's serving schema so existing clients work
unchanged. Responses are serialised with :func:`dump_response`, which drops null model fields as
PaddleX does (values inside ``prunedResult``, a plain dict, keep their nulls).
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, Optional, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..recipe import MERGE_BBOXES_MODES
from .page_range import PageRange
from .recognition.prompts import PROMPT_LABELS

INFER_ENDPOINT = "/layout-parsing"
RESTRUCTURE_PAGES_ENDPOINT = "/restructure-pages"

OUTPUT_FORMATS: tuple[str, ...] = ("docx",)
# Bounds on what a body may carry besides its file: every PaddleX body nests a few levels, and a
# logId is echoed in every answer and log line.
MAX_JSON_DEPTH = 32
MAX_LOG_ID_LENGTH = 128
LogId = Annotated[str, Field(max_length=MAX_LOG_ID_LENGTH)]
# Optional fields this server reads beyond PaddleX's schema, by request model.
SERVER_ADDITIONS: dict[str, tuple[str, ...]] = {"InferRequest": ("pageRange",)}

PositiveInt = Annotated[int, Field(gt=0)]
FileType = Literal[0, 1]
# vlmExtraArgs is an untyped dict on the wire: its values are held to real numbers (no strings, no booleans).
_Pixels = Optional[Annotated[int, Field(gt=0, strict=True)]]


def _check_output_formats(formats: list[str] | None) -> list[str] | None:
    for fmt in formats or []:
        if fmt not in OUTPUT_FORMATS:
            raise ValueError(f"Unsupported `outputFormats` entry {fmt!r}. Supported values: {sorted(OUTPUT_FORMATS)}")
    return formats


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _OutputFormats(BaseModel):
    outputFormats: list[str] | None = None

    @field_validator("outputFormats")
    @classmethod
    def _formats(cls, v: list[str] | None) -> list[str] | None:
        return _check_output_formats(v)


class VlmExtraArgs(BaseModel):
    """``vlmExtraArgs``: the generation settings PaddleX acts on; other keys are kept and ignored, as PaddleX does."""

    model_config = ConfigDict(extra="allow")

    temperature: Optional[Annotated[float, Field(ge=0, strict=True)]] = None
    top_p: Optional[Annotated[float, Field(gt=0, le=1, strict=True)]] = None
    repetition_penalty: Optional[Annotated[float, Field(gt=0, strict=True)]] = None
    max_new_tokens: Optional[Annotated[int, Field(gt=0, strict=True)]] = None
    min_pixels: _Pixels = None
    max_pixels: _Pixels = None
    ocr_min_pixels: _Pixels = None
    ocr_max_pixels: _Pixels = None
    table_min_pixels: _Pixels = None
    table_max_pixels: _Pixels = None
    chart_min_pixels: _Pixels = None
    chart_max_pixels: _Pixels = None
    formula_min_pixels: _Pixels = None
    formula_max_pixels: _Pixels = None
    seal_min_pixels: _Pixels = None
    seal_max_pixels: _Pixels = None


class InferRequest(_OutputFormats):
    """Body of ``POST /layout-parsing``."""

    file: str
    fileType: FileType | None = None
    useDocOrientationClassify: bool | None = None
    useDocUnwarping: bool | None = None
    useLayoutDetection: bool | None = None
    useChartRecognition: bool | None = None
    useSealRecognition: bool | None = None
    useOcrForImageBlock: bool | None = None
    layoutThreshold: float | dict | None = None
    layoutNms: bool | None = None
    layoutUnclipRatio: float | tuple[float, float] | dict | None = None
    layoutMergeBboxesMode: str | dict | None = None
    layoutShapeMode: Literal["rect", "quad", "poly", "auto"] = "auto"
    promptLabel: str | None = None
    formatBlockContent: bool | None = None
    repetitionPenalty: float | None = None
    temperature: float | None = None
    topP: float | None = None
    minPixels: PositiveInt | None = None
    maxPixels: PositiveInt | None = None
    maxNewTokens: PositiveInt | None = None
    mergeLayoutBlocks: bool | None = None
    markdownIgnoreLabels: list[str] | None = None
    vlmExtraArgs: VlmExtraArgs | None = None
    prettifyMarkdown: bool = True
    showFormulaNumber: bool = False
    returnMarkdownImages: bool = True
    restructurePages: bool = False
    mergeTables: bool = True
    relevelTitles: bool = True
    visualize: bool | None = None
    logId: LogId | None = None
    pageRange: str | None = None  # this server's addition: 1-based pages to parse, e.g. "1-3,7"

    @field_validator("pageRange")
    @classmethod
    def _page_range(cls, v: str | None) -> str | None:
        if v is not None:
            PageRange.parse(v)
        return v

    @field_validator("topP")
    @classmethod
    def _top_p(cls, v: float | None) -> float | None:
        if v is not None and not 0 < v <= 1:
            raise ValueError(f"`topP` must be > 0 and ≤ 1; got: {v}")
        return v

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: float | None) -> float | None:
        if v is not None and v < 0:
            raise ValueError(f"`temperature` must be ≥ 0; got: {v}")
        return v

    @field_validator("repetitionPenalty")
    @classmethod
    def _repetition_penalty(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError(f"`repetitionPenalty` must be > 0; got: {v}")
        return v

    @field_validator("promptLabel")
    @classmethod
    def _prompt_label(cls, v: str | None) -> str | None:
        if v is not None and v not in PROMPT_LABELS:
            raise ValueError(f"`promptLabel` must be one of: {', '.join(PROMPT_LABELS)}; got: {v}")
        return v

    @field_validator("layoutMergeBboxesMode")
    @classmethod
    def _merge_mode(cls, v: str | dict | None) -> str | dict | None:
        allowed = ", ".join(MERGE_BBOXES_MODES)
        values = list(v.values()) if isinstance(v, dict) else [v]
        for value in values:
            if value is not None and value not in MERGE_BBOXES_MODES:
                raise ValueError(f"`layoutMergeBboxesMode` values must be one of: {allowed}; got: {value!r}")
        return v

    @field_validator("layoutUnclipRatio")
    @classmethod
    def _unclip_ratio(cls, v: Any) -> Any:
        items = v.items() if isinstance(v, dict) else [(None, v)]
        for key, value in items:
            where = "" if key is None else f" value for key '{key}'"
            pair = list(value) if isinstance(value, (list, tuple)) else None
            if value is None and key is None:
                continue
            if pair is not None:
                if len(pair) != 2 or not all(_is_number(x) for x in pair):
                    raise ValueError(f"`layoutUnclipRatio`{where} must be a number or two numbers; got: {value!r}")
                if any(x <= 0 for x in pair):
                    raise ValueError(f"`layoutUnclipRatio`{where} values must be > 0; got: {value!r}")
            elif not _is_number(value):
                raise ValueError(f"`layoutUnclipRatio`{where} must be a number or two numbers; got: {value!r}")
            elif value <= 0:
                raise ValueError(f"`layoutUnclipRatio`{where} must be > 0; got: {value}")
        return v

    @field_validator("layoutThreshold")
    @classmethod
    def _threshold(cls, v: Any) -> Any:
        items = v.items() if isinstance(v, dict) else [(None, v)]
        for key, value in items:
            where = "" if key is None else f" value for key '{key}'"
            if value is None and key is None:
                continue
            if not _is_number(value):
                raise ValueError(f"`layoutThreshold`{where} must be a number; got: {type(value).__name__}")
            if not 0 <= value <= 1:
                raise ValueError(f"`layoutThreshold`{where} must be between 0 and 1 inclusive; got: {value}")
        return v

    @model_validator(mode="after")
    def _pixel_range(self) -> InferRequest:
        if self.minPixels is not None and self.maxPixels is not None and self.minPixels > self.maxPixels:
            raise ValueError(f"`minPixels` ({self.minPixels}) cannot be greater than `maxPixels` ({self.maxPixels})")
        return self


class ExportContent(BaseModel):
    """One exported document: base64 content or a URL, and its file name."""

    content: str
    fileName: str


class DocumentExports(BaseModel):
    """Extra formats requested through ``outputFormats``."""

    model_config = ConfigDict(extra="forbid")

    docx: ExportContent | None = None


class MarkdownData(BaseModel):
    """A page's markdown and the pictures it references (path -> base64 JPEG)."""

    text: str
    images: dict[str, str] | None = None


class LayoutParsingResult(BaseModel):
    """One page of the answer."""

    prunedResult: dict
    markdown: MarkdownData
    outputImages: dict[str, str] | None = None
    inputImage: str | None = None
    exports: DocumentExports | None = None


class ImageInfo(BaseModel):
    width: int
    height: int
    type: Literal["image"] = "image"


class PDFPageInfo(BaseModel):
    width: int
    height: int


class PDFInfo(BaseModel):
    numPages: int
    pages: list[PDFPageInfo]
    type: Literal["pdf"] = "pdf"


class TIFFInfo(BaseModel):
    numPages: int
    pages: list[PDFPageInfo]
    type: Literal["tiff"] = "tiff"


DataInfo = Union[ImageInfo, PDFInfo, TIFFInfo]


class InferResult(BaseModel):
    """``result`` of ``/layout-parsing``."""

    layoutParsingResults: list[LayoutParsingResult]
    dataInfo: DataInfo


class Page(BaseModel):
    """One page handed back to ``/restructure-pages``."""

    prunedResult: dict
    markdownImages: dict[str, str] | None = None


FiniteNumber = Annotated[float, Field(allow_inf_nan=False)]


class _KeepsExtras(BaseModel):
    model_config = ConfigDict(extra="allow")


class ParsingBlock(_KeepsExtras):
    """One entry of ``parsing_res_list`` as /restructure-pages reads it back."""

    block_label: str
    block_bbox: Annotated[list[FiniteNumber], Field(min_length=4, max_length=4)]
    block_content: str | None = ""
    group_id: int | None = None
    block_polygon_points: list[tuple[FiniteNumber, FiniteNumber]] | None = None


class PrunedModelSettings(_KeepsExtras):
    """The ``model_settings`` /restructure-pages writes markdown by."""

    use_layout_detection: bool | None = None
    use_chart_recognition: bool | None = None
    use_seal_recognition: bool | None = None
    use_ocr_for_image_block: bool | None = None
    use_doc_preprocessor: bool | None = None
    format_block_content: bool | None = None
    markdown_ignore_labels: list[str] = []


class LayoutDetResult(_KeepsExtras):
    """``layout_det_res``: the detector's boxes, kept as they are."""

    boxes: list[dict[str, Any]] = []


class PrunedResult(_KeepsExtras):
    """The parts of a page's ``prunedResult`` that /restructure-pages reads; other keys are kept as sent."""

    width: PositiveInt
    height: PositiveInt
    page_count: int | None = None
    model_settings: PrunedModelSettings | None = None
    parsing_res_list: list[ParsingBlock] = []
    layout_det_res: LayoutDetResult | None = None
    spotting_res: dict[str, Any] | None = None
    doc_preprocessor_res: dict[str, Any] | None = None


class RestructurePagesRequest(_OutputFormats):
    """Body of ``POST /restructure-pages``."""

    pages: list[Page]
    mergeTables: bool = True
    relevelTitles: bool = True
    concatenatePages: bool = False
    prettifyMarkdown: bool = True
    showFormulaNumber: bool = False
    returnMarkdownImages: bool = True
    logId: LogId | None = None


class RestructurePagesResult(BaseModel):
    """``result`` of ``/restructure-pages``."""

    layoutParsingResults: list[LayoutParsingResult]


class JobError(BaseModel):
    """Why a job failed or was cancelled, as the error answer of its result would say."""

    errorCode: int
    errorMsg: str


class JobStatus(BaseModel):
    """``result`` of ``/layout-parsing/jobs`` (POST, GET, DELETE): where a job stands. Times are ISO 8601 UTC."""

    jobId: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    pagesDone: int
    pagesTotal: Optional[int] = None  # None until the document is opened (a URL is fetched when the job runs)
    queuePosition: Optional[int] = None  # jobs ahead of it on its instance (0: next); None once not queued
    createdAt: str
    startedAt: Optional[str] = None
    finishedAt: Optional[str] = None
    expiresAt: Optional[str] = None  # when a finished job's result is removed
    error: Optional[JobError] = None


class PartialResult(BaseModel):
    """``result`` of a job's result before it is done (HTTP 202): the pages finished so far, and the status."""

    layoutParsingResults: list[LayoutParsingResult]
    job: JobStatus


ResultT = TypeVar("ResultT", bound=BaseModel)


class ResultResponse(BaseModel, Generic[ResultT]):
    """Success envelope: ``{logId, result, errorCode: 0, errorMsg: "Success"}``."""

    logId: str
    result: ResultT
    errorCode: Literal[0] = 0
    errorMsg: Literal["Success"] = "Success"


class ErrorResponse(BaseModel):
    """Error (and health) envelope: ``{logId, errorCode, errorMsg}``; errorCode is the HTTP status."""

    logId: str
    errorCode: int
    errorMsg: str


def dump_response(model: BaseModel) -> dict[str, Any]:
    """JSON-ready dict of a response, null model fields left out as PaddleX's server does."""
    return model.model_dump(mode="json", exclude_none=True)

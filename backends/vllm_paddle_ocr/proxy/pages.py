"""One page's own work, off the event loop: render, detect, plan and encode; then assemble its result.

`prepare_page` runs before recognition (the page's picture, boxes, block plan and one JPEG per VLM
task); `assemble_page` after it (post-processing, markdown, prunedResult, pictures). Both are plain
functions of a page and the request's options, run in worker threads by the pipeline.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from PIL import Image

from .blocks import (
    Block,
    PagePlan,
    ParsedBlock,
    Task,
    crop,
    crop_size,
    finish_page,
    pad_to_aspect,
    paint_markers,
    plan_page,
    stack_image,
    trim_formula_margin,
)
from .drawing import draw_layout, jpeg_base64
from .errors import ProxyError
from .inputs import Document, render_page
from .layout.base import LayoutBox, LayoutDetector, whole_page_box
from .options import RequestOptions
from .output.markdown import MarkdownStyle, page_markdown
from .output.pruned import pruned_result
from .output.restructuring import restructure_pages
from .recognition.postprocess import parse_spotting, postprocess_block_text, spotting_upscale
from .recognition.prompts import Recognition
from .recognition.vlm_client import jpeg_data_url
from ..recipe import DEFAULT_MARKDOWN_IGNORE_LABELS

log = logging.getLogger("vllm_paddle_ocr.proxy")


class DetectionError(ProxyError):
    """The layout model failed on a page."""

    status_code = 500


@dataclass
class PreparedPage:
    """A page after the CPU work before recognition: its picture, boxes, plan and one data URL per task."""

    index: int
    image: Image.Image
    boxes: list[LayoutBox]
    plan: PagePlan
    tasks: list[tuple[int, Task]]
    image_urls: list[str]
    image_sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) of each task's picture


@dataclass(frozen=True)
class PageOutput:
    """One entry of `layoutParsingResults` (null fields already left out), the page's size, and the
    blocks and context it was written from (for restructuring across pages)."""

    result: dict[str, Any]
    size: tuple[int, int]
    blocks: tuple[ParsedBlock, ...] = ()
    context: Optional["PageContext"] = None


def _use_polygons(options: RequestOptions) -> bool:
    if options.layout.shape_mode == "rect":
        return False
    try:
        import shapely  # noqa: F401 - polygon overlap needs it
    except ImportError:
        return False
    return True


def task_image(page: Image.Image, block: Block, task: Task, *, use_polygon: bool) -> Image.Image:
    """The picture sent for one task: a crop or a stack, markers painted, margin trimmed, upscaled, padded."""
    if task.stack is not None:
        image = stack_image(page, task.stack, use_polygon=use_polygon)
    else:
        image = crop(page, block, use_polygon=use_polygon)
    if task.markers:
        image = paint_markers(image, task.markers)
    if task.trim_margin:
        image = trim_formula_margin(image)
    if task.upscale:
        size = spotting_upscale(*image.size)
        if size != image.size:
            image = image.resize(size, Image.Resampling.LANCZOS)
    return pad_to_aspect(image)


def prepare_page(
    document: Document,
    index: int,
    options: RequestOptions,
    detector: Optional[LayoutDetector],
    owner: Hashable = None,
) -> PreparedPage:
    """Render, detect and plan one page and encode its task pictures (runs in a worker thread).

    ``owner`` is the request the page belongs to: a batching detector takes pages from requests in turn.
    """
    page = render_page(document, index)
    size = page.size
    settings = options.page
    if settings.use_layout_detection:
        if detector is None:
            raise ProxyError("layout detection was asked for but this server has no layout model", status_code=503)
        try:
            boxes = detector.detect(page, options.layout, owner=owner)
        except Exception as exc:  # noqa: BLE001 - the model's failure, reported with the page
            log.exception("layout detection failed on page %d", index + 1)
            raise DetectionError(f"Page {index + 1}: layout detection failed ({type(exc).__name__}: {exc})") from exc
        planned_boxes = boxes
    else:
        boxes = []
        planned_boxes = [whole_page_box(settings.prompt_label or "ocr", *size)]
    use_polygons = _use_polygons(options)
    plan = plan_page(
        planned_boxes,
        size,
        settings.recognition,
        merge_layout_blocks=settings.merge_layout_blocks,
        use_polygons=use_polygons,
        collect_figures=settings.use_layout_detection,
    )
    tasks = plan.tasks()
    urls, sizes = [], []
    for position, task in tasks:
        picture = task_image(page, plan.blocks[position].block, task, use_polygon=use_polygons)
        urls.append(jpeg_data_url(picture))
        sizes.append(picture.size)
    return PreparedPage(index, page, boxes, plan, tasks, urls, sizes)


@dataclass(frozen=True)
class PageContext:
    """What a page's prunedResult and markdown are written from, besides its blocks."""

    width: int
    height: int
    model_settings: Mapping[str, Any]
    layout_boxes: Optional[list[Any]] = None
    spotting: Optional[dict[str, Any]] = None
    page_count: Optional[int] = None
    doc_preprocessor: Optional[Mapping[str, Any]] = None
    figure_paths: tuple[str, ...] = ()
    page_index: Optional[int] = None  # the page's place in its document, when a pageRange chose it

    @property
    def recognition(self) -> Recognition:
        settings = self.model_settings
        return Recognition(
            bool(settings.get("use_chart_recognition", False)),
            bool(settings.get("use_seal_recognition", False)),
            bool(settings.get("use_ocr_for_image_block", False)),
        )

    def markdown(
        self, blocks: Sequence[ParsedBlock], *, prettify: bool, show_formula_number: bool
    ) -> tuple[str, list[str]]:
        """Markdown of blocks written with this page's settings, and the picture paths it comes with."""
        settings = self.model_settings
        return page_markdown(
            blocks,
            page_width=self.width,
            style=MarkdownStyle(prettify, self.recognition, bool(settings.get("use_layout_detection", True))),
            ignore_labels=settings.get("markdown_ignore_labels", DEFAULT_MARKDOWN_IGNORE_LABELS),
            show_formula_number=show_formula_number,
            figure_paths=self.figure_paths,
        )


def write_page(
    blocks: Sequence[ParsedBlock],
    context: PageContext,
    *,
    prettify: bool,
    show_formula_number: bool,
    global_ids: Optional[Sequence[tuple[int, int]]] = None,
) -> tuple[dict[str, Any], str, list[str]]:
    """A page's prunedResult, markdown text and the picture paths its markdown comes with."""
    markdown_text, paths = context.markdown(blocks, prettify=prettify, show_formula_number=show_formula_number)
    settings = context.model_settings
    pruned = pruned_result(
        blocks,
        width=context.width,
        height=context.height,
        model_settings=settings,
        layout_boxes=context.layout_boxes if settings.get("use_layout_detection", True) else None,
        page_count=context.page_count,
        spotting=context.spotting,
        doc_preprocessor=context.doc_preprocessor,
        recognition=context.recognition,
        global_ids=global_ids,
        page_index=context.page_index,
    )
    return pruned, markdown_text, paths


def assemble_page(
    prepared: PreparedPage, texts: Sequence[str], options: RequestOptions, *, visualize: bool
) -> PageOutput:
    """Post-process the page's answers and write its PaddleX result (runs in a worker thread)."""
    page, plan, settings = prepared.image, prepared.plan, options.page
    width, height = page.size
    contents: dict[int, str] = {}
    spotting: Optional[dict[str, Any]] = None
    for (position, task), raw in zip(prepared.tasks, texts):
        block = plan.blocks[position].block
        text = postprocess_block_text(block.label, raw)
        if task.kind == "spotting":
            text, spotting = parse_spotting(text, *crop_size(block.bbox, width, height))
        contents[position] = text
    parsed = finish_page(plan, contents)
    context = PageContext(
        width,
        height,
        settings.model_settings(),
        layout_boxes=[box.as_paddlex() for box in prepared.boxes],
        spotting=spotting or None,
        figure_paths=tuple(figure.path for figure in plan.figures),
        page_index=prepared.index if settings.page_range is not None else None,
    )
    pruned, markdown_text, paths = write_page(
        parsed, context, prettify=settings.prettify_markdown, show_formula_number=settings.show_formula_number
    )
    markdown: dict[str, Any] = {"text": markdown_text}
    if settings.return_markdown_images:
        markdown["images"] = _markdown_images(page, parsed, plan, paths, _use_polygons(options))
    result: dict[str, Any] = {"prunedResult": pruned, "markdown": markdown}
    if visualize:
        output_images = {}
        if settings.use_layout_detection:
            output_images["layout_det_res"] = jpeg_base64(draw_layout(page, prepared.boxes))
        result["outputImages"] = output_images
        result["inputImage"] = jpeg_base64(page)
    return PageOutput(result, (width, height), tuple(parsed), context)


def _markdown_images(
    page: Image.Image, parsed: Sequence[ParsedBlock], plan: PagePlan, paths: Sequence[str], use_polygons: bool
) -> dict[str, str]:
    """`markdown.images`: each picture path of the page's markdown mapped to its JPEG."""
    figures = {figure.path: figure.bbox for figure in plan.figures}
    blocks = {b.picture: b for b in parsed if b.picture is not None}
    images: dict[str, str] = {}
    for path in paths:
        if path in blocks:
            b = blocks[path]
            picture = crop(page, Block(label=b.label, bbox=b.bbox, polygon=b.polygon), use_polygon=use_polygons)
        elif path in figures:
            picture = page.crop(figures[path])
        else:
            continue
        images[path] = jpeg_base64(picture)
    return images


def restructure_outputs(
    outputs: Sequence[PageOutput],
    *,
    merge_tables: bool,
    relevel_titles: bool,
    prettify: bool,
    show_formula_number: bool,
) -> None:
    """restructurePages on /layout-parsing: tables merged across pages, titles re-levelled, in place."""
    pages, ids = restructure_pages([o.blocks for o in outputs], merge_tables=merge_tables, relevel=relevel_titles)
    for output, blocks, page_ids in zip(outputs, pages, ids):
        pruned, text, _ = write_page(
            blocks, output.context, prettify=prettify, show_formula_number=show_formula_number, global_ids=page_ids
        )
        output.result["prunedResult"] = pruned
        output.result["markdown"]["text"] = text

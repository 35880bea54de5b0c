"""One /layout-parsing document from pages to PaddleX's results: detect, plan, recognise, assemble.

Pages go through a bounded window (a long PDF is never rendered all at once); CPU work of a page
(rendering, detection, crops, JPEG encoding, assembly) runs in worker threads, and its blocks go to
vLLM concurrently through the shared fair client. The first failure cancels the rest of the
document and names the page and block.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import logging
from dataclasses import dataclass
from typing import Any, Hashable, Mapping, Optional, Sequence

import pydantic
from PIL import Image, ImageDraw, ImageFont

from .blocks import (
    Block,
    PagePlan,
    ParsedBlock,
    Task,
    block_from_box,
    crop,
    crop_size,
    finish_page,
    pad_to_aspect,
    paint_markers,
    plan_page,
    stack_image,
    trim_formula_margin,
    whole_page_block,
)
from .errors import InputError, ProxyError, UpstreamError, dotted_location
from .inputs import Document, render_page
from .layout.paddle import LayoutDetector
from .output.markdown import (
    DEFAULT_MARKDOWN_IGNORE_LABELS,
    MarkdownStyle,
    blocks_from_pruned,
    concatenated_pruned,
    page_markdown,
    pruned_result,
    restructure_pages,
)
from .metrics import ProxyMetrics
from .options import RequestOptions, skip_special_tokens_for
from .recognition.postprocess import parse_spotting, postprocess_block_text, spotting_upscale
from .recognition.prompts import Recognition
from .protocol import PrunedResult
from .recognition.vlm_client import VlmClient, VlmError, jpeg_data_url

log = logging.getLogger("vllm_paddle_ocr.proxy")

# PaddleX's server scales every returned picture to fit 2000x2000 and writes it with OpenCV's
# default JPEG quality.
OUTPUT_IMAGE_MAX = (2000, 2000)
OUTPUT_JPEG_QUALITY = 95
MAX_PAGES_IN_FLIGHT = 16


class DetectionError(ProxyError):
    """The layout model failed on a page."""

    status_code = 500


@dataclass
class PreparedPage:
    """A page after the CPU work before recognition: its picture, boxes, plan and one data URL per task."""

    index: int
    image: Image.Image
    boxes: list[dict[str, Any]]
    plan: PagePlan
    tasks: list[tuple[int, Task]]
    image_urls: list[str]


@dataclass(frozen=True)
class PageOutput:
    """One entry of `layoutParsingResults` (null fields already left out), the page's size, and the
    blocks and context it was written from (for restructuring across pages)."""

    result: dict[str, Any]
    size: tuple[int, int]
    blocks: tuple[ParsedBlock, ...] = ()
    context: Optional["PageContext"] = None


def _jsonable(value: Any) -> Any:
    """Plain JSON values from what a detector returns (numpy scalars and arrays included)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    return value


def box_dict(box: Any) -> dict[str, Any]:
    """A detector's box (LayoutBox, or a paddlex-style mapping) as paddlex writes it in `layout_det_res.boxes`."""
    if isinstance(box, Mapping):
        data = dict(box)
    elif hasattr(box, "model_dump"):
        data = box.model_dump()
    elif dataclasses.is_dataclass(box) and not isinstance(box, type):
        data = dataclasses.asdict(box)
    else:
        raise TypeError(f"a layout box must be a mapping, a pydantic model or a dataclass, got {type(box).__name__}")
    # paddlex writes `order` even when it is null, and `polygon_points` only when there are some.
    return {k: v for k, v in _jsonable(data).items() if v is not None or k == "order"}


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
    document: Document, index: int, options: RequestOptions, detector: Optional[LayoutDetector]
) -> PreparedPage:
    """Render, detect and plan one page and encode its task pictures (runs in a worker thread)."""
    page = render_page(document, index)
    size = page.size
    settings = options.page
    if settings.use_layout_detection:
        if detector is None:
            raise ProxyError("layout detection was asked for but this server has no layout model", status_code=503)
        try:
            boxes = [box_dict(b) for b in detector.detect(page, options.layout)]
        except Exception as exc:  # noqa: BLE001 - the model's failure, reported with the page
            log.exception("layout detection failed on page %d", index + 1)
            raise DetectionError(f"Page {index + 1}: layout detection failed ({type(exc).__name__}: {exc})") from exc
        detected = [block_from_box(b) for b in boxes]
    else:
        boxes = []
        detected = [whole_page_block(settings.prompt_label or "ocr", *size)]
    use_polygons = _use_polygons(options)
    plan = plan_page(
        detected,
        size,
        settings.recognition,
        merge_layout_blocks=settings.merge_layout_blocks,
        use_polygons=use_polygons,
        collect_figures=settings.use_layout_detection,
    )
    tasks = plan.tasks()
    urls = [
        jpeg_data_url(task_image(page, plan.blocks[position].block, task, use_polygon=use_polygons))
        for position, task in tasks
    ]
    return PreparedPage(index, page, boxes, plan, tasks, urls)


def jpeg_base64(image: Image.Image, max_size: tuple[int, int] = OUTPUT_IMAGE_MAX) -> str:
    """A returned picture: scaled down to fit `max_size` keeping its aspect, JPEG, base64."""
    width, height = image.size
    if width > max_size[0] or height > max_size[1]:
        factor = min(max_size[0] / width, max_size[1] / height)
        image = image.resize((max(1, int(width * factor)), max(1, int(height * factor))), Image.Resampling.BILINEAR)
    if image.mode != "RGB":
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=OUTPUT_JPEG_QUALITY)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


_PALETTE = [
    (255, 0, 0), (0, 160, 0), (0, 0, 255), (230, 140, 0), (160, 0, 200), (0, 170, 170), (200, 0, 100),
    (120, 120, 0), (0, 100, 200), (255, 90, 160), (90, 60, 20), (0, 200, 90),
]  # fmt: skip


def draw_layout(page: Image.Image, boxes: Sequence[Mapping[str, Any]]) -> Image.Image:
    """The page with every detected box outlined and labelled with its class and score."""
    out = page.convert("RGB")
    draw = ImageDraw.Draw(out)
    thickness = max(1, int(max(out.size) * 0.002))
    try:
        font: Any = ImageFont.load_default(size=int(0.018 * out.width) + 2)
    except TypeError:
        font = ImageFont.load_default()
    colors: dict[str, tuple[int, int, int]] = {}
    for box in boxes:
        label = str(box.get("label", "?"))
        color = colors.setdefault(label, _PALETTE[len(colors) % len(_PALETTE)])
        x1, y1, x2, y2 = (float(v) for v in box["coordinate"])
        draw.rectangle((x1, y1, x2, y2), outline=color, width=thickness)
        caption = f"{label} {float(box.get('score', 1.0)):.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), caption, font=font)
        lift = bottom - top + 2
        draw.rectangle((left, top - lift, right + 2, bottom - lift), fill=color)
        draw.text((x1 + 1, y1 - lift), caption, fill=(255, 255, 255), font=font)
    return out


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
        layout_boxes=prepared.boxes,
        spotting=_jsonable(spotting) if spotting else None,
        figure_paths=tuple(figure.path for figure in plan.figures),
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


# ---------------------------------------------------------------- restructuring pages


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


def _context_from_pruned(pruned: Mapping[str, Any]) -> PageContext:
    layout = pruned.get("layout_det_res")
    return PageContext(
        int(pruned["width"]),
        int(pruned["height"]),
        dict(pruned.get("model_settings") or {}),
        layout_boxes=list(layout.get("boxes") or []) if isinstance(layout, Mapping) else None,
        spotting=pruned.get("spotting_res") or None,
        page_count=pruned.get("page_count"),
        doc_preprocessor=pruned.get("doc_preprocessor_res"),
    )


def _checked_pruned(index: int, pruned: Mapping[str, Any]) -> dict[str, Any]:
    """A client's prunedResult with the fields restructuring reads checked (InputError names the first few)."""
    try:
        return PrunedResult.model_validate(pruned).model_dump(exclude_unset=True)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{dotted_location(e['loc'])}: {e['msg']}" for e in exc.errors()[:3])
        raise InputError(
            f"pages[{index}].prunedResult is not a PaddleX prunedResult ({problems}); "
            "send the prunedResult /layout-parsing returned"
        ) from None


def restructure_pruned_pages(
    pages: Sequence[tuple[Mapping[str, Any], Optional[Mapping[str, str]]]],
    *,
    merge_tables: bool,
    relevel_titles: bool,
    concatenate: bool,
    prettify: bool,
    show_formula_number: bool,
    return_images: bool,
) -> list[dict[str, Any]]:
    """/restructure-pages: `layoutParsingResults` from pages of (prunedResult, markdownImages)."""
    checked = [_checked_pruned(index, pruned) for index, (pruned, _) in enumerate(pages)]
    contexts = [_context_from_pruned(pruned) for pruned in checked]
    blocks = [blocks_from_pruned(pruned) for pruned in checked]
    if not pages:
        return []
    restructured, ids = restructure_pages(blocks, merge_tables=merge_tables, relevel=relevel_titles)
    if concatenate:
        flat = [b for page in restructured for b in page]
        flat_ids = [i for page_ids in ids for i in page_ids]
        pruned = concatenated_pruned(checked, flat, flat_ids)
        text, _ = contexts[0].markdown(flat, prettify=prettify, show_formula_number=show_formula_number)
        markdown: dict[str, Any] = {"text": text}
        if return_images:
            markdown["images"] = {k: v for _, images in pages for k, v in (images or {}).items()}
        return [{"prunedResult": pruned, "markdown": markdown}]
    results = []
    for (_, images), context, page_blocks, page_ids in zip(pages, contexts, restructured, ids):
        pruned, text, _ = write_page(
            page_blocks, context, prettify=prettify, show_formula_number=show_formula_number, global_ids=page_ids
        )
        markdown = {"text": text}
        if return_images and images is not None:
            markdown["images"] = dict(images)
        results.append({"prunedResult": pruned, "markdown": markdown})
    return results


def default_pages_in_flight(concurrency: int) -> int:
    """Enough pages ahead to keep every VLM slot busy (a page has tens of blocks), bounded for memory."""
    return max(2, min(MAX_PAGES_IN_FLIGHT, concurrency // 4 + 1))


class LayoutPipeline:
    """Parses documents through one shared VLM client; one instance serves the whole process."""

    def __init__(
        self,
        vlm: VlmClient,
        metrics: Optional[ProxyMetrics] = None,
        *,
        pages_in_flight: Optional[int] = None,
    ) -> None:
        self.vlm = vlm
        self.metrics = metrics
        self.pages_in_flight = pages_in_flight or default_pages_in_flight(vlm.slots.capacity)
        # The bound holds for the whole process, not per request: concurrent documents share it.
        self._rendered_pages = asyncio.Semaphore(self.pages_in_flight)

    async def parse(
        self,
        document: Document,
        options: RequestOptions,
        *,
        detector: Optional[LayoutDetector],
        owner: Hashable,
        visualize: bool,
    ) -> list[PageOutput]:
        """Every page of the document, in order; the first failure cancels the rest and is raised."""
        if options.vlm.ignored_extra_args:
            log.info("vlmExtraArgs keys ignored, as PaddleX ignores them: %s", ", ".join(options.vlm.ignored_extra_args))
        count = document.page_count
        outputs: list[Optional[PageOutput]] = [None] * count
        running: dict[asyncio.Future[PageOutput], int] = {}
        next_index = 0
        try:
            while next_index < count or running:
                while next_index < count and len(running) < self.pages_in_flight:
                    future = asyncio.ensure_future(
                        self._page(document, next_index, options, detector, owner, visualize)
                    )
                    running[future] = next_index
                    next_index += 1
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    index = running.pop(future)
                    outputs[index] = future.result()
        finally:
            for future in running:
                future.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
        return [output for output in outputs if output is not None]

    async def _page(
        self,
        document: Document,
        index: int,
        options: RequestOptions,
        detector: Optional[LayoutDetector],
        owner: Hashable,
        visualize: bool,
    ) -> PageOutput:
        async with self._rendered_pages:  # a rendered page holds memory until it is assembled
            prepared = await asyncio.to_thread(prepare_page, document, index, options, detector)
            if self.metrics is not None:
                for planned in prepared.plan.blocks:
                    self.metrics.blocks.labels(label=planned.block.label).inc()
            texts = await self._recognize(prepared, options, owner)
            output = await asyncio.to_thread(assemble_page, prepared, texts, options, visualize=visualize)
        if self.metrics is not None:
            self.metrics.pages.inc()
        return output

    async def _recognize(self, prepared: PreparedPage, options: RequestOptions, owner: Hashable) -> list[str]:
        if not prepared.tasks:
            return []
        skip = skip_special_tokens_for(task.kind for _, task in prepared.tasks)
        calls = [
            asyncio.ensure_future(self._one_block(prepared, position, task, url, options, owner, skip))
            for (position, task), url in zip(prepared.tasks, prepared.image_urls)
        ]
        try:
            return list(await asyncio.gather(*calls))
        finally:
            for call in calls:
                call.cancel()

    async def _one_block(
        self,
        prepared: PreparedPage,
        position: int,
        task: Task,
        url: str,
        options: RequestOptions,
        owner: Hashable,
        skip_special_tokens: bool,
    ) -> str:
        body = options.vlm.chat_body(
            model=self.vlm.model,
            image_url=url,
            prompt=task.prompt,
            kind=task.kind,
            skip_special_tokens=skip_special_tokens,
        )
        try:
            return await self.vlm.complete(owner, body)
        except VlmError as exc:
            block = prepared.plan.blocks[position].block
            raise UpstreamError(
                f"Page {prepared.index + 1}, block {position} ({block.label} at {list(block.bbox)}): "
                f"recognition failed: {exc.message}",
                status_code=exc.status_code,
            ) from exc

"""A page's ``prunedResult`` (and a document's, concatenated), keys and numbering exactly as PaddleX writes them."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ...recipe import DEFAULT_MARKDOWN_IGNORE_LABELS
from ..blocks import ParsedBlock, block_orders, picture_path
from ..recognition.prompts import Recognition
from .markdown import MarkdownStyle, formatters


def parsing_res_list(
    blocks: Sequence[ParsedBlock],
    *,
    ignore_labels: Sequence[str] = DEFAULT_MARKDOWN_IGNORE_LABELS,
    format_content: Callable[[ParsedBlock], str] | None = None,
    global_ids: Sequence[tuple[int, int]] | None = None,
) -> list[dict[str, Any]]:
    """``prunedResult.parsing_res_list``: one dict per block, ids and orders numbered here.

    ``group_id`` falls back to the block's own id; ``format_content`` rewrites contents
    (formatBlockContent); ``global_ids`` adds (global_block_id, global_group_id) per block.
    """
    orders = block_orders([b.label for b in blocks], ignore_labels)
    out = []
    for k, (b, order) in enumerate(zip(blocks, orders)):
        item: dict[str, Any] = {
            "block_label": b.label,
            "block_content": b.content if format_content is None else format_content(b),
            "block_bbox": [int(v) for v in b.bbox],
            "block_id": k,
            "block_order": order,
            "group_id": b.group_id if b.group_id is not None else k,
        }
        if global_ids is not None:
            item["global_block_id"], item["global_group_id"] = global_ids[k]
        if b.polygon is not None:
            item["block_polygon_points"] = [list(p) for p in b.polygon]
        out.append(item)
    return out


def block_content_formatter(
    style: MarkdownStyle, page_width: int, ignore_labels: Sequence[str]
) -> Callable[[ParsedBlock], str]:
    """formatBlockContent: each block's content as its prettified markdown (raw when it has none)."""
    fmt = formatters(MarkdownStyle(True, style.recognition, style.use_layout_detection), page_width, ignore_labels)
    return lambda b: fmt[b.label](b) if b.label in fmt else b.content


def pruned_result(
    blocks: Sequence[ParsedBlock],
    *,
    width: int,
    height: int,
    model_settings: Mapping[str, Any],
    layout_boxes: Sequence[Mapping[str, Any]] | None = None,
    page_count: int | None = None,
    spotting: Mapping[str, Any] | None = None,
    doc_preprocessor: Mapping[str, Any] | None = None,
    recognition: Recognition = Recognition(),
    global_ids: Sequence[tuple[int, int]] | None = None,
    page_index: int | None = None,
) -> dict[str, Any]:
    """``prunedResult`` of one page, keys in PaddleX's order.

    ``model_settings`` is :meth:`PageOptions.model_settings`; ``layout_boxes`` the detector's
    boxes before filtering (included when layout detection is on). PaddleX's server reports
    ``page_count`` as null, as it hands pages over one image at a time. ``page_index`` (0-based, the
    name PaddleX's pipeline gives it) is added when a pageRange chose the pages.
    """
    ignore = list(model_settings.get("markdown_ignore_labels", DEFAULT_MARKDOWN_IGNORE_LABELS))
    use_layout = bool(model_settings.get("use_layout_detection", True))
    formatter = None
    if model_settings.get("format_block_content", False):
        style = MarkdownStyle(True, recognition, use_layout)
        formatter = block_content_formatter(style, width, ignore)
    result: dict[str, Any] = {
        "page_count": page_count,
        **({"page_index": page_index} if page_index is not None else {}),
        "width": width,
        "height": height,
        "model_settings": dict(model_settings),
        "parsing_res_list": parsing_res_list(
            blocks, ignore_labels=ignore, format_content=formatter, global_ids=global_ids
        ),
    }
    if spotting:
        result["spotting_res"] = dict(spotting)
    if model_settings.get("use_doc_preprocessor", False):
        result["doc_preprocessor_res"] = dict(doc_preprocessor or {})
    if use_layout:
        result["layout_det_res"] = {"boxes": [dict(b) for b in (layout_boxes or [])]}
    return result


def blocks_from_pruned(pruned: Mapping[str, Any]) -> list[ParsedBlock]:
    """A page's blocks read back from its ``prunedResult`` (headings' leading ``#`` removed).

    Only image, seal and unrecognised chart blocks get their picture path back, as in PaddleX.
    """
    settings = pruned.get("model_settings", {}) or {}
    out = []
    for item in pruned.get("parsing_res_list", []) or []:
        label = str(item["block_label"])
        bbox = tuple(int(v) for v in item["block_bbox"])
        picture = None
        if label in ("image", "seal") or (label == "chart" and not settings.get("use_chart_recognition", False)):
            picture = picture_path(label, bbox)  # type: ignore[arg-type]
        polygon = item.get("block_polygon_points")
        out.append(
            ParsedBlock(
                label,
                bbox,  # type: ignore[arg-type]
                re.sub(r"^#+\s", "", item.get("block_content") or ""),
                item.get("group_id"),
                picture,
                None if polygon is None else tuple((float(p[0]), float(p[1])) for p in polygon),
            )
        )
    return out


def concatenated_pruned(
    pages: Sequence[Mapping[str, Any]], blocks: Sequence[ParsedBlock], global_ids: Sequence[tuple[int, int]]
) -> dict[str, Any]:
    """One ``prunedResult`` for a whole document (concatenatePages): the first page's size and
    settings, every block, and per-page layout (and preprocessing) results as lists."""
    first = pages[0]
    settings = dict(first.get("model_settings", {}) or {})
    ignore = settings.get("markdown_ignore_labels", DEFAULT_MARKDOWN_IGNORE_LABELS)
    result: dict[str, Any] = {
        "page_count": len(pages),
        "width": first.get("width"),
        "height": first.get("height"),
        "model_settings": settings,
        "parsing_res_list": parsing_res_list(blocks, ignore_labels=ignore, global_ids=global_ids),
    }
    if first.get("spotting_res"):
        result["spotting_res"] = first["spotting_res"]
    if settings.get("use_doc_preprocessor", False):
        result["doc_preprocessor_res"] = [p.get("doc_preprocessor_res") for p in pages]
    if settings.get("use_layout_detection", True):
        result["layout_det_res"] = [p.get("layout_det_res") for p in pages]
    return result

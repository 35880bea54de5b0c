"""POST /restructure-pages: pages a client parsed earlier, tables merged across them and titles re-levelled."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import pydantic
from starlette.requests import Request
from starlette.responses import Response

from ..decoding import validate
from ..errors import InputError, dotted_location, new_log_id
from ..output.pruned import blocks_from_pruned, concatenated_pruned
from ..output.restructuring import restructure_pages
from ..pages import PageContext, write_page
from ..protocol import RESTRUCTURE_PAGES_ENDPOINT, PrunedResult, RestructurePagesRequest
from .paddlex import PaddlexEndpoint, RequestContext, json_response


class RestructurePages(PaddlexEndpoint):
    """Restructure the prunedResults a client sends back; no model runs."""

    path = RESTRUCTURE_PAGES_ENDPOINT

    async def handle(self, request: Request, context: RequestContext) -> Response:
        body = validate(RestructurePagesRequest, await self.read_json(request, context))
        log_id = context.log_id = body.logId or new_log_id()
        if body.outputFormats:
            error = {
                "type": "value_error",
                "loc": "body.outputFormats",
                "msg": "Value error, `outputFormats` (document exports) is not supported by this server; leave it out",
            }
            raise InputError(json.dumps([error]))
        results = await asyncio.to_thread(
            restructure_pruned_pages,
            [(page.prunedResult, page.markdownImages) for page in body.pages],
            merge_tables=body.mergeTables,
            relevel_titles=body.relevelTitles,
            concatenate=body.concatenatePages,
            prettify=body.prettifyMarkdown,
            show_formula_number=body.showFormulaNumber,
            return_images=body.returnMarkdownImages,
        )
        answer = {"logId": log_id, "result": {"layoutParsingResults": results}, "errorCode": 0, "errorMsg": "Success"}
        return Response(await asyncio.to_thread(json_response, answer), media_type="application/json")


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

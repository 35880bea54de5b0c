"""One /layout-parsing document from pages to PaddleX's results: detect, plan, recognise, assemble.

Pages go through a bounded window (a long PDF is never rendered all at once); CPU work of a page
(`pages.prepare_page`, `pages.assemble_page`) runs in worker threads, and its blocks go to vLLM
concurrently through the shared fair client. The first failure cancels the rest of the document and
names the page and block.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Hashable, Optional

from .blocks import Task
from .errors import InputError, UpstreamError
from .inputs import Document
from .layout.base import LayoutDetector
from .metrics import ProxyMetrics
from .options import RequestOptions, skip_special_tokens_for
from .page_range import PageRangeError
from .pages import PageOutput, PreparedPage, assemble_page, prepare_page
from .recognition.budget import new_tokens, prompt_tokens
from .recognition.vlm_client import VlmClient, VlmError

log = logging.getLogger("vllm_paddle_ocr.proxy")

MAX_PAGES_IN_FLIGHT = 16


def default_pages_in_flight(concurrency: int) -> int:
    """Enough pages ahead to keep every VLM slot busy (a page has tens of blocks), bounded for memory."""
    return max(2, min(MAX_PAGES_IN_FLIGHT, concurrency // 4 + 1))


def selected_pages(document: Document, options: RequestOptions) -> list[int]:
    """The 0-based pages a request parses: its pageRange, or every page; past the end is a 422."""
    page_range = options.page.page_range
    if page_range is None:
        return list(range(document.page_count))
    what = {"pdf": "PDF", "tiff": "TIFF"}.get(document.kind, "image")
    try:
        return page_range.indices(document.page_count, what)
    except PageRangeError as exc:
        raise InputError(str(exc)) from None


class LayoutPipeline:
    """Parses documents through one shared VLM client; one instance serves the whole process."""

    def __init__(
        self,
        vlm: VlmClient,
        metrics: Optional[ProxyMetrics] = None,
        *,
        pages_in_flight: Optional[int] = None,
        max_model_len: Optional[int] = None,
    ) -> None:
        self.vlm = vlm
        self.metrics = metrics
        self.max_model_len = max_model_len  # the served context; None: unknown, requests ask what they ask
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
        on_page: Optional[Callable[[int, PageOutput], Awaitable[PageOutput]]] = None,
    ) -> list[PageOutput]:
        """The asked pages of the document, in order; the first failure cancels the rest and is raised.

        `on_page(position, output)` hears of each page as it finishes and returns what the document keeps
        of it (a job stores the page and keeps only what restructuring needs).
        """
        if options.vlm.ignored_extra_args:
            log.info("vlmExtraArgs keys ignored, as PaddleX ignores them: %s", ", ".join(options.vlm.ignored_extra_args))
        indices = selected_pages(document, options)
        count = len(indices)
        outputs: list[Optional[PageOutput]] = [None] * count
        running: dict[asyncio.Future[PageOutput], int] = {}
        next_position = 0
        try:
            while next_position < count or running:
                while next_position < count and len(running) < self.pages_in_flight:
                    future = asyncio.ensure_future(
                        self._page(document, indices[next_position], options, detector, owner, visualize)
                    )
                    running[future] = next_position
                    next_position += 1
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for future in sorted(done, key=running.__getitem__):  # pages failing together: the first is told
                    position = running.pop(future)
                    output = future.result()
                    outputs[position] = output if on_page is None else await on_page(position, output)
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
            prepared = await asyncio.to_thread(prepare_page, document, index, options, detector, owner)
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
        sizes = prepared.image_sizes or [None] * len(prepared.tasks)
        calls = [
            asyncio.ensure_future(self._one_block(prepared, position, task, url, size, options, owner, skip))
            for (position, task), url, size in zip(prepared.tasks, prepared.image_urls, sizes)
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
        size: Optional[tuple[int, int]],
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
        if size is not None:
            body["max_completion_tokens"] = self._budget(prepared, position, task, size, options)
        try:
            return await self.vlm.complete(owner, body)
        except VlmError as exc:
            block = prepared.plan.blocks[position].block
            raise UpstreamError(
                f"Page {prepared.index + 1}, block {position} ({block.label} at {list(block.bbox)}): "
                f"recognition failed: {exc.message}",
                status_code=exc.status_code,
            ) from exc

    def _budget(
        self, prepared: PreparedPage, position: int, task: Task, size: tuple[int, int], options: RequestOptions
    ) -> int:
        """New tokens this block may ask for in the served context; an error when its prompt alone fills it."""
        width, height = size
        min_pixels, max_pixels = options.vlm.pixel_limits(task.kind)
        prompt = prompt_tokens(width, height, min_pixels, max_pixels)
        allowed = new_tokens(options.vlm.max_completion_tokens, prompt, self.max_model_len)
        if allowed is None:
            block = prepared.plan.blocks[position].block
            raise UpstreamError(
                f"Page {prepared.index + 1}, block {position} ({block.label} at {list(block.bbox)}): its prompt needs "
                f"about {prompt} tokens ({width}x{height} picture at most {max_pixels} pixels) but the served context "
                f"is {self.max_model_len} (--max-model-len); raise --max-model-len or send a lower maxPixels",
                status_code=422,
            )
        return allowed

"""One /layout-parsing document from pages to PaddleX's results: detect, plan, recognise, assemble.

Pages go through a bounded window (a long PDF is never rendered all at once); CPU work of a page
(`pages.prepare_page`, `pages.assemble_page`) runs in worker threads, and its blocks go to vLLM
concurrently through the shared fair client. The first failure cancels the rest of the document and
names the page and block.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Hashable, Optional

from .blocks import Task
from .errors import UpstreamError
from .inputs import Document
from .layout.base import LayoutDetector
from .metrics import ProxyMetrics
from .options import RequestOptions, skip_special_tokens_for
from .pages import PageOutput, PreparedPage, assemble_page, prepare_page
from .recognition.vlm_client import VlmClient, VlmError

log = logging.getLogger("vllm_paddle_ocr.proxy")

MAX_PAGES_IN_FLIGHT = 16


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

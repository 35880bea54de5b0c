"""The /layout-parsing flow from a checked request to its pages: options, detector, file, pages, pipeline.

Shared by the synchronous endpoint and the job runner, so a job is the same flow with its body on disk.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable, Optional

from vllm_paddle_ocr.plugin.records import ProxySettings

from .errors import InputError, UpstreamError
from .inputs import Document, InputLimits, data_info, decode_base64, is_url, kind_from_url, open_document
from .layout.base import LayoutDetector
from .options import OptionsError, RequestOptions, request_options
from .pages import PageOutput, restructure_outputs
from .pipeline import LayoutPipeline, selected_pages
from .protocol import InferRequest
from .state import UpstreamState
from .url_fetch import UrlFetcher, UrlPolicy

URL_FETCH_TIMEOUT_S = 30.0
_FILE_TYPES = {0: "PDF", 1: "IMAGE"}

PageSink = Callable[[int, PageOutput], Awaitable[PageOutput]]


def success(log_id: str, result: dict[str, Any]) -> dict[str, Any]:
    """PaddleX's success envelope around a result."""
    return {"logId": log_id, "result": result, "errorCode": 0, "errorMsg": "Success"}


class DocumentParser:
    """Turns a checked InferRequest into its pages' results through the process-wide pipeline."""

    def __init__(
        self, settings: ProxySettings, state: UpstreamState, pipeline: LayoutPipeline, *, visualize_default: bool
    ) -> None:
        self.settings = settings
        self.state = state
        self.pipeline = pipeline
        self.visualize_default = visualize_default
        self.limits = InputLimits(settings.max_body_bytes, settings.max_pages, settings.max_page_pixels)
        self.fetcher = (
            UrlFetcher(UrlPolicy(tuple(settings.url_allow_hosts), settings.max_body_bytes, URL_FETCH_TIMEOUT_S))
            if settings.allow_url_input
            else None
        )

    def options(self, request: InferRequest) -> RequestOptions:
        """The request's options for every stage, or a 422 naming the field."""
        labels = tuple(getattr(self.state.detector, "labels", ()) or ())
        try:
            return request_options(request, model_version=self.settings.model_version, layout_labels=labels)
        except OptionsError as exc:
            raise InputError(json.dumps([exc.error_dict()])) from None

    def detector_for(self, options: RequestOptions) -> Optional[LayoutDetector]:
        """The layout detector the request needs (None without layout detection), or why there is none."""
        if not options.page.use_layout_detection:
            return None
        if self.state.detector is not None:
            return self.state.detector
        if self.settings.layout_dir is None:
            raise InputError(
                "This server has no layout model, so useLayoutDetection must be false (choose the task with "
                "promptLabel); to parse layouts, add PP-DocLayoutV2/ to the model repo or start with --layout-model-dir"
            )
        raise UpstreamError("Service unavailable: the layout model is still loading", status_code=503, retry_after=10)

    async def open(self, request: InferRequest) -> Document:
        """The request's file opened as a document (fetched first when it is a URL); limits checked."""
        data, declared = await self._file_bytes(request)
        return await asyncio.to_thread(open_document, data, declared, self.limits)

    async def parse(
        self,
        request: InferRequest,
        options: RequestOptions,
        *,
        hold_pages: Optional[Callable[[int], Awaitable[None]]] = None,
        on_page: Optional[PageSink] = None,
    ) -> tuple[list[PageOutput], dict[str, Any]]:
        """The asked pages' outputs in order and the dataInfo; `hold_pages(n)` admits the pages first."""
        detector = self.detector_for(options)
        document = await self.open(request)
        try:
            if hold_pages is not None:
                await hold_pages(len(selected_pages(document, options)))
            visualize = self.visualize_default if request.visualize is None else request.visualize
            outputs = await self.pipeline.parse(
                document, options, detector=detector, owner=object(), visualize=visualize, on_page=on_page
            )
            info = data_info(document, [output.size for output in outputs])
        finally:
            await asyncio.to_thread(document.close)
        page = options.page
        if page.restructure_pages:
            await asyncio.to_thread(
                restructure_outputs,
                outputs,
                merge_tables=page.merge_tables,
                relevel_titles=page.relevel_titles,
                prettify=page.prettify_markdown,
                show_formula_number=page.show_formula_number,
            )
        return outputs, info

    async def _file_bytes(self, request: InferRequest) -> tuple[bytes, Optional[str]]:
        declared = _FILE_TYPES.get(request.fileType) if request.fileType is not None else None
        if is_url(request.file):
            if self.fetcher is None:
                raise InputError(
                    "URL input is disabled on this server: send the file as base64 content "
                    "(or start the server with --allow-url-input and --url-allow-hosts)"
                )
            if declared is None:
                declared = kind_from_url(request.file)
            fetched = await self.fetcher.fetch(request.file)
            return fetched.data, declared
        text = request.file
        data = decode_base64(text) if len(text) < 1 << 20 else await asyncio.to_thread(decode_base64, text)
        return data, declared

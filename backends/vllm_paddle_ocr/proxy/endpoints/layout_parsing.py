"""POST /layout-parsing: PaddleX's request in, one result per page out (or PaddleX's error shape)."""

from __future__ import annotations

import asyncio
import json
from typing import Optional

from starlette.requests import Request
from starlette.responses import Response

from vllm_paddle_ocr.plugin.records import ProxySettings

from ..errors import InputError, UpstreamError, new_log_id
from ..inputs import InputLimits, data_info, decode_base64, is_url, kind_from_url, open_document
from ..layout.base import LayoutDetector
from ..metrics import ProxyMetrics
from ..options import OptionsError, RequestOptions, request_options
from ..pages import restructure_outputs
from ..pipeline import LayoutPipeline
from ..protocol import INFER_ENDPOINT, InferRequest
from ..state import UpstreamState
from ..url_fetch import UrlFetcher, UrlPolicy
from .paddlex import PaddlexEndpoint, RequestContext, json_response, validate

URL_FETCH_TIMEOUT_S = 30.0
_FILE_TYPES = {0: "PDF", 1: "IMAGE"}


class LayoutParsing(PaddlexEndpoint):
    """Decode the file, then detect, recognise and assemble every page through the shared pipeline."""

    path = INFER_ENDPOINT

    def __init__(
        self,
        settings: ProxySettings,
        state: UpstreamState,
        metrics: ProxyMetrics,
        pipeline: LayoutPipeline,
        *,
        visualize_default: bool,
    ) -> None:
        super().__init__(state, metrics, settings.max_body_bytes)
        self.settings = settings
        self.pipeline = pipeline
        self.visualize_default = visualize_default
        self.limits = InputLimits(settings.max_body_bytes, settings.max_pages, settings.max_page_pixels)
        self.fetcher = (
            UrlFetcher(UrlPolicy(tuple(settings.url_allow_hosts), settings.max_body_bytes, URL_FETCH_TIMEOUT_S))
            if settings.allow_url_input
            else None
        )

    async def handle(self, request: Request, context: RequestContext) -> Response:
        infer = validate(InferRequest, await self.read_json(request, context))
        log_id = context.log_id = infer.logId or new_log_id()
        options = self._options(infer)
        self.ensure_upstream()
        detector = self._detector_for(options)
        data, declared = await self._file_bytes(infer)
        document = await asyncio.to_thread(open_document, data, declared, self.limits)
        del data
        try:
            visualize = self.visualize_default if infer.visualize is None else infer.visualize
            outputs = await self.pipeline.parse(document, options, detector=detector, owner=object(), visualize=visualize)
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
        answer = {
            "logId": log_id,
            "result": {"layoutParsingResults": [output.result for output in outputs], "dataInfo": info},
            "errorCode": 0,
            "errorMsg": "Success",
        }
        return Response(await asyncio.to_thread(json_response, answer), media_type="application/json")

    def _options(self, request: InferRequest) -> RequestOptions:
        labels = tuple(getattr(self.state.detector, "labels", ()) or ())
        try:
            return request_options(request, model_version=self.settings.model_version, layout_labels=labels)
        except OptionsError as exc:
            raise InputError(json.dumps([exc.error_dict()])) from None

    def _detector_for(self, options: RequestOptions) -> Optional[LayoutDetector]:
        if not options.page.use_layout_detection:
            return None
        if self.state.detector is not None:
            return self.state.detector
        if self.settings.layout_dir is None:
            raise InputError(
                "This server has no layout model, so useLayoutDetection must be false (choose the task with "
                "promptLabel); to parse layouts, add PP-DocLayoutV2/ to the model repo or start with --layout-model-dir"
            )
        raise UpstreamError("Service unavailable: the layout model is still loading", status_code=503)

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

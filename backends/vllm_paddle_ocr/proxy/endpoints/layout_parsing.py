"""POST /layout-parsing: PaddleX's request in, one result per page out (or PaddleX's error shape)."""

from __future__ import annotations

import asyncio
from typing import Optional

from starlette.requests import Request
from starlette.responses import Response

from ..admission import Admission
from ..decoding import validate
from ..errors import new_log_id
from ..metrics import ProxyMetrics
from ..parsing import DocumentParser, success
from ..protocol import INFER_ENDPOINT, InferRequest
from ..state import UpstreamState
from .paddlex import PaddlexEndpoint, RequestContext, json_response


class LayoutParsing(PaddlexEndpoint):
    """Decode the file, then detect, recognise and assemble every asked page through the shared pipeline."""

    path = INFER_ENDPOINT
    admitted = True

    def __init__(
        self,
        parser: DocumentParser,
        state: UpstreamState,
        metrics: ProxyMetrics,
        *,
        admission: Optional[Admission] = None,
    ) -> None:
        super().__init__(state, metrics, parser.settings.max_body_bytes, admission=admission)
        self.parser = parser

    async def handle(self, request: Request, context: RequestContext) -> Response:
        infer = validate(InferRequest, await self.read_json(request, context))
        log_id = context.log_id = infer.logId or new_log_id()
        options = self.parser.options(infer)
        self.ensure_upstream()
        ticket = context.ticket

        async def hold_pages(count: int) -> None:
            if ticket is not None:
                ticket.hold_pages(count)

        outputs, info = await self.parser.parse(infer, options, hold_pages=hold_pages)
        answer = success(log_id, {"layoutParsingResults": [output.result for output in outputs], "dataInfo": info})
        return Response(await asyncio.to_thread(json_response, answer), media_type="application/json")

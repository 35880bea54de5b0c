"""GET /health (PaddleX's answer, plus the proxy's and vLLM's states) and GET /metrics (ours, then vLLM's)."""

from __future__ import annotations

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from vllm_paddle_ocr.plugin.records import ProxySettings

from ..auth import bearer_header
from ..errors import error_body
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..metrics import ProxyMetrics
from ..recognition.vlm_client import VlmClient
from ..state import UpstreamState

UPSTREAM_PROBE_TIMEOUT_S = 2.0


class Health:
    """Health and metrics, each asking vLLM's own endpoint through one short-timeout client."""

    def __init__(self, settings: ProxySettings, state: UpstreamState, metrics: ProxyMetrics, vlm: VlmClient) -> None:
        self.settings = settings
        self.state = state
        self.metrics = metrics
        self.vlm = vlm
        key = settings.api_key.get_secret_value() if settings.api_key is not None else None
        self._probe = httpx.AsyncClient(
            timeout=UPSTREAM_PROBE_TIMEOUT_S, trust_env=False, headers={"Authorization": bearer_header(key)} if key else None
        )

    async def aclose(self) -> None:
        """Close the client used for vLLM's /health and /metrics."""
        await self._probe.aclose()

    def _detector_status(self) -> str:
        if self.state.detector is not None:
            return "ready"
        return "absent" if self.settings.layout_dir is None else "loading"

    async def health(self, request: Request) -> Response:
        """PaddleX's health answer, plus the proxy's and vLLM's states; 503 while vLLM cannot serve."""
        upstream = self.state.status
        reason = self.state.unavailable_reason()
        if reason is None:
            try:
                answer = await self._probe.get(self.settings.upstream_url.rstrip("/") + "/health")
                if answer.status_code != 200:
                    upstream, reason = "unhealthy", f"vLLM's /health answered {answer.status_code}"
            except httpx.HTTPError as exc:
                upstream, reason = "unreachable", f"vLLM does not answer its /health ({type(exc).__name__})"
        status = 200 if reason is None else 503
        body = error_body(0 if reason is None else 503, "Healthy" if reason is None else f"Unhealthy: {reason}")
        body.update(
            proxy="ok",
            upstream=upstream,
            layoutDetector=self._detector_status(),
            layoutEngine=None if self.settings.layout_dir is None else self.settings.layout_engine,
            layoutDevice=None if self.settings.layout_dir is None else self.settings.layout_device,
            inFlight=self.state.in_flight,
            vlmQueueDepth=self.vlm.slots.waiting,
        )
        return JSONResponse(body, status_code=status)

    async def prometheus(self, request: Request) -> Response:
        """The proxy's metrics followed by vLLM's own (Prometheus text format)."""
        self.metrics.upstream_ready.set(1 if self.state.unavailable_reason() is None else 0)
        text = self.metrics.exposition()
        try:
            answer = await self._probe.get(
                self.settings.upstream_url.rstrip("/") + "/metrics", headers={"Accept": "text/plain; version=0.0.4"}
            )
            if answer.status_code == 200:
                text += answer.content
            else:
                text += f"# vLLM metrics unavailable: HTTP {answer.status_code}\n".encode()
        except httpx.HTTPError as exc:
            text += f"# vLLM metrics unavailable: {type(exc).__name__}\n".encode()
        return Response(text, media_type=METRICS_CONTENT_TYPE)

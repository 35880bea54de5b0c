"""The proxy's ASGI app, a router: /v1/* to vLLM untouched, the PaddleX endpoints, health, metrics, docs and the page.

Each endpoint lives in its own module under `endpoints/`; this module builds the shared pieces once
(state, metrics, the VLM client, the pipeline), hands them to the endpoints and maps paths to them.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from pathlib import Path
from typing import Any, AsyncIterator, Optional

import psutil
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from vllm_paddle_ocr.plugin.errors import VllmPaddleOcrError
from vllm_paddle_ocr.plugin.records import ProxySettings

from .admission import Admission, admission_bounds, memory_limit
from .auth import OPEN_PATHS, ApiKeyGuard
from .endpoints import docs, ui
from .endpoints.health import Health
from .endpoints.jobs import JOB_ROUTES, SubmitJob
from .endpoints.layout_parsing import LayoutParsing
from .endpoints.restructure_pages import RestructurePages
from .errors import INTERNAL_ERROR_MESSAGE, error_response
from .jobs.runner import JobRunner, open_store
from .jobs.store import JobFiles
from .layout.base import LayoutDetector
from .metrics import ProxyMetrics
from .parsing import DocumentParser
from .passthrough import Passthrough
from .pipeline import LayoutPipeline
from .recognition.vlm_client import VlmClient
from .state import UpstreamState

log = logging.getLogger("vllm_paddle_ocr.proxy")

VISUALIZE_DEFAULT = True  # PaddleX's server returns outputImages and inputImage unless told not to


class ProxyApp(Starlette):
    """Starlette for the proxy's own endpoints; /v1/* goes straight to the passthrough, untouched."""

    passthrough: Passthrough
    guard: ApiKeyGuard
    job_runner: JobRunner

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not self.guard.allows(scope):
            await self.guard.refuse(scope, receive, send)
            return
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            await self.passthrough(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(
    settings: ProxySettings,
    *,
    state: Optional[UpstreamState] = None,
    detector: Optional[LayoutDetector] = None,
    vlm: Optional[VlmClient] = None,
    visualize_default: bool = VISUALIZE_DEFAULT,
) -> ProxyApp:
    """The proxy for one vLLM, from ProxySettings; the supervisor flips `state` as vLLM comes and goes."""
    # httpx logs every request at INFO (one line per block); the proxy's metrics count them instead.
    if logging.getLogger("httpx").level == logging.NOTSET:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    state = state if state is not None else UpstreamState()
    if detector is not None:
        state.attach_detector(detector)
    metrics = ProxyMetrics()
    own_vlm = vlm is None
    key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    vlm_client = vlm or VlmClient(
        settings.upstream_url, settings.served_model_name, settings.concurrency, metrics=metrics, api_key=key
    )
    passthrough = Passthrough(settings.upstream_url, state, metrics, api_key=key)
    pipeline = LayoutPipeline(vlm_client, metrics, max_model_len=settings.max_model_len)
    admission = Admission(admission_bounds(settings, memory_limit(psutil.virtual_memory().total)), metrics)
    parser = DocumentParser(settings, state, pipeline, visualize_default=visualize_default)
    health = Health(settings, state, metrics, vlm_client)
    layout_parsing = LayoutParsing(parser, state, metrics, admission=admission)
    restructure_pages = RestructurePages(state, metrics, settings.max_body_bytes)
    job_files = JobFiles(Path(settings.data_dir) / "jobs")
    runner = JobRunner(
        open_store(settings.job_store, job_files), job_files, parser, admission, state,
        owner=f"{socket.gethostname()}:{settings.port}", retention_s=settings.job_retention_s,
        max_queued=settings.max_queued_jobs,
    )  # fmt: skip
    jobs = {kind: cls(runner, state, metrics, settings.max_body_bytes) for kind, cls in JOB_ROUTES.items()}
    submit_job = SubmitJob(runner, parser, state, metrics, admission=admission)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await runner.start()
        except VllmPaddleOcrError as exc:  # the jobs' store: the rest of the proxy works without it
            log.error("jobs are unavailable: %s", exc)
        try:
            yield
        finally:
            await runner.stop()
            await passthrough.aclose()
            await health.aclose()
            if own_vlm:
                await vlm_client.aclose()

    routes = [
        Route("/health", health.health, methods=["GET"]),
        Route("/metrics", health.prometheus, methods=["GET"]),
        Route(layout_parsing.path, layout_parsing.answer, methods=["POST"]),
        Route(restructure_pages.path, restructure_pages.answer, methods=["POST"]),
        Route(submit_job.path, submit_job.answer, methods=["POST"]),
        Route(jobs["status"].path, jobs["status"].answer, methods=["GET"]),
        Route(jobs["cancel"].path, jobs["cancel"].answer, methods=["DELETE"]),
        Route(jobs["result"].path, jobs["result"].answer, methods=["GET"]),
        Route("/openapi.json", docs.openapi, methods=["GET"]),
        Route("/docs", docs.docs, methods=["GET"]),
        Route("/", ui.page, methods=["GET"]),
        Route("/ui", ui.page, methods=["GET"]),
        Route("/ui/", ui.page_with_slash, methods=["GET"]),
        Mount(ui.ASSETS_PATH, ui.assets()),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_response(exc.status_code, str(exc.detail))

    async def unexpected_error(request: Request, exc: Exception) -> Response:
        log.error("%s %s: unexpected error", request.method, request.url.path, exc_info=exc)
        return error_response(500, INTERNAL_ERROR_MESSAGE)

    app = ProxyApp(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: unexpected_error},
    )
    app.passthrough = passthrough
    # The page, its assets and the API docs carry no user data; a browser loads them without a header
    # and the page then asks for the key.
    app.guard = ApiKeyGuard(key, open_paths=OPEN_PATHS | ui.PAGE_PATHS | docs.DOCS_PATHS, open_prefixes=(ui.ASSETS_PATH + "/",))
    app.job_runner = runner
    # Paths the proxy does not own (vLLM's /tokenize, /version, ...) go to vLLM too.
    app.router.default = passthrough  # type: ignore[assignment]
    return app

"""The proxy's ASGI app: vLLM's API passed through, PaddleX's /layout-parsing computed, health and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Optional

import httpx
import pydantic
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .errors import (
    INTERNAL_ERROR_MESSAGE,
    InputError,
    LimitExceeded,
    ProxyError,
    UpstreamError,
    error_body,
    error_response,
    new_log_id,
    validation_message,
)
from .inputs import InputLimits, data_info, decode_base64, is_url, kind_from_url, open_document
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import ProxyMetrics
from .options import OptionsError, RequestOptions, request_options
from .passthrough import Passthrough
from .pipeline import LayoutDetector, LayoutPipeline, restructure_outputs, restructure_pruned_pages
from .protocol import (
    INFER_ENDPOINT,
    RESTRUCTURE_PAGES_ENDPOINT,
    ErrorResponse,
    InferRequest,
    InferResult,
    RestructurePagesRequest,
    RestructurePagesResult,
    ResultResponse,
)
from .state import UpstreamState
from .url_fetch import UrlFetcher, UrlPolicy
from .recognition.vlm_client import VlmClient

if TYPE_CHECKING:
    from vllm_paddle_ocr.plugin.records import ProxySettings

__all__ = ["UpstreamState", "create_app", "drain", "run_proxy"]

log = logging.getLogger("vllm_paddle_ocr.proxy")

VISUALIZE_DEFAULT = True  # PaddleX's server returns outputImages and inputImage unless told not to
URL_FETCH_TIMEOUT_S = 30.0
UPSTREAM_PROBE_TIMEOUT_S = 2.0
_FILE_TYPES = {0: "PDF", 1: "IMAGE"}


class ProxyApp(Starlette):
    """Starlette for the proxy's own endpoints; /v1/* goes straight to the passthrough, untouched."""

    passthrough: Passthrough

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            await self.passthrough(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(
    settings: "ProxySettings",
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
    vlm_client = vlm or VlmClient(
        settings.upstream_url, settings.served_model_name, settings.concurrency, metrics=metrics
    )
    passthrough = Passthrough(settings.upstream_url, state, metrics)
    handlers = _Handlers(settings, state, metrics, vlm_client, passthrough, visualize_default)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await passthrough.aclose()
            await handlers.aclose()
            if own_vlm:
                await vlm_client.aclose()

    routes = [
        Route("/health", handlers.health, methods=["GET"]),
        Route("/metrics", handlers.prometheus, methods=["GET"]),
        Route(INFER_ENDPOINT, handlers.layout_parsing, methods=["POST"]),
        Route(RESTRUCTURE_PAGES_ENDPOINT, handlers.restructure_pages, methods=["POST"]),
        Route("/openapi.json", handlers.openapi, methods=["GET"]),
        Route("/docs", handlers.docs, methods=["GET"]),
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
    # Paths the proxy does not own (vLLM's /tokenize, /version, ...) go to vLLM too.
    app.router.default = passthrough  # type: ignore[assignment]
    app.state.upstream = state
    app.state.metrics = metrics
    app.state.vlm = vlm_client
    app.state.pipeline = handlers.pipeline
    app.state.settings = settings
    return app


async def drain(state: UpstreamState, timeout_s: float) -> bool:
    """Refuse new work and wait for requests in flight to finish; False when the time ran out."""
    state.mark_draining()
    return await state.wait_idle(timeout_s)


def run_proxy(
    settings: "ProxySettings",
    *,
    state: Optional[UpstreamState] = None,
    detector: Optional[LayoutDetector] = None,
    **config: Any,
) -> Any:
    """A uvicorn server for the proxy on settings.host:settings.port (start it with `await server.serve()`)."""
    import uvicorn

    app = create_app(settings, state=state, detector=detector)
    options = {
        "log_level": "info",
        "access_log": False,
        "timeout_graceful_shutdown": settings.shutdown_grace_s,
        **config,
    }
    return uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, lifespan="on", **options))


class _Handlers:
    """The proxy's own endpoints, sharing the settings, state, metrics and clients of one app."""

    def __init__(
        self,
        settings: Any,
        state: UpstreamState,
        metrics: ProxyMetrics,
        vlm: VlmClient,
        passthrough: Passthrough,
        visualize_default: bool,
    ) -> None:
        self.settings = settings
        self.state = state
        self.metrics = metrics
        self.vlm = vlm
        self.passthrough = passthrough
        self.visualize_default = visualize_default
        self.pipeline = LayoutPipeline(vlm, metrics)
        self.limits = InputLimits(settings.max_body_bytes, settings.max_pages, settings.max_page_pixels)
        self.fetcher = (
            UrlFetcher(UrlPolicy(tuple(settings.url_allow_hosts), settings.max_body_bytes, URL_FETCH_TIMEOUT_S))
            if settings.allow_url_input
            else None
        )
        self._probe = httpx.AsyncClient(timeout=UPSTREAM_PROBE_TIMEOUT_S, trust_env=False)

    async def aclose(self) -> None:
        """Close the client used for vLLM's /health and /metrics."""
        await self._probe.aclose()

    # -- health and metrics -------------------------------------------------------------------
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

    # -- PaddleX endpoints ---------------------------------------------------------------------
    async def layout_parsing(self, request: Request) -> Response:
        """POST /layout-parsing: PaddleX's request in, PaddleX's result out (or its error shape)."""
        return await self._answer(request, INFER_ENDPOINT, self._layout_parsing)

    async def restructure_pages(self, request: Request) -> Response:
        """POST /restructure-pages: tables merged across pages and titles re-levelled, PaddleX's shape."""
        return await self._answer(request, RESTRUCTURE_PAGES_ENDPOINT, self._restructure_pages)

    async def _answer(self, request: Request, endpoint: str, handler: Any) -> Response:
        started = time.monotonic()
        context: dict[str, Any] = {"log_id": None, "body_read": asyncio.Event()}
        self.metrics.in_progress.inc()
        self.state.enter()
        try:
            async with _cancel_on_disconnect(request, context["body_read"]) as gone:
                try:
                    response = await handler(request, context)
                except ProxyError as exc:
                    kind = {InputError: "input", LimitExceeded: "limit", UpstreamError: "upstream"}.get(
                        type(exc), "other"
                    )
                    self.metrics.errors.labels(kind=kind).inc()
                    if exc.status_code >= 500:
                        log.warning("%s failed (%d): %s", endpoint, exc.status_code, exc.message)
                    response = error_response(exc.status_code, exc.message, context["log_id"])
                except asyncio.CancelledError:
                    if not gone.is_set():
                        raise
                    log.info("%s: client disconnected; its work was cancelled", endpoint)
                    self.metrics.errors.labels(kind="disconnected").inc()
                    response = error_response(499, "Client closed the request", context["log_id"])
                except Exception:  # noqa: BLE001 - a bug: logged with its traceback, answered as PaddleX does
                    log.exception("%s: unexpected error", endpoint)
                    self.metrics.errors.labels(kind="internal").inc()
                    response = error_response(500, INTERNAL_ERROR_MESSAGE, context["log_id"])
        finally:
            self.state.leave()
            self.metrics.in_progress.dec()
        self.metrics.requests.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        self.metrics.request_seconds.labels(endpoint=endpoint).observe(time.monotonic() - started)
        return response

    async def _read_json(self, request: Request, context: dict[str, Any]) -> Any:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise LimitExceeded(_body_too_big(int(declared), limit))
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise LimitExceeded(_body_too_big(size, limit, at_least=True))
            chunks.append(chunk)
        context["body_read"].set()
        body = b"".join(chunks)
        try:
            payload = json.loads(body) if size < 1 << 20 else await asyncio.to_thread(json.loads, body)
        except ValueError as exc:
            position = getattr(exc, "pos", 0)
            errors = [{"type": "json_invalid", "loc": ("body", position), "msg": "JSON decode error"}]
            raise InputError(validation_message(errors, prefix=())) from None
        if isinstance(payload, dict) and isinstance(payload.get("logId"), str):
            context["log_id"] = payload["logId"]
        return payload

    def _validate(self, model: type[pydantic.BaseModel], payload: Any) -> Any:
        try:
            return model.model_validate(payload)
        except pydantic.ValidationError as exc:
            raise InputError(validation_message(exc.errors())) from None

    def _ensure_upstream(self) -> None:
        reason = self.state.unavailable_reason()
        if reason is not None:
            raise UpstreamError(f"Service unavailable: {reason}", status_code=503)

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

    async def _layout_parsing(self, request: Request, context: dict[str, Any]) -> Response:
        payload = await self._read_json(request, context)
        infer = self._validate(InferRequest, payload)
        log_id = infer.logId or new_log_id()
        context["log_id"] = log_id
        options = self._options(infer)
        self._ensure_upstream()
        detector = self._detector_for(options)
        data, declared = await self._file_bytes(infer)
        document = await asyncio.to_thread(open_document, data, declared, self.limits)
        del data
        try:
            visualize = self.visualize_default if infer.visualize is None else infer.visualize
            outputs = await self.pipeline.parse(
                document, options, detector=detector, owner=object(), visualize=visualize
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
        answer = {
            "logId": log_id,
            "result": {"layoutParsingResults": [output.result for output in outputs], "dataInfo": info},
            "errorCode": 0,
            "errorMsg": "Success",
        }
        return Response(await asyncio.to_thread(_dump, answer), media_type="application/json")

    async def _restructure_pages(self, request: Request, context: dict[str, Any]) -> Response:
        payload = await self._read_json(request, context)
        body = self._validate(RestructurePagesRequest, payload)
        log_id = body.logId or new_log_id()
        context["log_id"] = log_id
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
        return Response(await asyncio.to_thread(_dump, answer), media_type="application/json")

    # -- documentation -------------------------------------------------------------------------
    async def openapi(self, request: Request) -> Response:
        """OpenAPI description of the PaddleX endpoints this proxy serves."""
        return JSONResponse(openapi_document())

    async def docs(self, request: Request) -> Response:
        """Swagger UI over /openapi.json."""
        return HTMLResponse(_SWAGGER_PAGE)


def _dump(answer: dict[str, Any]) -> bytes:
    return json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _body_too_big(size: int, limit: int, *, at_least: bool = False) -> str:
    amount = f"at least {size}" if at_least else str(size)
    return (
        f"Request body is {amount} bytes; this server accepts at most {limit} (--max-body-size). "
        "Send fewer pages per request or a smaller file"
    )


@contextlib.asynccontextmanager
async def _cancel_on_disconnect(request: Request, body_read: asyncio.Event) -> AsyncIterator[asyncio.Event]:
    """Cancel the current task when the client goes away, so its queued VLM work is dropped."""
    task = asyncio.current_task()
    gone = asyncio.Event()
    finished = False

    async def watch() -> None:
        await body_read.wait()  # the handler reads the body first; then the next message is the disconnect
        message = await request.receive()
        if message["type"] == "http.disconnect" and not finished:
            gone.set()
            if task is not None:
                task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        yield gone
    finally:
        finished = True
        watcher.cancel()
        if gone.is_set() and task is not None and hasattr(task, "uncancel"):
            task.uncancel()


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 for /layout-parsing, /restructure-pages and /health, from the pydantic schemas."""
    from pydantic.json_schema import models_json_schema

    models = [
        (InferRequest, "validation"),
        (ResultResponse[InferResult], "serialization"),
        (RestructurePagesRequest, "validation"),
        (ResultResponse[RestructurePagesResult], "serialization"),
        (ErrorResponse, "serialization"),
    ]
    refs, schema = models_json_schema(models, ref_template="#/components/schemas/{model}")

    def ref(model: Any, mode: str) -> dict[str, Any]:
        return refs[(model, mode)]

    error = {"content": {"application/json": {"schema": ref(ErrorResponse, "serialization")}}}

    def operation(op_id: str, summary: str, request_model: Any, result_model: Any) -> dict[str, Any]:
        return {
            "post": {
                "operationId": op_id,
                "summary": summary,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref(request_model, "validation")}},
                },
                "responses": {
                    "200": {
                        "description": "Success",
                        "content": {"application/json": {"schema": ref(result_model, "serialization")}},
                    },
                    **{
                        code: {"description": text, **error}
                        for code, text in (
                            ("413", "Over a size limit (body or pages)"),
                            ("422", "Invalid request or input file"),
                            ("500", "Internal server error"),
                            ("502", "The model server failed"),
                            ("503", "The model server is not ready"),
                        )
                    },
                },
            }
        }

    return {
        "openapi": "3.1.0",
        "info": {"title": "PaddleOCR-VL layout parsing (PaddleX-compatible)", "version": "1"},
        "paths": {
            INFER_ENDPOINT: operation(
                "infer", "Parse a PDF or image into blocks and markdown", InferRequest, ResultResponse[InferResult]
            ),
            RESTRUCTURE_PAGES_ENDPOINT: operation(
                "restructurePages",
                "Merge tables and re-level titles across parsed pages",
                RestructurePagesRequest,
                ResultResponse[RestructurePagesResult],
            ),
            "/health": {
                "get": {
                    "operationId": "checkHealth",
                    "responses": {
                        "200": {"description": "Healthy", **error},
                        "503": {"description": "The model server is not ready", **error},
                    },
                }
            },
        },
        "components": {"schemas": schema.get("$defs", {})},
    }


_SWAGGER_PAGE = """<!doctype html>
<html><head><title>PaddleOCR-VL layout parsing</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body></html>
"""

"""What every PaddleX endpoint shares: its answer envelope, the body read under a limit, and its errors.

An endpoint subclasses `PaddlexEndpoint` and writes `handle`; `answer` (the route's callable) counts
the request, cancels its work when the client goes away, and turns every failure into PaddleX's
error shape: a `ProxyError` with its status, anything else a logged 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any, AsyncIterator, Optional

from starlette.requests import Request
from starlette.responses import Response

from ..admission import Admission, Overloaded, Ticket
from ..errors import (
    INTERNAL_ERROR_MESSAGE,
    InputError,
    LimitExceeded,
    ProxyError,
    UpstreamError,
    error_response,
)
from ..decoding import decode_json
from ..metrics import ProxyMetrics
from ..protocol import MAX_LOG_ID_LENGTH
from ..state import UpstreamState

log = logging.getLogger("vllm_paddle_ocr.proxy")

class ClientClosed(ProxyError):
    """The client went away before its body had arrived; the answer has nobody to go to."""

    status_code = 499


_ERROR_KINDS = {
    ClientClosed: "disconnected", InputError: "input", LimitExceeded: "limit", UpstreamError: "upstream",
    Overloaded: "overloaded",
}
RETRY_AFTER_DRAINING_S = 5
RETRY_AFTER_STARTING_S = 10
RETRY_AFTER_FAILED_S = 30


class RequestContext:
    """What an endpoint learns while it answers: the request's logId once read, and when its body was read."""

    def __init__(self) -> None:
        self.log_id: Optional[str] = None
        self.body_read = asyncio.Event()
        self.body_ended = False  # the client's last body message has arrived (read or not)
        self.ticket: Optional[Ticket] = None  # what admission control lets this request hold


class PaddlexEndpoint:
    """One PaddleX endpoint: `handle` does its work, `answer` wraps it in PaddleX's envelope."""

    path: str
    admitted = False  # whether admission control bounds this endpoint's requests
    holds_document = True  # an admitted request parses a document (counted against --max-active-requests)

    def __init__(
        self, state: UpstreamState, metrics: ProxyMetrics, max_body_bytes: int, *, admission: Optional[Admission] = None
    ) -> None:
        self.state = state
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.admission = admission

    async def handle(self, request: Request, context: RequestContext) -> Response:
        """The endpoint's own work; raise a ProxyError for an answer in PaddleX's error shape."""
        raise NotImplementedError

    async def answer(self, request: Request) -> Response:
        """The route: handle the request, cancel on disconnect, count it, and never leak a traceback."""
        started = time.monotonic()
        context = RequestContext()
        self.metrics.in_progress.inc()
        self.state.enter()
        try:
            async with _cancel_on_disconnect(request, context.body_read) as gone:
                try:
                    if self.admission is not None and self.admitted:
                        context.ticket = self.admission.admit(document=self.holds_document)
                    response = await self.handle(request, context)
                except ProxyError as exc:
                    self.metrics.errors.labels(kind=_ERROR_KINDS.get(type(exc), "other")).inc()
                    if exc.status_code >= 500:
                        log.warning("%s failed (%d): %s", self.path, exc.status_code, exc.message)
                    if not isinstance(exc, LimitExceeded):  # an oversized body is not waited for
                        await self._drain(request, context)
                    response = error_response(exc.status_code, exc.message, context.log_id, retry_after=exc.retry_after)
                except asyncio.CancelledError:
                    if not gone.is_set():
                        raise
                    log.info("%s: client disconnected; its work was cancelled", self.path)
                    self.metrics.errors.labels(kind="disconnected").inc()
                    response = error_response(499, "Client closed the request", context.log_id)
                except Exception:  # noqa: BLE001 - a bug: logged with its traceback, answered as PaddleX does
                    log.exception("%s: unexpected error", self.path)
                    self.metrics.errors.labels(kind="internal").inc()
                    response = error_response(500, INTERNAL_ERROR_MESSAGE, context.log_id)
        finally:
            if context.ticket is not None:
                await context.ticket.close()
            self.state.leave()
            self.metrics.in_progress.dec()
        self.metrics.requests.labels(endpoint=self.path, status=str(response.status_code)).inc()
        self.metrics.request_seconds.labels(endpoint=self.path).observe(time.monotonic() - started)
        return response

    async def read_json(self, request: Request, context: RequestContext) -> Any:
        """The JSON body, read no further than --max-body-size; the logId noted for error answers."""
        return await self.decode(await self.read_body(request, context), context)

    async def read_body(self, request: Request, context: RequestContext) -> bytes:
        """The body's bytes, read no further than --max-body-size and held against admission control."""
        limit = self.max_body_bytes
        declared = request.headers.get("content-length")
        known = int(declared) if declared is not None and declared.isdigit() else None
        if known is not None and known > limit:
            raise LimitExceeded(_body_too_big(known, limit))
        ticket = context.ticket
        if ticket is not None and known is not None:
            ticket.hold_bytes(known)  # refused before a byte is read
        chunks: list[bytes] = []
        size = 0
        async for chunk in _body_chunks(request, context):
            size += len(chunk)
            if size > limit:
                raise LimitExceeded(_body_too_big(size, limit, at_least=True))
            if ticket is not None and known is None:
                ticket.hold_bytes(len(chunk))
            chunks.append(chunk)
        context.body_read.set()
        return b"".join(chunks)

    async def decode(self, body: bytes, context: Optional[RequestContext] = None) -> Any:
        """The body as JSON (a 422 when it is not, or nests too deep); its logId noted for error answers."""
        payload = decode_json(body) if len(body) < 1 << 20 else await asyncio.to_thread(decode_json, body)
        if context is not None and isinstance(payload, dict):
            log_id = payload.get("logId")
            if isinstance(log_id, str) and len(log_id) <= MAX_LOG_ID_LENGTH:
                context.log_id = log_id
        return payload

    def ensure_upstream(self) -> None:
        """503 while vLLM cannot take work (starting, failed, draining), with when to try again."""
        reason = self.state.unavailable_reason()
        if reason is not None:
            raise UpstreamError(f"Service unavailable: {reason}", status_code=503, retry_after=_retry_after(self.state))

    async def _drain(self, request: Request, context: RequestContext) -> None:
        """Read and drop what is left of a refused body (up to the size limit), so the client reads our answer."""
        if context.body_ended or context.body_read.is_set():
            return
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return  # too big to wait for: the connection closes after the answer
        size = 0
        async for chunk in _body_chunks(request, context):
            size += len(chunk)
            if size > self.max_body_bytes:
                return


def _retry_after(state: UpstreamState) -> int:
    """Seconds to wait before trying again: another replica soon when draining, longer while starting or failed."""
    if state.draining:
        return RETRY_AFTER_DRAINING_S
    return RETRY_AFTER_STARTING_S if state.failed is None else RETRY_AFTER_FAILED_S


async def _body_chunks(request: Request, context: RequestContext) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive; notes when the last one has come (a disconnect ends them too)."""
    while not context.body_ended:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            context.body_ended = True
            raise ClientClosed("Client closed the request")
        context.body_ended = not message.get("more_body", False)
        chunk = message.get("body", b"")
        if chunk:
            yield chunk


def json_response(answer: dict[str, Any]) -> bytes:
    """A success answer's bytes: compact JSON, non-ASCII text kept as it is."""
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

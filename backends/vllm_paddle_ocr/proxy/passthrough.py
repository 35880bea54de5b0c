"""vLLM's own API passed through byte for byte: bodies streamed both ways, disconnects cancel upstream."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Awaitable, Callable

import httpx

from .errors import openai_error_response
from .metrics import ProxyMetrics
from .state import UpstreamState

log = logging.getLogger("vllm_paddle_ocr.proxy")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# Hop-by-hop headers (RFC 9110 7.6.1) describe one connection, not the message; the rest pass as is.
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"proxy-authorization",
     b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
_DROP_FROM_REQUEST = _HOP_BY_HOP | {b"host"}
# uvicorn writes its own Date and Server headers; forwarding vLLM's too would duplicate them.
_DROP_FROM_RESPONSE = _HOP_BY_HOP | {b"date", b"server"}


class _ClientGone(Exception):
    """The client closed its connection before the exchange finished."""


class Passthrough:
    """An ASGI app forwarding every request to the upstream vLLM over a pooled keep-alive client."""

    def __init__(
        self,
        upstream_url: str,
        state: UpstreamState,
        metrics: ProxyMetrics,
        *,
        max_connections: int = 1024,
        connect_timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._base = upstream_url.rstrip("/")
        self._state = state
        self._metrics = metrics
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            # No read timeout: a long generation is not a failure; the client decides when to give up.
            timeout=httpx.Timeout(None, connect=connect_timeout_s),
            follow_redirects=False,
            trust_env=False,
            transport=transport,
        )

    async def aclose(self) -> None:
        """Close the upstream connection pool."""
        await self._client.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        reason = self._state.unavailable_reason()
        if reason is not None:
            self._metrics.passthrough.labels(status="503").inc()
            response = openai_error_response(503, f"Service unavailable: {reason}.", "ServiceUnavailableError")
            await response(scope, receive, send)
            return
        self._state.enter()
        try:
            await self._exchange(scope, receive, send)
        finally:
            self._state.leave()

    def _url(self, scope: Scope) -> str:
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string") or b""
        url = self._base + path.decode("latin-1")
        return f"{url}?{query.decode('latin-1')}" if query else url

    async def _exchange(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        flags = {"gone": False, "done": False}
        watcher: asyncio.Task | None = None

        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not flags["done"]:
                        flags["gone"] = True
                        task.cancel()
                    return

        def body_complete() -> None:
            nonlocal watcher
            watcher = asyncio.ensure_future(watch_disconnect())

        headers = [(k, v) for k, v in scope["headers"] if k not in _DROP_FROM_REQUEST]
        first = await receive()
        if first["type"] == "http.disconnect":
            return
        content: bytes | AsyncIterator[bytes]
        if first.get("more_body", False):
            content = self._stream_body(first.get("body", b""), receive, body_complete)
        else:
            content = first.get("body", b"")
            body_complete()

        response: httpx.Response | None = None
        try:
            request = httpx.Request(scope["method"], self._url(scope), headers=headers, content=content)
            try:
                response = await self._client.send(request, stream=True)
            except _ClientGone:
                return
            except httpx.TransportError as exc:
                self._metrics.passthrough.labels(status="502").inc()
                self._metrics.errors.labels(kind="passthrough").inc()
                answer = openai_error_response(
                    502, f"The model server did not answer: {type(exc).__name__}: {exc}", "BadGatewayError"
                )
                flags["done"] = True
                await answer(scope, receive, send)
                return
            await self._relay(response, send, flags)
        except asyncio.CancelledError:
            if not flags["gone"]:
                raise
            if hasattr(task, "uncancel"):  # Python 3.11+: this cancellation was ours, handled here
                task.uncancel()
            log.debug("client disconnected; upstream request %s %s cancelled", scope["method"], scope["path"])
        finally:
            flags["done"] = True
            if watcher is not None:
                watcher.cancel()
            if response is not None:
                await response.aclose()

    async def _relay(self, response: httpx.Response, send: Send, flags: dict[str, bool]) -> None:
        self._metrics.passthrough.labels(status=str(response.status_code)).inc()
        raw = response.headers.raw
        headers = [(k, v) for k, v in raw if k.lower() not in _DROP_FROM_RESPONSE]
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        length = response.headers.get("content-length")
        remaining = int(length) if length is not None and length.isdigit() else -1
        try:
            async for chunk in response.aiter_raw():
                if not chunk:
                    continue
                if remaining >= 0:
                    remaining -= len(chunk)
                    if remaining <= 0:
                        flags["done"] = True
                        await send({"type": "http.response.body", "body": chunk, "more_body": False})
                        return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.TransportError as exc:
            # The status line is gone already: end the connection so the client sees a cut response.
            log.warning("upstream response broke off: %s: %s", type(exc).__name__, exc)
            self._metrics.errors.labels(kind="passthrough").inc()
            return
        flags["done"] = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _stream_body(first: bytes, receive: Receive, on_complete: Callable[[], None]) -> AsyncIterator[bytes]:
        if first:
            yield first
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone()
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                on_complete()
                return

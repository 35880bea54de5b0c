"""vLLM's own API passed through byte for byte: bodies streamed both ways, disconnects cancel upstream."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Optional
from urllib.parse import urlsplit

from .errors import openai_error_response
from .http1 import (
    LAST_CHUNK,
    Connection,
    Pool,
    ResponseHead,
    UpstreamUnavailable,
    body_framing,
    chunk,
    read_body,
    read_head,
    request_head,
)
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
)  # fmt: skip
# Host names the upstream; Expect: 100-continue is answered by our own server already.
_DROP_FROM_REQUEST = _HOP_BY_HOP | {b"host", b"expect"}
# uvicorn writes its own Date and Server headers; forwarding vLLM's too would duplicate them.
_DROP_FROM_RESPONSE = _HOP_BY_HOP | {b"date", b"server"}


class _ClientGone(Exception):
    """The client closed its connection before the exchange finished."""


class Passthrough:
    """An ASGI app forwarding every request to the upstream vLLM over pooled keep-alive connections."""

    def __init__(
        self,
        upstream_url: str,
        state: UpstreamState,
        metrics: ProxyMetrics,
        *,
        max_connections: int = 1024,
        connect_timeout_s: float = 10.0,
    ) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the upstream must be a plain http:// URL, got {upstream_url!r}")
        port = parts.port or 80
        self._host = f"{parts.hostname}:{port}".encode()
        self._prefix = parts.path.rstrip("/").encode()
        self._pool = Pool(parts.hostname, port, max_connections, connect_timeout_s)
        self._state = state
        self._metrics = metrics

    async def aclose(self) -> None:
        """Close idle upstream connections."""
        self._pool.close()

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

    async def _exchange(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        flags = {"gone": False, "done": False}
        watcher: Optional[asyncio.Future[None]] = None

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
            if watcher is None:
                watcher = asyncio.ensure_future(watch_disconnect())

        first = await receive()
        if first["type"] == "http.disconnect":
            return
        connection: Optional[Connection] = None
        reusable = False
        try:
            try:
                connection, head = await self._send_request(scope, first, receive, body_complete)
            except _ClientGone:
                return
            except UpstreamUnavailable as exc:
                self._metrics.passthrough.labels(status="502").inc()
                self._metrics.errors.labels(kind="passthrough").inc()
                answer = openai_error_response(502, f"The model server did not answer: {exc}", "BadGatewayError")
                flags["done"] = True
                await answer(scope, receive, send)
                return
            reusable = await self._relay(head, connection, send, flags) and head.keep_alive
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
            if connection is not None:
                # An unfinished exchange closes its connection: that is how vLLM learns to abort it.
                self._pool.release(connection, reusable=reusable)

    async def _send_request(
        self, scope: Scope, first: dict[str, Any], receive: Receive, body_complete: Callable[[], None]
    ) -> tuple[Connection, ResponseHead]:
        method = scope["method"]
        target = self._prefix + (scope.get("raw_path") or scope["path"].encode())
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        headers = [(name, value) for name, value in scope["headers"] if name not in _DROP_FROM_REQUEST]
        body = first.get("body", b"")
        streamed = bool(first.get("more_body", False))
        if not streamed:
            body_complete()
        for attempt in (0, 1):
            connection = await self._pool.acquire(fresh=attempt > 0)
            try:
                writer = connection.writer
                if not streamed:
                    framed, _ = body_framing(headers, len(body))
                    writer.write(request_head(method, target, self._host, framed) + body)
                else:
                    await self._stream_body(connection, method, target, headers, body, receive)
                    body_complete()
                return connection, await read_head(connection.reader, method)
            except (UpstreamUnavailable, OSError) as exc:
                self._pool.release(connection, reusable=False)
                if attempt == 0 and connection.reused and not streamed:
                    continue  # the server had closed this idle connection: once more on a fresh one
                if isinstance(exc, UpstreamUnavailable):
                    raise
                raise UpstreamUnavailable(f"{type(exc).__name__}: {exc}") from exc
            except BaseException:
                self._pool.release(connection, reusable=False)
                raise
        raise AssertionError("unreachable")

    async def _stream_body(
        self, connection: Connection, method: str, target: bytes, headers: list, data: bytes, receive: Receive
    ) -> None:
        framed, chunked = body_framing(headers, None)
        writer = connection.writer
        writer.write(request_head(method, target, self._host, framed))
        more = True
        while True:
            if data:
                writer.write(chunk(data) if chunked else data)
                await writer.drain()
            if not more:
                break
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone()
            data = message.get("body", b"")
            more = bool(message.get("more_body", False))
        if chunked:
            writer.write(LAST_CHUNK)

    async def _relay(self, head: ResponseHead, connection: Connection, send: Send, flags: dict[str, bool]) -> bool:
        """Send the response on; True when it was relayed to its end."""
        self._metrics.passthrough.labels(status=str(head.status)).inc()
        headers = [(name.lower(), value) for name, value in head.headers if name.lower() not in _DROP_FROM_RESPONSE]
        await send({"type": "http.response.start", "status": head.status, "headers": headers})
        remaining = head.length
        try:
            if remaining == 0:
                flags["done"] = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return True
            async for data in read_body(connection.reader, head):
                if remaining > 0:
                    remaining -= len(data)
                    if remaining == 0:  # the whole body: one message when it came in one read
                        flags["done"] = True
                        await send({"type": "http.response.body", "body": data, "more_body": False})
                        return True
                await send({"type": "http.response.body", "body": data, "more_body": True})
        except (UpstreamUnavailable, OSError) as exc:
            # The status line is gone already: end the connection so the client sees a cut response.
            log.warning("upstream response broke off: %s", exc)
            self._metrics.errors.labels(kind="passthrough").inc()
            return False
        flags["done"] = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True

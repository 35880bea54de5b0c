"""vLLM's own API passed through byte for byte: bodies streamed both ways, disconnects cancel upstream."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Awaitable, Callable, Optional, Union
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from vllm_paddle_ocr.plugin.errors import VllmPaddleOcrError

from .auth import bearer_header
from .errors import openai_error_response
from .metrics import ProxyMetrics
from .state import UpstreamState

log = logging.getLogger("vllm_paddle_ocr.proxy")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

# Hop-by-hop headers (RFC 9110 7.6.1) describe one connection, not the message; the rest pass as is.
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"proxy-authorization",
     b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)  # fmt: skip
# Host names the upstream; Expect: 100-continue is answered by our own server already; the body's
# framing (Content-Length or chunked) is set again for the upstream hop.
_DROP_FROM_REQUEST = _HOP_BY_HOP | {b"host", b"expect", b"content-length"}
# uvicorn writes its own Date and Server headers; forwarding vLLM's too would duplicate them.
_DROP_FROM_RESPONSE = _HOP_BY_HOP | {b"date", b"server"}

MAX_CONNECTIONS = 1024
# vLLM closes a keep-alive connection after 5 s idle (VLLM_HTTP_TIMEOUT_KEEP_ALIVE); giving ours up
# a second earlier means a request never goes out on a connection the server is closing.
KEEPALIVE_EXPIRY_S = 4.0
CONNECT_TIMEOUT_S = 10.0

# aiohttp's failures that mean the upstream could not be reached or broke off the exchange.
_UPSTREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)
# Headers aiohttp would add on its own; the client's request goes out with only the client's.
_NOT_ADDED = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


class _ClientGone(VllmPaddleOcrError):
    """The client closed its connection before the exchange finished."""


def _named_in_connection(headers: Headers) -> frozenset[bytes]:
    """Header names the sender listed in Connection: hop-by-hop for this message only (RFC 9110 7.6.1)."""
    named: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    return frozenset(named)


def request_headers(headers: Headers, body_length: Optional[int]) -> Headers:
    """The client's headers for the upstream hop: hop-by-hop dropped, the body's length declared when known.

    `body_length` is the size of a body read whole, or None for one still streaming in: that one keeps
    the client's Content-Length when it gave one, else goes chunked.
    """
    declared = next((value for name, value in headers if name == b"content-length"), None)
    dropped = _DROP_FROM_REQUEST | _named_in_connection(headers)
    kept = [(name, value) for name, value in headers if name not in dropped]
    if body_length is not None:
        if body_length or declared is not None:
            kept.append((b"content-length", str(body_length).encode()))
    elif declared is not None:
        kept.append((b"content-length", declared))
    return kept  # a streamed body of unknown length goes chunked


def response_headers(headers: Headers) -> Headers:
    """The upstream's response headers for the client: names lower-cased, hop-by-hop and Date/Server dropped."""
    dropped = _DROP_FROM_RESPONSE | _named_in_connection(headers)
    kept = []
    for name, value in headers:
        name = name.lower()
        if name not in dropped:
            kept.append((name, value))
    return kept


def _body_length(method: bytes, status: int, headers: Headers) -> int:
    """The response body's declared size, or -1 when it is chunked, read to close, or absent."""
    if method == b"HEAD" or status in (204, 304) or status < 200:
        return -1
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return -1


class Passthrough:
    """An ASGI app forwarding every request to the upstream vLLM over pooled keep-alive connections."""

    def __init__(
        self,
        upstream_url: str,
        state: UpstreamState,
        metrics: ProxyMetrics,
        *,
        max_connections: int = MAX_CONNECTIONS,
        keepalive_expiry_s: float = KEEPALIVE_EXPIRY_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        api_key: Optional[str] = None,
    ) -> None:
        parts = urlsplit(upstream_url)
        # vLLM on loopback asks for the same key: the client's header (or none, on an open path) is replaced.
        self._authorization = bearer_header(api_key).encode("latin-1") if api_key else None
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the upstream must be a plain http:// URL, got {upstream_url!r}")
        port = parts.port or 80
        netloc = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname  # an IPv6 address
        self._host = f"{netloc}:{port}".encode("ascii")
        self._prefix = parts.path.rstrip("/").encode()
        self._base = f"http://{self._host.decode()}{self._prefix.decode()}"
        self._limits = (max_connections, keepalive_expiry_s, connect_timeout_s)
        self._session: Optional[aiohttp.ClientSession] = None
        self._state = state
        self._metrics = metrics

    async def aclose(self) -> None:
        """Close the upstream connections."""
        if self._session is not None:
            await self._session.close()

    def _client(self) -> aiohttp.ClientSession:
        """The session, made on first use: aiohttp binds it to the running event loop."""
        if self._session is None:
            limit, keepalive_s, connect_s = self._limits
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=limit, keepalive_timeout=keepalive_s),
                # No read timeout: a generation (or an SSE stream) takes as long as it takes.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_s),
                auto_decompress=False,
                skip_auto_headers=_NOT_ADDED,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._session

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
            # From here on the client's next message can only be its disconnect.
            nonlocal watcher
            if watcher is None:
                watcher = asyncio.ensure_future(watch_disconnect())

        first = await receive()
        if first["type"] == "http.disconnect":
            return
        response: Optional[aiohttp.ClientResponse] = None
        try:
            try:
                response = await self._send_request(scope, first, receive, body_complete, flags)
            except _ClientGone:
                return
            except _UPSTREAM_ERRORS as exc:
                if flags["gone"]:
                    return  # the client left half-way through its body; aiohttp reports that as a send failure
                self._metrics.passthrough.labels(status="502").inc()
                self._metrics.errors.labels(kind="passthrough").inc()
                answer = openai_error_response(
                    502, f"The model server did not answer: {self._describe(exc)}", "BadGatewayError"
                )
                flags["done"] = True
                await answer(scope, receive, send)
                return
            await self._relay(scope, response, send, flags)
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
                # An unfinished response closes its connection: that is how vLLM learns to abort it.
                if response.content.is_eof():
                    response.release()
                else:
                    response.close()

    async def _send_request(
        self,
        scope: Scope,
        first: dict[str, Any],
        receive: Receive,
        body_complete: Callable[[], None],
        flags: dict[str, bool],
    ) -> aiohttp.ClientResponse:
        target = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        content: Union[bytes, AsyncIterator[bytes]]
        if first.get("more_body", False):
            content = self._stream_body(first, receive, body_complete, flags)
            headers = request_headers(scope["headers"], None)
        else:
            body_complete()
            content = first.get("body", b"")
            headers = request_headers(scope["headers"], len(content))
        if self._authorization is not None:
            headers = [(name, value) for name, value in headers if name != b"authorization"]
            headers.append((b"authorization", self._authorization))
        return await self._client().request(
            scope["method"],
            URL(self._base + target, encoded=True),
            headers=[(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers],
            data=content,
            allow_redirects=False,
        )

    async def _stream_body(
        self, first: dict[str, Any], receive: Receive, body_complete: Callable[[], None], flags: dict[str, bool]
    ) -> AsyncIterator[bytes]:
        """The client's body as it arrives; a disconnect half-way ends the exchange."""
        message = first
        while True:
            data = message.get("body", b"")
            more = bool(message.get("more_body", False))
            if not more:
                body_complete()
            if data:
                yield data
            if not more:
                return
            message = await receive()
            if message["type"] == "http.disconnect":
                flags["gone"] = True
                raise _ClientGone()

    async def _relay(self, scope: Scope, response: aiohttp.ClientResponse, send: Send, flags: dict[str, bool]) -> None:
        """Send the response on as its body arrives; a body that breaks off cuts the client's response too."""
        self._metrics.passthrough.labels(status=str(response.status)).inc()
        headers = response_headers(list(response.raw_headers))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        remaining = _body_length(scope["method"].encode(), response.status, response.raw_headers)
        finished = False
        try:
            # What has arrived goes on at once, several chunks in one message when they came together.
            async for data in response.content.iter_any():
                if remaining > 0:
                    remaining -= len(data)
                    if remaining <= 0:  # the whole body: one message when it came in one read
                        flags["done"] = finished = True
                        await send({"type": "http.response.body", "body": data, "more_body": False})
                        break
                await send({"type": "http.response.body", "body": data, "more_body": True})
        except _UPSTREAM_ERRORS as exc:
            # The status line is gone already: returning unfinished makes the server cut the client's connection.
            log.warning("upstream response broke off: %s", self._describe(exc))
            self._metrics.errors.labels(kind="passthrough").inc()
            return
        if not finished:
            flags["done"] = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _describe(self, exc: Exception) -> str:
        what = str(exc) or "no details"
        if isinstance(exc, (aiohttp.ClientConnectorError, asyncio.TimeoutError)):
            return f"cannot connect to {self._host.decode()} ({type(exc).__name__}: {what})"
        return f"{type(exc).__name__}: {what}"

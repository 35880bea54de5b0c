"""An httpx transport to vLLM with O(1) work per request: keep-alive connections on a LIFO stack.

httpx's default pool re-scans every connection (polling each idle socket) on every request and
every response, which dominates the cost once dozens of requests are in flight. Here an idle
connection is popped, used, and pushed back when its response is closed; only the popped connection
is checked for a server-side close. The connections run on plain asyncio sockets, and a request's
head and body leave in one write instead of one system call per part.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import socket
from typing import Any, AsyncIterator, Awaitable, Iterable, Optional, TypeVar

import httpcore
import httpx

# httpcore's errors as the httpx errors callers catch (httpx maps them the same way).
_ERRORS: tuple[tuple[type[Exception], type[Exception]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


T = TypeVar("T")
FLUSH_AT_BYTES = 64 * 1024


async def _bounded(awaitable: Awaitable[T], timeout: Optional[float]) -> T:
    return await (awaitable if timeout is None else asyncio.wait_for(awaitable, timeout))


class SocketStream(httpcore.AsyncNetworkStream):
    """One TCP connection; writes are gathered and sent when a read follows (or 64 KiB wait)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    async def _flush(self, timeout: Optional[float]) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        try:
            await _bounded(asyncio.get_running_loop().sock_sendall(self._sock, data), timeout)
        except asyncio.TimeoutError:
            raise httpcore.WriteTimeout(f"writing to the upstream took longer than {timeout} s") from None
        except OSError as exc:
            raise httpcore.WriteError(str(exc) or type(exc).__name__) from exc

    async def write(self, buffer: bytes, timeout: Optional[float] = None) -> None:
        if not buffer:
            return
        self._pending.append(bytes(buffer))
        self._pending_bytes += len(buffer)
        if self._pending_bytes >= FLUSH_AT_BYTES:
            await self._flush(timeout)

    async def read(self, max_bytes: int, timeout: Optional[float] = None) -> bytes:
        await self._flush(timeout)
        try:
            return await _bounded(asyncio.get_running_loop().sock_recv(self._sock, max_bytes), timeout)
        except asyncio.TimeoutError:
            raise httpcore.ReadTimeout(f"the upstream sent nothing for {timeout} s") from None
        except OSError as exc:
            raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        self._pending.clear()
        self._sock.close()

    async def start_tls(
        self, ssl_context: Any, server_hostname: Optional[str] = None, timeout: Optional[float] = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("this transport speaks plain HTTP to a local upstream only")

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # an idle keep-alive socket is readable only when the server closed it
            try:
                self._sock.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                return False
            except OSError:
                return True
            return True
        if info == "socket":
            return self._sock
        if info == "client_addr":
            return self._sock.getsockname()
        if info == "server_addr":
            return self._sock.getpeername()
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """TCP connections on the running asyncio loop's own socket functions (uvloop's when in use)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: Optional[float] = None,
        local_address: Optional[str] = None,
        socket_options: Optional[Iterable[Any]] = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            ipaddress.ip_address(host)
            infos = [(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, 0, "", (host, port))]
        except ValueError:
            try:
                infos = await _bounded(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout)
            except asyncio.TimeoutError:
                raise httpcore.ConnectTimeout(f"resolving {host} took longer than {timeout} s") from None
            except OSError as exc:
                raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        last: Optional[OSError] = None
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for option in socket_options or ():
                    sock.setsockopt(*option)
                if local_address:
                    sock.bind((local_address, 0))
                await _bounded(loop.sock_connect(sock, address), timeout)
                return SocketStream(sock)
            except asyncio.TimeoutError:
                sock.close()
                raise httpcore.ConnectTimeout(f"connecting to {host}:{port} took longer than {timeout} s") from None
            except OSError as exc:
                sock.close()
                last = exc
            except BaseException:
                sock.close()
                raise
        raise httpcore.ConnectError(f"cannot connect to {host}:{port}: {last}")

    async def connect_unix_socket(
        self, path: str, timeout: Optional[float] = None, socket_options: Optional[Iterable[Any]] = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("unix sockets are not used for the upstream")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def _as_httpx(exc: Exception) -> Exception:
    for theirs, ours in _ERRORS:
        if isinstance(exc, theirs):
            return ours(str(exc))
    return exc


class _ResponseStream(httpx.AsyncByteStream):
    """The response body; closing it hands the connection back to the pool."""

    def __init__(
        self,
        stream: AsyncIterator[bytes],
        pool: "KeepAliveTransport",
        connection: httpcore.AsyncHTTPConnection,
        key: tuple,
    ) -> None:
        self._stream = stream
        self._pool = pool
        self._connection: Optional[httpcore.AsyncHTTPConnection] = connection
        self._key = key

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except httpcore.NetworkError as exc:
            raise _as_httpx(exc) from exc
        except httpcore.ProtocolError as exc:
            raise _as_httpx(exc) from exc
        except httpcore.TimeoutException as exc:
            raise _as_httpx(exc) from exc

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            await self._stream.aclose()  # type: ignore[attr-defined]
        finally:
            self._pool._release(self._key, connection)


class KeepAliveTransport(httpx.AsyncBaseTransport):
    """Plain-HTTP/1.1 keep-alive connections, at most `max_connections` open; extra requests wait."""

    def __init__(self, max_connections: int, *, keepalive_expiry: float = 30.0) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self._idle: dict[tuple, list[httpcore.AsyncHTTPConnection]] = collections.defaultdict(list)
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False
        self._backend = AsyncioBackend()

    @property
    def open_connections(self) -> int:
        """Connections open now (idle or in use)."""
        return self._open

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        key = (url.raw_scheme, url.raw_host, url.port)
        connection = await self._acquire(key)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,  # type: ignore[arg-type]
            extensions=request.extensions,
        )
        try:
            response = await connection.handle_async_request(core_request)
        except BaseException as exc:
            self._release(key, connection)
            if isinstance(exc, Exception):
                mapped = _as_httpx(exc)
                if mapped is not exc:
                    raise mapped from exc
            raise
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream, self, connection, key),  # type: ignore[arg-type]
            extensions=response.extensions,
        )

    async def _acquire(self, key: tuple) -> httpcore.AsyncHTTPConnection:
        while True:
            if self._closed:
                raise httpx.ConnectError("the transport is closed")
            idle = self._idle[key]
            while idle:
                connection = idle.pop()
                if connection.is_available() and not connection.has_expired():
                    return connection
                await connection.aclose()
                self._open -= 1
            if self._open < self.max_connections:
                self._open += 1
                scheme, host, port = key
                default = 443 if scheme == b"https" else 80
                origin = httpcore.Origin(scheme, host, port or default)
                return httpcore.AsyncHTTPConnection(
                    origin=origin, keepalive_expiry=self.keepalive_expiry, network_backend=self._backend
                )
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # pass the wake-up on
                raise

    def _release(self, key: tuple, connection: httpcore.AsyncHTTPConnection) -> None:
        if connection.is_available() and not self._closed:
            self._idle[key].append(connection)
        else:
            self._open -= 1
            if not connection.is_closed():
                asyncio.ensure_future(connection.aclose())
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                await idle.pop().aclose()
                self._open -= 1
        self._wake()

"""A lean HTTP/1.1 client for the passthrough to the loopback vLLM: keep-alive pool and message framing.

The passthrough forwards bytes and never interprets bodies, so it needs only HTTP/1.1 framing
(Content-Length, chunked, read-to-close) and connection reuse. Doing that on asyncio streams costs a
few tens of microseconds per request, where a general-purpose client stack costs several hundred.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import AsyncIterator, Optional

HEAD_LIMIT = 1 << 20  # largest response head accepted from the upstream
READ_SIZE = 1 << 16


class UpstreamUnavailable(Exception):
    """The upstream could not be reached or broke the exchange before answering."""


@dataclass
class ResponseHead:
    """Status and headers of an upstream response, and how its body is framed."""

    status: int
    headers: list[tuple[bytes, bytes]]
    length: int  # -1: chunked, -2: until the connection closes, else the byte count
    keep_alive: bool


class Connection:
    """One keep-alive TCP connection to the upstream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reused = False

    def usable(self) -> bool:
        """Idle and not closed by the server (an idle socket with data or EOF pending is not)."""
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


class Pool:
    """At most `max_connections` connections to one host:port, reused last-in first-out."""

    def __init__(self, host: str, port: int, max_connections: int, connect_timeout_s: float) -> None:
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        self._idle: list[Connection] = []
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def open_connections(self) -> int:
        return self._open

    async def acquire(self, *, fresh: bool = False) -> Connection:
        """An idle connection, a new one, or (at the limit) the next one released."""
        while True:
            while self._idle and not fresh:
                connection = self._idle.pop()
                if connection.usable():
                    connection.reused = True
                    return connection
                connection.close()
                self._open -= 1
            if self._open < self.max_connections:
                self._open += 1
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(self.host, self.port, limit=HEAD_LIMIT), self.connect_timeout_s
                    )
                except BaseException as exc:
                    self._open -= 1
                    self._wake()
                    if isinstance(exc, (OSError, asyncio.TimeoutError)):
                        raise UpstreamUnavailable(
                            f"cannot connect to {self.host}:{self.port} ({type(exc).__name__}: {exc})"
                        ) from exc
                    raise
                return Connection(reader, writer)
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()
                raise

    def release(self, connection: Connection, *, reusable: bool) -> None:
        """Hand a connection back after its exchange; broken or unfinished ones are closed."""
        if reusable and connection.usable():
            self._idle.append(connection)
        else:
            connection.close()
            self._open -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        """Close idle connections (those in use close when their exchange ends)."""
        while self._idle:
            self._idle.pop().close()
            self._open -= 1


def request_head(method: str, target: bytes, host: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The request line and headers, ready for the wire."""
    lines = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
    for name, value in headers:
        lines += [name, b": ", value, b"\r\n"]
    lines.append(b"\r\n")
    return b"".join(lines)


def _parse_head(raw: bytes, method: str) -> ResponseHead:
    lines = raw.split(b"\r\n")
    status_line = lines[0].split(b" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
        raise UpstreamUnavailable(f"the upstream answered something that is not HTTP/1.x: {lines[0][:80]!r}")
    status = int(status_line[1])
    headers: list[tuple[bytes, bytes]] = []
    length = -2
    chunked = False
    keep_alive = status_line[0] == b"HTTP/1.1"
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(b":")
        name, value = name.strip(), value.strip()
        lower = name.lower()
        if lower == b"content-length":
            length = int(value)
        elif lower == b"transfer-encoding":
            chunked = value.lower().endswith(b"chunked")
        elif lower == b"connection":
            tokens = {token.strip() for token in value.lower().split(b",")}
            if b"close" in tokens:
                keep_alive = False
            elif b"keep-alive" in tokens:
                keep_alive = True
        headers.append((name, value))
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        length = 0
    elif chunked:
        length = -1
    if length == -2:
        keep_alive = False
    return ResponseHead(status, headers, length, keep_alive)


async def read_head(reader: asyncio.StreamReader, method: str) -> ResponseHead:
    """The next final (non-1xx) response head."""
    while True:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise UpstreamUnavailable("the upstream closed the connection before answering") from exc
        except asyncio.LimitOverrunError as exc:
            raise UpstreamUnavailable("the upstream's response head is too large") from exc
        head = _parse_head(raw[:-4], method)
        if head.status >= 200 or head.status == 101:
            return head


async def read_body(reader: asyncio.StreamReader, head: ResponseHead) -> AsyncIterator[bytes]:
    """The body's payload as it arrives (chunk framing removed); ends at the message's end."""
    if head.length >= 0:
        remaining = head.length
        while remaining > 0:
            data = await reader.read(min(remaining, READ_SIZE))
            if not data:
                raise UpstreamUnavailable("the upstream closed the connection in the middle of a response")
            remaining -= len(data)
            yield data
        return
    if head.length == -2:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                return
            yield data
    async for data in _dechunk(reader, head):
        yield data


async def _dechunk(reader: asyncio.StreamReader, head: ResponseHead) -> AsyncIterator[bytes]:
    """Chunked framing removed as data arrives; chunks that arrived together are passed on together."""
    buffer = bytearray()
    remaining = 0  # payload bytes left in the current chunk
    state = "size"  # size -> data -> crlf -> size ... -> trailers
    while True:
        out = bytearray()
        while True:
            if state == "data":
                take = min(remaining, len(buffer))
                out += buffer[:take]
                del buffer[:take]
                remaining -= take
                if remaining:
                    break
                state = "crlf"
            if state == "crlf":
                if len(buffer) < 2:
                    break
                if buffer[:2] != b"\r\n":
                    raise UpstreamUnavailable("the upstream sent a broken chunked response")
                del buffer[:2]
                state = "size"
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > 8192:
                    raise UpstreamUnavailable("the upstream sent a broken chunked response")
                break
            line = bytes(buffer[:end])
            del buffer[: end + 2]
            if state == "trailers":
                if not line:  # the blank line after the trailers: the message is complete
                    if buffer:
                        head.keep_alive = False  # bytes beyond the message: do not reuse
                    if out:
                        yield bytes(out)
                    return
                continue
            try:
                remaining = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise UpstreamUnavailable("the upstream sent a broken chunked response") from exc
            state = "data" if remaining else "trailers"
        if out:
            yield bytes(out)
        data = await reader.read(READ_SIZE)
        if not data:
            raise UpstreamUnavailable("the upstream closed the connection in the middle of a chunked response")
        buffer += data


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked request body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def body_framing(
    headers: list[tuple[bytes, bytes]], body_length: Optional[int]
) -> tuple[list[tuple[bytes, bytes]], bool]:
    """Request headers with the body's framing set: Content-Length when known, else chunked."""
    kept = [(name, value) for name, value in headers if name not in (b"content-length", b"transfer-encoding")]
    if body_length is not None:
        declared = next((value for name, value in headers if name == b"content-length"), None)
        if body_length or declared is not None:
            kept.append((b"content-length", str(body_length).encode()))
        return kept, False
    declared = next((value for name, value in headers if name == b"content-length"), None)
    if declared is not None:
        kept.append((b"content-length", declared))
        return kept, False
    kept.append((b"transfer-encoding", b"chunked"))
    return kept, True

"""What the proxy adds to vLLM's OpenAI API: the same requests straight to a vLLM-like upstream and through
the proxy (real uvicorn), side by side in one run, JSON and SSE, at concurrency 1 and 64.

The upstream is a small HTTP/1.1 server on loopback answering /v1/chat/completions like vLLM does (a JSON
completion, or an SSE stream of chunks ending in [DONE]); `--upstream-delay-ms` gives it a service time.
The load generator keeps one keep-alive connection per concurrent client. Everything stays on 127.0.0.1
and every phase is bounded in requests and seconds.

    .venv/bin/python bench/proxy_overhead.py
    .venv/bin/python bench/proxy_overhead.py --upstream-delay-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
MODEL = "PaddleOCR-VL-0.9B"


# ---------------------------------------------------------------- the vLLM-like upstream


def _completion_json() -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Revenue grew in every region during the quarter."},
                    "logprobs": None,
                    "finish_reason": "stop",
                    "stop_reason": None,
                }
            ],
            "usage": {"prompt_tokens": 412, "total_tokens": 424, "completion_tokens": 12},
        }
    ).encode()


def _sse_chunks(events: int) -> list[bytes]:
    chunks = []
    for index in range(events):
        data = json.dumps(
            {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": MODEL,
             "choices": [{"index": 0, "delta": {"content": f"token{index} "}, "finish_reason": None}]}
        )  # fmt: skip
        chunks.append(f"data: {data}\n\n".encode())
    chunks.append(b"data: [DONE]\n\n")
    return [f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks] + [b"0\r\n\r\n"]


class UpstreamProtocol(asyncio.Protocol):
    """One keep-alive connection of the fake vLLM: parse a request, answer JSON or SSE."""

    json_response = b""
    sse_response = b""
    delay_s = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buffer = bytearray()
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            length = 0
            marker = head.find(b"content-length:")
            if marker >= 0:
                length = int(head[marker + 15 : head.find(b"\r\n", marker) if head.find(b"\r\n", marker) > 0 else None])
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            body = bytes(self.buffer[end + 4 : total])
            del self.buffer[:total]
            stream = b'"stream": true' in body or b'"stream":true' in body
            answer = self.sse_response if stream else self.json_response
            if self.delay_s:
                self.loop.call_later(self.delay_s, self._write, answer)
            else:
                self._write(answer)

    def _write(self, answer: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(answer)


def serve_upstream(port: int, delay_ms: float, events: int) -> None:
    body = _completion_json()
    UpstreamProtocol.json_response = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    )
    UpstreamProtocol.sse_response = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n"
        + b"".join(_sse_chunks(events))
    )
    UpstreamProtocol.delay_s = delay_ms / 1000.0

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(UpstreamProtocol, HOST, port, backlog=1024)
        async with server:
            await server.serve_forever()

    _run(main())


# ---------------------------------------------------------------- the proxy under test


def serve_proxy(port: int, upstream_port: int) -> None:
    import uvicorn

    from vllm_paddle_ocr.plugin.records import ProxySettings
    from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.state import UpstreamState
    from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.app import create_app

    settings = ProxySettings(
        host=HOST, port=port, upstream_url=f"http://{HOST}:{upstream_port}", served_model_name=MODEL,
        model_aliases=[MODEL], model_version="0.9B", layout_dir=None, layout_model_name=None, layout_device="cpu",
        concurrency=64, data_dir=Path(tempfile.gettempdir()), max_body_bytes=200 * 1024**2, max_pages=1000, max_page_pixels=178_956_970,
        allow_url_input=False, url_allow_hosts=[], ready_timeout_s=10.0, shutdown_grace_s=1.0,
    )  # fmt: skip
    app = create_app(settings, state=UpstreamState(ready=True))
    loop = "uvloop" if _has_uvloop() else "asyncio"
    http = "httptools" if _has("httptools") else "h11"
    uvicorn.run(app, host=HOST, port=port, loop=loop, http=http, log_level="warning", access_log=False)


# ---------------------------------------------------------------- load generator


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    marker = lower.find(b"content-length:")
    if marker >= 0:
        length = int(lower[marker + 15 : lower.find(b"\r\n", marker)])
        await reader.readexactly(length)
        return status
    while True:  # chunked
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return status
        await reader.readexactly(size + 2)


def _request(stream: bool) -> bytes:
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + "A" * 4000}},
                {"type": "text", "text": "OCR:"}]}],
            "max_completion_tokens": 4096,
            "temperature": 0,
            "stream": stream,
        }
    ).encode()  # fmt: skip
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {HOST}\r\ncontent-type: application/json\r\n"
        f"accept: */*\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


@dataclass
class Phase:
    latencies: list[float]
    seconds: float

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def load(port: int, concurrency: int, requests: int, max_seconds: float, stream: bool) -> Phase:
    request = _request(stream)
    latencies: list[float] = []
    remaining = [requests]
    deadline = time.perf_counter() + max_seconds

    async def client() -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while remaining[0] > 0 and time.perf_counter() < deadline:
                remaining[0] -= 1
                started = time.perf_counter()
                writer.write(request)
                status = await _read_response(reader)
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    raise RuntimeError(f"HTTP {status} from port {port}")
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return Phase(latencies, time.perf_counter() - started)


# ---------------------------------------------------------------- orchestration


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def _has_uvloop() -> bool:
    return _has("uvloop")


def _run(coro) -> None:
    if _has_uvloop():
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a bench server exited with {proc.returncode}")
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {HOST}:{port} after {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="requests per phase at concurrency 1")
    parser.add_argument("--requests-64", type=int, default=12000, help="requests per phase at concurrency 64")
    parser.add_argument("--seconds", type=float, default=12.0, help="upper bound on one phase")
    parser.add_argument("--upstream-delay-ms", type=float, default=0.0, help="upstream service time per request")
    parser.add_argument("--sse-events", type=int, default=16, help="chunks in each SSE answer")
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-proxy", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream, args.upstream_delay_ms, args.sse_events)
        return
    if args.serve_proxy:
        serve_proxy(*args.serve_proxy)
        return

    upstream_port, proxy_port = _free_port(), _free_port()
    me = [sys.executable, os.path.abspath(__file__)]
    procs = [
        subprocess.Popen([*me, "--serve-upstream", str(upstream_port), "--upstream-delay-ms",
                          str(args.upstream_delay_ms), "--sse-events", str(args.sse_events)]),
        subprocess.Popen([*me, "--serve-proxy", str(proxy_port), str(upstream_port)]),
    ]  # fmt: skip
    try:
        _wait_port(upstream_port, procs[0])
        _wait_port(proxy_port, procs[1])
        _run(_measure(args, upstream_port, proxy_port, procs[1].pid))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


async def _measure(args: argparse.Namespace, upstream_port: int, proxy_port: int, proxy_pid: int) -> None:
    print(f"proxy overhead on {os.cpu_count()} CPU cores, loopback, upstream service time "
          f"{args.upstream_delay_ms:g} ms, SSE answers of {args.sse_events} chunks")  # fmt: skip
    print("(p50/p99 added = proxied minus direct; throughput ratio = proxied / direct requests per second)\n")
    import psutil

    proxy = psutil.Process(proxy_pid)
    header = f"{'answer':6} {'conc':>4} {'direct p50':>10} {'proxy p50':>10} {'added p50':>10} {'added p99':>10} " \
             f"{'direct rps':>10} {'proxy rps':>10} {'ratio':>6} {'proxy CPU/req':>13}"  # fmt: skip
    print(header)
    print("-" * len(header))
    for stream in (False, True):
        for concurrency, requests in ((1, args.requests), (64, args.requests_64)):
            await load(upstream_port, concurrency, min(200, requests), args.seconds, stream)  # warm-up
            await load(proxy_port, concurrency, min(200, requests), args.seconds, stream)
            direct = await load(upstream_port, concurrency, requests, args.seconds, stream)
            before = proxy.cpu_times()
            proxied = await load(proxy_port, concurrency, requests, args.seconds, stream)
            after = proxy.cpu_times()
            cpu_us = ((after.user - before.user) + (after.system - before.system)) / len(proxied.latencies) * 1e6
            added50 = (proxied.percentile(0.5) - direct.percentile(0.5)) * 1000
            added99 = (proxied.percentile(0.99) - direct.percentile(0.99)) * 1000
            print(
                f"{'SSE' if stream else 'JSON':6} {concurrency:>4} {direct.percentile(0.5) * 1000:>8.3f}ms "
                f"{proxied.percentile(0.5) * 1000:>8.3f}ms {added50:>8.3f}ms {added99:>8.3f}ms "
                f"{direct.throughput:>10.0f} {proxied.throughput:>10.0f} {proxied.throughput / direct.throughput:>6.2f} "
                f"{cpu_us:>10.0f} us"
            )
    print("\ngoals: added p50 <= 0.5 ms, throughput ratio >= 0.95")


if __name__ == "__main__":
    main()

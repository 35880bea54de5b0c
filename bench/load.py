"""Many clients at once against /layout-parsing: answers by status, lost requests, latency and the proxy's
peak memory, with admission control on (the defaults) and off (the baseline), side by side in one run.

The VLM is tests/fixtures/fake_vllm.py's FakeVllm with a fixed latency per block, in its own process; the
proxy (real uvicorn) runs in another, so its RSS is its own. Each client sends one request at once, no
layout model (useLayoutDetection false: the page is one block); half the pages are noise PNGs, half a
small printed page. A request is lost when the client gets no HTTP answer at all. Without admission
control every waiting request holds its decoded body, so the baseline's memory grows with the clients;
with it, the proxy answers 429 past its bound and its peak memory stays flat.

    .venv/bin/python bench/load.py
    .venv/bin/python bench/load.py --clients 50 200 500 --noise 1200x1600 --vlm-latency-ms 50
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
MODEL = "PaddleOCR-VL-0.9B"
UNBOUNDED = 1_000_000  # admission bounds for the baseline: nothing is ever refused


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- the processes


def serve_vlm(port: int, latency_ms: float) -> None:
    """FakeVllm answering every block after a fixed latency."""
    sys.path.insert(0, str(ROOT))
    import uvicorn

    from tests.fixtures.fake_vllm import FakeVllm

    async def answer(body: dict) -> str:
        return "Revenue grew in every region during the quarter."

    fake = FakeVllm(answer=answer, delay_s=latency_ms / 1000.0)
    fake.bodies = _Discard()  # type: ignore[assignment]  # keep nothing per request
    fake.headers_seen = _Discard()  # type: ignore[assignment]
    uvicorn.run(fake, host=HOST, port=port, log_level="warning", access_log=False, backlog=4096)


class _Discard(list):
    def append(self, item: object) -> None:
        pass


def serve_proxy(port: int, vlm_port: int, admission: bool, concurrency: int) -> None:
    """The proxy app in front of the fake VLM, admission control at its defaults or unbounded."""
    import uvicorn

    from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.app import create_app
    from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.state import UpstreamState
    from vllm_paddle_ocr.plugin.records import ProxySettings

    bounds = {} if admission else {"max_active_requests": UNBOUNDED, "max_active_pages": UNBOUNDED, "max_held_bytes": 1 << 50}
    settings = ProxySettings(
        host=HOST, port=port, upstream_url=f"http://{HOST}:{vlm_port}", served_model_name=MODEL, model_aliases=[MODEL],
        model_version="0.9B", layout_dir=None, layout_model_name=None, layout_device="cpu", concurrency=concurrency,
        data_dir=Path(tempfile.mkdtemp(prefix="bench-load-")), max_body_bytes=200 * 1024**2, max_pages=1000,
        max_page_pixels=178_956_970, allow_url_input=False, url_allow_hosts=[], ready_timeout_s=10.0,
        shutdown_grace_s=1.0, **bounds,
    )  # fmt: skip
    app = create_app(settings, state=UpstreamState(ready=True), visualize_default=False)
    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False, backlog=4096, timeout_keep_alive=60)


def _spawn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, __file__, *args], env=env, stdout=subprocess.DEVNULL, stderr=None)


def _wait_port(port: int, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a bench process exited with {proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {HOST}:{port} after {timeout_s} s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- the load


def bodies(noise: tuple[int, int]) -> list[bytes]:
    """Two request bodies: a noise PNG (large, incompressible) and a small printed page."""
    import numpy as np
    from PIL import Image, ImageDraw

    width, height = noise
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    page = Image.new("RGB", (800, 1000), "white")
    ImageDraw.Draw(page).text((60, 60), "Quarterly Report\nRevenue grew in every region.", fill="black")
    out = []
    for image in (Image.fromarray(pixels), page):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        payload = {
            "file": base64.b64encode(buffer.getvalue()).decode(), "fileType": 1, "useLayoutDetection": False,
            "promptLabel": "ocr", "visualize": False,
        }  # fmt: skip
        out.append(json.dumps(payload).encode())
    return out


async def _sample_rss(pid: int, peak: list[int], stop: asyncio.Event) -> None:
    import psutil

    proc = psutil.Process(pid)
    while not stop.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        await asyncio.sleep(0.05)


async def run_load(port: int, pid: int, clients: int, payloads: list[bytes], timeout_s: float) -> dict:
    import httpx
    import psutil

    statuses: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    peak = [psutil.Process(pid).memory_info().rss]
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(_sample_rss(pid, peak, stop))
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", limits=limits, timeout=timeout_s) as client:

        async def one(index: int) -> None:
            started = time.monotonic()
            try:
                answer = await client.post(
                    "/layout-parsing", content=payloads[index % 2], headers={"content-type": "application/json"}
                )
                statuses[str(answer.status_code)] += 1
            except httpx.HTTPError as exc:
                statuses[f"lost ({type(exc).__name__})"] += 1
            latencies.append(time.monotonic() - started)

        started = time.monotonic()
        await asyncio.gather(*(one(index) for index in range(clients)))
        wall = time.monotonic() - started
    stop.set()
    await sampler
    ordered = sorted(latencies)
    return {
        "statuses": dict(sorted(statuses.items())),
        "lost": sum(count for status, count in statuses.items() if status.startswith("lost")),
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "wall": wall,
        "peak_rss": peak[0],
    }


def measure(args: argparse.Namespace, admission: bool, payloads: list[bytes]) -> dict[int, dict]:
    """One fresh proxy per number of clients, so each peak is that load's own."""
    results = {}
    for clients in args.clients:
        vlm_port, proxy_port = _free_port(), _free_port()
        vlm = _spawn("--serve-vlm", str(vlm_port), str(args.vlm_latency_ms))
        proxy = _spawn("--serve-proxy", str(proxy_port), str(vlm_port), "1" if admission else "0", str(args.concurrency))
        try:
            _wait_port(vlm_port, vlm)
            _wait_port(proxy_port, proxy)
            results[clients] = asyncio.run(run_load(proxy_port, proxy.pid, clients, payloads, args.timeout_s))
        finally:
            _stop(proxy)
            _stop(vlm)
    return results


def _mib(value: int) -> str:
    return f"{value / 2**20:7.0f}"


def report(label: str, results: dict[int, dict]) -> None:
    print(f"\n{label}")
    print(f"{'clients':>8} {'answers by status':<34} {'lost':>5} {'p50 s':>7} {'p99 s':>7} {'peak RSS MiB':>13} {'x N=first':>10}")
    first = results[min(results)]["peak_rss"]
    for clients, row in results.items():
        statuses = ", ".join(f"{status}: {count}" for status, count in row["statuses"].items())
        print(
            f"{clients:>8} {statuses:<34} {row['lost']:>5} {row['p50']:>7.2f} {row['p99']:>7.2f} "
            f"{_mib(row['peak_rss']):>13} {row['peak_rss'] / first:>10.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[50, 200, 500])
    parser.add_argument("--noise", default="1200x1600", help="size of the noise PNG half the clients send (WxH)")
    parser.add_argument("--vlm-latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=16, help="the proxy's VLM slots (--concurrency)")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="a client's wait for its answer")
    parser.add_argument("--serve-vlm", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--serve-proxy", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_vlm:
        serve_vlm(int(args.serve_vlm[0]), float(args.serve_vlm[1]))
        return
    if args.serve_proxy:
        port, vlm_port, admission, concurrency = args.serve_proxy
        serve_proxy(int(port), int(vlm_port), admission == "1", int(concurrency))
        return
    width, height = (int(v) for v in args.noise.lower().split("x"))
    payloads = bodies((width, height))
    print(
        f"/layout-parsing, one request per client, all at once; bodies {len(payloads[0]) / 2**20:.1f} MiB (noise "
        f"{width}x{height}) and {len(payloads[1]) / 2**10:.0f} KiB alternately; VLM stub {args.vlm_latency_ms:g} ms "
        f"per block; --concurrency {args.concurrency}"
    )
    baseline = measure(args, admission=False, payloads=payloads)
    bounded = measure(args, admission=True, payloads=payloads)
    report("baseline: admission control off (every request admitted)", baseline)
    report("admission control at its defaults (past the bound: 429 with Retry-After)", bounded)
    print("\npeak RSS, bounded / baseline, per number of clients:")
    for clients in args.clients:
        print(f"{clients:>8} {bounded[clients]['peak_rss'] / baseline[clients]['peak_rss']:>10.2f}")


if __name__ == "__main__":
    main()

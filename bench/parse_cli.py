"""`vllm_paddle_ocr parse` with several documents in flight against one at a time, side by side in one run,
what following each document as a job costs against holding it open on /layout-parsing, and the weight
of the web page and /docs as a browser loads them.

The server is the real proxy app under uvicorn on loopback, in front of a vLLM-like upstream that answers
every block after a fixed delay (tests/fixtures/fake_vllm.py) and a detector with fixed boxes, so the
figures show what the client's concurrency buys while the server has room, not the model's speed.

    .venv/bin/python bench/parse_cli.py
    .venv/bin/python bench/parse_cli.py --documents 24 --block-delay-ms 100
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.documents import make_page_image, png_bytes  # noqa: E402
from tests.fixtures.fake_layout import FakeDetector  # noqa: E402
from tests.fixtures.fake_vllm import FakeVllm, serve_on_loopback  # noqa: E402
from tests.unit.test_proxy_app import answer_by_prompt, settings  # noqa: E402
from vllm_paddle_ocr.backends.vllm_paddle_ocr.client.api import LayoutParsingClient  # noqa: E402
from vllm_paddle_ocr.backends.vllm_paddle_ocr.client.parse import Outcome, find_documents, parse_documents  # noqa: E402
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.app import create_app  # noqa: E402
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.endpoints.ui import WEB_DIR  # noqa: E402
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.state import UpstreamState  # noqa: E402


def serve_proxy(block_delay_s: float, concurrency: int, data_dir: str) -> tuple[str, threading.Event]:
    """The proxy app on loopback in a thread (its jobs under `data_dir`); returns its URL and the event that stops it."""
    started, stop, box = threading.Event(), threading.Event(), {}

    async def main() -> None:
        async with serve_on_loopback(FakeVllm(answer=answer_by_prompt, delay_s=block_delay_s)) as upstream:
            state = UpstreamState()
            state.mark_ready()
            app = create_app(settings(upstream, concurrency=concurrency, data_dir=data_dir), state=state, detector=FakeDetector())
            async with serve_on_loopback(app) as url:
                box["url"] = url
                started.set()
                while not stop.is_set():
                    await asyncio.sleep(0.05)

    threading.Thread(target=lambda: asyncio.run(main()), daemon=True).start()
    if not started.wait(30):
        raise SystemExit("the proxy did not start")
    return box["url"], stop


def time_parse(url: str, inputs: Path, out: Path, in_flight: int) -> float:
    found = find_documents([inputs], out)

    async def main() -> None:
        async with LayoutParsingClient(url) as client:
            outcomes = await parse_documents(
                client, [Outcome(d) for d in found.documents], {"visualize": False}, concurrency=in_flight,
                show_progress=False,
            )
        failed = [o for o in outcomes if o.error]
        if failed:
            raise SystemExit(f"{len(failed)} documents failed: {failed[0].error}")

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # one line per document written
        asyncio.run(main())
    return time.perf_counter() - start


def time_synchronous(url: str, inputs: Path, in_flight: int) -> float:
    """The baseline: the same documents held open on POST /layout-parsing and joined, `in_flight` at a time, nothing written."""
    paths = sorted(inputs.iterdir())

    async def main() -> None:
        slots = asyncio.Semaphore(in_flight)
        async with httpx.AsyncClient(base_url=url, timeout=600) as http:

            async def one(path: Path) -> None:
                async with slots:
                    body = {"file": base64.b64encode(path.read_bytes()).decode(), "fileType": 1, "visualize": False}
                    answer = await http.post("/layout-parsing", json=body)
                    answer.raise_for_status()
                    pages = [{"prunedResult": r["prunedResult"]} for r in answer.json()["result"]["layoutParsingResults"]]
                    joined = await http.post("/restructure-pages", json={"pages": pages, "concatenatePages": True})
                    joined.raise_for_status()

            await asyncio.gather(*(one(path) for path in paths))

    start = time.perf_counter()
    asyncio.run(main())
    return time.perf_counter() - start


def page_weight(html_name: str) -> tuple[int, int]:
    """(files, bytes) a browser fetches at most for one of the package's pages: the HTML and every asset it names."""
    html = (WEB_DIR / html_name).read_text(encoding="utf-8")
    names = [n for n in re.findall(r'(?:src|href)="ui/assets/([^"]+)"', html)]
    files = [WEB_DIR / html_name, *(WEB_DIR / n for n in names)]
    if "katex.min.css" in html:  # the fonts its stylesheet names (woff2 only is shipped and fetched)
        files += sorted((WEB_DIR / "vendor" / "katex" / "fonts").glob("*.woff2"))
    if html_name == "index.html":  # the page's modules import these
        files += [WEB_DIR / "api.js", WEB_DIR / "render.js"]
    return len(files), sum(f.stat().st_size for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=16)
    parser.add_argument("--block-delay-ms", type=float, default=50.0)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--server-concurrency", type=int, default=64, help="the proxy's bound on block requests")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        url, stop = serve_proxy(args.block_delay_ms / 1000, args.server_concurrency, str(Path(tmp) / "data"))
        try:
            inputs = Path(tmp) / "in"
            inputs.mkdir()
            page = png_bytes(make_page_image(600, 800))
            for index in range(args.documents):
                (inputs / f"doc{index:03d}.png").write_bytes(page)
            time_parse(url, inputs, Path(tmp) / "warm", 1)  # warm-up, not counted
            results = [(n, time_parse(url, inputs, Path(tmp) / f"out{n}", n)) for n in args.in_flight]
            synchronous = [(n, time_synchronous(url, inputs, n)) for n in (args.in_flight[0], args.in_flight[-1])]
        finally:
            stop.set()

    base = results[0][1]
    print(f"parse: {args.documents} one-page documents, 7 blocks each, {args.block_delay_ms:.0f} ms per block")
    print(f"{'in flight':>10} {'seconds':>9} {'docs/s':>8} {'vs ' + str(results[0][0]):>8}")
    for n, seconds in results:
        print(f"{n:>10} {seconds:>9.2f} {args.documents / seconds:>8.2f} {base / seconds:>7.2f}x")
    timed = dict(results)
    for n, seconds in synchronous:
        print(
            f"{n} in flight: parse through the jobs API (submit, long polls, join, write) {timed[n]:.2f} s, the same "
            f"documents held open on /layout-parsing and joined {seconds:.2f} s: jobs take {timed[n] / seconds:.2f}x"
        )
    for name, label in (("index.html", "the page (/)"), ("docs.html", "/docs")):
        files, size = page_weight(name)
        print(f"{label}: at most {files} files, {size / 1024:.0f} KiB uncompressed, all from the package")


if __name__ == "__main__":
    main()

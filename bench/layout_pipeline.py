"""How close the /layout-parsing orchestration gets to the VLM's own limit, and what it costs in CPU.

A PDF is parsed by the real pipeline (pypdfium2 rendering, block planning, crops, JPEG encoding,
post-processing, markdown and prunedResult assembly) against a VLM stub that answers every chat
completion after a fixed latency, in a separate process. Layout detection is a stub returning a
fixed page of boxes, so no model time is counted on either side.

With `concurrency` slots, a latency L and B recognised blocks per page, no orchestration can beat
concurrency / (L * B) pages per second: the bench prints the measured rate next to that bound, and
the proxy process's CPU time per page. It also parses a 1-page document while the long one runs,
to show that the shared client does not make the small request wait for the big one.

    .venv/bin/python bench/layout_pipeline.py
    .venv/bin/python bench/layout_pipeline.py --pages 60 --concurrency 32 --latency-ms 200
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import time

HOST = "127.0.0.1"

# A typical page, in reading order: fractions of the page size (PP-DocLayoutV2 labels).
PAGE_LAYOUT = (
    (12, "header", (0.08, 0.02, 0.92, 0.04)),
    (6, "doc_title", (0.10, 0.06, 0.90, 0.10)),
    (22, "text", (0.08, 0.12, 0.92, 0.22)),
    (17, "paragraph_title", (0.08, 0.24, 0.50, 0.27)),
    (22, "text", (0.08, 0.28, 0.92, 0.38)),
    (5, "display_formula", (0.25, 0.40, 0.75, 0.45)),
    (22, "text", (0.08, 0.47, 0.92, 0.55)),
    (21, "table", (0.08, 0.57, 0.92, 0.75)),
    (14, "image", (0.08, 0.77, 0.45, 0.92)),
    (7, "figure_title", (0.50, 0.85, 0.92, 0.88)),
    (22, "text", (0.50, 0.89, 0.92, 0.93)),
    (8, "footer", (0.40, 0.96, 0.60, 0.98)),
)
TABLE_ANSWER = b"<fcel>Region<fcel>Q1<fcel>Q2<nl><fcel>North<fcel>12<fcel>14<nl><fcel>South<fcel>9<fcel>11<nl>"
TEXT_ANSWER = b"Revenue grew in every region during the quarter, while costs stayed flat."


# ---------------------------------------------------------------- the VLM stub (its own process)


def serve_stub(port: int, latency_ms: float) -> None:
    import json

    def answer(content: bytes) -> bytes:
        body = json.dumps(
            {"id": "stub", "object": "chat.completion", "model": "stub",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": content.decode()}, "finish_reason": "stop"}]}
        ).encode()  # fmt: skip
        return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body

    table, text = answer(TABLE_ANSWER), answer(TEXT_ANSWER)

    class Stub(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.buffer, self.loop = transport, bytearray(), asyncio.get_running_loop()

        def data_received(self, data):
            self.buffer += data
            while True:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buffer[:end]).lower()
                marker = head.find(b"content-length:")
                length = int(head[marker + 15 : head.find(b"\r\n", marker)]) if marker >= 0 else 0
                if len(self.buffer) < end + 4 + length:
                    return
                body = bytes(self.buffer[end + 4 : end + 4 + length])
                del self.buffer[: end + 4 + length]
                reply = table if b"Table Recognition:" in body else text
                self.loop.call_later(latency_ms / 1000, self.reply, reply)

        def reply(self, data):
            if not self.transport.is_closing():
                self.transport.write(data)

    async def main():
        server = await asyncio.get_running_loop().create_server(Stub, HOST, port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# ---------------------------------------------------------------- the run


class FixedLayout:
    """Layout 'detection' with no model time: the same page of boxes, scaled to each page."""

    labels: tuple[str, ...] = ()

    def detect(self, image, options=None, *, owner=None):
        from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.layout.base import LayoutBox

        width, height = image.size
        return [
            LayoutBox(
                cls_id,
                label,
                0.9,
                (round(x1 * width), round(y1 * height), round(x2 * width), round(y2 * height)),
                order,
            )
            for order, (cls_id, label, (x1, y1, x2, y2)) in enumerate(PAGE_LAYOUT, start=1)
        ]


def make_pdf(pages: int) -> bytes:
    """A PDF of US-letter pages with text, rules and a table drawn as vector content."""
    import pypdfium2 as pdfium
    from PIL import Image, ImageDraw

    pdf = pdfium.PdfDocument.new()
    picture = Image.new("RGB", (1224, 1584), "white")
    draw = ImageDraw.Draw(picture)
    for row in range(40):
        draw.text((100, 80 + row * 36), f"Line {row}: revenue grew in every region during the quarter.", fill="black")
    for k in range(6):
        draw.line([(100, 900 + k * 40), (1124, 900 + k * 40)], fill="black", width=2)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    for _ in range(pages):
        page = pdf.new_page(612, 792)
        image = pdfium.PdfImage.new(pdf)
        image.load_jpeg(io.BytesIO(buffer.getvalue()), inline=True)
        image.set_matrix(pdfium.PdfMatrix().scale(612, 792))
        page.insert_obj(image)
        page.gen_content()
        page.close()
    out = io.BytesIO()
    pdf.save(out)
    pdf.close()
    return out.getvalue()


async def run(args: argparse.Namespace, port: int) -> None:
    import psutil

    from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.inputs import InputLimits, open_document
    from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.options import request_options
    from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.pipeline import LayoutPipeline
    from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.protocol import InferRequest
    from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.recognition.vlm_client import VlmClient

    limits = InputLimits(1 << 30, 10_000, 178_956_970)
    options = request_options(InferRequest(file="-", visualize=args.visualize), model_version="0.9B")

    class CountingClient(VlmClient):
        sent = 0

        async def complete(self, owner, body):
            self.sent += 1
            return await super().complete(owner, body)

    client = CountingClient(f"http://{HOST}:{port}", "PaddleOCR-VL-0.9B", args.concurrency)
    pipeline = LayoutPipeline(client, pages_in_flight=args.pages_in_flight)
    detector = FixedLayout()
    big_pdf, small_pdf = make_pdf(args.pages), make_pdf(1)

    async def parse(data: bytes, owner: str) -> tuple[float, int]:
        document = open_document(data, "PDF", limits)
        started = time.perf_counter()
        pages = await pipeline.parse(document, options, detector=detector, owner=owner, visualize=args.visualize)
        document.close()
        return time.perf_counter() - started, len(pages)

    await parse(small_pdf, "warm-up")
    small_alone, _ = await parse(small_pdf, "small")

    process = psutil.Process()
    before = process.cpu_times()
    requests_before = client.sent
    big = asyncio.ensure_future(parse(big_pdf, "big"))
    await asyncio.sleep(min(2.0, args.pages * args.latency_ms / 1000 / 4))
    small_beside, _ = await parse(small_pdf, "small")
    seconds, pages = await big
    after = process.cpu_times()
    await client.aclose()

    blocks = (client.sent - requests_before) / (pages + 1)
    bound = args.concurrency / (args.latency_ms / 1000 * blocks)
    rate = (pages + 1) / seconds
    cpu_ms = ((after.user - before.user) + (after.system - before.system)) / (pages + 1) * 1000
    print(f"layout pipeline on {os.cpu_count()} CPU cores: {pages}-page PDF rendered at scale 2, "
          f"{len(PAGE_LAYOUT)} boxes per page, {blocks:.0f} VLM blocks per page, visualize={args.visualize}")  # fmt: skip
    print(f"VLM stub: {args.latency_ms:g} ms per block, {args.concurrency} slots -> bound {bound:.2f} pages/s "
          f"({pipeline.pages_in_flight} pages in flight)")  # fmt: skip
    print(f"measured: {rate:.2f} pages/s = {rate / bound:.2f} of the bound (goal >= 0.90)")
    print(f"proxy CPU: {cpu_ms:.1f} ms per page (rendering, crops, JPEG, assembly; no model time)")
    print(f"1-page request: {small_alone:.2f} s alone, {small_beside:.2f} s while the {pages}-page PDF is parsed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=16, help="VLM slots (the proxy's bound)")
    parser.add_argument("--latency-ms", type=float, default=200.0, help="stub latency per block")
    parser.add_argument("--visualize", action="store_true", help="also draw and return page pictures")
    parser.add_argument("--pages-in-flight", type=int, help="pipeline window (default: from the concurrency)")
    parser.add_argument("--serve-stub", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_stub:
        serve_stub(args.serve_stub, args.latency_ms)
        return
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    stub = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve-stub", str(port), "--latency-ms", str(args.latency_ms)]
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((HOST, port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or stub.poll() is not None:
                    raise SystemExit("the VLM stub did not start") from None
                time.sleep(0.1)
        asyncio.run(run(args, port))
    finally:
        stub.terminate()
        stub.wait(timeout=10)


if __name__ == "__main__":
    main()

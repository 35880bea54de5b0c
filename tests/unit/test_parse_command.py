"""`vllm_paddle_ocr parse` against the real proxy app (a fake vLLM and a fixed-box detector at its edges).

The same command on the real engines is tested in tests/integration/test_parse_command.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import json
import threading
import time
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse

from tests.fixtures.documents import make_page_image, make_pdf, png_bytes, truncated_pdf
from tests.fixtures.fake_layout import FakeDetector
from tests.fixtures.fake_vllm import FakeVllm, serve_on_loopback
from tests.unit.test_proxy_app import answer_by_prompt, settings
from vllm_paddle_ocr.backends.vllm_paddle_ocr.client.api import LayoutParsingClient, ServerError, retry_after_seconds
from vllm_paddle_ocr.backends.vllm_paddle_ocr.client.parse import ParseError, find_documents, request_options
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.app import create_app
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.state import UpstreamState
from vllm_paddle_ocr.backends.vllm_paddle_ocr.serving import cli

PNG = png_bytes(make_page_image(600, 800))


class Gate:
    """ASGI middleware in front of the proxy: answers the first POSTs itself (busy, or asking for a key)."""

    def __init__(self, app, *, busy: list[tuple[int, str | None]] = (), key: str | None = None) -> None:
        self.app = app
        self.busy = list(busy)
        self.key = key
        self.posts: list[dict[str, str]] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            request = Request(scope, receive)
            self.posts.append(dict(request.headers))
            refusal = None
            if self.key is not None and request.headers.get("authorization") != f"Bearer {self.key}":
                refusal = JSONResponse({"logId": "x", "errorCode": 401, "errorMsg": "Missing or wrong API key"}, 401)
            elif self.busy:
                status, retry_after = self.busy.pop(0)
                headers = {"Retry-After": retry_after} if retry_after is not None else {}
                refusal = JSONResponse({"logId": "x", "errorCode": status, "errorMsg": "Busy"}, status, headers=headers)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


@contextlib.contextmanager
def proxy_in_thread(gate=lambda app: app):
    """The proxy app (fake vLLM, fixed boxes) served on loopback from a thread; yields (url, gate)."""
    started = threading.Event()
    stop = threading.Event()
    box: dict = {}

    async def main():
        async with serve_on_loopback(FakeVllm(answer=answer_by_prompt)) as upstream:
            state = UpstreamState()
            state.mark_ready()
            app = gate(create_app(settings(upstream), state=state, detector=FakeDetector()))
            async with serve_on_loopback(app) as url:
                box.update(url=url, app=app)
                started.set()
                while not stop.is_set():
                    await asyncio.sleep(0.05)

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    assert started.wait(30), "the proxy did not start"
    try:
        yield box["url"], box["app"]
    finally:
        stop.set()
        thread.join(30)


def test_parse_writes_markdown_with_pictures_and_json_per_document_and_names_the_failure(tmp_path, capsys):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    (inputs / "report.png").write_bytes(PNG)
    (inputs / "sub" / "two-pages.pdf").write_bytes(make_pdf(2))
    (inputs / "broken.pdf").write_bytes(truncated_pdf())
    (inputs / "notes.txt").write_text("not a document")
    out = tmp_path / "out"
    with proxy_in_thread() as (url, _):
        code = cli.main(["parse", str(inputs), "--server", url, "--out", str(out), "--concurrency", "2"])
    captured = capsys.readouterr()
    assert code == 1
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("vllm_paddle_ocr parse: error: 1 of 3 document(s) failed:") and "broken.pdf (422:" in last
    assert "notes.txt: skipped" in captured.out
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.md")) == [
        "report/report.md", "sub/two-pages/two-pages.md",
    ]  # fmt: skip
    for md in out.rglob("*.md"):
        envelope = json.loads(md.with_suffix(".json").read_text())
        pages = envelope["result"]["layoutParsingResults"]
        pictures = {path for page in pages for path in page["markdown"]["images"]}
        assert pictures, "the fixed layout has an image block on every page"
        on_disk = {p.relative_to(md.parent).as_posix() for p in md.parent.rglob("*.jpg")}
        assert on_disk == pictures
        for path in pictures:
            assert (md.parent / path).read_bytes()[:3] == b"\xff\xd8\xff"
        text = md.read_text()
        assert all(path in text for path in pictures)
    joined = (out / "sub" / "two-pages" / "two-pages.md").read_text()
    single = (out / "report" / "report.md").read_text()
    # Both pages of the PDF are in its one markdown (each page has one table and one text block).
    assert joined.count("<table") == 2 * single.count("<table") == 2
    assert not (out / "broken").exists()


def test_a_busy_server_is_asked_again_after_its_retry_after():
    later = email.utils.formatdate(time.time() + 3, usegmt=True)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    with proxy_in_thread(lambda app: Gate(app, busy=[(429, "2"), (503, later), (429, None)])) as (url, gate):

        async def main():
            async with LayoutParsingClient(url, sleep=sleep) as client:
                return await client.parse(PNG, name="page.png", options={"visualize": False})

        envelope = asyncio.run(main())
    assert len(envelope["result"]["layoutParsingResults"]) == 1
    assert len(gate.posts) == 4
    assert slept[0] == 2.0
    assert 0 < slept[1] <= 3.0  # an HTTP date: the time left until then
    assert slept[2] == 1.0  # no Retry-After: the first step of the back-off


def test_retries_run_out_with_the_servers_own_message():
    async def sleep(seconds: float) -> None:
        pass

    with proxy_in_thread(lambda app: Gate(app, busy=[(429, "0")] * 10)) as (url, gate):

        async def main():
            async with LayoutParsingClient(url, retries=2, sleep=sleep) as client:
                await client.parse(PNG, name="page.png", options={})

        with pytest.raises(ServerError, match=r"^429: Busy$"):
            asyncio.run(main())
    assert len(gate.posts) == 3


def test_a_refused_key_says_how_to_pass_one_and_the_right_key_is_sent(tmp_path, capsys):
    (tmp_path / "page.png").write_bytes(PNG)
    with proxy_in_thread(lambda app: Gate(app, key="s3cret")) as (url, gate):
        refused = cli.main(["parse", str(tmp_path / "page.png"), "--server", url, "--out", str(tmp_path / "a")])
        err = capsys.readouterr().err
        accepted = cli.main(
            ["parse", str(tmp_path / "page.png"), "--server", url, "--out", str(tmp_path / "b"), "--api-key", "s3cret"]
        )
    assert refused == 1 and "401: Missing or wrong API key (pass the server's key with --api-key)" in err
    assert accepted == 0 and (tmp_path / "b" / "page" / "page.md").is_file()
    assert len(gate.posts) == 1 + 2  # refused at once (no retry), then /layout-parsing and /restructure-pages


def test_options_take_json_values_and_refuse_what_is_not_key_value():
    options = request_options(chart=True, extra=["layoutThreshold=0.4", 'markdownIgnoreLabels=["header"]', "promptLabel=ocr"])
    assert options["useChartRecognition"] is True and options["visualize"] is False
    assert options["layoutThreshold"] == 0.4 and options["markdownIgnoreLabels"] == ["header"]
    assert options["promptLabel"] == "ocr"
    with pytest.raises(ParseError, match="KEY=VALUE"):
        request_options(extra=["layoutThreshold"])


def test_documents_that_would_share_an_output_directory_keep_their_suffix(tmp_path):
    for name in ("a.pdf", "a.png", "b.jpg", "c.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = find_documents([tmp_path], Path("out"))
    assert [d.out_dir.as_posix() for d in found.documents] == ["out/a.pdf", "out/a.png", "out/b"]
    assert [p.name for p in found.skipped] == ["c.txt"]
    with pytest.raises(ParseError, match="does not exist"):
        find_documents([tmp_path / "missing.pdf"], Path("out"))


def test_retry_after_reads_seconds_and_http_dates():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(email.utils.formatdate(1000.0 + 30, usegmt=True), now=1000.0) == pytest.approx(30.0)
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None

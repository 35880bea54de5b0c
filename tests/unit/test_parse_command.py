"""`vllm_paddle_ocr parse` against the real proxy app (a fake vLLM and a fixed-box detector at its edges).

Each document goes through the real jobs API (SQLite store in the test's directory). The same command on
the real engines, Ctrl-C included, is tested in tests/integration/test_parse_command.py.
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

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse

from tests.fixtures.documents import make_page_image, make_pdf, png_bytes, truncated_pdf
from tests.fixtures.fake_layout import FakeDetector
from tests.fixtures.fake_vllm import FakeVllm, serve_on_loopback
from tests.unit.test_proxy_app import answer_by_prompt, settings
from vllm_paddle_ocr.backends.vllm_paddle_ocr.client.api import (
    JobEnded,
    JobProgress,
    LayoutParsingClient,
    ServerError,
    retry_after_seconds,
)
from vllm_paddle_ocr.backends.vllm_paddle_ocr.client.parse import (
    Outcome,
    ParseError,
    find_documents,
    interrupted_summary,
    parse_documents,
    request_options,
)
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.app import create_app
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.state import UpstreamState
from vllm_paddle_ocr.backends.vllm_paddle_ocr.serving import cli

PNG = png_bytes(make_page_image(600, 800))
JOBS = "/layout-parsing/jobs"


class Gate:
    """ASGI middleware in front of the proxy: records every request, and answers the first ones it is told to refuse.

    `busy` holds (request, status, Retry-After) refusals, each answered to the next request that matches:
    a method ("POST"), or a method and path ("POST /layout-parsing/jobs").
    """

    def __init__(self, app, *, busy: list[tuple[str, int, str | None]] = ()) -> None:
        self.app = app
        self.busy = list(busy)
        self.seen: list[tuple[str, str]] = []  # (method, path) of every request, refused ones included

    def requests(self, method: str, suffix: str = "") -> list[str]:
        return [path for m, path in self.seen if m == method and path.endswith(suffix)]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            request = Request(scope, receive)
            self.seen.append((request.method, request.url.path))
            asked = (request.method, f"{request.method} {request.url.path}")
            refusal = next((entry for entry in self.busy if entry[0] in asked), None)
            if refusal is not None:
                self.busy.remove(refusal)
                _, status, retry_after = refusal
                headers = {"Retry-After": retry_after} if retry_after is not None else {}
                answer = JSONResponse({"logId": "x", "errorCode": status, "errorMsg": "Busy"}, status, headers=headers)
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)


@contextlib.contextmanager
def proxy_in_thread(data_dir: Path, gate=Gate, *, fake: FakeVllm | None = None, **overrides):
    """The proxy app (fake vLLM, fixed boxes, jobs under `data_dir`) on loopback from a thread; yields (url, gate)."""
    started = threading.Event()
    stop = threading.Event()
    box: dict = {}

    async def main():
        async with serve_on_loopback(fake or FakeVllm(answer=answer_by_prompt)) as upstream:
            state = UpstreamState()
            state.mark_ready()
            values = settings(upstream, data_dir=str(data_dir), **overrides)
            app = gate(create_app(values, state=state, detector=FakeDetector()))
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


def job_status(url: str, job_id: str) -> dict:
    return httpx.get(f"{url}{JOBS}/{job_id}", timeout=30).json()["result"]


def test_parse_writes_markdown_with_pictures_and_json_per_document_and_names_the_failure(tmp_path, capsys):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    (inputs / "report.png").write_bytes(PNG)
    (inputs / "sub" / "two-pages.pdf").write_bytes(make_pdf(2))
    (inputs / "broken.pdf").write_bytes(truncated_pdf())
    (inputs / "notes.txt").write_text("not a document")
    out = tmp_path / "out"
    with proxy_in_thread(tmp_path / "data") as (url, gate):
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
    # Every document went through the jobs API; the synchronous endpoint was not used.
    assert len(gate.requests("POST", JOBS)) == 3 and gate.requests("POST", "/layout-parsing") == []
    assert len(gate.requests("GET", "/result")) >= 2


def test_the_bar_moves_page_by_page_and_a_waiting_job_shows_its_queue_position(tmp_path):
    """One document runs at a time on this server (one VLM slot, one active request): the second waits queued."""
    for name in ("first.pdf", "second.pdf"):
        (tmp_path / name).write_bytes(make_pdf(3))
    found = find_documents([tmp_path / "first.pdf", tmp_path / "second.pdf"], tmp_path / "out")
    outcomes = [Outcome(document) for document in found.documents]
    heard: dict[str, list[JobProgress]] = {"first.pdf": [], "second.pdf": []}
    fake = FakeVllm(answer=answer_by_prompt, delay_s=0.1)

    class Recording(LayoutParsingClient):
        async def parse(self, data, *, name, options, progress=None):
            def record(job: JobProgress) -> None:
                heard[name].append(job)
                progress(job)

            return await super().parse(data, name=name, options=options, progress=record)

    async def main(url):
        async with Recording(url) as client:
            await parse_documents(client, outcomes, {"visualize": False}, concurrency=2, show_progress=False)

    with proxy_in_thread(tmp_path / "data", fake=fake, concurrency=1, max_active_requests=1) as (url, _):
        asyncio.run(main(url))
    assert [outcome.error for outcome in outcomes] == [None, None] and [o.pages for o in outcomes] == [3, 3]
    for reports in heard.values():
        done = [job.pages_done for job in reports]
        assert done == sorted(done) and done[-1] == 3 and reports[-1].status == "done"
        assert any(0 < job.pages_done < 3 for job in reports), f"no report between the first page and the last: {done}"
        assert {job.pages_total for job in reports} == {3}
    waiting = [job for reports in heard.values() for job in reports if job.status == "queued"]
    assert any(job.queue_position is not None for job in waiting), "no document was seen waiting in the queue"


def test_a_page_range_goes_to_pdfs_and_an_image_is_parsed_whole(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "three.pdf").write_bytes(make_pdf(3))
    (tmp_path / "in" / "photo.png").write_bytes(PNG)
    out = tmp_path / "out"
    with proxy_in_thread(tmp_path / "data") as (url, _):
        code = cli.main(["parse", str(tmp_path / "in"), "--server", url, "--out", str(out), "--page-range", "2-3"])
    assert code == 0, capsys.readouterr().err
    pdf = json.loads((out / "three" / "three.json").read_text())["result"]["layoutParsingResults"]
    assert [page["prunedResult"]["page_index"] for page in pdf] == [1, 2]
    photo = json.loads((out / "photo" / "photo.json").read_text())["result"]["layoutParsingResults"]
    assert len(photo) == 1 and "page_index" not in photo[0]["prunedResult"]
    printed = capsys.readouterr().out
    assert "three.pdf: 2 page(s)" in printed
    assert "--page-range applies to PDFs and TIFFs; 1 image(s) parsed whole: photo.png" in printed


def test_a_page_range_past_the_end_is_named_with_the_document(tmp_path, capsys):
    (tmp_path / "two.pdf").write_bytes(make_pdf(2))
    with proxy_in_thread(tmp_path / "data") as (url, _):
        code = cli.main(["parse", str(tmp_path / "two.pdf"), "--server", url, "--out", str(tmp_path / "out"), "--page-range", "3"])
    assert code == 1
    err = capsys.readouterr().err
    assert "two.pdf (422: pageRange '3' asks for page 3 but the PDF has 2 pages)" in err


def test_a_busy_server_is_asked_again_after_its_retry_after_at_submission_and_while_polling(tmp_path):
    later = email.utils.formatdate(time.time() + 3, usegmt=True)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    busy = [("POST", 429, "2"), ("POST", 503, later), ("POST", 429, None), ("GET", 503, "4"), ("GET", 429, "5")]
    with proxy_in_thread(tmp_path / "data", lambda app: Gate(app, busy=busy)) as (url, gate):

        async def main():
            async with LayoutParsingClient(url, sleep=sleep) as client:
                return await client.parse(PNG, name="page.png", options={"visualize": False})

        envelope = asyncio.run(main())
    assert len(envelope["result"]["layoutParsingResults"]) == 1
    assert len(gate.requests("POST", JOBS)) == 4 and len(gate.requests("GET", "/result")) >= 3
    assert slept[0] == 2.0
    assert 0 < slept[1] <= 3.0  # an HTTP date: the time left until then
    assert slept[2:5] == [1.0, 4.0, 5.0]  # no Retry-After: the first step of the back-off; then the polls'


def test_retries_run_out_with_the_servers_own_message(tmp_path):
    async def sleep(seconds: float) -> None:
        pass

    with proxy_in_thread(tmp_path / "data", lambda app: Gate(app, busy=[("POST", 429, "0")] * 10)) as (url, gate):

        async def main():
            async with LayoutParsingClient(url, retries=2, sleep=sleep) as client:
                await client.parse(PNG, name="page.png", options={})

        with pytest.raises(ServerError, match=r"^429: Busy$"):
            asyncio.run(main())
    assert len(gate.seen) == 3


def test_a_job_that_fails_on_the_server_is_named_and_not_cancelled(tmp_path, capsys):
    async def broken_vllm(body):
        return 500

    (tmp_path / "page.png").write_bytes(PNG)
    with proxy_in_thread(tmp_path / "data", fake=FakeVllm(answer=broken_vllm)) as (url, gate):
        code = cli.main(["parse", str(tmp_path / "page.png"), "--server", url, "--out", str(tmp_path / "out")])
        (submitted,) = gate.requests("POST", JOBS)
        job_ids = {path.split("/")[3] for path in gate.requests("GET", "/result")}
        (job_id,) = job_ids
        status = job_status(url, job_id)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and "page.png (502:" in err
    assert status["status"] == "failed" and status["error"]["errorCode"] == 502
    assert gate.requests("DELETE") == []


def test_a_503_without_retry_after_from_a_jobs_result_is_the_jobs_own_answer(tmp_path):
    async def sleep(seconds: float) -> None:
        raise AssertionError(f"asked again after {seconds} s")

    with proxy_in_thread(tmp_path / "data", lambda app: Gate(app, busy=[("GET", 503, None)])) as (url, gate):

        async def main():
            async with LayoutParsingClient(url, sleep=sleep) as client:
                await client.parse(PNG, name="page.png", options={"visualize": False})

        with pytest.raises(JobEnded, match=r"^503: Busy$"):
            asyncio.run(main())
    assert len(gate.requests("GET", "/result")) == 1 and gate.requests("DELETE") == []


def test_an_interrupted_run_cancels_the_jobs_it_started(tmp_path):
    (tmp_path / "long.pdf").write_bytes(make_pdf(4))
    found = find_documents([tmp_path / "long.pdf"], tmp_path / "out")
    outcomes = [Outcome(document) for document in found.documents]
    fake = FakeVllm(answer=answer_by_prompt, delay_s=0.3)

    async def main(url):
        async with LayoutParsingClient(url) as client:
            run = asyncio.ensure_future(
                parse_documents(client, outcomes, {"visualize": False}, concurrency=1, show_progress=False)
            )
            while outcomes[0].job is None or outcomes[0].job.status != "running":
                await asyncio.sleep(0.05)
            run.cancel()  # what Ctrl-C does to the command's task
            with pytest.raises(asyncio.CancelledError):
                await run

    with proxy_in_thread(tmp_path / "data", fake=fake) as (url, gate):
        asyncio.run(main(url))
        job_id = outcomes[0].job.job_id
        server_side = job_status(url, job_id)
        sent_after_cancel = len(fake.bodies)
        time.sleep(1.0)  # three block latencies: a job still running would have sent more
        sent_later = len(fake.bodies)
    assert gate.requests("DELETE") == [f"{JOBS}/{job_id}"]
    assert server_side["status"] == "cancelled" and outcomes[0].job.status == "cancelled"
    assert outcomes[0].error == "interrupted" and outcomes[0].markdown is None
    assert sent_later == sent_after_cancel
    summary = interrupted_summary(outcomes, tmp_path / "out")
    assert "0 of 1 document(s) written" in summary and f"long.pdf (job {job_id})" in summary
    assert "cancelled 1 job(s)" in summary and "could not cancel" not in summary


class HeldSubmission(Gate):
    """Makes the job a POST asks for, but holds the 202 until `release` is set: Ctrl-C lands mid-request."""

    def __init__(self, app) -> None:
        super().__init__(app)
        self.made = threading.Event()
        self.release = threading.Event()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith(JOBS):
            await super().__call__(scope, receive, send)
            return

        async def held(message) -> None:
            if message["type"] == "http.response.start":
                self.made.set()
                while not self.release.is_set():
                    await asyncio.sleep(0.02)
            await send(message)

        await super().__call__(scope, receive, held)


def test_a_run_interrupted_while_its_job_is_being_submitted_still_cancels_that_job(tmp_path):
    (tmp_path / "long.pdf").write_bytes(make_pdf(4))
    found = find_documents([tmp_path / "long.pdf"], tmp_path / "out")
    outcomes = [Outcome(document) for document in found.documents]

    async def main(url, gate):
        async with LayoutParsingClient(url) as client:
            run = asyncio.ensure_future(
                parse_documents(client, outcomes, {"visualize": False}, concurrency=1, show_progress=False)
            )
            while not gate.made.is_set():
                await asyncio.sleep(0.02)
            run.cancel()  # Ctrl-C while the server's 202 is on its way
            await asyncio.sleep(0.1)
            gate.release.set()
            with pytest.raises(asyncio.CancelledError):
                await run

    fake = FakeVllm(answer=answer_by_prompt, delay_s=0.3)
    with proxy_in_thread(tmp_path / "data", HeldSubmission, fake=fake) as (url, gate):
        asyncio.run(main(url, gate))
        assert gate.made.is_set() and outcomes[0].job is not None, "the job made by the interrupted POST was lost"
        job_id = outcomes[0].job.job_id
        server_side = job_status(url, job_id)
    assert gate.requests("DELETE") == [f"{JOBS}/{job_id}"]
    assert server_side["status"] == "cancelled" and outcomes[0].job.status == "cancelled"
    summary = interrupted_summary(outcomes, tmp_path / "out")
    assert f"cancelled 1 job(s) on the server: {tmp_path / 'long.pdf'} (job {job_id})" in summary


def test_a_document_past_its_timeout_has_its_job_cancelled(tmp_path):
    fake = FakeVllm(answer=answer_by_prompt, delay_s=0.5)
    progress: list[JobProgress] = []

    with proxy_in_thread(tmp_path / "data", fake=fake) as (url, gate):

        async def main():
            async with LayoutParsingClient(url, timeout_s=1.0) as client:
                await client.parse(make_pdf(3), name="slow.pdf", options={"visualize": False}, progress=progress.append)

        with pytest.raises(ServerError, match=r"not finished within 1 s, so its job was cancelled; raise --timeout"):
            asyncio.run(main())
        server_side = job_status(url, progress[0].job_id)
    assert server_side["status"] == "cancelled" and progress[-1].status == "cancelled"
    assert len(gate.requests("DELETE")) == 1


def test_a_refused_key_says_how_to_pass_one_and_the_right_key_is_sent(tmp_path, capsys):
    (tmp_path / "page.png").write_bytes(PNG)
    with proxy_in_thread(tmp_path / "data", api_key="s3cret") as (url, gate):
        refused = cli.main(["parse", str(tmp_path / "page.png"), "--server", url, "--out", str(tmp_path / "a")])
        err = capsys.readouterr().err
        tries = len(gate.seen)
        accepted = cli.main(
            ["parse", str(tmp_path / "page.png"), "--server", url, "--out", str(tmp_path / "b"), "--api-key", "s3cret"]
        )
    assert refused == 1 and "401: Missing or wrong API key" in err and "(pass the server's key with --api-key)" in err
    assert tries == 1  # refused at once, not asked again
    assert accepted == 0 and (tmp_path / "b" / "page" / "page.md").is_file()


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


def test_a_document_read_page_by_page_equals_the_synchronous_answer_also_when_pages_are_restructured(tmp_path):
    pdf = make_pdf(3)
    fake = FakeVllm(answer=answer_by_prompt, delay_s=0.05)
    heard: list[JobProgress] = []

    async def main(url, options):
        async with LayoutParsingClient(url) as client:
            parsed = await client.parse(pdf, name="three.pdf", options=options, progress=heard.append)
        sync = httpx.post(f"{url}/layout-parsing", json={"file": base64.b64encode(pdf).decode(), **options}, timeout=60)
        return parsed, sync.json()

    answers = []
    with proxy_in_thread(tmp_path / "data", fake=fake, concurrency=1) as (url, _):
        for restructure in (False, True):
            options = {"visualize": False, "restructurePages": restructure, "logId": f"same-{restructure}"}
            answers.append(asyncio.run(main(url, options)))
    for parsed, sync in answers:
        assert parsed == sync
    assert any(0 < job.pages_done < 3 for job in heard), "the pages were not read as they finished"
    plain, restructured = (parsed["result"]["layoutParsingResults"] for parsed, _ in answers)
    assert plain != restructured, "restructuring changed nothing here, so this test would not see a stale page"


def test_a_server_without_the_jobs_api_gets_one_request_held_open_and_no_page_range(tmp_path):
    heard: list[JobProgress] = []

    async def main(url, options):
        async with LayoutParsingClient(url) as client:
            return await client.parse(make_pdf(2), name="two.pdf", options=options, progress=heard.append)

    no_jobs = [(f"POST {JOBS}", 404, None)] * 2
    with proxy_in_thread(tmp_path / "data", lambda app: Gate(app, busy=no_jobs)) as (url, gate):
        envelope = asyncio.run(main(url, {"visualize": False}))
        with pytest.raises(ServerError, match="has no /layout-parsing/jobs.*without --page-range"):
            asyncio.run(main(url, {"visualize": False, "pageRange": "2"}))
    assert len(envelope["result"]["layoutParsingResults"]) == 2
    assert heard == [JobProgress(None, "done", 2, 2, None)]
    assert gate.requests("POST", "/layout-parsing") == ["/layout-parsing"] and gate.requests("GET") == []

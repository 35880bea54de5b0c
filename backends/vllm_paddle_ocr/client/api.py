"""A client of the server's public API: one document in as a job, its /layout-parsing answer out, page by page.

A document is submitted to POST /layout-parsing/jobs, then followed with long polls of its result
(`wait`, `from`), so progress moves as each page finishes; every request is asked again while the
server is busy (429/503, honouring Retry-After). A job given up on (Ctrl-C, the time limit) is cancelled.
A server without the jobs API (PaddleX's own) gets one /layout-parsing request per document instead.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from vllm_paddle_ocr.plugin.errors import VllmPaddleOcrError

JOBS_PATH = "layout-parsing/jobs"  # relative: a path prefix in the server URL (GPUStack's proxy) is kept
RETRY_STATUSES = frozenset({429, 503})
# Without a Retry-After, waits grow 1, 2, 4 ... seconds, up to this.
MAX_BACKOFF_S = 30.0
# A Retry-After longer than this is waited for this long, then asked again.
MAX_RETRY_AFTER_S = 300.0
# How long one poll of a job's result may be held by the server (it holds at most 60 s).
POLL_WAIT_S = 30
# Shorter while the job is queued: the server answers at the first page, and the queue moves before that.
QUEUED_WAIT_S = 2
# How long cancelling a job given up on may take before the client stops asking.
CANCEL_TIMEOUT_S = 10.0

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DOCUMENT_SUFFIXES = (".pdf", *IMAGE_SUFFIXES)
# Documents with pages (PDF) or frames (TIFF): the ones a page range applies to.
PAGED_SUFFIXES = (".pdf", ".tif", ".tiff")


class ServerError(VllmPaddleOcrError):
    """The server refused or failed a document; the message is the server's own (PaddleX's errorMsg)."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None, retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.retryable = retryable  # busy (429/503) or unreachable: asking again may succeed


class JobEnded(ServerError):
    """The job finished without a result (it failed, or was cancelled elsewhere): nothing left to cancel."""


@dataclass(frozen=True)
class JobProgress:
    """Where a document's job stands, as the server last said."""

    job_id: str | None  # None: the server has no jobs API and answered the document at once
    status: str  # queued, running, done, failed, cancelled
    pages_done: int
    pages_total: int | None  # None until the server has opened the document
    queue_position: int | None  # jobs ahead of it on its server while queued (0: next)

    @classmethod
    def of(cls, status: Mapping[str, Any]) -> JobProgress:
        """From the status object the job routes answer."""
        return cls(
            job_id=str(status["jobId"]),
            status=str(status["status"]),
            pages_done=int(status.get("pagesDone") or 0),
            pages_total=status.get("pagesTotal"),
            queue_position=status.get("queuePosition"),
        )


Progress = Callable[[JobProgress], None]


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Retry-After as seconds to wait: a number of seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def file_type(name: str) -> int | None:
    """/layout-parsing's fileType from a file name: 0 for a PDF, 1 for an image, None to let the server tell."""
    lowered = name.lower()
    if lowered.endswith(".pdf"):
        return 0
    if lowered.endswith(IMAGE_SUFFIXES):
        return 1
    return None


def has_pages(name: str) -> bool:
    """Whether a file name is a document a page range applies to (a PDF, or a TIFF's frames)."""
    return name.lower().endswith(PAGED_SUFFIXES)


@dataclass(frozen=True)
class _Answer:
    status: int
    envelope: dict[str, Any]
    retry_after: float | None


class LayoutParsingClient:
    """The server's jobs API and /restructure-pages for a client that sends whole files."""

    def __init__(
        self,
        server: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 3600.0,
        retries: int = 5,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=server.rstrip("/") + "/",
            headers=headers,
            # A poll is held up to POLL_WAIT_S by the server: never cut it shorter than that.
            timeout=httpx.Timeout(max(timeout_s, POLL_WAIT_S + 30.0), connect=10.0),
            transport=transport,
        )
        self.server = server
        self.timeout_s = timeout_s
        self.retries = retries
        self._sleep = sleep

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "LayoutParsingClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def parse(
        self, data: bytes, *, name: str, options: Mapping[str, Any], progress: Progress | None = None
    ) -> dict[str, Any]:
        """The /layout-parsing answer for one file (PaddleX's envelope), pages in order, within `timeout_s`.

        `progress` hears the job's status after every answer: pages done as they finish, the queue
        position while queued, and "cancelled" when the client cancelled the job it gave up on.
        """
        try:
            return await asyncio.wait_for(self._parse(data, name, options, progress), self.timeout_s)
        except asyncio.TimeoutError:
            raise ServerError(f"not finished within {self.timeout_s:g} s, so its job was cancelled; raise --timeout") from None

    async def _parse(
        self, data: bytes, name: str, options: Mapping[str, Any], progress: Progress | None
    ) -> dict[str, Any]:
        body = {"file": base64.b64encode(data).decode("ascii"), **options}
        kind = file_type(name)
        if kind is not None and "fileType" not in options:
            body["fileType"] = kind
        report = progress or (lambda _: None)
        try:
            submitted = await self._submit(body, report)
        except ServerError as exc:
            if exc.status not in (404, 405):
                raise
            return await self._parse_held_open(body, options, report)
        del body
        status = JobProgress.of(submitted.envelope["result"])
        job_id = str(status.job_id)
        report(status)
        try:
            # Restructuring across pages rewrites every page once the last is done: read them all again then.
            return await self._follow(job_id, status, report, reread=bool(options.get("restructurePages")))
        except JobEnded:
            raise
        except BaseException:  # interrupted, out of time, or the server lost: stop the server's work too
            await self.cancel(job_id, report)
            raise

    async def _submit(self, body: dict[str, Any], report: Progress) -> _Answer:
        """POST the job; interrupted mid-request, the answer is still awaited so the job it made is cancelled."""
        submission = asyncio.ensure_future(self._request("POST", JOBS_PATH, json=body, accept=(202,)))
        try:
            return await asyncio.shield(submission)
        except asyncio.CancelledError as interrupted:
            try:
                submitted = await asyncio.wait_for(asyncio.shield(submission), CANCEL_TIMEOUT_S)
            except (ServerError, asyncio.TimeoutError, asyncio.CancelledError):
                submission.cancel()
                raise interrupted from None  # no job was made, or none the client could learn of
            made = JobProgress.of(submitted.envelope["result"])
            report(made)
            await self.cancel(str(made.job_id), report)
            raise

    async def _parse_held_open(self, body: dict[str, Any], options: Mapping[str, Any], report: Progress) -> dict[str, Any]:
        """For a server without the jobs API (PaddleX's own): one /layout-parsing request held open."""
        if "pageRange" in options:
            raise ServerError(
                f"{self.server} has no /layout-parsing/jobs, so it may not know pageRange either "
                "(PaddleX's server parses every page); parse without --page-range there"
            )
        envelope = (await self._request("POST", "layout-parsing", json=body)).envelope
        count = len(envelope["result"]["layoutParsingResults"])
        report(JobProgress(None, "done", count, count, None))
        return envelope

    async def _follow(self, job_id: str, job: JobProgress, report: Progress, *, reread: bool) -> dict[str, Any]:
        """Long-poll the job's result from the first page not yet read until the whole answer is there."""
        pages: list[dict[str, Any]] = []
        while True:
            wait = QUEUED_WAIT_S if job.status == "queued" else POLL_WAIT_S
            answer = await self._request(
                "GET", f"{JOBS_PATH}/{job_id}/result", params={"wait": wait, "from": len(pages)},
                accept=(200, 202), job=True,
            )  # fmt: skip
            result = answer.envelope["result"]
            if answer.status == 202:
                new = result["layoutParsingResults"]
                pages += new
                job = JobProgress.of(result["job"])
                report(job)
                if not new and answer.retry_after:
                    await self._sleep(min(answer.retry_after, MAX_RETRY_AFTER_S))
                continue
            envelope = answer.envelope
            if pages and reread:
                envelope = (await self._request("GET", f"{JOBS_PATH}/{job_id}/result", job=True)).envelope
            elif pages:
                envelope["result"]["layoutParsingResults"] = pages + result["layoutParsingResults"]
            count = len(envelope["result"]["layoutParsingResults"])
            report(JobProgress(job_id, "done", count, count, None))
            return envelope

    async def cancel(self, job_id: str, report: Progress | None = None) -> JobProgress | None:
        """DELETE the job (its VLM work stops); its last status, also told to `report`; None if the server was not told."""
        try:
            answer = await asyncio.shield(
                asyncio.wait_for(self._request("DELETE", f"{JOBS_PATH}/{job_id}", once=True), CANCEL_TIMEOUT_S)
            )
        except (ServerError, asyncio.TimeoutError, asyncio.CancelledError):
            return None
        cancelled = JobProgress.of(answer.envelope["result"])
        if report is not None:
            report(cancelled)
        return cancelled

    async def join_pages(
        self, results: Sequence[Mapping[str, Any]], *, restructure: Mapping[str, Any] | None = None
    ) -> str:
        """One markdown for the whole document: pages joined by /restructure-pages, as PaddleX joins them."""
        body = {
            "pages": [{"prunedResult": result["prunedResult"]} for result in results],
            "concatenatePages": True,
            "returnMarkdownImages": False,
            **(restructure or {}),
        }
        answer = await self._request("POST", "restructure-pages", json=body)
        return answer.envelope["result"]["layoutParsingResults"][0]["markdown"]["text"]

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        accept: tuple[int, ...] = (200,),
        job: bool = False,
        once: bool = False,
    ) -> _Answer:
        """One request, asked again on 429/503 (honouring Retry-After) and on a server that cannot be reached."""
        backoff = 1.0
        attempts = 1 if once else self.retries + 1
        for attempt in range(attempts):
            try:
                return await self._request_once(method, path, json=json, params=params, accept=accept, job=job)
            except ServerError as exc:
                if not exc.retryable or attempt == attempts - 1:
                    raise
                if exc.retry_after is not None:
                    wait = min(exc.retry_after, MAX_RETRY_AFTER_S)
                else:
                    wait, backoff = backoff, min(backoff * 2, MAX_BACKOFF_S)
                await self._sleep(wait)
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _request_once(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None,
        params: Mapping[str, Any] | None,
        accept: tuple[int, ...],
        job: bool,
    ) -> _Answer:
        try:
            answer = await self._http.request(method, path, json=json, params=params)
        except httpx.TimeoutException as exc:
            raise ServerError(f"{self.server} did not answer in time ({type(exc).__name__}); raise --timeout") from None
        except httpx.TransportError as exc:
            raise ServerError(f"cannot reach {self.server}: {exc or type(exc).__name__}", retryable=True) from None
        try:
            envelope = answer.json()
        except ValueError:
            envelope = None
        retry_after = retry_after_seconds(answer.headers.get("retry-after"))
        status = answer.status_code
        if status in accept and isinstance(envelope, dict) and not envelope.get("errorCode"):
            return _Answer(status, envelope, retry_after)
        message = envelope.get("errorMsg") if isinstance(envelope, dict) else None
        text = message or f"HTTP {status} {answer.reason_phrase}".strip()
        if status == 401:
            text += " (pass the server's key with --api-key)"
        busy = status in RETRY_STATUSES
        answered = isinstance(envelope, dict) and bool(envelope.get("errorCode"))
        if job and answered and status not in (401, 404) and not (busy and retry_after is not None):
            # A job's result answers the job's own error once it failed or was cancelled; a busy server
            # says when to ask again, so a 503 without Retry-After there is the job's, not the server's.
            raise JobEnded(f"{status}: {text}", status=status)
        raise ServerError(f"{status}: {text}", status=status, retry_after=retry_after, retryable=busy)

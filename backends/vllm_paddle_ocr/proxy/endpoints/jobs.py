"""/layout-parsing/jobs: a /layout-parsing request run in the background, polled instead of held open.

- POST /layout-parsing/jobs: the /layout-parsing body (pageRange included), checked as the synchronous
  endpoint checks it, then queued: 202 with the job's status (`result.jobId`, ...) and a Location.
- GET /layout-parsing/jobs/{jobId}: status (queued, running, done, failed, cancelled), pagesDone,
  pagesTotal, queuePosition and timestamps.
- GET /layout-parsing/jobs/{jobId}/result[?wait=S][&from=N]: when done, the envelope /layout-parsing
  answers (200); before, 202 with the pages finished so far and the status under `result.job`; a failed
  or cancelled job answers its error in PaddleX's shape. `wait` (at most MAX_WAIT_S) holds the answer
  until the job finishes or a page past `from` is ready.
- DELETE /layout-parsing/jobs/{jobId}: cancels a queued or running job (its VLM requests stop), or
  forgets a finished one; answers the job's last status.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

from starlette.requests import Request
from starlette.responses import Response

from ..admission import Admission
from ..decoding import validate
from ..errors import InputError, ProxyError, new_log_id
from ..inputs import is_url
from ..jobs.model import Job, is_job_id, status_view
from ..jobs.runner import JobRunner
from ..metrics import ProxyMetrics
from ..parsing import DocumentParser, success
from ..pipeline import selected_pages
from ..protocol import INFER_ENDPOINT, InferRequest
from ..state import UpstreamState
from .paddlex import PaddlexEndpoint, RequestContext, json_response

JOBS_PATH = INFER_ENDPOINT + "/jobs"
MAX_WAIT_S = 60


class JobNotFound(ProxyError):
    """No job has this id (never, or no longer: results are kept for --job-retention)."""

    status_code = 404


def _answer(payload: dict[str, Any], status_code: int = 200, headers: Optional[dict[str, str]] = None) -> Response:
    return Response(json_response(payload), status_code=status_code, media_type="application/json", headers=headers)


class _JobEndpoint(PaddlexEndpoint):
    """What the job routes share: the runner, and a job found by the id in the path."""

    def __init__(
        self, runner: JobRunner, state: UpstreamState, metrics: ProxyMetrics, max_body_bytes: int,
        *, admission: Optional[Admission] = None,
    ) -> None:  # fmt: skip
        super().__init__(state, metrics, max_body_bytes, admission=admission)
        self.runner = runner
        self.retention_s = runner.retention_s

    async def job(self, request: Request, context: RequestContext) -> Job:
        await self.read_body(request, context)  # none; from here on a disconnect cancels the answer
        job_id = request.path_params["jobId"]
        job = await self.runner.look(job_id) if is_job_id(job_id) else None
        if job is None:
            raise JobNotFound(
                f"No job {job_id!r}: it never existed or its results were removed "
                f"({self.retention_s:g} s after it finished, --job-retention)"
            )
        context.log_id = job.log_id
        return job

    async def status(self, job: Job) -> dict[str, Any]:
        return status_view(job, await self.runner.queue_position(job))


class SubmitJob(_JobEndpoint):
    """POST /layout-parsing/jobs: check the request as /layout-parsing would, then queue it."""

    path = JOBS_PATH
    admitted = True
    holds_document = False  # a submission holds its body while it is checked, not a parsing slot

    def __init__(self, runner: JobRunner, parser: DocumentParser, state: UpstreamState, metrics: ProxyMetrics,
                 *, admission: Optional[Admission] = None) -> None:  # fmt: skip
        super().__init__(runner, state, metrics, parser.settings.max_body_bytes, admission=admission)
        self.parser = parser

    async def handle(self, request: Request, context: RequestContext) -> Response:
        body = await self.read_body(request, context)
        infer = validate(InferRequest, await self.decode(body, context))
        log_id = context.log_id = infer.logId or new_log_id()
        options = self.parser.options(infer)
        self.ensure_upstream()
        self.parser.detector_for(options)
        pages_total = None
        if not is_url(infer.file):  # a URL is fetched when the job runs
            document = await self.parser.open(infer)
            try:
                pages_total = len(selected_pages(document, options))
            finally:
                await asyncio.to_thread(document.close)
        del infer
        job = await self.runner.submit(body, log_id, pages_total)
        # Relative to this request's URL, so a prefix in front of the proxy (GPUStack's /model/proxy/<route>/) is kept.
        location = f"jobs/{job.id}"
        return _answer(success(log_id, await self.status(job)), 202, {"Location": location})


class JobStatus(_JobEndpoint):
    """GET /layout-parsing/jobs/{jobId}."""

    path = JOBS_PATH + "/{jobId}"

    async def handle(self, request: Request, context: RequestContext) -> Response:
        job = await self.job(request, context)
        return _answer(success(job.log_id, await self.status(job)))


class JobResult(_JobEndpoint):
    """GET /layout-parsing/jobs/{jobId}/result: the pages so far, or the whole answer once done."""

    path = JOBS_PATH + "/{jobId}/result"

    async def handle(self, request: Request, context: RequestContext) -> Response:
        wait = _query_number(request, "wait", 0.0, MAX_WAIT_S)
        start = int(_query_number(request, "from", 0, None, integer=True))
        job = await self.job(request, context)
        if wait > 0:
            job = await self.runner.watch(job.id, start, wait) or job
        if job.status in ("failed", "cancelled"):
            raise ProxyError(job.error_msg or f"The job {job.status}", status_code=job.error_code or 500)
        pages = await self.runner.pages(job, start)
        if job.status == "done":
            result = {"layoutParsingResults": pages, "dataInfo": job.data_info}
            return _answer(success(job.log_id, result))
        result = {"layoutParsingResults": pages, "job": await self.status(job)}
        return _answer(success(job.log_id, result), 202, {"Retry-After": "1"})


class CancelJob(_JobEndpoint):
    """DELETE /layout-parsing/jobs/{jobId}: cancel it, or forget it once finished."""

    path = JOBS_PATH + "/{jobId}"

    async def handle(self, request: Request, context: RequestContext) -> Response:
        job = await self.job(request, context)
        cancelled = await self.runner.cancel(job.id)
        last = cancelled if cancelled is not None else job
        return _answer(success(job.log_id, status_view(last, None)))


def _query_number(request: Request, name: str, default: float, most: Optional[float], *, integer: bool = False) -> float:
    """A query parameter as a number within [0, most], or a 422 naming the parameter and its range."""
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = -1
    if not 0 <= value <= (most if most is not None else float("inf")):
        bound = f"between 0 and {most:g}" if most is not None else "0 or more"
        kind = "an integer" if integer else "a number of seconds"
        raise InputError(f"Query parameter `{name}` must be {kind} {bound}; got {text!r}")
    return value


# The routes that find a job by the id in their path, by what they do.
JOB_ROUTES: dict[str, type[_JobEndpoint]] = {"status": JobStatus, "cancel": CancelJob, "result": JobResult}

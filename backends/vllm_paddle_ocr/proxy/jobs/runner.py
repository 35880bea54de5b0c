"""Runs the jobs this instance took, one flow per job with its body on disk, and keeps the store honest.

Workers take this instance's queued jobs oldest first, each once admission control has room (a job
waits in the queue, it is never refused for load once accepted). Every page is stored as it finishes.
A lease says this process is alive; a queued or running job whose process stopped renewing it is
failed with a message by whichever instance looks at it first, and a restarted instance fails the
jobs it was running and takes its queued ones back. Finished jobs are forgotten after the retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from typing import Any, Optional

from ..admission import Admission, Overloaded, Ticket
from ..decoding import decode_json, validate
from ..errors import INTERNAL_ERROR_MESSAGE, ProxyError, UpstreamError
from ..pages import PageOutput
from ..parsing import DocumentParser
from ..protocol import InferRequest
from ..state import UpstreamState
from .model import ACTIVE, FINISHED, Job, new_job_id
from .redis_store import RedisJobStore
from .sqlite_store import SqliteJobStore
from .store import JobFiles, JobStore, JobStoreError, JobStoreUnavailable

log = logging.getLogger("vllm_paddle_ocr.proxy.jobs")

LEASE_S = 30.0
# How often a job on another replica (a shared store) is looked at again; this instance's own jobs wake
# their watchers as soon as a page is stored.
POLL_S = 0.5
RETRY_QUEUE_FULL_S = 10
# How long a worker waits before asking a job store that did not answer again.
STORE_RETRY_S = 1.0
RESTARTED = "The server restarted while this job was running; submit it again"
STOPPED = "The server stopped while this job was running; submit it again"
OWNER_GONE = "The instance that took this job stopped before finishing it; submit it again"
BODY_GONE = "The job's body is no longer on the instance that took it; submit it again"
LOST = "The job store did not answer when this job ended, so its end was lost; submit it again"


def open_store(url: Optional[str], files: JobFiles) -> JobStore:
    """The store a --job-store value names: None or "sqlite" (under the data directory), or a redis:// URL."""
    if url is None or url == "sqlite":
        return SqliteJobStore(files.root / "jobs.sqlite3", files)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisJobStore(url)
    raise JobStoreError(f"--job-store {url!r} is neither 'sqlite' nor a redis://host:port/db URL")


def slim(output: PageOutput) -> PageOutput:
    """What a job keeps of a stored page in memory: the parts restructuring across pages rewrites."""
    return dataclasses.replace(output, result={"prunedResult": None, "markdown": {"text": None}})


class JobRunner:
    """This instance's side of the jobs: submit, look up, cancel, and the workers that run them."""

    def __init__(
        self,
        store: JobStore,
        files: JobFiles,
        parser: DocumentParser,
        admission: Admission,
        state: UpstreamState,
        *,
        owner: str,
        retention_s: float,
        max_queued: int,
        workers: Optional[int] = None,
        lease_s: float = LEASE_S,
    ) -> None:
        self.store = store
        self.files = files
        self.parser = parser
        self.admission = admission
        self.state = state
        self.owner = owner
        self.incarnation = uuid.uuid4().hex
        self.retention_s = retention_s
        self.max_queued = max_queued
        self.lease_s = lease_s
        # As many jobs run at once as admission control admits documents; a worker waits for its room.
        self._workers = workers or admission.bounds.requests
        self._tasks: list[asyncio.Task[None]] = []
        self._running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()  # set (and replaced) whenever one of this instance's jobs moves
        self._started = False
        self._opened = False
        self._open_lock = asyncio.Lock()

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the store when there is one (else the first job creates it), and start the workers."""
        self._started = True
        if await self.store.exists():
            await self._open()

    async def _open(self) -> None:
        """Open the store, take back this instance's queued jobs, fail those a previous process ran."""
        async with self._open_lock:
            if not self._opened:
                await self.store.open()
                await self._recover()
                self._opened = True

    async def _recover(self) -> None:
        await self.store.renew(self.owner, self.incarnation, self.lease_s)
        for job in await self.store.active():
            if job.owner != self.owner or job.incarnation == self.incarnation:
                continue
            if job.status == "queued" and self.files.body_path(job.id).exists():
                await self.store.update(job.id, ("queued",), incarnation=self.incarnation)
            else:
                await self._fail(job.id, 500, RESTARTED if job.status == "running" else BODY_GONE, expect=ACTIVE)
        self._tasks = [asyncio.ensure_future(self._work()) for _ in range(self._workers)]
        self._tasks.append(asyncio.ensure_future(self._keep()))
        self._wake.set()

    async def stop(self) -> None:
        """Stop the workers; jobs still running are failed with a message, queued ones wait for a restart."""
        self._started = False
        if not self._opened:
            return
        self._opened = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for job_id in list(self._running):
            await self._fail(job_id, 503, STOPPED, expect=("running",))
        with contextlib.suppress(Exception):
            await self.store.close()

    # -- what the endpoints ask -----------------------------------------------------------------
    async def submit(self, body: bytes, log_id: str, pages_total: Optional[int]) -> Job:
        """Queue a checked request: its body to disk, its record to the store; 429 when the queue is full."""
        if not self._started:
            raise UpstreamError("Service unavailable: the server is shutting down", status_code=503, retry_after=5)
        try:
            await self._open()
        except JobStoreError as exc:
            raise UpstreamError(f"Service unavailable: {exc}", status_code=503, retry_after=30) from None
        queued = await self.store.queued(self.owner)
        if len(queued) >= self.max_queued:
            raise Overloaded(
                f"Too many jobs: {len(queued)} are queued on this server, the most it holds (--max-queued-jobs); "
                f"retry in {RETRY_QUEUE_FULL_S} s",
                retry_after=RETRY_QUEUE_FULL_S,
            )
        job = Job(
            id=new_job_id(), log_id=log_id, owner=self.owner, incarnation=self.incarnation, status="queued",
            created_at=time.time(), pages_total=pages_total,
        )  # fmt: skip
        await asyncio.to_thread(self.files.write_body, job.id, body)
        try:
            await self.store.add(job)
        except BaseException:
            await asyncio.to_thread(self.files.remove, job.id)
            raise
        self._wake.set()
        return job

    async def look(self, job_id: str) -> Optional[Job]:
        """The job as it stands (an orphaned one failed first), None when there is no such job."""
        if not self._opened:
            return None
        job = await self.store.get(job_id)
        if job is not None and job.status in ACTIVE and not await self._owner_runs(job):
            await self._fail(job.id, 500, OWNER_GONE, expect=ACTIVE)
            job = await self.store.get(job_id)
        return job

    async def queue_position(self, job: Job) -> Optional[int]:
        """Jobs ahead of a queued one on its instance (0: next); None once it is not queued."""
        if job.status != "queued":
            return None
        queued = await self.store.queued(job.owner)
        ids = [queued_job.id for queued_job in queued]
        return ids.index(job.id) if job.id in ids else None

    async def watch(self, job_id: str, page: int, timeout_s: float) -> Optional[Job]:
        """The job once the page at `page` (0-based) has finished or the job has, or when `timeout_s` has passed."""
        deadline = time.monotonic() + timeout_s
        while True:
            moved = self._progress  # taken before looking, so a change while looking is not missed
            job = await self.look(job_id)
            if job is None or job.status in FINISHED or time.monotonic() >= deadline:
                return job
            if job.pages_done > page and await self.store.has_page(job.id, page):
                return job
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(moved.wait(), min(POLL_S, max(0.0, deadline - time.monotonic())))

    def _moved(self) -> None:
        """Wake every watcher: one of this instance's jobs stored a page or changed its status."""
        self._progress.set()
        self._progress = asyncio.Event()

    async def pages(self, job: Job, start: int) -> list[dict[str, Any]]:
        """The job's finished pages from `start`, in order, up to the first one not finished yet."""
        stop = job.pages_total if job.pages_total is not None else start + job.pages_done + 1
        return await self.store.pages(job.id, start, max(start, stop))

    async def cancel(self, job_id: str) -> Optional[Job]:
        """Cancel a queued or running job (its VLM work stops), or forget a finished one; None when unknown."""
        job = await self.look(job_id)
        if job is None:
            return None
        if job.status in FINISHED:
            await self.store.remove(job.id)
            return job
        now = time.time()
        await self.store.update(
            job.id, ACTIVE, status="cancelled", finished_at=now, expires_at=now + self.retention_s,
            error_code=409, error_msg="The job was cancelled",
        )  # fmt: skip
        self._moved()
        task = self._running.get(job.id)
        if task is not None:
            task.cancel()
        if job.owner == self.owner:
            await asyncio.to_thread(self.files.drop_body, job.id)
        return await self.store.get(job.id)

    # -- workers --------------------------------------------------------------------------------
    async def _work(self) -> None:
        """One worker: take the next queued job and run it; a store that does not answer is waited out."""
        while True:
            try:
                await self._work_once()
            except JobStoreUnavailable as exc:
                log.warning("job worker: %s", exc.message)
                await asyncio.sleep(STORE_RETRY_S)

    async def _work_once(self) -> None:
        job = await self._next_queued()
        if job is None:
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            return
        ticket = await self.admission.wait()
        try:
            claimed = await self.store.update(
                job.id, ("queued",), status="running", started_at=time.time(), incarnation=self.incarnation
            )
            if claimed:  # another worker may have taken it meanwhile
                await self._run_claimed(job, ticket)
        finally:
            await ticket.close()

    async def _run_claimed(self, job: Job, ticket: Ticket) -> None:
        """Run a job this worker claimed; a cancel cancels the run, a stopping worker stops it too."""
        task = asyncio.ensure_future(self._run(job, ticket))
        self._running[job.id] = task
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():  # the worker is stopping: so is its job
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise
        finally:
            self._running.pop(job.id, None)

    async def _next_queued(self) -> Optional[Job]:
        for job in await self.store.queued(self.owner):
            if job.incarnation == self.incarnation:
                return job
        return None

    async def _run(self, job: Job, ticket: Ticket) -> None:
        watcher = asyncio.ensure_future(self._watch_cancel(job.id, asyncio.current_task()))
        try:
            await self._parse(job, ticket)
        except asyncio.CancelledError:
            current = await self.store.get(job.id)
            if current is not None and current.status == "running":
                await self._fail(job.id, 503, STOPPED, expect=("running",))
            log.info("job %s stopped (%s)", job.id, current.status if current else "removed")
        except ProxyError as exc:
            await self._fail(job.id, exc.status_code, exc.message, expect=("running",))
        except Exception:  # noqa: BLE001 - a bug: logged with its traceback, the job failed as a 500
            log.exception("job %s: unexpected error", job.id)
            await self._fail(job.id, 500, INTERNAL_ERROR_MESSAGE, expect=("running",))
        finally:
            watcher.cancel()
            await asyncio.to_thread(self.files.drop_body, job.id)

    async def _parse(self, job: Job, ticket: Ticket) -> None:
        body = await asyncio.to_thread(self.files.read_body, job.id)
        if body is None:
            raise ProxyError(BODY_GONE, status_code=500)
        request: InferRequest = validate(InferRequest, await asyncio.to_thread(decode_json, body))
        del body
        options = self.parser.options(request)
        await self._upstream_ready()

        async def hold_pages(count: int) -> None:
            await self.store.update(job.id, ("running",), pages_total=count)
            await ticket.wait_pages(count)

        async def on_page(position: int, output: PageOutput) -> PageOutput:
            await self.store.put_page(job.id, position, output.result)
            self._moved()
            return slim(output)

        outputs, info = await self.parser.parse(request, options, hold_pages=hold_pages, on_page=on_page)
        if options.page.restructure_pages:  # restructuring rewrote prunedResult and markdown text of each page
            for position, output in enumerate(outputs):
                (page,) = await self.store.pages(job.id, position, position + 1)
                page["prunedResult"] = output.result["prunedResult"]
                page["markdown"]["text"] = output.result["markdown"]["text"]
                await self.store.put_page(job.id, position, page, new=False)
        now = time.time()
        await self.store.update(
            job.id, ("running",), status="done", finished_at=now, expires_at=now + self.retention_s, data_info=info
        )
        self._moved()

    async def _upstream_ready(self) -> None:
        """Wait while vLLM starts; a failed or draining server fails the job."""
        while True:
            reason = self.state.unavailable_reason()
            if reason is None:
                return
            if self.state.draining or self.state.failed is not None:
                raise UpstreamError(f"Service unavailable: {reason}", status_code=503)
            await asyncio.sleep(POLL_S)

    async def _watch_cancel(self, job_id: str, task: Optional[asyncio.Task[Any]]) -> None:
        """Cancel the run when another instance cancelled the job in the shared store."""
        while task is not None:
            await asyncio.sleep(POLL_S * 2)
            try:
                job = await self.store.get(job_id)
            except JobStoreUnavailable:
                continue  # asked again at the next look; the job runs on meanwhile
            if job is None or job.status == "cancelled":
                task.cancel()
                return

    async def _fail(self, job_id: str, code: int, message: str, *, expect: tuple[str, ...]) -> None:
        now = time.time()
        changed = await self.store.update(
            job_id, expect, status="failed", finished_at=now, expires_at=now + self.retention_s,
            error_code=code, error_msg=message,
        )  # fmt: skip
        if changed:
            self._moved()
            log.info("job %s failed (%d): %s", job_id, code, message)
            await asyncio.to_thread(self.files.drop_body, job_id)  # when this instance holds it

    async def _owner_runs(self, job: Job) -> bool:
        if job.owner == self.owner and job.incarnation == self.incarnation:
            return True
        return await self.store.alive(job.owner) == job.incarnation

    def _lost(self, job: Job, now: float) -> bool:
        """A job this process marked running that no worker runs: its end could not be stored at the time."""
        return (
            job.status == "running" and job.owner == self.owner and job.incarnation == self.incarnation
            and job.id not in self._running and (job.started_at or now) < now - self.lease_s
        )  # fmt: skip

    # -- housekeeping ---------------------------------------------------------------------------
    async def _keep(self) -> None:
        """Renew the lease, fail orphaned jobs, forget expired ones; a store hiccup is logged, not fatal."""
        while True:
            try:
                await self.housekeep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("job housekeeping failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(self.lease_s / 3)

    async def housekeep(self) -> None:
        """One round: renew this process's lease, fail orphaned jobs, forget expired ones."""
        await self.store.renew(self.owner, self.incarnation, self.lease_s)
        now = time.time()
        for job in await self.store.active():
            if not await self._owner_runs(job):
                await self._fail(job.id, 500, OWNER_GONE, expect=ACTIVE)
            elif self._lost(job, now):
                await self._fail(job.id, 503, LOST, expect=("running",))
        for job_id in await self.store.expired(now):
            await self.store.remove(job_id)

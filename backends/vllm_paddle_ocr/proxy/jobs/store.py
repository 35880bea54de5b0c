"""What a job store keeps (records, finished pages, owners' leases) and where jobs' bodies lie.

Two stores implement `JobStore`: `SqliteJobStore` (one instance, or several on one host sharing a data
directory) and `RedisJobStore` (replicas behind one route: any of them answers for any job). A job's
body always lies on the disk of the instance that took it (`JobFiles`), which runs it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any, Optional, Protocol

from vllm_paddle_ocr.plugin.errors import VllmPaddleOcrError

from ..errors import ProxyError
from .model import Job, Status

# Seconds a client is told to wait after the job store did not answer.
STORE_RETRY_AFTER_S = 5


class JobStoreError(VllmPaddleOcrError):
    """The job store cannot be opened or reached; the message names it and what to check."""


class JobStoreUnavailable(ProxyError):
    """The open job store did not answer in time or dropped the connection: a 503, asking again may succeed."""

    status_code = 503

    def __init__(self, store: str, exc: BaseException) -> None:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        super().__init__(
            f"Service unavailable: the job store {store} did not answer ({detail}); retry in {STORE_RETRY_AFTER_S} s",
            retry_after=STORE_RETRY_AFTER_S,
        )


class JobStore(Protocol):
    """Job records, their finished pages and the owners' leases; every write that races is atomic."""

    async def exists(self) -> bool:
        """Whether there is anything to open (an embedded store is created by the first job only)."""
        ...

    async def open(self) -> None:
        """Connect and create what is missing."""
        ...

    async def close(self) -> None:
        """Let go of connections."""
        ...

    async def add(self, job: Job) -> None:
        """Record a new (queued) job."""
        ...

    async def get(self, job_id: str) -> Optional[Job]:
        """The job's record, None when there is no such job (or it expired)."""
        ...

    async def update(self, job_id: str, expect: Collection[Status] = (), **fields: Any) -> bool:
        """Set fields, only while the job's status is one of `expect` (any status when empty); whether it did."""
        ...

    async def queued(self, owner: str) -> list[Job]:
        """The owner's queued jobs, oldest first."""
        ...

    async def active(self) -> list[Job]:
        """Every queued or running job, whoever owns it."""
        ...

    async def put_page(self, job_id: str, position: int, page: dict[str, Any], *, new: bool = True) -> bool:
        """Store a finished page while the job runs (`new` counts it in pagesDone); whether it was stored."""
        ...

    async def has_page(self, job_id: str, position: int) -> bool:
        """Whether the page at `position` has finished (without reading it)."""
        ...

    async def pages(self, job_id: str, start: int, stop: int) -> list[dict[str, Any]]:
        """Finished pages from `start`, in order, up to `stop` or the first one not finished yet."""
        ...

    async def remove(self, job_id: str) -> None:
        """Forget the job and its pages."""
        ...

    async def expired(self, now: float) -> list[str]:
        """Jobs whose results were kept long enough (those the store does not expire itself)."""
        ...

    async def renew(self, owner: str, incarnation: str, ttl_s: float) -> None:
        """Say that `incarnation` of `owner` is alive for `ttl_s` more seconds."""
        ...

    async def alive(self, owner: str) -> Optional[str]:
        """The incarnation of `owner` whose lease runs, None when none does."""
        ...


class JobFiles:
    """Bodies of the jobs this instance took, under <data dir>/jobs/<id>/, readable by its user only."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def prepare(self) -> None:
        """Create the directory (0700) or say why it cannot be."""
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            probe = self.root / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise JobStoreError(
                f"cannot write jobs under {self.root} ({exc.strerror}); point --data-dir at a writable directory"
            ) from None

    def job_dir(self, job_id: str) -> Path:
        return self.root / job_id

    def body_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "body.json"

    def write_body(self, job_id: str, body: bytes) -> None:
        """Write the body whole, then move it in place: a crash never leaves half a body."""
        directory = self.job_dir(job_id)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.body_path(job_id), body)

    def read_body(self, job_id: str) -> Optional[bytes]:
        """The body, None when it is gone."""
        try:
            return self.body_path(job_id).read_bytes()
        except FileNotFoundError:
            return None

    def drop_body(self, job_id: str) -> None:
        """The body is not needed any more (the job finished)."""
        self.body_path(job_id).unlink(missing_ok=True)

    def remove(self, job_id: str) -> None:
        """Everything of the job on this disk."""
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old content or the new, never a part."""
    temporary = path.with_name(path.name + ".part")
    with open(temporary, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)

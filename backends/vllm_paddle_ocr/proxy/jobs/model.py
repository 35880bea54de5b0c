"""A job's record as every store keeps it, and how it reads out to a client."""

from __future__ import annotations

import datetime
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Optional

Status = Literal["queued", "running", "done", "failed", "cancelled"]
ACTIVE: tuple[Status, ...] = ("queued", "running")
FINISHED: tuple[Status, ...] = ("done", "failed", "cancelled")


def new_job_id() -> str:
    """A job id: 32 hex digits, nothing guessable in it."""
    return uuid.uuid4().hex


def is_job_id(text: str) -> bool:
    """Whether a path segment has the shape of a job id (anything else is a 404 without a store lookup)."""
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True)
class Job:
    """One job: who holds its body and runs it (`owner`, `incarnation`), where it stands, and when."""

    id: str
    log_id: str
    owner: str  # the instance that took the job: its body lies on that instance's disk
    incarnation: str  # the owner's process that runs it; another process of the same owner did not
    status: Status
    created_at: float
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    expires_at: Optional[float] = None
    pages_total: Optional[int] = None
    pages_done: int = 0
    error_code: Optional[int] = None
    error_msg: Optional[str] = None
    data_info: Optional[dict[str, Any]] = field(default=None)

    def fields(self) -> dict[str, Any]:
        """Every field by name (for stores)."""
        return asdict(self)


def iso(timestamp: Optional[float]) -> Optional[str]:
    """A Unix time as ISO 8601 in UTC (None stays None)."""
    if timestamp is None:
        return None
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_view(job: Job, queue_position: Optional[int]) -> dict[str, Any]:
    """The job as GET /layout-parsing/jobs/{jobId} answers it."""
    error = None
    if job.error_code is not None:
        error = {"errorCode": job.error_code, "errorMsg": job.error_msg or ""}
    return {
        "jobId": job.id,
        "status": job.status,
        "pagesDone": job.pages_done,
        "pagesTotal": job.pages_total,
        "queuePosition": queue_position,
        "createdAt": iso(job.created_at),
        "startedAt": iso(job.started_at),
        "finishedAt": iso(job.finished_at),
        "expiresAt": iso(job.expires_at),
        "error": error,
    }

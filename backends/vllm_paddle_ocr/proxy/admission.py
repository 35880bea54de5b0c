"""Admission control: a bound on documents, pages and body bytes taken on at once; past it, a 429.

Every waiting request would otherwise hold its decoded body, so memory would grow with the number of
clients. A request is admitted (a `Ticket`) before its body is read; the body's bytes and then the
document's pages are held against the bounds while it is answered, and given back when it ends. One
document alone is always admitted (the per-request limits, --max-body-size and --max-pages, bound it),
so a bound below one request's size never refuses everything. A synchronous request that does not fit
is refused at once with Retry-After; the job runner waits for room instead.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from vllm_paddle_ocr.plugin.records import ProxySettings

from .errors import ProxyError
from .metrics import ProxyMetrics

MIN_ACTIVE_REQUESTS = 4
PAGES_PER_REQUEST = 8  # the default page bound: this many pages per admitted document
HELD_MEMORY_SHARE = 16  # the default byte bound: this share of the host's memory
MAX_RETRY_AFTER_S = 60


class Overloaded(ProxyError):
    """The server holds as much work as its admission bounds allow; the client should retry later."""

    status_code = 429


@dataclass(frozen=True)
class AdmissionBounds:
    """Documents, pages and request-body bytes taken on at once."""

    requests: int
    pages: int
    bytes: int


def admission_bounds(settings: ProxySettings, memory_bytes: int) -> AdmissionBounds:
    """The bounds the settings give, each filled from the concurrency, --max-pages and memory when unset."""
    requests = settings.max_active_requests or max(MIN_ACTIVE_REQUESTS, settings.concurrency)
    pages = settings.max_active_pages or requests * PAGES_PER_REQUEST
    held = settings.max_held_bytes or max(settings.max_body_bytes, memory_bytes // HELD_MEMORY_SHARE)
    return AdmissionBounds(requests, pages, held)


_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def memory_limit(total: int, cgroup_files: tuple[str, ...] = _CGROUP_LIMITS) -> int:
    """The memory this process may use: the host's, or its container's limit when that is lower."""
    for name in cgroup_files:
        try:
            text = Path(name).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            return int(text)
    return total


class Admission:
    """The process-wide counts of what is admitted, and the estimate of when room frees up."""

    def __init__(self, bounds: AdmissionBounds, metrics: Optional[ProxyMetrics] = None) -> None:
        self.bounds = bounds
        self.requests = 0
        self.pages = 0
        self.bytes = 0
        self._metrics = metrics
        self._changed = asyncio.Condition()
        self._mean_seconds = 0.0  # moving mean of how long an admitted request stays

    def admit(self, *, document: bool = True) -> Ticket:
        """A ticket for one more request now, or Overloaded when as many are admitted as the bound allows.

        `document=False` admits a request that only holds a body for a moment (a job's submission): it
        counts against the bytes, not against the documents parsed at once.
        """
        if not document:
            return Ticket(self, document=False)
        if self.requests >= self.bounds.requests:
            raise self._refusal(
                f"{self.requests} documents are being parsed, the most this server takes on at once "
                "(--max-active-requests)"
            )
        return self._issue()

    async def wait(self) -> Ticket:
        """A ticket once a request fits (for jobs: they wait in the queue instead of being refused)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.requests < self.bounds.requests)
            return self._issue()

    def _issue(self) -> Ticket:
        self.requests += 1
        self._publish()
        return Ticket(self)

    def retry_after(self) -> int:
        """Seconds until room is likely: the mean stay of a request shared out over those admitted."""
        if self._mean_seconds <= 0:
            return 1
        return max(1, min(MAX_RETRY_AFTER_S, math.ceil(self._mean_seconds / max(1, self.requests))))

    def _refusal(self, what: str) -> Overloaded:
        seconds = self.retry_after()
        return Overloaded(f"Too many requests: {what}; retry in {seconds} s", retry_after=seconds)

    def _fits(self, held: int, more: int, bound: int) -> bool:
        return held == 0 or held + more <= bound

    def _publish(self) -> None:
        if self._metrics is not None:
            self._metrics.admitted_requests.set(self.requests)
            self._metrics.admitted_pages.set(self.pages)
            self._metrics.held_bytes.set(self.bytes)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


class Ticket:
    """One admitted request: the bytes and pages it holds, all given back by `close`."""

    def __init__(self, admission: Admission, *, document: bool = True) -> None:
        self._admission = admission
        self._document = document
        self.bytes = 0
        self.pages = 0
        self._started = time.monotonic()
        self._closed = False

    def hold_bytes(self, count: int) -> None:
        """Hold `count` more body bytes, or Overloaded when the bytes held would pass the bound."""
        admission = self._admission
        if not self._admission._fits(admission.bytes - self.bytes, self.bytes + count, admission.bounds.bytes):
            raise admission._refusal(
                f"request bodies held now and this one pass {admission.bounds.bytes} bytes, the most this "
                "server holds at once (--max-held-bytes)"
            )
        self.bytes += count
        admission.bytes += count
        admission._publish()

    def hold_pages(self, count: int) -> None:
        """Hold this document's pages, or Overloaded when the pages admitted would pass the bound."""
        admission = self._admission
        if not admission._fits(admission.pages, count, admission.bounds.pages):
            raise admission._refusal(
                f"{admission.pages} pages are being parsed and this document has {count}; this server takes on at "
                f"most {admission.bounds.pages} at once (--max-active-pages)"
            )
        self._take_pages(count)

    async def wait_pages(self, count: int) -> None:
        """Hold this document's pages once they fit (for jobs)."""
        admission = self._admission
        async with admission._changed:
            await admission._changed.wait_for(lambda: admission._fits(admission.pages, count, admission.bounds.pages))
            self._take_pages(count)

    def _take_pages(self, count: int) -> None:
        self.pages += count
        self._admission.pages += count
        self._admission._publish()

    async def close(self) -> None:
        """Give everything back and wake whoever waits for room."""
        if self._closed:
            return
        self._closed = True
        admission = self._admission
        admission.pages -= self.pages
        admission.bytes -= self.bytes
        if self._document:
            admission.requests -= 1
            stay = time.monotonic() - self._started
            admission._mean_seconds = stay if admission._mean_seconds <= 0 else 0.8 * admission._mean_seconds + 0.2 * stay
        admission._publish()
        await admission._notify()

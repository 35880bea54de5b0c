"""Pages waiting for layout detection, from every request, detected together and fairly.

Each page's worker thread calls `BatchingDetector.detect` and waits; one thread takes waiting pages in
batches (as many as the batch size, or what arrived within a few milliseconds of the first) and runs
them through the engine in one pass, each page with its own request's options. Pages are taken from
requests in turn, like the VLM client's slots: a request with a hundred pages waiting does not keep a
request with one page out of the next batch.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Optional

from vllm_paddle_ocr.plugin.errors import VllmPaddleOcrError

from ..options import LayoutOptions
from .base import ImageInput, LayoutBox, PageEngine

log = logging.getLogger("vllm_paddle_ocr.layout")

# How long the first waiting page waits for others to join its batch.
DEFAULT_MAX_WAIT_S = 0.005


class DetectorClosed(VllmPaddleOcrError):
    """The detector was closed while a page waited; the server is shutting down."""


@dataclass
class _Page:
    image: ImageInput
    options: Optional[LayoutOptions]
    result: Future = field(default_factory=Future)


class BatchingDetector:
    """A layout detector whose pages, from all requests, go to the engine in fair batches."""

    def __init__(self, engine: PageEngine, *, batch_size: int, max_wait_s: float = DEFAULT_MAX_WAIT_S) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.inner = engine
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.labels: tuple[str, ...] = tuple(engine.labels)
        self.batches: collections.Counter[int] = collections.Counter()  # batch size -> passes, for /metrics and tests
        self._queues: collections.OrderedDict[Hashable, collections.deque[_Page]] = collections.OrderedDict()
        self._waiting = 0
        self._closed = False
        self._wake = threading.Condition()
        self._worker = threading.Thread(target=self._run, name="layout-batches", daemon=True)
        self._worker.start()

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    @property
    def waiting(self) -> int:
        """Pages waiting for a batch."""
        return self._waiting

    def detect(self, image: ImageInput, options: Optional[LayoutOptions] = None, *, owner: Hashable = None) -> list[LayoutBox]:
        """Boxes on one page, once its batch has run (blocks the calling thread)."""
        page = _Page(image, options)
        with self._wake:
            if self._closed:
                raise DetectorClosed("the layout detector is shut down")
            key = owner if owner is not None else object()
            self._queues.setdefault(key, collections.deque()).append(page)
            self._waiting += 1
            self._wake.notify_all()
        return page.result.result()

    def _take(self) -> list[_Page]:
        """Up to a batch of pages, one per request in turn (call with the lock held)."""
        batch: list[_Page] = []
        while self._queues and len(batch) < self.batch_size:
            owner, queue = next(iter(self._queues.items()))
            batch.append(queue.popleft())
            if queue:
                self._queues.move_to_end(owner)
            else:
                del self._queues[owner]
        self._waiting -= len(batch)
        return batch

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queues and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                deadline = time.monotonic() + self.max_wait_s
                while self._waiting < self.batch_size and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(left)
                batch = self._take()
            self._detect(batch)

    def _detect(self, batch: Sequence[_Page]) -> None:
        self.batches[len(batch)] += 1
        try:
            results = self.inner.detect_pages([page.image for page in batch], [page.options for page in batch])
        except Exception as exc:  # noqa: BLE001 - one bad page must not fail the others: retry them alone
            if len(batch) == 1:
                batch[0].result.set_exception(exc)
                return
            log.warning("a layout batch of %d pages failed (%s: %s); detecting its pages one by one", len(batch), type(exc).__name__, exc)
            for page in batch:
                self._detect([page])
            return
        for page, boxes in zip(batch, results):
            page.result.set_result(boxes)

    def close(self) -> None:
        """Stop the batch thread; pages still waiting fail with DetectorClosed; close the engine."""
        with self._wake:
            self._closed = True
            pending = [page for queue in self._queues.values() for page in queue]
            self._queues.clear()
            self._waiting = 0
            self._wake.notify_all()
        for page in pending:
            page.result.set_exception(DetectorClosed("the layout detector is shut down"))
        self._worker.join(timeout=30)
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()

    def __getattr__(self, name: str) -> Any:
        # spec, engine, device...: what the engine tells about itself.
        if name == "inner":  # not set yet (during __init__)
            raise AttributeError(name)
        return getattr(self.inner, name)

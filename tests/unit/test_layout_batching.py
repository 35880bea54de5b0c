"""Pages from concurrent requests detected in shared batches, in turn between requests (a recording engine)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.layout.base import LayoutBox
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.layout.batching import BatchingDetector, DetectorClosed
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.options import LayoutOptions


class RecordingEngine:
    """Stands in for a model: records each pass's pages; a page named "bad" makes a pass fail."""

    labels = ("text",)
    model_name = "PP-DocLayoutV2"

    def __init__(self, *, pass_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.passes: list[list[str]] = []
        self.options: list[list[object]] = []
        self.pass_s = pass_s
        self.gate = gate
        self.entered = threading.Event()
        self.closed = False

    def detect_pages(self, images, options):
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(5)
        self.passes.append(list(images))
        self.options.append(list(options))
        time.sleep(self.pass_s)
        if "bad" in images:
            raise ValueError("unreadable page")
        return [[LayoutBox(22, "text", 0.9, (0, 0, 1, 1), 1, None)] if image != "empty" else [] for image in images]

    def close(self):
        self.closed = True


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_concurrent_pages_share_passes_up_to_the_batch_size():
    engine = RecordingEngine(pass_s=0.05)
    detector = BatchingDetector(engine, batch_size=4, max_wait_s=0.2)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: detector.detect(f"page{i}", owner=i), range(8)))
    detector.close()
    assert all(len(boxes) == 1 for boxes in results)
    assert sorted(page for batch in engine.passes for page in batch) == sorted(f"page{i}" for i in range(8))
    assert max(len(batch) for batch in engine.passes) == 4
    assert len(engine.passes) < 8  # pages were detected together, not one by one


def test_each_page_keeps_its_own_options():
    engine = RecordingEngine()
    detector = BatchingDetector(engine, batch_size=2, max_wait_s=0.2)
    strict, loose = LayoutOptions(threshold=0.9), LayoutOptions(threshold=0.1)
    with ThreadPoolExecutor(2) as pool:
        pool.submit(detector.detect, "a", strict, owner="r1")
        pool.submit(detector.detect, "b", loose, owner="r2")
    detector.close()
    sent = {page: option for batch, options in zip(engine.passes, engine.options) for page, option in zip(batch, options)}
    assert sent == {"a": strict, "b": loose}


def test_requests_take_turns():
    """A request with many pages waiting does not keep a later request's page out of the next batch."""
    gate = threading.Event()
    engine = RecordingEngine(gate=gate)
    detector = BatchingDetector(engine, batch_size=2, max_wait_s=0.01)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(detector.detect, "big-0", owner="big")
        assert engine.entered.wait(5)  # big-0 is in the engine, held at the gate
        bigs = [pool.submit(detector.detect, f"big-{i}", owner="big") for i in range(1, 6)]
        wait_for(lambda: detector.waiting == 5)
        small = pool.submit(detector.detect, "small-0", owner="small")
        wait_for(lambda: detector.waiting == 6)
        gate.set()
        for future in [first, *bigs, small]:
            future.result(timeout=10)
    detector.close()
    assert engine.passes[0] == ["big-0"]
    assert "small-0" in engine.passes[1]


def test_a_failing_page_fails_alone():
    engine = RecordingEngine()
    detector = BatchingDetector(engine, batch_size=3, max_wait_s=0.2)
    with ThreadPoolExecutor(3) as pool:
        futures = {name: pool.submit(detector.detect, name, owner=name) for name in ("good", "bad", "empty")}
    detector.close()
    assert futures["good"].result() and futures["empty"].result() == []
    with pytest.raises(ValueError, match="unreadable page"):
        futures["bad"].result()


def test_closing_fails_waiting_pages_and_later_calls():
    gate = threading.Event()
    engine = RecordingEngine(gate=gate)
    detector = BatchingDetector(engine, batch_size=1, max_wait_s=0.0)
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(detector.detect, "first", owner=1)
        assert engine.entered.wait(5)
        waiting = pool.submit(detector.detect, "second", owner=2)
        wait_for(lambda: detector.waiting == 1)
        closer = threading.Thread(target=detector.close)
        closer.start()
        with pytest.raises(DetectorClosed):
            waiting.result(timeout=10)
        gate.set()
        closer.join(10)
        assert running.result(timeout=10)
    assert engine.closed
    with pytest.raises(DetectorClosed):
        detector.detect("late")


def test_the_engine_answers_for_itself_through_the_batcher():
    detector = BatchingDetector(RecordingEngine(), batch_size=2)
    assert detector.labels == ("text",) and detector.model_name == "PP-DocLayoutV2"
    assert detector.inner.pass_s == 0.0
    detector.close()
    with pytest.raises(ValueError, match="at least 1"):
        BatchingDetector(RecordingEngine(), batch_size=0)

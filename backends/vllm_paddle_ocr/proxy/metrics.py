"""The proxy's Prometheus metrics, in a registry of its own so every app (and test) counts separately."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "vllm_paddle_ocr_proxy"
CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class ProxyMetrics:
    """Counters for requests, pages, blocks, VLM latency, queue depth and errors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "PaddleX endpoint requests answered, by endpoint and HTTP status.",
            ["endpoint", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            f"{PREFIX}_request_seconds",
            "Time to answer a PaddleX endpoint request.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_progress = Gauge(
            f"{PREFIX}_requests_in_progress",
            "PaddleX endpoint requests being worked on.",
            registry=r,
        )
        self.pages = Counter(f"{PREFIX}_pages", "Pages parsed by /layout-parsing.", registry=r)
        self.blocks = Counter(
            f"{PREFIX}_blocks",
            "Layout blocks found, by label.",
            ["label"],
            registry=r,
        )
        self.vlm_requests = Counter(
            f"{PREFIX}_vlm_requests",
            "Block recognition requests sent to vLLM, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.vlm_seconds = Histogram(
            f"{PREFIX}_vlm_request_seconds",
            "Latency of one block recognition request to vLLM.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.vlm_queue_depth = Gauge(
            f"{PREFIX}_vlm_queue_depth",
            "Block requests waiting for a free slot to vLLM.",
            registry=r,
        )
        self.vlm_in_flight = Gauge(
            f"{PREFIX}_vlm_in_flight",
            "Block requests being answered by vLLM now.",
            registry=r,
        )
        self.vlm_slots = Gauge(
            f"{PREFIX}_vlm_slots",
            "Bound on concurrent block requests to vLLM.",
            registry=r,
        )
        self.errors = Counter(
            f"{PREFIX}_errors",
            "Failed requests, by kind (input, limit, upstream, internal, passthrough).",
            ["kind"],
            registry=r,
        )
        self.passthrough = Counter(
            f"{PREFIX}_passthrough_requests",
            "Requests passed through to vLLM, by HTTP status.",
            ["status"],
            registry=r,
        )
        self.admitted_requests = Gauge(
            f"{PREFIX}_admitted_requests", "Documents admitted and being parsed (requests and jobs).", registry=r
        )
        self.admitted_pages = Gauge(f"{PREFIX}_admitted_pages", "Pages of the admitted documents.", registry=r)
        self.held_bytes = Gauge(f"{PREFIX}_held_body_bytes", "Request body bytes held by admitted requests.", registry=r)
        self.upstream_ready = Gauge(
            f"{PREFIX}_upstream_ready",
            "1 when vLLM has answered its warm-up and is alive.",
            registry=r,
        )

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)

"""What the supervisor tells the proxy about vLLM (ready, failed, draining) and the layout detector."""

from __future__ import annotations

from typing import Any


class UpstreamState:
    """Readiness flags the supervisor flips; the proxy reads them on every request."""

    def __init__(self, *, ready: bool = False, detector: Any = None) -> None:
        self.ready = ready
        self.failed: str | None = None
        self.draining = False
        self.detector = detector
        self._in_flight = 0

    def mark_ready(self) -> None:
        """vLLM answered its warm-up request: start passing requests through."""
        self.ready = True
        self.failed = None

    def mark_failed(self, reason: str) -> None:
        """vLLM died or stopped answering: refuse new work with 503 and this reason."""
        self.ready = False
        self.failed = reason

    def mark_draining(self) -> None:
        """Shutting down: refuse new work, let requests already in flight finish."""
        self.draining = True

    def attach_detector(self, detector: Any) -> None:
        """The layout detector, once it has loaded (it may load while vLLM warms up)."""
        self.detector = detector

    def unavailable_reason(self) -> str | None:
        """Why new work is refused right now, or None when the upstream can take it."""
        if self.draining:
            return "the server is shutting down"
        if self.failed is not None:
            return f"the model server failed: {self.failed}"
        if not self.ready:
            return "the model server is still starting (waiting for vLLM to answer its warm-up request)"
        return None

    @property
    def status(self) -> str:
        """One word for /health: starting, ready, failed or draining."""
        if self.draining:
            return "draining"
        if self.failed is not None:
            return "failed"
        return "ready" if self.ready else "starting"

    # -- in-flight accounting, reported by /health ---------------------------------------------
    @property
    def in_flight(self) -> int:
        """Requests (passthrough and PaddleX endpoints) being answered now."""
        return self._in_flight

    def enter(self) -> None:
        """A request started."""
        self._in_flight += 1

    def leave(self) -> None:
        """A request ended."""
        self._in_flight -= 1

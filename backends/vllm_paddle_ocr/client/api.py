"""A client of the server's public API: one document in, its /layout-parsing answer out, retried while the server is busy.

One POST /layout-parsing per document today; `parse` already reports progress per page, so moving to
the jobs API (submit, then poll pagesDone/pagesTotal, with a page range) changes this module only.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx

from vllm_paddle_ocr.plugin.errors import VllmPaddleOcrError

RETRY_STATUSES = frozenset({429, 503})
# Without a Retry-After, waits grow 1, 2, 4 ... seconds, up to this.
MAX_BACKOFF_S = 30.0
# A Retry-After longer than this is waited for this long, then asked again.
MAX_RETRY_AFTER_S = 300.0

Progress = Callable[[int, "int | None"], None]  # (pages done, pages in total when known)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DOCUMENT_SUFFIXES = (".pdf", *IMAGE_SUFFIXES)


class ServerError(VllmPaddleOcrError):
    """The server refused or failed a document; the message is the server's own (PaddleX's errorMsg)."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None, retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.retryable = retryable  # busy (429/503) or unreachable: asking again may succeed


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



class LayoutParsingClient:
    """The server's /layout-parsing and /restructure-pages for a client that sends whole files."""

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
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            transport=transport,
        )
        self.server = server
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
        """The /layout-parsing answer for one file (PaddleX's envelope), pages in order."""
        body = {"file": base64.b64encode(data).decode("ascii"), **options}
        kind = file_type(name)
        if kind is not None and "fileType" not in options:
            body["fileType"] = kind
        envelope = await self._post("layout-parsing", body)
        pages = len(envelope["result"]["layoutParsingResults"])
        if progress is not None:
            progress(pages, pages)
        return envelope

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
        envelope = await self._post("restructure-pages", body)
        return envelope["result"]["layoutParsingResults"][0]["markdown"]["text"]

    async def _post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST with retries on 429/503 (honouring Retry-After) and on a server that cannot be reached."""
        backoff = 1.0
        for attempt in range(self.retries + 1):
            try:
                return await self._post_once(path, body)
            except ServerError as exc:
                if not exc.retryable or attempt == self.retries:
                    raise
                if exc.retry_after is not None:
                    wait = min(exc.retry_after, MAX_RETRY_AFTER_S)
                else:
                    wait, backoff = backoff, min(backoff * 2, MAX_BACKOFF_S)
                await self._sleep(wait)
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _post_once(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        try:
            answer = await self._http.post(path, json=body)
        except httpx.TimeoutException as exc:
            raise ServerError(f"{self.server} did not answer in time ({type(exc).__name__}); raise --timeout") from None
        except httpx.TransportError as exc:
            raise ServerError(f"cannot reach {self.server}: {exc or type(exc).__name__}", retryable=True) from None
        try:
            envelope = answer.json()
        except ValueError:
            envelope = None
        message = envelope.get("errorMsg") if isinstance(envelope, dict) else None
        if answer.status_code != 200 or not isinstance(envelope, dict) or envelope.get("errorCode"):
            status = answer.status_code
            text = message or f"HTTP {status} {answer.reason_phrase}".strip()
            if status == 401:
                text += " (pass the server's key with --api-key)"
            raise ServerError(
                f"{status}: {text}",
                status=status,
                retry_after=retry_after_seconds(answer.headers.get("retry-after")),
                retryable=status in RETRY_STATUSES,
            )
        return envelope

"""One shared, bounded and fair client for block recognition requests to vLLM."""

from __future__ import annotations

import asyncio
import base64
import collections
import io
import json
import time
from typing import Any, Hashable

import aiohttp
from PIL import Image

from ..errors import UpstreamError
from ..metrics import ProxyMetrics

DEFAULT_TIMEOUT_S = 600.0
DEFAULT_CONNECT_RETRIES = 3
# vLLM closes a keep-alive connection after 5 s idle; ours are given up a second earlier.
KEEPALIVE_EXPIRY_S = 4.0
_RETRY_BACKOFF_S = (0.2, 0.5, 1.0, 2.0)


class VlmError(UpstreamError):
    """A block recognition request failed; `status_code` is the HTTP status for the client."""


class FairSlots:
    """A counting semaphore that hands free slots round-robin to the owners waiting for one.

    One request with thousands of blocks queued must not starve a request with a few: each time a
    slot frees up it goes to the next owner in turn, not to the oldest waiter.
    """

    def __init__(self, capacity: int, metrics: ProxyMetrics | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._free = capacity
        self._queues: collections.OrderedDict[Hashable, collections.deque[asyncio.Future[None]]] = (
            collections.OrderedDict()
        )
        self._waiting = 0
        self._metrics = metrics
        if metrics is not None:
            metrics.vlm_slots.set(capacity)

    @property
    def waiting(self) -> int:
        """Acquirers waiting for a slot."""
        return self._waiting

    @property
    def in_use(self) -> int:
        """Slots held now."""
        return self.capacity - self._free

    async def acquire(self, owner: Hashable) -> None:
        """Take a slot for `owner`, waiting for its turn when all are busy."""
        if self._free > 0 and not self._queues:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(owner, collections.deque()).append(future)
        self._set_waiting(+1)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed over just as we were cancelled: pass it on
            else:
                self._forget(owner, future)
                self._set_waiting(-1)
            raise

    def release(self) -> None:
        """Give a slot back: to the next owner in turn if anyone waits, else to the pool."""
        while self._queues:
            owner, queue = next(iter(self._queues.items()))
            future = queue.popleft()
            if queue:
                self._queues.move_to_end(owner)
            else:
                del self._queues[owner]
            if not future.done():
                self._set_waiting(-1)
                future.set_result(None)
                return
        self._free += 1

    def _forget(self, owner: Hashable, future: asyncio.Future[None]) -> None:
        queue = self._queues.get(owner)
        if queue is None:
            return
        try:
            queue.remove(future)
        except ValueError:
            return
        if not queue:
            del self._queues[owner]

    def _set_waiting(self, delta: int) -> None:
        self._waiting += delta
        if self._metrics is not None:
            self._metrics.vlm_queue_depth.set(self._waiting)


def jpeg_data_url(image: Image.Image) -> str:
    """The crop as PaddleX sends it: RGB, JPEG at Pillow's default quality, in a data URL."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class VlmClient:
    """The process-wide client: at most `concurrency` block requests in flight, shared fairly."""

    def __init__(
        self,
        base_url: str,
        model: str,
        concurrency: int,
        *,
        metrics: ProxyMetrics | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_retries: int = DEFAULT_CONNECT_RETRIES,
        api_key: str | None = None,
    ) -> None:
        self.model = model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self.timeout_s = timeout_s
        self.connect_retries = connect_retries
        self.slots = FairSlots(concurrency, metrics)
        self._metrics = metrics
        self._url = base_url.rstrip("/") + "/v1/chat/completions"
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        """The session, made on first use (aiohttp binds it to the running loop): one connection per slot."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._concurrency, keepalive_timeout=KEEPALIVE_EXPIRY_S),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s, sock_connect=min(10.0, self.timeout_s)),
                headers=self._headers,
                trust_env=False,
            )
        return self._session

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()

    async def complete(self, owner: Hashable, body: dict[str, Any]) -> str:
        """Send one chat completion when `owner`'s turn comes; return the first choice's text."""
        await self.slots.acquire(owner)
        if self._metrics is not None:
            self._metrics.vlm_in_flight.inc()
        started = time.monotonic()
        try:
            text = await self._post_with_retries(body)
        except VlmError:
            self._count("error")
            raise
        except asyncio.CancelledError:
            self._count("cancelled")
            raise
        finally:
            if self._metrics is not None:
                self._metrics.vlm_in_flight.dec()
            self.slots.release()
        if self._metrics is not None:
            self._metrics.vlm_seconds.observe(time.monotonic() - started)
        self._count("ok")
        return text

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.vlm_requests.labels(outcome=outcome).inc()

    async def _post_with_retries(self, body: dict[str, Any]) -> str:
        attempt = 0
        while True:
            try:
                async with self._client().post(self._url, json=body) as response:
                    status, data = response.status, await response.read()
            except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
                # Refused, reset or dropped before an answer (a kept-alive connection the server closed as
                # the body went out, say): a block's request can be asked again.
                if attempt >= self.connect_retries:
                    raise VlmError(
                        f"cannot reach the model server after {attempt + 1} attempts ({type(exc).__name__}: {exc})"
                    ) from exc
                await asyncio.sleep(_RETRY_BACKOFF_S[min(attempt, len(_RETRY_BACKOFF_S) - 1)])
                attempt += 1
                continue
            except asyncio.TimeoutError as exc:
                raise VlmError(f"the model server did not answer within {self.timeout_s:g} s", status_code=504) from exc
            except aiohttp.ClientError as exc:
                raise VlmError(f"the model server connection failed ({type(exc).__name__}: {exc})") from exc
            return _first_choice_text(status, data)


def _first_choice_text(status: int, data: bytes) -> str:
    text = data.decode("utf-8", "replace")
    if status != 200:
        detail = text[:500]
        try:
            error = json.loads(data).get("error")
            detail = error.get("message", detail) if isinstance(error, dict) else detail
        except (ValueError, AttributeError):
            pass
        if status == 400:  # vLLM refused what the request asked for (e.g. maxNewTokens beyond the served context)
            raise VlmError(f"the model server refused this block's request: {detail}", status_code=422)
        raise VlmError(f"the model server answered {status}: {detail}")
    try:
        choice = json.loads(data)["choices"][0]
        content = choice["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise VlmError(f"the model server's answer has no choices[0].message: {text[:200]}") from exc
    return content or ""

"""The job store for replicas behind one route: records, pages and leases in Redis, so any replica answers.

Needs the `redis` package (the `redis` extra). Keys live under one prefix; a finished job's keys expire
with its retention, so Redis forgets them on its own.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Optional, TypeVar

from .model import ACTIVE, FINISHED, Job, Status
from .store import JobStoreError, JobStoreUnavailable

PREFIX = "vllm_paddle_ocr:jobs:"
CONNECT_TIMEOUT_S = 5.0
# Every command here is small: one that takes longer is asked again, up to COMMAND_RETRIES times, then
# answered as a 503. (redis-py 8's own default is 5 s and 10 retries; a loaded host can pass the first.)
COMMAND_TIMEOUT_S = 10.0
COMMAND_RETRIES = 2
_INT_FIELDS = {"pages_total", "pages_done", "error_code"}
_FLOAT_FIELDS = {"created_at", "started_at", "finished_at", "expires_at"}

# Set fields only while the status is one of those expected; keep the status indexes and expiry in step.
# KEYS: job, pages, active set, owner's queue. ARGV: expected count, expected..., ttl ms (0: none), field, value, ...
_UPDATE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
local expected = tonumber(ARGV[1])
if expected > 0 then
  local match = false
  for i = 2, expected + 1 do if ARGV[i] == status then match = true end end
  if not match then return 0 end
end
local ttl = tonumber(ARGV[expected + 2])
local new_status = nil
for i = expected + 3, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[1], ARGV[i]) else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
  if ARGV[i] == 'status' then new_status = ARGV[i + 1] end
end
if new_status and new_status ~= 'queued' then redis.call('ZREM', KEYS[4], redis.call('HGET', KEYS[1], 'id')) end
if new_status == 'done' or new_status == 'failed' or new_status == 'cancelled' then
  redis.call('SREM', KEYS[3], redis.call('HGET', KEYS[1], 'id'))
end
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
"""
# A page is stored only while its job runs; KEYS: job, pages. ARGV: position, page, count it (1/0).
_PUT_PAGE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[1], 'pages_done', 1) end
return 1
"""


T = TypeVar("T")


def _answered(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """A store method whose connection or timeout errors from Redis become JobStoreUnavailable (a 503)."""

    @functools.wraps(method)
    async def call(self: "RedisJobStore", *args: Any, **kwargs: Any) -> T:
        try:
            return await method(self, *args, **kwargs)
        except self._unanswered as exc:
            raise JobStoreUnavailable(f"at {_safe(self.url)}", exc) from None

    return call


def _encode(name: str, value: Any) -> str:
    if value is None:
        return ""
    if name == "data_info":
        return json.dumps(value)
    return repr(value) if isinstance(value, float) else str(value)


def _decode(values: dict[str, str]) -> Job:
    fields: dict[str, Any] = {}
    for name, text in values.items():
        if text == "":
            fields[name] = None
        elif name in _INT_FIELDS:
            fields[name] = int(text)
        elif name in _FLOAT_FIELDS:
            fields[name] = float(text)
        elif name == "data_info":
            fields[name] = json.loads(text)
        else:
            fields[name] = text
    fields.setdefault("pages_done", 0)
    return Job(**fields)


class RedisJobStore:
    """Job records as hashes, pages as a hash per job, queues as sorted sets, leases as expiring keys."""

    def __init__(self, url: str, *, prefix: str = PREFIX) -> None:
        self.url = url
        self.prefix = prefix
        self._redis: Any = None
        self._update: Any = None
        self._put_page: Any = None
        self._unanswered: tuple[type[BaseException], ...] = ()  # Redis's connection and timeout errors, once open

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def exists(self) -> bool:
        return True  # a shared store is opened at start: other instances' jobs may be asked about at once

    async def open(self) -> None:
        try:
            import redis.asyncio as redis_asyncio
        except ImportError:
            raise JobStoreError(
                "--job-store redis://... needs the redis package: pip install 'vllm-paddle-ocr[redis]'"
            ) from None
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        client = redis_asyncio.from_url(
            self.url, decode_responses=True, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=COMMAND_TIMEOUT_S,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), COMMAND_RETRIES),
        )  # fmt: skip
        self._unanswered = (RedisConnectionError, RedisTimeoutError)
        try:
            await client.ping()
        except Exception as exc:  # noqa: BLE001 - any failure to reach Redis is the same message
            await client.aclose()
            raise JobStoreError(f"cannot reach the job store at {_safe(self.url)} ({type(exc).__name__}: {exc})") from None
        self._redis = client
        self._update = client.register_script(_UPDATE)
        self._put_page = client.register_script(_PUT_PAGE)

    async def close(self) -> None:
        if self._redis is not None:
            client, self._redis = self._redis, None
            await client.aclose()

    def _job_keys(self, job: Job) -> list[str]:
        return [self._key("job", job.id), self._key("job", job.id, "pages"), self._key("active"), self._key("queue", job.owner)]

    @_answered
    async def add(self, job: Job) -> None:
        fields = {name: _encode(name, value) for name, value in job.fields().items()}
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key("job", job.id), mapping=fields)
            pipe.sadd(self._key("active"), job.id)
            pipe.zadd(self._key("queue", job.owner), {job.id: job.created_at})
            await pipe.execute()

    @_answered
    async def get(self, job_id: str) -> Optional[Job]:
        values = await self._redis.hgetall(self._key("job", job_id))
        return _decode(values) if values else None

    @_answered
    async def update(self, job_id: str, expect: Collection[Status] = (), **fields: Any) -> bool:
        owner = await self._redis.hget(self._key("job", job_id), "owner")
        if owner is None:
            return False
        ttl_ms = 0
        if fields.get("status") in FINISHED and fields.get("expires_at") is not None:
            ttl_ms = max(1, int((fields["expires_at"] - time.time()) * 1000))
        args: list[Any] = [len(expect), *expect, ttl_ms]
        for name, value in fields.items():
            args += [name, _encode(name, value)]
        keys = [self._key("job", job_id), self._key("job", job_id, "pages"), self._key("active"), self._key("queue", owner)]
        return bool(await self._update(keys=keys, args=args))

    @_answered
    async def queued(self, owner: str) -> list[Job]:
        ids = await self._redis.zrange(self._key("queue", owner), 0, -1)
        jobs = [await self.get(job_id) for job_id in ids]
        return [job for job in jobs if job is not None and job.status == "queued"]

    @_answered
    async def active(self) -> list[Job]:
        ids = await self._redis.smembers(self._key("active"))
        jobs = [await self.get(job_id) for job_id in ids]
        found = [job for job in jobs if job is not None and job.status in ACTIVE]
        gone = [job_id for job_id, job in zip(ids, jobs) if job is None]
        if gone:
            await self._redis.srem(self._key("active"), *gone)
        return sorted(found, key=lambda job: job.created_at)

    @_answered
    async def put_page(self, job_id: str, position: int, page: dict[str, Any], *, new: bool = True) -> bool:
        text = json.dumps(page, ensure_ascii=False, separators=(",", ":"))
        keys = [self._key("job", job_id), self._key("job", job_id, "pages")]
        return bool(await self._put_page(keys=keys, args=[position, text, "1" if new else "0"]))

    @_answered
    async def has_page(self, job_id: str, position: int) -> bool:
        return bool(await self._redis.hexists(self._key("job", job_id, "pages"), str(position)))

    @_answered
    async def pages(self, job_id: str, start: int, stop: int) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        batch = 16
        for first in range(start, stop, batch):
            positions = list(range(first, min(stop, first + batch)))
            texts = await self._redis.hmget(self._key("job", job_id, "pages"), positions)
            for text in texts:
                if text is None:
                    return found
                found.append(json.loads(text))
        return found

    @_answered
    async def remove(self, job_id: str) -> None:
        job = await self.get(job_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key("job", job_id), self._key("job", job_id, "pages"))
            pipe.srem(self._key("active"), job_id)
            if job is not None:
                pipe.zrem(self._key("queue", job.owner), job_id)
            await pipe.execute()

    async def expired(self, now: float) -> list[str]:
        return []  # finished jobs' keys carry their own expiry

    @_answered
    async def renew(self, owner: str, incarnation: str, ttl_s: float) -> None:
        await self._redis.set(self._key("lease", owner), incarnation, px=max(1, int(ttl_s * 1000)))

    @_answered
    async def alive(self, owner: str) -> Optional[str]:
        return await self._redis.get(self._key("lease", owner))


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"

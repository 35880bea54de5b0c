"""The default job store: records in SQLite, finished pages as JSON files, under the data directory.

Several instances on one host may share the directory: SQLite's WAL and busy timeout order their
writes, and each job names the instance that owns it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any, Optional

from .model import ACTIVE, FINISHED, Job, Status
from .store import JobFiles, JobStoreError, JobStoreUnavailable, write_atomic

_COLUMNS = (
    "id", "log_id", "owner", "incarnation", "status", "created_at", "started_at", "finished_at", "expires_at",
    "pages_total", "pages_done", "error_code", "error_msg", "data_info",
)  # fmt: skip
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, log_id TEXT NOT NULL, owner TEXT NOT NULL, incarnation TEXT NOT NULL, status TEXT NOT NULL,
  created_at REAL NOT NULL, started_at REAL, finished_at REAL, expires_at REAL, pages_total INTEGER,
  pages_done INTEGER NOT NULL DEFAULT 0, error_code INTEGER, error_msg TEXT, data_info TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, owner, created_at);
CREATE TABLE IF NOT EXISTS leases (owner TEXT PRIMARY KEY, incarnation TEXT NOT NULL, until REAL NOT NULL);
"""
BUSY_TIMEOUT_S = 30.0


def _row_to_job(row: tuple[Any, ...]) -> Job:
    values = dict(zip(_COLUMNS, row))
    values["data_info"] = json.loads(values["data_info"]) if values["data_info"] else None
    return Job(**values)


def _column_value(name: str, value: Any) -> Any:
    return json.dumps(value) if name == "data_info" and value is not None else value


class SqliteJobStore:
    """Job records in one SQLite file; pages beside the jobs' bodies, one JSON file each."""

    def __init__(self, path: Path, files: JobFiles) -> None:
        self.path = path
        self.files = files
        self._db: Optional[sqlite3.Connection] = None
        self._lock = threading.Lock()

    async def exists(self) -> bool:
        return self.path.exists()

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        self.files.prepare()
        try:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise JobStoreError(f"cannot open the job database {self.path}: {exc}; check --data-dir") from None
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.to_thread(db.close)

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[list[tuple[Any, ...]], int]:
        """Rows and the count of rows changed, for one statement."""
        if self._db is None:
            raise JobStoreError("the job store is not open")
        with self._lock:
            try:
                cursor = self._db.execute(sql, params)
                return cursor.fetchall(), cursor.rowcount
            except sqlite3.OperationalError as exc:  # locked past the busy timeout, or the disk failed
                raise JobStoreUnavailable(str(self.path), exc) from None

    async def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return (await asyncio.to_thread(self._run, sql, params))[0]

    async def add(self, job: Job) -> None:
        fields = job.fields()
        placeholders = ", ".join("?" for _ in _COLUMNS)
        await self._query(
            f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({placeholders})",
            tuple(_column_value(name, fields[name]) for name in _COLUMNS),
        )

    async def get(self, job_id: str) -> Optional[Job]:
        rows = await self._query(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id = ?", (job_id,))
        return _row_to_job(rows[0]) if rows else None

    async def update(self, job_id: str, expect: Collection[Status] = (), **fields: Any) -> bool:
        unknown = set(fields) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"unknown job fields {sorted(unknown)}")
        assignments = ", ".join(f"{name} = ?" for name in fields)
        params = [_column_value(name, value) for name, value in fields.items()]
        sql = f"UPDATE jobs SET {assignments} WHERE id = ?"
        params.append(job_id)
        if expect:
            sql += f" AND status IN ({', '.join('?' for _ in expect)})"
            params.extend(expect)

        _, changed = await asyncio.to_thread(self._run, sql, tuple(params))
        return changed > 0

    async def queued(self, owner: str) -> list[Job]:
        rows = await self._query(
            f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE status = 'queued' AND owner = ? ORDER BY created_at",
            (owner,),
        )
        return [_row_to_job(row) for row in rows]

    async def active(self) -> list[Job]:
        rows = await self._query(
            f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE status IN (?, ?) ORDER BY created_at", ACTIVE
        )
        return [_row_to_job(row) for row in rows]

    def _page_path(self, job_id: str, position: int) -> Path:
        return self.files.job_dir(job_id) / "pages" / f"{position:06d}.json"

    async def put_page(self, job_id: str, position: int, page: dict[str, Any], *, new: bool = True) -> bool:
        def write() -> bool:
            path = self._page_path(job_id, position)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(path, json.dumps(page, ensure_ascii=False, separators=(",", ":")).encode())
            if not new:
                return True
            _, changed = self._run(
                "UPDATE jobs SET pages_done = pages_done + 1 WHERE id = ? AND status = 'running'", (job_id,)
            )
            return changed > 0

        return await asyncio.to_thread(write)

    async def has_page(self, job_id: str, position: int) -> bool:
        return await asyncio.to_thread(self._page_path(job_id, position).exists)

    async def pages(self, job_id: str, start: int, stop: int) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            found = []
            for position in range(start, stop):
                try:
                    found.append(json.loads(self._page_path(job_id, position).read_bytes()))
                except FileNotFoundError:
                    break
            return found

        return await asyncio.to_thread(read)

    async def remove(self, job_id: str) -> None:
        await self._query("DELETE FROM jobs WHERE id = ?", (job_id,))
        await asyncio.to_thread(self.files.remove, job_id)

    async def expired(self, now: float) -> list[str]:
        rows = await self._query(
            "SELECT id FROM jobs WHERE status IN (?, ?, ?) AND expires_at <= ?", (*FINISHED, now)
        )
        return [row[0] for row in rows]

    async def renew(self, owner: str, incarnation: str, ttl_s: float) -> None:
        await self._query(
            "INSERT INTO leases (owner, incarnation, until) VALUES (?, ?, ?) "
            "ON CONFLICT(owner) DO UPDATE SET incarnation = excluded.incarnation, until = excluded.until",
            (owner, incarnation, time.time() + ttl_s),
        )

    async def alive(self, owner: str) -> Optional[str]:
        rows = await self._query("SELECT incarnation FROM leases WHERE owner = ? AND until > ?", (owner, time.time()))
        return rows[0][0] if rows else None

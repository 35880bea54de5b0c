"""One start at a time per GPU: instances starting together miscount each other's memory in vLLM.

vLLM measures free memory when it starts and again after profiling; a neighbour loading its weights in
between is counted as this instance's own use (vLLM issues 10533 and 55827). So each instance holds a
file lock per GPU UUID from its budget check until vLLM answers, and a second instance waits its turn,
then budgets again from a fresh NVML read.

The locks are `flock` locks on files in one directory (VLLM_PADDLE_OCR_LOCK_DIR, else a directory in the
system temp dir); the kernel drops them when the holder exits, so a crash never leaves a stale lock.
Instances in different containers share the lock only if that directory is a shared mount.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, TypeVar

from vllm_paddle_ocr.plugin.errors import VllmPaddleOcrError

LOCK_DIR_ENV = "VLLM_PADDLE_OCR_LOCK_DIR"
POLL_INTERVAL_S = 0.2
# How often the wait is reported while it lasts.
REPORT_EVERY_S = 30.0

logger = logging.getLogger(__name__)
T = TypeVar("T")


class GpuLockError(VllmPaddleOcrError):
    """The start lock cannot be taken; the message says what to do."""


class GpuLockTimeout(GpuLockError, TimeoutError):
    """Another instance kept starting on the same GPU for longer than the timeout."""


@dataclass
class HeldLocks:
    """The GPU locks this process holds, and how long it waited for them."""

    uuids: list[str]
    directory: Path
    waited_s: float = 0.0
    _files: list[int] = field(default_factory=list, repr=False)


def default_lock_dir(env: Mapping[str, str] | None = None) -> Path:
    """VLLM_PADDLE_OCR_LOCK_DIR, else <system temp>/vllm_paddle_ocr-gpu-locks."""
    configured = (os.environ if env is None else env).get(LOCK_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / "vllm_paddle_ocr-gpu-locks"


def _prepare_dir(directory: Path) -> None:
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    if created:
        # Every user's instances share the directory (like /tmp): writable by all, sticky.
        with contextlib.suppress(OSError):
            directory.chmod(0o1777)


def _usable(step: Callable[[Path], T], path: Path) -> T:
    """Run one file step of taking the lock; an OSError becomes an error that says what to do."""
    try:
        return step(path)
    except OSError as exc:
        raise GpuLockError(
            f"cannot use the GPU start lock {path}: {exc.strerror or exc}; set {LOCK_DIR_ENV} to a directory "
            "every vllm_paddle_ocr instance on this machine can write"
        ) from None


def _lock_path(directory: Path, uuid: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", uuid)
    return directory / f"{safe}.lock"


def _open(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666)  # other users' instances must be able to lock it too
    return fd


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _holder(path: Path) -> str:
    """Who wrote the lock file last (the current holder, while it is held)."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return "another instance"
    return text or "another instance"


def _record(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)


@contextlib.contextmanager
def gpu_start_lock(
    uuids: list[str | None],
    *,
    timeout_s: float,
    lock_dir: Path | None = None,
    clock=time.monotonic,
    sleep=time.sleep,
) -> Iterator[HeldLocks]:
    """Hold the start lock of every GPU in `uuids` (in sorted order, so two instances never deadlock)."""
    directory = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    _usable(_prepare_dir, directory)
    # A planned card (--gpu-total) has no UUID and nothing to lock.
    held = HeldLocks(uuids=sorted({uuid for uuid in uuids if uuid}), directory=directory)
    start = clock()
    try:
        for uuid in held.uuids:
            path = _lock_path(directory, uuid)
            fd = _usable(_open, path)
            held._files.append(fd)
            reported_at: float | None = None
            while not _try_lock(fd):
                now = clock()
                waited = now - start
                if waited >= timeout_s:
                    raise GpuLockTimeout(
                        f"another vllm_paddle_ocr instance ({_holder(path)}) has been starting on GPU {uuid} "
                        f"for more than {timeout_s:.0f} s; wait for it to finish starting (or stop it), "
                        f"or raise --gpu-lock-timeout. Lock file: {path}"
                    )
                if reported_at is None or now - reported_at >= REPORT_EVERY_S:
                    logger.warning(
                        "waiting for another vllm_paddle_ocr instance (%s) to finish starting on GPU %s "
                        "(waited %.0f s of %.0f s; lock %s)",
                        _holder(path), uuid, waited, timeout_s, path,
                    )
                    reported_at = now
                sleep(min(POLL_INTERVAL_S, max(timeout_s - waited, 0.0)))
            _record(fd)
        held.waited_s = clock() - start
        yield held
    finally:
        for fd in reversed(held._files):
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                os.close(fd)
        held._files.clear()

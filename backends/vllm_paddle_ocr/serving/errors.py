"""Turning the runtime's expected failures into one clear line and an exit code, not a traceback."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator


def _expected_errors() -> tuple[type[BaseException], ...]:
    from vllm_paddle_ocr.plugin.manager import PluginError

    from ..planning.compatibility import IncompatibleEngine
    from .gpu_lock import GpuLockError
    from ..planning.model_repo import ModelRepoError
    from .argv import ServeArgsError
    from ..planning.vram import VramError

    return (PluginError, IncompatibleEngine, GpuLockError, ModelRepoError, ServeArgsError, VramError)


@contextlib.contextmanager
def user_facing_errors(command: str) -> Iterator[None]:
    """Print an expected error as `vllm_paddle_ocr <command>: error: ...` and exit 1."""
    expected = _expected_errors()
    try:
        yield
    except expected as exc:
        sys.stderr.write(f"vllm_paddle_ocr {command}: error: {exc}\n")
        raise SystemExit(1) from None

"""Model ids (`org/name` on Hugging Face, `modelscope:org/name`) to a local snapshot: the cache first, a download only when allowed.

A control plane passes a directory and never reaches this; a person typing `serve PaddlePaddle/PaddleOCR-VL`
does. One switch stops downloads from either hub: Hugging Face's own `HF_HUB_OFFLINE`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from vllm_paddle_ocr.plugin.errors import VllmPaddleOcrError

MODELSCOPE_PREFIX = "modelscope:"
OFFLINE_ENV = "HF_HUB_OFFLINE"
_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelIdError(VllmPaddleOcrError):
    """A model id names no snapshot in the cache and cannot be downloaded; the message names the cache."""


def is_model_id(text: str) -> bool:
    """Whether `text` reads as `org/name` (or `modelscope:org/name`) rather than a path."""
    return _MODEL_ID.match(text.removeprefix(MODELSCOPE_PREFIX)) is not None


def local_model_path(model: str | Path) -> Path:
    """The directory to serve: `model` itself when it exists (or is no model id), else the hub snapshot it names."""
    text = str(model)
    if text.startswith(MODELSCOPE_PREFIX) and is_model_id(text):
        return modelscope_snapshot(text.removeprefix(MODELSCOPE_PREFIX))
    path = Path(text).expanduser()
    if path.exists() or not is_model_id(text):
        return path
    return huggingface_snapshot(text)


def downloads_off() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it (1/ON/YES/TRUE), read now rather than at import."""
    return os.environ.get(OFFLINE_ENV, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def huggingface_snapshot(repo_id: str) -> Path:
    """The cached snapshot of `repo_id`, or a fresh download of it (with huggingface_hub's progress bars)."""
    from huggingface_hub import constants, errors, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    # Releases before the check for partial snapshots return a partial one as found.
    incomplete = getattr(errors, "IncompleteSnapshotError", ())  # () catches nothing
    cache = constants.HF_HUB_CACHE
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except incomplete:
        cached = "only partly in"
    except LocalEntryNotFoundError:
        cached = "neither a directory nor in"
    if downloads_off():
        raise ModelIdError(
            f"{repo_id} is {cached} the Hugging Face cache {cache} and downloads are off "
            f"({OFFLINE_ENV}={os.environ.get(OFFLINE_ENV)}): set {OFFLINE_ENV}=0 to download it there, "
            "or pass the model's directory"
        )
    try:
        return Path(snapshot_download(repo_id))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelIdError(
            f"{repo_id} is no directory here and cannot be downloaded into the Hugging Face cache {cache}: {reason} "
            "(HF_ENDPOINT names a mirror; or place the model in that cache, or pass its directory)"
        ) from None


def modelscope_snapshot(model_id: str) -> Path:
    """The cached ModelScope snapshot of `model_id`, or a fresh download, through ModelScope's own client."""
    try:
        from modelscope.hub.snapshot_download import snapshot_download
        from modelscope.hub.utils.utils import get_cache_dir
    except ImportError:
        raise ModelIdError(
            f"modelscope:{model_id} needs ModelScope's client: pip install modelscope (or pass the model's directory)"
        ) from None
    cache = get_cache_dir()
    try:
        return Path(snapshot_download(model_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - ModelScope's error classes differ between its releases
        pass
    if downloads_off():
        raise ModelIdError(
            f"modelscope:{model_id} is not in the ModelScope cache {cache} (MODELSCOPE_CACHE) and downloads are off "
            f"({OFFLINE_ENV}={os.environ.get(OFFLINE_ENV)}): set {OFFLINE_ENV}=0 to download it there, "
            "or pass the model's directory"
        )
    try:
        return Path(snapshot_download(model_id))
    except Exception as exc:  # noqa: BLE001 - as above
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelIdError(
            f"cannot download modelscope:{model_id} into the ModelScope cache {cache} (MODELSCOPE_CACHE): {reason}"
        ) from None

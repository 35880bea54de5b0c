"""Which layout model a directory holds and which engine its files call for (files and inference.yml only)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from ...recipe import LAYOUT_MODELS
from .base import LayoutModelError

Engine = Literal["paddle_static", "paddle_dynamic", "onnxruntime"]
CONFIG_FILE = "inference.yml"

# What each engine needs besides inference.yml, in the order an engine is chosen when several fit:
# the official download format first, as paddlex itself prefers it.
ENGINE_FILES: tuple[tuple[Engine, tuple[str, ...]], ...] = (
    ("paddle_static", ("inference.json", "inference.pdiparams")),
    ("paddle_static", ("inference.pdmodel", "inference.pdiparams")),
    ("paddle_dynamic", ("model.safetensors", "config.json")),
    ("onnxruntime", ("inference.onnx",)),
)
_EXPECTED = (
    "inference.json + inference.pdiparams (paddle_static, the official download), "
    "model.safetensors + config.json (paddle_dynamic) or inference.onnx (onnxruntime)"
)



@dataclass(frozen=True)
class LayoutModelSpec:
    """Which layout model a directory holds and how paddlex should run it."""

    model_dir: Path
    model_name: str
    engine: Engine


def choose_engine(files: Iterable[str], model_dir: Union[str, Path] = "the layout model directory") -> Engine:
    """The paddlex engine for the model files present (names only); LayoutModelError names what is missing."""
    present = set(files)
    if CONFIG_FILE not in present:
        raise LayoutModelError(
            f"{model_dir} has no {CONFIG_FILE}: a PaddleX layout model directory needs it, plus the weights as "
            f"{_EXPECTED}. Found: {_listing(present)}"
        )
    for engine, needed in ENGINE_FILES:
        if all(name in present for name in needed):
            return engine
    partial = [
        f"{engine} needs {' + '.join(needed)} but {' + '.join(n for n in needed if n not in present)} is missing"
        for engine, needed in ENGINE_FILES
        if any(name in present for name in needed)
    ]
    detail = "; ".join(dict.fromkeys(partial)) if partial else f"found no weights: {_listing(present)}"
    raise LayoutModelError(f"{model_dir} has no complete layout model weights ({detail}). Expected {_EXPECTED}.")


def model_name_for(config: Optional[Mapping[str, Any]], dir_name: str, requested: Optional[str] = None) -> str:
    """The layout model's PaddleX name: the one asked for, else inference.yml's Global.model_name, else the dir name."""
    found = None
    if isinstance(config, Mapping):
        glob = config.get("Global")
        if isinstance(glob, Mapping) and isinstance(glob.get("model_name"), str):
            found = glob["model_name"]
    if requested is not None:
        if found is not None and found != requested:
            raise LayoutModelError(
                f"the layout model was named {requested!r} but its {CONFIG_FILE} says {found!r}; "
                f"drop the name to use the directory's own or point at a {requested} directory"
            )
        name = requested
    else:
        name = found or dir_name
    if name not in LAYOUT_MODELS:
        raise LayoutModelError(
            f"unsupported layout model {name!r}: PaddleOCR-VL uses {' or '.join(LAYOUT_MODELS)}; set "
            f"Global.model_name in {CONFIG_FILE} or name the directory after the model"
        )
    return name


def inspect_model_dir(model_dir: Union[str, Path], *, model_name: Optional[str] = None) -> LayoutModelSpec:
    """Read a layout model directory's files and inference.yml to decide the model and the engine."""
    path = Path(model_dir)
    if not path.is_dir():
        raise LayoutModelError(f"layout model directory {path} does not exist (or is not a directory)")
    files = [p.name for p in path.iterdir() if p.is_file()]
    engine = choose_engine(files, path)
    try:
        config = yaml.safe_load((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise LayoutModelError(f"cannot read {path / CONFIG_FILE}: {exc}") from exc
    return LayoutModelSpec(path, model_name_for(config, path.name, model_name), engine)


def _listing(names: Iterable[str]) -> str:
    shown = sorted(names)
    return ", ".join(shown) if shown else "nothing"

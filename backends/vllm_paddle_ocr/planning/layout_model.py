"""The layout model: which one a directory holds, in which formats, and which engine runs it on which device.

Decided at plan time, from file names, inference.yml / config.json and which packages are installed
(found, never imported), so `plan` shows the choice and a directory no engine can load fails before
vLLM starts. Two engines:

- ``torch``: transformers' PP-DocLayoutV2/V3 classes in the torch vLLM brings. It reads
  ``model.safetensors`` + ``config.json`` directly; paddle's static format (``inference.json`` or
  ``inference.pdmodel``, with ``inference.pdiparams``) is converted once, without paddle, into the
  data directory.
- ``paddle``: paddlex, in whichever of its engines the files call for.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from vllm_paddle_ocr.plugin.errors import VllmPaddleOcrError

from ..recipe import LAYOUT_MODELS

PaddleEngine = Literal["paddle_static", "paddle_dynamic", "onnxruntime"]
TorchWeights = Literal["safetensors", "static"]
Engine = Literal["torch", "paddle"]
ENGINE_CHOICES: tuple[str, ...] = ("auto", "torch", "paddle")
CONFIG_FILE = "inference.yml"
HF_CONFIG_FILE = "config.json"
# transformers' model_type for each model.
MODEL_TYPES: dict[str, str] = {"pp_doclayout_v2": "PP-DocLayoutV2", "pp_doclayout_v3": "PP-DocLayoutV3"}
# Pages detected together on a GPU (one forward pass), sized so the layout model's activations stay
# near 0.6 GiB beside vLLM (PP-DocLayoutV3 computes a mask per query in every decoder layer: four times
# V2's memory per page); and on a CPU, where a larger batch only adds waiting.
GPU_BATCH_SIZE: dict[str, int] = {"PP-DocLayoutV2": 4, "PP-DocLayoutV3": 2}
CPU_BATCH_SIZE = 4

# What each paddlex engine needs besides inference.yml, in the order an engine is chosen when several fit:
# the official download format first, as paddlex itself prefers it.
ENGINE_FILES: tuple[tuple[PaddleEngine, tuple[str, ...]], ...] = (
    ("paddle_static", ("inference.json", "inference.pdiparams")),
    ("paddle_static", ("inference.pdmodel", "inference.pdiparams")),
    ("paddle_dynamic", ("model.safetensors", "config.json")),
    ("onnxruntime", ("inference.onnx",)),
)
STATIC_PROGRAMS: tuple[str, ...] = ("inference.json", "inference.pdmodel")
STATIC_PARAMS = "inference.pdiparams"
_EXPECTED = (
    "inference.json + inference.pdiparams (paddle_static, the official download), "
    "model.safetensors + config.json (paddle_dynamic) or inference.onnx (onnxruntime)"
)
_TORCH_FORMATS = "model.safetensors + config.json, or paddle's static inference.json/inference.pdmodel + inference.pdiparams"
TORCH_INSTALL = "the torch engine needs torch, transformers >= 5.3 (PP-DocLayoutV2/V3) and opencv (vLLM brings all three)"
PADDLE_INSTALL = "install the layout extra for the paddle engine: pip install 'vllm-paddle-ocr[layout]' (paddlepaddle and paddlex[ocr-core])"


class LayoutModelError(VllmPaddleOcrError):
    """A layout model directory no engine can load; the message says what to add or change."""


@dataclass(frozen=True)
class LayoutModelSpec:
    """Which layout model a directory holds and in which formats.

    ``engine`` is the paddlex engine its files call for (None: paddlex cannot load it); ``torch_weights``
    how the torch engine gets its weights (None: it cannot); ``static_program`` the static format's
    program file when there is one.
    """

    model_dir: Path
    model_name: str
    engine: Optional[PaddleEngine]
    torch_weights: Optional[TorchWeights] = None
    static_program: Optional[str] = None


@dataclass(frozen=True)
class LayoutChoice:
    """How the instance runs its layout model: engine, device and pages per forward pass, and why."""

    spec: LayoutModelSpec
    engine: Engine
    device: str  # "cpu" or "cuda[:N]" (the paddle engine is told gpu[:N])
    batch_size: int
    reason: str

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")


# ---------------------------------------------------------------- the directory


def choose_engine(files: Iterable[str], model_dir: Union[str, Path] = "the layout model directory") -> PaddleEngine:
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


def torch_weights_for(files: Iterable[str], hf_config: Optional[Mapping[str, Any]]) -> Optional[TorchWeights]:
    """How the torch engine gets weights from these files: safetensors as they are, or the static format converted."""
    present = set(files)
    if "model.safetensors" in present and isinstance(hf_config, Mapping) and hf_config.get("model_type") in MODEL_TYPES:
        return "safetensors"
    if STATIC_PARAMS in present and any(name in present for name in STATIC_PROGRAMS):
        return "static"
    return None


def model_name_for(
    config: Optional[Mapping[str, Any]],
    dir_name: str,
    requested: Optional[str] = None,
    hf_config: Optional[Mapping[str, Any]] = None,
) -> str:
    """The layout model's PaddleX name: the one asked for, else inference.yml's, else config.json's type, else the dir name."""
    found = None
    if isinstance(config, Mapping):
        glob = config.get("Global")
        if isinstance(glob, Mapping) and isinstance(glob.get("model_name"), str):
            found = glob["model_name"]
    if found is None and isinstance(hf_config, Mapping):
        found = MODEL_TYPES.get(str(hf_config.get("model_type")))
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


def read_hf_config(model_dir: Path) -> Optional[dict[str, Any]]:
    """config.json as a dict, None when absent or not JSON (paddlex's own config files are not)."""
    try:
        data = json.loads((Path(model_dir) / HF_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def is_layout_model_dir(path: Path) -> bool:
    """Whether a directory looks like a layout model: PaddleX's inference.yml, or a transformers PP-DocLayout config."""
    if (path / CONFIG_FILE).is_file():
        return True
    config = read_hf_config(path) if (path / HF_CONFIG_FILE).is_file() else None
    return config is not None and config.get("model_type") in MODEL_TYPES


def inspect_model_dir(model_dir: Union[str, Path], *, model_name: Optional[str] = None) -> LayoutModelSpec:
    """Read a layout model directory's files, inference.yml and config.json to decide the model and its formats."""
    path = Path(model_dir)
    if not path.is_dir():
        raise LayoutModelError(f"layout model directory {path} does not exist (or is not a directory)")
    files = [p.name for p in path.iterdir() if p.is_file()]
    hf_config = read_hf_config(path) if HF_CONFIG_FILE in files else None
    torch_weights = torch_weights_for(files, hf_config)
    try:
        engine: Optional[PaddleEngine] = choose_engine(files, path)
    except LayoutModelError:
        if torch_weights is None or (CONFIG_FILE not in files and hf_config is None):
            raise
        engine = None
    config = None
    if CONFIG_FILE in files:
        try:
            config = yaml.safe_load((path / CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise LayoutModelError(f"cannot read {path / CONFIG_FILE}: {exc}") from exc
    name = model_name_for(config, path.name, model_name, hf_config)
    program = next((name for name in STATIC_PROGRAMS if name in files), None) if torch_weights == "static" else None
    return LayoutModelSpec(path, name, engine, torch_weights, program)


# ---------------------------------------------------------------- engines and devices


def _package_dir(name: str) -> Optional[Path]:
    """Where a top-level package is installed, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def torch_missing(model_name: str) -> Optional[str]:
    """What the torch engine lacks in this Python for a model (None: nothing)."""
    missing = [name for name in ("torch", "cv2") if importlib.util.find_spec(name) is None]
    transformers = _package_dir("transformers")
    model_dir = model_name.lower().replace("-", "_").replace("pp_doclayoutv", "pp_doclayout_v")
    if transformers is None:
        missing.append("transformers")
    elif not (transformers / "models" / model_dir).is_dir():
        missing.append(f"a transformers release with {model_name} (5.3 or newer)")
    if model_name == "PP-DocLayoutV3" and importlib.util.find_spec("shapely") is None:
        missing.append("shapely (PP-DocLayoutV3's polygons)")
    return ", ".join(missing) if missing else None


def paddle_missing() -> Optional[str]:
    """What the paddle engine lacks in this Python (None: nothing)."""
    missing = [name for name in ("paddle", "paddlex") if importlib.util.find_spec(name) is None]
    return ", ".join(missing) if missing else None


def normalise_device(device: str) -> str:
    """A device as torch names it: cpu, cuda or cuda:N (paddle's gpu / gpu:N accepted)."""
    text = device.strip().lower()
    if text == "cpu":
        return "cpu"
    head, _, index = text.partition(":")
    if head in ("cuda", "gpu") and (not index or index.isdigit()):
        return "cuda" if not index else f"cuda:{int(index)}"
    raise LayoutModelError(f"--layout-device {device!r} is not a device: use cpu, cuda or cuda:N")


def paddle_device(device: str) -> str:
    """A torch device name as paddle spells it (cuda:N -> gpu:N)."""
    return device.replace("cuda", "gpu", 1)


def choose_layout(
    spec: LayoutModelSpec,
    *,
    engine: str = "auto",
    device: Optional[str] = None,
    batch_size: Optional[int] = None,
    gpu_present: bool,
    torch_lacks: Optional[str] = None,
    paddle_lacks: Optional[str] = None,
) -> LayoutChoice:
    """The engine, device and batch size for a layout model, or a LayoutModelError saying what to install or convert.

    ``auto``: torch when it can load the directory (safetensors, or the static format it converts),
    else paddle when paddlex is installed and can. The device defaults to the instance's GPU for the
    torch engine when there is one, and to the CPU for paddle (whose layout extra is the CPU build).
    """
    if engine not in ENGINE_CHOICES:
        raise LayoutModelError(f"--layout-engine {engine!r}: use one of {', '.join(ENGINE_CHOICES)}")
    torch_ok = spec.torch_weights is not None and torch_lacks is None
    paddle_ok = spec.engine is not None and paddle_lacks is None
    if engine == "torch" and not torch_ok:
        raise LayoutModelError(_why_not_torch(spec, torch_lacks))
    if engine == "paddle" and not paddle_ok:
        raise LayoutModelError(_why_not_paddle(spec, paddle_lacks))
    if engine == "auto" and not (torch_ok or paddle_ok):
        raise LayoutModelError(
            f"no layout engine can load {spec.model_dir}: {_why_not_torch(spec, torch_lacks)}; and "
            f"{_why_not_paddle(spec, paddle_lacks)}"
        )
    chosen: Engine = "torch" if engine == "torch" or (engine == "auto" and torch_ok) else "paddle"
    if engine == "auto":
        reason = (
            f"auto: transformers loads {spec.model_name}"
            + (" after a one-time conversion of paddle's static format" if spec.torch_weights == "static" else "")
            if chosen == "torch"
            else f"auto: paddlex ({spec.engine}); torch cannot: {_why_not_torch(spec, torch_lacks)}"
        )
    else:
        reason = f"--layout-engine {engine}"
    if device is not None:
        resolved = normalise_device(device)
    else:
        resolved = "cuda" if chosen == "torch" and gpu_present else "cpu"
    on_gpu = resolved.startswith("cuda")
    size = batch_size or (GPU_BATCH_SIZE.get(spec.model_name, 2) if on_gpu else CPU_BATCH_SIZE)
    return LayoutChoice(spec, chosen, resolved, size, reason)


def _why_not_torch(spec: LayoutModelSpec, lacks: Optional[str]) -> str:
    if spec.torch_weights is None:
        return f"the torch engine needs {_TORCH_FORMATS} in {spec.model_dir}"
    return f"{TORCH_INSTALL}; missing: {lacks}"


def _why_not_paddle(spec: LayoutModelSpec, lacks: Optional[str]) -> str:
    if spec.engine is None:
        return f"paddlex needs {CONFIG_FILE} plus {_EXPECTED} in {spec.model_dir}"
    return f"{PADDLE_INSTALL}; missing: {lacks}"


def plan_layout(
    layout_dir: Optional[Path],
    model_name: Optional[str],
    *,
    engine: str = "auto",
    device: Optional[str] = None,
    batch_size: Optional[int] = None,
    gpu_present: bool,
) -> Optional[LayoutChoice]:
    """The layout choice for a launch (None without a layout model), from the directory and what is installed."""
    if layout_dir is None:
        return None
    spec = inspect_model_dir(layout_dir, model_name=model_name)
    return choose_layout(
        spec,
        engine=engine,
        device=device,
        batch_size=batch_size,
        gpu_present=gpu_present,
        torch_lacks=torch_missing(spec.model_name) if spec.torch_weights is not None else None,
        paddle_lacks=paddle_missing() if spec.engine is not None else None,
    )


def describe_choice(choice: Optional[LayoutChoice]) -> str:
    """One line for `plan`: model, engine, device, batch and why."""
    if choice is None:
        return "none"
    return (
        f"{choice.spec.model_dir} ({choice.spec.model_name}, {choice.engine} engine on {choice.device}, "
        f"batches of {choice.batch_size}; {choice.reason})"
    )


def _listing(names: Iterable[str]) -> str:
    shown = sorted(names)
    return ", ".join(shown) if shown else "nothing"

"""Paddle's static PP-DocLayoutV2/V3 as safetensors with transformers' key names: converted once, without paddle.

The static program names its tensors by how they were made (``conv2d_12.w_0``, ``eager_tmp_3``), not
by the module they belong to, so names cannot be mapped. The order of use can: the program lists its
ops in the order the model computes, and transformers' class computes the same network in the same
order. The program's parameters, in the order its ops first read them, are paired one by one with the
model's weights in the order its forward pass first reads them (recorded once on a blank model), each
pair checked for shape. Where the two read a group of same-shaped vectors in different orders the
group is put in one order on both sides: a batch norm's mean, variance, scale and bias. Linear weights,
stored [in, out] by paddle, are transposed.

Any difference in count or shape stops the conversion with a message; nothing is guessed. The result
is written under the data directory, keyed by a hash of the source files, so it happens once per model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml

from ...planning.layout_model import CONFIG_FILE, MODEL_TYPES, STATIC_PARAMS, LayoutModelError, LayoutModelSpec, read_hf_config
from ...recipe import LAYOUT_INPUT_SIZE, PP_DOCLAYOUT_V2_CLASS_ORDER, PP_DOCLAYOUT_V2_CLASS_THRESHOLDS, PP_DOCLAYOUT_V2_LABELS
from .static_format import StaticOp, StaticProgram, read_params, read_program

log = logging.getLogger("vllm_paddle_ocr.layout")

# Bump when the conversion changes what it writes, so caches made by an older one are not reused.
CONVERSION_VERSION = 1
CACHE_SUBDIR = "layout-models"
WEIGHTS_FILE = "model.safetensors"
SOURCE_FILE = "source.json"
# Ops that read a tensor's shape, not its values: not a use.
_SHAPE_OPS = {"shape", "shape64"}
# torch functions that read a tensor's metadata, not its values: not a use.
_METADATA = {"__get__", "size", "dim", "numel", "data_ptr", "stride", "is_contiguous", "element_size", "__len__"}
_BATCH_NORM_ORDER = ("running_mean", "running_var", "weight", "bias")

# Per model: transformers' config class, model class, and the backbone stages its encoder reads.
_CLASSES = {
    "PP-DocLayoutV2": ("PPDocLayoutV2Config", "PPDocLayoutV2ForObjectDetection", (2, 3, 4)),
    "PP-DocLayoutV3": ("PPDocLayoutV3Config", "PPDocLayoutV3ForObjectDetection", (1, 2, 3, 4)),
}


def transformers_classes(model_name: str) -> tuple[Any, Any]:
    """transformers' (config class, model class) for a layout model."""
    import transformers

    config_name, model_name_, _ = _CLASSES[model_name]
    return getattr(transformers, config_name), getattr(transformers, model_name_)


def complete_config(config: dict[str, Any], model_name: str, labels: Optional[list[str]] = None) -> dict[str, Any]:
    """A config.json transformers builds the right model from: the keys PaddleX's copies leave out filled in.

    The encoder reads the backbone stages ``out_features`` names (without them transformers builds a
    one-level encoder); PP-DocLayoutV2's reading order needs its class thresholds and class order.
    """
    out = dict(config)
    model_type = next(key for key, name in MODEL_TYPES.items() if name == model_name)
    out.setdefault("model_type", model_type)
    out.setdefault("architectures", [_CLASSES[model_name][1]])
    stages = _CLASSES[model_name][2]
    backbone = dict(out.get("backbone_config") or {"model_type": "hgnet_v2"})
    if not backbone.get("out_features"):
        backbone["out_features"] = [f"stage{i}" for i in stages]
        backbone["out_indices"] = list(stages)
    out["backbone_config"] = backbone
    if model_name == "PP-DocLayoutV2":
        out.setdefault("class_thresholds", list(PP_DOCLAYOUT_V2_CLASS_THRESHOLDS))
        out.setdefault("class_order", list(PP_DOCLAYOUT_V2_CLASS_ORDER))
    names = labels or list(PP_DOCLAYOUT_V2_LABELS)
    out.setdefault("id2label", {str(i): label for i, label in enumerate(names)})
    return out


def source_config(spec: LayoutModelSpec) -> dict[str, Any]:
    """The transformers config for a static directory: its own config.json when transformers', else the published shapes."""
    found = read_hf_config(spec.model_dir)
    labels = None
    try:
        meta = yaml.safe_load((spec.model_dir / CONFIG_FILE).read_text(encoding="utf-8"))
        if isinstance(meta, dict) and isinstance(meta.get("label_list"), list):
            labels = [str(label) for label in meta["label_list"]]
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        pass
    base = found if found is not None and found.get("model_type") in MODEL_TYPES else {}
    return complete_config(base, spec.model_name, labels)


# ---------------------------------------------------------------- the pairing


@dataclass(frozen=True)
class TorchUse:
    """A tensor of the transformers model, in the order its forward pass first reads it."""

    key: str  # state_dict key (or buffer name for a buffer outside the state dict)
    shape: tuple[int, ...]
    linear_weight: bool  # read as F.linear's weight: paddle stores it transposed
    optional: bool  # a buffer outside the state dict: paddle may or may not keep it


def torch_use_order(model: Any, model_name: str) -> list[TorchUse]:
    """The model's tensors in the order inference first reads them for a result (batch norms grouped).

    One pass of the engine's own forward (network and detection head) on a blank page, every torch call
    recorded with the weights it reads and the calls it depends on. Calls whose results never reach the
    detections are not counted, as paddle's exporter drops them from the program (a V3 encoder's box
    head whose boxes the masks replace, say).
    """
    import torch
    from torch.overrides import TorchFunctionMode

    from .heads import network_outputs, top_detections

    state_keys = set(model.state_dict().keys())
    by_id: dict[int, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for key, tensor in [*model.named_parameters(), *model.named_buffers()]:
        by_id.setdefault(id(tensor), key)
        shapes[key] = tuple(tensor.shape)
    linear = torch.nn.functional.linear
    calls: list[tuple[list[tuple[str, bool]], set[int]]] = []  # per call: weights read, calls depended on

    def tensors(value: Any) -> list[Any]:
        if isinstance(value, torch.Tensor):
            return [value]
        if isinstance(value, (list, tuple)):
            return [item for inner in value for item in tensors(inner)]
        return []

    class Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            result = func(*args, **kwargs)
            if getattr(func, "__name__", "") in _METADATA:
                return result
            reads: list[tuple[str, bool]] = []
            depends: set[int] = set()
            for position, value in enumerate([*args, *kwargs.values()]):
                for item in tensors(value):
                    key = by_id.get(id(item))
                    if key is not None:
                        reads.append((key, func is linear and (position == 1 or item is kwargs.get("weight"))))
                    elif hasattr(item, "_layout_call"):
                        depends.add(item._layout_call)
            calls.append((reads, depends))
            for item in tensors(result):
                if id(item) not in by_id:
                    item._layout_call = len(calls) - 1
            return result

    height, width = LAYOUT_INPUT_SIZE
    with torch.no_grad(), Recorder():
        outputs = top_detections(*network_outputs(model, model_name, torch.zeros(1, 3, height, width)), [(width, height)])
    live: set[int] = set()
    pending = [item._layout_call for item in tensors(list(outputs)) if hasattr(item, "_layout_call")]
    while pending:
        call = pending.pop()
        if call not in live:
            live.add(call)
            pending.extend(calls[call][1])

    uses: list[TorchUse] = []
    emitted: set[str] = set()
    for index, (reads, _) in enumerate(calls):
        if index not in live:
            continue
        for key, is_weight in reads:
            if key in emitted:
                continue
            prefix, _, leaf = key.rpartition(".")
            group = [f"{prefix}.{name}" for name in _BATCH_NORM_ORDER]
            if leaf in _BATCH_NORM_ORDER and all(member in state_keys for member in group):
                members = [(member, False) for member in group]
            else:
                members = [(key, is_weight)]
            for member, member_weight in members:
                emitted.add(member)
                uses.append(TorchUse(member, shapes[member], member_weight, member not in state_keys))
    return uses


def paddle_use_order(program: StaticProgram) -> list[tuple[str, StaticOp]]:
    """The program's parameters in the order its ops first read their values."""
    seen: set[str] = set()
    order = []
    for op in program.ops:
        if op.type in _SHAPE_OPS:
            continue
        for name in op.inputs:
            if name in program.params and name not in seen:
                seen.add(name)
                order.append((name, op))
    return order


def pair_tensors(program: StaticProgram, uses: list[TorchUse], where: str = "the static model") -> dict[str, tuple[str, bool]]:
    """state_dict key -> (paddle name, transpose), pairing both orders one by one; LayoutModelError on any mismatch."""
    params = paddle_use_order(program)
    unread = sorted(set(program.params) - {name for name, _ in params})
    pairs: dict[str, tuple[str, bool]] = {}
    j = 0
    for position, (name, op) in enumerate(params):
        shape = program.params[name].shape
        while j < len(uses):
            use = uses[j]
            wanted = tuple(reversed(use.shape)) if use.linear_weight else use.shape
            if wanted == shape:
                break
            if not use.optional:
                raise _mismatch(where, position, name, op, shape, use, wanted)
            j += 1
        else:
            raise LayoutModelError(
                f"cannot convert {where}: its program reads {len(params)} parameters but transformers' model has "
                f"only {sum(not u.optional for u in uses)} weights to pair them with (no place for {name} {list(shape)}, "
                f"read by {op.type}); serve it with --layout-engine paddle, or use the PaddlePaddle/*_safetensors copy"
            )
        use = uses[j]
        if not use.optional:
            pairs[use.key] = (name, use.linear_weight)
        j += 1
    left = [use.key for use in uses[j:] if not use.optional]
    if left:
        raise LayoutModelError(
            f"cannot convert {where}: transformers' model reads {len(left)} weights its program does not have "
            f"({', '.join(left[:4])}{', ...' if len(left) > 4 else ''}); its config.json may not match the weights. "
            "Serve it with --layout-engine paddle, or use the PaddlePaddle/*_safetensors copy"
        )
    if unread:
        log.info("static layout model: %d persistable tensors no op reads were left out (%s)", len(unread), ", ".join(unread[:4]))
    return pairs


def _mismatch(where: str, position: int, name: str, op: StaticOp, shape: tuple[int, ...], use: TorchUse, wanted: tuple[int, ...]) -> LayoutModelError:
    return LayoutModelError(
        f"cannot convert {where}: parameter {position + 1} of its program ({name}, {list(shape)}, read by "
        f"{op.type}) does not match transformers' {use.key} ({list(wanted)}); the model's config or "
        "architecture differs from what transformers builds. Serve it with --layout-engine paddle, or use the "
        "PaddlePaddle/*_safetensors copy"
    )


# ---------------------------------------------------------------- conversion and cache


def source_digest(spec: LayoutModelSpec) -> str:
    """A hash of the files a conversion reads (program, params, config.json, inference.yml) and of the converter."""
    digest = hashlib.sha256(f"vllm-paddle-ocr layout conversion {CONVERSION_VERSION}\n".encode())
    names = [spec.static_program or "", STATIC_PARAMS, "config.json", CONFIG_FILE]
    for name in names:
        path = spec.model_dir / name
        digest.update(f"{name}\n".encode())
        if not path.is_file():
            continue
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def cached_conversion(spec: LayoutModelSpec, data_dir: Path) -> Path:
    """A directory transformers loads for a static layout model: converted now, or found from an earlier run."""
    if spec.torch_weights != "static" or spec.static_program is None:
        raise LayoutModelError(f"{spec.model_dir} has no paddle static format to convert")
    digest = source_digest(spec)
    target = Path(data_dir) / CACHE_SUBDIR / f"{spec.model_name}-{digest[:24]}"
    if (target / WEIGHTS_FILE).is_file() and (target / "config.json").is_file():
        return target
    log.info("converting %s (%s) to safetensors in %s, once", spec.model_dir, spec.model_name, target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    except OSError as exc:
        raise LayoutModelError(
            f"cannot write the converted layout model under {target.parent}: {exc.strerror or exc}; "
            "point --data-dir (or VLLM_PADDLE_OCR_DATA_DIR) at a writable directory"
        ) from exc
    try:
        convert_static(spec, staging, digest=digest)
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / WEIGHTS_FILE).is_file():  # not another instance that won the race
                raise
    except OSError as exc:
        raise LayoutModelError(f"cannot write the converted layout model to {target}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def convert_static(spec: LayoutModelSpec, dest: Path, *, digest: str = "") -> Path:
    """Write config.json and model.safetensors (transformers' key names) for a static layout model into ``dest``."""
    import torch
    from safetensors.torch import save_file

    if spec.static_program is None:
        raise LayoutModelError(f"{spec.model_dir} has no paddle static program (inference.json or inference.pdmodel)")
    program = read_program(spec.model_dir / spec.static_program)
    config = source_config(spec)
    config_class, model_class = transformers_classes(spec.model_name)
    try:
        blank = model_class(config_class.from_dict(config)).eval()
    except (TypeError, ValueError, KeyError) as exc:
        raise LayoutModelError(f"transformers cannot build {spec.model_name} from {spec.model_dir}'s config ({exc})") from exc
    pairs = pair_tensors(program, torch_use_order(blank, spec.model_name), where=f"{spec.model_dir / spec.static_program}")
    params = read_params(spec.model_dir / STATIC_PARAMS, program)
    state = blank.state_dict()
    # Tied weights (V3's decoder heads are its encoder heads) are one tensor under several keys.
    sharing: dict[int, list[str]] = {}
    for key, value in state.items():
        sharing.setdefault(value.data_ptr(), []).append(key)
    for keys in sharing.values():
        paired = next((pairs[key] for key in keys if key in pairs), None)
        if paired is not None:
            pairs.update({key: paired for key in keys})
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in pairs:
            name, transpose = pairs[key]
            array = params[name].T if transpose else params[name]
            tensors[key] = torch.from_numpy(np.array(array, copy=True, order="C")).to(value.dtype)
        else:
            tensors[key] = value.detach().clone().contiguous()  # not read in inference (training-only heads)
    dest.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dest / WEIGHTS_FILE), metadata={"format": "pt"})
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (dest / SOURCE_FILE).write_text(
        json.dumps(
            {
                "source": str(spec.model_dir),
                "program": spec.static_program,
                "sha256": digest,
                "converter_version": CONVERSION_VERSION,
                "paired": len(pairs),
                "not_in_program": sorted(set(state) - set(pairs)),
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return dest

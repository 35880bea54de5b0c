"""Where the VLM and the layout model sit inside the path a control plane passes, and which version it is.

The repo's config files (config.json, preprocessor_config.json, inference.yml) are read here once, with
one error policy: an unreadable config.json is a ModelRepoError; the others are optional. The resulting
`ModelRepo` carries them, so planning never reads them again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from vllm_paddle_ocr.plugin.errors import VllmPaddleOcrError
from vllm_paddle_ocr.plugin.records import ModelRepo

from ..recipe import ARCHITECTURE, CANONICAL_NAMES, CHAT_TEMPLATES, DEFAULT_LAYOUT_MODEL, EARLY_SUBDIR, LAYOUT_MODELS, VERSIONS
from .layout_model import MODEL_TYPES, is_layout_model_dir, read_hf_config


class ModelRepoError(VllmPaddleOcrError):
    """The model path does not hold a PaddleOCR-VL model this runtime can serve."""


def resolve_model_repo(
    model_path: Path, *, layout_model_dir: Path | None = None, version: str | None = None
) -> ModelRepo:
    """Find the VLM directory (root, early sub-directory, HF or ModelScope cache) and its layout model."""
    given = Path(model_path).expanduser()
    if not given.exists():
        raise ModelRepoError(f"model path {given} does not exist; pass the downloaded model directory")
    start = given.resolve()
    root, kind, candidates = _candidates(start)
    looked: list[str] = []
    for candidate, candidate_kind in candidates:
        config = candidate / "config.json"
        looked.append(str(config))
        if not config.is_file():
            continue
        _ensure_inside(config, root, "config.json")
        data = read_config(config)
        architectures = _architectures(data)
        if ARCHITECTURE not in architectures:
            raise ModelRepoError(
                f"{config} declares architectures {architectures or '(none)'}, not {ARCHITECTURE}. "
                "This runtime serves PaddleOCR-VL only; serve other models with the plain vllm backend."
            )
        vlm_dir = candidate
        inference = _read_yaml(vlm_dir / "inference.yml")
        resolved_version = _check_version(version) or detect_version(data, inference, given, vlm_dir)
        layout_dir, layout_name = _find_layout(vlm_dir, root, layout_model_dir, resolved_version)
        return ModelRepo(
            root=root,
            vlm_dir=vlm_dir,
            layout_dir=layout_dir,
            layout_model_name=layout_name,
            version=resolved_version,
            architecture=ARCHITECTURE,
            has_remote_code=bool(data.get("auto_map")) or any(vlm_dir.glob("*.py")),
            kind=candidate_kind if candidate_kind != "root" else kind,
            canonical_name=CANONICAL_NAMES[resolved_version],
            chat_template=CHAT_TEMPLATES[resolved_version],
            config=data,
            preprocessor=_read_optional_json(vlm_dir / "preprocessor_config.json"),
        )
    places = "\n  ".join(looked)
    raise ModelRepoError(
        f"no PaddleOCR-VL config.json found under {given}. Looked at:\n  {places}\n"
        "Pass the directory that holds config.json (or the PaddleOCR-VL-0.9B/ sub-directory, "
        "or a HuggingFace/ModelScope cache entry of PaddlePaddle/PaddleOCR-VL)."
    )


def _candidates(start: Path) -> tuple[Path, str, list[tuple[Path, str]]]:
    """The containment root, the kind of place, and the directories to try in PaddleX's order."""
    hf_repo = _hf_cache_repo(start)
    if hf_repo is not None:
        snapshot = start if start.parent.name == "snapshots" else _hf_snapshot(hf_repo)
        dirs = [] if snapshot is None else [(snapshot / EARLY_SUBDIR, "subdir"), (snapshot, "hf_cache")]
        return hf_repo, "hf_cache", dirs
    nested = [p for p in sorted(start.glob("models--*PaddleOCR-VL*")) if p.is_dir()]
    if len(nested) == 1:
        snapshot = _hf_snapshot(nested[0])
        dirs = [] if snapshot is None else [(snapshot / EARLY_SUBDIR, "subdir"), (snapshot, "hf_cache")]
        return start, "hf_cache", dirs
    kind = "modelscope" if _looks_like_modelscope(start) else "root"
    return start, kind, [(start / EARLY_SUBDIR, "subdir"), (start, "root")]


def _hf_cache_repo(path: Path) -> Path | None:
    """The `models--org--name` directory when the path is one, or a snapshot inside one."""
    if path.name.startswith("models--"):
        return path
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent
    return None


def _hf_snapshot(repo: Path) -> Path | None:
    """The snapshot `refs/main` points at, or the only snapshot present."""
    ref = repo / "refs" / "main"
    if ref.is_file():
        snapshot = repo / "snapshots" / ref.read_text().strip()
        if snapshot.is_dir():
            return snapshot
    snapshots = sorted(p for p in (repo / "snapshots").glob("*") if p.is_dir())
    return snapshots[-1] if len(snapshots) == 1 else None


def _looks_like_modelscope(path: Path) -> bool:
    parts = {p.lower() for p in path.parts}
    return bool(parts & {"model_scope", "modelscope"})


def _ensure_inside(path: Path, root: Path, what: str) -> None:
    """Refuse a file that leaves the model root through `..` or a symlink."""
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise ModelRepoError(
            f"{what} at {path} resolves to {real}, outside the model directory {root}. "
            "Copy the file into the model directory, or name the other location explicitly."
        )


def read_config(path: Path) -> dict[str, Any]:
    """config.json as a dict; a missing or broken one is a ModelRepoError saying to re-download."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelRepoError(f"cannot read {path}: {exc}; re-download the model") from None
    if not isinstance(data, dict):
        raise ModelRepoError(f"{path} is not a JSON object; re-download the model")
    return data


def _read_optional_json(path: Path) -> dict[str, Any]:
    """An optional JSON file as a dict; absent or unreadable reads as empty."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_yaml(path: Path) -> dict[str, Any]:
    """An optional YAML file as a dict; absent or unreadable reads as empty."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _architectures(config: dict[str, Any]) -> list[str]:
    archs = config.get("architectures") or []
    return [str(a) for a in archs] if isinstance(archs, list) else [str(archs)]


def _check_version(version: str | None) -> str | None:
    if version is None:
        return None
    normalised = version.strip().removeprefix("v")
    if normalised in VERSIONS:
        return normalised
    raise ModelRepoError(f"unknown model version {version!r}; use one of {', '.join(VERSIONS)}")


def detect_version(config: dict[str, Any], inference: dict[str, Any], *paths: Path) -> str:
    """Version from inference.yml's model name, then config.json, then the paths' names; 0.9B otherwise."""
    texts = [
        str((inference.get("Global") or {}).get("model_name", "")),
        str(config.get("_name_or_path", "")),
        *(part for path in paths for part in path.parts if "paddleocr" in part.lower()),
    ]
    for text in texts:
        lowered = text.lower().replace("___", ".").replace("_", ".")
        for version in ("1.6", "1.5"):
            if f"vl-{version}" in lowered or f"vl{version}" in lowered or f"v{version}" in lowered:
                return version
    return "0.9B"


def _find_layout(
    vlm_dir: Path, root: Path, explicit: Path | None, version: str
) -> tuple[Path | None, str | None]:
    """The layout model: the flag when given, else PP-DocLayoutV2/V3 beside or inside the VLM."""
    if explicit is not None:
        layout = Path(explicit).expanduser().resolve()
        if not is_layout_model_dir(layout):
            raise ModelRepoError(
                f"--layout-model-dir {explicit} has no inference.yml (nor a transformers config.json of "
                "PP-DocLayoutV2/V3); point it at a PP-DocLayoutV2/V3 directory"
            )
        return layout, _layout_name(layout, version)
    preferred = DEFAULT_LAYOUT_MODEL[version]
    names = sorted(LAYOUT_MODELS, key=lambda n: n != preferred)
    for base in dict.fromkeys([vlm_dir, vlm_dir.parent if vlm_dir != root else vlm_dir, root]):
        for name in names:
            candidate = base / name
            if candidate.is_dir() and is_layout_model_dir(candidate):
                marker = "inference.yml" if (candidate / "inference.yml").is_file() else "config.json"
                _ensure_inside(candidate / marker, root, f"layout model {name}")
                return candidate, name
    return None, None


def _layout_name(layout: Path, version: str) -> str:
    name = (_read_yaml(layout / "inference.yml").get("Global") or {}).get("model_name")
    if name:
        return str(name)
    typed = MODEL_TYPES.get(str((read_hf_config(layout) or {}).get("model_type")))
    if typed:
        return typed
    return layout.name if layout.name in LAYOUT_MODELS else DEFAULT_LAYOUT_MODEL[version]

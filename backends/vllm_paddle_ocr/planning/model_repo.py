"""Where the VLM and the layout model sit inside the path a control plane passes, and which version it is."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict

ARCHITECTURE = "PaddleOCRVLForConditionalGeneration"
EARLY_SUBDIR = "PaddleOCR-VL-0.9B"
LAYOUT_DIRS = ("PP-DocLayoutV2", "PP-DocLayoutV3")

Version = Literal["0.9B", "1.5", "1.6"]

# The name PaddleX's own clients send as `model`, per version (served as an alias).
CANONICAL_NAMES: dict[str, str] = {
    "0.9B": "PaddleOCR-VL-0.9B",
    "1.5": "PaddleOCR-VL-1.5-0.9B",
    "1.6": "PaddleOCR-VL-1.6-0.9B",
}
CHAT_TEMPLATES: dict[str, str] = {
    "0.9B": "paddleocr_vl_0.9b.jinja",
    "1.5": "paddleocr_vl_1.5.jinja",
    "1.6": "paddleocr_vl_1.5.jinja",
}
DEFAULT_LAYOUT_MODEL: dict[str, str] = {"0.9B": "PP-DocLayoutV2", "1.5": "PP-DocLayoutV3", "1.6": "PP-DocLayoutV3"}


class ModelRepoError(ValueError):
    """The model path does not hold a PaddleOCR-VL model this runtime can serve."""


class ModelRepo(BaseModel):
    """A resolved model repository: the directories vLLM and paddlex load, and what they are."""

    model_config = ConfigDict(frozen=True)

    root: Path
    vlm_dir: Path
    layout_dir: Path | None
    layout_model_name: str | None
    version: Version
    architecture: str
    has_remote_code: bool
    kind: Literal["root", "subdir", "hf_cache", "modelscope"]

    @property
    def canonical_name(self) -> str:
        """The served-model-name alias PaddleX's clients send for this version."""
        return CANONICAL_NAMES[self.version]

    @property
    def chat_template(self) -> str:
        """File name of our packaged chat template for this version."""
        return CHAT_TEMPLATES[self.version]


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
        architectures = _read_architectures(config)
        if ARCHITECTURE not in architectures:
            raise ModelRepoError(
                f"{config} declares architectures {architectures or '(none)'}, not {ARCHITECTURE}. "
                "This runtime serves PaddleOCR-VL only; serve other models with the plain vllm backend."
            )
        vlm_dir = candidate
        resolved_version = _check_version(version) or detect_version(vlm_dir, given)
        layout_dir, layout_name = _find_layout(vlm_dir, root, layout_model_dir, resolved_version)
        return ModelRepo(
            root=root,
            vlm_dir=vlm_dir,
            layout_dir=layout_dir,
            layout_model_name=layout_name,
            version=resolved_version,
            architecture=ARCHITECTURE,
            has_remote_code=_has_remote_code(vlm_dir),
            kind=candidate_kind if candidate_kind != "root" else kind,
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


def _read_architectures(config: Path) -> list[str]:
    try:
        data = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelRepoError(f"cannot read {config}: {exc}; re-download the model") from None
    archs = data.get("architectures") or []
    return [str(a) for a in archs] if isinstance(archs, list) else [str(archs)]


def _has_remote_code(vlm_dir: Path) -> bool:
    """The repo ships modelling code (auto_map or .py files), so older stacks need trust-remote-code."""
    try:
        data = json.loads((vlm_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        data = {}
    return bool(data.get("auto_map")) or any(vlm_dir.glob("*.py"))


def _check_version(version: str | None) -> Version | None:
    if version is None:
        return None
    normalised = version.strip().removeprefix("v")
    if normalised in CANONICAL_NAMES:
        return normalised  # type: ignore[return-value]
    raise ModelRepoError(f"unknown model version {version!r}; use one of {', '.join(CANONICAL_NAMES)}")


def detect_version(vlm_dir: Path, given: Path) -> Version:
    """Version from inference.yml's model name, then config.json, then the path's names; 0.9B otherwise."""
    texts: list[str] = []
    inference = vlm_dir / "inference.yml"
    if inference.is_file():
        try:
            data = yaml.safe_load(inference.read_text()) or {}
            texts.append(str((data.get("Global") or {}).get("model_name", "")))
        except (OSError, yaml.YAMLError):
            pass
    try:
        config = json.loads((vlm_dir / "config.json").read_text())
        texts.append(str(config.get("_name_or_path", "")))
    except (OSError, json.JSONDecodeError):
        pass
    texts.extend(part for part in (*given.parts, *vlm_dir.parts) if "paddleocr" in part.lower())
    for text in texts:
        lowered = text.lower().replace("___", ".").replace("_", ".")
        for version in ("1.6", "1.5"):
            if f"vl-{version}" in lowered or f"vl{version}" in lowered or f"v{version}" in lowered:
                return version  # type: ignore[return-value]
    return "0.9B"


def _find_layout(
    vlm_dir: Path, root: Path, explicit: Path | None, version: str
) -> tuple[Path | None, str | None]:
    """The layout model: the flag when given, else PP-DocLayoutV2/V3 beside or inside the VLM."""
    if explicit is not None:
        layout = Path(explicit).expanduser().resolve()
        if not (layout / "inference.yml").is_file():
            raise ModelRepoError(
                f"--layout-model-dir {explicit} has no inference.yml; point it at a PP-DocLayoutV2/V3 directory"
            )
        return layout, _layout_name(layout, version)
    preferred = DEFAULT_LAYOUT_MODEL[version]
    names = sorted(LAYOUT_DIRS, key=lambda n: n != preferred)
    for base in dict.fromkeys([vlm_dir, vlm_dir.parent if vlm_dir != root else vlm_dir, root]):
        for name in names:
            candidate = base / name
            if (candidate / "inference.yml").is_file():
                _ensure_inside(candidate / "inference.yml", root, f"layout model {name}")
                return candidate, name
    return None, None


def _layout_name(layout: Path, version: str) -> str:
    try:
        data = yaml.safe_load((layout / "inference.yml").read_text()) or {}
        name = (data.get("Global") or {}).get("model_name")
        if name:
            return str(name)
    except (OSError, yaml.YAMLError):
        pass
    return layout.name if layout.name in LAYOUT_DIRS else DEFAULT_LAYOUT_MODEL[version]

"""Layout detection: the proxy's one door to paddlex's PP-DocLayoutV2/V3.

The proxy depends on :class:`LayoutDetector` only. :class:`PaddlexLayoutDetector` is the real one:
it loads the model directory once, with the engine its files call for, and turns a request's
:class:`~.options.LayoutOptions` into paddlex's ``predict`` keywords, filling what the request leaves
unset with PaddleX's PaddleOCR-VL pipeline defaults. Everything except loading and predicting is a
plain function of plain data, unit-tested without paddle.

Boxes come back as the model found them (PaddleX's ``layout_det_res``): thresholds, NMS, box merging
and unclipping applied, in reading order, not yet filtered for overlaps. Dropping overlapping boxes
is a step of the block planning that follows, as in PaddleX's pipeline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional, Protocol, Union

from vllm_paddle_ocr.plugin.errors import VllmPaddleOcrError

from ..options import (
    DEFAULT_LAYOUT_NMS,
    DEFAULT_UNCLIP_RATIO,
    PP_DOCLAYOUT_V2_LABELS,
    V2_DEFAULT_MERGE_BBOXES_MODE,
    V2_DEFAULT_THRESHOLD,
    V3_DEFAULT_THRESHOLD,
    LayoutOptions,
)
from ..protocol import MERGE_BBOXES_MODES, SHAPE_MODES

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

Engine = Literal["paddle_static", "paddle_dynamic", "onnxruntime"]
ImageInput = Union["Image.Image", "np.ndarray"]

SUPPORTED_MODELS: tuple[str, ...] = ("PP-DocLayoutV2", "PP-DocLayoutV3")
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
_INSTALL_HINT = "install the layout extra: pip install 'vllm-paddle-ocr[layout]' (paddlepaddle and paddlex[ocr-core])"


class LayoutModelError(VllmPaddleOcrError):
    """A layout model directory paddlex cannot load; the message says what to add or change."""


@dataclass(frozen=True)
class LayoutBox:
    """One detected region, with the fields paddlex writes in ``layout_det_res.boxes``.

    ``coordinate`` is (x1, y1, x2, y2) in page pixels, numbers as paddlex gives them (whole numbers
    for PP-DocLayoutV2). ``order`` is the reading position (1, 2, ...), None for labels PaddleX
    leaves out of the reading order (figure titles, images, tables, headers, footers, ...).
    ``polygon_points`` is set by PP-DocLayoutV3 unless the shape mode is "rect".
    """

    cls_id: int
    label: str
    score: float
    coordinate: tuple[float, float, float, float]
    order: Optional[int] = None
    polygon_points: Optional[tuple[tuple[float, float], ...]] = None


class LayoutDetector(Protocol):
    """Finds the layout boxes of a page, in reading order.

    Implementations may block (a model runs on CPU or GPU): call ``detect`` off the event loop,
    e.g. ``await asyncio.to_thread(detector.detect, page, options)``; concurrent calls are allowed
    and may be serialised by the implementation.
    """

    labels: Sequence[str]

    def detect(self, image: ImageInput, options: Optional[LayoutOptions] = None) -> list[LayoutBox]:
        """Boxes found on one page (an RGB PIL image or an HxWx3 RGB uint8 array)."""
        ...


# ---------------------------------------------------------------- model directory (pure)


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
    if name not in SUPPORTED_MODELS:
        raise LayoutModelError(
            f"unsupported layout model {name!r}: PaddleOCR-VL uses {' or '.join(SUPPORTED_MODELS)}; set "
            f"Global.model_name in {CONFIG_FILE} or name the directory after the model"
        )
    return name


def inspect_model_dir(model_dir: Union[str, Path], *, model_name: Optional[str] = None) -> LayoutModelSpec:
    """Read a layout model directory's files and inference.yml to decide the model and the engine."""
    import yaml

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


# ---------------------------------------------------------------- options (pure)


def _class_id(key: Any) -> int:
    """A per-class key as paddlex compares it: an int (JSON objects give strings such as "5")."""
    if isinstance(key, bool):
        raise ValueError(f"per-class layout option keys must be class ids; got: {key!r}")
    try:
        return int(key)
    except (TypeError, ValueError):
        raise ValueError(f"per-class layout option keys must be class ids; got: {key!r}") from None


def _pair(value: Any) -> tuple[float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value), float(value))
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (float(value[0]), float(value[1]))
    raise ValueError(f"layout unclip ratio must be a number or two numbers; got: {value!r}")


def _merge_mode(value: Any) -> str:
    if value not in MERGE_BBOXES_MODES:
        raise ValueError(f"layout merge mode must be one of {', '.join(MERGE_BBOXES_MODES)}; got: {value!r}")
    return value


def default_threshold(model_name: str) -> Union[float, dict[int, float]]:
    """PaddleX's threshold for a model in the PaddleOCR-VL pipelines (per class for V2, flat for V3)."""
    return V3_DEFAULT_THRESHOLD if model_name == "PP-DocLayoutV3" else dict(V2_DEFAULT_THRESHOLD)


def _per_class(value: Any, default: Any, convert: Callable[[Any], Any]) -> Any:
    """A layout option as paddlex takes it: the default when unset, per class id for a mapping, else one value."""
    if value is None:
        return default
    if isinstance(value, Mapping):
        return {_class_id(k): convert(v) for k, v in value.items()}
    return convert(value)


def predict_kwargs(options: Optional[LayoutOptions], model_name: str = "PP-DocLayoutV2") -> dict[str, Any]:
    """paddlex ``predict`` keywords for a request's layout options, PaddleOCR-VL's defaults where unset.

    Values are given the exact types paddlex tests for: it only filters with a threshold that is a
    float or a dict keyed by int, and only unclips with a float, a pair or an int-keyed dict of
    pairs; anything else is silently ignored by paddlex. Partial per-class dicts are passed as they
    are: paddlex applies 0.5 to classes a threshold dict leaves out, and no merging to classes a
    merge dict leaves out. An explicit ``nms=False`` turns NMS off (PaddleX's pipeline cannot).
    """
    opts = options if options is not None else LayoutOptions()
    threshold = _per_class(opts.threshold, default_threshold(model_name), float)
    unclip = _per_class(opts.unclip_ratio, DEFAULT_UNCLIP_RATIO, _pair)
    merge = _per_class(opts.merge_bboxes_mode, dict(V2_DEFAULT_MERGE_BBOXES_MODE), _merge_mode)

    shape_mode = opts.shape_mode or "auto"
    if shape_mode not in SHAPE_MODES:
        raise ValueError(f"layout shape mode must be one of {', '.join(SHAPE_MODES)}; got: {shape_mode!r}")

    return {
        "threshold": threshold,
        "layout_nms": DEFAULT_LAYOUT_NMS if opts.nms is None else bool(opts.nms),
        "layout_unclip_ratio": unclip,
        "layout_merge_bboxes_mode": merge,
        "layout_shape_mode": shape_mode,
        # Like PaddleX's pipeline: the overlap filter runs later, on the blocks.
        "filter_overlap_boxes": False,
    }


# ---------------------------------------------------------------- results (pure)


def _plain(value: Any) -> Any:
    """A Python scalar or list from a numpy value (paddlex mixes both)."""
    return value.tolist() if hasattr(value, "tolist") else value


def box_from_paddlex(raw: Mapping[str, Any]) -> LayoutBox:
    """A LayoutBox from one of paddlex's box dicts."""
    x1, y1, x2, y2 = (_plain(v) for v in raw["coordinate"])
    order = _plain(raw.get("order"))
    polygon = raw.get("polygon_points")
    return LayoutBox(
        cls_id=int(_plain(raw["cls_id"])),
        label=str(raw["label"]),
        score=float(_plain(raw["score"])),
        coordinate=(x1, y1, x2, y2),
        order=None if order is None else int(order),
        polygon_points=None if polygon is None else tuple((float(p[0]), float(p[1])) for p in _plain(polygon)),
    )


def to_bgr_array(image: ImageInput) -> "np.ndarray":
    """The HxWx3 BGR uint8 array paddlex expects, from an RGB PIL image or RGB array (gray and RGBA too)."""
    import numpy as np

    if hasattr(image, "convert") and hasattr(image, "mode"):
        array = np.asarray(image.convert("RGB"))
    else:
        array = np.asarray(image)
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        if array.ndim != 3 or array.shape[2] not in (3, 4):
            raise ValueError(f"a page image must be HxWx3 RGB (or gray, or RGBA); got shape {array.shape}")
        array = array[:, :, :3]
        if array.dtype != np.uint8:
            raise ValueError(f"a page image array must be uint8; got {array.dtype}")
    return np.ascontiguousarray(array[:, :, ::-1])


def _listing(names: Iterable[str]) -> str:
    shown = sorted(names)
    return ", ".join(shown) if shown else "nothing"


# ---------------------------------------------------------------- the paddlex edge


class PaddlexLayoutDetector:
    """PP-DocLayoutV2/V3 through paddlex, loaded once and shared.

    Paddle predictors are not safe to call from several threads at once, so every prediction holds
    one lock: call :meth:`detect` from worker threads (never on the event loop); pages are then
    detected one at a time while everything else proceeds.
    """

    def __init__(self, model: Any, spec: LayoutModelSpec, labels: Sequence[str]) -> None:
        self._model = model
        self.spec = spec
        self.labels: tuple[str, ...] = tuple(labels)
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self.spec.model_name

    @property
    def engine(self) -> Engine:
        return self.spec.engine

    @classmethod
    def from_dir(
        cls,
        model_dir: Union[str, Path],
        *,
        device: str = "cpu",
        model_name: Optional[str] = None,
        engine: Optional[Engine] = None,
    ) -> "PaddlexLayoutDetector":
        """Load a layout model directory with paddlex (device "cpu" or "gpu[:N]")."""
        spec = inspect_model_dir(model_dir, model_name=model_name)
        if engine is not None:
            spec = LayoutModelSpec(spec.model_dir, spec.model_name, engine)
        try:
            import paddlex
        except ImportError as exc:
            raise LayoutModelError(f"layout detection needs paddlex: {_INSTALL_HINT} ({exc})") from exc
        try:
            model = paddlex.create_model(
                model_name=spec.model_name, model_dir=str(spec.model_dir), device=device, engine=spec.engine
            )
        except Exception as exc:  # noqa: BLE001 - paddlex raises many kinds; say which model failed how
            raise LayoutModelError(
                f"paddlex could not load {spec.model_name} from {spec.model_dir} with engine {spec.engine} "
                f"on {device}: {type(exc).__name__}: {exc}"
            ) from exc
        config = getattr(model, "config", None) or {}
        labels = config.get("label_list") or PP_DOCLAYOUT_V2_LABELS
        return cls(model, spec, labels)

    def detect(self, image: ImageInput, options: Optional[LayoutOptions] = None) -> list[LayoutBox]:
        """Boxes on one page, in reading order."""
        return self.detect_batch([image], options)[0]

    def detect_batch(
        self, images: Sequence[ImageInput], options: Optional[LayoutOptions] = None
    ) -> list[list[LayoutBox]]:
        """Boxes on several pages, from one forward pass over them all (one list per page)."""
        if not images:
            return []
        kwargs = predict_kwargs(options, self.spec.model_name)
        arrays = [to_bgr_array(image) for image in images]
        with self._lock:
            results = list(self._model.predict(arrays, batch_size=len(arrays), **kwargs))
        if len(results) != len(arrays):
            raise RuntimeError(f"paddlex returned {len(results)} layout results for {len(arrays)} pages")
        return [[box_from_paddlex(raw) for raw in result["boxes"]] for result in results]

    def close(self) -> None:
        """Let paddlex release the predictor."""
        close = getattr(self._model, "close", None)
        if callable(close):
            close()

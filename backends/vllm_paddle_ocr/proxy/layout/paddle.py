"""The paddle layout engine: PP-DocLayoutV2/V3 through paddlex, loaded once and shared.

paddlex runs the model and its own pre- and post-processing; this module turns `LayoutSettings` into
paddlex's ``predict`` keywords and paddlex's boxes into `LayoutBox`es. Everything except loading and
predicting is a plain function of plain data, unit-tested without paddle.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ...planning.layout_model import PADDLE_INSTALL, LayoutModelSpec, PaddleEngine, inspect_model_dir, paddle_device
from ...recipe import PP_DOCLAYOUT_V2_LABELS
from ..options import LayoutOptions
from .base import ImageInput, LayoutBox, LayoutModelError, LayoutSettings, layout_settings, rgb_array


def predict_kwargs(settings: LayoutSettings) -> dict[str, Any]:
    """paddlex ``predict`` keywords for the settings, in the exact types paddlex tests for.

    paddlex only filters with a threshold that is a float or an int-keyed dict and only unclips with a
    float, a pair or an int-keyed dict of pairs (anything else it silently ignores); the settings
    already hold those types.
    """
    return {
        "threshold": settings.threshold,
        "layout_nms": settings.nms,
        "layout_unclip_ratio": settings.unclip_ratio,
        "layout_merge_bboxes_mode": settings.merge_bboxes_mode,
        "layout_shape_mode": settings.shape_mode,
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


def to_bgr_array(image: ImageInput) -> np.ndarray:
    """The HxWx3 BGR uint8 array paddlex expects, from an RGB PIL image or RGB array (gray and RGBA too)."""
    return np.ascontiguousarray(rgb_array(image)[:, :, ::-1])


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
    def engine(self) -> Optional[PaddleEngine]:
        return self.spec.engine

    @classmethod
    def from_dir(
        cls,
        model_dir: Union[str, Path],
        *,
        device: str = "cpu",
        model_name: Optional[str] = None,
        engine: Optional[PaddleEngine] = None,
    ) -> "PaddlexLayoutDetector":
        """Load a layout model directory with paddlex (device "cpu", "gpu[:N]" or "cuda[:N]")."""
        spec = inspect_model_dir(model_dir, model_name=model_name)
        if engine is not None:
            spec = LayoutModelSpec(spec.model_dir, spec.model_name, engine, spec.torch_weights, spec.static_program)
        if spec.engine is None:
            raise LayoutModelError(
                f"paddlex cannot load {spec.model_dir}: it needs inference.yml and the weights in one of its formats; "
                "the torch engine (--layout-engine torch) can"
            )
        device = paddle_device(device)
        try:
            import paddlex
        except ImportError as exc:
            raise LayoutModelError(f"layout detection with paddle needs paddlex: {PADDLE_INSTALL} ({exc})") from exc
        try:
            model = paddlex.create_model(
                model_name=spec.model_name, model_dir=str(spec.model_dir), device=device, engine=spec.engine
            )
        except Exception as exc:  # noqa: BLE001 - paddlex raises many kinds; say which model failed how
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise LayoutModelError(
                f"paddlex could not load {spec.model_name} from {spec.model_dir} with engine {spec.engine} "
                f"on {device} ({reason}). Put an intact {spec.model_name} there (the {spec.model_name}/ "
                "directory of the model repo, as downloaded) or pass --layout-model-dir DIR"
            ) from exc
        config = getattr(model, "config", None) or {}
        labels = config.get("label_list") or PP_DOCLAYOUT_V2_LABELS
        return cls(model, spec, labels)

    def detect(self, image: ImageInput, options: Optional[LayoutOptions] = None, *, owner: Hashable = None) -> list[LayoutBox]:
        """Boxes on one page, in reading order."""
        return self.detect_batch([image], options)[0]

    def detect_pages(self, images: Sequence[ImageInput], options: Sequence[Optional[LayoutOptions]]) -> list[list[LayoutBox]]:
        """Boxes on several pages; pages with equal options share one paddlex call (it takes one set per call)."""
        if len(images) != len(options):
            raise ValueError(f"{len(images)} pages but {len(options)} option sets")
        groups: list[tuple[Optional[LayoutOptions], list[int]]] = []
        for index, page_options in enumerate(options):
            for group_options, members in groups:
                if group_options == page_options:
                    members.append(index)
                    break
            else:
                groups.append((page_options, [index]))
        results: list[list[LayoutBox]] = [[] for _ in images]
        for group_options, members in groups:
            for index, boxes in zip(members, self.detect_batch([images[i] for i in members], group_options)):
                results[index] = boxes
        return results

    def detect_batch(
        self, images: Sequence[ImageInput], options: Optional[LayoutOptions] = None
    ) -> list[list[LayoutBox]]:
        """Boxes on several pages, from one forward pass over them all (one list per page)."""
        if not images:
            return []
        kwargs = predict_kwargs(layout_settings(options, self.spec.model_name))
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

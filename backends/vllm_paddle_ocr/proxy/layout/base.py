"""What every layout engine shares: the box it returns, the detector protocol, and the settings it runs with.

Boxes come back as the model found them (PaddleX's ``layout_det_res``): thresholds, NMS, box merging
and unclipping applied, in reading order, not yet filtered for overlaps. Dropping overlapping boxes
is a step of the block planning that follows, as in PaddleX's pipeline.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Protocol, Sequence, Union

from ...planning.layout_model import LayoutModelError
from ...recipe import (
    DEFAULT_LAYOUT_NMS,
    DEFAULT_UNCLIP_RATIO,
    V2_DEFAULT_MERGE_BBOXES_MODE,
    V2_DEFAULT_THRESHOLD,
    V3_DEFAULT_THRESHOLD,
)
from ..options import LayoutOptions

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

ImageInput = Union["Image.Image", "np.ndarray"]
PerClass = Union[Any, dict[int, Any]]

__all__ = ["ImageInput", "LayoutBox", "LayoutDetector", "LayoutModelError", "LayoutSettings", "layout_settings"]


@dataclass(frozen=True)
class LayoutBox:
    """One detected region, with the fields PaddleX writes in ``layout_det_res.boxes``.

    ``coordinate`` is (x1, y1, x2, y2) in page pixels, numbers as the model gives them (whole numbers
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

    def as_paddlex(self) -> dict[str, Any]:
        """The box as PaddleX writes it in ``layout_det_res.boxes``: ``order`` always, polygons when found."""
        out: dict[str, Any] = {
            "cls_id": self.cls_id,
            "label": self.label,
            "score": self.score,
            "coordinate": list(self.coordinate),
            "order": self.order,
        }
        if self.polygon_points is not None:
            out["polygon_points"] = [list(point) for point in self.polygon_points]
        return out


def whole_page_box(label: str, width: int, height: int) -> LayoutBox:
    """The one box of a page parsed without layout detection: all of it, under the prompt's label."""
    return LayoutBox(cls_id=0, label=label, score=1.0, coordinate=(0, 0, width, height))


def rgb_array(image: ImageInput) -> "np.ndarray":
    """The HxWx3 RGB uint8 array of a page: an RGB PIL image or array (gray and RGBA too)."""
    import numpy as np

    if hasattr(image, "convert") and hasattr(image, "mode"):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"a page image must be HxWx3 RGB (or gray, or RGBA); got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"a page image array must be uint8; got {array.dtype}")
    return np.ascontiguousarray(array[:, :, :3])


class LayoutDetector(Protocol):
    """Finds the layout boxes of a page, in reading order.

    Implementations may block (a model runs on CPU or GPU): call ``detect`` off the event loop,
    e.g. ``await asyncio.to_thread(detector.detect, page, options, owner=request)``; concurrent
    calls are allowed and may be batched or serialised by the implementation. ``owner`` names the
    request a page belongs to, so a batching detector can be fair between requests.
    """

    labels: Sequence[str]

    def detect(self, image: ImageInput, options: Optional[LayoutOptions] = None, *, owner: Hashable = None) -> list[LayoutBox]:
        """Boxes found on one page (an RGB PIL image or an HxWx3 RGB uint8 array)."""
        ...


class PageEngine(Protocol):
    """A layout engine that detects several pages at once, each with its own options (what a batcher drives)."""

    labels: Sequence[str]
    model_name: str

    def detect_pages(self, images: Sequence[ImageInput], options: Sequence[Optional[LayoutOptions]]) -> list[list[LayoutBox]]:
        """Boxes per page, in the pages' order."""
        ...


@dataclass(frozen=True)
class LayoutSettings:
    """A request's layout options with PaddleOCR-VL's defaults filled in: what an engine runs with.

    Per-class values are dicts keyed by class id; a class a partial dict leaves out gets the engine's
    own fallback (PaddleX applies 0.5 to a threshold and no merging), as PaddleX does.
    """

    threshold: Union[float, dict[int, float]]
    nms: bool
    unclip_ratio: Union[tuple[float, float], dict[int, tuple[float, float]]]
    merge_bboxes_mode: Union[str, dict[int, str]]
    shape_mode: str


def default_threshold(model_name: str) -> Union[float, dict[int, float]]:
    """PaddleX's threshold for a model in the PaddleOCR-VL pipelines (per class for V2, flat for V3)."""
    return V3_DEFAULT_THRESHOLD if model_name == "PP-DocLayoutV3" else dict(V2_DEFAULT_THRESHOLD)


def layout_settings(options: Optional[LayoutOptions], model_name: str = "PP-DocLayoutV2") -> LayoutSettings:
    """The settings a request's options give, PaddleOCR-VL's defaults where it set nothing.

    The options were checked when the request was read; this only fills defaults. An explicit
    ``nms=False`` turns NMS off (PaddleX's pipeline cannot).
    """
    opts = options if options is not None else LayoutOptions()
    return LayoutSettings(
        threshold=default_threshold(model_name) if opts.threshold is None else opts.threshold,
        nms=DEFAULT_LAYOUT_NMS if opts.nms is None else opts.nms,
        unclip_ratio=DEFAULT_UNCLIP_RATIO if opts.unclip_ratio is None else opts.unclip_ratio,
        merge_bboxes_mode=dict(V2_DEFAULT_MERGE_BBOXES_MODE) if opts.merge_bboxes_mode is None else opts.merge_bboxes_mode,
        shape_mode=opts.shape_mode,
    )

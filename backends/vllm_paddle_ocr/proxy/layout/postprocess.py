"""PaddleX's layout post-processing for PP-DocLayoutV2/V3, from a page's raw detections to `LayoutBox`es.

The torch engine runs the model and hands each page's raw detections here; the boxes that come out
are the ones paddlex's ``LayoutAnalysisProcess`` gives for the same detections and settings. Every
step keeps paddlex's order of operations and its float32 arithmetic, because boxes sit on score
thresholds, containment ratios and sort ties that a different order or precision would tip:

1. coordinates rounded to whole pixels; scores filtered by the threshold (per class: grouped by class);
2. NMS (IoU 0.6 within a class, 0.98 across classes, PaddleX's +1 pixel areas);
3. an ``image`` box covering almost the whole page dropped (unless nothing else is left);
4. merge modes: ``large`` drops boxes inside another, ``small`` drops boxes holding another;
5. reading order: by the model's order rank, ties by its votes;
6. PP-DocLayoutV3: a polygon per box from its mask, shaped by the shape mode;
7. unclip ratios; boxes clipped to the page (empty ones dropped); order numbers, skipping the
   labels PaddleX leaves out of the reading order.

Pure numpy, plus OpenCV and Shapely for V3's polygons.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ...recipe import UNORDERED_LABELS
from .base import LayoutBox, LayoutSettings

# NMS IoU limits: boxes of one class, of two classes (PaddleX's layout NMS).
NMS_SAME_CLASS = 0.6
NMS_OTHER_CLASS = 0.98
# An `image` box over this share of the page is the page itself, not a figure (landscape, portrait).
PAGE_SIZED_IMAGE = (0.82, 0.93)
# Merge modes: a box counts as inside another when this share of its area is.
CONTAINED = 0.9
# Masks come at a quarter of the model's input size.
MASK_STRIDE = 4
# Polygon extraction: outline simplification and how far apart kept vertices may be.
APPROX_EPSILON = 0.004
VERTEX_SPACING = 0.3
CONCAVE_KEPT_ANGLE = 120.0
SHARP_ANGLE = 45.0
# Shape mode "auto": a quad close enough to the rectangle is the rectangle; a polygon close enough to
# its quad is the quad unless it overlaps the box before it.
AUTO_RECT_IOU = 0.95
AUTO_QUAD_IOU = 0.8
AUTO_NEIGHBOUR_OVERLAP = 0.01
SHAPE_MODES: tuple[str, ...] = ("auto", "rect", "quad", "poly")


@dataclass(frozen=True)
class RawDetections:
    """One page's model output before post-processing.

    ``rows`` is float32 [N, 8]: class id, score, x1, y1, x2, y2 in page pixels, reading-order rank and
    reading-order votes (the columns of PaddleX's static model output). ``masks`` (PP-DocLayoutV3 only)
    is [N, H/4, W/4] of 0/1 at the model's input resolution H x W.
    """

    rows: np.ndarray
    masks: Optional[np.ndarray] = None


def postprocess(
    raw: RawDetections,
    page_size: tuple[int, int],
    settings: LayoutSettings,
    labels: Sequence[str],
    *,
    input_size: tuple[int, int] = (800, 800),
) -> list[LayoutBox]:
    """The boxes of one page (``page_size`` = width, height), in reading order."""
    rows = np.array(raw.rows, dtype=np.float32, copy=True)
    if rows.ndim != 2 or rows.shape[1] != 8:
        raise ValueError(f"raw detections must be N x 8, got shape {rows.shape}")
    masks = None if settings.shape_mode == "rect" else raw.masks
    rows[:, 2:6] = np.round(rows[:, 2:6]).astype(int)
    keep = _above_threshold(rows, settings.threshold)
    if settings.nms:
        keep = keep[_nms(rows[keep])]
    if len(keep) > 1:
        keep = _without_page_sized_images(rows, keep, page_size, labels)
    keep = _merged(rows, keep, settings.merge_bboxes_mode)
    if len(keep) == 0:
        return []
    keep = keep[np.lexsort((-rows[keep, 7], rows[keep, 6]))]
    boxes = rows[keep, :6]
    polygons = None
    if masks is not None:
        scale = (input_size[0] / page_size[0], input_size[1] / page_size[1])
        polygons = polygons_from_masks(boxes, np.asarray(masks)[keep], scale, settings.shape_mode)
    boxes = _unclipped(boxes, settings.unclip_ratio)
    return _page_boxes(boxes, polygons, page_size, labels)


# ---------------------------------------------------------------- filtering


def _above_threshold(rows: np.ndarray, threshold: Any) -> np.ndarray:
    """Indices of the rows over the threshold; per-class thresholds group the rows by class id."""
    if isinstance(threshold, dict):
        kept = []
        for class_id in np.unique(rows[:, 0]):
            members = np.flatnonzero(rows[:, 0] == class_id)
            limit = threshold.get(int(class_id), 0.5)
            kept.append(members[(rows[members, 1] > limit) & (rows[members, 0] > -1)])
        return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    return np.flatnonzero((rows[:, 1] > float(threshold)) & (rows[:, 0] > -1))


def _iou_plus_one(a: np.ndarray, b: np.ndarray) -> float:
    """IoU with PaddleX's inclusive pixel areas (width = x2 - x1 + 1), in its float32 steps."""
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1) * max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / float(area_a + area_b - inter)


def _nms(rows: np.ndarray) -> list[int]:
    """Positions (into ``rows``) NMS keeps, highest score first."""
    pending = list(np.argsort(rows[:, 1])[::-1])
    selected = []
    while pending:
        best, pending = pending[0], pending[1:]
        selected.append(best)
        survivors = []
        for other in pending:
            limit = NMS_SAME_CLASS if rows[best, 0] == rows[other, 0] else NMS_OTHER_CLASS
            if _iou_plus_one(rows[best, 2:6], rows[other, 2:6]) < limit:
                survivors.append(other)
        pending = survivors
    return selected


def _without_page_sized_images(
    rows: np.ndarray, keep: np.ndarray, page_size: tuple[int, int], labels: Sequence[str]
) -> np.ndarray:
    """Drop `image` boxes that cover nearly the whole page, unless that would drop every box."""
    if "image" not in labels:
        return keep
    image = labels.index("image")
    width, height = page_size
    share = PAGE_SIZED_IMAGE[0] if width > height else PAGE_SIZED_IMAGE[1]
    limit = share * (width * height)
    kept = []
    for index in keep:
        _, _, x1, y1, x2, y2 = rows[index, :6]
        if rows[index, 0] == image:
            area = (min(width, x2) - max(0, x1)) * (min(height, y2) - max(0, y1))
            if not area <= limit:
                continue
        kept.append(index)
    return np.asarray(kept, dtype=np.int64) if kept else keep


def _contained(boxes: np.ndarray) -> np.ndarray:
    """[i, j]: box i lies inside box j (at least CONTAINED of its area), in float32 as PaddleX computes it."""
    x1, y1, x2, y2 = (boxes[:, k] for k in range(2, 6))
    area = (x2 - x1) * (y2 - y1)
    width = np.maximum(0, np.minimum(x2[:, None], x2[None, :]) - np.maximum(x1[:, None], x1[None, :]))
    height = np.maximum(0, np.minimum(y2[:, None], y2[None, :]) - np.maximum(y1[:, None], y1[None, :]))
    inter = (width * height).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(area[:, None] > 0, inter / area[:, None], 0)
    inside = ratio >= CONTAINED
    np.fill_diagonal(inside, False)
    return inside


def _merged(rows: np.ndarray, keep: np.ndarray, mode: Any) -> np.ndarray:
    """Apply the merge modes: ``large`` keeps the outer box, ``small`` the inner ones, ``union`` both."""
    if not mode or len(keep) == 0:
        return keep
    boxes = rows[keep, :6]
    inside = _contained(boxes)
    classes = boxes[:, 0]
    if isinstance(mode, str):
        if mode == "large":
            return keep[~inside.any(axis=1)]
        if mode == "small":
            return keep[~inside.any(axis=0) | inside.any(axis=1)]
        return keep
    verdict = np.ones(len(keep), dtype=bool)
    for class_id, class_mode in mode.items():
        if class_mode == "large":
            # A box inside a box of this class goes.
            pairs = inside & (classes[None, :] == class_id)
            verdict &= ~pairs.any(axis=1)
        elif class_mode == "small":
            # A box of this class holding another goes, unless it is itself inside one.
            pairs = inside & (classes[:, None] == class_id)
            verdict &= ~pairs.any(axis=0) | pairs.any(axis=1)
    return keep[verdict]


def _unclipped(boxes: np.ndarray, ratio: Any) -> np.ndarray:
    """Boxes grown (or shrunk) about their centres: one (width, height) pair, or one per class."""
    if not ratio:
        return boxes
    if isinstance(ratio, dict):
        grown = []
        for row in boxes:
            class_id, score, x1, y1, x2, y2 = row
            if class_id in ratio:
                grown.append([class_id, score, *_scaled(x1, y1, x2, y2, *ratio[class_id])])
            else:
                grown.append(row)
        return np.array(grown)
    if isinstance(ratio, (int, float)):
        ratio = (float(ratio), float(ratio))
    x1, y1, x2, y2 = _scaled(boxes[:, 2], boxes[:, 3], boxes[:, 4], boxes[:, 5], ratio[0], ratio[1])
    return np.column_stack((boxes[:, 0], boxes[:, 1], x1, y1, x2, y2))


def _scaled(x1: Any, y1: Any, x2: Any, y2: Any, width_ratio: float, height_ratio: float) -> tuple[Any, Any, Any, Any]:
    width, height = x2 - x1, y2 - y1
    cx, cy = x1 + width / 2, y1 + height / 2
    half_w, half_h = width * width_ratio / 2, height * height_ratio / 2
    return cx - half_w, cy - half_h, cx + half_w, cy + half_h


def _page_boxes(
    boxes: np.ndarray, polygons: Optional[list[np.ndarray]], page_size: tuple[int, int], labels: Sequence[str]
) -> list[LayoutBox]:
    """LayoutBoxes clipped to the page (empty ones dropped), numbered in reading order."""
    width, height = page_size
    out: list[LayoutBox] = []
    position = 1
    for index, row in enumerate(boxes):
        x1, y1 = int(max(0, row[2])), int(max(0, row[3]))
        x2, y2 = int(min(width, row[4])), int(min(height, row[5]))
        if x2 <= x1 or y2 <= y1:
            continue
        label = labels[int(row[0])]
        order = None
        if label not in UNORDERED_LABELS:
            order, position = position, position + 1
        polygon = None
        if polygons is not None:
            polygon = tuple((float(x), float(y)) for x, y in np.asarray(polygons[index], dtype=np.float64).reshape(-1, 2))
        out.append(
            LayoutBox(
                cls_id=int(row[0]), label=label, score=float(row[1]), coordinate=(x1, y1, x2, y2),
                order=order, polygon_points=polygon,
            )
        )
    return out


# ---------------------------------------------------------------- PP-DocLayoutV3 polygons


def polygons_from_masks(
    boxes: np.ndarray, masks: np.ndarray, scale: tuple[float, float], shape_mode: str
) -> list[np.ndarray]:
    """One polygon per box (``boxes`` = class, score, x1, y1, x2, y2 rows) from its mask, in page pixels.

    ``scale`` is the model input size over the page size (width, height). Each box's mask is cropped
    to the box, resized to it and outlined; a box whose mask is empty keeps its rectangle.
    """
    import cv2

    scale_w, scale_h = scale[0] / MASK_STRIDE, scale[1] / MASK_STRIDE
    mask_h, mask_w = masks.shape[1:]
    # PaddleX's widest box (x2 - y1, as it computes it) sets how far apart outline vertices may be.
    widest = max(boxes[:, 4] - boxes[:, 3])
    polygons: list[np.ndarray] = []
    for index, row in enumerate(boxes):
        x1, y1, x2, y2 = row[2:6].astype(np.int32)
        rect = _rect(row[2:6])
        box_w, box_h = x2 - x1, y2 - y1
        if box_w <= 0 or box_h <= 0:
            polygons.append(rect)
            continue
        xs = np.clip([int(round(x1 * scale_w)), int(round(x2 * scale_w))], 0, mask_w)
        ys = np.clip([int(round(y1 * scale_h)), int(round(y2 * scale_h))], 0, mask_h)
        crop = masks[index, ys[0]:ys[1], xs[0]:xs[1]]
        if crop.size == 0 or np.sum(crop) == 0:
            polygons.append(rect)
            continue
        resized = cv2.resize(crop.astype(np.uint8), (int(box_w), int(box_h)), interpolation=cv2.INTER_NEAREST)
        spacing = box_w if box_w > widest * 0.6 else widest
        outline = _outline(resized, spacing)
        if outline is not None and len(outline) > 0:
            outline = outline + np.array([x1, y1])
        previous = polygons[-1] if polygons else None
        polygons.append(shaped_polygon(row[2:6], outline, shape_mode, previous))
    return polygons


def _rect(box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = np.asarray(box).astype(np.int32)
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=np.float32)


def _outline(mask: np.ndarray, spacing: float) -> Optional[np.ndarray]:
    """The largest region's simplified outline, with the vertices that carry its shape."""
    import cv2

    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    largest = max(contours, key=cv2.contourArea)
    simplified = cv2.approxPolyDP(largest, APPROX_EPSILON * cv2.arcLength(largest, True), True)
    points = np.atleast_2d(simplified.squeeze())
    return np.array(_shape_vertices(points, spacing))


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def _shape_vertices(points: np.ndarray, spacing: float) -> list[tuple[float, ...]]:
    """Convex corners, runs of concave corners that are not spikes, and enough points between far corners."""
    poly = np.array(points)
    count = len(poly)
    spacing = spacing * VERTEX_SPACING
    corners = []
    for i in range(count):
        before, here, after = poly[(i - 1) % count], poly[i], poly[(i + 1) % count]
        to_before, to_after = before - here, after - here
        turn = here - before
        ahead = after - here
        convex = turn[0] * ahead[1] - turn[1] * ahead[0] < 0
        cosine = np.clip(np.dot(_unit(to_before), _unit(to_after)), -1.0, 1.0)
        corners.append((convex, np.degrees(np.arccos(cosine)), to_before, to_after))

    concave = [i for i, corner in enumerate(corners) if not corner[0]]
    kept_concave = _concave_runs(concave, count)
    chosen = [i for i, corner in enumerate(corners) if corner[0] or (i in kept_concave and corner[1] >= CONCAVE_KEPT_ANGLE)]

    final: list[int] = []
    for position, current in enumerate(chosen):
        following = chosen[(position + 1) % len(chosen)]
        final.append(current)
        gap = np.linalg.norm(poly[current] - poly[following])
        if gap <= spacing:
            continue
        between = (
            list(range(current + 1, following))
            if following > current
            else list(range(current + 1, count)) + list(range(0, following))
        )
        if not between:
            continue
        needed = int(np.ceil(gap / spacing)) - 1
        if len(between) <= needed:
            final.extend(between)
        else:
            step = len(between) / needed
            final.extend(between[int(k * step)] for k in range(needed))

    vertices = []
    for i in sorted(set(final)):
        convex, angle, to_before, to_after = corners[i]
        here = poly[i]
        if convex and abs(angle - SHARP_ANGLE) < 1:
            direction = _unit(_unit(to_before) + _unit(to_after))
            reach = (np.linalg.norm(to_before) + np.linalg.norm(to_after)) / 2
            vertices.append(tuple(here + direction * reach))
        else:
            vertices.append(tuple(here))
    return vertices


def _concave_runs(concave: list[int], count: int) -> set[int]:
    """Concave corners that come in runs of two or more (a wrapped run counts only if both ends are runs)."""
    if not concave:
        return set()
    runs: list[int] = []
    current = [concave[0]]
    for previous, index in zip(concave, concave[1:]):
        if index - previous == 1 or (previous == count - 1 and index == 0):
            current.append(index)
        else:
            if len(current) >= 2:
                runs.extend(current)
            current = [index]
    if len(current) >= 2:
        runs.extend(current)
    wraps = len(concave) >= 2 and concave[0] == 0 and concave[-1] == count - 1
    if wraps and not (0 in runs and count - 1 in runs):
        return set()
    return set(runs)


def shaped_polygon(
    box: np.ndarray, polygon: Any, shape_mode: str, previous: Optional[np.ndarray] = None
) -> np.ndarray:
    """The polygon a shape mode makes of a box's outline: its rectangle, its outline, or their quad."""
    rect = _rect(box)
    if polygon is None:
        return rect
    polygon = np.asarray(polygon, dtype=np.float32)
    if polygon.ndim == 1:
        polygon = polygon.reshape(-1, 2)
    if len(polygon) < 4 or shape_mode == "rect":
        return rect
    if shape_mode == "poly":
        return polygon
    quad = _min_area_quad(polygon)
    if shape_mode == "quad":
        return quad if quad is not None else rect
    if shape_mode != "auto":
        raise ValueError(f"shape mode must be one of {', '.join(SHAPE_MODES)}; got {shape_mode!r}")
    if quad is not None:
        if _overlap(rect, quad, "union") >= AUTO_RECT_IOU:
            return rect
        neighbour = _overlap(previous, rect, "small") if previous is not None else 0
        if _overlap(polygon, quad, "union") >= AUTO_QUAD_IOU and neighbour < AUTO_NEIGHBOUR_OVERLAP:
            return quad
    return polygon


def _min_area_quad(polygon: np.ndarray) -> Optional[np.ndarray]:
    """The smallest rotated rectangle around a polygon, clockwise from its top-left corner."""
    import cv2

    if len(polygon) < 3:
        return None
    quad = cv2.boxPoints(cv2.minAreaRect(np.asarray(polygon, dtype=np.float32)))
    centre = quad.mean(axis=0)
    quad = quad[np.argsort(np.arctan2(quad[:, 1] - centre[1], quad[:, 0] - centre[0]))]
    return np.roll(quad, -int(np.argmin(quad[:, 0] + quad[:, 1])), axis=0)


def _overlap(first: np.ndarray, second: np.ndarray, mode: str) -> float:
    """Intersection over the union (or the smaller area) of two polygons; invalid outlines repaired.

    A degenerate polygon (no area) overlaps nothing; PaddleX divides by zero there.
    """
    from shapely.geometry import Polygon

    a, b = Polygon(np.asarray(first).tolist()), Polygon(np.asarray(second).tolist())
    a = a if a.is_valid else a.buffer(0)
    b = b if b.is_valid else b.buffer(0)
    shared = a.intersection(b).area
    whole = a.union(b).area if mode == "union" else min(a.area, b.area)
    return shared / whole if whole > 0 else 0.0

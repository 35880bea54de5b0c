"""From layout boxes to the blocks sent for recognition, following PaddleX's PaddleOCR-VL pipeline.

Steps, all on plain data: drop overlapping or tiny boxes (:func:`filter_overlaps`), merge runs of
text blocks into one stacked picture (:func:`merge_text_blocks`), find pictures lying inside a
table (:func:`table_figure_markers`), plan one VLM task per block (:func:`plan_page`) and, after
recognition, assemble the page's blocks (:func:`finish_page`). The detector's list order is the
reading order. Pillow is used only by the few functions that take or return an image.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .layout.base import LayoutBox
from .recognition.prompts import PROMPTS, Kind, Recognition, kind_for_label

BBox = tuple[int, int, int, int]
Point = tuple[float, float]
Align = Literal["left", "right", "center"]

VISUAL_LABELS = frozenset({"image", "table", "seal", "chart"})
FIGURE_LABELS = frozenset({"image", "figure", "seal"})  # pictures that can sit inside a table
MIN_SIDE = 6  # boxes thinner than this are dropped
MIN_MARKER_SIDE = 25  # pictures inside a table smaller than this are dropped, not marked
MAX_STACK_ASPECT = 3  # merged text stacks at least this tall (height / width) are not merged
MAX_PICTURE_ASPECT = 150  # vLLM refuses pictures of 200:1 or more: thinner ones are padded first

# Labels without a reading-order number (block_order null), besides the markdown-ignored ones.
SKIP_ORDER_LABELS: tuple[str, ...] = (
    "figure_title", "vision_footnote", "image", "chart", "table", "header", "header_image",
    "footer", "footer_image", "footnote", "aside_text",
)  # fmt: skip


@dataclass(frozen=True)
class Block:
    """A layout region: label, integer box ``(x1, y1, x2, y2)`` and what the detector said of it."""

    label: str
    bbox: BBox
    score: float = 1.0
    cls_id: int | None = None
    order: int | None = None
    polygon: tuple[Point, ...] | None = None
    group_id: int | None = None

    @classmethod
    def from_box(cls, box: LayoutBox) -> Block:
        """A block from a detector's box: its integer box and what the detector said of it."""
        x1, y1, x2, y2 = (int(v) for v in box.coordinate)
        return cls(
            label=box.label,
            bbox=(x1, y1, x2, y2),
            score=box.score,
            cls_id=box.cls_id,
            order=box.order,
            polygon=box.polygon_points,
        )

    @property
    def width(self) -> int:
        return self.bbox[2] - self.bbox[0]

    @property
    def height(self) -> int:
        return self.bbox[3] - self.bbox[1]


# ---------------------------------------------------------------- geometry


def area(b: BBox) -> float:
    return float(abs((b[2] - b[0]) * (b[3] - b[1])))


def intersection_area(a: BBox, b: BBox) -> float:
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return float(w * h)


def overlap_of_smaller(a: BBox, b: BBox) -> float:
    """Intersection as a share of the smaller box (0 when either box is empty)."""
    small = min(area(a), area(b))
    return intersection_area(a, b) / small if small > 0 else 0.0


def clip_box(b: BBox, width: int, height: int) -> BBox | None:
    """The box cut to the page; None when nothing of it is left."""
    x1, y1 = max(0, min(b[0], width)), max(0, min(b[1], height))
    x2, y2 = max(0, min(b[2], width)), max(0, min(b[3], height))
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def crop_size(b: BBox, width: int, height: int) -> tuple[int, int]:
    """(w, h) of the crop a box gives on a page (0 when outside)."""
    clipped = clip_box(b, width, height)
    return (0, 0) if clipped is None else (clipped[2] - clipped[0], clipped[3] - clipped[1])


def picture_path(label: str, b: BBox) -> str:
    """Markdown path of a block's picture, as PaddleX names it."""
    return f"imgs/img_in_{label}_box_{int(b[0])}_{int(b[1])}_{int(b[2])}_{int(b[3])}.jpg"


# ---------------------------------------------------------------- overlap filtering

PolygonOverlap = Callable[[Sequence[Point], Sequence[Point]], float]


def shapely_polygon_overlap(p: Sequence[Point], q: Sequence[Point]) -> float:
    """Intersection of two polygons as a share of the smaller one (needs shapely)."""
    from shapely.geometry import Polygon

    a, b = Polygon(p), Polygon(q)
    a = a if a.is_valid else a.buffer(0)
    b = b if b.is_valid else b.buffer(0)
    small = min(a.area, b.area)
    return a.intersection(b).area / small if small > 0 else 0.0


def filter_overlaps(
    blocks: Sequence[Block], *, use_polygons: bool = False, polygon_overlap: PolygonOverlap | None = None
) -> list[Block]:
    """Drop what PaddleX drops before recognition, keeping order.

    ``reference`` blocks and blocks under 6 px go; an inline formula overlapping another block by
    more than half (of the smaller) goes; of two other blocks overlapping by more than 70% the
    smaller goes, unless they are a picture-like block (image, table, seal, chart) and a different
    label (then both stay, except text-like labels over a table). With ``use_polygons`` a pair is
    only treated as overlapping when their polygons overlap by 70% too.
    """
    items = [b for b in blocks if b.label != "reference"]
    dropped: set[int] = set()
    poly_overlap = polygon_overlap or shapely_polygon_overlap
    for i, a in enumerate(items):
        if a.width < MIN_SIDE or a.height < MIN_SIDE:
            dropped.add(i)
        for j in range(i + 1, len(items)):
            if i in dropped or j in dropped:
                continue
            b = items[j]
            ratio = overlap_of_smaller(a.bbox, b.bbox)
            if "inline_formula" in (a.label, b.label) and ratio > 0.5:
                if a.label == "inline_formula":
                    dropped.add(i)
                if b.label == "inline_formula":
                    dropped.add(j)
                continue
            if ratio <= 0.7:
                continue
            if use_polygons and a.polygon is not None and b.polygon is not None:
                if poly_overlap(a.polygon, b.polygon) < 0.7:
                    continue
            labels = {a.label, b.label}
            if labels & VISUAL_LABELS and len(labels) > 1:
                if "table" not in labels or labels <= VISUAL_LABELS:
                    continue
            dropped.add(j if area(a.bbox) >= area(b.bbox) else i)
    return [b for k, b in enumerate(items) if k not in dropped]


# ---------------------------------------------------------------- merging text blocks


@dataclass(frozen=True)
class Stack:
    """Several blocks' crops pasted top to bottom on a white canvas, forming one VLM picture."""

    blocks: tuple[Block, ...]
    offsets: tuple[tuple[int, int], ...]  # top-left corner of each crop on the canvas
    size: tuple[int, int]  # canvas (width, height)


def stack_layout(blocks: Sequence[Block], sizes: Sequence[tuple[int, int]], aligns: Sequence[Align]) -> Stack:
    """Place crops of ``sizes`` one under another; ``aligns[k]`` aligns crop k+1 with all above it."""
    if len(aligns) != len(sizes) - 1:
        raise ValueError("a stack of n crops needs n - 1 alignments")
    xs = [0] * len(sizes)
    width = sizes[0][0]
    for k in range(1, len(sizes)):
        w = sizes[k][0]
        new_width = max(width, w)
        if aligns[k - 1] == "center":
            shift, x = (new_width - width) // 2, (new_width - w) // 2
        elif aligns[k - 1] == "right":
            shift, x = new_width - width, new_width - w
        else:
            shift, x = 0, 0
        xs[:k] = [v + shift for v in xs[:k]]
        xs[k] = x
        width = new_width
    ys, y = [], 0
    for _, h in sizes:
        ys.append(y)
        y += h
    return Stack(tuple(blocks), tuple(zip(xs, ys)), (width, y))


def _aligned(a: int, b: int) -> bool:
    return abs(a - b) <= 5


def _x_overlap(a: BBox, b: BBox) -> float:
    """Horizontal projection overlap over the joint extent (0 when apart)."""
    overlap = min(a[2], b[2]) - max(a[0], b[0])
    if overlap <= 0:
        return 0.0
    extent = max(a[2], b[2]) - min(a[0], b[0])
    return overlap / extent if extent > 0 else 0.0


def _merge_kind(
    prev: Block, cur: Block, blocks: Sequence[Block], pi: int, ci: int, keep: frozenset[str]
) -> Align | None:
    """How ``cur`` joins ``prev`` (its alignment), or None when they stay apart."""
    if not (cur.label == prev.label == "text"):
        return None
    p, c = prev.bbox, cur.bbox
    iou_h = _x_overlap(c, p)
    side_by_side = iou_h == 0 and c[0] > p[2] and c[1] < p[3] and c[0] - p[2] < max(p[2] - p[0], c[2] - c[0]) * 0.3
    if side_by_side:
        return "center"
    if not (
        iou_h > 0
        and c[3] >= p[1]
        and abs(c[1] - p[3]) < max(p[3] - p[1], c[3] - c[1]) * 0.5
        and _aligned(c[0], p[0]) != _aligned(c[2], p[2])
    ):
        return None
    joint = (min(p[0], c[0]), min(p[1], c[1]), max(p[2], c[2]), max(p[3], c[3]))
    touches_kept = any(
        k not in (pi, ci) and o.label in keep and intersection_area(joint, o.bbox) > 0 for k, o in enumerate(blocks)
    )
    if not touches_kept:
        return None
    return "left" if _aligned(c[0], p[0]) else "right"


@dataclass(frozen=True)
class MergedBlock:
    """A block after merging: ``stack`` on the first block of a merged group, ``follower`` on the rest."""

    block: Block
    stack: Stack | None = None
    follower: bool = False


def merge_text_blocks(
    blocks: Sequence[Block], non_merge_labels: frozenset[str], page_size: tuple[int, int]
) -> list[MergedBlock]:
    """Group consecutive text blocks side by side or stacked beside a picture, as PaddleX does.

    Every mergeable block gets ``group_id`` = the list position of its group's first block
    (singletons too), unless the stacked group would be 3x taller than wide: then its blocks stay
    separate without a group_id. Unmergeable blocks lying inside a group's span follow the group.
    """
    page_w, page_h = page_size
    mergeable = [k for k, b in enumerate(blocks) if b.label not in non_merge_labels]
    is_mergeable = set(mergeable)
    groups: list[tuple[list[int], list[Align]]] = []
    for n, k in enumerate(mergeable):
        how = None
        if n > 0:
            pk = mergeable[n - 1]
            how = _merge_kind(blocks[pk], blocks[k], blocks, pk, k, non_merge_labels)
        if how is None:
            groups.append(([k], []))
        else:
            groups[-1][0].append(k)
            groups[-1][1].append(how)
    by_start = {g[0][0]: g for g in groups}
    out: list[MergedBlock] = []
    k = 0
    while k < len(blocks):
        if k in by_start:
            members, aligns = by_start[k]
            sizes = [crop_size(blocks[m].bbox, page_w, page_h) for m in members]
            width, height = max(s[0] for s in sizes), sum(s[1] for s in sizes)
            if width == 0 or height / width >= MAX_STACK_ASPECT:
                out.extend(MergedBlock(blocks[m]) for m in members)
            else:
                stack = None
                if len(members) > 1:
                    stack = stack_layout([blocks[m] for m in members], sizes, aligns)
                for n, m in enumerate(members):
                    out.append(MergedBlock(replace(blocks[m], group_id=members[0]), stack if n == 0 else None, n > 0))
            end = members[-1]
            out.extend(MergedBlock(blocks[m]) for m in range(k + 1, end) if m not in is_mergeable)
            k = end + 1
            continue
        if blocks[k].label in non_merge_labels:
            out.append(MergedBlock(blocks[k]))
        k += 1
    return out


# ---------------------------------------------------------------- pictures inside tables


@dataclass(frozen=True)
class Figure:
    """A picture found by layout detection, saved for markdown whether or not it is a block."""

    label: str
    bbox: BBox  # clipped to the page
    path: str


def page_figures(detected: Sequence[Block], page_size: tuple[int, int]) -> list[Figure]:
    """Pictures (image, figure, seal) of the unfiltered detection, clipped to the page."""
    out = []
    for b in detected:
        if b.label not in FIGURE_LABELS:
            continue
        clipped = clip_box(b.bbox, *page_size)
        if clipped is not None:
            out.append(Figure(b.label, clipped, picture_path(b.label, b.bbox)))
    return out


@dataclass(frozen=True)
class TableMarker:
    """A picture inside a table: painted white with ``token`` written on it before recognition."""

    token: str
    box: BBox  # relative to the table crop
    path: str


def _marker_numbers(count: int) -> list[int]:
    """Marker numbers avoiding digits the model confuses with table text (0, 1, 9), shuffled."""
    numbers: list[int] = []
    n = 0
    while len(numbers) < count:
        if not set(str(n)) & {"0", "1", "9"}:
            numbers.append(n)
        n += 1
    random.Random(1024).shuffle(numbers)
    return numbers


def table_figure_markers(table: BBox, figures: Sequence[Figure]) -> tuple[list[TableMarker], list[str]]:
    """Markers to paint on a table crop, and the paths of all pictures wholly inside the table.

    Pictures inside the table leave the page's block list; those at least 25 px on their short
    side are marked so the model writes the marker where the picture sits.
    """
    numbers = _marker_numbers(len(figures))
    markers, inside = [], []
    for k, f in enumerate(figures):
        x1, y1, x2, y2 = f.bbox
        if not (x1 >= table[0] and y1 >= table[1] and x2 <= table[2] and y2 <= table[3]):
            continue
        inside.append(f.path)
        if min(x2 - x1, y2 - y1) < MIN_MARKER_SIDE:
            continue
        box = (x1 - table[0], y1 - table[1], x2 - table[0], y2 - table[1])
        markers.append(TableMarker(f"[F{numbers[k]}]", box, f.path))
    return markers, inside


_MARKER_RE = re.compile(r"\[F(\d+)\]")


def picture_tag(path: str) -> str:
    """The tag PaddleX puts in a table where a picture was (its stray quote included)."""
    return '<img src="{}" alt="Image"" />'.format(path.replace("-\n", "").replace("\n", " "))


def restore_table_figures(text: str, markers: Sequence[TableMarker], pictures: Mapping[str, str]) -> str:
    """Replace markers in a recognised table by picture tags (plus the picture's text, if any).

    ``pictures`` maps each picture block's path to its recognised content; markers whose
    picture is not a block of the page are left as they are.
    """
    by_token = {m.token: m.path for m in markers}

    def put_back(match: re.Match[str]) -> str:
        path = by_token.get(match.group(0))
        if path is None or path not in pictures:
            return match.group(0)
        content = pictures[path]
        return picture_tag(path) + (f"\n\n{content}\n\n" if content != "" else "")

    return _MARKER_RE.sub(put_back, text)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _text_box(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[int, int, int, int]:
    """(left, top, width, height) of text drawn at the origin."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(left), int(top), int(right - left), int(bottom - top)


def paint_markers(image: Image.Image, markers: Sequence[TableMarker]) -> Image.Image:
    """A copy of a table crop with each marker's box painted white and its token written inside."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    for m in markers:
        x1, y1, x2, y2 = m.box
        draw.rectangle((x1, y1, x2, y2), fill=(255, 255, 255))
        room = 0.9 * min(x2 - x1, y2 - y1)
        size, lo, hi = 4, 4, max(4, int(room))
        while lo <= hi:  # largest font whose text fits 90% of the box's short side
            mid = (lo + hi) // 2
            _, _, w, h = _text_box(draw, m.token, _font(mid))
            if w < room and h < room:
                size, lo = mid, mid + 1
            else:
                hi = mid - 1
        font = _font(size)
        left, top, w, h = _text_box(draw, m.token, font)
        draw.text((x1 + (x2 - x1 - w) // 2 - left, y1 + (y2 - y1 - h) // 2 - top), m.token, fill=(0, 0, 0), font=font)
    return out


# ---------------------------------------------------------------- crops


def crop(page: Image.Image, block: Block, *, use_polygon: bool = False) -> Image.Image:
    """The block's exact integer box cut from the page (outside its polygon whitened if asked)."""
    x1, y1, x2, y2 = block.bbox
    region = page.crop((max(0, x1), max(0, y1), min(page.width, x2), min(page.height, y2))).convert("RGB")
    if use_polygon and block.polygon is not None:
        mask = Image.new("L", region.size, 0)
        ImageDraw.Draw(mask).polygon(
            [(int(px) - max(0, x1), int(py) - max(0, y1)) for px, py in block.polygon], fill=255
        )
        white = Image.new("RGB", region.size, (255, 255, 255))
        region = Image.composite(region, white, mask)
    return region


def stack_image(page: Image.Image, stack: Stack, *, use_polygon: bool = False) -> Image.Image:
    """The stack's crops pasted on a white canvas: the picture sent for a merged group."""
    canvas = Image.new("RGB", stack.size, (255, 255, 255))
    for block, offset in zip(stack.blocks, stack.offsets):
        canvas.paste(crop(page, block, use_polygon=use_polygon), offset)
    return canvas


def ink_bounds(gray: np.ndarray) -> BBox | None:
    """Box around the dark pixels of a grayscale array (contrast-stretched, ink = <= 200 of 255)."""
    low, high = int(gray.min()), int(gray.max())
    if low == high:
        return None
    lut = np.array([int((v - low) / (high - low) * 255) if low <= v <= high else 0 for v in range(256)], dtype=np.uint8)
    ink = lut[gray.astype(np.uint8)] <= 200
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def trim_formula_margin(image: Image.Image) -> Image.Image:
    """A formula crop without its white margin (unchanged when the trimmed part would be <= 2 px)."""
    box = ink_bounds(np.asarray(image.convert("L")))
    if box is None:
        return image
    if box[2] - box[0] <= 2 or box[3] - box[1] <= 2:
        return image
    return image.crop(box)


def pad_to_aspect(image: Image.Image, max_ratio: float = MAX_PICTURE_ASPECT) -> Image.Image:
    """The picture centred on white, thickened until its long side is at most ``max_ratio`` times the short one."""
    width, height = image.size
    if width > height * max_ratio:
        size = (width, math.ceil(width / max_ratio))
    elif height > width * max_ratio:
        size = (math.ceil(height / max_ratio), height)
    else:
        return image
    canvas = Image.new("RGB", size, (255, 255, 255))
    canvas.paste(image, ((size[0] - width) // 2, (size[1] - height) // 2))
    return canvas


# ---------------------------------------------------------------- page plan and assembly


@dataclass(frozen=True)
class Task:
    """One VLM request: which picture to build and which prompt to send with it."""

    kind: Kind
    prompt: str
    stack: Stack | None = None  # several regions stacked (merged text); else the block's own crop
    markers: tuple[TableMarker, ...] = ()  # tables: pictures to paint out first
    trim_margin: bool = False  # formulas: cut the white margin off first
    upscale: bool = False  # spotting: small crops are doubled first


@dataclass(frozen=True)
class PlannedBlock:
    """A block of the page with its recognition task (None: picture, or follower of a merged group)."""

    block: Block
    task: Task | None
    picture: str | None  # markdown path of the block's picture, for picture-like labels
    hidden: bool = False  # a picture inside a table: recognised if asked, but shown only in the table


@dataclass(frozen=True)
class PagePlan:
    """Everything to do for one page, in reading order."""

    blocks: tuple[PlannedBlock, ...]
    figures: tuple[Figure, ...]  # pictures saved as markdown images besides the blocks' own

    def tasks(self) -> list[tuple[int, Task]]:
        """(position, task) of every block needing a VLM request."""
        return [(k, p.task) for k, p in enumerate(self.blocks) if p.task is not None]


def plan_page(
    boxes: Sequence[LayoutBox],
    page_size: tuple[int, int],
    recognition: Recognition,
    *,
    merge_layout_blocks: bool = True,
    use_polygons: bool = False,
    polygon_overlap: PolygonOverlap | None = None,
    collect_figures: bool = True,
) -> PagePlan:
    """Filter, merge and plan one page's blocks from the detector's boxes, in its reading order.

    ``collect_figures`` is False when layout detection is off (the page is one box, no figures).
    """
    detected = [Block.from_box(box) for box in boxes]
    figures = page_figures(detected, page_size) if collect_figures else []
    kept = filter_overlaps(detected, use_polygons=use_polygons, polygon_overlap=polygon_overlap)
    if merge_layout_blocks:
        merged = merge_text_blocks(kept, recognition.non_merge_labels(), page_size)
    else:
        merged = [MergedBlock(b) for b in kept]
    inside: set[str] = set()
    planned: list[PlannedBlock] = []
    for m in merged:
        block = m.block
        kind = None if m.follower else kind_for_label(block.label, recognition)
        task = None
        if kind is not None:
            markers: tuple[TableMarker, ...] = ()
            if kind == "table":
                found, paths = table_figure_markers(block.bbox, figures)
                markers = tuple(found)
                inside.update(paths)
            task = Task(kind, PROMPTS[kind], m.stack, markers, kind == "formula", kind == "spotting")
        picture = picture_path(block.label, block.bbox) if block.label in recognition.image_labels() else None
        planned.append(PlannedBlock(block, task, picture))
    planned = [replace(p, hidden=p.picture is not None and p.picture in inside) for p in planned]
    return PagePlan(tuple(planned), tuple(figures))


@dataclass(frozen=True)
class ParsedBlock:
    """A recognised block as it goes into markdown and ``prunedResult``."""

    label: str
    bbox: BBox
    content: str = ""
    group_id: int | None = None
    picture: str | None = None
    polygon: tuple[Point, ...] | None = None
    title_level: int | None = None  # set when titles are re-levelled across pages


def finish_page(plan: PagePlan, contents: Mapping[int, str]) -> list[ParsedBlock]:
    """The page's blocks after recognition: ``contents`` maps plan positions to post-processed text.

    Pictures inside tables leave the list and their markers in the tables become picture tags.
    """
    pictures = {p.picture: contents.get(k, "") for k, p in enumerate(plan.blocks) if p.picture is not None}
    out = []
    for k, p in enumerate(plan.blocks):
        if p.hidden:
            continue
        text = contents.get(k, "")
        if p.task is not None and p.task.markers:
            text = restore_table_figures(text, p.task.markers, pictures)
        b = p.block
        out.append(ParsedBlock(b.label, b.bbox, text, b.group_id, p.picture, b.polygon))
    return out


def block_orders(labels: Sequence[str], markdown_ignore_labels: Sequence[str]) -> list[int | None]:
    """``block_order`` of each block: 1, 2, ... skipping labels outside the reading flow (null)."""
    skip = set(SKIP_ORDER_LABELS) | set(markdown_ignore_labels)
    out: list[int | None] = []
    n = 0
    for label in labels:
        if label in skip:
            out.append(None)
        else:
            n += 1
            out.append(n)
    return out

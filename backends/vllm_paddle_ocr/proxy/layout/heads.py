"""From transformers' PP-DocLayoutV2/V3 networks to the raw detections PaddleX's static models return.

PaddleX's exported models end in a post-process inside the program: the top detections over every
(query, class) pair, boxes scaled to the page, and a reading-order rank and vote per detection. This is
that step in torch, run on the model's device, so a page's raw detections have the same columns the
static model's output has (see `postprocess.RawDetections`). PP-DocLayoutV2 first feeds its confident
queries, in PaddleX's order, to its separate reading-order model; PP-DocLayoutV3 reads the order from
its decoder and adds a mask per detection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from .postprocess import RawDetections

# Boxes enter PP-DocLayoutV2's reading-order model on a 0..1000 grid.
ORDER_GRID = 1000.0
# A V3 mask pixel is in when its probability is over this (PaddleDetection's mask threshold).
MASK_THRESHOLD = 0.5


def network_outputs(model: Any, model_name: str, pixel_values: Any) -> tuple[Any, Any, Any, Optional[Any]]:
    """(boxes cx,cy,w,h in [0, 1], class logits, reading-order logits, V3 mask logits or None) of the last decoder layer."""
    import torch

    inner = model.model(pixel_values)
    boxes = inner.intermediate_reference_points[:, -1].float()
    logits = inner.intermediate_logits[:, -1].float()
    if model_name == "PP-DocLayoutV3":
        return boxes, logits, inner.out_order_logits[:, -1].float(), inner.out_masks[:, -1]

    # PP-DocLayoutV2: queries over their class's threshold go first (in PaddleX's order), the rest are padding.
    config = model.config
    centres, sizes = boxes.split(2, dim=-1)
    corners = (torch.cat([centres - 0.5 * sizes, centres + 0.5 * sizes], dim=-1) * ORDER_GRID).clamp(0.0, ORDER_GRID)
    best, classes = logits.max(dim=-1)
    thresholds = torch.tensor(config.class_thresholds, dtype=torch.float32, device=logits.device)[classes]
    confident = best.sigmoid() >= thresholds
    # Ties are ordered as paddle's (and torch's) CPU sort orders them, whatever the device.
    order = torch.argsort(confident.int().cpu(), dim=1, descending=True).to(logits.device)
    confident = torch.take_along_dim(confident, order, dim=1)
    classes = torch.take_along_dim(classes, order, dim=1)
    corners = torch.take_along_dim(corners, order[..., None].expand(-1, -1, 4), dim=1)
    boxes = torch.take_along_dim(boxes, order[..., None].expand(-1, -1, 4), dim=1)
    logits = torch.take_along_dim(logits, order[..., None].expand(-1, -1, logits.shape[-1]), dim=1)
    padded = torch.where(confident[..., None], corners, torch.zeros_like(corners))
    class_order = torch.tensor(config.class_order, dtype=torch.long, device=logits.device)
    labels = class_order[torch.where(confident, classes, torch.zeros_like(classes))]
    dtype = next(model.reading_order.parameters()).dtype
    order_logits = model.reading_order(boxes=padded.to(dtype), labels=labels, mask=confident)
    return boxes, logits, order_logits[:, :, : config.num_queries].float(), None


def order_ranks(order_logits: Any) -> tuple[Any, Any]:
    """(rank, votes) per query: votes sum how often a query is read after the others; ranks sort the votes."""
    import torch

    scores = order_logits.sigmoid()
    count = scores.shape[1]
    ones = torch.ones(count, count, dtype=scores.dtype, device=scores.device)
    votes = (scores * ones.triu(1) + (1.0 - scores.transpose(1, 2)) * ones.tril(-1)).sum(dim=1)
    pointers = torch.argsort(votes, dim=1)
    ranks = torch.empty_like(pointers)
    ranks.scatter_(1, pointers, torch.arange(count, device=votes.device).expand_as(pointers))
    return ranks, votes


def top_detections(
    boxes: Any, logits: Any, order_logits: Any, masks: Optional[Any], page_sizes: Sequence[tuple[int, int]]
) -> Any:
    """The static model's rows per page: the top (query, class) pairs with page-pixel boxes and order columns.

    Returns (rows [B, K, 8] float32, binary masks [B, K, h, w] or None), K = the number of queries.
    """
    import torch

    ranks, votes = order_ranks(order_logits)
    sizes = torch.tensor([[w, h, w, h] for w, h in page_sizes], dtype=torch.float32, device=boxes.device)
    centres, extents = boxes.split(2, dim=-1)
    corners = torch.cat([centres - 0.5 * extents, centres + 0.5 * extents], dim=-1) * sizes[:, None, :]
    count, classes = logits.shape[1], logits.shape[2]
    scores, flat = torch.topk(logits.sigmoid().flatten(1), count, dim=-1)
    labels = flat % classes
    query = flat // classes
    corners = torch.take_along_dim(corners, query[..., None].expand(-1, -1, 4), dim=1)
    rows = torch.cat(
        [
            labels[..., None].float(),
            scores[..., None],
            corners,
            torch.take_along_dim(ranks, query, dim=1)[..., None].float(),
            torch.take_along_dim(votes, query, dim=1)[..., None],
        ],
        dim=-1,
    )
    if masks is None:
        return rows, None
    pages = torch.arange(masks.shape[0], device=masks.device)[:, None]
    picked = masks[pages, query].float()  # a copy: the sigmoid can be taken in place
    return rows, picked.sigmoid_() > MASK_THRESHOLD


def raw_detections(model: Any, model_name: str, pixel_values: Any, page_sizes: Sequence[tuple[int, int]]) -> list[RawDetections]:
    """Each page's raw detections, on the CPU as numpy, from one forward pass over the batch."""
    rows, masks = top_detections(*network_outputs(model, model_name, pixel_values), page_sizes)
    rows = rows.cpu().numpy().astype(np.float32, copy=False)
    if masks is None:
        return [RawDetections(page) for page in rows]
    masks = masks.cpu().numpy().astype(np.uint8)
    return [RawDetections(page, page_masks) for page, page_masks in zip(rows, masks)]

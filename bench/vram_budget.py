"""What PaddleOCR-VL claims on real cards with the VRAM budget, next to vLLM's and PaddleX's fixed fractions.

Runs with no GPU: the cards are recorded NVML snapshots (tests/unit/data/gpus/*.json) replayed through
the same NVML boundary the runtime uses, and the model is PaddleOCR-VL-0.9B as a header-only checkpoint
(its exact tensor shapes, from transformers' PaddleOCRVLForConditionalGeneration on the meta device;
no weights are downloaded or written).

    .venv/bin/python bench/vram_budget.py

The last table compares GPUStack's booking per instance on each card: the fraction of the card a
catalog planned for 24 GiB books (the baseline), against the claim in bytes the 2.x catalog books, which
the runtime fits vLLM inside wherever the instance lands.
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
import tempfile
from pathlib import Path

from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning import vram
from vllm_paddle_ocr.backends.vllm_paddle_ocr.deploy.catalog import (
    PUBLISHED_PREPROCESSOR_CONFIG,
    published_layout_bytes,
    PUBLISHED_TEXT_CONFIG,
    PUBLISHED_VISION_CONFIG,
)
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.memory_needs import (
    CUDA_CONTEXT_BYTES,
    ModelMemoryNeeds,
    memory_needs,
    read_checkpoint,
)
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.model_repo import resolve_model_repo
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.nvml import GpuSnapshot, RecordedNvml, read_snapshot
from vllm_paddle_ocr.backends.vllm_paddle_ocr.sizes import GiB

ROOT = Path(__file__).resolve().parents[1]
CARDS_DIR = ROOT / "tests" / "unit" / "data" / "gpus"
CARDS = (
    ("H100 80GB, empty", "h100_80gb_empty"),
    ("A100 40GB, 30 GiB taken", "a100_40gb_shared"),
    ("L4 24GB, empty", "l4_24gb_empty"),
    ("RTX 4090 24GB, empty", "rtx4090_24gb_empty"),
    ("RTX 5060 8GB, desktop", "rtx5060_8gb_desktop"),
    ("RTX 4090 24GB, full", "rtx4090_24gb_full"),
)
CONCURRENCIES = (1, 16, 64)
GOAL_BYTES = 8 * GiB  # an 80 GiB card at concurrency 64 claims at most this
# vLLM's default --gpu-memory-utilization (config/cache.py; 0.9 before v0.11) and PaddleX's server's.
VLLM_DEFAULT_FRACTION = 0.92
PADDLEX_SERVER_FRACTION = 0.5
PUBLISHED_PARAMETERS = 905_601_648  # what transformers lists for this config, used if it is not installed


# The layout model on the instance's GPU, as the torch engine runs it by default (--layout-device cpu
# leaves it off the card: `--layout-on-cpu` here).
LAYOUT_BYTES = published_layout_bytes("0.9B")
_layout_bytes = LAYOUT_BYTES


def options(**fields) -> vram.VramOptions:
    """The budget's options with this run's layout model part."""
    return vram.VramOptions(layout_model_bytes=_layout_bytes, **fields)


def tensor_shapes() -> dict[str, list[int]]:
    """Every tensor of PaddleOCR-VL-0.9B with its shape, without allocating any of them."""
    try:
        import torch
        from transformers import PaddleOCRVLConfig, PaddleOCRVLForConditionalGeneration
        from transformers.utils import logging as hf_logging
    except ImportError:
        return {"weights": [PUBLISHED_PARAMETERS]}
    hf_logging.set_verbosity_error()  # config-default chatter, not about the sizes
    config = PaddleOCRVLConfig(
        text_config=dict(PUBLISHED_TEXT_CONFIG), vision_config=dict(PUBLISHED_VISION_CONFIG), tie_word_embeddings=False
    )
    with torch.device("meta"):
        model = PaddleOCRVLForConditionalGeneration(config)
    return {name: list(t.shape) for name, t in model.state_dict().items()}


def write_header_only_model(root: Path) -> Path:
    """config.json, preprocessor_config.json and a sparse model.safetensors (real header, no data)."""
    shapes = tensor_shapes()
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2 * math.prod(shape)
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    with (root / "model.safetensors").open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + offset)
    config = {"architectures": ["PaddleOCRVLForConditionalGeneration"], "model_type": "paddleocr_vl",
              "torch_dtype": "bfloat16", "tie_word_embeddings": False, "vision_config": PUBLISHED_VISION_CONFIG,
              **PUBLISHED_TEXT_CONFIG}
    (root / "config.json").write_text(json.dumps(config))
    (root / "preprocessor_config.json").write_text(json.dumps(PUBLISHED_PREPROCESSOR_CONFIG))
    return root


def snapshot(name: str) -> GpuSnapshot:
    return read_snapshot({}, api=RecordedNvml.from_file(CARDS_DIR / f"{name}.json"))


def claim_cell(needs: ModelMemoryNeeds, snap: GpuSnapshot, concurrency: int) -> str:
    try:
        plan = vram.plan_vram(needs, snap, options(concurrency=concurrency))
    except vram.VramError:
        return "refused"
    cell = f"{plan.claim_bytes / GiB:.2f}"
    return cell if plan.concurrency == concurrency else f"{cell} (c={plan.concurrency})"


def fixed_cell(snap: GpuSnapshot, fraction: float) -> str:
    gpu = snap.gpus[0]
    booked = math.ceil(fraction * gpu.cuda_total_bytes)
    fits = gpu.free_bytes - CUDA_CONTEXT_BYTES >= booked  # vLLM's start-up check
    return f"{booked / GiB:.2f}" + ("" if fits else " fails")


def instances_with_plan(needs: ModelMemoryNeeds, snap: GpuSnapshot, concurrency: int) -> int:
    """Instances started one after another (the start lock), each at `concurrency`, until one is refused."""
    free, count = snap.gpus[0].free_bytes, 0
    each = options(concurrency=concurrency, concurrency_floor=concurrency)
    while count < 1000:
        current = snap.model_copy(deep=True)
        current.gpus[0].free_bytes = free
        try:
            plan = vram.plan_vram(needs, current, each)
        except vram.VramError:
            break
        count += 1
        free -= max(plan.claim_bytes, plan.needed_bytes)
    return count


def instances_with_fraction(snap: GpuSnapshot, fraction: float) -> int:
    gpu, count = snap.gpus[0], 0
    free = gpu.free_bytes
    booked = math.ceil(fraction * gpu.cuda_total_bytes)
    while free - CUDA_CONTEXT_BYTES >= booked:  # each instance fills its fraction, plus its own context
        count += 1
        free -= booked + CUDA_CONTEXT_BYTES
    return count


def booking_rows(needs: ModelMemoryNeeds) -> list[dict]:
    """Per card: what GPUStack 2.3 books with a fraction planned for 24 GiB (the baseline) and with the claim in bytes.

    'takes' is what the instance holds at the default concurrency: the plan's estimate, the same on any card.
    """
    claim = vram.gpustack_claim(needs, options())
    # GPUStack 2.3 books a custom backend at max(its estimate, total x a declared fraction); the estimate
    # is the weight files x 1.2 + 2 GiB (policies/utils.py, estimate_model_vram).
    gpustack_estimate = int(needs.checkpoint_bytes * 1.2) + 2 * GiB
    planned_24 = vram.plan_vram(needs, None, options(gpu_total_bytes=24 * GiB)).gpu_memory_utilization
    rows = []
    for label, name in CARDS[:5]:
        snap = snapshot(name)
        gpu = snap.gpus[0]
        inside = vram.plan_vram(needs, snap, options(vram_claim_bytes=claim))
        takes = inside.needed_bytes
        by_share = max(gpustack_estimate, int(planned_24 * gpu.total_bytes))
        rows.append({
            "card": label,
            "total_gib": round(gpu.total_bytes / GiB, 2),
            "takes_gib": round(takes / GiB, 2),
            "share_booked_gib": round(by_share / GiB, 2),
            "share_over_takes": round(by_share / takes, 2),
            "share_instances": gpu.total_bytes // by_share,
            "claim_booked_gib": round(claim / GiB, 2),
            "claim_over_takes": round(claim / takes, 2),
            "claim_instances": gpu.total_bytes // claim,
            "vllm_fraction": vram.fraction_text(inside.gpu_memory_utilization),
            "concurrency": inside.concurrency,
        })
    return rows


def print_table(headers: list[str], keys: list[str], rows: list[dict]) -> None:
    table = [headers] + [[str(row[k]) for k in keys] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(headers))]
    for i, line in enumerate(table):
        print("  ".join(cell.ljust(w) if j == 0 else cell.rjust(w) for j, (cell, w) in enumerate(zip(line, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the table as JSON rows")
    parser.add_argument("--layout-on-cpu", action="store_true", help="leave the layout model off the GPU")
    args = parser.parse_args(argv)
    global _layout_bytes
    _layout_bytes = 0 if args.layout_on_cpu else LAYOUT_BYTES

    with tempfile.TemporaryDirectory() as tmp:
        repo = resolve_model_repo(write_header_only_model(Path(tmp)))
        checkpoint = read_checkpoint(repo.vlm_dir)
        # What the launch plan passes: the vLLM recipe's flags and its --max-model-len (the defaults).
        needs = memory_needs(repo.config, repo.preprocessor, checkpoint)
        worst = memory_needs(repo.config, repo.preprocessor, checkpoint, max_new_tokens=4096)

    rows = []
    for label, name in CARDS:
        snap = snapshot(name)
        gpu = snap.gpus[0]
        rows.append({
            "card": label,
            "total_gib": round(gpu.cuda_total_bytes / GiB, 2),
            "free_gib": round(gpu.free_bytes / GiB, 2),
            **{f"plan_c{c}": claim_cell(needs, snap, c) for c in CONCURRENCIES},
            "vllm_0.92": fixed_cell(snap, VLLM_DEFAULT_FRACTION),
            "vllm_0.9": fixed_cell(snap, 0.9),
            "paddlex_0.5": fixed_cell(snap, PADDLEX_SERVER_FRACTION),
            "instances_plan_c16": instances_with_plan(needs, snap, vram.DEFAULT_CONCURRENCY),
            "instances_plan_c64": instances_with_plan(needs, snap, 64),
            "instances_vllm": instances_with_fraction(snap, VLLM_DEFAULT_FRACTION),
            "instances_paddlex": instances_with_fraction(snap, PADDLEX_SERVER_FRACTION),
        })
    h100 = vram.plan_vram(needs, snapshot("h100_80gb_empty"), options(concurrency=64))
    h100_worst = vram.plan_vram(worst, snapshot("h100_80gb_empty"), options(concurrency=64))
    bookings = booking_rows(needs)
    if args.json:
        print(json.dumps({"rows": rows, "bookings": bookings, "goal_met": h100.claim_bytes <= GOAL_BYTES}, indent=2))
        return 0 if h100.claim_bytes <= GOAL_BYTES else 1

    print("PaddleOCR-VL-0.9B: GiB claimed per instance (GPUStack books this; vLLM checks it against free memory)")
    print(
        f"layout model: {'on the CPU (not on the card)' if not _layout_bytes else f'PP-DocLayoutV2 on the instance GPU, {_layout_bytes / GiB:.2f} GiB (its CUDA context, half-precision weights, a batch of pages)'}"
    )
    print(
        f"model: {needs.parameter_count:,} parameters, {needs.weight_bytes / GiB:.2f} GiB bf16 weights, "
        f"{needs.kv_bytes_per_token} KV bytes/token; --max-num-batched-tokens {needs.max_num_batched_tokens}, "
        f"--max-model-len {needs.max_model_len}; one block = {needs.image_tokens} image tokens "
        f"(max_pixels {needs.max_pixels}) + {needs.prompt_tokens} prompt + {needs.max_new_tokens} new "
        f"= {needs.tokens_per_request} tokens"
    )
    print("plan cN = this budget at concurrency N ('(c=M)': lowered to fit free memory); "
          "'fails' = vLLM's start-up free-memory check refuses")
    print()
    headers = ["card", "total", "free", "plan c1", "plan c16", "plan c64", "vLLM 0.92", "vLLM 0.9", "PaddleX 0.5",
               "fit c16", "fit c64", "fit vLLM", "fit PaddleX"]
    keys = ["card", "total_gib", "free_gib", "plan_c1", "plan_c16", "plan_c64", "vllm_0.92", "vllm_0.9", "paddlex_0.5",
            "instances_plan_c16", "instances_plan_c64", "instances_vllm", "instances_paddlex"]
    print_table(headers, keys, rows)
    print()
    print("fit = PaddleOCR-VL instances that start on the card one after another (the per-GPU start lock)")
    print(
        f"H100 80GB at concurrency 64: {h100.claim_bytes / GiB:.2f} GiB claimed "
        f"({h100.gpustack_parameter}, --kv-cache-memory-bytes {h100.kv_cache_memory_bytes}, "
        f"--max-num-seqs {h100.max_num_seqs}); goal <= {GOAL_BYTES / GiB:.0f} GiB: "
        + ("met" if h100.claim_bytes <= GOAL_BYTES else "NOT met")
    )
    print(f"  {vram.describe_breakdown(h100.breakdown)}")
    print(
        f"sized for PaddleX's 4096-token answer cap instead ({worst.tokens_per_request} tokens a block), "
        f"the same plan would claim {h100_worst.claim_bytes / GiB:.2f} GiB"
    )
    print()
    print(
        "GPUStack 2.3's booking per instance at concurrency 16, booked over taken (1.00 = the booking is what the "
        "instance holds; below 1.00 it places more than the card holds): --gpu-memory-utilization planned for a "
        "24 GiB card (the baseline), and GPUSTACK_MODEL_VRAM_CLAIM in bytes; fit = instances GPUStack places on the card"
    )
    print_table(
        ["card", "total", "takes", "share booked", "share/takes", "share fit", "claim booked", "claim/takes",
         "claim fit", "vLLM fraction inside", "c"],
        ["card", "total_gib", "takes_gib", "share_booked_gib", "share_over_takes", "share_instances", "claim_booked_gib",
         "claim_over_takes", "claim_instances", "vllm_fraction", "concurrency"],
        bookings,
    )
    return 0 if h100.claim_bytes <= GOAL_BYTES else 1


if __name__ == "__main__":
    sys.exit(main())

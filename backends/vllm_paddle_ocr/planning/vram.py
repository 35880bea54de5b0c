"""The VRAM budget: how much of a GPU PaddleOCR-VL claims, so it can share the card with other models.

`plan_vram` is pure: model needs + a GPU snapshot + options in, a `VramPlan` out (or a `VramError` whose
message is the refusal a user reads). It mirrors the check vLLM makes at start-up
(v1/worker/utils.py:request_memory): vLLM takes its own memory snapshot after creating its CUDA context
(and NCCL buffers, with tensor parallelism) and refuses unless `free >= ceil(gpu_memory_utilization * total)`, so the plan refuses (or lowers the
concurrency) before vLLM would.

How the fraction is built (vLLM >= 0.11 with --kv-cache-memory-bytes):
  KV cache   = max(concurrency x tokens per request, max_model_len) x KV bytes per token
  needed     = weights + model buffers + profiling peak + non-torch + CUDA graphs + CUDA context
               (+ NCCL buffers with tensor parallelism) + KV cache
  fraction   = needed x (1 + margin) / total, rounded up to 0.01
vLLM then gets `--gpu-memory-utilization <fraction> --kv-cache-memory-bytes <KV cache>`: the KV cache is
exactly what the concurrency needs and the fraction (what GPUStack books, total x fraction) covers all
the process holds, its CUDA context included. Without --kv-cache-memory-bytes vLLM gives the KV cache
whatever the fraction leaves after its profiling, and its CUDA context and NCCL buffers sit outside it.

A control plane that books bytes instead of a share of the card (GPUStack 2.x reads
GPUSTACK_MODEL_VRAM_CLAIM from the model's environment) gets one figure for every card:
  claim      = needed x (1 + margin), rounded up to a MiB (what `plan --gpustack-claim` prints)
and an instance started with that claim (`VramOptions.vram_claim_bytes`) fits inside it on whatever card
it lands on: the concurrency asked, or the largest below it that fits the claim, and vLLM is asked for
the claim less what it holds before its check, as a fraction of that card's total rounded down:
  fraction   = (claim - CUDA context [- NCCL buffers]) / total, rounded down to 0.000001
With --kv-cache-memory-bytes vLLM uses the fraction only for that start-up check, so the instance holds
the planned bytes and needs the claim free to start: what the scheduler kept free for it.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from pydantic import BaseModel, Field

from vllm_paddle_ocr.plugin.errors import ServeRequestError, VllmPaddleOcrError
from vllm_paddle_ocr.plugin.records import EngineInfo, MemoryBreakdown, PlannedGpu, ServeRequest, VramPlan

from ..recipe import KV_BLOCK_TOKENS
from ..sizes import MiB, format_bytes, parse_size
from .memory_needs import (
    CUDA_CONTEXT_BYTES,
    MODEL_BUFFER_BYTES,
    NCCL_BYTES,
    NON_TORCH_BYTES,
    ModelMemoryNeeds,
    cuda_graph_bytes,
)
from .nvml import NO_GPU, GpuSnapshot, describe_holders, gpu_label, read_snapshot

# 16 in-flight block requests: PaddleX sends every block of a page at once and a page has 10 to 30
# blocks, so 16 keeps the GPU busy for a 0.9B model while one page takes about two rounds; the KV cache
# for 16 blocks is well under 1 GiB.
DEFAULT_CONCURRENCY = 16
# Below 4 in-flight blocks a page is recognised nearly one block at a time; refuse instead of starting
# something that slow, so a scheduler places the instance elsewhere.
DEFAULT_CONCURRENCY_FLOOR = 4
# Safety margin, as a share of the estimated need: the estimated parts (profiling peak, graphs, context)
# are what can be off, and they scale with the need, not with the card. The rounding up to 0.01 of the
# card adds on top of it.
DEFAULT_MARGIN = 0.05
# The fraction is rounded up to 0.01 of the card; where that step alone would not fit the free memory
# (0.01 of a 141 GiB card is 1.4 GiB) it is rounded up to 0.001 instead.
FRACTION_STEPS = (0.01, 0.001)
# GPUStack 2.x books this many bytes for an instance, on any card, when the model's environment sets it
# (policies/utils.py, get_vram_claim_from_model_env); the instance's process inherits that environment.
VRAM_CLAIM_ENV = "GPUSTACK_MODEL_VRAM_CLAIM"
# Claims are printed rounded up to a whole MiB, a figure people can copy into a catalog.
CLAIM_ROUNDING = MiB
# Inside a claim the fraction is rounded down to a millionth of the card (under 150 KiB of the largest
# cards), so what vLLM requests never exceeds the claim.
CLAIM_FRACTION_DIGITS = 6


class VramError(VllmPaddleOcrError):
    """The budget refuses: the message says which GPU, free versus needed bytes, and what holds memory."""

    def __init__(self, message: str, *, gpu: "PlannedGpu | None" = None, needed_bytes: int | None = None) -> None:
        super().__init__(message)
        self.gpu = gpu
        self.needed_bytes = needed_bytes


class VramOptions(BaseModel):
    """What the user and the engine decide: concurrency, explicit vLLM memory flags, planning overrides."""

    concurrency: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)  # the user's, kept
    kv_cache_memory_bytes: int | None = Field(default=None, ge=0)  # the user's, kept
    max_num_seqs: int | None = Field(default=None, ge=1)  # the user's; else the plan sets it to the concurrency
    gpu_total_bytes: int | None = Field(default=None, gt=0)  # plan for a card of this size, no NVML
    gpu_free_bytes: int | None = Field(default=None, ge=0)
    margin: float = Field(default=DEFAULT_MARGIN, ge=0, lt=1)  # share of the needed bytes added for safety
    concurrency_floor: int = Field(default=DEFAULT_CONCURRENCY_FLOOR, ge=1)
    kv_cache_flag_supported: bool = True
    tensor_parallel_size: int = Field(default=1, ge=1)
    enforce_eager: bool = False  # no CUDA graphs
    # Bytes a control plane booked for the instance (GPUSTACK_MODEL_VRAM_CLAIM), split evenly over its
    # GPUs as GPUStack books it: the plan fits vLLM inside it on whatever card it lands on.
    vram_claim_bytes: int | None = Field(default=None, gt=0)
    layout_model_bytes: int = Field(default=0, ge=0)  # the layout model on the same GPU (memory_needs.layout_model_bytes)


def describe_gpu(gpu: PlannedGpu) -> str:
    """How messages name a card: index, model and UUID, or the planned card's name."""
    if gpu.index is None or gpu.uuid is None:
        return gpu.name
    return gpu_label(gpu.index, gpu.name, gpu.uuid, is_mig=gpu.is_mig)


def describe_gpu_holders(gpu: PlannedGpu) -> str:
    """Who holds memory on a card, largest first."""
    if gpu.index is None:
        return "a planned card; no processes read"
    return describe_holders(gpu.processes)


def describe_breakdown(parts: MemoryBreakdown) -> str:
    """One line: the parts that make up a breakdown's total."""
    named = [
        ("weights", parts.weights + parts.model_buffers),
        ("profiling peak", parts.activation_peak),
        ("CUDA graphs", parts.cuda_graphs),
        ("non-torch", parts.non_torch),
        ("CUDA context", parts.cuda_context),
        *([("NCCL", parts.nccl_buffers)] if parts.nccl_buffers else []),
        ("KV cache", parts.kv_cache),
        *([("layout model", parts.layout_model)] if parts.layout_model else []),
    ]
    return ", ".join(f"{name} {format_bytes(value)}" for name, value in named)


def summary(plan: VramPlan) -> str:
    """One line for `plan`: fraction, bytes claimed, KV cache and concurrency."""
    kv = f"KV cache {format_bytes(plan.breakdown.kv_cache)} for {plan.concurrency} in-flight blocks of {plan.tokens_per_request} tokens"
    if not plan.available or plan.gpu is None or plan.gpu_memory_utilization is None:
        return f"claims {format_bytes(plan.claim_bytes)} per GPU; {kv}"
    return (
        f"{fraction_text(plan.gpu_memory_utilization)} of {describe_gpu(plan.gpu)}: {format_bytes(plan.claim_bytes)} claimed "
        f"of {format_bytes(plan.gpu.cuda_total_bytes)} ({format_bytes(plan.gpu.free_bytes)} free); {kv}"
    )


def gpustack_lines(plan: VramPlan) -> list[str]:
    """What to book in GPUStack for this plan: bytes for 2.x (any card), the fraction for 0.7 (this card)."""
    lines = []
    if plan.gpustack_claim_bytes is not None:
        line = (
            f"GPUStack 2.x: env {VRAM_CLAIM_ENV}={plan.gpustack_claim_bytes} ({format_bytes(plan.gpustack_claim_bytes)} "
            f"for {_blocks(plan.requested_concurrency)}, on any card)"
        )
        if plan.gpustack_instances_per_gpu is not None and plan.gpu is not None:
            line += f"; {plan.gpustack_instances_per_gpu} of them fit {describe_gpu(plan.gpu)}"
        lines.append(line)
    if plan.gpustack_parameter is not None:
        lines.append(f"GPUStack 0.7: {plan.gpustack_parameter} (planned for this card)")
    return lines


def gpustack_claim_of(plan: VramPlan | None) -> int:
    """The claim `plan --gpustack-claim` prints, or why there is none."""
    if plan is None:
        raise VramError("no VRAM budget was planned for this launch, so there is no claim to print")
    if plan.gpustack_claim_bytes is None:
        raise VramError(
            "the user's --gpu-memory-utilization books a share of each card, not bytes; "
            "leave it out to get a claim that holds on any card"
        )
    return plan.gpustack_claim_bytes


# --------------------------------------------------------------------------------------------------------
# The pure core.


def fraction_text(fraction: float) -> str:
    """A fraction as vLLM and GPUStack should read it: two decimals, more only where the plan used finer steps."""
    for digits in range(2, CLAIM_FRACTION_DIGITS):
        text = f"{fraction:.{digits}f}"
        if abs(float(text) - fraction) < 1e-9:
            return text
    return f"{fraction:.{CLAIM_FRACTION_DIGITS}f}"


def gpustack_parameter(fraction: float) -> str:
    """The fraction as one backend_parameters item in the `=` form GPUStack's schedulers read."""
    return f"--gpu-memory-utilization={fraction_text(fraction)}"


def _ceil_step(value: float, step: float = FRACTION_STEPS[0]) -> float:
    """Round up to the step, ignoring float noise (0.07000000001 -> 0.07)."""
    return round(math.ceil(round(value / step, 6)) * step, 10)


def _requested(fraction: float, gpu: PlannedGpu) -> int:
    """What vLLM requests for a fraction: ceil(total x fraction) (v1/worker/utils.py:request_memory)."""
    return math.ceil(gpu.cuda_total_bytes * fraction)


def _kv_tokens(needs: ModelMemoryNeeds, concurrency: int) -> int:
    """Tokens the KV cache must hold: the concurrency's requests, and never less than one max_model_len request."""
    floor = math.ceil(needs.max_model_len / KV_BLOCK_TOKENS) * KV_BLOCK_TOKENS
    return max(concurrency * needs.tokens_per_request, floor)


def _breakdown(needs: ModelMemoryNeeds, options: VramOptions, concurrency: int, kv_bytes: int | None = None) -> MemoryBreakdown:
    tp = options.tensor_parallel_size
    seqs = options.max_num_seqs or concurrency
    if kv_bytes is None:
        kv_bytes = _kv_tokens(needs, concurrency) * needs.kv_bytes_per_token_per_gpu(tp)
    return MemoryBreakdown(
        weights=needs.weight_bytes_per_gpu(tp),
        model_buffers=MODEL_BUFFER_BYTES,
        activation_peak=needs.activation_peak_bytes(seqs),
        non_torch=NON_TORCH_BYTES,
        cuda_graphs=0 if options.enforce_eager else cuda_graph_bytes(seqs),
        cuda_context=CUDA_CONTEXT_BYTES,
        nccl_buffers=NCCL_BYTES if tp > 1 else 0,
        kv_cache=kv_bytes,
        layout_model=options.layout_model_bytes,
    )


def _inside_fraction(parts: MemoryBreakdown, options: VramOptions) -> int:
    """Bytes the fraction must cover: all of it with --kv-cache-memory-bytes, else what vLLM profiles.

    With a fixed KV cache vLLM holds only its parts, so the fraction (what a control plane books) covers
    the layout model too; without one vLLM fills the fraction, and the layout model sits beside it.
    """
    if options.kv_cache_flag_supported:
        return parts.total
    return parts.total - parts.before_snapshot - parts.layout_model


def claim_needed(parts: MemoryBreakdown, options: VramOptions) -> int:
    """Bytes the instance takes on each GPU with the margin: the least a control plane booking bytes may book."""
    inside = _inside_fraction(parts, options)
    return math.ceil(inside * (1 + options.margin)) + parts.total - inside


def _round_claim(value: int) -> int:
    return -(-value // CLAIM_ROUNDING) * CLAIM_ROUNDING


def gpustack_claim(needs: ModelMemoryNeeds, options: VramOptions, concurrency: int | None = None) -> int:
    """GPUSTACK_MODEL_VRAM_CLAIM for a concurrency: the bytes of all the instance's GPUs, the same on any card."""
    chosen = concurrency or options.concurrency or DEFAULT_CONCURRENCY
    parts = _breakdown(needs, options, chosen, options.kv_cache_memory_bytes)
    return _round_claim(claim_needed(parts, options)) * options.tensor_parallel_size


def _claim_per_gpu(options: VramOptions) -> int | None:
    """The booked bytes on each GPU: GPUStack splits a claim evenly over an instance's GPUs."""
    if options.vram_claim_bytes is None:
        return None
    return options.vram_claim_bytes // options.tensor_parallel_size


def _claim_fraction(room: int, gpus: list[PlannedGpu]) -> float:
    """The largest fraction of every GPU whose request (vLLM's ceil(total x fraction)) stays inside `room` bytes."""
    scale = 10**CLAIM_FRACTION_DIGITS
    fractions = []
    for gpu in gpus:
        steps = max(room, 0) * scale // gpu.cuda_total_bytes
        while steps > 0 and _requested(steps / scale, gpu) > room:  # float noise in vLLM's ceil(total x fraction)
            steps -= 1
        fractions.append(steps / scale)
    return min(fractions)


def _fraction_for(inside: int, gpus: list[PlannedGpu], margin: float, step: float = FRACTION_STEPS[0]) -> float:
    """The one fraction every GPU gets: the largest any of them needs with the margin, rounded up to the step."""
    return max(_ceil_step(inside * (1 + margin) / gpu.cuda_total_bytes, step) for gpu in gpus)


def _shortfall(fraction: float, gpus: list[PlannedGpu], before_snapshot: int) -> tuple[PlannedGpu, int]:
    """The tightest GPU and by how much vLLM's start-up check would miss on it (<= 0: it passes)."""
    misses = [(_requested(fraction, gpu) + before_snapshot - gpu.free_bytes, gpu) for gpu in gpus]
    miss, gpu = max(misses, key=lambda item: item[0])
    return gpu, miss


def _choose_fraction(parts: MemoryBreakdown, options: VramOptions, gpus: list[PlannedGpu]) -> tuple[float, PlannedGpu, int]:
    """(fraction, tightest GPU, shortfall): the coarsest rounding that passes vLLM's check, else the coarsest.

    Inside a booked claim the fraction is the claim's share of the card instead, less what sits beside
    vLLM's request: its CUDA context (and NCCL buffers), and the layout model when vLLM fills its fraction.
    With a fixed KV cache the layout model loads after vLLM's check, into the claim vLLM did not take.
    """
    beside = parts.before_snapshot + (0 if options.kv_cache_flag_supported else parts.layout_model)
    claim = _claim_per_gpu(options)
    if claim is not None:
        fraction = _claim_fraction(claim - beside, gpus)
        return (fraction, *_shortfall(fraction, gpus, beside))
    inside = _inside_fraction(parts, options)
    tried = []
    for step in FRACTION_STEPS:
        fraction = _fraction_for(inside, gpus, options.margin, step)
        tightest, miss = _shortfall(fraction, gpus, beside)
        if fraction <= 1.0 and miss <= 0:
            return fraction, tightest, miss
        tried.append((fraction, tightest, miss))
    return tried[0]


def _fits(needs: ModelMemoryNeeds, options: VramOptions, gpus: list[PlannedGpu], concurrency: int) -> bool:
    parts = _breakdown(needs, options, concurrency, options.kv_cache_memory_bytes)
    if not _fits_claim(parts, options):
        return False
    fraction, _gpu, miss = _choose_fraction(parts, options, gpus)
    return fraction <= 1.0 and miss <= 0


def _fits_claim(parts: MemoryBreakdown, options: VramOptions) -> bool:
    """Whether the instance fits the bytes booked for it (always, when nothing was booked)."""
    claim = _claim_per_gpu(options)
    return claim is None or claim_needed(parts, options) <= claim


def _largest_fitting(
    needs: ModelMemoryNeeds, options: VramOptions, gpus: list[PlannedGpu], lo: int, hi: int
) -> int | None:
    """The largest concurrency in [lo, hi] that fits (fitting only gets harder as concurrency grows)."""
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        if _fits(needs, options, gpus, mid):
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def _blocks(n: int) -> str:
    return f"{n} in-flight block" + ("" if n == 1 else "s")


def _refusal(gpu: PlannedGpu, fraction: float, what: str, parts: MemoryBreakdown, advice: str) -> VramError:
    requested = _requested(min(fraction, 1.0), gpu)
    needed = requested + parts.before_snapshot
    before = "the CUDA context and NCCL buffers" if parts.nccl_buffers else "the CUDA context"
    message = (
        f"{describe_gpu(gpu)} has {format_bytes(gpu.free_bytes)} free of {format_bytes(gpu.cuda_total_bytes)}, "
        f"but {what} needs {format_bytes(needed)} free at start-up: --gpu-memory-utilization {fraction_text(fraction)} "
        f"({format_bytes(requested)}: {describe_breakdown(parts)}, with margin and rounding) plus {before} vLLM "
        f"creates before it checks; memory is held by {describe_gpu_holders(gpu)}. {advice}"
    )
    return VramError(message, gpu=gpu, needed_bytes=needed)


def _claim_refusal(parts: MemoryBreakdown, options: VramOptions, what: str) -> VramError:
    claim, per_gpu = options.vram_claim_bytes, _claim_per_gpu(options)
    needed = claim_needed(parts, options)
    split = "" if claim == per_gpu else f", {format_bytes(per_gpu)} per GPU"
    message = (
        f"{VRAM_CLAIM_ENV}={claim} ({format_bytes(claim)}{split}) is less than {what} needs on its GPU: "
        f"{format_bytes(needed)} ({describe_breakdown(parts)}, and the {options.margin:.0%} margin); book at least "
        f"{_round_claim(needed) * options.tensor_parallel_size} bytes (`vllm_paddle_ocr plan <model_path> --gpustack-claim`)"
    )
    return VramError(message, needed_bytes=needed)


def _planned_gpus(snapshot: GpuSnapshot | None, options: VramOptions) -> list[PlannedGpu] | str:
    """The GPUs to plan for, or the reason there are none."""
    tp = options.tensor_parallel_size
    if options.gpu_total_bytes is not None:
        total = options.gpu_total_bytes
        free = total if options.gpu_free_bytes is None else min(options.gpu_free_bytes, total)
        card = PlannedGpu(name=f"planned card ({format_bytes(total)})", total_bytes=total, cuda_total_bytes=total, free_bytes=free)
        return [card] * tp
    if snapshot is None or not snapshot.available:
        reason = (snapshot.error if snapshot is not None else None) or NO_GPU
        if snapshot is not None and snapshot.fatal:
            raise VramError(reason)
        return reason
    if len(snapshot.gpus) < tp:
        raise VramError(
            f"--tensor-parallel-size {tp} needs {tp} GPUs but only {len(snapshot.gpus)} are visible "
            f"(CUDA_VISIBLE_DEVICES={snapshot.visible_devices!r}); give the instance more GPUs or lower the size"
        )
    gpus = []
    for info in snapshot.gpus[:tp]:
        free = info.free_bytes if options.gpu_free_bytes is None else options.gpu_free_bytes
        gpus.append(
            PlannedGpu(
                index=info.index,
                uuid=info.uuid,
                name=info.name,
                total_bytes=info.total_bytes,
                cuda_total_bytes=info.cuda_total_bytes,
                free_bytes=free,
                processes=info.processes,
                is_mig=info.is_mig,
            )
        )
    return gpus


def _plan(
    needs: ModelMemoryNeeds,
    options: VramOptions,
    parts: MemoryBreakdown,
    *,
    concurrency: int,
    requested: int,
    notes: list[str],
    **fields: Any,
) -> VramPlan:
    tp = options.tensor_parallel_size
    per_token = needs.kv_bytes_per_token_per_gpu(tp)
    fraction = fields.get("gpu_memory_utilization")
    # A user's fraction is a share of each card: no byte figure holds on every card for it.
    claim = None if options.gpu_memory_utilization is not None else gpustack_claim(needs, options, requested)
    # Inside a booked claim the planned fraction is this card's share of the claim, not a booking.
    booked_in_bytes = options.vram_claim_bytes is not None and options.gpu_memory_utilization is None
    gpu: PlannedGpu | None = fields.get("gpu")
    return VramPlan(
        gpustack_parameter=None if fraction is None or booked_in_bytes else gpustack_parameter(fraction),
        gpustack_claim_bytes=claim,
        gpustack_instances_per_gpu=None if claim is None or gpu is None else gpu.total_bytes // (claim // tp),
        concurrency=concurrency,
        requested_concurrency=requested,
        needed_bytes=parts.total,
        breakdown=parts,
        tokens_per_request=needs.tokens_per_request,
        kv_bytes_per_token=per_token,
        kv_cache_tokens=parts.kv_cache // per_token,
        notes=notes,
        **fields,
    )


def plan_vram(needs: ModelMemoryNeeds, snapshot: GpuSnapshot | None, options: VramOptions) -> VramPlan:
    """Budget one instance: the fraction, KV bytes and concurrency that fit the visible GPU(s), or refuse."""
    requested = options.concurrency or DEFAULT_CONCURRENCY
    notes: list[str] = list(snapshot.notes) if snapshot is not None else []
    if options.concurrency is None:
        notes.append(f"concurrency {DEFAULT_CONCURRENCY} (the default in-flight block requests); --concurrency N changes it")
    if options.max_num_seqs is not None and options.max_num_seqs < requested:
        notes.append(f"the user's --max-num-seqs {options.max_num_seqs} caps vLLM below the concurrency {requested}")
    gpus = _planned_gpus(snapshot, options)

    if isinstance(gpus, str):
        # No GPU to check against: report what the instance would need, so `plan` still shows it.
        parts = _breakdown(needs, options, requested, options.kv_cache_memory_bytes)
        return _plan(
            needs, options, parts, concurrency=requested, requested=requested, notes=notes,
            available=False, reason=gpus, source="none", claim_bytes=parts.total,
            max_num_seqs=options.max_num_seqs or requested,
        )
    if options.gpu_total_bytes is not None:
        notes.append(f"planned for {gpus[0].name} with {format_bytes(gpus[0].free_bytes)} free (--gpu-total), not read from NVML")

    if options.gpu_memory_utilization is not None:
        return _plan_user_fraction(needs, options, gpus, requested, notes)
    return _plan_own_fraction(needs, options, gpus, requested, notes)


def _plan_own_fraction(
    needs: ModelMemoryNeeds, options: VramOptions, gpus: list[PlannedGpu], requested: int, notes: list[str]
) -> VramPlan:
    floor = min(options.concurrency_floor, requested)
    user_kv = options.kv_cache_memory_bytes
    # A KV cache the user fixed sets the concurrency itself; otherwise the largest that fits, down to the floor
    # (where nothing fits, the floor's plan below is the refusal).
    if user_kv is not None or _fits(needs, options, gpus, requested):
        concurrency = requested
    else:
        fitting = _largest_fitting(needs, options, gpus, floor, requested - 1)
        concurrency = floor if fitting is None else fitting
    parts = _breakdown(needs, options, concurrency, user_kv)
    what = (
        f"PaddleOCR-VL with the given --kv-cache-memory-bytes"
        if user_kv is not None
        else f"PaddleOCR-VL at the lowest concurrency ({_blocks(concurrency)})"
    )
    booked = _claim_per_gpu(options)
    if not _fits_claim(parts, options):
        raise _claim_refusal(parts, options, what)
    fraction, tightest, miss = _choose_fraction(parts, options, gpus)
    if miss > 0 or fraction > 1.0:
        advice = (
            "Free memory on that GPU, give the instance another GPU, or lower --max-num-batched-tokens "
            "(it sets the start-up profiling peak)."
        )
        if booked is not None:
            advice = (
                f"{VRAM_CLAIM_ENV} booked {format_bytes(booked)} there, but the card has less free: other "
                "processes hold more than their bookings. Free memory on that GPU, or reserve it from the "
                "scheduler (GPUStack's --system-reserved)."
            )
        if fraction > 1.0:
            advice = f"The card is too small for this model at these settings. {advice}"
        raise _refusal(tightest, fraction, what, parts, advice)

    if concurrency < requested:
        above = _breakdown(needs, options, concurrency + 1, user_kv)
        limit = (
            f"{VRAM_CLAIM_ENV}={options.vram_claim_bytes} ({format_bytes(booked)} per GPU)"
            if not _fits_claim(above, options)
            else f"the {format_bytes(tightest.free_bytes)} free on {describe_gpu(tightest)}"
        )
        notes.append(f"lowered the concurrency from {requested} to {concurrency} in-flight blocks to fit {limit}")
    kv_flag = None
    if options.kv_cache_flag_supported:
        kv_flag = parts.kv_cache
        claim = _requested(fraction, tightest)
    else:
        claim = _requested(fraction, tightest) + parts.before_snapshot + parts.layout_model
        if booked is None:
            notes.append(
                "this vLLM has no --kv-cache-memory-bytes: it sizes the KV cache from the fraction, and what it "
                f"holds before its start-up check ({format_bytes(parts.before_snapshot)}) sits outside what a "
                "control plane books"
            )
    if booked is not None:
        claim = booked
        notes.append(
            f"sized inside {VRAM_CLAIM_ENV}={options.vram_claim_bytes}: {format_bytes(booked)} booked on "
            f"{describe_gpu(tightest)}, {format_bytes(claim_needed(parts, options))} taken with the margin; vLLM is "
            f"asked for {fraction_text(fraction)} of the card ({format_bytes(_requested(fraction, tightest))}) "
            "after its CUDA context"
        )
    if user_kv is not None:
        implied = user_kv // needs.kv_bytes_per_request(options.tensor_parallel_size)
        concurrency = max(1, min(requested, implied))
        notes.append(f"kept the user's --kv-cache-memory-bytes {user_kv} (room for {implied} in-flight blocks)")
    return _plan(
        needs, options, parts, concurrency=concurrency, requested=requested, notes=notes,
        available=True, source="planned", gpu=tightest, gpus=gpus, gpu_memory_utilization=fraction,
        kv_cache_memory_bytes=kv_flag, max_num_seqs=options.max_num_seqs or concurrency, claim_bytes=claim,
    )


def _plan_user_fraction(
    needs: ModelMemoryNeeds, options: VramOptions, gpus: list[PlannedGpu], requested: int, notes: list[str]
) -> VramPlan:
    """Keep the user's --gpu-memory-utilization, but refuse one that cannot start or cannot fit."""
    fraction = float(options.gpu_memory_utilization)  # type: ignore[arg-type]
    tp = options.tensor_parallel_size
    min_kv = _kv_tokens(needs, 1) * needs.kv_bytes_per_token_per_gpu(tp)
    user_kv = options.kv_cache_memory_bytes
    # Size the profiling estimate for the concurrency asked (or the user's --max-num-seqs).
    probe = _breakdown(needs, options, requested, 0)
    overhead = probe.without_kv - probe.before_snapshot  # what vLLM takes out of its budget before the KV cache
    smallest = min(gpus, key=lambda gpu: gpu.cuda_total_bytes)
    given = _requested(fraction, smallest)
    # With the layout model on the GPU the fraction is what the instance books (a catalog's, say): vLLM
    # gets a fixed KV cache that leaves the layout model its share of it, where vLLM takes a fixed size.
    layout = options.layout_model_bytes
    inside = layout if layout and user_kv is None and options.kv_cache_flag_supported else 0
    required = overhead + inside + (0 if user_kv is not None else min_kv)
    if given < required:
        least = _ceil_step(required / smallest.cuda_total_bytes)
        raise VramError(
            f"--gpu-memory-utilization {fraction:g} gives vLLM {format_bytes(given)} of {describe_gpu(smallest)}, "
            f"but the weights, profiling peak and CUDA graphs take {format_bytes(overhead)}"
            + (f", the layout model {format_bytes(inside)}" if inside else "")
            + ("" if user_kv is not None else f" and one {needs.max_model_len}-token request needs {format_bytes(min_kv)} of KV cache")
            + f"; use at least {least:.2f}, or leave the flag out and let vllm_paddle_ocr size it",
            gpu=smallest,
            needed_bytes=required,
        )
    kv_room = user_kv if user_kv is not None else given - overhead - inside
    per_request = needs.kv_bytes_per_request(tp)
    implied = max(1, kv_room // per_request) if per_request else requested
    concurrency = min(requested, implied)
    parts = _breakdown(needs, options, concurrency, kv_room)
    # A layout model the fraction does not hold needs room beside it.
    beside = parts.layout_model - inside
    tightest, miss = _shortfall(fraction, gpus, parts.before_snapshot + beside)
    if miss > 0:
        raise _refusal(
            tightest, fraction, f"the user's --gpu-memory-utilization {fraction:g}", parts,
            "Lower --gpu-memory-utilization (or leave it out and let vllm_paddle_ocr size it), or free memory on that GPU.",
        )
    if implied < requested:
        notes.append(f"the user's --gpu-memory-utilization {fraction:g} leaves KV cache for about {implied} in-flight blocks, fewer than {requested}")
    # vLLM fills the fraction and its context comes on top; a fixed KV cache holds only what the parts add up to.
    booked = _requested(fraction, tightest)
    claim = booked + parts.before_snapshot + beside if user_kv is None else max(booked, parts.total)
    notes.append(f"kept the user's --gpu-memory-utilization {fraction:g}")
    per_gpu = _claim_per_gpu(options)
    if per_gpu is not None:
        # GPUStack 2.3 books the larger of the two; earlier 2.x releases book the claim alone.
        claim = max(claim, per_gpu)
        notes.append(
            f"GPUStack 2.3 books the larger of {VRAM_CLAIM_ENV} ({format_bytes(per_gpu)} per GPU) and the "
            f"user's fraction of the card: {format_bytes(claim)} here"
        )
    if inside:
        notes.append(
            f"the layout model ({format_bytes(inside)}) runs inside that share: vLLM gets --kv-cache-memory-bytes "
            f"{kv_room} instead of filling it"
        )
    return _plan(
        needs, options, parts, concurrency=concurrency, requested=requested, notes=notes,
        available=True, source="user", gpu=tightest, gpus=gpus, gpu_memory_utilization=fraction,
        kv_cache_memory_bytes=user_kv if user_kv is not None else (kv_room if inside else None),
        max_num_seqs=options.max_num_seqs or concurrency, claim_bytes=claim,
    )


# --------------------------------------------------------------------------------------------------------
# The edge: reading the model and NVML, and turning a serve request into options.


def budget(
    needs: ModelMemoryNeeds,
    options: VramOptions,
    *,
    snapshot: GpuSnapshot | None = None,
    env: Mapping[str, str] | None = None,
) -> VramPlan:
    """Plan against NVML's snapshot of the visible GPUs, unless a snapshot or --gpu-total is given."""
    if snapshot is None and options.gpu_total_bytes is None:
        snapshot = read_snapshot(env)
    return plan_vram(needs, snapshot, options)


def claim_from_env(environ: Mapping[str, str]) -> int | None:
    """The bytes GPUStack booked for this instance ($GPUSTACK_MODEL_VRAM_CLAIM), read as GPUStack reads it."""
    text = environ.get(VRAM_CLAIM_ENV, "").strip()
    if not text:
        return None
    try:
        claim = int(text)
    except ValueError:
        claim = 0
    if claim <= 0:
        raise ServeRequestError(
            f"{VRAM_CLAIM_ENV}={text!r} is not a byte count: GPUStack books a whole number of bytes "
            "(`vllm_paddle_ocr plan <model_path> --gpustack-claim` prints one)"
        )
    return claim


def options_from_request(request: ServeRequest, engine: EngineInfo, environ: Mapping[str, str]) -> VramOptions:
    """VramOptions from a ServeRequest (our flags and the user's engine flags), the installed engine and the environment."""
    eager = request.user_flag("enforce-eager")
    return VramOptions(
        concurrency=request.concurrency,
        gpu_memory_utilization=request.user_number("gpu-memory-utilization", float),
        kv_cache_memory_bytes=request.user_number("kv-cache-memory-bytes", parse_size),
        max_num_seqs=request.user_number("max-num-seqs", int),
        gpu_total_bytes=request.gpu_total_bytes,
        gpu_free_bytes=request.gpu_free_bytes,
        margin=DEFAULT_MARGIN if request.vram_margin is None else request.vram_margin,
        kv_cache_flag_supported=engine.knows_flag("--kv-cache-memory-bytes"),
        tensor_parallel_size=request.user_number("tensor-parallel-size", int) or 1,
        enforce_eager=eager is not None and not eager.negated,
        vram_claim_bytes=claim_from_env(environ),
    )

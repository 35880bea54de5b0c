"""The VRAM budget, driven by recorded card snapshots (NVML faked at its boundary) and property tests."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning import vram
from vllm_paddle_ocr.backends.vllm_paddle_ocr.deploy.catalog import (
    PUBLISHED_LAYOUT_PARAMETERS,
    PUBLISHED_PREPROCESSOR_CONFIG,
    PUBLISHED_TEXT_CONFIG,
    PUBLISHED_VISION_CONFIG,
)
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.launch_plan import memory_flags
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.layout_model import GPU_BATCH_SIZE
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.memory_needs import (
    CUDA_CONTEXT_BYTES,
    NCCL_BYTES,
    MemoryNeedsError,
    layout_model_bytes,
    needs_for_request,
)
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.model_repo import resolve_model_repo
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.nvml import GpuInfo, GpuSnapshot, RecordedNvml, read_snapshot
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.vram import VramError, VramOptions, plan_vram
from vllm_paddle_ocr.backends.vllm_paddle_ocr.recipe import DEFAULT_MAX_PIXELS, PLANNING_NEW_TOKENS
from vllm_paddle_ocr.backends.vllm_paddle_ocr.serving.argv import parse_serve_argv
from vllm_paddle_ocr.backends.vllm_paddle_ocr.sizes import format_bytes, parse_size
from vllm_paddle_ocr.plugin.errors import ServeRequestError
from vllm_paddle_ocr.plugin.records import GpuProcess, VramPlan

CARDS = Path(__file__).parent / "data" / "gpus"
GiB = 1024**3
MiB = 1024**2

# The published PaddleOCR-VL-0.9B's bf16 parameters.
PARAMETERS = 905_601_648


def write_paddleocr_vl(root: Path) -> Path:
    """config.json, preprocessor_config.json and a header-only (sparse) model.safetensors of the real size."""
    root.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["PaddleOCRVLForConditionalGeneration"], "model_type": "paddleocr_vl",
              "torch_dtype": "bfloat16", "vision_config": PUBLISHED_VISION_CONFIG, **PUBLISHED_TEXT_CONFIG}
    (root / "config.json").write_text(json.dumps(config))
    (root / "preprocessor_config.json").write_text(json.dumps(PUBLISHED_PREPROCESSOR_CONFIG))
    size = PARAMETERS * 2
    header = json.dumps({"weights": {"dtype": "BF16", "shape": [PARAMETERS], "data_offsets": [0, size]}}).encode()
    with (root / "model.safetensors").open("wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
        fh.truncate(8 + len(header) + size)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_paddleocr_vl(tmp_path_factory.mktemp("paddleocr_vl"))


@pytest.fixture(scope="module")
def needs(model_dir):
    """What the runtime plans with for a plain `serve <model_dir>`."""
    return needs_for_request(parse_serve_argv([str(model_dir)]), resolve_model_repo(model_dir))


def card(name: str, env: dict | None = None) -> GpuSnapshot:
    return read_snapshot(env or {}, api=RecordedNvml.from_file(CARDS / f"{name}.json"))


def vllm_starts(plan: vram.VramPlan) -> bool:
    """vLLM's own start-up check (v1/worker/utils.py:request_memory), after its CUDA context and NCCL buffers."""
    before = CUDA_CONTEXT_BYTES + (NCCL_BYTES if len(plan.gpus) > 1 else 0)
    return all(
        gpu.free_bytes - before >= math.ceil(plan.gpu_memory_utilization * gpu.cuda_total_bytes)
        for gpu in plan.gpus
    )


# --- the recorded cards -------------------------------------------------------------------------------


def test_h100_at_concurrency_64_claims_at_most_8_gib_with_its_layout_model(needs):
    layout = layout_model_bytes("PP-DocLayoutV2", PUBLISHED_LAYOUT_PARAMETERS["PP-DocLayoutV2"], GPU_BATCH_SIZE["PP-DocLayoutV2"])
    plan = plan_vram(needs, card("h100_80gb_empty"), VramOptions(concurrency=64, layout_model_bytes=layout))
    assert plan.available and plan.source == "planned"
    assert plan.concurrency == plan.requested_concurrency == 64
    assert plan.breakdown.layout_model == layout > 0
    assert plan.claim_bytes <= 8 * GiB and plan.gpustack_claim_bytes <= 8 * GiB
    assert plan.gpustack_parameter == f"--gpu-memory-utilization={vram.fraction_text(plan.gpu_memory_utilization)}"
    # The fixed KV cache holds the 64 in-flight blocks at their planned length, and vLLM runs that many.
    assert plan.kv_cache_memory_bytes // needs.kv_bytes_per_token >= 64 * needs.tokens_per_request
    assert plan.max_num_seqs == 64
    assert plan.claim_bytes >= plan.needed_bytes  # the fraction covers everything the process holds
    assert vllm_starts(plan)


def test_default_concurrency_is_16_and_said(needs):
    plan = plan_vram(needs, card("h100_80gb_empty"), VramOptions())
    assert plan.concurrency == vram.DEFAULT_CONCURRENCY == 16
    assert any("concurrency 16" in note for note in plan.notes)
    assert plan.claim_bytes < 0.1 * plan.gpu.cuda_total_bytes


@pytest.mark.parametrize("name", ["h100_80gb_empty", "a100_40gb_shared", "l4_24gb_empty", "rtx4090_24gb_empty"])
@pytest.mark.parametrize("concurrency", [1, 16, 64])
def test_cards_with_room_get_the_concurrency_asked(needs, name, concurrency):
    plan = plan_vram(needs, card(name), VramOptions(concurrency=concurrency))
    assert plan.concurrency == concurrency
    assert vllm_starts(plan)
    assert plan.claim_bytes + CUDA_CONTEXT_BYTES <= plan.gpu.free_bytes
    kv_tokens = max(concurrency * plan.tokens_per_request, 8192)
    assert plan.kv_cache_tokens == kv_tokens


def test_a100_next_to_another_model_fits_in_what_is_left(needs):
    plan = plan_vram(needs, card("a100_40gb_shared"), VramOptions(concurrency=16))
    assert plan.gpu.uuid == "GPU-0e9d2c71-3a58-4b6f-8d12-c47a9e5b3f18"
    assert plan.claim_bytes < 9.39 * GiB
    assert plan.gpu_memory_utilization < 0.2


def test_desktop_rtx5060_lowers_concurrency_and_says_so(needs):
    plan = plan_vram(needs, card("rtx5060_8gb_desktop"), VramOptions(concurrency=64))
    assert vram.DEFAULT_CONCURRENCY_FLOOR <= plan.concurrency < 64
    assert plan.requested_concurrency == 64
    assert vllm_starts(plan)
    note = next(n for n in plan.notes if n.startswith("lowered the concurrency"))
    assert f"from 64 to {plan.concurrency}" in note and "6.77 GiB free" in note and "RTX 5060" in note
    # One more in-flight block would not have passed vLLM's check.
    with pytest.raises(VramError):
        plan_vram(needs, card("rtx5060_8gb_desktop"), VramOptions(concurrency=plan.concurrency + 1, concurrency_floor=plan.concurrency + 1))


def test_desktop_rtx5060_at_default_concurrency_starts_where_vllms_default_fails(needs):
    snap = card("rtx5060_8gb_desktop")
    plan = plan_vram(needs, snap, VramOptions())
    assert plan.concurrency == 16 and vllm_starts(plan)
    gpu = snap.gpus[0]
    assert gpu.free_bytes - CUDA_CONTEXT_BYTES < 0.92 * gpu.cuda_total_bytes  # vLLM's default refuses here


def test_a_full_card_is_refused_naming_gpu_bytes_and_holders(needs):
    with pytest.raises(VramError) as caught:
        plan_vram(needs, card("rtx4090_24gb_full"), VramOptions())
    message = str(caught.value)
    assert "GPU 0 (NVIDIA GeForce RTX 4090, GPU-3f81c6b2-9d07-4a5e-8c3b-6e2d0a9f5b17)" in message
    assert "1.43 GiB free of 23.64 GiB" in message
    assert "python3 (pid 51877, 22.21 GiB)" in message
    assert f"lowest concurrency ({vram.DEFAULT_CONCURRENCY_FLOOR} in-flight blocks)" in message
    assert caught.value.needed_bytes > caught.value.gpu.free_bytes
    assert "Free memory on that GPU" in message


# --- the user's own flags ----------------------------------------------------------------------------


def test_users_fraction_is_kept_and_checked(needs):
    plan = plan_vram(needs, card("h100_80gb_empty"), VramOptions(gpu_memory_utilization=0.2, concurrency=64))
    assert plan.source == "user" and plan.gpu_memory_utilization == 0.2
    assert plan.kv_cache_memory_bytes is None  # vLLM sizes the KV cache inside the user's fraction
    assert plan.gpustack_parameter == "--gpu-memory-utilization=0.20"
    assert plan.claim_bytes == math.ceil(0.2 * plan.gpu.cuda_total_bytes) + CUDA_CONTEXT_BYTES
    assert plan.concurrency == 64
    # The user's flags go to vLLM as typed; only the sequence cap the estimate assumed is added.
    assert memory_flags(plan) == [("--max-num-seqs", ("64",))]
    assert any("kept the user's --gpu-memory-utilization 0.2" in note for note in plan.notes)


def test_users_fraction_too_small_for_weights_and_overhead_is_refused(needs):
    with pytest.raises(VramError) as caught:
        plan_vram(needs, card("h100_80gb_empty"), VramOptions(gpu_memory_utilization=0.03))
    message = str(caught.value)
    assert message.startswith("--gpu-memory-utilization 0.03 gives vLLM 2.38 GiB of GPU 0 (NVIDIA H100 80GB HBM3")
    suggested = float(message.split("use at least ")[1].split(",")[0])
    # The suggestion is the smallest fraction that is accepted.
    plan_vram(needs, card("h100_80gb_empty"), VramOptions(gpu_memory_utilization=suggested))
    with pytest.raises(VramError):
        plan_vram(needs, card("h100_80gb_empty"), VramOptions(gpu_memory_utilization=round(suggested - 0.01, 2)))


def test_users_fraction_larger_than_free_is_refused_like_vllm_would(needs):
    # GPUStack passes --gpu-memory-utilization=0.5 from backend_parameters; 0.5 x 39.39 GiB > 9.39 GiB free.
    with pytest.raises(VramError) as caught:
        plan_vram(needs, card("a100_40gb_shared"), VramOptions(gpu_memory_utilization=0.5))
    message = str(caught.value)
    assert "the user's --gpu-memory-utilization 0.5" in message
    assert "9.39 GiB free of 39.39 GiB" in message and "python3 (pid 28113, 30.00 GiB)" in message
    assert "Lower --gpu-memory-utilization" in message


def test_users_fraction_that_holds_few_requests_says_how_many(needs):
    plan = plan_vram(needs, card("h100_80gb_empty"), VramOptions(gpu_memory_utilization=0.06, concurrency=64))
    assert plan.concurrency < 64
    assert any(f"about {plan.concurrency} in-flight blocks" in note for note in plan.notes)


def test_users_kv_cache_bytes_are_kept(needs):
    kv = 2 * GiB
    plan = plan_vram(needs, card("h100_80gb_empty"), VramOptions(kv_cache_memory_bytes=kv, concurrency=64))
    assert plan.kv_cache_memory_bytes == kv
    assert plan.breakdown.kv_cache == kv
    assert plan.concurrency == kv // (plan.tokens_per_request * plan.kv_bytes_per_token)
    assert vllm_starts(plan)


def test_without_the_kv_cache_flag_the_fraction_alone_sizes_vllm(needs):
    plan = plan_vram(needs, card("h100_80gb_empty"), VramOptions(concurrency=64, kv_cache_flag_supported=False))
    assert plan.kv_cache_memory_bytes is None
    assert plan.claim_bytes == math.ceil(plan.gpu_memory_utilization * plan.gpu.cuda_total_bytes) + CUDA_CONTEXT_BYTES
    assert any("no --kv-cache-memory-bytes" in note for note in plan.notes)
    assert vllm_starts(plan)


def test_users_max_num_seqs_sizes_the_sampler_estimate(needs):
    small = plan_vram(needs, card("h100_80gb_empty"), VramOptions(concurrency=16))
    big = plan_vram(needs, card("h100_80gb_empty"), VramOptions(concurrency=16, max_num_seqs=1024))
    assert big.max_num_seqs == 1024
    assert big.breakdown.activation_peak > small.breakdown.activation_peak
    assert big.breakdown.cuda_graphs > small.breakdown.cuda_graphs


def test_enforce_eager_drops_cuda_graphs(needs):
    plan = plan_vram(needs, card("l4_24gb_empty"), VramOptions(enforce_eager=True))
    assert plan.breakdown.cuda_graphs == 0


# --- a claim booked in bytes (GPUStack 2.x's GPUSTACK_MODEL_VRAM_CLAIM) ------------------------------

CLAIM_CARDS = ["h100_80gb_empty", "a100_40gb_shared", "l4_24gb_empty", "rtx4090_24gb_empty", "rtx5060_8gb_desktop"]


@pytest.fixture(scope="module")
def claim(needs) -> int:
    """What `plan --gpustack-claim` prints for this model at the default concurrency."""
    return vram.gpustack_claim(needs, VramOptions())


def vllm_takes_at_most(plan: VramPlan) -> int:
    """What vLLM may hold on each GPU with the flags it is given: its request plus what it holds before its check."""
    flags = dict(memory_flags(plan))
    before = CUDA_CONTEXT_BYTES + (NCCL_BYTES if len(plan.gpus) > 1 else 0)
    return max(math.ceil(float(flags["--gpu-memory-utilization"][0]) * gpu.cuda_total_bytes) for gpu in plan.gpus) + before


@pytest.mark.parametrize("name", CLAIM_CARDS)
def test_inside_a_claim_vllm_takes_at_most_the_claim_on_every_card(needs, claim, name):
    plan = plan_vram(needs, card(name), VramOptions(vram_claim_bytes=claim))
    fraction = float(dict(memory_flags(plan))["--gpu-memory-utilization"][0])
    assert fraction * plan.gpu.cuda_total_bytes <= claim
    assert vllm_takes_at_most(plan) <= claim
    # The planned bytes, margin included, fit the claim: the concurrency asked is kept on every card.
    assert plan.concurrency == vram.DEFAULT_CONCURRENCY and plan.needed_bytes <= claim
    assert int(dict(memory_flags(plan))["--kv-cache-memory-bytes"][0]) == plan.breakdown.kv_cache
    assert plan.claim_bytes == claim and plan.gpustack_parameter is None  # GPUStack books the bytes, not a share
    assert vllm_starts(plan)  # the card has the claim free, so vLLM's own start-up check passes
    assert any(note.startswith(f"sized inside GPUSTACK_MODEL_VRAM_CLAIM={claim}") for note in plan.notes)


def test_the_claim_decides_the_same_kv_cache_on_every_card(needs, claim):
    plans = [plan_vram(needs, card(name), VramOptions(vram_claim_bytes=claim, concurrency=64)) for name in CLAIM_CARDS[:4]]
    assert len({(p.concurrency, p.breakdown.kv_cache) for p in plans}) == 1
    # ... while the fraction follows each card's size.
    assert len({p.gpu_memory_utilization for p in plans}) == 4


def test_without_a_claim_the_planned_fraction_can_take_more_than_the_claim(needs, claim):
    # The fraction rounds up to 0.01 of the card: booked as bytes, the claim is what keeps the two equal.
    own = plan_vram(needs, card("h100_80gb_empty"), VramOptions())
    assert vllm_takes_at_most(own) > claim


def test_gpustack_claim_is_the_same_on_every_card_and_says_how_many_fit(needs, claim):
    for name in CLAIM_CARDS:
        plan = plan_vram(needs, card(name), VramOptions())
        assert plan.gpustack_claim_bytes == claim
        assert plan.gpustack_instances_per_gpu == plan.gpu.total_bytes // claim
    assert plan_vram(needs, None, VramOptions(gpu_total_bytes=80 * GiB)).gpustack_instances_per_gpu >= 9
    # For a concurrency: more blocks, more bytes; tensor parallelism books the instance's GPUs together.
    assert vram.gpustack_claim(needs, VramOptions(concurrency=64)) > claim
    assert claim % MiB == 0 and claim >= plan.needed_bytes * (1 + vram.DEFAULT_MARGIN)


def test_a_claim_smaller_than_the_concurrency_needs_lowers_it_and_says_why(needs, claim):
    small = claim - 256 * MiB
    plan = plan_vram(needs, card("h100_80gb_empty"), VramOptions(vram_claim_bytes=small))
    assert vram.DEFAULT_CONCURRENCY_FLOOR <= plan.concurrency < vram.DEFAULT_CONCURRENCY
    assert vllm_takes_at_most(plan) <= small
    note = next(n for n in plan.notes if n.startswith("lowered the concurrency"))
    assert f"to {plan.concurrency} in-flight blocks to fit GPUSTACK_MODEL_VRAM_CLAIM={small}" in note
    # One more block would not fit the claim.
    with pytest.raises(VramError, match="GPUSTACK_MODEL_VRAM_CLAIM"):
        plan_vram(needs, card("h100_80gb_empty"), VramOptions(
            vram_claim_bytes=small, concurrency=plan.concurrency + 1, concurrency_floor=plan.concurrency + 1))


def test_a_claim_too_small_for_the_model_is_refused_in_one_line_with_the_bytes_it_needs(needs):
    with pytest.raises(VramError) as caught:
        plan_vram(needs, card("h100_80gb_empty"), VramOptions(vram_claim_bytes=2 * GiB))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("GPUSTACK_MODEL_VRAM_CLAIM=2147483648 (2.00 GiB) is less than PaddleOCR-VL at the lowest concurrency")
    assert "weights 1.91 GiB" in message and "--gpustack-claim" in message
    least = int(message.split("book at least ")[1].split(" ")[0])
    # The figure it names is the smallest that starts; a MiB less is refused again.
    assert plan_vram(needs, card("h100_80gb_empty"), VramOptions(vram_claim_bytes=least)).concurrency == vram.DEFAULT_CONCURRENCY_FLOOR
    with pytest.raises(VramError, match="is less than"):
        plan_vram(needs, card("h100_80gb_empty"), VramOptions(vram_claim_bytes=least - MiB))


def test_a_claim_on_a_card_fuller_than_its_bookings_is_refused_naming_the_holders(needs, claim):
    with pytest.raises(VramError) as caught:
        plan_vram(needs, card("rtx4090_24gb_full"), VramOptions(vram_claim_bytes=claim))
    message = str(caught.value)
    assert "1.43 GiB free of 23.64 GiB" in message and "python3 (pid 51877, 22.21 GiB)" in message
    assert "other processes hold more than their bookings" in message


def test_a_claim_is_split_over_the_gpus_of_a_tensor_parallel_instance(needs):
    options = VramOptions(tensor_parallel_size=2)
    claim = vram.gpustack_claim(needs, options)
    plan = plan_vram(needs, card("l4_x2_one_busy"), options.model_copy(update={"vram_claim_bytes": claim}))
    assert plan.claim_bytes == claim // 2
    assert vllm_takes_at_most(plan) <= claim // 2 and vllm_starts(plan)


def test_a_users_fraction_beside_a_claim_is_kept_and_books_the_larger(needs, claim):
    plan = plan_vram(needs, card("h100_80gb_empty"), VramOptions(vram_claim_bytes=claim, gpu_memory_utilization=0.2))
    assert plan.source == "user" and plan.gpu_memory_utilization == 0.2
    assert plan.claim_bytes == math.ceil(0.2 * plan.gpu.cuda_total_bytes) + CUDA_CONTEXT_BYTES > claim
    assert plan.gpustack_claim_bytes is None  # a share of each card has no one byte figure
    assert plan.gpustack_parameter == "--gpu-memory-utilization=0.20"  # what GPUStack 2.3 books beside the claim
    assert any(note.startswith("GPUStack 2.3 books the larger of GPUSTACK_MODEL_VRAM_CLAIM") for note in plan.notes)
    with pytest.raises(VramError, match="share of each card"):
        vram.gpustack_claim_of(plan)


def test_the_claim_is_read_from_the_environment_as_gpustack_reads_it(model_dir):
    request = parse_serve_argv([str(model_dir)])
    options = vram.options_from_request(request, _Engine(), {"GPUSTACK_MODEL_VRAM_CLAIM": "5874122752"})
    assert options.vram_claim_bytes == 5874122752
    assert vram.options_from_request(request, _Engine(), {"GPUSTACK_MODEL_VRAM_CLAIM": ""}).vram_claim_bytes is None
    for text in ("5.5GiB", "0", "-1", "lots"):
        with pytest.raises(ServeRequestError, match=f"GPUSTACK_MODEL_VRAM_CLAIM='{text}' is not a byte count"):
            vram.options_from_request(request, _Engine(), {"GPUSTACK_MODEL_VRAM_CLAIM": text})


# --- no GPU, planning overrides, several GPUs --------------------------------------------------------


def test_no_gpu_gives_an_unavailable_plan_with_the_reason_never_an_exception(needs):
    snap = read_snapshot({}, api=RecordedNvml({"init_error": "NVIDIA driver not found (libnvidia-ml could not be loaded)"}))
    plan = plan_vram(needs, snap, VramOptions(concurrency=64))
    assert not plan.available
    assert plan.reason == "no GPU visible: NVIDIA driver not found (libnvidia-ml could not be loaded)"
    assert plan.gpu_memory_utilization is None and plan.gpustack_parameter is None
    assert plan.claim_bytes == plan.needed_bytes > 0  # still says what the instance needs
    assert memory_flags(plan) == []  # nothing to size vLLM with
    json.dumps(plan.model_dump(mode="json"))


def test_gpu_total_plans_without_any_gpu(needs):
    options = VramOptions(concurrency=64, gpu_total_bytes=parse_size("80GiB"))
    plan = plan_vram(needs, None, options)
    assert plan.available and plan.gpu.index is None and plan.gpu.name == "planned card (80.00 GiB)"
    assert plan.claim_bytes <= 8 * GiB
    assert any("--gpu-total" in note for note in plan.notes)
    busy = plan_vram(needs, None, options.model_copy(update={"gpu_free_bytes": parse_size("6GiB")}))
    assert busy.concurrency < 64 and busy.claim_bytes + CUDA_CONTEXT_BYTES <= 6 * GiB


def test_gpu_total_wins_over_a_snapshot(needs):
    plan = plan_vram(needs, card("l4_24gb_empty"), VramOptions(gpu_total_bytes=80 * GiB))
    assert plan.gpu.cuda_total_bytes == 80 * GiB


def test_gpu_free_overrides_what_nvml_read(needs):
    plan = plan_vram(needs, card("h100_80gb_empty"), VramOptions(concurrency=64, gpu_free_bytes=6 * GiB))
    assert plan.gpu.free_bytes == 6 * GiB and plan.concurrency < 64
    assert vllm_starts(plan)


def test_a_finer_fraction_is_used_where_0_01_of_a_big_card_would_not_fit(needs):
    # 0.01 of a 79 GiB card is 0.79 GiB: with 5 GiB free only a 0.001 step leaves room to start.
    options = VramOptions(concurrency=16, concurrency_floor=16, gpu_free_bytes=5200 * MiB)
    plan = plan_vram(needs, card("h100_80gb_empty"), options)
    assert vllm_starts(plan)
    assert len(vram.fraction_text(plan.gpu_memory_utilization).split(".")[1]) == 3
    assert plan.gpustack_parameter == f"--gpu-memory-utilization={vram.fraction_text(plan.gpu_memory_utilization)}"
    roomy = plan_vram(needs, card("h100_80gb_empty"), VramOptions(concurrency=16))
    assert vram.fraction_text(roomy.gpu_memory_utilization) == f"{roomy.gpu_memory_utilization:.2f}"


def test_a_fatal_snapshot_is_refused(needs):
    with pytest.raises(VramError, match="MIG enabled"):
        plan_vram(needs, card("a100_80gb_mig"), VramOptions())


def test_a_mig_device_is_planned_on_its_own_memory(needs):
    snap = card("a100_80gb_mig", {"CUDA_VISIBLE_DEVICES": "MIG-4d1c7e2a-5b6f-5a8e-9c0d-1e2f3a4b5c6d"})
    plan = plan_vram(needs, snap, VramOptions(concurrency=16))
    assert plan.gpu.cuda_total_bytes == 40192 * MiB and vllm_starts(plan)
    assert "of MIG device 0 (" in vram.summary(plan)  # named as what CUDA sees, not as the whole card


def test_tensor_parallel_plans_each_gpu_and_refuses_on_the_tightest(needs):
    snap = card("l4_x2_one_busy")
    plan = plan_vram(needs, snap, VramOptions(concurrency=64, tensor_parallel_size=2))
    assert [gpu.index for gpu in plan.gpus] == [0, 1]
    assert plan.gpu.index == 1  # the busy one decides
    assert plan.breakdown.weights == needs.weight_bytes_per_gpu(2)
    assert vllm_starts(plan)
    single = plan_vram(needs, snap, VramOptions(concurrency=64))
    assert plan.breakdown.kv_cache < single.breakdown.kv_cache
    with pytest.raises(VramError, match="GPU 1 .*vllm \\(pid 9910"):
        plan_vram(needs, snap, VramOptions(tensor_parallel_size=2, gpu_memory_utilization=0.5))


def test_tensor_parallel_leaves_room_for_nccl_buffers_taken_before_vllms_check(needs):
    # vLLM sets up NCCL before its start-up snapshot, so those buffers are not free when it checks.
    planned = 0
    for free in range(3 * GiB, 8 * GiB, 64 * MiB):
        try:
            plan = plan_vram(needs, card("l4_x2_one_busy"), VramOptions(tensor_parallel_size=2, gpu_free_bytes=free))
        except VramError as exc:
            assert exc.needed_bytes > free
            continue
        planned += 1
        assert vllm_starts(plan), format_bytes(free)
        assert plan.breakdown.nccl_buffers == NCCL_BYTES
        assert plan.claim_bytes >= plan.needed_bytes
    assert planned > 0


def test_tensor_parallel_larger_than_the_visible_gpus_is_refused(needs):
    with pytest.raises(VramError, match="--tensor-parallel-size 2 needs 2 GPUs but only 1 are visible"):
        plan_vram(needs, card("l4_24gb_empty"), VramOptions(tensor_parallel_size=2))


def test_plan_survives_json_and_names_its_card(needs):
    plan = plan_vram(needs, card("l4_24gb_empty"), VramOptions(concurrency=16))
    assert VramPlan.model_validate_json(plan.model_dump_json()) == plan
    assert plan.gpu.uuid == "GPU-a7e4f0d3-61c2-4e89-b5a0-9d3f7c2e1b46"
    # What vLLM is given is what the plan decided: its fraction, its KV cache, its sequence cap.
    flags = dict(memory_flags(plan))
    assert float(flags["--gpu-memory-utilization"][0]) == plan.gpu_memory_utilization
    assert int(flags["--kv-cache-memory-bytes"][0]) == plan.breakdown.kv_cache
    assert int(flags["--max-num-seqs"][0]) == plan.concurrency == 16
    line = vram.summary(plan)
    assert "of GPU 0 (NVIDIA L4" in line and "16 in-flight blocks" in line


# --- the edge functions --------------------------------------------------------------------------------


def test_budget_plans_the_model_on_the_given_snapshot(needs):
    plan = vram.budget(needs, VramOptions(concurrency=64), snapshot=card("h100_80gb_empty"))
    assert plan.claim_bytes <= 8 * GiB
    assert plan.breakdown.weights == PARAMETERS * 2
    # --max-model-len defaults to what the launch plan passes (the largest crop plus a 4096-token answer).
    assert plan.kv_cache_tokens >= 8192


def test_budget_reads_nvml_when_no_snapshot_is_given(needs):
    plan = vram.budget(needs, VramOptions(), env={"CUDA_VISIBLE_DEVICES": ""})
    assert not plan.available and "hides every GPU" in plan.reason


def test_a_repo_without_weights_cannot_be_budgeted(model_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((model_dir / "config.json").read_text())
    with pytest.raises(MemoryNeedsError, match=r"no \*\.safetensors weights"):
        needs_for_request(parse_serve_argv([str(bare)]), resolve_model_repo(bare))


class _Engine:
    def __init__(self, flags: set[str] | None = None):
        self.flags = flags

    def knows_flag(self, flag: str) -> bool:
        return self.flags is None or flag.lstrip("-").replace("-", "_") in self.flags


def test_options_and_needs_come_from_the_serve_request(model_dir):
    request = parse_serve_argv([
        str(model_dir), "--gpu-memory-utilization=0.3", "--kv-cache-memory-bytes", "2G", "--max-num-seqs", "32",
        "-tp", "1", "--max-num-batched-tokens", "8k", "--max-model-len", "16384", "--enforce-eager",
        "--concurrency", "24", "--gpu-total", "80GiB", "--gpu-free", "40GB", "--vram-margin", "0.1",
    ])
    options = vram.options_from_request(request, _Engine(), {})
    assert options.gpu_memory_utilization == 0.3
    assert options.kv_cache_memory_bytes == 2 * GiB  # vLLM's "G" is binary
    assert (options.max_num_seqs, options.tensor_parallel_size, options.concurrency) == (32, 1, 24)
    assert options.gpu_total_bytes == 80 * GiB and options.gpu_free_bytes == 40 * 10**9
    assert options.margin == 0.1 and options.enforce_eager and options.kv_cache_flag_supported
    needs = needs_for_request(request, resolve_model_repo(model_dir))
    assert needs.max_num_batched_tokens == 8000  # vLLM's lowercase "k" is decimal
    assert needs.max_model_len == 16384
    assert needs.max_pixels == DEFAULT_MAX_PIXELS and needs.max_new_tokens == PLANNING_NEW_TOKENS


def test_defaults_from_a_bare_serve_request(model_dir):
    request = parse_serve_argv([str(model_dir)])
    options = vram.options_from_request(request, _Engine(flags={"gpu_memory_utilization"}), {})
    assert options.gpu_memory_utilization is None and options.kv_cache_memory_bytes is None
    assert not options.kv_cache_flag_supported and options.margin == vram.DEFAULT_MARGIN
    needs = needs_for_request(request, resolve_model_repo(model_dir))
    # The recipe's batch, and the context the launch plan serves: the largest crop and 4096 new tokens.
    assert needs.max_num_batched_tokens == 8192 and needs.max_model_len == 8192


def test_an_unreadable_user_value_names_the_flag(model_dir):
    request = parse_serve_argv([str(model_dir), "--gpu-memory-utilization", "most"])
    with pytest.raises(ServeRequestError, match="--gpu-memory-utilization 'most' is not a valid value"):
        vram.options_from_request(request, _Engine(), {})


# --- sizes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("80GiB", 80 * GiB), ("80 GiB", 80 * GiB), ("80gib", 80 * GiB), ("1.5GiB", 3 * GiB // 2),
        ("24GB", 24 * 10**9), ("4G", 4 * GiB), ("4g", 4 * 10**9), ("16k", 16000), ("16K", 16384),
        ("512MiB", 512 * MiB), ("512Mi", 512 * MiB), ("1073741824", GiB), ("0", 0), (123, 123),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "-4G", "4 parsecs", "1.5", "80 GiB GiB", True, -1])
def test_parse_size_refuses_what_it_cannot_read(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_sizes_print_for_people():
    assert format_bytes(8 * GiB) == "8.00 GiB"
    assert format_bytes(544 * MiB) == "544 MiB"
    assert format_bytes(900) == "900 B"


# --- properties ---------------------------------------------------------------------------------------


def _gpu(total: int, free: int) -> GpuSnapshot:
    info = GpuInfo(index=0, uuid="GPU-test", name="test card", total_bytes=total, free_bytes=free,
                   used_bytes=total - free, processes=[GpuProcess(pid=1, name="other", used_bytes=total - free)])
    return GpuSnapshot(gpus=[info])


# Real card sizes and anything between, with any share of the card free (the tests assert both the
# refusals and the plans, so both must be drawn often).
totals = st.sampled_from([x * GiB for x in (3.8, 7.96, 15.6, 22.05, 23.64, 39.39, 44.4, 79.19, 139.8)]).map(int) | st.integers(
    min_value=6 * GiB, max_value=200 * GiB
)
cards = st.tuples(totals, st.integers(min_value=0, max_value=1000)).map(lambda tf: (tf[0], tf[0] * tf[1] // 1000))
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY_SETTINGS
@given(
    card_bytes=cards,
    concurrency=st.integers(min_value=1, max_value=512),
    margin=st.floats(min_value=0, max_value=0.3),
    kv_flag=st.booleans(),
)
def test_the_fraction_never_asks_more_than_free_nor_less_than_the_model_needs(needs, card_bytes, concurrency, margin, kv_flag):
    total, free = card_bytes
    options = VramOptions(concurrency=concurrency, margin=margin, kv_cache_flag_supported=kv_flag)
    try:
        plan = plan_vram(needs, _gpu(total, free), options)
    except VramError as exc:
        # A refusal is only ever for a real shortage, and says so.
        assert exc.needed_bytes is not None and exc.needed_bytes > free
        assert "test card" in str(exc) and "other (pid 1" in str(exc)
        return
    requested = math.ceil(plan.gpu_memory_utilization * total)
    assert 0 < plan.gpu_memory_utilization <= 1
    assert requested + CUDA_CONTEXT_BYTES <= free  # vLLM's own start-up check passes
    inside = plan.breakdown.total if kv_flag else plan.breakdown.total - plan.breakdown.cuda_context
    assert requested >= inside >= needs.weight_bytes + plan.breakdown.activation_peak  # never less than weights + overhead
    assert plan.breakdown.kv_cache >= 8192 * needs.kv_bytes_per_token  # one full-length request always fits
    assert min(vram.DEFAULT_CONCURRENCY_FLOOR, concurrency) <= plan.concurrency <= concurrency


@PROPERTY_SETTINGS
@given(card_bytes=cards, fraction=st.floats(min_value=0.01, max_value=1.0))
def test_a_kept_user_fraction_fits_free_memory_and_holds_the_model(needs, card_bytes, fraction):
    total, free = card_bytes
    try:
        plan = plan_vram(needs, _gpu(total, free), VramOptions(gpu_memory_utilization=fraction))
    except VramError:
        requested = math.ceil(fraction * total)
        probe = plan_vram(needs, None, VramOptions())  # what the model needs, card aside
        too_small = requested < probe.breakdown.without_kv - CUDA_CONTEXT_BYTES + 8192 * needs.kv_bytes_per_token
        assert too_small or requested + CUDA_CONTEXT_BYTES > free
        return
    requested = math.ceil(fraction * total)
    assert plan.gpu_memory_utilization == fraction
    assert requested + CUDA_CONTEXT_BYTES <= free
    assert requested >= plan.breakdown.without_kv - CUDA_CONTEXT_BYTES + 8192 * needs.kv_bytes_per_token


@PROPERTY_SETTINGS
@given(
    total=st.integers(min_value=4 * GiB, max_value=200 * GiB),
    free_a=st.floats(min_value=0, max_value=1),
    free_b=st.floats(min_value=0, max_value=1),
    concurrency=st.integers(min_value=1, max_value=256),
)
def test_more_free_memory_never_lowers_the_concurrency(needs, total, free_a, free_b, concurrency):
    low, high = sorted((int(total * free_a), int(total * free_b)))
    assume(low < high)
    options = VramOptions(concurrency=concurrency)
    try:
        tight = plan_vram(needs, _gpu(total, low), options)
    except VramError:
        return
    roomy = plan_vram(needs, _gpu(total, high), options)
    assert roomy.concurrency >= tight.concurrency

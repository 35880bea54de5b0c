"""What PaddleOCR-VL needs in GPU memory, from its config and checkpoint headers, without loading any weights.

Exact figures come from the model: weight bytes from the safetensors headers, KV bytes per token from
the text config, image tokens from the vision config and max_pixels. `memory_needs` is pure (the
config dicts `ModelRepo` read and a `Checkpoint` in); `read_checkpoint` and `needs_for_request` are the
edge that reads files and the user's engine flags. The rest (vLLM's start-up
profiling peak, CUDA graphs, the CUDA context) cannot be read from files; they are estimates whose
constants and sources are written next to them below. vLLM 0.32 is the reference for every
behaviour cited (module paths are inside the `vllm` package).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from vllm_paddle_ocr.plugin.errors import VllmPaddleOcrError
from vllm_paddle_ocr.plugin.records import ModelRepo, ServeRequest

from ..recipe import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MAX_PIXELS,
    KV_BLOCK_TOKENS,
    LARGEST_CLIENT_PIXELS,
    MAX_NUM_BATCHED_TOKENS,
    PIXELS_PER_IMAGE_TOKEN,
    PLANNING_NEW_TOKENS,
    PROMPT_TEXT_TOKENS,
)
from ..sizes import MiB, parse_size

# --- estimates, with where they come from ------------------------------------------------------------

# CUDA context of the vLLM process, created before vLLM's own memory snapshot and therefore outside the
# fraction vLLM budgets: on an idle 79.19 GiB H100 vLLM logs "Free memory on device (78.66/79.19 GiB) on
# startup" (0.53 GiB taken by its own context); on 24 GB cards the same log shows 0.45 GiB.
CUDA_CONTEXT_BYTES = 544 * MiB

# Memory the CUDA libraries take outside PyTorch's allocator during the profiling pass (cuBLAS/cuBLASLt
# workspaces, attention-kernel workspaces); vLLM counts it as "non-torch memory" in
# v1/worker/gpu_worker.py:determine_available_memory. Its own logs put this at 0.02-0.15 GiB for one GPU.
NON_TORCH_BYTES = 192 * MiB
# NCCL buffers when tensor parallelism is on (allocated before vLLM's snapshot, per GPU).
NCCL_BYTES = 256 * MiB

# Buffers created together with the model that are not checkpoint weights (rotary cos/sin caches sized
# by max_position_embeddings, runner buffers): vLLM logs "Model loading took 1.8929 GiB" for
# PaddleOCR-VL-0.9B, whose 905.6 M bf16 parameters are 1.69 GiB.
MODEL_BUFFER_BYTES = 224 * MiB

# CUDA graphs: vLLM captures one graph per capture size and mode (FULL_AND_PIECEWISE by default) and,
# since v0.21, subtracts their estimated memory from the budget before sizing the KV cache
# (v1/worker/gpu_worker.py, VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS). Its logs read "Graph capturing
# finished in 5 secs, took 0.67 GiB" for 67 capture sizes of a 28-layer model, about 10 MiB per size;
# an 18-layer model costs less per size, so this is an upper estimate.
CUDA_GRAPH_BASE_BYTES = 64 * MiB
CUDA_GRAPH_BYTES_PER_SIZE = 10 * MiB
# Capture sizes (config/vllm.py:_set_cudagraph_sizes): [1, 2, 4] + range(8, 256, 8) + range(256, max+1, 16)
# with max = min(2 * max_num_seqs, 512).
CUDA_GRAPH_MAX_SIZE_CAP = 512

# Vision encoder profiling peak. vLLM runs the encoder once on as many maximum-size dummy images as the
# encoder budget holds (v1/worker/gpu_model_runner.py:profile_run; multimodal/encoder_budget.py: budget =
# max(max_num_batched_tokens, tokens of one image), images = budget // tokens per image) and keeps the
# allocator's peak. With varlen flash attention nothing grows quadratically, so the peak is linear in
# patches. Live tensors per patch in one SigLIP layer of vLLM's paddleocr_vl.py, in hidden-size vectors:
# attention block: residual, normed input, fused qkv (3), q/k/v relaid (3), output, out_proj -> 10;
# MLP block: residual, normed input -> 2, plus fc1 output and activation -> 2 intermediate vectors.
VISION_ATTENTION_LIVE_HIDDEN = 10
VISION_MLP_LIVE_HIDDEN = 2
VISION_MLP_LIVE_INTERMEDIATE = 2
# Pixel values reach the encoder as float32 (3 x patch x patch per patch).
PIXEL_BYTES = 4
# PyTorch's caching allocator rounds blocks up and splits them; peak reserved runs above peak allocated.
ALLOCATOR_SLACK = 1.25
# Consistency check: PaddleX's server (--max-num-batched-tokens 131072, --gpu-memory-utilization 0.5) was
# reported (PaddleOCR issue 17359) to leave 1.75 GiB of KV cache. Had that card been a 39.39 GiB A100 (the
# report does not say), its profiling peak was about 15 GiB for 36 dummy 3600-token images (518400 patches),
# about 30 KiB per patch; these constants give 31 KiB per patch.

# Text model profiling: one dummy forward of max_num_batched_tokens tokens. Live vectors per token at the
# MLP (residual, normed input, gate+up, activation) = 2 hidden + 3 intermediate; at attention
# (residual, normed input, q, k, v, attention output, o_proj) = 3 hidden + 2 q + 2 kv.
# The sampler dummy run (gpu_model_runner.py:_dummy_sampler_run) then builds float32 logits for
# max_num_seqs requests and sorts them for top-k/top-p (v1/sample/ops/topk_topp_sampler.py): logits,
# sorted values, int64 indices, softmax and scatter buffers, about 32 bytes per vocabulary entry.
SAMPLER_BYTES_PER_LOGIT = 32

# vLLM's dtype names (config torch_dtype/dtype, --dtype) and safetensors' dtype codes, in bytes.
TORCH_DTYPE_BYTES = {
    "float32": 4, "float": 4, "fp32": 4,
    "bfloat16": 2, "bf16": 2, "float16": 2, "half": 2, "fp16": 2,
    "float64": 8, "double": 8,
}
SAFETENSORS_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "F4": 1,
    "I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}
_FLOAT_CODES = {"F64", "F32", "F16", "BF16"}
# --kv-cache-dtype values that are not the model dtype.
KV_CACHE_DTYPE_BYTES = {"fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "fp8_inc": 1, "bfloat16": 2, "float16": 2}


class MemoryNeedsError(VllmPaddleOcrError):
    """The model does not say what it needs (missing or unreadable files, an unknown dtype or flag value)."""


class ModelMemoryNeeds(BaseModel):
    """The model's memory needs per GPU, as plain numbers the budget is computed from."""

    dtype: str
    parameter_count: int
    checkpoint_bytes: int
    weight_bytes: int  # parameters in the serving dtype
    # Text model (ERNIE-4.5-0.3B for PaddleOCR-VL-0.9B).
    num_layers: int
    num_kv_heads: int
    head_dim: int
    text_hidden_size: int
    text_intermediate_size: int
    q_size: int
    vocab_size: int
    kv_dtype_bytes: int
    # Vision encoder and image tokens.
    vision_hidden_size: int
    vision_intermediate_size: int
    patch_size: int
    merge_size: int
    processor_max_pixels: int
    max_pixels: int
    image_tokens: int  # at max_pixels
    # One request and the engine settings the estimates depend on.
    prompt_tokens: int
    max_new_tokens: int
    tokens_per_request: int  # rounded up to whole KV blocks
    max_num_batched_tokens: int
    max_model_len: int
    encoder_profile_images: int
    encoder_profile_patches: int

    @property
    def dtype_bytes(self) -> int:
        """Bytes per element of the serving dtype."""
        return TORCH_DTYPE_BYTES[self.dtype]

    def weight_bytes_per_gpu(self, tensor_parallel_size: int = 1) -> int:
        """Weights one GPU holds; vLLM shards the linear layers and embeddings across tensor-parallel ranks."""
        return math.ceil(self.weight_bytes / tensor_parallel_size)

    @property
    def kv_bytes_per_token(self) -> int:
        """KV bytes per token of the whole model: 2 (K and V) x layers x KV heads x head dim x dtype bytes."""
        return self.kv_bytes_per_token_per_gpu(1)

    def kv_bytes_per_token_per_gpu(self, tensor_parallel_size: int = 1) -> int:
        """KV bytes per token on one GPU; KV heads are split across ranks, replicated when fewer than ranks."""
        heads = max(1, math.ceil(self.num_kv_heads / tensor_parallel_size))
        return 2 * self.num_layers * heads * self.head_dim * self.kv_dtype_bytes

    def kv_bytes_per_request(self, tensor_parallel_size: int = 1) -> int:
        """KV bytes one block request holds on one GPU at its full length."""
        return self.tokens_per_request * self.kv_bytes_per_token_per_gpu(tensor_parallel_size)

    def encoder_peak_bytes(self) -> int:
        """Peak of vLLM's image-encoder profiling run (the largest transient of start-up)."""
        vision_vector = self.vision_hidden_size * self.dtype_bytes
        per_patch = max(
            VISION_ATTENTION_LIVE_HIDDEN * vision_vector,
            VISION_MLP_LIVE_HIDDEN * vision_vector + VISION_MLP_LIVE_INTERMEDIATE * self.vision_intermediate_size * self.dtype_bytes,
        ) + 3 * self.patch_size * self.patch_size * PIXEL_BYTES
        return math.ceil(self.encoder_profile_patches * per_patch * ALLOCATOR_SLACK)

    def encoder_output_bytes(self) -> int:
        """Encoder outputs vLLM keeps while it profiles the text model (one text-hidden vector per image token)."""
        tokens = self.encoder_profile_patches // (self.merge_size * self.merge_size)
        return tokens * self.text_hidden_size * self.dtype_bytes

    def text_peak_bytes(self) -> int:
        """Peak of the text model's dummy forward over max_num_batched_tokens tokens."""
        h, i, b = self.text_hidden_size, self.text_intermediate_size, self.dtype_bytes
        kv = self.num_kv_heads * self.head_dim
        per_token = max(2 * h + 3 * i, 3 * h + 2 * self.q_size + 2 * kv) * b
        return math.ceil(self.max_num_batched_tokens * per_token * ALLOCATOR_SLACK)

    def sampler_peak_bytes(self, max_num_seqs: int) -> int:
        """Peak of the sampler's dummy run: float32 logits for every sequence, sorted for top-k/top-p."""
        return max_num_seqs * self.vocab_size * SAMPLER_BYTES_PER_LOGIT

    def activation_peak_bytes(self, max_num_seqs: int) -> int:
        """vLLM's profiled peak above the weights: the largest of the encoder, text and sampler runs."""
        transient = max(self.encoder_peak_bytes(), self.text_peak_bytes(), self.sampler_peak_bytes(max_num_seqs))
        return self.encoder_output_bytes() + transient


def cuda_graph_sizes(max_num_seqs: int) -> list[int]:
    """The batch sizes vLLM captures CUDA graphs for by default, given --max-num-seqs."""
    top = min(2 * max_num_seqs, CUDA_GRAPH_MAX_SIZE_CAP)
    sizes = [1, 2, 4] + list(range(8, 256, 8)) + list(range(256, top + 1, 16))
    return [s for s in sizes if s <= top]


def cuda_graph_bytes(max_num_seqs: int) -> int:
    """Estimated CUDA graph memory for the default capture sizes (two modes per size)."""
    return CUDA_GRAPH_BASE_BYTES + CUDA_GRAPH_BYTES_PER_SIZE * len(cuda_graph_sizes(max_num_seqs))


# --- the checkpoint (the edge that reads files) ------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """Tensor sizes of a checkpoint, from its safetensors headers: enough to size it in any dtype."""

    parameters: int
    disk_bytes: int
    float_parameters: int  # cast to the serving dtype when loaded
    other_bytes: int  # integer and boolean tensors, loaded as they are

    def serving_bytes(self, dtype_bytes: int) -> int:
        """Bytes once floating tensors are cast to a dtype of this many bytes."""
        return self.float_parameters * dtype_bytes + self.other_bytes


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of one safetensors file (8-byte little-endian length, then JSON); no tensor data."""
    try:
        with path.open("rb") as fh:
            prefix = fh.read(8)
            if len(prefix) != 8:
                raise MemoryNeedsError(f"{path} is too short to be a safetensors file")
            (length,) = struct.unpack("<Q", prefix)
            if length > 100 * MiB:
                raise MemoryNeedsError(f"{path} declares a {length}-byte header; not a safetensors file")
            header = json.loads(fh.read(length))
    except OSError as exc:
        raise MemoryNeedsError(f"cannot read {path}: {exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MemoryNeedsError(f"{path} has no valid safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise MemoryNeedsError(f"{path} has no valid safetensors header")
    return header


def safetensors_files(model_dir: Path) -> list[Path]:
    """The checkpoint files vLLM loads: those a *.safetensors.index.json names, else every *.safetensors."""
    indexes = sorted(model_dir.glob("*.safetensors.index.json"))
    if indexes:
        try:
            index = json.loads(indexes[0].read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MemoryNeedsError(f"cannot read {indexes[0]}: {exc}") from exc
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        names = sorted(set((weight_map or {}).values()))
        if not names:
            raise MemoryNeedsError(f"{indexes[0]} lists no weight files")
        files = [model_dir / name for name in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise MemoryNeedsError(f"{indexes[0].name} names files that are missing from {model_dir}: {missing}")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise MemoryNeedsError(f"no *.safetensors weights in {model_dir}; the model's size cannot be read")
    return files


def _numel(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count


def read_checkpoint(model_dir: Path) -> Checkpoint:
    """Parameter counts and bytes of the checkpoint in a model directory, from the headers only."""
    params = disk = floats = other = 0
    for path in safetensors_files(Path(model_dir)):
        for name, entry in read_safetensors_header(path).items():
            if name == "__metadata__" or not isinstance(entry, dict):
                continue
            code = str(entry.get("dtype", ""))
            size = SAFETENSORS_DTYPE_BYTES.get(code)
            if size is None:
                raise MemoryNeedsError(f"{path.name}: tensor {name} has unknown dtype {code!r}")
            count = _numel(entry.get("shape", []))
            params += count
            start, end = entry.get("data_offsets", (0, count * size))
            disk += int(end) - int(start)
            if code in _FLOAT_CODES:
                floats += count
            else:
                other += count * size
    return Checkpoint(params, disk, floats, other)


# --- the pure core ---------------------------------------------------------------------------------


def _serving_dtype(dtype: str | None, config: dict[str, Any], text: dict[str, Any]) -> str:
    """The dtype vLLM will run in: --dtype, else the config's; "auto" float32 becomes bfloat16 as in vLLM."""
    if dtype and dtype != "auto":
        name = dtype.removeprefix("torch.")
        if name not in TORCH_DTYPE_BYTES:
            raise MemoryNeedsError(f"unknown --dtype {dtype!r}; use auto, bfloat16, float16 or float32")
        return {"bf16": "bfloat16", "half": "float16", "fp16": "float16", "float": "float32", "fp32": "float32"}.get(name, name)
    found = config.get("torch_dtype") or config.get("dtype") or text.get("torch_dtype") or text.get("dtype") or "bfloat16"
    name = str(found).removeprefix("torch.")
    if name in {"float32", "float", "float64"}:
        # vllm/config/model.py:_resolve_auto_dtype serves float32 checkpoints in half precision on GPUs.
        return "bfloat16"
    return name if name in TORCH_DTYPE_BYTES else "bfloat16"


def processor_max_pixels(preprocessor: dict[str, Any]) -> int:
    """The largest image the model's processor keeps, from preprocessor_config.json's fields."""
    size = preprocessor.get("size") or {}
    return int(
        preprocessor.get("max_pixels")
        or size.get("max_pixels")
        or size.get("longest_edge")
        or 28 * 28 * 1280  # vLLM's smart_resize default
    )


def served_context_length(config: dict[str, Any], preprocessor: dict[str, Any]) -> int:
    """The --max-model-len to serve: the largest crop plus PaddleX's default output, rounded up to 1024."""
    max_pixels = max(processor_max_pixels(preprocessor), LARGEST_CLIENT_PIXELS)
    needed = math.ceil(max_pixels / PIXELS_PER_IMAGE_TOKEN) + DEFAULT_MAX_NEW_TOKENS + PROMPT_TEXT_TOKENS
    length = math.ceil(needed / 1024) * 1024
    text = config.get("text_config") or config
    limit = text.get("max_position_embeddings")
    return min(length, int(limit)) if limit else length


def _tokens_at(pixels: int, patch: int, merge: int) -> int:
    return pixels // ((patch * merge) ** 2)


def _dummy_image_tokens(pixels: int, patch: int, merge: int) -> int:
    """Tokens of vLLM's largest dummy image (paddleocr_vl.py:get_image_size_with_most_features)."""
    tokens = _tokens_at(pixels, patch, merge)
    side = max(1, int(math.isqrt(tokens)))
    return max(1, tokens - tokens % side)


def memory_needs(
    config: dict[str, Any],
    preprocessor: dict[str, Any],
    checkpoint: Checkpoint,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_num_batched_tokens: int = MAX_NUM_BATCHED_TOKENS,
    max_new_tokens: int = PLANNING_NEW_TOKENS,
    dtype: str | None = None,
    max_model_len: int | None = None,
    kv_cache_dtype: str | None = None,
) -> ModelMemoryNeeds:
    """The model's needs from config.json, preprocessor_config.json and its checkpoint's sizes.

    The defaults are the launch plan's: PaddleX's block crops, the recipe's batched tokens, and the
    context the launch plan serves.
    """
    if not config:
        raise MemoryNeedsError("the model has no config.json; its memory needs cannot be read")
    text = config.get("text_config") or config
    vision = config.get("vision_config") or {}

    def need(section: dict[str, Any], key: str, where: str) -> int:
        value = section.get(key)
        if value is None:
            raise MemoryNeedsError(f"the model's config.json has no {where}{key}")
        return int(value)

    layers = need(text, "num_hidden_layers", "text ")
    heads = need(text, "num_attention_heads", "text ")
    hidden = need(text, "hidden_size", "text ")
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or hidden // heads)
    intermediate = int(text.get("intermediate_size") or 4 * hidden)
    vocab = int(text.get("vocab_size") or config.get("vocab_size") or 0)

    serving = _serving_dtype(dtype, config, text)
    dtype_bytes = TORCH_DTYPE_BYTES[serving]
    kv_dtype_bytes = dtype_bytes
    if kv_cache_dtype and kv_cache_dtype != "auto":
        if kv_cache_dtype not in KV_CACHE_DTYPE_BYTES:
            raise MemoryNeedsError(f"unknown --kv-cache-dtype {kv_cache_dtype!r}")
        kv_dtype_bytes = KV_CACHE_DTYPE_BYTES[kv_cache_dtype]

    patch = int(vision.get("patch_size") or 14)
    merge = int(vision.get("spatial_merge_size") or 2)
    processor_pixels = processor_max_pixels(preprocessor)
    request_pixels = int(max_pixels) if max_pixels else processor_pixels
    image_tokens = max(1, _tokens_at(request_pixels, patch, merge))

    # Encoder profiling: vLLM sizes its dummy image from the processor's max_pixels; a larger per-request
    # max_pixels (trusted mm_processor_kwargs) can only be served if the budget holds it too.
    per_image = max(_dummy_image_tokens(processor_pixels, patch, merge), image_tokens)
    budget = max(max_num_batched_tokens, per_image)
    images = max(1, budget // per_image)
    tokens_per_request = math.ceil((image_tokens + PROMPT_TEXT_TOKENS + max_new_tokens) / KV_BLOCK_TOKENS) * KV_BLOCK_TOKENS
    context = int(max_model_len or served_context_length(config, preprocessor))
    return ModelMemoryNeeds(
        dtype=serving,
        parameter_count=checkpoint.parameters,
        checkpoint_bytes=checkpoint.disk_bytes,
        weight_bytes=checkpoint.serving_bytes(dtype_bytes),
        num_layers=layers,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        text_hidden_size=hidden,
        text_intermediate_size=intermediate,
        q_size=heads * head_dim,
        vocab_size=vocab,
        kv_dtype_bytes=kv_dtype_bytes,
        vision_hidden_size=int(vision.get("hidden_size") or 1152),
        vision_intermediate_size=int(vision.get("intermediate_size") or 4304),
        patch_size=patch,
        merge_size=merge,
        processor_max_pixels=processor_pixels,
        max_pixels=request_pixels,
        image_tokens=image_tokens,
        prompt_tokens=PROMPT_TEXT_TOKENS,
        max_new_tokens=max_new_tokens,
        tokens_per_request=tokens_per_request,
        max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=context,
        encoder_profile_images=images,
        encoder_profile_patches=images * per_image * merge * merge,
    )


# --- the layout model on the GPU -----------------------------------------------------------------------

# The torch layout engine runs in the proxy's process, so on a GPU it holds a CUDA context of its own
# (the same size as vLLM's, above), its weights in half precision and one forward pass's activations
# per page of its batch. Activations measured with the published shapes (random weights, one page of
# 850x1100 resized to 800x800; bench/layout_engines.py prints them): the resident-memory peak of a
# float32 forward pass on CPU above the loaded model, at batch 1 and 4, split into a part per pass and
# a part per page, halved for float16 and given the allocator slack above. PP-DocLayoutV3 computes a
# 200x200 mask per query in each decoder layer, which is most of its per-page share.
LAYOUT_ACTIVATION_MIB: dict[str, tuple[int, int]] = {  # model: (per pass, per page), float32; the larger of two runs
    "PP-DocLayoutV2": (215, 180),
    "PP-DocLayoutV3": (322, 775),
}
LAYOUT_DTYPE_BYTES = 2
# paddle's .pdiparams holds float32 tensors (with a few bytes of header each).
PDIPARAMS_BYTES_PER_PARAMETER = 4


def layout_parameter_count(layout_dir: Path) -> int:
    """The layout model's parameters: from its safetensors headers, else from the size of paddle's params file."""
    directory = Path(layout_dir)
    if (directory / "model.safetensors").is_file():
        return read_checkpoint(directory).parameters
    params = directory / "inference.pdiparams"
    try:
        return params.stat().st_size // PDIPARAMS_BYTES_PER_PARAMETER
    except OSError as exc:
        raise MemoryNeedsError(f"cannot size the layout model in {directory}: no model.safetensors and {exc}") from exc


def layout_model_bytes(model_name: str, parameters: int, batch_size: int) -> int:
    """GPU bytes the layout model's process holds: CUDA context, float16 weights and a batch's activations."""
    per_pass, per_page = LAYOUT_ACTIVATION_MIB.get(model_name, max(LAYOUT_ACTIVATION_MIB.values()))
    activations = (per_pass + per_page * max(1, batch_size)) * MiB * LAYOUT_DTYPE_BYTES // 4
    return CUDA_CONTEXT_BYTES + parameters * LAYOUT_DTYPE_BYTES + math.ceil(activations * ALLOCATOR_SLACK)


# --- the user's engine flags --------------------------------------------------------------------------


def context_length(text: str) -> int | None:
    """--max-model-len as vLLM reads it: a size such as 8192 or 8k, or -1/auto for the model's own."""
    if text.strip().lower() in {"-1", "auto"}:
        return None
    return parse_size(text)


def needs_for_request(request: ServeRequest, model: ModelRepo) -> ModelMemoryNeeds:
    """What the model needs as this request launches it: the user's engine flags win over the plan's."""
    given = {
        "max_num_batched_tokens": request.user_number("max-num-batched-tokens", parse_size),
        "dtype": request.user_value("dtype"),
        "max_model_len": request.user_number("max-model-len", context_length),
        "kv_cache_dtype": request.user_value("kv-cache-dtype"),
    }
    return memory_needs(
        model.config,
        model.preprocessor,
        read_checkpoint(model.vlm_dir),
        **{key: value for key, value in given.items() if value is not None},
    )

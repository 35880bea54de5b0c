"""The model's memory needs, from the repo's config files and safetensors headers, without loading weights."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning import memory_needs as mn
from vllm_paddle_ocr.backends.vllm_paddle_ocr.deploy.catalog import PUBLISHED_TEXT_CONFIG, PUBLISHED_VISION_CONFIG
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.memory_needs import MemoryNeedsError
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.model_repo import resolve_model_repo

SIZES = {"BF16": 2, "F32": 4, "I64": 8, "U8": 1}


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]], metadata: dict | None = None) -> int:
    """A safetensors file with a real header and a sparse (unwritten) data area; returns the data bytes."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = SIZES[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        fh.truncate(8 + len(raw) + offset)
    return offset


def write_model(
    root: Path,
    *,
    nested: bool = False,
    dtype_key: str = "torch_dtype",
    dtype: str = "bfloat16",
    max_pixels: int | None = 2822400,
    tensors: dict[str, tuple[str, list[int]]] | None = None,
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    config: dict = {"architectures": ["PaddleOCRVLForConditionalGeneration"], "model_type": "paddleocr_vl",
                    dtype_key: dtype, "vision_config": dict(PUBLISHED_VISION_CONFIG)}
    if nested:
        config["text_config"] = dict(PUBLISHED_TEXT_CONFIG)
    else:
        config.update(PUBLISHED_TEXT_CONFIG)
    (root / "config.json").write_text(json.dumps(config))
    if max_pixels is not None:
        (root / "preprocessor_config.json").write_text(json.dumps({"min_pixels": 147384, "max_pixels": max_pixels}))
    write_safetensors(root / "model.safetensors", tensors or {"lm_head.weight": ("BF16", [103424, 1024])})
    return root


def needs(root: Path, **kwargs):
    """The needs as the runtime reads them: the repo's config files once, the checkpoint's headers."""
    args = {"max_pixels": None, "max_num_batched_tokens": 16384, "max_new_tokens": 4096, "dtype": None}
    args.update(kwargs)
    repo = resolve_model_repo(root)
    return mn.memory_needs(repo.config, repo.preprocessor, mn.read_checkpoint(repo.vlm_dir), **args)


def test_kv_bytes_per_token_come_from_the_text_config(tmp_path):
    got = needs(write_model(tmp_path))
    # 2 (K and V) x 18 layers x 2 KV heads x 128 head dim x 2 bytes (bf16)
    assert got.kv_bytes_per_token == 2 * 18 * 2 * 128 * 2 == 18432
    assert (got.num_layers, got.num_kv_heads, got.head_dim) == (18, 2, 128)


def test_nested_text_config_reads_the_same(tmp_path):
    flat = needs(write_model(tmp_path / "flat"))
    nested = needs(write_model(tmp_path / "nested", nested=True))
    assert nested.kv_bytes_per_token == flat.kv_bytes_per_token
    assert nested.vocab_size == flat.vocab_size == 103424
    # The context the launch plan serves: the largest crop (3600 tokens) + 4096 new tokens, in whole 1024s.
    assert nested.max_model_len == flat.max_model_len == 8192


def test_head_dim_and_kv_heads_default_like_transformers(tmp_path):
    root = write_model(tmp_path)
    config = json.loads((root / "config.json").read_text())
    del config["head_dim"], config["num_key_value_heads"]
    (root / "config.json").write_text(json.dumps(config))
    got = needs(root)
    assert got.head_dim == 1024 // 16 and got.num_kv_heads == 16
    assert got.kv_bytes_per_token == 2 * 18 * 16 * 64 * 2


def test_weight_bytes_are_exact_from_the_headers(tmp_path):
    tensors = {
        "model.embed_tokens.weight": ("BF16", [103424, 1024]),
        "visual.patch_embedding.weight": ("BF16", [1152, 3, 14, 14]),
        "visual.position_ids": ("I64", [1, 729]),
    }
    got = needs(write_model(tmp_path, tensors=tensors))
    params = 103424 * 1024 + 1152 * 3 * 14 * 14 + 729
    assert got.parameter_count == params
    assert got.checkpoint_bytes == (103424 * 1024 + 1152 * 3 * 14 * 14) * 2 + 729 * 8
    assert got.weight_bytes == got.checkpoint_bytes  # served in the stored dtype


def test_float32_checkpoint_is_counted_in_the_serving_dtype(tmp_path):
    tensors = {"a.weight": ("F32", [1000, 1000]), "a.mask": ("U8", [1000])}
    root = write_model(tmp_path, dtype="float32", tensors=tensors)
    auto = needs(root)  # vLLM serves float32 checkpoints in bfloat16 on GPUs
    assert auto.dtype == "bfloat16"
    assert auto.checkpoint_bytes == 4_000_000 + 1000
    assert auto.weight_bytes == 2_000_000 + 1000
    full = needs(root, dtype="float32")
    assert full.weight_bytes == 4_000_000 + 1000
    assert full.kv_bytes_per_token == 2 * auto.kv_bytes_per_token


@pytest.mark.parametrize(("given", "expected"), [("half", "float16"), ("bfloat16", "bfloat16"), ("auto", "bfloat16")])
def test_dtype_flag_wins_over_the_config(tmp_path, given, expected):
    got = needs(write_model(tmp_path, dtype="bfloat16"), dtype=given)
    assert got.dtype == expected


def test_dtype_is_read_from_transformers_5_dtype_key(tmp_path):
    got = needs(write_model(tmp_path, dtype_key="dtype", dtype="float16"))
    assert got.dtype == "float16"


def test_an_unknown_dtype_flag_is_refused(tmp_path):
    with pytest.raises(MemoryNeedsError, match="unknown --dtype 'int3'"):
        needs(write_model(tmp_path), dtype="int3")


def test_fp8_kv_cache_halves_kv_bytes(tmp_path):
    got = needs(write_model(tmp_path), kv_cache_dtype="fp8")
    assert got.kv_bytes_per_token == 9216


def test_sharded_checkpoint_counts_every_file_in_the_index(tmp_path):
    root = write_model(tmp_path)
    (root / "model.safetensors").unlink()
    first = write_safetensors(root / "model-00001-of-00002.safetensors", {"a": ("BF16", [4096, 4096])})
    second = write_safetensors(root / "model-00002-of-00002.safetensors", {"b": ("BF16", [1024]), "c": ("BF16", [7])})
    # A stray file that the index does not name is not loaded by vLLM and is not counted.
    write_safetensors(root / "consolidated.safetensors", {"x": ("BF16", [10**6])})
    index = {"metadata": {"total_size": first + second},
             "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors",
                            "c": "model-00002-of-00002.safetensors"}}
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    got = needs(root)
    assert got.checkpoint_bytes == first + second
    assert got.parameter_count == 4096 * 4096 + 1024 + 7


def test_an_index_naming_a_missing_shard_is_refused(tmp_path):
    root = write_model(tmp_path)
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(MemoryNeedsError, match="gone.safetensors"):
        needs(root)


def test_weights_are_never_read(tmp_path):
    """A 1.7 GB checkpoint is read through its header only: the sparse file has no data at all."""
    root = write_model(tmp_path, tensors={"w": ("BF16", [905_601_648])})
    got = needs(root)
    assert got.weight_bytes == 1_811_203_296
    assert (root / "model.safetensors").stat().st_blocks * 512 < 1_000_000


@pytest.mark.parametrize(
    "content",
    [b"", b"\x05\x00\x00\x00\x00\x00\x00\x00{oops", struct.pack("<Q", 2**40) + b"{}", struct.pack("<Q", 2) + b"[]"],
)
def test_a_broken_safetensors_file_is_a_clear_error(tmp_path, content):
    root = write_model(tmp_path)
    (root / "model.safetensors").write_bytes(content)
    with pytest.raises(MemoryNeedsError, match="model.safetensors"):
        needs(root)


def test_no_weights_or_no_config_is_a_clear_error(tmp_path):
    root = write_model(tmp_path)
    (root / "model.safetensors").unlink()
    with pytest.raises(MemoryNeedsError, match=r"no \*\.safetensors weights"):
        needs(root)
    with pytest.raises(MemoryNeedsError, match="no config.json"):
        mn.memory_needs({}, {}, mn.Checkpoint(1, 2, 1, 0))


def test_image_tokens_at_max_pixels(tmp_path):
    root = write_model(tmp_path)
    from_processor = needs(root)  # preprocessor_config.json: 2822400 px = 3600 tokens of 28 x 28 px
    assert from_processor.max_pixels == 2822400 and from_processor.image_tokens == 3600
    given = needs(root, max_pixels=1003520)  # PaddleX's per-block max_pixels
    assert given.image_tokens == 1280
    assert given.processor_max_pixels == 2822400


def test_max_pixels_defaults_to_vllms_when_the_processor_has_none(tmp_path):
    got = needs(write_model(tmp_path, max_pixels=None))
    assert got.processor_max_pixels == 28 * 28 * 1280


def test_tokens_per_request_are_image_prompt_and_new_tokens_in_whole_kv_blocks(tmp_path):
    got = needs(write_model(tmp_path), max_pixels=1003520, max_new_tokens=1024)
    raw = 1280 + mn.PROMPT_TEXT_TOKENS + 1024
    assert got.tokens_per_request == -(-raw // 16) * 16
    assert got.tokens_per_request % 16 == 0 and got.tokens_per_request >= raw


def test_max_model_len_given_wins_over_the_config(tmp_path):
    assert needs(write_model(tmp_path), max_model_len=8192).max_model_len == 8192


def test_encoder_profiling_follows_vllms_encoder_budget(tmp_path):
    root = write_model(tmp_path)
    # 16384-token budget / 3600-token dummy images = 4 images of 60 x 60 merged patches (4 patches each).
    got = needs(root, max_num_batched_tokens=16384)
    assert got.encoder_profile_images == 4
    assert got.encoder_profile_patches == 4 * 3600 * 4
    # A budget smaller than one image still profiles one image.
    small = needs(root, max_num_batched_tokens=2048)
    assert small.encoder_profile_images == 1
    # PaddleX's own server: 131072 tokens -> 36 images.
    assert needs(root, max_num_batched_tokens=131072).encoder_profile_images == 36


def test_profiling_peak_grows_with_max_num_batched_tokens(tmp_path):
    root = write_model(tmp_path)
    small = needs(root, max_num_batched_tokens=8192)
    large = needs(root, max_num_batched_tokens=131072)
    assert small.activation_peak_bytes(16) < needs(root).activation_peak_bytes(16) < large.activation_peak_bytes(16)
    # About 31 KiB per vision patch (see memory_needs for the derivation).
    per_patch = large.encoder_peak_bytes() / large.encoder_profile_patches
    assert 28 * 1024 < per_patch < 34 * 1024
    # The image encoder, not the 0.3B text model, sets the peak of PaddleOCR-VL's profiling run.
    assert large.encoder_peak_bytes() > large.text_peak_bytes()


def test_sampler_peak_grows_with_max_num_seqs(tmp_path):
    got = needs(write_model(tmp_path))
    assert got.sampler_peak_bytes(1024) == 4 * got.sampler_peak_bytes(256)
    # vLLM's default 1024 sequences on large GPUs would outgrow the encoder: the plan sets --max-num-seqs.
    assert got.activation_peak_bytes(1024) > got.activation_peak_bytes(64)


def test_cuda_graph_sizes_follow_vllms_defaults():
    assert mn.cuda_graph_sizes(1) == [1, 2]
    assert mn.cuda_graph_sizes(16) == [1, 2, 4, 8, 16, 24, 32]
    assert mn.cuda_graph_sizes(1024)[-1] == 512 and len(mn.cuda_graph_sizes(1024)) == 3 + 31 + 17
    assert mn.cuda_graph_bytes(16) < mn.cuda_graph_bytes(64) < mn.cuda_graph_bytes(256) == mn.cuda_graph_bytes(1024)


def test_tensor_parallel_splits_weights_and_kv_heads(tmp_path):
    got = needs(write_model(tmp_path))
    assert got.weight_bytes_per_gpu(2) == -(-got.weight_bytes // 2)
    assert got.kv_bytes_per_token_per_gpu(2) == got.kv_bytes_per_token // 2
    # Two KV heads cannot be split four ways: each rank keeps one.
    assert got.kv_bytes_per_token_per_gpu(4) == got.kv_bytes_per_token // 2

"""The layout engine, device and batch decided at plan time, and the layout model's place in the VRAM budget."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.tiny_vlm import write_fake_layout_model, write_fake_vlm_config
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.layout_model import (
    GPU_BATCH_SIZE,
    LayoutModelError,
    LayoutModelSpec,
    choose_layout,
    inspect_model_dir,
    normalise_device,
    plan_layout,
)
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.memory_needs import CUDA_CONTEXT_BYTES, layout_model_bytes
from vllm_paddle_ocr.backends.vllm_paddle_ocr.serving.argv import parse_serve_argv

GiB = 1024**3
EXE = [sys.executable, "-m", "vllm_paddle_ocr.backends.vllm_paddle_ocr.serving.cli"]
# The published PP-DocLayoutV2's inference.pdiparams.
PUBLISHED_V2_PARAMS_BYTES = 212 * 1000**2

STATIC = LayoutModelSpec(Path("/m/PP-DocLayoutV2"), "PP-DocLayoutV2", "paddle_static", "static", "inference.json")
SAFETENSORS_ONLY = LayoutModelSpec(Path("/m/PP-DocLayoutV3"), "PP-DocLayoutV3", None, "safetensors")
ONNX_ONLY = LayoutModelSpec(Path("/m/PP-DocLayoutV2"), "PP-DocLayoutV2", "onnxruntime", None)


# ---------------------------------------------------------------- which engine


def test_auto_prefers_torch_and_says_why():
    choice = choose_layout(STATIC, gpu_present=True)
    assert (choice.engine, choice.device, choice.batch_size) == ("torch", "cuda", GPU_BATCH_SIZE["PP-DocLayoutV2"])
    assert "conversion of paddle's static format" in choice.reason


def test_auto_falls_back_to_paddle_when_torch_lacks_something():
    choice = choose_layout(STATIC, gpu_present=True, torch_lacks="transformers")
    assert (choice.engine, choice.device) == ("paddle", "cpu")  # paddle's layout extra is the CPU build
    assert "missing: transformers" in choice.reason
    onnx = choose_layout(ONNX_ONLY, gpu_present=False)
    assert onnx.engine == "paddle" and "the torch engine needs model.safetensors" in onnx.reason


def test_no_engine_is_one_error_naming_what_to_install_or_convert():
    with pytest.raises(LayoutModelError) as err:
        choose_layout(STATIC, gpu_present=False, torch_lacks="torch, cv2", paddle_lacks="paddle, paddlex")
    message = str(err.value)
    assert "\n" not in message
    assert "missing: torch, cv2" in message and "pip install 'vllm-paddle-ocr[layout]'" in message
    with pytest.raises(LayoutModelError, match="paddlex needs inference.yml"):
        choose_layout(SAFETENSORS_ONLY, engine="paddle", gpu_present=False)
    with pytest.raises(LayoutModelError, match="the torch engine needs model.safetensors"):
        choose_layout(ONNX_ONLY, engine="torch", gpu_present=False)


def test_an_engine_asked_for_is_kept_or_refused():
    assert choose_layout(STATIC, engine="paddle", gpu_present=True).engine == "paddle"
    with pytest.raises(LayoutModelError, match="missing: a transformers release"):
        choose_layout(STATIC, engine="torch", gpu_present=True, torch_lacks="a transformers release with PP-DocLayoutV2 (5.3 or newer)")
    with pytest.raises(LayoutModelError, match="--layout-engine 'onnx'"):
        choose_layout(STATIC, engine="onnx", gpu_present=True)


@pytest.mark.parametrize(
    ("given", "device"),
    [("cpu", "cpu"), ("CUDA", "cuda"), ("cuda:1", "cuda:1"), ("gpu", "cuda"), ("gpu:2", "cuda:2")],
)
def test_devices_are_named_as_torch_names_them(given, device):
    assert normalise_device(given) == device


@pytest.mark.parametrize("given", ["tpu", "cuda:x", "gpu:-1", ""])
def test_unknown_devices_are_refused(given):
    with pytest.raises(LayoutModelError, match="use cpu, cuda or cuda:N"):
        normalise_device(given)


def test_device_and_batch_defaults_follow_the_engine_and_the_gpu():
    assert choose_layout(STATIC, gpu_present=False).device == "cpu"
    assert choose_layout(STATIC, gpu_present=False).batch_size == 4
    assert choose_layout(SAFETENSORS_ONLY, gpu_present=True).batch_size == 2  # V3's masks make pages large
    assert choose_layout(STATIC, gpu_present=False, device="gpu:1", batch_size=3).device == "cuda:1"
    assert choose_layout(STATIC, gpu_present=False, device="gpu:1", batch_size=3).batch_size == 3


def test_a_transformers_directory_needs_no_inference_yml(tmp_path):
    layout = tmp_path / "layout"
    layout.mkdir()
    (layout / "config.json").write_text(json.dumps({"model_type": "pp_doclayout_v3"}))
    (layout / "model.safetensors").write_bytes(b"")
    spec = inspect_model_dir(layout)
    assert (spec.model_name, spec.engine, spec.torch_weights) == ("PP-DocLayoutV3", None, "safetensors")


def test_static_files_serve_both_engines(tmp_path):
    spec = inspect_model_dir(write_fake_layout_model(tmp_path / "PP-DocLayoutV2"))
    assert (spec.engine, spec.torch_weights, spec.static_program) == ("paddle_static", "static", "inference.json")
    assert plan_layout(None, None, gpu_present=True) is None


def test_serve_flags_reach_the_request():
    request = parse_serve_argv(["/m", "--layout-engine", "paddle", "--layout-device", "cuda:1", "--layout-batch-size", "2"])
    assert (request.layout_engine, request.layout_device, request.layout_batch_size) == ("paddle", "cuda:1", 2)
    default = parse_serve_argv(["/m"])
    assert (default.layout_engine, default.layout_device, default.layout_batch_size) == ("auto", None, None)


# ---------------------------------------------------------------- the budget


def test_layout_bytes_grow_with_the_batch_and_hold_a_context_of_their_own():
    one, eight = layout_model_bytes("PP-DocLayoutV2", 53_600_000, 1), layout_model_bytes("PP-DocLayoutV2", 53_600_000, 8)
    assert CUDA_CONTEXT_BYTES + 2 * 53_600_000 < one < eight
    assert layout_model_bytes("PP-DocLayoutV3", 33_000_000, 8) > eight  # V3's masks


def plan(tmp_path: Path, *flags: str) -> dict:
    repo = write_fake_vlm_config(tmp_path / "repo")
    layout = write_fake_layout_model(tmp_path / "PP-DocLayoutV2", params_bytes=PUBLISHED_V2_PARAMS_BYTES)
    out = subprocess.run(
        [*EXE, "plan", str(repo), "--layout-model-dir", str(layout), "--json", *flags],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_plan_budgets_the_layout_model_on_the_gpu(tmp_path):
    on_gpu = plan(tmp_path, "--gpu-total", "80GiB", "--concurrency", "64", "--layout-device", "cuda")
    on_cpu = plan(tmp_path, "--gpu-total", "80GiB", "--concurrency", "64", "--layout-device", "cpu")
    assert (on_gpu["proxy"]["layout_engine"], on_gpu["proxy"]["layout_device"]) == ("torch", "cuda")
    assert on_cpu["proxy"]["layout_device"] == "cpu" and on_cpu["vram"]["breakdown"]["layout_model"] == 0
    layout = on_gpu["vram"]["breakdown"]["layout_model"]
    assert layout >= CUDA_CONTEXT_BYTES + 2 * (PUBLISHED_V2_PARAMS_BYTES // 4)
    assert on_gpu["vram"]["needed_bytes"] == on_cpu["vram"]["needed_bytes"] + layout
    assert on_gpu["vram"]["claim_bytes"] > on_cpu["vram"]["claim_bytes"]
    # The fraction GPUStack books covers vLLM and the layout model, and stays a small share of the card.
    fraction = float(on_gpu["vram"]["gpustack_parameter"].split("=")[1])
    assert fraction * 80 * GiB >= on_gpu["vram"]["needed_bytes"]
    assert on_gpu["vram"]["claim_bytes"] <= 8 * GiB


def test_plan_for_people_names_the_engine_and_the_layout_part(tmp_path):
    repo = write_fake_vlm_config(tmp_path / "repo")
    layout = write_fake_layout_model(tmp_path / "PP-DocLayoutV2", params_bytes=PUBLISHED_V2_PARAMS_BYTES)
    out = subprocess.run(
        [*EXE, "plan", str(repo), "--layout-model-dir", str(layout), "--gpu-total", "80GiB", "--layout-device", "cuda"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "(PP-DocLayoutV2, torch engine on cuda, batches of 4)" in out.stdout
    (parts,) = [line for line in out.stdout.splitlines() if line.startswith("VRAM parts:")]
    assert "layout model" in parts


def test_plan_fails_in_one_line_when_no_engine_can_load_the_layout_model(tmp_path):
    repo = write_fake_vlm_config(tmp_path / "repo")
    layout = tmp_path / "PP-DocLayoutV2"
    layout.mkdir()
    (layout / "inference.yml").write_text("Global:\n  model_name: PP-DocLayoutV2\n")
    (layout / "inference.onnx").write_bytes(b"")
    out = subprocess.run(
        [*EXE, "plan", str(repo), "--layout-model-dir", str(layout), "--layout-engine", "torch"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 1
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("vllm_paddle_ocr plan: error:") and "the torch engine needs model.safetensors" in line


def test_a_given_fraction_holds_the_layout_model_and_vllm_gets_a_fixed_kv_cache(tmp_path):
    """A catalog's --gpu-memory-utilization is what GPUStack books: vLLM must leave the layout model its share."""
    from vllm_paddle_ocr.backends.vllm_paddle_ocr.deploy.catalog import planned_fraction

    share = f"{planned_fraction(24 * GiB):.2f}"
    on_gpu = plan(tmp_path, "--gpu-total", "24GiB", f"--gpu-memory-utilization={share}", "--layout-device", "cuda")
    argv, vram = on_gpu["vllm_argv"], on_gpu["vram"]
    kv = int(argv[argv.index("--kv-cache-memory-bytes") + 1])
    booked = float(share) * 24 * GiB
    layout = vram["breakdown"]["layout_model"]
    # vLLM's parts with that KV cache, plus the layout model, fit in what is booked.
    assert vram["breakdown"]["kv_cache"] == kv
    assert vram["needed_bytes"] - vram["breakdown"]["cuda_context"] <= booked * 1.001
    assert layout > 0 and vram["claim_bytes"] <= booked + vram["breakdown"]["cuda_context"] + 1
    on_cpu = plan(tmp_path, "--gpu-total", "24GiB", f"--gpu-memory-utilization={share}", "--layout-device", "cpu")
    assert "--kv-cache-memory-bytes" not in on_cpu["vllm_argv"]  # vLLM fills the fraction, as before


def test_a_fraction_too_small_for_the_layout_model_says_so(tmp_path):
    repo = write_fake_vlm_config(tmp_path / "repo")
    layout = write_fake_layout_model(tmp_path / "PP-DocLayoutV2", params_bytes=PUBLISHED_V2_PARAMS_BYTES)
    out = subprocess.run(
        [*EXE, "plan", str(repo), "--layout-model-dir", str(layout), "--gpu-total", "24GiB",
         "--gpu-memory-utilization=0.10", "--layout-device", "cuda"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 1 and "the layout model" in out.stderr and "use at least" in out.stderr
    without = subprocess.run(
        [*EXE, "plan", str(repo), "--layout-model-dir", str(layout), "--gpu-total", "24GiB",
         "--gpu-memory-utilization=0.10", "--layout-device", "cpu"],
        capture_output=True, text=True, timeout=120,
    )
    assert without.returncode == 0, without.stderr

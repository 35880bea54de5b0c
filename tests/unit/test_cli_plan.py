"""`vllm_paddle_ocr plan` as a catalog author runs it: any machine, no GPU, a JSON plan out."""

import json
import os
import subprocess
import sys

from tests.fixtures.tiny_vlm import write_fake_vlm_config, write_published_size_vlm
from vllm_paddle_ocr.backends.vllm_paddle_ocr.deploy.catalog import builtin_catalog_entries
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.memory_needs import CUDA_CONTEXT_BYTES

GiB = 1024**3

EXE = [sys.executable, "-m", "vllm_paddle_ocr.backends.vllm_paddle_ocr.serving.cli"]


def run(*args, env=None):
    return subprocess.run([*EXE, *args], capture_output=True, text=True, timeout=120, env=env)


def test_plan_json_keeps_each_user_flag_once(tmp_path):
    write_fake_vlm_config(tmp_path / "repo")
    out = run("plan", str(tmp_path / "repo"), "--host", "0.0.0.0", "--port", "40001", "--served-model-name", "ocr",
              "--gpu-memory-utilization=0.3", "--max-model-len", "8192", "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    argv = plan["vllm_argv"]
    assert [t for t in argv if t.startswith("--gpu-memory-utilization")] == ["--gpu-memory-utilization=0.3"]
    assert argv.count("--max-model-len") == 1 and argv[argv.index("--max-model-len") + 1] == "8192"
    assert argv[argv.index("--served-model-name") + 1:] == ["ocr", "PaddleOCR-VL-0.9B"]
    assert plan["proxy"]["port"] == 40001 and plan["proxy"]["host"] == "0.0.0.0"
    # No GPU on this machine: the VRAM part says so and the rest of the plan is there.
    assert plan["vram"]["available"] is False
    assert "GPU" in plan["vram"]["reason"]


def flag_value(argv: list[str], flag: str) -> str:
    (index,) = [k for k, token in enumerate(argv) if token == flag]
    return argv[index + 1]


def test_plan_budget_for_a_stated_card(tmp_path):
    write_fake_vlm_config(tmp_path / "repo")
    out = run("plan", str(tmp_path / "repo"), "--gpu-total", "80GiB", "--concurrency", "64", "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    vram, argv = plan["vram"], plan["vllm_argv"]
    assert vram["available"] and vram["concurrency"] == 64
    # vLLM may use what the plan counts, and holds 64 in-flight blocks in its KV cache.
    assert float(flag_value(argv, "--gpu-memory-utilization")) * 80 * GiB >= vram["needed_bytes"]
    kv_tokens = int(flag_value(argv, "--kv-cache-memory-bytes")) // vram["kv_bytes_per_token"]
    assert kv_tokens >= 64 * vram["tokens_per_request"]
    assert flag_value(argv, "--max-num-seqs") == "64"
    # The control plane books what vLLM is told to take.
    assert vram["gpustack_parameter"] == "--gpu-memory-utilization=" + flag_value(argv, "--gpu-memory-utilization")


def test_plan_for_people_and_errors_for_people(tmp_path):
    write_fake_vlm_config(tmp_path / "repo")
    out = run("plan", str(tmp_path / "repo"))
    assert out.returncode == 0, out.stderr
    assert "vLLM argv:" in out.stdout and "VRAM:" in out.stdout
    missing = run("plan", str(tmp_path / "nope"))
    assert missing.returncode == 1
    assert "error: model path" in missing.stderr and "Traceback" not in missing.stderr
    bad = run("plan", str(tmp_path / "repo"), "--concurrency", "zero")
    assert bad.returncode == 2 and "--concurrency 'zero'" in bad.stderr


def test_help_reads_like_vllms():
    top = run("--help")
    assert top.returncode == 0 and "{serve,plan,parse,manifests,gpustack}" in top.stdout
    serve = run("serve", "--help")
    assert serve.returncode == 0
    assert serve.stdout.startswith("usage: vllm_paddle_ocr serve <model_path>")
    for section in ("positional arguments:", "options:", "runtime options:", "vLLM options:", "--gpu-total SIZE"):
        assert section in serve.stdout
    assert "environment:\n  GPUSTACK_MODEL_VRAM_CLAIM=BYTES" in serve.stdout
    assert "--gpustack-claim" in run("plan", "--help").stdout and "--gpustack-claim" not in serve.stdout


def test_gpustack_claim_prints_the_catalogs_bytes_for_the_published_model(tmp_path):
    repo = write_published_size_vlm(tmp_path / "repo")
    out = run("plan", str(repo), "--gpustack-claim")
    assert out.returncode == 0, out.stderr
    (entry, *_) = builtin_catalog_entries()
    assert out.stdout == f"{entry.vram_claim_bytes}\n"
    more = run("plan", str(repo), "--gpustack-claim", "--concurrency", "64")
    assert more.returncode == 0 and int(more.stdout) > entry.vram_claim_bytes
    # The person's plan shows the same bytes, and how many instances GPUStack books on the card.
    people = run("plan", str(repo), "--gpu-total", "24GiB")
    line = next(line for line in people.stdout.splitlines() if line.startswith("GPUStack 2.x:"))
    assert f"GPUSTACK_MODEL_VRAM_CLAIM={entry.vram_claim_bytes} " in line
    assert f"{24 * GiB // entry.vram_claim_bytes} of them fit planned card (24.00 GiB)" in line
    assert any(line.startswith("GPUStack 0.7: --gpu-memory-utilization=") for line in people.stdout.splitlines())


def test_gpustack_claim_refuses_a_users_fraction(tmp_path):
    repo = write_published_size_vlm(tmp_path / "repo")
    out = run("plan", str(repo), "--gpustack-claim", "--gpu-memory-utilization=0.3")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "share of each card" in out.stderr


def test_a_booked_claim_sizes_vllm_inside_it_on_the_stated_card(tmp_path):
    repo = write_published_size_vlm(tmp_path / "repo")
    (entry, *_) = builtin_catalog_entries()
    env = {**os.environ, "GPUSTACK_MODEL_VRAM_CLAIM": str(entry.vram_claim_bytes)}
    for card in (24, 80):
        out = run("plan", str(repo), "--gpu-total", f"{card}GiB", "--json", env=env)
        assert out.returncode == 0, out.stderr
        plan = json.loads(out.stdout)
        fraction = float(flag_value(plan["vllm_argv"], "--gpu-memory-utilization"))
        assert fraction * card * GiB + CUDA_CONTEXT_BYTES <= entry.vram_claim_bytes
        assert plan["vram"]["claim_bytes"] == entry.vram_claim_bytes and plan["vram"]["concurrency"] == 16


def test_serve_refuses_a_claim_too_small_in_one_line_before_starting_anything(tmp_path):
    repo = write_published_size_vlm(tmp_path / "repo")
    env = {**os.environ, "GPUSTACK_MODEL_VRAM_CLAIM": str(2 * GiB)}
    out = run("serve", str(repo), "--gpu-total", "24GiB", "--port", "1", env=env)
    assert out.returncode == 1
    (line,) = out.stderr.strip().splitlines()[-1:]
    assert line.startswith("vllm_paddle_ocr serve: error: GPUSTACK_MODEL_VRAM_CLAIM=2147483648 (2.00 GiB) is less than")
    assert "book at least" in line and "Traceback" not in out.stderr

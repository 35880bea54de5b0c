"""`vllm_paddle_ocr plan` as a catalog author runs it: any machine, no GPU, a JSON plan out."""

import json
import subprocess
import sys

from tests.fixtures.tiny_vlm import write_fake_vlm_config

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

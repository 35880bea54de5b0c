"""`vllm_paddle_ocr plan` as a catalog author runs it: any machine, no GPU, a JSON plan out."""

import json
import subprocess
import sys
from pathlib import Path

from tests.fixtures.tiny_vlm import write_fake_vlm_config

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


def test_plan_budget_for_a_stated_card(tmp_path):
    write_fake_vlm_config(tmp_path / "repo")
    out = run("plan", str(tmp_path / "repo"), "--gpu-total", "80GiB", "--concurrency", "64", "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    fraction = plan["vram"]["gpu_memory_utilization"]
    argv = plan["vllm_argv"]
    assert argv[argv.index("--gpu-memory-utilization") + 1] == f"{fraction:.2f}"
    assert plan["vram"]["gpustack_parameter"] == f"--gpu-memory-utilization={fraction:.2f}"


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
    assert top.returncode == 0 and "{serve,plan,manifests,gpustack}" in top.stdout
    serve = run("serve", "--help")
    assert serve.returncode == 0
    assert serve.stdout.startswith("usage: vllm_paddle_ocr serve <model_path>")
    for section in ("positional arguments:", "options:", "runtime options:", "vLLM options:", "--gpu-total SIZE"):
        assert section in serve.stdout

"""The README's two commands stay true: the first sets up serving and runs the demo, the second is what .ci/run runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## The two commands", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_the_readme_has_two_commands_and_ci_runs_the_second_after_the_test_set_up():
    first, second = readme_commands()
    assert first == "bash .ci/setup-serve && bash .ci/demo"
    run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    lines = [line for line in run.splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert lines == ["bash .ci/setup", second]


def test_the_serving_set_up_installs_nothing_only_the_tests_need():
    serve = (ROOT / ".ci" / "setup-serve").read_text(encoding="utf-8")
    for test_only in ("[test]", "gpustack", "postgresql", "chromium", "selenium", "serving]"):
        assert test_only not in serve.lower(), f".ci/setup-serve installs {test_only}"
    setup = (ROOT / ".ci" / "setup").read_text(encoding="utf-8")
    assert "bash .ci/setup-serve" in setup and "chromium-driver" in setup


def test_the_demo_serves_a_model_id_on_a_gpu_and_the_tests_tiny_model_elsewhere():
    demo = (ROOT / ".ci" / "demo").read_text(encoding="utf-8")
    assert "PaddlePaddle/PaddleOCR-VL" in demo and "-m tests.fixtures.demo_model" in demo
    assert (ROOT / "tests" / "fixtures" / "demo_model.py").is_file()

"""Model ids for serve/plan: `org/name` from the Hugging Face cache, `modelscope:org/name` from ModelScope's.

Run as a person runs `plan`: a process with its own HF_HOME / MODELSCOPE_CACHE and HF_HUB_OFFLINE.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.tiny_vlm import HF_REVISION, build_tiny_paddleocr_vl, write_fake_vlm_config
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.hub import is_model_id

EXE = [sys.executable, "-m", "vllm_paddle_ocr.backends.vllm_paddle_ocr.serving.cli"]
MODEL_ID = "PaddlePaddle/PaddleOCR-VL"


def plan(model: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """`vllm_paddle_ocr plan <model> --json` in `cwd`, hub variables from `env` only."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODELSCOPE_"))}
    return subprocess.run(
        [*EXE, "plan", model, "--json"], capture_output=True, text=True, timeout=120, cwd=cwd, env={**clean, **env}
    )


def test_a_model_id_resolves_to_its_snapshot_in_the_hugging_face_cache_offline(tmp_path, tiny_vlm_files):
    hf_home = tmp_path / "hf"
    snapshot = build_tiny_paddleocr_vl(hf_home / "hub", layout="hf_cache", prebuilt=tiny_vlm_files)
    assert snapshot.name == HF_REVISION
    run = plan(MODEL_ID, tmp_path, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
    assert run.returncode == 0, run.stderr
    model = json.loads(run.stdout)["model"]
    assert Path(model["vlm_dir"]) == snapshot and model["kind"] == "hf_cache"


def test_a_model_id_missing_from_the_cache_offline_is_one_line_naming_the_cache(tmp_path):
    hf_home = tmp_path / "empty-hf"
    run = plan(MODEL_ID, tmp_path, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
    assert run.returncode == 1 and run.stdout == ""
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith(f"vllm_paddle_ocr plan: error: {MODEL_ID} is neither a directory nor in the Hugging Face cache")
    assert str(hf_home / "hub") in line and "HF_HUB_OFFLINE=0" in line


def test_an_unreachable_hub_is_one_line_naming_the_cache(tmp_path):
    with socket.socket() as sock:  # a loopback port nothing listens on: the hub cannot be reached
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    hf_home = tmp_path / "hf"
    run = plan(MODEL_ID, tmp_path, HF_HOME=str(hf_home), HF_HUB_OFFLINE="0", HF_ENDPOINT=endpoint)
    assert run.returncode == 1, run.stdout
    (line,) = run.stderr.strip().splitlines()[-1:]
    assert line.startswith(
        f"vllm_paddle_ocr plan: error: {MODEL_ID} is no directory here and cannot be downloaded into the Hugging Face cache"
    )
    assert str(hf_home / "hub") in line and "Traceback" not in run.stderr


def test_a_local_directory_named_like_an_id_wins_over_the_hub(tmp_path):
    write_fake_vlm_config(tmp_path / "PaddlePaddle" / "PaddleOCR-VL")
    run = plan(MODEL_ID, tmp_path, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    assert run.returncode == 0, run.stderr
    model = json.loads(run.stdout)["model"]
    assert Path(model["vlm_dir"]) == tmp_path / "PaddlePaddle" / "PaddleOCR-VL" and model["kind"] == "root"


def test_a_modelscope_id_resolves_from_its_cache_and_names_it_when_missing(tmp_path):
    pytest.importorskip("modelscope")  # an optional client: `modelscope:` ids need it installed
    cache = tmp_path / "ms"
    repo = write_fake_vlm_config(cache, layout="modelscope")
    run = plan(f"modelscope:{MODEL_ID}", tmp_path, MODELSCOPE_CACHE=str(cache), HF_HUB_OFFLINE="1")
    assert run.returncode == 0, run.stderr
    assert Path(json.loads(run.stdout)["model"]["vlm_dir"]).resolve() == repo.resolve()
    empty = tmp_path / "ms-empty"
    missing = plan(f"modelscope:{MODEL_ID}", tmp_path, MODELSCOPE_CACHE=str(empty), HF_HUB_OFFLINE="1")
    assert missing.returncode == 1
    line = missing.stderr.strip().splitlines()[-1]
    assert f"modelscope:{MODEL_ID} is not in the ModelScope cache {empty}" in line and "HF_HUB_OFFLINE=0" in line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PaddlePaddle/PaddleOCR-VL", True),
        ("modelscope:PaddlePaddle/PaddleOCR-VL-1.5", True),
        ("/models/PaddleOCR-VL", False),
        ("./PaddleOCR-VL", False),
        ("a/b/c", False),
        ("PaddleOCR-VL", False),
    ],
)
def test_what_reads_as_a_model_id(text, expected):
    assert is_model_id(text) is expected

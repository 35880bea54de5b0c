"""Shared fixtures: tiny real models built once per run, and one real `vllm_paddle_ocr serve` for the run."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

SKIP_ENV = "VLLM_PADDLE_OCR_SKIP_INTEGRATION"
CPU_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK": "True",
    # Load only this package's vLLM plugin: paddlex's own one fails noisily in every vLLM process.
    "VLLM_PLUGINS": "paddle_ocr_vl",
}
# vLLM flags that make the tiny model start quickly on two CPU cores.
CPU_VLLM_FLAGS = ["--dtype", "float32", "--enforce-eager"]
SERVE_START_TIMEOUT_S = 600
# The shared server's page limit, low enough that a test can cross it cheaply.
SERVED_MAX_PAGES = 5


def pytest_collection_modifyitems(config, items):
    """Integration tests run unless explicitly skipped; missing engines fail them instead of hiding them."""
    integration = [item for item in items if item.get_closest_marker("integration")]
    if not integration:
        return
    if os.environ.get(SKIP_ENV) == "1":
        marker = pytest.mark.skip(reason=f"{SKIP_ENV}=1 asked to skip the real-engine tests")
        for item in integration:
            item.add_marker(marker)
        return
    missing = [name for name in ("vllm", "paddlex") if importlib.util.find_spec(name) is None]
    if missing:
        raise pytest.UsageError(
            f"integration tests need {', '.join(missing)} installed: run `bash .ci/setup`, "
            f"or set {SKIP_ENV}=1 to skip them explicitly"
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def cpu_env(tmp_path_factory) -> dict[str, str]:
    """Environment for the real engines on CPU, with caches kept in the run's temp dir."""
    cache = tmp_path_factory.mktemp("caches")
    return {
        **os.environ,
        **CPU_ENV,
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "PADDLE_PDX_CACHE_HOME": str(cache / "paddlex"),
        "VLLM_PADDLE_OCR_LOCK_DIR": str(cache / "locks"),
        "VLLM_PADDLE_OCR_DATA_DIR": str(cache / "data"),  # jobs stay in the run's temp dir, not the user's home
    }


@pytest.fixture(scope="session")
def tiny_layout_dir(tmp_path_factory) -> Path:
    """A random-weight PP-DocLayoutV2 that the real paddlex loads, built once per run."""
    from tests.fixtures.tiny_layout import build_random_pp_doclayout_v2

    return build_random_pp_doclayout_v2(tmp_path_factory.mktemp("layout") / "PP-DocLayoutV2")


@pytest.fixture(scope="session")
def tiny_vlm_files(tmp_path_factory) -> Path:
    """The tiny random-weight PaddleOCR-VL files, built once per run and copied into each repo."""
    from tests.fixtures.tiny_vlm import write_tiny_vlm_files

    return write_tiny_vlm_files(tmp_path_factory.mktemp("vlm") / "PaddleOCR-VL")


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory, tiny_vlm_files, tiny_layout_dir) -> Path:
    """A tiny PaddleOCR-VL repo laid out like the real one: the VLM at the root and PP-DocLayoutV2/."""
    from tests.fixtures.tiny_vlm import build_tiny_paddleocr_vl

    return build_tiny_paddleocr_vl(
        tmp_path_factory.mktemp("repo") / "PaddleOCR-VL", prebuilt=tiny_vlm_files, with_layout_model_dir=tiny_layout_dir
    )


@pytest.fixture(scope="session")
def bare_repo(tmp_path_factory, tiny_vlm_files) -> Path:
    """The tiny VLM without a layout model: lifecycle tests need only vLLM and start faster."""
    from tests.fixtures.tiny_vlm import build_tiny_paddleocr_vl

    return build_tiny_paddleocr_vl(tmp_path_factory.mktemp("bare") / "PaddleOCR-VL", prebuilt=tiny_vlm_files)


class Served:
    """A running `vllm_paddle_ocr serve` process and where to reach it."""

    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log
        self.url = f"http://127.0.0.1:{port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = SERVE_START_TIMEOUT_S) -> list[int]:
        """Poll /v1/models like GPUStack's worker; return the status codes seen until the first 200."""
        seen: list[int] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.output()[-5000:]}")
            try:
                status = httpx.get(f"{self.url}/v1/models", timeout=1.0).status_code
                seen.append(status)
                if status == 200:
                    return seen
            except httpx.TransportError:
                pass
            time.sleep(1.0)
        raise AssertionError(f"serve was not ready within {timeout} s:\n{self.output()[-5000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_serve(repo: Path, env: dict[str, str], log: Path, *extra: str, name: str = "ocr-test") -> Served:
    """Start `vllm_paddle_ocr serve` exactly as GPUStack does: model path first, host/port/name last."""
    port = free_port()
    exe = shutil.which("vllm_paddle_ocr", path=str(Path(sys.executable).parent)) or "vllm_paddle_ocr"
    argv = [exe, "serve", str(repo), *CPU_VLLM_FLAGS, *extra,
            "--host", "127.0.0.1", "--port", str(port), "--served-model-name", name]
    handle = log.open("wb")
    proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return Served(proc, port, log)


@pytest.fixture(scope="session")
def served(tiny_repo, cpu_env, tmp_path_factory):
    """One real server (vLLM on CPU + the torch layout engine on CPU) shared by the run's integration tests.

    Started with --trust-remote-code, as GPUStack users type it, on a repo with no remote code.
    """
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    server = start_serve(
        tiny_repo, cpu_env, log, "--max-pages", str(SERVED_MAX_PAGES), "--trust-remote-code",
        "--layout-engine", "torch", "--layout-device", "cpu", "--data-dir", str(tmp_path_factory.mktemp("data")),
    )
    try:
        server.statuses = server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def served_paddle(tiny_repo, cpu_env, tmp_path_factory):
    """The same server with paddlex as the layout engine (started only by the tests that ask for it)."""
    log = tmp_path_factory.mktemp("serve-paddle") / "serve.log"
    server = start_serve(tiny_repo, cpu_env, log, "--max-pages", str(SERVED_MAX_PAGES), "--layout-engine", "paddle")
    try:
        server.statuses = server.wait_ready()
        yield server
    finally:
        server.stop()

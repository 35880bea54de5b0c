"""Start-up time and memory of `vllm_paddle_ocr serve` next to the same vLLM started bare, in one run.

Both serve the tiny random-weight PaddleOCR-VL on CPU with the same vLLM argv (the launch plan's). Each
is timed until it answers a real chat request with an image; the process tree's summed RSS is sampled
throughout. Runs alternate (bare, serve, bare, serve, ...) so machine noise hits both alike.

    .venv/bin/python bench/serve_startup.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CPU_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_PLUGINS": "paddle_ocr_vl"}
FLAGS = ["--dtype", "float32", "--enforce-eager"]
LIMIT_S = 600


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def chat_body(model: str) -> dict:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (224, 112), "white").save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "OCR:"}]
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_completion_tokens": 4}


class PeakRss(threading.Thread):
    """Samples the summed RSS of a process tree until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0, True

    def run(self) -> None:
        while self.running:
            try:
                root = psutil.Process(self.pid)
                total = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            time.sleep(0.2)


def measure(argv: list[str], port: int, env: dict[str, str]) -> tuple[float, int]:
    """Seconds until a chat request with an image answers 200, and the peak RSS meanwhile."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    sampler = PeakRss(proc.pid)
    sampler.start()
    try:
        while time.monotonic() - started < LIMIT_S:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[:4]} exited with {proc.returncode}")
            try:
                answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=chat_body("ocr"), timeout=30)
                if answer.status_code == 200:
                    return time.monotonic() - started, sampler.peak
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise RuntimeError("not ready in time")
    finally:
        sampler.running = False
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from tests.fixtures.tiny_vlm import build_tiny_paddleocr_vl

    with tempfile.TemporaryDirectory() as tmp:
        repo = build_tiny_paddleocr_vl(Path(tmp) / "PaddleOCR-VL")
        env = {**os.environ, **CPU_ENV, "VLLM_CACHE_ROOT": str(Path(tmp) / "cache"), "VLLM_PADDLE_OCR_LOCK_DIR": tmp}
        exe = str(Path(sys.executable).parent / "vllm_paddle_ocr")
        results: dict[str, list[tuple[float, int]]] = {"bare vLLM": [], "serve": []}
        for _ in range(args.rounds):
            port = free_port()
            plan = json.loads(subprocess.run(
                [exe, "plan", str(repo), *FLAGS, "--port", str(free_port()), "--upstream-port", str(port),
                 "--served-model-name", "ocr", "--json"], capture_output=True, text=True, check=True, env=env,
            ).stdout)
            results["bare vLLM"].append(measure(plan["vllm_argv"], port, env))
            port = free_port()
            serve = [exe, "serve", str(repo), *FLAGS, "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "ocr"]
            results["serve"].append(measure(serve, port, env))
    print(f"{'':12} {'start-up s (median)':>20} {'peak RSS GiB (median)':>22}   runs")
    medians = {}
    for name, runs in results.items():
        seconds = statistics.median(r[0] for r in runs)
        rss = statistics.median(r[1] for r in runs) / 2**30
        medians[name] = (seconds, rss)
        print(f"{name:12} {seconds:>20.1f} {rss:>22.2f}   {', '.join(f'{r[0]:.1f}s/{r[1] / 2**30:.2f}G' for r in runs)}")
    (bs, br), (ss, sr) = medians["bare vLLM"], medians["serve"]
    print(f"serve / bare: start-up x{ss / bs:.2f}, peak RSS x{sr / br:.2f} (+{sr - br:.2f} GiB for the supervisor and proxy)")


if __name__ == "__main__":
    main()

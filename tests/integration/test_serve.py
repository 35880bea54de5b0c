"""`vllm_paddle_ocr serve` run exactly as GPUStack runs it, against the real vLLM on CPU."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import start_serve
from tests.fixtures.documents import make_page_image, png_bytes

pytestmark = pytest.mark.integration


def image_message(text: str = "OCR:") -> list[dict]:
    import base64

    url = "data:image/png;base64," + base64.b64encode(png_bytes(make_page_image(224, 112))).decode()
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}]


def chat(url: str, model: str, **extra) -> httpx.Response:
    body = {"model": model, "messages": image_message(), "max_completion_tokens": 8, "temperature": 0, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    living = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                living.append(proc)
        except psutil.NoSuchProcess:
            continue
    return living


def vllm_process(serve_pid: int) -> psutil.Process:
    """The API server vLLM runs as the supervisor's direct child."""
    children = psutil.Process(serve_pid).children()
    (api,) = [c for c in children if "vllm.entrypoints.openai.api_server" in " ".join(c.cmdline())]
    return api


def test_models_is_503_until_warm_then_200(served):
    assert served.statuses[-1] == 200
    assert 503 in served.statuses, f"never saw 503 while starting: {served.statuses}"
    names = [m["id"] for m in httpx.get(f"{served.url}/v1/models").json()["data"]]
    assert names[0] == "ocr-test"


@pytest.mark.parametrize("model", ["ocr-test", "PaddleOCR-VL-0.9B"])
def test_chat_with_an_image_under_the_name_and_the_alias(served, model):
    answer = chat(served.url, model)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["prompt_tokens"] > 4  # the image's tokens went through the engine


def test_a_name_that_is_not_served_is_404(served):
    assert chat(served.url, "some-other-model").status_code == 404


def test_paddlex_style_request_with_mm_processor_kwargs(served):
    answer = chat(served.url, "PaddleOCR-VL-0.9B", mm_processor_kwargs={"min_pixels": 112896, "max_pixels": 1003520},
                  skip_special_tokens=True)
    assert answer.status_code == 200, answer.text


def test_streaming_comes_back_as_sse_chunks_ending_with_done(served):
    body = {"model": "ocr-test", "messages": image_message(), "max_completion_tokens": 8, "stream": True}
    events = []
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", json=body, timeout=120) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: "):])
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) >= 2
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_health_reports_proxy_and_upstream(served):
    answer = httpx.get(f"{served.url}/health")
    assert answer.status_code == 200
    assert answer.json()["errorCode"] == 0


def test_vllm_output_is_prefixed_into_ours(served):
    assert "[vllm] " in served.output()


def test_trust_remote_code_without_remote_code_is_left_out_and_said(served):
    """The shared server got --trust-remote-code on a repo with no remote code: it serves, and says why."""
    output = served.output()
    assert "plan: left out the user's --trust-remote-code:" in output and "no remote code" in output
    started = next(line for line in output.splitlines() if "starting vLLM:" in line)
    assert "--trust-remote-code" not in started
    answer = chat(served.url, "ocr-test")
    assert answer.status_code == 200, answer.text


def test_sigterm_drains_in_flight_then_exits_0_with_no_process_left(bare_repo, cpu_env, tmp_path):
    server = start_serve(bare_repo, cpu_env, tmp_path / "serve.log")
    try:
        server.wait_ready()
        procs = tree(server.proc.pid)
        assert len(procs) >= 2
        result: dict = {}

        def long_request() -> None:
            body = {"model": "ocr-test", "messages": image_message(), "max_completion_tokens": 200,
                    "ignore_eos": True, "stream": True}
            with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as answer:
                result["status"] = answer.status_code
                result["lines"] = [line for line in answer.iter_lines() if line]

        worker = threading.Thread(target=long_request)
        worker.start()
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=90) == 0, server.output()[-3000:]
        worker.join(timeout=30)
        assert result.get("status") == 200
        assert result["lines"][-1] == "data: [DONE]", "the in-flight request was cut off"
        assert alive(procs) == []
    finally:
        server.stop()


def test_kill_9_of_vllm_ends_serve_nonzero_within_5_s_without_orphans(bare_repo, cpu_env, tmp_path):
    server = start_serve(bare_repo, cpu_env, tmp_path / "serve.log")
    try:
        server.wait_ready()
        procs = tree(server.proc.pid)
        os.kill(vllm_process(server.proc.pid).pid, signal.SIGKILL)
        started = time.monotonic()
        code = server.proc.wait(timeout=30)
        took = time.monotonic() - started
        assert code != 0
        assert took <= 5.0, f"serve took {took:.1f} s to exit after vLLM died"
        time.sleep(0.5)
        assert alive(procs) == []
        assert "error: vLLM exited with code -9 while serving" in server.output()
    finally:
        server.stop()


def test_bad_vllm_flag_exits_nonzero_showing_vllms_error(bare_repo, cpu_env, tmp_path):
    server = start_serve(bare_repo, cpu_env, tmp_path / "serve.log", "--no-such-vllm-flag", "1")
    try:
        code = server.proc.wait(timeout=300)
        output = server.output()
        assert code != 0
        tail = output[output.index("vllm_paddle_ocr serve: error: vLLM exited with code 2 during start-up"):]
        assert "--no-such-vllm-flag" in tail  # vLLM's own complaint, in the last lines
    finally:
        server.stop()


def test_taken_port_fails_fast_and_clearly(bare_repo, cpu_env, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        exe = str(Path(os.sys.executable).parent / "vllm_paddle_ocr")
        import subprocess

        out = subprocess.run([exe, "serve", str(bare_repo), "--host", "127.0.0.1", "--port", str(port)],
                             capture_output=True, text=True, timeout=120, env=cpu_env)
    assert out.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "vllm.entrypoints" not in out.stdout  # vLLM was never started


@pytest.mark.parametrize(
    ("engine", "message"),
    [
        ("auto", "is not a paddle inference program this reader understands"),  # the torch engine converts it
        ("paddle", "paddlex could not load PP-DocLayoutV2 from {layout}"),
    ],
)
def test_a_layout_model_that_cannot_load_ends_serve_with_one_line(bare_repo, cpu_env, tmp_path, engine, message):
    import subprocess

    from tests.conftest import CPU_VLLM_FLAGS, free_port

    layout = tmp_path / "PP-DocLayoutV2"
    layout.mkdir()
    (layout / "inference.yml").write_text("Global:\n  model_name: PP-DocLayoutV2\n")
    (layout / "inference.json").write_text('{"not": "a program"}')
    (layout / "inference.pdiparams").write_bytes(os.urandom(4096))
    exe = str(Path(os.sys.executable).parent / "vllm_paddle_ocr")
    argv = [exe, "serve", str(bare_repo), *CPU_VLLM_FLAGS, "--layout-model-dir", str(layout), "--layout-engine", engine,
            "--data-dir", str(tmp_path / "data"), "--host", "127.0.0.1", "--port", str(free_port())]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=cpu_env)
    assert out.returncode == 1, out.stderr[-3000:]
    ours = [line for line in (out.stdout + out.stderr).splitlines() if not line.startswith("[vllm]")]
    errors = [line for line in ours if "error:" in line]
    assert len(errors) == 1, ours[-20:]
    assert errors[0].startswith("vllm_paddle_ocr serve: error:")
    assert message.format(layout=layout) in errors[0]
    assert "--layout-model-dir" in errors[0] or "--layout-engine paddle" in errors[0]
    assert not any("Traceback" in line for line in ours)

"""`vllm_paddle_ocr parse` as a user runs it, against the real server (vLLM on CPU, paddlex layout)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.fixtures.documents import make_page_image, make_pdf, png_bytes, truncated_pdf
from tests.fixtures.prefix_proxy import PrefixProxy

pytestmark = pytest.mark.integration

JOBS = "/layout-parsing/jobs"


def parse_command() -> str:
    return shutil.which("vllm_paddle_ocr", path=str(Path(sys.executable).parent)) or "vllm_paddle_ocr"


def test_a_directory_gives_markdown_and_json_per_document_and_names_the_corrupt_one(served, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "report.png").write_bytes(png_bytes(make_page_image(640, 800)))
    (inputs / "three-pages.pdf").write_bytes(make_pdf(3))
    (inputs / "corrupt.pdf").write_bytes(truncated_pdf())
    out = tmp_path / "out"
    run = subprocess.run(
        [parse_command(), "parse", str(inputs), "--server", served.url, "--out", str(out), "--page-range", "2-3"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("vllm_paddle_ocr parse: error: 1 of 3 document(s) failed:"), run.stderr
    assert "corrupt.pdf (422:" in last and "report.png" not in last and "three-pages.pdf" not in last
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.md")) == [
        "report/report.md", "three-pages/three-pages.md",
    ]  # fmt: skip
    # The page range chose pages 2 and 3 of the PDF; the picture, which has no pages, was parsed whole.
    for stem, indices in (("report", [None]), ("three-pages", [1, 2])):
        folder = out / stem
        envelope = json.loads((folder / f"{stem}.json").read_text())
        results = envelope["result"]["layoutParsingResults"]
        assert envelope["errorCode"] == 0
        assert [result["prunedResult"].get("page_index") for result in results] == indices
        assert all(result["prunedResult"]["parsing_res_list"] for result in results)
        pictures = {path for result in results for path in (result["markdown"].get("images") or {})}
        assert {p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg")} == pictures
        assert isinstance((folder / f"{stem}.md").read_text(), str)
    assert "three-pages.pdf: 2 page(s)" in run.stdout


def test_ctrl_c_cancels_the_job_it_started_and_says_so(served, tmp_path):
    pdf = tmp_path / "long.pdf"
    pdf.write_bytes(make_pdf(5))
    with PrefixProxy(served.url, "/model/proxy/3") as proxy:
        command = subprocess.Popen(
            [parse_command(), "parse", str(pdf), "--server", proxy.url, "--out", str(tmp_path / "out")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not any(m == "POST" and status == 202 for m, _, status in proxy.requests):
                assert command.poll() is None and time.monotonic() < deadline, "parse submitted no job"
                time.sleep(0.1)
            command.send_signal(signal.SIGINT)
            _, err = command.communicate(timeout=60)
        finally:
            if command.poll() is None:
                command.kill()
        requests = list(proxy.requests)
    assert command.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("vllm_paddle_ocr parse: error: interrupted; 0 of 1 document(s) written"), err
    cancelled = re.search(rf"cancelled 1 job\(s\) on the server: {re.escape(str(pdf))} \(job ([0-9a-f]{{32}})\)$", last)
    assert cancelled, last
    job_id = cancelled.group(1)
    assert ("DELETE", f"/model/proxy/3{JOBS}/{job_id}", 200) in requests
    status = httpx.get(f"{served.url}{JOBS}/{job_id}", timeout=30).json()["result"]
    assert status["status"] == "cancelled" and status["pagesDone"] < 5
    assert not (tmp_path / "out" / "long" / "long.md").exists()

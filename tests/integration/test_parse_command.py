"""`vllm_paddle_ocr parse` as a user runs it, against the real server (vLLM on CPU, paddlex layout)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.documents import make_page_image, make_pdf, png_bytes, truncated_pdf

pytestmark = pytest.mark.integration


def test_a_directory_gives_markdown_and_json_per_document_and_names_the_corrupt_one(served, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "report.png").write_bytes(png_bytes(make_page_image(640, 800)))
    (inputs / "two-pages.pdf").write_bytes(make_pdf(2))
    (inputs / "corrupt.pdf").write_bytes(truncated_pdf())
    out = tmp_path / "out"
    exe = shutil.which("vllm_paddle_ocr", path=str(Path(sys.executable).parent))
    run = subprocess.run(
        [exe, "parse", str(inputs), "--server", served.url, "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("vllm_paddle_ocr parse: error: 1 of 3 document(s) failed:"), run.stderr
    assert "corrupt.pdf (422:" in last and "report.png" not in last and "two-pages.pdf" not in last
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.md")) == [
        "report/report.md", "two-pages/two-pages.md",
    ]  # fmt: skip
    for stem, pages in (("report", 1), ("two-pages", 2)):
        folder = out / stem
        envelope = json.loads((folder / f"{stem}.json").read_text())
        results = envelope["result"]["layoutParsingResults"]
        assert envelope["errorCode"] == 0 and len(results) == pages
        assert all(result["prunedResult"]["parsing_res_list"] for result in results)
        pictures = {path for result in results for path in (result["markdown"].get("images") or {})}
        assert {p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg")} == pictures
        assert isinstance((folder / f"{stem}.md").read_text(), str)

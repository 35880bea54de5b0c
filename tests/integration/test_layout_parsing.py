"""`/layout-parsing` end to end: real layout detection (the torch engine, then paddlex), real vLLM on CPU, PaddleX's own schema."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.fixtures.documents import make_page_image, make_pdf, pixel_bomb_png, png_bytes, truncated_pdf
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.blocks import Block, filter_overlaps

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["torch", "paddle"])
def served(request, served):
    """Every test here runs against the server with each layout engine (the shared one runs torch)."""
    server = served if request.param == "torch" else request.getfixturevalue("served_paddle")
    health = httpx.get(f"{server.url}/health", timeout=30).json()
    assert (health["layoutEngine"], health["layoutDevice"], health["layoutDetector"]) == (request.param, "cpu", "ready")
    return server


@pytest.fixture(scope="module")
def paddlex_schema():
    """PaddleX's own pydantic models for this endpoint: our answers must validate against them."""
    from paddlex.inference.serving.infra.models import AIStudioResultResponse
    from paddlex.inference.serving.schemas.paddleocr_vl import InferResult

    return AIStudioResultResponse[InferResult]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def parse(served, body: dict, timeout: float = 600) -> httpx.Response:
    return httpx.post(f"{served.url}/layout-parsing", json=body, timeout=timeout)


def assert_paddlex_error(answer: httpx.Response, status: int, fragment: str) -> None:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"logId", "errorCode", "errorMsg"}
    assert body["errorCode"] == status
    assert fragment.lower() in body["errorMsg"].lower(), body["errorMsg"]


def kept_boxes(boxes: list[dict]) -> set[tuple[int, ...]]:
    """The boxes that survive PaddleOCR-VL's overlap filtering: each must become one parsed block."""
    blocks = [Block(label=b["label"], bbox=tuple(int(v) for v in b["coordinate"]), score=b["score"]) for b in boxes]
    return {tuple(block.bbox) for block in filter_overlaps(blocks)}


def check_page(result: dict, width: int, height: int) -> None:
    pruned = result["prunedResult"]
    assert (pruned["width"], pruned["height"]) == (width, height)
    boxes = pruned["layout_det_res"]["boxes"]
    assert boxes, "the random layout model found no block on the page"
    parsed = pruned["parsing_res_list"]
    assert {tuple(b["block_bbox"]) for b in parsed} == kept_boxes(boxes)
    assert all(isinstance(b["block_content"], str) for b in parsed)
    assert sorted(b["block_id"] for b in parsed) == list(range(len(parsed)))
    assert isinstance(result["markdown"]["text"], str)


def test_png_page_validates_against_paddlex_schema(served, paddlex_schema):
    page = make_page_image(640, 800)
    answer = parse(served, {"file": b64(png_bytes(page)), "fileType": 1, "visualize": True})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    paddlex_schema.model_validate(body)
    assert body["errorCode"] == 0 and body["errorMsg"] == "Success"
    result = body["result"]
    assert result["dataInfo"] == {"width": 640, "height": 800, "type": "image"}
    (page_result,) = result["layoutParsingResults"]
    check_page(page_result, 640, 800)
    assert "layout_det_res" in page_result["outputImages"]
    assert base64.b64decode(page_result["inputImage"])[:3] == b"\xff\xd8\xff"  # JPEG


def test_three_page_pdf_gives_one_result_per_page(served, paddlex_schema):
    answer = parse(served, {"file": b64(make_pdf(3)), "fileType": 0, "visualize": False})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    paddlex_schema.model_validate(body)
    info = body["result"]["dataInfo"]
    assert info["type"] == "pdf" and info["numPages"] == 3 and len(info["pages"]) == 3
    results = body["result"]["layoutParsingResults"]
    assert len(results) == 3
    for result, size in zip(results, info["pages"]):
        check_page(result, size["width"], size["height"])
    assert "outputImages" not in results[0] and "inputImage" not in results[0]  # null fields omitted


def test_without_layout_detection_the_page_is_one_block(served, paddlex_schema):
    page = make_page_image(320, 200)
    answer = parse(served, {"file": b64(png_bytes(page)), "fileType": 1, "useLayoutDetection": False,
                            "promptLabel": "table"})
    assert answer.status_code == 200, answer.text
    paddlex_schema.model_validate(answer.json())
    (result,) = answer.json()["result"]["layoutParsingResults"]
    (block,) = result["prunedResult"]["parsing_res_list"]
    assert block["block_label"] == "table"
    assert block["block_bbox"] == [0, 0, 320, 200]


def counters(served) -> dict[str, float]:
    """The proxy's counters from /metrics, summed over their labels."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{served.url}/metrics").text):
        for sample in family.samples:
            if sample.name.startswith("vllm_paddle_ocr_proxy_") and sample.name.endswith("_total"):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def test_metrics_count_pages_and_blocks(served):
    before = counters(served)
    answer = parse(served, {"file": b64(make_pdf(2)), "fileType": 0, "visualize": False})
    assert answer.status_code == 200, answer.text
    after = counters(served)
    parsed = sum(len(r["prunedResult"]["parsing_res_list"]) for r in answer.json()["result"]["layoutParsingResults"])
    pages = "vllm_paddle_ocr_proxy_pages_total"
    blocks = "vllm_paddle_ocr_proxy_blocks_total"
    assert after[pages] - before.get(pages, 0) == 2
    assert after[blocks] - before.get(blocks, 0) >= parsed > 0


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({"file": "not base64 at all!!", "fileType": 1}, 422, "Invalid input file"),
        ({"file": b64(truncated_pdf()), "fileType": 0}, 422, "Invalid input file"),
        ({"file": b64(pixel_bomb_png()), "fileType": 1}, 422, "exceeds maximum allowed 178956970"),
        ({"file": b64(b"x"), "fileType": "image"}, 422, "fileType"),
        ({"file": b64(png_bytes(make_page_image(128, 128))), "fileType": 1, "temperature": "hot"}, 422, "temperature"),
        ({"fileType": 1}, 422, "file"),
        ({"file": "http://127.0.0.1:9/secret.png", "fileType": 1}, 422, "URL input is disabled"),
        ({"file": b64(png_bytes(make_page_image(128, 128))), "fileType": 1, "useLayoutDetection": False,
          "minPixels": 20_000_000, "maxPixels": 20_000_000}, 422, "Page 1, block 0"),
    ],
    ids=["corrupt-base64", "truncated-pdf", "pixel-bomb", "wrong-filetype-type", "wrong-temperature-type",
         "missing-file", "url-to-loopback", "a-prompt-larger-than-the-served-context"],
)
def test_bad_input_gets_a_4xx_in_paddlex_shape(served, body, status, fragment):
    assert_paddlex_error(parse(served, body, timeout=120), status, fragment)


def test_pdf_over_the_page_limit_is_refused_not_cut(served):
    """The shared server runs with --max-pages 5: six pages are a 413 naming the limit, not five results."""
    assert_paddlex_error(parse(served, {"file": b64(make_pdf(6)), "fileType": 0}, timeout=120), 413, "5")

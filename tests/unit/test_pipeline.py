"""The per-page orchestration: detect -> plan -> one VLM call per block -> post-process -> PaddleX's result.

The VLM is a small real HTTP server on loopback and the detector returns fixed boxes.
"""

import asyncio
import base64
import io
import json
import threading

import pytest
from PIL import Image

from tests.fixtures.documents import make_page_image, png_bytes
from tests.fixtures.fake_layout import FakeDetector, load_paddlex_serving_schema
from tests.fixtures.fake_vllm import FakeVllm, prompt_of, serve_on_loopback
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy import pipeline as pipeline_module
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.errors import InputError, UpstreamError
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.inputs import InputLimits, open_document
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.metrics import ProxyMetrics
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.options import request_options
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.pages import DetectionError
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.pipeline import LayoutPipeline
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.drawing import draw_layout, jpeg_base64
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.layout.base import LayoutBox
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.endpoints.restructure_pages import restructure_pruned_pages
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.protocol import InferRequest
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.recognition.vlm_client import VlmClient

LIMITS = InputLimits(10**9, 100, 178_956_970)
TABLE_OTSL = "<fcel>Region<fcel>Sales<nl><fcel>North<fcel>12<nl>"
SPOTTING = (
    "<|TEXT_START|>Hi<|TEXT_END|><|LOC_BEGIN|>"
    + "".join(f"<|LOC_{v}|>" for v in (0, 0, 500, 0, 500, 500, 0, 500))
    + "<|LOC_END|>"
)


async def by_prompt(body):
    prompt = prompt_of(body)
    return {
        "OCR:": "Plain words",
        "Table Recognition:": TABLE_OTSL,
        "Formula Recognition:": "\\[E=mc^2\\]",
        "Spotting:": SPOTTING,
    }.get(prompt, f"unexpected {prompt}")


def options_for(model_version="0.9B", **fields):
    return request_options(InferRequest(file="x", **fields), model_version=model_version)


def image_document(width=800, height=1000):
    return open_document(png_bytes(make_page_image(width, height)), "IMAGE", LIMITS)


def tiff_document(widths):
    frames = [make_page_image(w, 600) for w in widths]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="TIFF", save_all=True, append_images=frames[1:])
    return open_document(buffer.getvalue(), "IMAGE", LIMITS)


def run(
    document, options, *, detector=None, fake=None, visualize=False, concurrency=4, pages_in_flight=None, metrics=None
):
    fake = fake or FakeVllm(answer=by_prompt)

    async def main():
        async with serve_on_loopback(fake) as base:
            client = VlmClient(base, "PaddleOCR-VL-0.9B", concurrency)
            try:
                pipeline = LayoutPipeline(client, metrics, pages_in_flight=pages_in_flight)
                return await pipeline.parse(document, options, detector=detector, owner="req", visualize=visualize)
            finally:
                await client.aclose()

    return asyncio.run(main()), fake


def decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_each_block_gets_its_prompt_and_the_page_is_assembled():
    metrics = ProxyMetrics()
    (page,), fake = run(image_document(), options_for(), detector=FakeDetector(), metrics=metrics)
    prompts = sorted(prompt_of(body) for body in fake.bodies)
    # header, title, text and figure title are OCR; the picture is not sent
    assert prompts == ["Formula Recognition:", "OCR:", "OCR:", "OCR:", "OCR:", "Table Recognition:"]
    pruned = page.result["prunedResult"]
    blocks = {b["block_label"]: b for b in pruned["parsing_res_list"]}
    assert blocks["table"]["block_content"].startswith("<table><tr><td>Region</td>")
    assert blocks["display_formula"]["block_content"] == " $$ E=mc^2 $$ "
    assert blocks["image"]["block_content"] == ""
    assert [b["block_order"] for b in pruned["parsing_res_list"]] == [None, 1, 2, 3, None, None, None]
    boxes = pruned["layout_det_res"]["boxes"]
    assert len(boxes) == 7
    assert boxes[0] == {"cls_id": 12, "label": "header", "score": 0.9, "coordinate": [40, 10, 760, 40], "order": None}
    assert boxes[1]["order"] == 1 and "polygon_points" not in boxes[1]
    assert (pruned["width"], pruned["height"], page.size) == (800, 1000, (800, 1000))
    markdown = page.result["markdown"]
    assert markdown["text"].startswith("# Plain words\n\nPlain words")
    assert "<table border=1" in markdown["text"]
    (path,) = markdown["images"]
    assert path == "imgs/img_in_image_box_40_720_360_950.jpg" and path in markdown["text"]
    assert decoded(markdown["images"][path]).size == (320, 230)
    assert "outputImages" not in page.result and "inputImage" not in page.result
    assert metrics.pages._value.get() == 1
    assert metrics.blocks.labels(label="table")._value.get() == 1


def test_page_result_validates_against_paddlex_schema():
    schema = load_paddlex_serving_schema()
    (page,), _ = run(image_document(), options_for(), detector=FakeDetector(), visualize=True)
    checked = schema.LayoutParsingResult.model_validate(page.result)
    assert checked.outputImages is not None and "layout_det_res" in checked.outputImages
    assert decoded(page.result["inputImage"]).size == (800, 1000)
    assert decoded(page.result["outputImages"]["layout_det_res"]).format == "JPEG"


def test_without_layout_detection_the_page_is_one_block_with_the_asked_prompt():
    detector = FakeDetector()
    options = options_for(useLayoutDetection=False, promptLabel="table")
    (page,), fake = run(image_document(640, 480), options, detector=detector, visualize=True)
    assert detector.calls == 0
    (body,) = fake.bodies
    assert prompt_of(body) == "Table Recognition:"
    sent = decoded(body["messages"][0]["content"][0]["image_url"]["url"].split(",", 1)[1])
    assert sent.size == (640, 480)
    pruned = page.result["prunedResult"]
    assert "layout_det_res" not in pruned
    assert pruned["model_settings"]["use_layout_detection"] is False
    assert [b["block_label"] for b in pruned["parsing_res_list"]] == ["table"]
    assert page.result["outputImages"] == {}


def test_spotting_keeps_special_tokens_and_reports_locations():
    options = options_for("1.5", useLayoutDetection=False, promptLabel="spotting")
    (page,), fake = run(image_document(400, 300), options)
    (body,) = fake.bodies
    assert body["skip_special_tokens"] is False
    assert body["mm_processor_kwargs"] == {"min_pixels": 112896, "max_pixels": 1605632}
    sent = decoded(body["messages"][0]["content"][0]["image_url"]["url"].split(",", 1)[1])
    assert sent.size == (800, 600)  # small pages are doubled before spotting
    pruned = json.loads(json.dumps(page.result["prunedResult"]))  # as the client reads it
    assert pruned["parsing_res_list"][0]["block_content"] == "Hi"
    assert pruned["spotting_res"]["rec_texts"] == ["Hi"]
    assert pruned["spotting_res"]["rec_polys"][0][2] == [200.0, 150.0]


def test_pages_come_back_in_order_with_a_bounded_window():
    detector = FakeDetector()
    widths = [300, 340, 380, 420, 460, 500]
    pages, _ = run(tiff_document(widths), options_for(), detector=detector, pages_in_flight=2)
    assert [p.size[0] for p in pages] == widths
    assert [p.result["prunedResult"]["width"] for p in pages] == widths
    assert detector.calls == 6 and detector.max_running <= 2


def test_rendered_pages_are_bounded_across_concurrent_requests(monkeypatch):
    """Two documents at once still hold at most pages_in_flight rendered pages in memory together."""
    live = {"now": 0, "most": 0}
    lock = threading.Lock()
    real_prepare, real_assemble = pipeline_module.prepare_page, pipeline_module.assemble_page

    def prepare(*args, **kwargs):
        with lock:
            live["now"] += 1
            live["most"] = max(live["most"], live["now"])
        return real_prepare(*args, **kwargs)

    def assemble(*args, **kwargs):
        try:
            return real_assemble(*args, **kwargs)
        finally:
            with lock:
                live["now"] -= 1

    monkeypatch.setattr(pipeline_module, "prepare_page", prepare)
    monkeypatch.setattr(pipeline_module, "assemble_page", assemble)
    widths = [300, 340, 380, 420]

    async def main():
        async with serve_on_loopback(FakeVllm(answer=by_prompt)) as base:
            client = VlmClient(base, "PaddleOCR-VL-0.9B", 4)
            try:
                pipeline = LayoutPipeline(client, pages_in_flight=2)
                return await asyncio.gather(*(
                    pipeline.parse(tiff_document(widths), options_for(), detector=FakeDetector(), owner=owner,
                                   visualize=False)
                    for owner in ("first", "second")
                ))
            finally:
                await client.aclose()

    first, second = asyncio.run(main())
    assert [p.size[0] for p in first] == [p.size[0] for p in second] == widths
    assert live["most"] <= 2


def test_request_options_reach_the_detector_and_the_vlm():
    detector = FakeDetector()
    options = options_for(
        layoutThreshold=0.3, temperature=0.5, topP=0.9, maxNewTokens=100, minPixels=1000, maxPixels=2000
    )
    _, fake = run(image_document(), options, detector=detector)
    assert detector.options[0].threshold == 0.3
    body = fake.bodies[0]
    assert (body["temperature"], body["top_p"], body["max_completion_tokens"]) == (0.5, 0.9, 100)
    assert body["mm_processor_kwargs"] == {"min_pixels": 1000, "max_pixels": 2000}
    assert body["model"] == "PaddleOCR-VL-0.9B"


def test_vlm_extra_args_this_server_ignores_are_logged(caplog):
    with caplog.at_level("INFO", logger="vllm_paddle_ocr.proxy"):
        run(image_document(), options_for(useLayoutDetection=False, vlmExtraArgs={"use_cache": True}))
    assert "vlmExtraArgs keys ignored, as PaddleX ignores them: use_cache" in caplog.messages


def test_upstream_failure_names_page_and_block_and_cancels_the_rest():
    async def table_fails(body):
        if prompt_of(body) == "Table Recognition:":
            return 500
        await asyncio.sleep(0.2)
        return "slow words"

    fake = FakeVllm(answer=table_fails)
    with pytest.raises(UpstreamError) as info:
        run(tiff_document([600, 600, 600]), options_for(), detector=FakeDetector(), fake=fake, concurrency=16)
    message = info.value.message
    assert info.value.status_code == 502
    assert message.startswith("Page ") and "block 4 (table at [" in message and "answered 500" in message
    assert fake.in_flight == 0


def test_detector_failure_names_the_page():
    with pytest.raises(DetectionError, match="Page 2: layout detection failed"):
        run(tiff_document([300, 300]), options_for(), detector=FakeDetector(fail_on_call=2), pages_in_flight=1)


class BrokenPages:
    """A two-page document whose listed pages raise when rendered, as a PDF with a bad xref does."""

    kind, page_count = "pdf", 2

    def __init__(self, broken):
        self.broken = broken

    def page(self, index):
        if index + 1 in self.broken:
            raise ValueError("bad xref")
        return make_page_image(300, 300)

    def close(self):
        pass


def test_a_page_that_cannot_be_rendered_is_an_input_error_naming_it():
    with pytest.raises(InputError, match=r"page 2 cannot be rendered \(bad xref\)"):
        run(BrokenPages({2}), options_for(useLayoutDetection=False))


def test_with_every_page_broken_the_first_is_named():
    with pytest.raises(InputError, match="page 1 cannot be rendered"):
        run(BrokenPages({1, 2}), options_for(useLayoutDetection=False), pages_in_flight=1)


def test_returned_pictures_fit_2000_by_2000_as_jpeg():
    big = Image.new("RGB", (5000, 1000), "white")
    picture = decoded(jpeg_base64(big))
    assert (picture.format, picture.size) == ("JPEG", (2000, 400))
    assert decoded(jpeg_base64(Image.new("RGB", (30, 20)))).size == (30, 20)


def test_layout_drawing_marks_every_box():
    page = Image.new("RGB", (200, 200), "white")
    drawn = draw_layout(page, [LayoutBox(22, "text", 0.9, (20, 50, 180, 150))])
    assert drawn.getpixel((20, 100)) != (255, 255, 255)
    assert drawn.getpixel((100, 100)) == (255, 255, 255)
    assert page.getpixel((20, 100)) == (255, 255, 255)  # the page itself is untouched


def test_polygon_boxes_are_cropped_and_reported_as_lists():
    class PolygonDetector:
        labels = ()

        def detect(self, image, options=None, *, owner=None):
            triangle = ((100.0, 100.0), (500.0, 100.0), (100.0, 400.0))
            return [LayoutBox(22, "text", 0.8, (100, 100, 500, 400), 1, triangle)]

    black_page = open_document(png_bytes(Image.new("RGB", (800, 1000), "black")), "IMAGE", LIMITS)
    (page,), fake = run(black_page, options_for("1.5"), detector=PolygonDetector())
    pruned = page.result["prunedResult"]
    assert pruned["layout_det_res"]["boxes"][0]["polygon_points"] == [[100.0, 100.0], [500.0, 100.0], [100.0, 400.0]]
    assert pruned["parsing_res_list"][0]["block_polygon_points"][1] == [500.0, 100.0]
    sent = decoded(fake.bodies[0]["messages"][0]["content"][0]["image_url"]["url"].split(",", 1)[1]).convert("RGB")
    assert sent.size == (400, 300)
    assert min(sent.getpixel((390, 290))) > 225  # outside the polygon: whitened
    assert max(sent.getpixel((10, 10))) < 30  # inside: the page as it is


def restructured(*pruned, concatenate=False):
    return restructure_pruned_pages(
        [(p, None) for p in pruned],
        merge_tables=True,
        relevel_titles=True,
        concatenate=concatenate,
        prettify=True,
        show_formula_number=False,
        return_images=True,
    )


def pruned_page(blocks=(), **fields):
    page = {"width": 400, "height": 600, "model_settings": {}, "parsing_res_list": list(blocks)}
    return {**page, **fields}


def block(label="text", bbox=(0, 0, 100, 50), content="words", **fields):
    return {"block_label": label, "block_bbox": list(bbox), "block_content": content, **fields}


@pytest.mark.parametrize(
    ("page", "where"),
    [
        (pruned_page([block("image")], width=0), "width"),
        (pruned_page([block(bbox=(0, 0, 100))]), "parsing_res_list[0].block_bbox"),
        (pruned_page([block(bbox=(0, 0, float("inf"), 50))]), "parsing_res_list[0].block_bbox[2]"),
        (pruned_page(model_settings={"markdown_ignore_labels": 5}), "model_settings.markdown_ignore_labels"),
        (pruned_page(spotting_res=[1, 2]), "spotting_res"),
        (pruned_page([block(label=None)]), "parsing_res_list[0].block_label"),
        (pruned_page(layout_det_res="boxes"), "layout_det_res"),
    ],
)
@pytest.mark.parametrize("concatenate", [False, True])
def test_a_broken_pruned_result_is_refused_by_field(page, where, concatenate):
    with pytest.raises(InputError) as info:
        restructured(pruned_page(), page, concatenate=concatenate)
    assert info.value.status_code == 422
    assert info.value.message.startswith(f"pages[1].prunedResult is not a PaddleX prunedResult ({where}: ")


def test_restructured_pages_keep_what_they_do_not_read():
    page = pruned_page(
        [block("paragraph_title", content="1 Intro", block_order=1), block(content=None)],
        model_settings={"use_chart_recognition": False, "custom": "kept"},
        layout_det_res={"boxes": [{"label": "text", "score": 0.9}]},
    )
    (result,) = restructured(page)
    pruned = result["prunedResult"]
    assert pruned["model_settings"]["custom"] == "kept"
    assert pruned["layout_det_res"] == {"boxes": [{"label": "text", "score": 0.9}]}
    assert [b["block_content"] for b in pruned["parsing_res_list"]] == ["1 Intro", ""]


def test_a_hairline_block_is_padded_to_a_shape_vllm_accepts():
    class HairlineDetector:
        labels = ()

        def detect(self, image, options=None, *, owner=None):
            return [LayoutBox(22, "text", 0.8, (50, 100, 1350, 106), 1)]  # 1300 x 6: vLLM refuses 200:1

    page = open_document(png_bytes(Image.new("RGB", (1400, 300), "black")), "IMAGE", LIMITS)
    (result,), fake = run(page, options_for(), detector=HairlineDetector())
    sent = decoded(fake.bodies[0]["messages"][0]["content"][0]["image_url"]["url"].split(",", 1)[1]).convert("RGB")
    width, height = sent.size
    assert width == 1300 and width / height < 200
    assert max(sent.getpixel((650, height // 2))) < 30 and min(sent.getpixel((650, 0))) > 225  # the line, then white
    assert result.result["prunedResult"]["parsing_res_list"][0]["block_bbox"] == [50, 100, 1350, 106]

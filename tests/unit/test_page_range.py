"""pageRange: only the asked pages are rendered and parsed, each result says which page it is."""

import base64
import io
import json

import pytest

from tests.fixtures.documents import make_page_image, make_pdf
from tests.fixtures.fake_layout import FakeDetector
from tests.unit.test_proxy_app import error_of, scenario
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.page_range import PageRange, PageRangeError


@pytest.mark.parametrize(
    "text, count, expected",
    [("1", 3, [0]), ("1-3,7", 8, [0, 1, 2, 6]), (" 2 - 3 , 1 ", 3, [0, 1, 2]), ("4-", 6, [3, 4, 5]),
     ("2,2,1-2", 2, [0, 1]), ("3-3", 3, [2])],
)
def test_page_ranges_read_as_1_based_spans_in_document_order(text, count, expected):
    assert PageRange.parse(text).indices(count) == expected


@pytest.mark.parametrize("text", ["", "0", "a", "1-2-3", "3-1", "1,,2", "-2", "1.5", "1" * 2000])
def test_unreadable_page_ranges_are_refused(text):
    with pytest.raises(PageRangeError):
        PageRange.parse(text)


@pytest.mark.parametrize("text, count, page", [("4", 3, "4"), ("2-9", 3, "9"), ("5-", 3, "5")])
def test_a_range_past_the_end_names_the_page_and_the_count(text, count, page):
    with pytest.raises(PageRangeError, match=f"page {page} but the PDF has {count} pages"):
        PageRange.parse(text).indices(count, "PDF")


def tiff_bytes(frames: int) -> bytes:
    pages = [make_page_image(300, 400, text_lines=(f"Frame {n}",)) for n in range(1, frames + 1)]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:])
    return buffer.getvalue()


def test_only_the_asked_pages_are_parsed_and_each_says_which_it_is():
    detector = FakeDetector()
    pdf = base64.b64encode(make_pdf(4)).decode()
    tiff = base64.b64encode(tiff_bytes(3)).decode()

    async def check(client, fake, state, app):
        whole = await client.post("/layout-parsing", json={"file": pdf, "visualize": False})
        calls_whole = detector.calls
        some = await client.post("/layout-parsing", json={"file": pdf, "pageRange": "2,4", "visualize": False})
        calls_some = detector.calls - calls_whole
        frames = await client.post("/layout-parsing", json={"file": tiff, "pageRange": "3", "visualize": False})
        return whole, some, calls_some, frames

    whole, some, calls_some, frames = scenario(check, detector=detector)
    assert whole.status_code == some.status_code == frames.status_code == 200, (whole.text, some.text, frames.text)
    assert calls_some == 2
    pages = some.json()["result"]["layoutParsingResults"]
    assert [page["prunedResult"]["page_index"] for page in pages] == [1, 3]
    assert some.json()["result"]["dataInfo"]["numPages"] == 2
    # the asked pages are the same pages the whole document gives, with their index added
    full = whole.json()["result"]["layoutParsingResults"]
    assert "page_index" not in full[1]["prunedResult"]
    for page, index in zip(pages, (1, 3)):
        pruned = dict(page["prunedResult"])
        assert pruned.pop("page_index") == index
        assert pruned == full[index]["prunedResult"]
        assert page["markdown"] == full[index]["markdown"]
    (frame,) = frames.json()["result"]["layoutParsingResults"]
    assert frame["prunedResult"]["page_index"] == 2
    assert frames.json()["result"]["dataInfo"]["type"] == "tiff"


def test_a_range_past_the_end_or_unreadable_is_a_422_and_nothing_is_parsed():
    detector = FakeDetector()
    pdf = base64.b64encode(make_pdf(2)).decode()

    async def check(client, fake, state, app):
        past = await client.post("/layout-parsing", json={"file": pdf, "pageRange": "2-3"})
        unreadable = await client.post("/layout-parsing", json={"file": pdf, "pageRange": "two"})
        return past, unreadable, fake.bodies

    past, unreadable, bodies = scenario(check, detector=detector)
    assert error_of(past, 422) == "pageRange '2-3' asks for page 3 but the PDF has 2 pages"
    errors = json.loads(error_of(unreadable, 422))
    assert errors[0]["loc"] == "body.pageRange" and "'two'" in errors[0]["msg"]
    assert detector.calls == 0 and bodies == []

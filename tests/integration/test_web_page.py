"""The web page in a real headless Chromium (Debian's chromium + chromium-driver) against the real server.

A PNG and a 3-page PDF go through the page as jobs to vLLM on CPU and paddlex: each waits in the queue
with its position shown, its bar follows the server's page count and its pages show as they are read; then every page
must show its blocks over the page image and its markdown, equal to the JSON the page downloads, with
nothing in the browser's console. A page range parses only the pages asked for, and a document's job
can be cancelled from the page. The same page works under a path prefix behind a reverse proxy that
asks for a key, and a saved answer carrying hostile markup renders with formulas and tables but runs nothing.
"""

from __future__ import annotations

import base64
import json
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.fixtures.documents import jpeg_bytes, make_page_image, make_pdf, png_bytes
from tests.fixtures.prefix_proxy import PrefixProxy

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PARSE_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium driven by Selenium; downloads land in `browser.downloads`."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.fail(f"the browser tests need {CHROMIUM} and {CHROMEDRIVER}: run `bash .ci/setup` (Debian's chromium, chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.downloads = downloads
    driver.screenshots = tmp_path_factory.mktemp("screenshots")
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver) -> list[str]:
    """The console's errors since the last call (reading the log empties it)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def wait(driver, condition, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def by_id(driver, element_id: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def all_css(driver, selector: str) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def open_page(driver, url: str) -> None:
    driver.get(url)
    console_errors(driver)  # start from an empty log
    wait(driver, lambda d: by_id(d, "server-status").get_attribute("data-state") == "ready")


def upload(driver, *paths: Path) -> None:
    by_id(driver, "files").send_keys("\n".join(str(path) for path in paths))


def wait_until_settled(driver, count: int) -> list[tuple[str, str]]:
    """Wait until `count` documents are done, failed or cancelled; their (status, text) rows."""

    def settled(d):
        rows = all_css(d, "#documents li")
        states = [row.get_attribute("data-status") for row in rows]
        return len(rows) == count and all(state in ("done", "failed", "cancelled") for state in states) and rows

    rows = wait(driver, settled, PARSE_TIMEOUT_S)
    return [(row.get_attribute("data-status"), row.text) for row in rows]


RECORD_PROGRESS = """
    // Every state each document's row goes through, as the page shows it.
    window.__progress = [];
    const last = new Map();
    const record = () => {
      for (const row of document.querySelectorAll('#documents li')) {
        const d = row.dataset;
        const state = {
          name: row.querySelector('.name').textContent, status: d.status, jobId: d.jobId,
          done: d.pagesDone === '' ? null : Number(d.pagesDone), total: d.pagesTotal === '' ? null : Number(d.pagesTotal),
          shown: Number(d.pagesShown), queue: d.queuePosition === '' ? null : Number(d.queuePosition),
          text: row.querySelector('.state').textContent, bar: row.querySelector('progress').value,
        };
        const key = JSON.stringify(state);
        if (last.get(state.name) !== key) {
          last.set(state.name, key);
          window.__progress.push(state);
        }
      }
    };
    new MutationObserver(record).observe(document.getElementById('documents'),
      {subtree: true, childList: true, attributes: true, characterData: true});
"""


def record_progress(driver) -> None:
    driver.execute_script(RECORD_PROGRESS)


def progress_of(driver, name: str) -> list[dict]:
    return [state for state in driver.execute_script("return window.__progress") if state["name"] == name]


def downloaded(driver, name: str) -> Path:
    path = driver.downloads / name
    wait(driver, lambda d: path.is_file() and path.stat().st_size > 0)
    return path


def shown_page(driver) -> dict:
    """What the viewer shows now: page label, blocks drawn, markdown source and rendered nodes, image."""
    return driver.execute_script(
        """
        const img = document.getElementById('page-image');
        return {
          page: document.getElementById('page-number').textContent,
          blocks: document.querySelectorAll('#boxes g.block').length,
          titles: [...document.querySelectorAll('#boxes g.block title')].map(t => t.textContent),
          source: document.getElementById('markdown-source').textContent,
          rendered: document.getElementById('markdown').childNodes.length,
          image: !img.hidden && img.complete && img.naturalWidth > 0,
        };
        """
    )


def test_a_png_and_a_three_page_pdf_show_progress_then_blocks_and_markdown_for_every_page(served, browser, tmp_path):
    png, pdf = tmp_path / "report.png", tmp_path / "three-pages.pdf"
    png.write_bytes(png_bytes(make_page_image(640, 800)))
    pdf.write_bytes(make_pdf(3))
    open_page(browser, served.url + "/")
    record_progress(browser)
    upload(browser, png, pdf)
    rows = wait_until_settled(browser, 2)
    assert [status for status, _ in rows] == ["done", "done"], rows
    assert by_id(browser, "overall").text == "2 of 2 documents parsed"

    # Each job was queued on the server first, its place in the queue shown.
    for path in (png, pdf):
        states = progress_of(browser, path.name)
        queued = [state for state in states if state["status"] == "queued"]
        assert queued and all(state["queue"] is not None and "queued on the server" in state["text"] for state in queued), states
        assert states[-1]["status"] == "done" and states[-1]["jobId"]
    # While the PDF ran, its bar and words followed the server's page count, and the pages shown only grew.
    # (How many intermediate states the page sees depends on the order the server finishes pages in: a
    # result is read from the first page not yet read, so a first page finished last shows all at once.)
    states = progress_of(browser, pdf.name)
    running = [state for state in states if state["status"] == "running" and state["total"] == 3]
    assert all(state["bar"] == state["done"] for state in running), states
    assert all(state["text"] == f"page {state['done']} of 3 parsed" for state in running), states
    assert all(state["shown"] <= 3 for state in states), states
    assert [state["shown"] for state in states] == sorted(state["shown"] for state in states)

    for index, (path, pages) in enumerate(((png, 1), (pdf, 3))):
        all_css(browser, "#documents li .name")[index].click()
        wait(browser, lambda d: by_id(d, "doc-name").text == path.name)
        by_id(browser, "download-json").click()
        envelope = json.loads(downloaded(browser, f"{path.stem}.json").read_text())
        results = envelope["result"]["layoutParsingResults"]
        assert len(results) == pages
        for number, result in enumerate(results, start=1):
            if number > 1:
                by_id(browser, "next").click()
            wait(browser, lambda d: by_id(d, "page-number").text == f"Page {number} / {pages}")
            shown = shown_page(browser)
            blocks = result["prunedResult"]["parsing_res_list"]
            assert shown["blocks"] == len(blocks) > 0
            assert {title.split(" ", 1)[-1].split(" (")[0] for title in shown["titles"]} == {
                b["block_label"] for b in blocks
            }
            assert shown["source"] == result["markdown"]["text"]
            assert shown["rendered"] > 0 or not result["markdown"]["text"].strip()
            assert shown["image"], "the page image (inputImage) is not shown under the boxes"
        if index == 1:
            browser.save_screenshot(str(browser.screenshots / "web-page.png"))
        by_id(browser, "download-md").click()
        markdown = browser.downloads / f"{path.stem}.md"
        archive = browser.downloads / f"{path.stem}.zip"
        wait(browser, lambda d: markdown.is_file() or archive.is_file())
        if archive.is_file():
            names = set(zipfile.ZipFile(archive).namelist())
            pictures = {p for r in results for p in (r["markdown"].get("images") or {})}
            assert names == {f"{path.stem}.md", *pictures}

    assert console_errors(browser) == []
    print(f"screenshot: {browser.screenshots / 'web-page.png'}")


def test_a_page_range_parses_only_the_pages_asked_for_and_an_image_whole(served, browser, tmp_path):
    pdf, png = tmp_path / "two-pages.pdf", tmp_path / "photo.png"
    pdf.write_bytes(make_pdf(2))
    png.write_bytes(png_bytes(make_page_image(480, 640)))
    open_page(browser, served.url + "/")
    by_id(browser, "page-range").send_keys("2")
    upload(browser, pdf, png)
    rows = wait_until_settled(browser, 2)
    assert [status for status, _ in rows] == ["done", "done"], rows
    for index, (path, indices) in enumerate(((pdf, [1]), (png, [None]))):
        all_css(browser, "#documents li .name")[index].click()
        wait(browser, lambda d: by_id(d, "doc-name").text == path.name)
        assert by_id(browser, "page-number").text == "Page 1 / 1"
        assert shown_page(browser)["blocks"] > 0
        by_id(browser, "download-json").click()
        results = json.loads(downloaded(browser, f"{path.stem}.json").read_text())["result"]["layoutParsingResults"]
        assert [result["prunedResult"].get("page_index") for result in results] == indices
    assert console_errors(browser) == []


def test_cancel_stops_a_documents_job_on_the_server(served, browser, tmp_path):
    pdf = tmp_path / "long.pdf"
    pdf.write_bytes(make_pdf(5))
    open_page(browser, served.url + "/")
    upload(browser, pdf)
    row = wait(browser, lambda d: (all_css(d, "#documents li[data-status=running]") or [None])[0], PARSE_TIMEOUT_S)
    job_id = row.get_attribute("data-job-id")
    row.find_element("css selector", ".cancel").click()
    rows = wait_until_settled(browser, 1)
    assert [status for status, _ in rows] == ["cancelled"], rows
    assert by_id(browser, "overall").text == "0 of 1 document parsed, 1 cancelled"
    assert not row.find_element("css selector", ".cancel").is_displayed()
    status = httpx.get(f"{served.url}/layout-parsing/jobs/{job_id}", timeout=30).json()["result"]
    assert status["status"] == "cancelled" and status["pagesDone"] < 5
    assert console_errors(browser) == []


HOSTILE_MARKDOWN = "\n\n".join(
    (
        "# Heading",
        "<script>window.__pwned = 'script'</script>",
        "<img src=\"x\" onerror=\"window.__pwned = 'onerror'\">",
        '<img src="http://127.0.0.1:9/track.png" alt="remote">',
        "[a link](javascript:window.__pwned='markdown-link')",
        "<a href=\"javascript:window.__pwned='html-link'\">raw link</a>",
        '<iframe src="data:text/html,<script>parent.__pwned=1</script>"></iframe>',
        "<svg><script>window.__pwned = 'svg'</script><circle r=\"5\" onload=\"window.__pwned = 'svg-onload'\"/></svg>",
        "<style>body { display: none }</style>",
        "$$\\frac{a}{b} = c^2$$",
        "Inline $x_1 + y_2$ in a sentence.",
        "<table border=1><tr><td>A</td><td>B</td></tr></table>",
        '<div style="text-align: center;"><img src="imgs/picture.jpg" alt="Image" width="50%" /></div>',
    )
)


def saved_answer() -> dict:
    picture = base64.b64encode(jpeg_bytes(make_page_image(200, 200))).decode()
    block = {"block_label": "text", "block_content": "x", "block_bbox": [40, 40, 560, 300], "block_id": 0, "block_order": 1}
    page = {
        "prunedResult": {"width": 600, "height": 800, "parsing_res_list": [block]},
        "markdown": {"text": HOSTILE_MARKDOWN, "images": {"imgs/picture.jpg": picture}},
    }
    result = {"layoutParsingResults": [page], "dataInfo": {"width": 600, "height": 800, "type": "image"}}
    return {"logId": "saved", "errorCode": 0, "errorMsg": "Success", "result": result}


def test_a_saved_answer_renders_formulas_tables_and_pictures_and_runs_none_of_its_markup(served, browser, tmp_path):
    saved = tmp_path / "hostile.json"
    saved.write_text(json.dumps(saved_answer()))
    open_page(browser, served.url + "/")
    upload(browser, saved)
    wait(browser, lambda d: by_id(d, "doc-name").text == "hostile.json")
    found = browser.execute_script(
        """
        const md = document.getElementById('markdown');
        const all = [...md.querySelectorAll('*')];
        const picture = md.querySelector('img[alt="Image"]');
        return {
          pwned: window.__pwned === undefined ? null : String(window.__pwned),
          dangerous: md.querySelectorAll('script, iframe, style, object, embed').length,
          handlers: all.filter(e => [...e.attributes].some(a => a.name.startsWith('on'))).length,
          scriptLinks: [...md.querySelectorAll('a')].filter(a => /^\\s*javascript:/i.test(a.getAttribute('href') || '')).length,
          heading: (md.querySelector('h1') || {}).textContent,
          formulas: md.querySelectorAll('.katex').length,
          display: md.querySelectorAll('.katex-display').length,
          cells: md.querySelectorAll('table td').length,
          picture: picture && picture.src.startsWith('data:image/jpeg;base64,') && picture.complete && picture.naturalWidth > 0,
          remote: [...md.querySelectorAll('img')].filter(i => (i.getAttribute('src') || '').startsWith('http')).length,
          bodyShown: getComputedStyle(document.body).display !== 'none',
        };
        """
    )
    assert found["pwned"] is None
    assert found["dangerous"] == found["handlers"] == found["scriptLinks"] == found["remote"] == 0
    assert found["heading"] == "Heading" and found["bodyShown"]
    assert found["formulas"] >= 2 and found["display"] == 1
    assert found["cells"] == 2 and found["picture"]
    browser.save_screenshot(str(browser.screenshots / "saved-answer.png"))
    # Chromium reports each handler attribute it meets while DOMPurify parses the markup in an inert
    # document as refused by the page's policy; nothing else may be in the console.
    errors = console_errors(browser)
    assert all("inline event handler violates" in e and "has been blocked" in e for e in errors), errors


def test_under_a_path_prefix_the_page_asks_for_the_key_and_parses(served, browser, tmp_path):
    png = tmp_path / "page.png"
    png.write_bytes(png_bytes(make_page_image(480, 640)))
    with PrefixProxy(served.url, "/model/proxy/7", key="k3y") as proxy:
        open_page(browser, proxy.url)  # a new origin (the proxy's port): no key is stored for it
        upload(browser, png)
        dialog = wait(browser, lambda d: by_id(d, "key-dialog").is_displayed() and by_id(d, "key-dialog"))
        assert "API key" in dialog.text or "Unauthorized" in dialog.text
        by_id(browser, "key-input").send_keys("k3y")
        by_id(browser, "key-ok").click()
        rows = wait_until_settled(browser, 1)
        assert [status for status, _ in rows] == ["done"], rows
        assert shown_page(browser)["blocks"] > 0
        errors = console_errors(browser)
        # The one refused request before the key was given; nothing else.
        assert len(errors) == 1 and "401" in errors[0], errors

        browser.get(proxy.url + "docs")
        wait(browser, lambda d: all_css(d, ".swagger-ui .info .title"))
        wait(browser, lambda d: len(all_css(d, ".opblock")) >= 3)
        assert "PaddleOCR-VL" in all_css(browser, ".swagger-ui .info .title")[0].text
        assert console_errors(browser) == []
        paths = [path for _, path, _ in proxy.requests]
    assert all(path.startswith("/model/proxy/7/") for path in paths)
    assert "/model/proxy/7/layout-parsing/jobs" in paths and "/model/proxy/7/openapi.json" in paths
    assert any(path.startswith("/model/proxy/7/layout-parsing/jobs/") and "/result?" in path for path in paths)

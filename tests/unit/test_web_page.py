"""The web page and /docs as the proxy serves them: offline, relative URLs only, a policy that forbids remote loads.

What the page does in a browser is tested with real Chromium in tests/integration/test_web_page.py.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from tests.unit.test_proxy_app import scenario
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.endpoints.ui import WEB_DIR

VENDOR = WEB_DIR / "vendor"


class _References(HTMLParser):
    """Every src/href an HTML page names."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def references(html: str) -> list[str]:
    parser = _References()
    parser.feed(html)
    return parser.urls


def fetch_all(*paths: str):
    async def check(client, fake, state, app):
        return [await client.get(path) for path in paths]

    return scenario(check)


def test_the_page_is_served_at_the_root_and_at_ui_with_a_policy_against_remote_loads():
    root, ui, slash = fetch_all("/", "/ui", "/ui/")
    assert root.status_code == ui.status_code == 200
    assert root.text == ui.text and 'id="drop"' in root.text
    policy = root.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy and "img-src 'self' data: blob:" in policy
    # /ui/ goes back to /ui relatively, so a reverse proxy's prefix survives the redirect.
    assert slash.status_code == 307 and slash.headers["location"] == "../ui"


@pytest.mark.parametrize("page", ["/", "/docs"])
def test_every_url_a_page_names_is_relative_and_served(page):
    (html,) = fetch_all(page)
    urls = [url for url in references(html.text) if not url.startswith("data:")]
    assert urls, "the page names no asset"
    for url in urls:
        assert not re.match(r"^([a-z]+:)?//|^/", url), f"{page} names {url}: absolute URLs break behind a path prefix"
    answers = fetch_all(*("/" + url for url in urls if url != "docs"))
    assert [a.status_code for a in answers] == [200] * len(answers)
    assert "'unsafe-inline'" not in html.headers["content-security-policy"].split("script-src")[1].split(";")[0]
    assert "<script>" not in html.text, "inline scripts are refused by the page's own policy"


def test_the_page_scripts_and_styles_load_nothing_from_elsewhere():
    for path in [*WEB_DIR.glob("*.js"), *WEB_DIR.glob("*.css"), *WEB_DIR.glob("*.html")]:
        text = path.read_text(encoding="utf-8")
        remote = re.findall(r"""(?:src=|href=|url\(|fetch\(|import .* from )["']?(?:https?:)?//[^"')\s]+""", text)
        assert remote == [], f"{path.name} loads {remote}"


def test_katex_fonts_the_stylesheet_names_are_shipped():
    css = (VENDOR / "katex" / "katex.min.css").read_text(encoding="utf-8")
    woff2 = set(re.findall(r"url\((fonts/[^)]+\.woff2)\)", css))
    assert woff2 and {name for name in woff2 if not (VENDOR / "katex" / name).is_file()} == set()


def test_every_vendored_library_has_its_licence_and_a_version_noted():
    versions = (VENDOR / "VERSIONS.md").read_text(encoding="utf-8")
    for directory in sorted(p for p in VENDOR.iterdir() if p.is_dir()):
        assert (directory / "LICENSE").is_file(), f"{directory.name} has no LICENSE"
        assert re.search(rf"^\| {re.escape(directory.name)}/ +\| [\w.@/-]+ +\| \d+\.\d+\.\d+ ", versions, re.M), (
            f"VERSIONS.md notes no version for {directory.name}/"
        )


def test_a_missing_asset_is_a_paddlex_shaped_404_not_a_passthrough():
    (answer,) = fetch_all("/ui/assets/nothing-here.js")
    assert answer.status_code == 404
    assert set(answer.json()) == {"logId", "errorCode", "errorMsg"}


def test_docs_loads_swagger_from_the_package():
    (docs,) = fetch_all("/docs")
    urls = references(docs.text)
    assert "ui/assets/vendor/swagger-ui/swagger-ui-bundle.js" in urls and "ui/assets/docs.js" in urls

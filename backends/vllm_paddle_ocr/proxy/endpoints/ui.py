"""GET / and /ui: the web page, and /ui/assets/*: its files, shipped inside the package so it works offline.

Every URL the page uses is relative, so it works at the root, under GPUStack's generic proxy
(`/model/proxy/<route>/`) and behind any reverse proxy that strips a prefix.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
ASSETS_PATH = "/ui/assets"
# The page's own paths (its assets are under ASSETS_PATH): nothing a user sent is behind them.
PAGE_PATHS = frozenset({"/", "/ui", "/ui/"})

# The page and /docs load nothing from elsewhere and run no inline script: a document's markdown that got
# past the sanitiser still could not run code, load a remote picture or send data anywhere.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",  # KaTeX and the model's tables carry style attributes
        "img-src 'self' data: blob:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    )
)


@lru_cache(maxsize=None)
def _html(name: str) -> bytes:
    return (WEB_DIR / name).read_bytes()


def html_page(name: str) -> Response:
    """One of the package's HTML pages with the policy that keeps it offline and script-free."""
    return Response(
        _html(name),
        media_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"},
    )


async def page(request: Request) -> Response:
    """The web page: drop documents, watch them parse, page through boxes and markdown."""
    return html_page("index.html")


async def page_with_slash(request: Request) -> Response:
    """/ui/ to /ui, relatively, so a prefix in front of the proxy is kept."""
    return RedirectResponse("../ui", status_code=307)


def assets() -> StaticFiles:
    """The page's scripts, styles and fonts (its own and the vendored libraries)."""
    return StaticFiles(directory=WEB_DIR)

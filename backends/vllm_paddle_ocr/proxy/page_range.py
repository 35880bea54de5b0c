"""`pageRange`: which pages of a PDF (or frames of a TIFF) a request parses, 1-based, e.g. "1-3,7,10-"."""

from __future__ import annotations

import re
from dataclasses import dataclass

from vllm_paddle_ocr.plugin.errors import VllmPaddleOcrError

MAX_TEXT_LENGTH = 1000
_SPAN = re.compile(r"^\s*(\d+)\s*(?:(-)\s*(\d*)\s*)?$")


class PageRangeError(VllmPaddleOcrError, ValueError):
    """A pageRange that cannot be read, or that asks for pages the document does not have."""


@dataclass(frozen=True)
class PageRange:
    """Inclusive 1-based spans as the request wrote them; `last` None means "to the end"."""

    text: str
    spans: tuple[tuple[int, int | None], ...]

    @classmethod
    def parse(cls, text: str) -> PageRange:
        """Read "N", "N-M" and "N-" items separated by commas; raises PageRangeError saying what is wrong."""
        if len(text) > MAX_TEXT_LENGTH:
            raise PageRangeError(f"pageRange is longer than {MAX_TEXT_LENGTH} characters")
        spans: list[tuple[int, int | None]] = []
        for item in text.split(","):
            match = _SPAN.match(item)
            if match is None:
                raise PageRangeError(
                    f"pageRange item {item.strip()!r} is not a page number or a range like 1-3 or 10- "
                    "(pages are numbered from 1)"
                )
            first = int(match.group(1))
            last: int | None = first if match.group(2) is None else (int(match.group(3)) if match.group(3) else None)
            if first < 1:
                raise PageRangeError("pageRange pages are numbered from 1")
            if last is not None and last < first:
                raise PageRangeError(f"pageRange item {item.strip()!r} ends before it starts")
            spans.append((first, last))
        return cls(text, tuple(spans))

    def indices(self, page_count: int, what: str = "document") -> list[int]:
        """The 0-based pages asked for, in document order, each once; past the end is a PageRangeError."""
        chosen: set[int] = set()
        for first, last in self.spans:
            end = page_count if last is None else last
            if first > page_count or end > page_count:
                asked = max(first, end)
                pages = "page" if page_count == 1 else "pages"
                raise PageRangeError(
                    f"pageRange {self.text!r} asks for page {asked} but the {what} has {page_count} {pages}"
                )
            chosen.update(range(first - 1, end))
        return sorted(chosen)

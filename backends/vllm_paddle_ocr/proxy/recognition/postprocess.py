"""Clean-up of one block's recognised text: runaway repetition, LaTeX delimiters, tables, spotting."""

from __future__ import annotations

import re
from collections import Counter

from .otsl import otsl_to_html

# Texts shorter than this are never truncated; tables legitimately repeat cell markup a lot.
MIN_LENGTH_TO_TRUNCATE = 50
MIN_LENGTH_TO_TRUNCATE_TABLE = 5000


def min_length_to_truncate(label: str) -> int:
    """Shortest text of this label that repetition truncation looks at."""
    return MIN_LENGTH_TO_TRUNCATE_TABLE if label == "table" else MIN_LENGTH_TO_TRUNCATE


def _shortest_period(s: str) -> str | None:
    """The shortest unit that, repeated, makes up all of ``s`` (None if there is none)."""
    n = len(s)
    for size in range(1, n // 2 + 1):
        if n % size == 0 and s[:size] * (n // size) == s:
            return s[:size]
    return None


def _repeating_suffix(s: str, min_unit: int = 8, min_repeats: int = 5) -> tuple[str, str, int] | None:
    """(prefix, unit, count) when ``s`` ends with a unit repeated at least ``min_repeats`` times.

    Longer units are tried first, as the model's loops are usually whole phrases.
    """
    for size in range(len(s) // min_repeats, min_unit - 1, -1):
        unit = s[-size:]
        if s.endswith(unit * min_repeats):
            count = 0
            rest = s
            while rest.endswith(unit):
                rest = rest[:-size]
                count += 1
            return s[: len(s) - count * size], unit, count
    return None


def truncate_repetition(
    text: str,
    *,
    min_length: int = MIN_LENGTH_TO_TRUNCATE,
    line_threshold: int = 10,
    unit_threshold: int = 10,
) -> str:
    """Cut a generation loop down to its useful part.

    In order: a long single line ending in a phrase repeated >= 5 times that makes up more
    than half of it keeps the part before the loop; a single line made of one unit repeated
    >= ``unit_threshold`` times becomes that unit; >= ``line_threshold`` lines where one line
    accounts for >= 80% (and >= ``line_threshold`` times) become that line.
    """
    if len(text) < min_length:
        return text
    stripped = text.strip()
    if not stripped:
        return text
    single_line = "\n" not in stripped
    if single_line and len(stripped) > 100:
        found = _repeating_suffix(stripped)
        if found is not None:
            prefix, unit, count = found
            if len(unit) * count > len(stripped) * 0.5:
                return prefix
    if single_line and len(stripped) > 10:
        unit = _shortest_period(stripped)
        if unit is not None and len(stripped) // len(unit) >= unit_threshold:
            return unit
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if len(lines) < line_threshold:
        return text
    line, count = Counter(lines).most_common(1)[0]
    if count >= line_threshold and count / len(lines) >= 0.8:
        return line
    return text


def normalize_latex_delimiters(text: str, label: str) -> str:
    r"""Turn ``\(..\)`` / ``\[..\]`` into `` $ `` / `` $$ `` delimiters (markdown renderers know those).

    Only when such a pair occurs: then bare ``$`` are removed first, and formula numbers lose
    every ``$``.
    """
    if not (("\\(" in text and "\\)" in text) or ("\\[" in text and "\\]" in text)):
        return text
    text = text.replace("$", "")
    text = (
        text.replace("\\(", " $ ")
        .replace("\\)", " $")
        .replace("\\[\\[", "\\[")
        .replace("\\]\\]", "\\]")
        .replace("\\[", " $$ ")
        .replace("\\]", " $$ ")
    )
    if label == "formula_number":
        text = text.replace("$", "")
    return text


def postprocess_block_text(label: str, text: str | None) -> str:
    """Everything done to a block's VLM answer before it is shown (spotting excluded)."""
    text = text or ""
    text = truncate_repetition(text, min_length=min_length_to_truncate(label))
    text = normalize_latex_delimiters(text, label)
    if label == "table":
        table_html = otsl_to_html(text)
        if table_html is not None:
            text = table_html
    return text


_TEXT_RE = re.compile(r"<\|TEXT_START\|>(.*?)<\|TEXT_END\|>", re.S)
_LOC_BLOCK_RE = re.compile(r"<\|LOC_BEGIN\|>(.*?)<\|LOC_END\|>", re.S)
_LOC_RE = re.compile(r"<\|LOC_(\d+)\|>")

Point = tuple[float, float]


def spotting_upscale(width: int, height: int) -> tuple[int, int]:
    """Size a spotting crop is resized to before recognition (small pages are doubled)."""
    if width < 1500 and height < 1500:
        return width * 2, height * 2
    return width, height


def _to_points(values: list[int], width: int, height: int) -> list[Point]:
    return [(values[k] / 1000.0 * width, values[k + 1] / 1000.0 * height) for k in range(0, 8, 2)]


def parse_spotting(text: str, width: int, height: int) -> tuple[str, dict[str, list]]:
    """Split a spotting answer into texts and quadrilaterals in page pixels.

    Locations are given per mille of the crop; ``width``/``height`` are the block's size on the
    page (before any upscaling), so points come out in page pixels relative to the block.
    Returns the texts joined by blank lines and ``{"rec_polys": [...], "rec_texts": [...]}``.
    """
    polys: list[list[Point]] = []
    texts: list[str] = []
    for txt, locs in zip(_TEXT_RE.findall(text), _LOC_BLOCK_RE.findall(text)):
        values = [int(v) for v in _LOC_RE.findall(locs)]
        if len(values) < 8:
            continue
        polys.append(_to_points(values[:8], width, height))
        texts.append(txt.strip())
    if not polys:
        # Fallback: any run of 8 location tokens, the text before it being its label.
        matches = list(_LOC_RE.finditer(text))
        last_end = 0
        for k in range(0, len(matches) - 7, 8):
            group = matches[k : k + 8]
            polys.append(_to_points([int(m.group(1)) for m in group], width, height))
            texts.append(text[last_end : group[0].start()].strip())
            last_end = group[-1].end()
    return "\n\n".join(texts), {"rec_polys": polys, "rec_texts": texts}

"""A page's markdown, written exactly as PaddleX writes it for PaddleOCR-VL."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ...recipe import DEFAULT_MARKDOWN_IGNORE_LABELS
from ..blocks import ParsedBlock
from ..recognition.prompts import Recognition

_CENTER_OPEN = '<div style="text-align: center;">'
_TABLE_STYLE = "<table border=1 style='margin: auto; word-wrap: break-word;'>"
_CELL_STYLE = "style='text-align: center; word-wrap: break-word;'"

# Leading section numbers a title may start with: 1 / 1.2 / 1.2. / 1、, (1) / （一）,
# Chinese numerals with optional 、 or ., Roman numerals I-X followed by a dot or a space.
_CN_DIGITS = "一二三四五六七八九十百千万亿零壹贰叁肆伍陆柒捌玖拾"
_NUMBERINGS = (
    r"[1-9][0-9]*(?:\.[1-9][0-9]*)*[\.、]?",
    rf"[\(（](?:[1-9][0-9]*|[{_CN_DIGITS}]+)[\)）]",
    rf"[{_CN_DIGITS}]+[、\.]?",
    r"(?:I|II|III|IV|V|VI|VII|VIII|IX|X)(?:\.|\s)",
)
_TITLE_RE = re.compile(r"^\s*(" + "(?:" + "|".join(_NUMBERINGS) + ")" + r")(\s*)(.*)$")


def one_line(text: str) -> str:
    """Join a hyphenated line break and turn other line breaks into spaces."""
    return text.replace("-\n", "").replace("\n", " ")


def title_markdown(title: str) -> str:
    """A paragraph title as a heading: ``##`` plus one ``#`` per dot (``1.2 Sub`` -> ``### 1.2 Sub``)."""
    match = _TITLE_RE.match(title)
    if match:
        title = match.group(1).strip() + " " + match.group(3).lstrip()
    title = title.rstrip(".")
    level = title.count(".") + 1 if "." in title else 1
    return one_line("#" * (level + 1) + " " + title)


def centered(content: str, *, collapse: bool = True) -> str:
    """Content in a centred div (PaddleX's prettified pictures and captions)."""
    return _CENTER_OPEN + (one_line(content) if collapse else content) + "</div>\n"


def picture_html(path: str, bbox: Sequence[int], page_width: int) -> str:
    """An <img> whose width is the block's share of the page width, in whole percent."""
    scale = int((bbox[2] - bbox[0]) / page_width * 100)
    return f'<img src="{one_line(path)}" alt="Image" width="{scale}%" />'


def chart_table_html(content: str) -> str:
    """A recognised chart (rows of ``|``-separated values, header first) as a centred HTML table."""
    lines = content.split("\n")
    cell = "<{0} style='text-align: center;'>{1}</{0}>"
    out = "<table border=1 style='margin: auto; width: max-content;'>\n"
    out += "  <thead><tr>" + "".join(cell.format("th", c.strip()) for c in lines[0].split("|")) + "</tr></thead>\n"
    out += "  <tbody>\n"
    for line in lines[1:]:
        out += "    <tr>" + "".join(cell.format("td", c.strip()) for c in line.split("|")) + "</tr>\n"
    return out + "  </tbody>\n</table>"


def styled_table(html: str) -> str:
    """Borders and centred cells for a table in prettified markdown."""
    return (
        html.replace("<table>", _TABLE_STYLE)
        .replace("<th>", f"<th {_CELL_STYLE}>")
        .replace("<td>", f"<td {_CELL_STYLE}>")
    )


def _paragraphs(text: str) -> str:
    """Every line break becomes a paragraph break (double breaks count once)."""
    return text.replace("\n\n", "\n").replace("\n", "\n\n")


def _first_line_heading(text: str, names: tuple[str, ...], splitter: str, heading: Callable[[str], str]) -> str:
    parts = text.split(splitter)
    for k, part in enumerate(parts):
        if part.strip() == "":
            continue
        if part.lower() in names:
            parts[k] = heading(part)
        break
    return splitter.join(parts)


@dataclass(frozen=True)
class MarkdownStyle:
    """How blocks are written: prettified HTML or plain markdown, and what recognition ran."""

    prettify: bool = True
    recognition: Recognition = Recognition()
    use_layout_detection: bool = True


Formatter = Callable[[ParsedBlock], str]


def formatters(style: MarkdownStyle, page_width: int, ignore_labels: Sequence[str] = ()) -> dict[str, Formatter]:
    """Label -> formatter for a page; labels without one (or ignored) are left out of markdown."""
    pretty, rec = style.prettify, style.recognition

    def picture(show_text: bool) -> Formatter:
        def fmt(b: ParsedBlock) -> str:
            if pretty:
                html = "" if b.picture is None else picture_html(b.picture, b.bbox, page_width)
                if show_text and b.picture is not None:
                    html += "\n\n" + b.content + "\n\n"
                return centered(html, collapse=not show_text)
            if b.picture is None:
                return ""
            out = f"![]({one_line(b.picture)})"
            return out + ("\n\n" + b.content + "\n\n" if show_text else "")

        return fmt

    text: Formatter = (lambda b: centered(b.content)) if pretty else (lambda b: b.content)
    image = picture(rec.ocr_for_image_blocks)
    seal = picture(rec.seal) if style.use_layout_detection else text
    if pretty:
        table: Formatter = lambda b: "\n" + styled_table(b.content)
    else:
        table = lambda b: "\n\n" + re.sub(r"</?(?:html|body)>", "", b.content)
    plain: Formatter = lambda b: b.content
    title: Formatter = lambda b: title_markdown(b.content)
    out: dict[str, Formatter] = {
        "paragraph_title": lambda b: (
            title_markdown(b.content)
            if b.title_level is None
            else one_line("#" * (b.title_level + 1) + " " + b.content)
        ),
        "abstract_title": title,
        "reference_title": title,
        "content_title": title,
        "doc_title": lambda b: one_line(f"# {b.content}"),
        "table_title": text,
        "figure_title": text,
        "chart_title": text,
        "vision_footnote": lambda b: _paragraphs(b.content),
        "text": lambda b: _paragraphs(b.content),
        "ocr": lambda b: _paragraphs(b.content),
        "vertical_text": lambda b: _paragraphs(b.content),
        "reference_content": lambda b: _paragraphs(b.content),
        "abstract": lambda b: _first_line_heading(b.content, ("摘要", "abstract"), " ", lambda s: f"## {s}\n"),
        "content": lambda b: b.content.replace("-\n", "  \n").replace("\n", "  \n"),
        "image": image,
        "chart": (lambda b: chart_table_html(b.content)) if rec.chart else image,
        "formula": plain,
        "display_formula": plain,
        "inline_formula": plain,
        "table": table,
        "reference": lambda b: _first_line_heading(b.content, ("参考文献", "references"), "\n", lambda s: f"## {s}"),
        "algorithm": lambda b: b.content.strip("\n"),
        "seal": seal,
        "spotting": plain,
        "number": plain,
        "footnote": plain,
        "header": plain,
        "header_image": image,
        "footer": plain,
        "footer_image": image,
        "aside_text": plain,
    }
    for label in ignore_labels:
        out.pop(label, None)
    return out


def formula_with_number(formula: str, number: str) -> str:
    """A display formula tagged with its number: ``$$f \\tag*{n}$$``."""
    return "$$" + formula.replace("$$", "") + " \\tag*{" + number + "}$$"


def page_markdown(
    blocks: Sequence[ParsedBlock],
    *,
    page_width: int,
    style: MarkdownStyle = MarkdownStyle(),
    ignore_labels: Sequence[str] = DEFAULT_MARKDOWN_IGNORE_LABELS,
    show_formula_number: bool = False,
    figure_paths: Sequence[str] = (),
) -> tuple[str, list[str]]:
    """Markdown of a page's blocks in order, and the picture paths it comes with.

    The paths are every block picture (shown or not) then ``figure_paths`` (the page's detected
    pictures), without repeats: ``markdown.images`` maps each to its JPEG.
    """
    fmt = formatters(style, page_width, ignore_labels)
    text = ""
    paths: dict[str, None] = {}
    for k, block in enumerate(blocks):
        if block.picture is not None:
            paths[block.picture] = None
        if (
            show_formula_number
            and block.label in ("display_formula", "formula")
            and k + 1 < len(blocks)
            and blocks[k + 1].label == "formula_number"
        ):
            block = replace(block, content=formula_with_number(block.content, blocks[k + 1].content))
        handler = fmt.get(block.label)
        if handler is None:
            continue
        piece = handler(block)
        text = text + "\n\n" + piece if text else piece
    for path in figure_paths:
        paths[path] = None
    return text, list(paths)

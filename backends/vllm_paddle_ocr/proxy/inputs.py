"""The request's `file` turned into page images: base64 decoding, type sniffing, limits, rendering."""

from __future__ import annotations

import base64
import binascii
import io
import math
import mimetypes
import threading
from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import urlparse

from PIL import Image, ImageOps

from .errors import InputError, LimitExceeded

# The proxy checks every image's and page's pixel count itself, against its own configurable limit,
# before anything is decoded; Pillow's global bomb check would fire at a different, fixed size.
Image.MAX_IMAGE_PIXELS = None

PDF_RENDER_SCALE = 2.0
PDF_MIN_RENDER_SCALE = 0.1
SUPPORTED_IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")

FileKind = Literal["PDF", "IMAGE"]

FILE_TYPE_UNKNOWN = "File type cannot be determined"
FILE_TYPE_UNSUPPORTED = "Unsupported file type"
INVALID_FILE = "Invalid input file"

_PDFIUM_LOCK = threading.Lock()  # pdfium is not thread-safe, whatever document it works on


@dataclass(frozen=True)
class InputLimits:
    """The explicit limits on one request's input; past any of them the answer says which."""

    max_body_bytes: int
    max_pages: int
    max_page_pixels: int


def is_url(text: str) -> bool:
    """Whether `file` names an http(s) URL rather than carrying base64 content."""
    if not text.startswith(("http://", "https://")):
        return False
    parts = urlparse(text)
    return bool(parts.scheme and parts.netloc)


def kind_from_url(url: str) -> FileKind | None:
    """The file kind a URL's file name implies, None when it names no extension we know."""
    name = urlparse(url).path.rsplit("/", 1)[-1]
    guessed = mimetypes.guess_type(name)[0]
    if guessed is None:
        return None
    if guessed == "application/pdf":
        return "PDF"
    if guessed.startswith("image/"):
        return "IMAGE"
    raise InputError(FILE_TYPE_UNSUPPORTED)


def decode_base64(text: str) -> bytes:
    """The file's bytes from base64 (a `data:...;base64,` prefix is accepted too)."""
    if text.startswith("data:") and "," in text[:200]:
        text = text.split(",", 1)[1]
    try:
        data = base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"{INVALID_FILE}: `file` is neither an http(s) URL nor valid base64 ({exc})") from None
    if not data and text.strip():  # nothing but characters outside base64's alphabet
        raise InputError(f"{INVALID_FILE}: `file` is neither an http(s) URL nor valid base64")
    if not data:
        raise InputError(f"{INVALID_FILE}: `file` is empty")
    return data


def sniff(data: bytes) -> str | None:
    """The container format from the first bytes: PDF, PNG, JPEG, BMP, TIFF, WEBP, GIF, ... or None."""
    head = data[:16]
    if head.startswith(b"%PDF-") or b"%PDF-" in data[:1024]:
        return "PDF"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"BM") and len(data) > 26:
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"PK\x03\x04":
        return "ZIP"
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "HEIF"
    if head.startswith(b"\x00\x00\x00\x0cjP  ") or head.startswith(b"\xff\x4f\xff\x51"):
        return "JPEG2000"
    return None


def resolve_kind(data: bytes, declared: FileKind | None) -> tuple[FileKind, str]:
    """Check the content against the declared kind (or find the kind when none was declared)."""
    found = sniff(data)
    if found is None:
        if declared is None:
            raise InputError(FILE_TYPE_UNKNOWN)
        raise InputError(f"{INVALID_FILE}: the content is not a PDF or a PNG, JPEG, BMP, TIFF or WebP image")
    if found != "PDF" and found not in SUPPORTED_IMAGE_FORMATS:
        raise InputError(FILE_TYPE_UNSUPPORTED)
    kind: FileKind = "PDF" if found == "PDF" else "IMAGE"
    if declared is not None and declared != kind:
        said = "a PDF (fileType 0)" if declared == "PDF" else "an image (fileType 1)"
        raise InputError(f"{INVALID_FILE}: fileType says {said} but the content is {found}")
    return kind, found


def pixel_limit_message(width: int, height: int, limit: int, page: int | None) -> str:
    """PaddleX's wording for an image over the pixel limit, prefixed with the page for documents."""
    message = f"Image pixel count {width * height} (width={width}, height={height}) exceeds maximum allowed {limit}."
    return f"Page {page}: {message}" if page is not None else message


def pdf_render_scale(width_pt: float, height_pt: float, max_pixels: int, page: int) -> float:
    """Scale 2.0 when the rendered page fits the pixel limit, else the largest scale that does."""
    if width_pt <= 0 or height_pt <= 0:
        raise InputError(f"{INVALID_FILE}: page {page} has no area ({width_pt}x{height_pt} pt)")

    def pixels(scale: float) -> int:
        return math.ceil(width_pt * scale) * math.ceil(height_pt * scale)

    if pixels(PDF_RENDER_SCALE) <= max_pixels:
        return PDF_RENDER_SCALE
    if pixels(PDF_MIN_RENDER_SCALE) > max_pixels:
        w, h = math.ceil(width_pt * PDF_MIN_RENDER_SCALE), math.ceil(height_pt * PDF_MIN_RENDER_SCALE)
        raise InputError(
            f"Page {page}: Estimated render size width={w}, height={h} (pixel count {w * h}) at minimum "
            f"PDF render scale {PDF_MIN_RENDER_SCALE} would exceed maximum allowed {max_pixels}."
        )
    low, high = PDF_MIN_RENDER_SCALE, min(PDF_RENDER_SCALE, math.sqrt(max_pixels / (width_pt * height_pt)))
    for _ in range(40):
        middle = (low + high) / 2
        if pixels(middle) <= max_pixels:
            low = middle
        else:
            high = middle
    return low


class Document(Protocol):
    """Pages of one input, rendered on demand so a long PDF never sits in memory all at once."""

    kind: Literal["image", "pdf", "tiff"]
    page_count: int

    def page(self, index: int) -> Image.Image:
        """Page `index` (0-based) as an RGB image; safe to call from worker threads."""
        ...

    def close(self) -> None:
        """Release the decoder's resources."""
        ...


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        image = image.convert("I")
    if image.mode == "I":
        image = image.point(lambda value: value * (1 / 256)).convert("L")
    return image if image.mode == "RGB" else image.convert("RGB")


class ImageDocument:
    """A single picture (or a single-frame TIFF): one page, decoded up front."""

    kind: Literal["image", "pdf", "tiff"] = "image"
    page_count = 1

    def __init__(self, image: Image.Image) -> None:
        self._image = image

    def page(self, index: int) -> Image.Image:
        if index != 0:
            raise IndexError(index)
        return self._image

    def close(self) -> None:
        self._image = None  # type: ignore[assignment]


class TiffDocument:
    """A multi-frame TIFF: each frame is a page, decoded when asked for."""

    kind: Literal["image", "pdf", "tiff"] = "tiff"

    def __init__(self, image: Image.Image, page_count: int) -> None:
        self._image = image
        self.page_count = page_count
        self._lock = threading.Lock()

    def page(self, index: int) -> Image.Image:
        with self._lock:
            self._image.seek(index)
            frame = _to_rgb(self._image)
            # The file object is reused by the next seek: hand out a copy that stays this frame.
            return frame.copy() if frame is self._image else frame

    def close(self) -> None:
        self._image.close()


class PdfDocument:
    """A PDF: each page rendered at scale 2.0 (lowered to fit the pixel limit) when asked for."""

    kind: Literal["image", "pdf", "tiff"] = "pdf"

    def __init__(self, pdf: object, scales: list[float]) -> None:
        self._pdf = pdf
        self._scales = scales
        self.page_count = len(scales)

    def page(self, index: int) -> Image.Image:
        with _PDFIUM_LOCK:
            page = self._pdf.get_page(index)  # type: ignore[attr-defined]
            try:
                bitmap = page.render(scale=self._scales[index], rotation=0, rev_byteorder=True)
                image = bitmap.to_pil()
            finally:
                page.close()
        return _to_rgb(image)

    def close(self) -> None:
        with _PDFIUM_LOCK:
            self._pdf.close()  # type: ignore[attr-defined]


def open_document(data: bytes, declared: FileKind | None, limits: InputLimits) -> Document:
    """Check type and limits and get a document ready to render; raises InputError/LimitExceeded."""
    kind, fmt = resolve_kind(data, declared)
    if kind == "PDF":
        return _open_pdf(data, limits)
    return _open_image(data, fmt, limits)


def _open_image(data: bytes, fmt: str, limits: InputLimits) -> Document:
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the input's fault
        raise InputError(f"{INVALID_FILE}: the {fmt} image cannot be read ({exc})") from None
    sizes = _tiff_frame_sizes(image, limits.max_pages) if fmt == "TIFF" else [image.size]
    if len(sizes) > 1:
        for index, (width, height) in enumerate(sizes):
            if width * height > limits.max_page_pixels:
                raise InputError(pixel_limit_message(width, height, limits.max_page_pixels, index + 1))
        return TiffDocument(image, len(sizes))
    width, height = image.size
    if width * height > limits.max_page_pixels:
        raise InputError(pixel_limit_message(width, height, limits.max_page_pixels, None))
    try:
        image.load()
        # Pictures from cameras carry their rotation in EXIF; PaddleX (OpenCV) applies it, so do we.
        image = ImageOps.exif_transpose(image) or image
        width, height = image.size
        if width * height > limits.max_page_pixels:
            raise InputError(pixel_limit_message(width, height, limits.max_page_pixels, None))
        rgb = _to_rgb(image)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{INVALID_FILE}: the {fmt} image cannot be decoded ({exc})") from None
    return ImageDocument(rgb)


def _tiff_frame_sizes(image: Image.Image, max_pages: int) -> list[tuple[int, int]]:
    """(width, height) of every TIFF frame, walking no further than one frame past the page limit.

    Pillow's ``n_frames`` walks the whole chain of frames, in time quadratic in their number: a small
    file holding a million frames would keep a worker busy for hours before the limit is checked.
    """
    sizes = [image.size]
    while True:
        try:
            image.seek(len(sizes))
        except EOFError:
            break
        except Exception as exc:  # noqa: BLE001 - any decoder failure is the input's fault
            raise InputError(f"{INVALID_FILE}: TIFF frame {len(sizes) + 1} cannot be read ({exc})") from None
        if len(sizes) == max_pages:
            raise LimitExceeded(_too_many_pages("TIFF", f"more than {max_pages}", max_pages))
        sizes.append(image.size)
    if len(sizes) > 1:
        image.seek(0)
    return sizes


def _too_many_pages(what: str, pages: int | str, limit: int) -> str:
    return (
        f"The {what} has {pages} pages; this server accepts at most {limit} per request (--max-pages). "
        "Split the document and send the parts as separate requests."
    )


def _open_pdf(data: bytes, limits: InputLimits) -> Document:
    import pypdfium2 as pdfium

    with _PDFIUM_LOCK:
        try:
            pdf = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as exc:
            raise InputError(f"{INVALID_FILE}: the PDF cannot be opened ({exc})") from None
        try:
            pages = len(pdf)
            if pages == 0:
                raise InputError(f"{INVALID_FILE}: the PDF has no pages")
            if pages > limits.max_pages:
                raise LimitExceeded(_too_many_pages("PDF", pages, limits.max_pages))
            pdf.init_forms()
            sizes = [pdf.get_page_size(index) for index in range(pages)]
        except (InputError, LimitExceeded):
            pdf.close()
            raise
        except Exception as exc:  # noqa: BLE001
            pdf.close()
            raise InputError(f"{INVALID_FILE}: the PDF cannot be read ({exc})") from None
    try:
        scales = [
            pdf_render_scale(width, height, limits.max_page_pixels, index + 1)
            for index, (width, height) in enumerate(sizes)
        ]
    except InputError:
        with _PDFIUM_LOCK:
            pdf.close()
        raise
    return PdfDocument(pdf, scales)


def render_page(document: Document, index: int) -> Image.Image:
    """Page `index` of a document, with a broken page reported as the input's fault, by number."""
    try:
        return document.page(index)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{INVALID_FILE}: page {index + 1} cannot be rendered ({exc})") from None


def data_info(document: Document, sizes: list[tuple[int, int]]) -> dict[str, object]:
    """PaddleX's dataInfo for the pages as they were rendered (width, height)."""
    if document.kind == "image":
        width, height = sizes[0]
        return {"width": width, "height": height, "type": "image"}
    return {
        "numPages": len(sizes),
        "pages": [{"width": width, "height": height} for width, height in sizes],
        "type": document.kind,
    }

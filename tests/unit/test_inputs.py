"""Input decoding: type sniffing, explicit limits with errors that name them, PDF rendering at scale 2."""

import base64
import io
import struct

import pytest
from PIL import Image

from tests.fixtures.documents import jpeg_bytes, make_page_image, make_pdf, pixel_bomb_png, png_bytes, truncated_pdf
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.errors import InputError, LimitExceeded
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.inputs import (
    FILE_TYPE_UNKNOWN,
    FILE_TYPE_UNSUPPORTED,
    InputLimits,
    data_info,
    decode_base64,
    is_url,
    kind_from_url,
    open_document,
    pdf_render_scale,
    render_page,
    resolve_kind,
)

LIMITS = InputLimits(max_body_bytes=50 * 1024**2, max_pages=10, max_page_pixels=178_956_970)


def encoded(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF", "WEBP"])
def test_each_supported_image_format_decodes_to_one_rgb_page(fmt):
    page = make_page_image(300, 200)
    doc = open_document(encoded(page, fmt), "IMAGE", LIMITS)
    image = render_page(doc, 0)
    assert (doc.kind, doc.page_count, image.mode, image.size) == ("image", 1, "RGB", (300, 200))
    assert data_info(doc, [image.size]) == {"width": 300, "height": 200, "type": "image"}


def test_type_is_sniffed_when_file_type_is_missing():
    assert resolve_kind(png_bytes(make_page_image(120, 120)), None) == ("IMAGE", "PNG")
    assert resolve_kind(make_pdf(1), None) == ("PDF", "PDF")


def test_unknown_bytes_without_file_type_cannot_be_typed():
    with pytest.raises(InputError) as info:
        resolve_kind(b"hello, this is plain text", None)
    assert info.value.message == FILE_TYPE_UNKNOWN
    assert info.value.status_code == 422


def test_known_but_unsupported_formats_are_refused():
    gif = encoded(make_page_image(120, 120).convert("P"), "GIF")
    with pytest.raises(InputError) as info:
        open_document(gif, None, LIMITS)
    assert info.value.message == FILE_TYPE_UNSUPPORTED


def test_declared_type_must_match_the_content():
    with pytest.raises(InputError) as info:
        open_document(make_pdf(1), "IMAGE", LIMITS)
    assert info.value.message.startswith("Invalid input file")
    assert "PDF" in info.value.message


def test_broken_files_are_invalid_input():
    for data, declared in ((truncated_pdf(), "PDF"), (png_bytes(make_page_image(200, 200))[:80], "IMAGE")):
        with pytest.raises(InputError) as info:
            doc = open_document(data, declared, LIMITS)
            render_page(doc, 0)
        assert info.value.message.startswith("Invalid input file")


def test_pixel_bomb_is_refused_with_paddlex_wording_before_decoding():
    with pytest.raises(InputError) as info:
        open_document(pixel_bomb_png(), "IMAGE", LIMITS)
    assert info.value.status_code == 422
    assert info.value.message == (
        "Image pixel count 200000000 (width=20000, height=10000) exceeds maximum allowed 178956970."
    )


def test_pixel_limit_is_configurable():
    small = InputLimits(max_body_bytes=10**9, max_pages=10, max_page_pixels=100 * 100)
    with pytest.raises(InputError, match="exceeds maximum allowed 10000"):
        open_document(png_bytes(make_page_image(101, 100)), "IMAGE", small)
    assert open_document(png_bytes(make_page_image(100, 100)), "IMAGE", small).page_count == 1


def test_pdf_pages_render_at_scale_two():
    doc = open_document(make_pdf(2, width_pt=400, height_pt=500), "PDF", LIMITS)
    pages = [render_page(doc, i) for i in range(doc.page_count)]
    assert [p.size for p in pages] == [(800, 1000), (800, 1000)]
    assert all(p.mode == "RGB" for p in pages)
    assert data_info(doc, [p.size for p in pages]) == {
        "numPages": 2,
        "pages": [{"width": 800, "height": 1000}, {"width": 800, "height": 1000}],
        "type": "pdf",
    }
    doc.close()


def test_pdf_scale_is_lowered_to_fit_the_pixel_cap():
    cap = 400 * 500
    scale = pdf_render_scale(400, 500, cap, 1)
    assert scale < 2.0
    doc = open_document(make_pdf(1, width_pt=400, height_pt=500), "PDF", InputLimits(10**9, 10, cap))
    width, height = render_page(doc, 0).size
    assert width * height <= cap
    assert width >= 390  # lowered only as far as needed


def test_pdf_page_too_big_even_at_minimum_scale_names_the_page():
    with pytest.raises(InputError) as info:
        open_document(make_pdf(2), "PDF", InputLimits(10**9, 10, 100))
    assert info.value.message.startswith("Page 1: ")
    assert "exceed maximum allowed 100" in info.value.message


def test_too_many_pages_is_a_413_that_names_the_limit_not_a_shorter_result():
    with pytest.raises(LimitExceeded) as info:
        open_document(make_pdf(3), "PDF", InputLimits(10**9, 2, 178_956_970))
    assert info.value.status_code == 413
    assert "3 pages" in info.value.message and "at most 2" in info.value.message


def test_multi_frame_tiff_is_a_document_of_pages():
    frames = [make_page_image(200, 150), make_page_image(150, 200)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="TIFF", save_all=True, append_images=frames[1:])
    doc = open_document(buffer.getvalue(), "IMAGE", LIMITS)
    pages = [render_page(doc, i) for i in range(doc.page_count)]
    sizes = [page.size for page in pages]  # each page stays its own frame after the next is read
    assert sizes == [(200, 150), (150, 200)]
    assert data_info(doc, sizes)["type"] == "tiff"
    with pytest.raises(LimitExceeded):
        open_document(buffer.getvalue(), "IMAGE", InputLimits(10**9, 1, 10**9))


def tiff_of_tiny_frames(count: int) -> bytes:
    """A TIFF of `count` 1x1 grey frames sharing one pixel: a few bytes per page."""
    ifd_size = 2 + 8 * 12 + 4
    pixel_at = 8 + count * ifd_size
    out = bytearray(b"II*\x00" + struct.pack("<I", 8))
    for index in range(count):
        tags = ((256, 1), (257, 1), (258, 8), (259, 1), (262, 1), (273, pixel_at), (278, 1), (279, 1))
        out += struct.pack("<H", len(tags))
        for tag, value in tags:
            out += struct.pack("<HHII", tag, 4, 1, value)
        out += struct.pack("<I", 8 + (index + 1) * ifd_size if index + 1 < count else 0)
    return bytes(out + b"\x80")


@pytest.mark.timeout(60)
def test_a_tiff_of_countless_frames_is_refused_without_walking_them_all():
    assert open_document(tiff_of_tiny_frames(3), "IMAGE", LIMITS).page_count == 3
    with pytest.raises(LimitExceeded) as info:
        open_document(tiff_of_tiny_frames(300_000), "IMAGE", LIMITS)
    assert "more than 10 pages" in info.value.message and "at most 10" in info.value.message


def test_exif_rotation_is_applied_like_opencv_does():
    page = make_page_image(300, 200)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    data = jpeg_bytes(page)
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buffer, format="JPEG", exif=exif)
    image = render_page(open_document(buffer.getvalue(), "IMAGE", LIMITS), 0)
    assert image.size == (200, 300)


def test_alpha_and_palette_images_become_rgb():
    rgba = make_page_image(120, 120).convert("RGBA")
    grey16 = Image.new("I;16", (120, 120), 40000)
    for img in (rgba, grey16, make_page_image(120, 120).convert("P")):
        page = render_page(open_document(encoded(img, "PNG"), "IMAGE", LIMITS), 0)
        assert page.mode == "RGB"
    assert render_page(open_document(encoded(grey16, "PNG"), "IMAGE", LIMITS), 0).getpixel((0, 0))[0] == 40000 // 256


def test_base64_decoding_accepts_data_urls_and_refuses_garbage():
    raw = png_bytes(make_page_image(120, 120))
    text = base64.b64encode(raw).decode()
    assert decode_base64(text) == raw
    assert decode_base64("data:image/png;base64," + text) == raw
    with pytest.raises(InputError):
        decode_base64("")
    with pytest.raises(InputError):
        decode_base64("abc")
    with pytest.raises(InputError, match=r"`file` is neither an http\(s\) URL nor valid base64$"):
        decode_base64("!!!")  # not "empty": something was sent, and none of it is base64


def test_urls_are_recognised_and_typed_by_their_file_name():
    assert is_url("https://example.com/a.pdf") and not is_url("aGVsbG8=") and not is_url("ftp://x/a.pdf")
    assert kind_from_url("https://example.com/scan.PDF?x=1") == "PDF"
    assert kind_from_url("https://example.com/page.webp") == "IMAGE"
    assert kind_from_url("https://example.com/download") is None
    with pytest.raises(InputError) as info:
        kind_from_url("https://example.com/report.docx")
    assert info.value.message == FILE_TYPE_UNSUPPORTED


def test_pdf_pages_keep_their_colours():
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument.new()
    page = pdf.new_page(100, 100)
    picture = pdfium.PdfImage.new(pdf)
    picture.load_jpeg(io.BytesIO(jpeg_bytes(Image.new("RGB", (50, 50), (255, 0, 0)))), inline=True)
    picture.set_matrix(pdfium.PdfMatrix().scale(100, 100))
    page.insert_obj(picture)
    page.gen_content()
    page.close()
    out = io.BytesIO()
    pdf.save(out)
    red, green, blue = render_page(open_document(out.getvalue(), "PDF", LIMITS), 0).getpixel((100, 100))
    assert red > 240 and green < 15 and blue < 15

"""The test inputs and fake model repositories are what other tests assume they are."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pypdfium2 as pdfium
import pytest

from tests.fixtures.documents import (
    MAX_IMAGE_PIXELS,
    data_url,
    jpeg_bytes,
    make_page_image,
    make_pdf,
    pixel_bomb_png,
    png_bytes,
    truncated_pdf,
)
from tests.fixtures.tiny_vlm import (
    HF_REVISION,
    LAYOUTS,
    build_tiny_paddleocr_vl,
    chat_template_text,
    inference_yml_text,
    write_fake_layout_model,
    write_fake_vlm_config,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


# --- documents -----------------------------------------------------------------------------------


def test_page_image_is_a_white_page_with_dark_marks() -> None:
    page = make_page_image(300, 400)
    assert page.size == (300, 400) and page.mode == "RGB"
    histogram = page.convert("L").histogram()
    dark, light = sum(histogram[:64]), sum(histogram[192:])
    assert light > 0.8 * 300 * 400
    assert dark > 500


def test_page_image_refuses_a_page_too_small_to_draw_on() -> None:
    with pytest.raises(ValueError, match="at least 100x100"):
        make_page_image(50, 400)


def test_encoders_write_their_formats() -> None:
    page = make_page_image(120, 120)
    assert png_bytes(page).startswith(b"\x89PNG\r\n\x1a\n")
    assert jpeg_bytes(page.convert("RGBA")).startswith(b"\xff\xd8\xff")
    assert data_url(b"abc", "image/jpeg") == "data:image/jpeg;base64,YWJj"


def test_pdf_has_the_asked_pages_and_size() -> None:
    document = pdfium.PdfDocument(make_pdf(3, width_pt=300, height_pt=400))
    try:
        assert len(document) == 3
        assert document[0].get_size() == pytest.approx((300, 400))
        rendered = document[2].render(scale=1).to_pil().convert("L")
        assert rendered.getextrema()[0] < 64, "the page picture was not drawn"
    finally:
        document.close()


def test_pdf_needs_a_page() -> None:
    with pytest.raises(ValueError):
        make_pdf(0)


def test_truncated_pdf_looks_like_a_pdf_but_does_not_open() -> None:
    data = truncated_pdf()
    assert data.startswith(b"%PDF-")
    with pytest.raises(pdfium.PdfiumError):
        pdfium.PdfDocument(data)


def test_pixel_bomb_declares_too_many_pixels_in_few_bytes() -> None:
    data = pixel_bomb_png()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width * height > MAX_IMAGE_PIXELS
    assert len(data) < 100_000


def test_pixel_bomb_must_exceed_the_limit() -> None:
    with pytest.raises(ValueError):
        pixel_bomb_png(1000, 1000)


# --- fake model repositories ---------------------------------------------------------------------


def _layout_source(tmp_path: Path) -> Path:
    return write_fake_layout_model(tmp_path / "layout-src")


@pytest.mark.parametrize(
    ("layout", "vlm_below_model_path"),
    [("root", "."), ("subdir", "PaddleOCR-VL-0.9B"), ("hf_cache", "."), ("modelscope", ".")],
)
def test_fake_repo_layouts(tmp_path: Path, layout: str, vlm_below_model_path: str) -> None:
    model_path = write_fake_vlm_config(
        tmp_path / "dest", layout=layout, with_layout_model_dir=_layout_source(tmp_path)
    )
    vlm = model_path / vlm_below_model_path
    config = json.loads((vlm / "config.json").read_text())
    assert config["architectures"] == ["PaddleOCRVLForConditionalGeneration"]
    assert (vlm / "inference.yml").read_text() == inference_yml_text("0.9B")
    assert (model_path / "PP-DocLayoutV2" / "inference.yml").is_file()
    assert (model_path / "PP-DocLayoutV2" / "inference.pdiparams").is_file()


def test_modelscope_layout_path(tmp_path: Path) -> None:
    model_path = write_fake_vlm_config(tmp_path, layout="modelscope", version="1.5")
    assert model_path == tmp_path / "PaddlePaddle" / "PaddleOCR-VL-1.5"
    assert "PaddleOCR-VL-1.5-0.9B" in (model_path / "inference.yml").read_text()


def test_hf_cache_layout_links_snapshot_files_to_blobs(tmp_path: Path) -> None:
    model_path = write_fake_vlm_config(
        tmp_path, layout="hf_cache", with_layout_model_dir=_layout_source(tmp_path)
    )
    entry = tmp_path / "models--PaddlePaddle--PaddleOCR-VL"
    assert model_path == entry / "snapshots" / HF_REVISION
    assert (entry / "refs" / "main").read_text() == HF_REVISION
    for name in ("config.json", "model.safetensors", "PP-DocLayoutV2/inference.yml"):
        link = model_path / name
        assert link.is_symlink() and not Path(link.readlink()).is_absolute()
        assert link.resolve().parent == (entry / "blobs").resolve()


def test_fake_safetensors_header_is_valid(tmp_path: Path) -> None:
    data = (write_fake_vlm_config(tmp_path) / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    start, end = header["placeholder"]["data_offsets"]
    assert len(data) == 8 + length + end and start == 0


def test_fake_config_flat_or_nested(tmp_path: Path) -> None:
    flat = json.loads((write_fake_vlm_config(tmp_path / "a") / "config.json").read_text())
    nested = json.loads(
        (write_fake_vlm_config(tmp_path / "b", nested_text_config=True) / "config.json").read_text()
    )
    assert flat["num_hidden_layers"] == 18 and "text_config" not in flat
    assert nested["text_config"]["num_hidden_layers"] == 18 and "num_hidden_layers" not in nested
    assert flat["vision_config"] == nested["vision_config"]


def test_unknown_layout_and_version_say_what_is_known(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hf_cache"):
        write_fake_vlm_config(tmp_path, layout="flat")
    with pytest.raises(ValueError, match="0.9B"):
        write_fake_vlm_config(tmp_path, version="2.0")
    assert set(LAYOUTS) == {"root", "subdir", "hf_cache", "modelscope"}


def test_prebuilt_copy_keeps_only_the_vlm_files_and_sets_the_release(tmp_path: Path) -> None:
    source = write_fake_vlm_config(
        tmp_path / "src", with_layout_model_dir=_layout_source(tmp_path)
    )
    copy = build_tiny_paddleocr_vl(tmp_path / "copy", version="1.5", prebuilt=source)
    assert (copy / "config.json").read_bytes() == (source / "config.json").read_bytes()
    assert not (copy / "PP-DocLayoutV2").exists()
    assert (copy / "chat_template.jinja").read_text() == chat_template_text("1.5")
    assert "PaddleOCR-VL-1.5-0.9B" in (copy / "inference.yml").read_text()


def test_prebuilt_must_hold_a_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config.json"):
        build_tiny_paddleocr_vl(tmp_path / "copy", prebuilt=tmp_path)


def test_fixture_modules_do_not_import_torch() -> None:
    code = (
        "import sys, tests.fixtures.tiny_vlm, tests.fixtures.documents; "
        "sys.exit('torch' in sys.modules or 'transformers' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

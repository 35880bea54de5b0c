"""The wheel: namespaced import names only, templates as package data, the console script and entry points."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (path,) = out.glob("vllm_paddle_ocr-*.whl")
    return zipfile.ZipFile(path)


def test_only_namespaced_packages_land_in_site_packages(wheel):
    tops = {name.split("/", 1)[0] for name in wheel.namelist()}
    assert tops == {"vllm_paddle_ocr", next(t for t in tops if t.endswith(".dist-info"))}


def test_every_source_module_ships(wheel):
    """A sub-package missing from pyproject's list would install without its modules."""
    names = set(wheel.namelist())
    sources = [*ROOT.joinpath("plugin").rglob("*.py"), *ROOT.joinpath("backends").rglob("*.py")]
    expected = {"vllm_paddle_ocr/" + str(path.relative_to(ROOT)) for path in sources if "__pycache__" not in path.parts}
    assert expected - names == set()


def test_templates_ship_as_package_data(wheel):
    names = wheel.namelist()
    assert "vllm_paddle_ocr/templates/paddleocr_vl_0.9b.jinja" in names
    assert "vllm_paddle_ocr/templates/paddleocr_vl_1.5.jinja" in names


def test_the_web_page_ships_as_package_data(wheel):
    """The page and /docs work offline from an installed wheel: every file they serve is inside it."""
    names = set(wheel.namelist())
    web = ROOT / "backends" / "vllm_paddle_ocr" / "proxy" / "web"
    served = [path for path in web.rglob("*") if path.is_file() and path.suffix != ".sh"]
    assert len(served) > 20
    assert {"vllm_paddle_ocr/" + str(path.relative_to(ROOT)) for path in served} - names == set()


def test_console_script_and_entry_points(wheel):
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    assert "vllm_paddle_ocr = vllm_paddle_ocr.backends.vllm_paddle_ocr.serving.cli:main" in text
    assert "[vllm_paddle_ocr]\nvllm_paddle_ocr = vllm_paddle_ocr.backends.vllm_paddle_ocr.runtime" in text
    assert "[vllm.general_plugins]" in text

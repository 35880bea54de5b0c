"""The torch engine against paddlex on the same random weights (PP-DocLayoutV2 and V3), and the static format.

Random weights give random boxes; what must hold is that both engines give the same ones: same labels,
same reading order, coordinates within a pixel, scores within 1e-3. Then: paddle's static files,
written by paddle itself, read without paddle exactly as paddle's own loader reads them, and the
converted model detecting what paddlex detects with the original weights.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.fixtures.tiny_layout import LABELS, build_random_pp_doclayout, export_static
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.layout_model import LayoutModelError, inspect_model_dir
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.layout.base import LayoutBox, layout_settings
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.layout.conversion import CACHE_SUBDIR, cached_conversion
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.layout.paddle import PaddlexLayoutDetector
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.layout.postprocess import postprocess
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.layout.static_format import read_params, read_program
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.layout.torch import TorchLayoutDetector
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.options import LayoutOptions

pytestmark = pytest.mark.integration

MODELS = ("PP-DocLayoutV2", "PP-DocLayoutV3")
# Portrait, A4 at 150 dpi, landscape, and a small square: each resized differently to 800 x 800.
PAGE_SIZES = ((850, 1100), (1240, 1754), (1100, 700), (640, 640))
OPTIONS = {
    "defaults": None,
    "everything": LayoutOptions(threshold=0.0, nms=False, merge_bboxes_mode="union"),
    "tuned": LayoutOptions(threshold={22: 0.3, 17: 0.2, 3: 0.6}, nms=True, unclip_ratio=(1.1, 1.3), merge_bboxes_mode="large"),
    "small-merge": LayoutOptions(threshold=0.2, merge_bboxes_mode={22: "small", 21: "large"}, shape_mode="rect"),
}


def page(seed: int, size: tuple[int, int]) -> Image.Image:
    """A page of coloured blocks: something for random weights to react to, different per seed."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for _ in range(14):
        x, y = int(rng.integers(0, size[0] - 60)), int(rng.integers(0, size[1] - 40))
        w, h = int(rng.integers(30, size[0] // 2)), int(rng.integers(10, size[1] // 6))
        draw.rectangle([x, y, x + w, y + h], fill=tuple(int(v) for v in rng.integers(0, 220, 3)))
    return image


PAGES = [page(seed, size) for seed, size in enumerate(PAGE_SIZES)]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tiny_layout_dir) -> dict[str, Path]:
    """The session's PP-DocLayoutV2 and a PP-DocLayoutV3 built the same way."""
    v3 = build_random_pp_doclayout(tmp_path_factory.mktemp("v3") / "PP-DocLayoutV3", model_name="PP-DocLayoutV3", seed=1)
    return {"PP-DocLayoutV2": tiny_layout_dir, "PP-DocLayoutV3": v3}


@pytest.fixture(scope="module")
def engines(model_dirs, tmp_path_factory) -> dict[str, tuple[PaddlexLayoutDetector, TorchLayoutDetector]]:
    data = tmp_path_factory.mktemp("data")
    return {
        name: (PaddlexLayoutDetector.from_dir(path), TorchLayoutDetector.from_dir(path, data_dir=data))
        for name, path in model_dirs.items()
    }


def assert_same_boxes(expected: list[LayoutBox], got: list[LayoutBox]) -> None:
    assert [(b.label, b.order) for b in got] == [(b.label, b.order) for b in expected]
    for a, b in zip(expected, got):
        assert max(abs(p - q) for p, q in zip(a.coordinate, b.coordinate)) <= 1, (a, b)
        assert abs(a.score - b.score) <= 1e-3, (a, b)


@pytest.mark.parametrize("options", list(OPTIONS), ids=list(OPTIONS))
@pytest.mark.parametrize("model", MODELS)
def test_torch_engine_finds_what_paddlex_finds(engines, model, options):
    paddlex, torch_engine = engines[model]
    total = 0
    for image in PAGES:
        expected = paddlex.detect(image, OPTIONS[options])
        assert_same_boxes(expected, torch_engine.detect(image, OPTIONS[options]))
        total += len(expected)
    assert total > 0, "the random model must find something on these pages for the comparison to mean anything"


def test_a_batch_gives_what_single_pages_give(engines):
    _, torch_engine = engines["PP-DocLayoutV2"]
    options = [OPTIONS["defaults"], OPTIONS["everything"], OPTIONS["tuned"], OPTIONS["defaults"]]
    together = torch_engine.detect_pages(PAGES, options)
    for image, page_options, boxes in zip(PAGES, options, together):
        assert_same_boxes(torch_engine.detect(image, page_options), boxes)


def blob_masks(count: int, seed: int) -> np.ndarray:
    """Masks of unions of random rectangles: outlines with concave corners, unlike a random model's."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((count, 200, 200), dtype=np.uint8)
    for mask in masks:
        for _ in range(int(rng.integers(1, 4))):
            x, y = int(rng.integers(0, 180)), int(rng.integers(0, 180))
            mask[y : y + int(rng.integers(8, 90)), x : x + int(rng.integers(8, 90))] = 1
    return masks


@pytest.mark.parametrize("masks", ["model", "blobs"])
@pytest.mark.parametrize("shape_mode", ["auto", "poly", "quad", "rect"])
def test_v3_polygons_are_paddlexs_for_the_same_detections(engines, shape_mode, masks):
    """paddlex's own post-processing of the torch model's raw detections gives our boxes and polygons.

    With the model's masks, and with hand-made masks in their place (a random model's masks outline
    little more than rectangles; these have the corners PaddleX's vertex rules are about).
    """
    from paddlex.inference.models.layout_analysis.processors import LayoutAnalysisProcess

    _, torch_engine = engines["PP-DocLayoutV3"]
    process = LayoutAnalysisProcess(labels=list(LABELS), scale_size=[800, 800])
    shaped = 0
    for seed, image in enumerate(PAGES):
        (raw,) = torch_engine.raw([image])
        assert raw.masks is not None and raw.masks.shape[1:] == (200, 200)
        if masks == "blobs":
            raw = type(raw)(raw.rows, blob_masks(len(raw.rows), seed))
        settings = layout_settings(LayoutOptions(threshold=0.05, shape_mode=shape_mode), "PP-DocLayoutV3")
        ours = postprocess(raw, image.size, settings, LABELS)
        (theirs,) = process(
            [{"boxes": raw.rows.copy(), "masks": raw.masks}], [{"ori_img_size": list(image.size)}],
            threshold=settings.threshold, layout_nms=settings.nms, layout_unclip_ratio=settings.unclip_ratio,
            layout_merge_bboxes_mode=settings.merge_bboxes_mode, layout_shape_mode=shape_mode, filter_overlap_boxes=False,
        )
        assert [(b.cls_id, b.score, list(b.coordinate), b.order) for b in ours] == [
            (t["cls_id"], t["score"], t["coordinate"], t["order"]) for t in theirs
        ]
        for box, their in zip(ours, theirs):
            if shape_mode == "rect":
                assert box.polygon_points is None and "polygon_points" not in their
                continue
            expected = np.asarray(their["polygon_points"], dtype=np.float64).reshape(-1, 2)
            np.testing.assert_allclose(np.array(box.polygon_points), expected)
            shaped += len(expected) != 4
    if masks == "blobs" and shape_mode in ("poly", "auto"):
        assert shaped > 0, "some outlines must be more than four corners for the comparison to mean anything"


# ---------------------------------------------------------------- paddle's static format


@pytest.fixture(scope="module")
def static_dirs(model_dirs, tmp_path_factory) -> dict[str, Path]:
    """The same weights saved by paddle.jit.save (PIR's inference.json + inference.pdiparams) with their config.json."""
    out = {}
    for name, source in model_dirs.items():
        target = export_static(source, tmp_path_factory.mktemp("static") / name)
        shutil.copy(source / "config.json", target / "config.json")
        out[name] = target
    return out


def test_the_params_file_reads_as_paddles_loader_reads_it(static_dirs):
    import paddle

    directory = static_dirs["PP-DocLayoutV2"]
    program = read_program(directory / "inference.json")
    ours = read_params(directory / "inference.pdiparams", program)
    loaded = paddle.jit.load(str(directory / "inference"))
    # jit.load names each tensor after its program name with a suffix of its own.
    theirs = {value.name.rsplit("_", 1)[0]: value.numpy() for value in loaded.state_dict().values()}
    assert set(ours) == set(program.params) == set(theirs)
    for name, value in theirs.items():
        np.testing.assert_array_equal(ours[name], value)


LEGACY_EXPORT = """
import sys, numpy as np, paddle
class Net(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 4, 3)
        self.norm = paddle.nn.BatchNorm2D(4)
        self.head = paddle.nn.Linear(4, 5)
        self.scale = self.create_parameter([5])
    def forward(self, x):
        return self.head(self.norm(self.conv(x)).mean(axis=[2, 3])) * self.scale
paddle.seed(3)
net = Net()
net.eval()
spec = [paddle.static.InputSpec([None, 3, 8, 8], "float32", "x")]
paddle.jit.save(paddle.jit.to_static(net, input_spec=spec), sys.argv[1] + "/inference")
paddle.enable_static()
exe = paddle.static.Executor(paddle.CPUPlace())
program, _, _ = paddle.static.load_inference_model(sys.argv[1] + "/inference", exe)
scope = paddle.static.global_scope()
names = [v.name for v in program.list_vars() if v.persistable and v.name not in ("feed", "fetch")]
np.savez(sys.argv[1] + "/loaded.npz", **{n: np.array(scope.find_var(n).get_tensor()) for n in names})
"""


def test_the_older_pdmodel_format_reads_as_paddles_loader_reads_it(tmp_path, cpu_env):
    """paddle writes inference.pdmodel with its older IR; paddle's static loader is the reference."""
    env = {**cpu_env, "FLAGS_enable_pir_api": "0"}
    script = tmp_path / "export_legacy.py"  # paddle's dy2static reads the model's source from a file
    script.write_text(LEGACY_EXPORT)
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    program = read_program(tmp_path / "inference.pdmodel")
    ours = read_params(tmp_path / "inference.pdiparams", program)
    theirs = dict(np.load(tmp_path / "loaded.npz"))
    assert set(ours) == set(theirs) and len(ours) == 9  # conv 2, batch norm 4, linear 2, the bare scale 1
    for name, value in theirs.items():
        np.testing.assert_array_equal(ours[name], value)
    kinds = {op.type for op in program.ops}
    assert {"conv2d", "batch_norm", "matmul_v2"} <= kinds


@pytest.mark.parametrize("model", MODELS)
def test_the_converted_static_model_finds_what_paddlex_finds(static_dirs, engines, model, tmp_path):
    spec = inspect_model_dir(static_dirs[model])
    assert (spec.engine, spec.torch_weights) == ("paddle_static", "static")
    converted = TorchLayoutDetector.from_dir(static_dirs[model], data_dir=tmp_path)
    paddlex, _ = engines[model]
    for image in PAGES[:3]:
        for options in (OPTIONS["defaults"], OPTIONS["everything"]):
            assert_same_boxes(paddlex.detect(image, options), converted.detect(image, options))
    (cached,) = (tmp_path / CACHE_SUBDIR).iterdir()
    source = json.loads((cached / "source.json").read_text())
    assert source["program"] == "inference.json" and source["paired"] > 100


def test_the_conversion_is_cached_by_the_source_files(static_dirs, tmp_path):
    directory = tmp_path / "PP-DocLayoutV2"
    shutil.copytree(static_dirs["PP-DocLayoutV2"], directory)
    first = cached_conversion(inspect_model_dir(directory), tmp_path / "data")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    again = cached_conversion(inspect_model_dir(directory), tmp_path / "data")
    assert again == first and (again / "model.safetensors").stat().st_mtime_ns == stamp
    # Other weights are another model: a new conversion beside the first.
    params = directory / "inference.pdiparams"
    data = bytearray(params.read_bytes())
    data[-4:] = np.float32(0.5).tobytes()
    params.write_bytes(bytes(data))
    changed = cached_conversion(inspect_model_dir(directory), tmp_path / "data")
    assert changed != first and len(list((tmp_path / "data" / CACHE_SUBDIR).iterdir())) == 2


def test_a_config_that_does_not_fit_the_weights_is_refused(static_dirs, tmp_path):
    directory = tmp_path / "PP-DocLayoutV2"
    shutil.copytree(static_dirs["PP-DocLayoutV2"], directory)
    config = json.loads((directory / "config.json").read_text())
    config["encoder_ffn_dim"] = config["encoder_ffn_dim"] * 2
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(LayoutModelError, match="cannot convert .* does not match transformers'"):
        TorchLayoutDetector.from_dir(directory, data_dir=tmp_path / "data")
    assert not list((tmp_path / "data" / CACHE_SUBDIR).iterdir())  # nothing half-written left behind

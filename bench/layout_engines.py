"""PP-DocLayoutV2/V3 through paddlex and through the torch engine, on the same weights, side by side.

The published shapes with random weights (tests/fixtures/tiny_layout.py builds them with paddlex's own
class; without paddle, transformers' random initialisation). For each batch size the same pages go
through paddle on CPU, torch on CPU and, where a GPU is present, torch on CUDA in half precision,
interleaved round by round so a noisy machine slows all alike. Printed: milliseconds per page (and
the ratio to paddle), peak GPU memory on CUDA, and how far torch's boxes are from paddlex's.

paddlex runs these weights in its dygraph engine (paddle_dynamic), which holds about 1.75 GB per page
of a batch on CPU: batch 8 would need 15 GB and 16 some 29 GB, so paddle stops at --paddle-batches
(default 1 and 4) and larger torch batches are compared with paddle's batch 1.

With --cpu-memory, also the resident-memory peak of one float32 forward pass above the loaded model
at batch 1 and 4, in a fresh process each (the figures memory_needs.LAYOUT_ACTIVATION_MIB holds).

    .venv/bin/python bench/layout_engines.py
    .venv/bin/python bench/layout_engines.py --model PP-DocLayoutV3 --batches 1,4 --rounds 2
    python bench/layout_engines.py --model-dir /models/PP-DocLayoutV2 --engines torch-cuda   # a GPU box, no paddle
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAGE_SIZE = (1700, 2200)  # a letter page at 200 dpi


def pages(count: int, seed: int = 0) -> list[np.ndarray]:
    """Pages of text-like bands, a title and a boxed table, different per seed (RGB arrays)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        image = Image.new("RGB", PAGE_SIZE, "white")
        draw = ImageDraw.Draw(image)
        width, height = PAGE_SIZE
        draw.rectangle([width * 0.2, 120, width * 0.8, 200], fill="black")
        top = 300
        while top < height * 0.65:
            line = int(rng.integers(22, 40))
            draw.rectangle([150, top, width - 150 - int(rng.integers(0, 400)), top + line], fill=(40, 40, 40))
            top += line + int(rng.integers(14, 60))
        draw.rectangle([150, int(height * 0.7), width - 150, int(height * 0.92)], outline="black", width=6)
        out.append(np.asarray(image))
    return out


def build_model(model_name: str, directory: Path) -> Path:
    """The published shapes with random weights: paddlex's class when paddle is here, else transformers'."""
    from tests.fixtures import tiny_layout

    if importlib.util.find_spec("paddle") and importlib.util.find_spec("paddlex"):
        return tiny_layout.build_random_pp_doclayout(directory / model_name, model_name=model_name, size="full")
    import torch

    from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.layout.conversion import transformers_classes

    torch.manual_seed(0)
    config_class, model_class = transformers_classes(model_name)
    config = tiny_layout.layout_config("full", model_name=model_name)
    model_class(config_class.from_dict(config)).save_pretrained(str(directory / model_name))
    return directory / model_name


class Engine:
    """One engine under test: a name, a detector and how to run a batch."""

    def __init__(self, name: str, detector: Any, cuda: bool = False) -> None:
        self.name, self.detector, self.cuda = name, detector, cuda
        self.times: dict[int, list[float]] = {}
        self.peak_bytes = 0
        self.boxes: dict[int, list[Any]] = {}

    def run(self, batch: list[np.ndarray], options: Any) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        start = time.perf_counter()
        if hasattr(self.detector, "detect_pages"):
            found = self.detector.detect_pages(batch, [options] * len(batch))
        else:
            found = self.detector.detect_batch(batch, options)
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated())
        elapsed = time.perf_counter() - start
        for index, boxes in enumerate(found):
            self.boxes.setdefault(index, boxes)
        return elapsed


def load_engines(model_dir: Path, wanted: list[str], data_dir: Path) -> list[Engine]:
    engines = []
    for name in wanted:
        if name == "paddle":
            if not importlib.util.find_spec("paddlex"):
                print("paddle: paddlex is not installed here; skipped")
                continue
            from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.layout.paddle import PaddlexLayoutDetector

            engines.append(Engine("paddle-cpu", PaddlexLayoutDetector.from_dir(model_dir)))
        elif name in ("torch", "torch-cpu"):
            from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.layout.torch import TorchLayoutDetector

            engines.append(Engine("torch-cpu", TorchLayoutDetector.from_dir(model_dir, data_dir=data_dir)))
        elif name == "torch-cuda":
            import torch

            if not torch.cuda.is_available():
                print("torch-cuda: no CUDA device here; skipped")
                continue
            from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.layout.torch import TorchLayoutDetector

            engines.append(Engine("torch-cuda", TorchLayoutDetector.from_dir(model_dir, device="cuda", data_dir=data_dir), cuda=True))
    return engines


def _close(x: Any, y: Any) -> bool:
    return x.label == y.label and max(abs(p - q) for p, q in zip(x.coordinate, y.coordinate)) <= 1 and abs(x.score - y.score) <= 1e-3


def agreement(reference: list[list[Any]], other: list[list[Any]]) -> str:
    """Pages with the same boxes (label, coordinates within 1 px, score within 1e-3), and with the same reading order too.

    With random weights the reading-order votes of two boxes can sit within float noise of each other,
    so paddle and torch may read such a pair in either order; the boxes themselves are the model's.
    """
    same_boxes = same_order = 0
    coord = score = 0.0
    for a, b in zip(reference, other):
        by_position = lambda boxes: sorted(boxes, key=lambda box: (box.coordinate, box.label))  # noqa: E731
        pairs = list(zip(by_position(a), by_position(b)))
        same_boxes += len(a) == len(b) and all(_close(x, y) for x, y in pairs)
        same_order += len(a) == len(b) and all(_close(x, y) and x.order == y.order for x, y in zip(a, b))
        for x, y in pairs:
            coord = max(coord, max(abs(p - q) for p, q in zip(x.coordinate, y.coordinate)))
            score = max(score, abs(x.score - y.score))
    return (
        f"{same_boxes}/{len(reference)} pages with the same boxes, {same_order}/{len(reference)} also in the same "
        f"reading order; largest coordinate gap {coord:g} px, score gap {score:.2g}"
    )


def cpu_memory(model_dir: Path, model_name: str) -> None:
    """Resident-memory peak of a float32 forward pass above the loaded model, batch 1 and 4, fresh process each."""
    script = f"""
import sys, numpy as np
sys.path.insert(0, {str(ROOT)!r})
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.layout.torch import TorchLayoutDetector
detector = TorchLayoutDetector.from_dir({str(model_dir)!r})
def high_water():  # this process's own peak (getrusage's would include the parent's from before exec)
    line = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:'))
    return int(line.split()[1]) * 1024
base = int(open('/proc/self/statm').read().split()[1]) * 4096
detector.raw([np.full((1100, 850, 3), 255, np.uint8)] * int(sys.argv[1]))
print((high_water() - base) >> 20)
"""
    peaks = {}
    for batch in (1, 4):
        done = subprocess.run([sys.executable, "-c", script, str(batch)], capture_output=True, text=True, timeout=1800)
        peaks[batch] = int(done.stdout.strip().splitlines()[-1])
    per_page = (peaks[4] - peaks[1]) / 3
    print(f"{model_name} float32 CPU forward, resident peak above the model: batch 1 {peaks[1]} MiB, batch 4 {peaks[4]} MiB "
          f"-> {peaks[1] - per_page:.0f} MiB per pass + {per_page:.0f} MiB per page")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="PP-DocLayoutV2", choices=["PP-DocLayoutV2", "PP-DocLayoutV3"])
    parser.add_argument("--model-dir", type=Path, help="an existing layout model directory (default: build random weights)")
    parser.add_argument("--batches", default="1,8,16", help="batch sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=1, help="timed passes per batch size and engine (after one warm-up)")
    parser.add_argument("--engines", default="paddle,torch-cpu,torch-cuda")
    parser.add_argument("--paddle-batches", default="1,4", help="the batch sizes paddlex runs (its memory grows ~1.75 GB a page)")
    parser.add_argument("--cpu-memory", action="store_true", help="also measure the CPU forward's memory peak")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    paddle_batches = {int(b) for b in args.paddle_batches.split(",")}
    import torch

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        model_dir = args.model_dir or build_model(args.model, work)
        engines = load_engines(model_dir, args.engines.split(","), work / "data")
        print(f"{args.model} from {model_dir}; torch {torch.__version__} with {torch.get_num_threads()} threads; "
              f"pages {PAGE_SIZE[0]}x{PAGE_SIZE[1]}")
        work_pages = pages(max(batches))
        for engine in engines:  # warm-up: first-call allocations and lazy imports
            engine.run(work_pages[:1], None)
            engine.boxes.clear()
        for batch in sorted(set(batches) | (paddle_batches if any(e.name == "paddle-cpu" for e in engines) else set())):
            for _ in range(args.rounds):
                for engine in engines:  # interleaved: a noisy moment slows every engine alike
                    runs = batch in paddle_batches if engine.name == "paddle-cpu" else batch in batches
                    if runs:
                        engine.times.setdefault(batch, []).append(engine.run(work_pages[:batch], None) / batch)
        reference = engines[0] if engines else None
        results: dict[str, dict[int, float]] = {}
        for batch in sorted({b for engine in engines for b in engine.times}):
            row = []
            for engine in engines:
                if batch not in engine.times:
                    continue
                ms = statistics.median(engine.times[batch]) * 1000
                results.setdefault(engine.name, {})[batch] = round(ms, 1)
                ratio = ""
                if engine is not reference and reference is not None:
                    base = batch if batch in reference.times else 1
                    ratio = f" ({ms / (statistics.median(reference.times[base]) * 1000):.2f}x {reference.name} at batch {base})"
                row.append(f"{engine.name} {ms:7.0f} ms/page{ratio}")
            print(f"batch {batch:>2}: " + " | ".join(row))
        for engine in engines:
            if engine.cuda:
                print(f"{engine.name}: peak GPU memory allocated {engine.peak_bytes / 2**20:.0f} MiB (largest batch {max(batches)})")
        if reference is not None:
            common = sorted(set.intersection(*(set(engine.boxes) for engine in engines)))
            for engine in engines[1:]:
                print(f"{engine.name} vs {reference.name}: "
                      f"{agreement([reference.boxes[i] for i in common], [engine.boxes[i] for i in common])}")
        print(json.dumps({"model": args.model, "ms_per_page": results}))
        if args.cpu_memory:
            cpu_memory(model_dir, args.model)


if __name__ == "__main__":
    main()

"""The torch layout engine: PP-DocLayoutV2/V3 in transformers' classes, with PaddleX's pre- and post-processing.

Pages are resized as PaddleX resizes them (OpenCV bicubic to 800 x 800, scaled to [0, 1]), run through
the network in one forward pass per batch (half precision on a GPU), turned into the static model's
raw detections (`heads`) and post-processed per page with that page's request settings
(`postprocess`). A directory in paddle's static format is converted once (`conversion`) into the data
directory; no paddle is needed.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ...planning.layout_model import LayoutModelError, LayoutModelSpec, inspect_model_dir, normalise_device
from ...recipe import LAYOUT_INPUT_SIZE, PP_DOCLAYOUT_V2_LABELS
from ..options import LayoutOptions
from .base import ImageInput, LayoutBox, layout_settings, rgb_array
from .conversion import cached_conversion, complete_config, transformers_classes
from .heads import raw_detections
from .postprocess import RawDetections, postprocess

log = logging.getLogger("vllm_paddle_ocr.layout")


def model_input(pages: Sequence[np.ndarray]) -> np.ndarray:
    """[B, 3, 800, 800] float32 from RGB uint8 pages: OpenCV bicubic resize, then x / 255 (PaddleX's steps)."""
    import cv2

    height, width = LAYOUT_INPUT_SIZE
    batch = np.empty((len(pages), 3, height, width), dtype=np.float32)
    for index, page in enumerate(pages):
        resized = page if page.shape[:2] == (height, width) else cv2.resize(page, (width, height), interpolation=cv2.INTER_CUBIC)
        batch[index] = (resized.astype(np.float32) * np.float32(1.0 / 255.0)).transpose(2, 0, 1)
    return batch


class TorchLayoutDetector:
    """PP-DocLayoutV2/V3 in torch, loaded once and shared; one forward pass at a time."""

    engine = "torch"

    def __init__(self, model: Any, spec: LayoutModelSpec, labels: Sequence[str], *, device: str, dtype: Any) -> None:
        self._model = model
        self.spec = spec
        self.labels: tuple[str, ...] = tuple(labels)
        self.device = device
        self.dtype = dtype
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self.spec.model_name

    @classmethod
    def from_dir(
        cls,
        model_dir: Union[str, Path],
        *,
        device: str = "cpu",
        model_name: Optional[str] = None,
        data_dir: Optional[Path] = None,
    ) -> "TorchLayoutDetector":
        """Load a layout model directory (safetensors, or paddle's static format converted under ``data_dir``)."""
        import torch

        spec = inspect_model_dir(model_dir, model_name=model_name)
        device = normalise_device(device)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise LayoutModelError(
                f"--layout-device {device}: this torch ({torch.__version__}) sees no CUDA device; "
                "pass --layout-device cpu, or install vLLM's CUDA build"
            )
        if spec.torch_weights is None:
            raise LayoutModelError(
                f"{spec.model_dir} has neither model.safetensors + a transformers config.json nor paddle's static "
                "format; the torch engine cannot load it (--layout-engine paddle can, with paddlex)"
            )
        if spec.torch_weights == "static":
            if data_dir is None:
                raise LayoutModelError(f"{spec.model_dir} is in paddle's static format: converting it needs a --data-dir")
            weights_dir = cached_conversion(spec, Path(data_dir).expanduser())
        else:
            weights_dir = spec.model_dir
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        config_class, model_class = transformers_classes(spec.model_name)
        try:
            raw = json.loads((weights_dir / "config.json").read_text(encoding="utf-8"))
            config = config_class.from_dict(complete_config(raw, spec.model_name))
            model = model_class.from_pretrained(str(weights_dir), config=config, dtype=dtype)
            model = model.to(device).eval()
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:600]
            raise LayoutModelError(
                f"transformers could not load {spec.model_name} from {weights_dir} on {device} ({reason}); "
                "put an intact copy there, or serve it with --layout-engine paddle"
            ) from exc
        id2label = getattr(config, "id2label", None) or {}
        labels = [id2label[i] for i in sorted(id2label)] if len(id2label) == model.config.num_labels else list(PP_DOCLAYOUT_V2_LABELS)
        log.info("layout model %s loaded with transformers on %s (%s)", spec.model_name, device, str(dtype).removeprefix("torch."))
        return cls(model, spec, labels, device=device, dtype=dtype)

    def raw(self, images: Sequence[ImageInput]) -> list[RawDetections]:
        """Each page's raw detections (before PaddleX's post-processing), from one forward pass."""
        import torch

        if not images:
            return []
        pages = [rgb_array(image) for image in images]
        sizes = [(page.shape[1], page.shape[0]) for page in pages]
        batch = model_input(pages)
        with self._lock, torch.inference_mode():
            pixels = torch.from_numpy(batch).to(self.device, dtype=self.dtype)
            return raw_detections(self._model, self.model_name, pixels, sizes)

    def detect_pages(self, images: Sequence[ImageInput], options: Sequence[Optional[LayoutOptions]]) -> list[list[LayoutBox]]:
        """Boxes on several pages from one forward pass, each page post-processed with its own options."""
        if len(images) != len(options):
            raise ValueError(f"{len(images)} pages but {len(options)} option sets")
        results = []
        for image, raw, page_options in zip(images, self.raw(images), options):
            height, width = rgb_shape(image)
            settings = layout_settings(page_options, self.model_name)
            results.append(postprocess(raw, (width, height), settings, self.labels, input_size=LAYOUT_INPUT_SIZE))
        return results

    def detect(self, image: ImageInput, options: Optional[LayoutOptions] = None, *, owner: Hashable = None) -> list[LayoutBox]:
        """Boxes on one page, in reading order."""
        return self.detect_pages([image], [options])[0]

    def detect_batch(self, images: Sequence[ImageInput], options: Optional[LayoutOptions] = None) -> list[list[LayoutBox]]:
        """Boxes on several pages with the same options."""
        return self.detect_pages(images, [options] * len(images))

    def close(self) -> None:
        """Let go of the model (and its GPU memory)."""
        self._model = None


def rgb_shape(image: ImageInput) -> tuple[int, int]:
    """(height, width) of a PIL image or an array."""
    if hasattr(image, "size") and hasattr(image, "mode"):
        width, height = image.size
        return height, width
    shape = np.shape(image)
    return shape[0], shape[1]

"""The layout detector the proxy serves with: the planned engine on the planned device, behind the page batcher."""

from __future__ import annotations

from typing import Optional

from vllm_paddle_ocr.plugin.records import ProxySettings

from ...planning.layout_model import plan_layout
from .base import LayoutDetector
from .batching import BatchingDetector


def load_detector(settings: ProxySettings) -> Optional[LayoutDetector]:
    """Load the layout model the settings name (None when there is none); a LayoutModelError says why not.

    The plan decided engine, device and batch size; settings made without one (no engine named) get
    the same choice made here, on the CPU.
    """
    if settings.layout_dir is None:
        return None
    engine, device, batch_size = settings.layout_engine, settings.layout_device, settings.layout_batch_size
    if engine is None:
        choice = plan_layout(settings.layout_dir, settings.layout_model_name, device=device, gpu_present=False)
        assert choice is not None
        engine, device, batch_size = choice.engine, choice.device, choice.batch_size
    if engine == "torch":
        from .torch import TorchLayoutDetector

        inner = TorchLayoutDetector.from_dir(
            settings.layout_dir, device=device, model_name=settings.layout_model_name, data_dir=settings.data_dir
        )
    else:
        from .paddle import PaddlexLayoutDetector

        inner = PaddlexLayoutDetector.from_dir(settings.layout_dir, device=device, model_name=settings.layout_model_name)
    return BatchingDetector(inner, batch_size=max(1, batch_size))

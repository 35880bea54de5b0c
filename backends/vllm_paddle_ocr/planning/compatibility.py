"""Whether the installed vLLM can run PaddleOCR-VL, and the out-of-tree registration for old releases."""

from __future__ import annotations

import logging

from vllm_paddle_ocr.plugin.records import Compatibility, EngineInfo, ModelRepo

from ..recipe import ARCHITECTURE, NATIVE_SINCE
from .engine import detect_engine

log = logging.getLogger(__name__)


def check_compatibility(model: ModelRepo, engine: EngineInfo) -> Compatibility:
    """Native from vLLM 0.11.1; older releases need an installed out-of-tree model class."""
    if model.architecture != ARCHITECTURE:
        return Compatibility(supported=False, reason=f"{model.architecture} is not PaddleOCR-VL")
    if not engine.installed:
        return Compatibility(
            supported=True,
            reason=f"vLLM is not installed here; the serving host needs vllm>={NATIVE_SINCE}",
        )
    if engine.native_paddleocr_vl:
        return Compatibility(supported=True, reason=f"{engine.distribution} {engine.version} serves {ARCHITECTURE} natively")
    if engine.out_of_tree_model:
        return Compatibility(
            supported=True,
            reason=f"vLLM {engine.version} predates native support; registering {engine.out_of_tree_model}",
            out_of_tree_model=engine.out_of_tree_model,
        )
    return Compatibility(
        supported=False,
        reason=(
            f"vLLM {engine.version} cannot serve {ARCHITECTURE}: upgrade to vllm>={NATIVE_SINCE} "
            "(pip install 'vllm>=0.11.1'), or install paddlex, which ships a model class for older vLLM"
        ),
    )


def register_out_of_tree_model() -> None:
    """vLLM `general_plugins` entry: on vLLM older than 0.11.1, register an installed model class."""
    engine = detect_engine()
    if engine.native_paddleocr_vl or not engine.out_of_tree_model:
        return
    from vllm import ModelRegistry  # imported only inside vLLM's own processes

    if ARCHITECTURE in ModelRegistry.get_supported_archs():
        return
    ModelRegistry.register_model(ARCHITECTURE, engine.out_of_tree_model)
    log.info("registered %s from %s for vLLM %s", ARCHITECTURE, engine.out_of_tree_model, engine.version)

"""The models this runtime ships catalog entries for, described once and rendered for every control plane.

A `CatalogEntry` is neutral: it knows the model (sources, sizes, licence) and the launch parameters, not
GPUStack's schema; `manifests.py` renders it as a GPUStack 0.7 model set, a 2.x model set, or both.
The `--gpu-memory-utilization=X` in the parameters is the same budget `vllm_paddle_ocr plan <model>
--gpu-total <card>` prints for the published model, planned for `PLANNED_CARD_BYTES`.
"""

from __future__ import annotations

import functools
from datetime import date

from vllm_paddle_ocr.plugin.records import CatalogEntry, ModelSources

from ..planning.layout_model import GPU_BATCH_SIZE
from ..planning.memory_needs import Checkpoint, ModelMemoryNeeds, layout_model_bytes, memory_needs
from ..planning.vram import VramOptions, gpustack_parameter, plan_vram
from ..recipe import ARCHITECTURE, RECOMMENDED_FLAGS
from ..sizes import GiB

# The card the catalog's budget is planned for: a 24 GiB card (L4, A10, RTX 4090/3090) is the smallest
# common data-centre card; on a larger one the fraction is lower (plan it with `vllm_paddle_ocr plan`).
PLANNED_CARD_BYTES = 24 * GiB
RUNTIME_NAME = "vllm_paddle_ocr"


def budget_note(entry: CatalogEntry) -> str:
    """Says which card the budget in an entry's backend_parameters is planned for."""
    if entry.planned_card_bytes is None:
        return "no budget planned"
    return f"budget planned for a {card_size(entry.planned_card_bytes)} card"


def card_size(card_bytes: int) -> str:
    """A card size the way people name it: "24 GiB"."""
    return f"{card_bytes / GiB:g} GiB"


# --- the published models -------------------------------------------------------------------------

# The published checkpoint's config.json (flat, as PaddlePaddle/PaddleOCR-VL ships it): the text model
# (ERNIE-4.5-0.3B) and the vision encoder. The 1.5 release keeps the architecture and sizes.
PUBLISHED_TEXT_CONFIG = {
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 18,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000,
    "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"},
    "use_bias": False,
    "vocab_size": 103424,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
PUBLISHED_VISION_CONFIG = {
    "model_type": "paddleocr_vl",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 384,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-06,
}
# preprocessor_config.json of the published repositories.
PUBLISHED_PREPROCESSOR_CONFIG = {"min_pixels": 147384, "max_pixels": 2822400, "patch_size": 14, "merge_size": 2}
# model.safetensors of the published repositories: about 1.9 GB of bf16 weights.
PUBLISHED_WEIGHT_BYTES = 1_900_000_000

# Environment for the process: paddlex (layout detection in the proxy) probes its model hosts at import
# unless told not to; the model files come from the control plane, so skip the probe.
DEFAULT_ENV = {"PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK": "True"}


PUBLISHED_CONFIG = {
    "architectures": [ARCHITECTURE],
    "model_type": "paddleocr_vl",
    "torch_dtype": "bfloat16",
    **PUBLISHED_TEXT_CONFIG,
    "vision_config": PUBLISHED_VISION_CONFIG,
}


def published_needs() -> ModelMemoryNeeds:
    """What the published model needs as the launch plan serves it, from its config and weight size."""
    parameters = PUBLISHED_WEIGHT_BYTES // 2  # bf16
    checkpoint = Checkpoint(parameters, PUBLISHED_WEIGHT_BYTES, parameters, 0)
    return memory_needs(PUBLISHED_CONFIG, PUBLISHED_PREPROCESSOR_CONFIG, checkpoint)


# Parameters of the published layout models (PP-DocLayoutV2 with PaddleOCR-VL, V3 with 1.5 and 1.6).
PUBLISHED_LAYOUT_PARAMETERS = {"PP-DocLayoutV2": 53_556_083, "PP-DocLayoutV3": 33_175_165}


def published_layout_bytes() -> int:
    """The larger of the published layout models on the GPU at its default batch (the torch engine's default place)."""
    return max(
        layout_model_bytes(name, parameters, GPU_BATCH_SIZE[name]) for name, parameters in PUBLISHED_LAYOUT_PARAMETERS.items()
    )


@functools.lru_cache(maxsize=None)
def planned_fraction(card_bytes: int = PLANNED_CARD_BYTES) -> float:
    """The --gpu-memory-utilization the runtime plans for the published model, layout model included, on a card of this size."""
    options = VramOptions(gpu_total_bytes=card_bytes, layout_model_bytes=published_layout_bytes())
    plan = plan_vram(published_needs(), None, options)
    if plan.gpu_memory_utilization is None:
        raise ValueError(f"the VRAM budget planned no fraction for a {card_size(card_bytes)} card: {plan.reason}")
    return plan.gpu_memory_utilization


def budget_parameter(card_bytes: int = PLANNED_CARD_BYTES) -> str:
    """The budget as GPUStack's scheduler reads it: one `--gpu-memory-utilization=X` item."""
    return gpustack_parameter(planned_fraction(card_bytes))


def recommended_parameters() -> list[str]:
    """vLLM's recipe flags for PaddleOCR-VL in `--flag=value` form (one list item each)."""
    return [f"{flag}={values[0]}" if values else flag for flag, values in RECOMMENDED_FLAGS]


def backend_parameters(card_bytes: int = PLANNED_CARD_BYTES) -> list[str]:
    """What a catalog entry passes: the budget, then the recipe flags.

    No --trust-remote-code: the runtime adds it exactly where the downloaded repo carries remote code
    (the published repos do) and leaves it out where it would break the start.
    """
    return [budget_parameter(card_bytes), *recommended_parameters()]


_DESCRIPTION = (
    "{name} on vLLM through vllm_paddle_ocr: a budgeted share of the GPU ({budget}), the OpenAI API "
    "and PaddleX's /layout-parsing on the same port."
)


def builtin_catalog_entries() -> list[CatalogEntry]:
    """PaddleOCR-VL (0.9B) and PaddleOCR-VL-1.5, from Hugging Face and ModelScope, on this runtime."""
    parameters = backend_parameters()
    budget = f"{budget_parameter()} on a {card_size(PLANNED_CARD_BYTES)} card"
    common = dict(
        home="https://www.paddleocr.ai",
        icon="/static/catalog_icons/baidu.jpeg",
        categories=["llm"],
        capabilities=["vision"],
        size=0.9,
        licenses=["apache-2.0"],
        quantization="BF16",
        backend_parameters=parameters,
        env=dict(DEFAULT_ENV),
        planned_card_bytes=PLANNED_CARD_BYTES,
        runtime=RUNTIME_NAME,
    )
    return [
        CatalogEntry(
            name="PaddleOCR-VL",
            description=_DESCRIPTION.format(name="PaddleOCR-VL-0.9B (document parsing in 109 languages)", budget=budget),
            release_date=date(2025, 10, 16),
            model_version="0.9B",
            sources=ModelSources(
                huggingface_repo_id="PaddlePaddle/PaddleOCR-VL", model_scope_model_id="PaddlePaddle/PaddleOCR-VL"
            ),
            **common,
        ),
        CatalogEntry(
            name="PaddleOCR-VL-1.5",
            description=_DESCRIPTION.format(name="PaddleOCR-VL-1.5 (with PP-DocLayoutV3 layout)", budget=budget),
            release_date=date(2026, 1, 29),
            model_version="1.5",
            sources=ModelSources(
                huggingface_repo_id="PaddlePaddle/PaddleOCR-VL-1.5", model_scope_model_id="PaddlePaddle/PaddleOCR-VL-1.5"
            ),
            **common,
        ),
    ]

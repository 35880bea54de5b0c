"""The models this runtime ships catalog entries for, described once and rendered for every control plane.

A `CatalogEntry` is neutral: it knows the model (sources, sizes, licence) and the launch parameters, not
GPUStack's schema; `manifests.py` renders it as a GPUStack 0.7 model set, a 2.x model set, or both.
Its budget comes in the two forms control planes book, both what `vllm_paddle_ocr plan` prints for the
published model at the default concurrency: the claim in bytes (`plan --gpustack-claim`), which holds on
any card because the runtime sizes vLLM inside it where it lands, and the fraction of a
`PLANNED_CARD_BYTES` card (`plan --gpu-total 24GiB`) for control planes that book a share of the card.
"""

from __future__ import annotations

import functools
from datetime import date
from typing import Any

from vllm_paddle_ocr.plugin.records import CatalogEntry, ModelSources

from ..planning.layout_model import GPU_BATCH_SIZE
from ..planning.memory_needs import Checkpoint, ModelMemoryNeeds, layout_model_bytes, memory_needs
from ..planning.vram import DEFAULT_CONCURRENCY, VRAM_CLAIM_ENV, VramOptions, gpustack_claim, gpustack_parameter, plan_vram
from ..recipe import ARCHITECTURE, DEFAULT_LAYOUT_MODEL, RECOMMENDED_FLAGS
from ..sizes import GiB, format_bytes

# The card the fraction is planned for: a 24 GiB card (L4, A10, RTX 4090/3090) is the smallest common
# data-centre card; on a larger one the fraction is lower (plan it with `vllm_paddle_ocr plan`).
PLANNED_CARD_BYTES = 24 * GiB
RUNTIME_NAME = "vllm_paddle_ocr"


def budget_note(entry: CatalogEntry) -> str:
    """Says which card the fraction of an entry's share parameters is planned for."""
    if entry.gpu_memory_utilization is None or entry.planned_card_bytes is None:
        return "no budget planned"
    return f"budget planned for a {card_size(entry.planned_card_bytes)} card"


def share_parameters(entry: CatalogEntry) -> list[str]:
    """The parameters for a control plane that books a share of the card: the fraction first, then the entry's."""
    if entry.gpu_memory_utilization is None:
        return list(entry.backend_parameters)
    return [gpustack_parameter(entry.gpu_memory_utilization), *entry.backend_parameters]


def claim_env(entry: CatalogEntry) -> dict[str, str]:
    """The environment for a control plane that books bytes: the entry's, with the claim GPUStack 2.x reads."""
    if entry.vram_claim_bytes is None:
        return dict(entry.env)
    return {**entry.env, VRAM_CLAIM_ENV: str(entry.vram_claim_bytes)}


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


def published_layout_bytes(version: str = "0.9B") -> int:
    """A release's layout model on the GPU at its default batch (where the torch engine runs it by default)."""
    name = DEFAULT_LAYOUT_MODEL[version]
    return layout_model_bytes(name, PUBLISHED_LAYOUT_PARAMETERS[name], GPU_BATCH_SIZE[name])


@functools.lru_cache(maxsize=None)
def planned_claim(version: str = "0.9B") -> int:
    """The bytes one instance of a release, layout model included, takes on its GPU at the default concurrency, on any card."""
    return gpustack_claim(published_needs(), VramOptions(layout_model_bytes=published_layout_bytes(version)))


@functools.lru_cache(maxsize=None)
def planned_fraction(card_bytes: int = PLANNED_CARD_BYTES, version: str = "0.9B") -> float:
    """The --gpu-memory-utilization the runtime plans for a release, layout model included, on a card of this size."""
    options = VramOptions(gpu_total_bytes=card_bytes, layout_model_bytes=published_layout_bytes(version))
    plan = plan_vram(published_needs(), None, options)
    if plan.gpu_memory_utilization is None:
        raise ValueError(f"the VRAM budget planned no fraction for a {card_size(card_bytes)} card: {plan.reason}")
    return plan.gpu_memory_utilization


def recommended_parameters() -> list[str]:
    """vLLM's recipe flags for PaddleOCR-VL in `--flag=value` form (one list item each)."""
    return [f"{flag}={values[0]}" if values else flag for flag, values in RECOMMENDED_FLAGS]


_DESCRIPTION = (
    "{name} on vLLM through vllm_paddle_ocr: {budget} of GPU memory, sized from the model for "
    "{concurrency} in-flight blocks, the OpenAI API and PaddleX's /layout-parsing on the same port."
)


def builtin_catalog_entries() -> list[CatalogEntry]:
    """PaddleOCR-VL (0.9B) and PaddleOCR-VL-1.5, from Hugging Face and ModelScope, on this runtime.

    No --trust-remote-code in the parameters: the runtime adds it exactly where the downloaded repo
    carries remote code (the published repos do) and leaves it out where it would break the start.
    """

    def budget(version: str) -> dict[str, Any]:
        return dict(
            vram_claim_bytes=planned_claim(version),
            gpu_memory_utilization=planned_fraction(PLANNED_CARD_BYTES, version),
            planned_card_bytes=PLANNED_CARD_BYTES,
        )

    def description(name: str, version: str) -> str:
        return _DESCRIPTION.format(name=name, budget=format_bytes(planned_claim(version)), concurrency=DEFAULT_CONCURRENCY)

    common = dict(
        home="https://www.paddleocr.ai",
        icon="/static/catalog_icons/baidu.jpeg",
        categories=["llm"],
        capabilities=["vision"],
        size=0.9,
        licenses=["apache-2.0"],
        quantization="BF16",
        backend_parameters=recommended_parameters(),
        env=dict(DEFAULT_ENV),
        runtime=RUNTIME_NAME,
    )
    return [
        CatalogEntry(
            name="PaddleOCR-VL",
            description=description("PaddleOCR-VL-0.9B (document parsing in 109 languages)", "0.9B"),
            release_date=date(2025, 10, 16),
            model_version="0.9B",
            **budget("0.9B"),
            sources=ModelSources(
                huggingface_repo_id="PaddlePaddle/PaddleOCR-VL", model_scope_model_id="PaddlePaddle/PaddleOCR-VL"
            ),
            **common,
        ),
        CatalogEntry(
            name="PaddleOCR-VL-1.5",
            description=description("PaddleOCR-VL-1.5 (with PP-DocLayoutV3 layout)", "1.5"),
            release_date=date(2026, 1, 29),
            model_version="1.5",
            **budget("1.5"),
            sources=ModelSources(
                huggingface_repo_id="PaddlePaddle/PaddleOCR-VL-1.5", model_scope_model_id="PaddlePaddle/PaddleOCR-VL-1.5"
            ),
            **common,
        ),
    ]

"""The models this runtime ships catalog entries for, described once and rendered for every control plane.

A `CatalogEntry` is neutral: it knows the model (sources, sizes, licence) and the launch parameters, not
GPUStack's schema; `manifests.py` renders it as a GPUStack 0.7 model set, a 2.x model set, or both.
The `--gpu-memory-utilization=X` in the parameters is the same budget `vllm_paddle_ocr plan <model>
--gpu-total <card>` prints for the published model, planned for `PLANNED_CARD_BYTES`.
"""

from __future__ import annotations

import functools
import json
import struct
import tempfile
from datetime import date
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..planning.launch_plan import RECOMMENDED_FLAGS
from ..sizes import GiB
from ..planning.vram import VramOptions, budget, gpustack_parameter

# The card the catalog's budget is planned for: a 24 GiB card (L4, A10, RTX 4090/3090) is the smallest
# common data-centre card; on a larger one the fraction is lower (plan it with `vllm_paddle_ocr plan`).
PLANNED_CARD_BYTES = 24 * GiB
RUNTIME_NAME = "vllm_paddle_ocr"


class ModelSources(BaseModel):
    """Where a control plane downloads the model from."""

    model_config = ConfigDict(frozen=True)

    huggingface_repo_id: str | None = None
    model_scope_model_id: str | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> "ModelSources":
        if not (self.huggingface_repo_id or self.model_scope_model_id):
            raise ValueError("a catalog entry needs a huggingface_repo_id or a model_scope_model_id")
        return self


class CatalogEntry(BaseModel):
    """One model in a control plane's catalog, served by one runtime."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    home: str | None = None
    icon: str | None = None
    categories: list[str] = Field(default_factory=lambda: ["llm"])
    capabilities: list[str] = Field(default_factory=list)
    size: float  # billions of parameters
    licenses: list[str] = Field(default_factory=list)
    release_date: date | None = None
    model_version: str  # the PaddleOCR-VL release: "0.9B", "1.5"
    quantization: str | None = None
    sources: ModelSources
    runtime: str = RUNTIME_NAME
    backend_parameters: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    planned_card_bytes: int | None = None  # the card size the --gpu-memory-utilization budget is for

    def budget_note(self) -> str:
        """Says which card the budget in backend_parameters is planned for."""
        if self.planned_card_bytes is None:
            return "no budget planned"
        return f"budget planned for a {card_size(self.planned_card_bytes)} card"


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


def _write_published_model(target: Path) -> None:
    """The published model's config files and a safetensors header declaring its weights (no tensor data)."""
    config = {
        "architectures": ["PaddleOCRVLForConditionalGeneration"],
        "model_type": "paddleocr_vl",
        "torch_dtype": "bfloat16",
        **PUBLISHED_TEXT_CONFIG,
        "vision_config": PUBLISHED_VISION_CONFIG,
    }
    (target / "config.json").write_text(json.dumps(config))
    (target / "preprocessor_config.json").write_text(json.dumps(PUBLISHED_PREPROCESSOR_CONFIG))
    elements = PUBLISHED_WEIGHT_BYTES // 2
    header = json.dumps({"weights": {"dtype": "BF16", "shape": [elements], "data_offsets": [0, 2 * elements]}}).encode()
    header += b" " * (-len(header) % 8)
    (target / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)


@functools.lru_cache(maxsize=None)
def planned_fraction(card_bytes: int = PLANNED_CARD_BYTES) -> float:
    """The --gpu-memory-utilization the runtime plans for the published model on a card of this size."""
    with tempfile.TemporaryDirectory(prefix="vllm-paddle-ocr-catalog-") as tmp:
        model_dir = Path(tmp)
        _write_published_model(model_dir)
        plan = budget(model_dir, VramOptions(gpu_total_bytes=card_bytes))
    if plan.gpu_memory_utilization is None:
        raise RuntimeError(f"the VRAM budget planned no fraction for a {card_size(card_bytes)} card: {plan.reason}")
    return plan.gpu_memory_utilization


def budget_parameter(card_bytes: int = PLANNED_CARD_BYTES) -> str:
    """The budget as GPUStack's scheduler reads it: one `--gpu-memory-utilization=X` item."""
    return gpustack_parameter(planned_fraction(card_bytes))


def recommended_parameters() -> list[str]:
    """vLLM's recipe flags for PaddleOCR-VL in `--flag=value` form (one list item each)."""
    return [f"{flag}={values[0]}" if values else flag for flag, values in RECOMMENDED_FLAGS]


def backend_parameters(card_bytes: int = PLANNED_CARD_BYTES) -> list[str]:
    """What a catalog entry passes: trust-remote-code, the budget, then the recipe flags."""
    return ["--trust-remote-code", budget_parameter(card_bytes), *recommended_parameters()]


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

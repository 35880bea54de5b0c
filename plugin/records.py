"""The records the hooks exchange: plain, frozen data, so a plugin can read, copy and adjust them.

The launch flow passes them in this order: a `ServeRequest` (the control plane's argv) -> `ModelRepo`
(where the model sits) -> `EngineInfo` (the installed vLLM) -> `Compatibility` -> `VramPlan` (the GPU
budget) -> `LaunchPlan` (what the supervisor runs). `Runtime` is the object a plugin registers to answer
for its launches; `CatalogEntry` is a model a control plane's catalog offers on a runtime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from .errors import ServeRequestError

T = TypeVar("T")

# ------------------------------------------------------------------------------------- the request

# vLLM's short aliases, so a user's `-tp 2` counts as setting --tensor-parallel-size.
SHORT_FLAGS = {
    "tp": "tensor-parallel-size",
    "pp": "pipeline-parallel-size",
    "dp": "data-parallel-size",
    "q": "quantization",
}


@dataclass(frozen=True)
class Flag:
    """One engine flag as the user typed it, with the values that followed it."""

    name: str
    values: tuple[str, ...] = ()
    joined: bool = False  # typed as --name=value

    @property
    def key(self) -> str:
        """Comparable name: dashes, no leading dashes, no `no-` prefix (so --no-x and --x collide)."""
        key = self.name.lstrip("-").replace("_", "-")
        key = SHORT_FLAGS.get(key, key)
        return key[3:] if key.startswith("no-") else key

    @property
    def negated(self) -> bool:
        """Whether the flag was typed in its `--no-x` form."""
        return self.name.lstrip("-").replace("_", "-").startswith("no-")

    def tokens(self) -> list[str]:
        """The flag back as argv tokens, in the form the user typed."""
        if self.joined:
            return [f"{self.name}={self.values[0]}"]
        return [self.name, *self.values]


class ServeRequest(BaseModel):
    """What the control plane asked for: a model path, where to listen, engine flags and our options."""

    model_config = ConfigDict(frozen=True)

    model_path: Path
    runtime: str = "vllm_paddle_ocr"
    host: str = "0.0.0.0"
    port: int = 8000
    served_model_names: list[str] = Field(default_factory=list)
    vllm_flags: list[Flag] = Field(default_factory=list)
    # The runtime's own options (never passed to vLLM). None: the runtime's default.
    layout_model_dir: Path | None = None
    layout_engine: str = "auto"  # auto | torch | paddle
    layout_device: str | None = None  # None: the instance's GPU for the torch engine when it has one, else cpu
    layout_batch_size: int | None = None  # None: the engine's default for the device
    model_version: str | None = None
    concurrency: int | None = None
    gpu_total_bytes: int | None = None
    gpu_free_bytes: int | None = None
    vram_margin: float | None = None
    upstream_port: int | None = None
    data_dir: Path | None = None  # where the runtime keeps what it writes (None: its default)
    max_body_bytes: int = 200 * 1024**2
    max_pages: int = 1000
    max_page_pixels: int = 178_956_970
    allow_url_input: bool = False
    url_allow_hosts: list[str] = Field(default_factory=list)
    ready_timeout_s: float = 1800.0
    shutdown_grace_s: float = 30.0
    gpu_lock_timeout_s: float = 900.0
    api_key: SecretStr | None = None  # the proxy's key (None: $VLLM_PADDLE_OCR_API_KEY, $VLLM_API_KEY, or none)
    job_store: str | None = None  # None: SQLite and files under the data directory; redis://... to share
    job_retention_s: float = 24 * 3600.0
    max_queued_jobs: int = 100
    max_active_requests: int | None = None  # None: from the concurrency
    max_active_pages: int | None = None  # None: from the active requests
    max_held_bytes: int | None = None  # None: from the host's memory

    def user_flag(self, key: str) -> Flag | None:
        """The last engine flag the user gave under this key (vLLM's argparse keeps the last)."""
        found = [flag for flag in self.vllm_flags if flag.key == key]
        return found[-1] if found else None

    def user_value(self, key: str) -> str | None:
        """The value of a single-valued engine flag the user gave, if any."""
        flag = self.user_flag(key)
        return flag.values[0] if flag and flag.values else None

    def user_number(self, key: str, convert: Callable[[str], T]) -> T | None:
        """The user's `--key` value converted (int, float, a size); None when not given."""
        text = self.user_value(key)
        if text is None:
            return None
        try:
            return convert(text)
        except ValueError as exc:
            raise ServeRequestError(f"--{key} {text!r} is not a valid value: {exc}") from None


# ---------------------------------------------------------------------------- model and engine


class ModelRepo(BaseModel):
    """A resolved model repository: the directories the engines load, what they are, their config read once."""

    model_config = ConfigDict(frozen=True)

    root: Path
    vlm_dir: Path
    layout_dir: Path | None
    layout_model_name: str | None
    version: str
    architecture: str
    has_remote_code: bool
    kind: Literal["root", "subdir", "hf_cache", "modelscope"]
    canonical_name: str  # the served-model-name alias the model's own clients send
    chat_template: str  # file name of the packaged chat template for this version
    config: dict[str, Any] = Field(default_factory=dict)  # config.json
    preprocessor: dict[str, Any] = Field(default_factory=dict)  # preprocessor_config.json

    @property
    def text_config(self) -> dict[str, Any]:
        """The language model's settings: config.json's text_config, or the flat config itself."""
        return self.config.get("text_config") or self.config


class EngineInfo(BaseModel):
    """What the installed engine is and which options it accepts."""

    model_config = ConfigDict(frozen=True)

    distribution: str | None
    version: str | None
    native_paddleocr_vl: bool
    out_of_tree_model: str | None = None
    known_options: frozenset[str] | None = None  # None: unknown, assume the newest release

    @property
    def installed(self) -> bool:
        """Whether the engine is installed in this Python."""
        return self.version is not None

    def knows_flag(self, flag: str) -> bool:
        """Whether the installed engine's parser has this flag (`--no-x` counts as `--x`)."""
        if self.known_options is None:
            return True
        name = flag.lstrip("-").removeprefix("no-").replace("-", "_")
        return name in self.known_options


class Compatibility(BaseModel):
    """A control plane's answer to 'can this engine serve this model', with the reason."""

    model_config = ConfigDict(frozen=True)

    supported: bool
    reason: str
    out_of_tree_model: str | None = None


# ---------------------------------------------------------------------------------- VRAM budget


class GpuProcess(BaseModel):
    """A process holding memory on a GPU, as NVML reports it."""

    pid: int
    name: str
    used_bytes: int | None = None  # None: NVML could not tell (containers, WDDM)


class PlannedGpu(BaseModel):
    """The card a plan is for (a real one from NVML, or one described by --gpu-total)."""

    index: int | None = None  # None: a planned card, not read from NVML
    uuid: str | None = None
    name: str
    total_bytes: int
    cuda_total_bytes: int  # what vLLM multiplies the fraction with
    free_bytes: int
    processes: list[GpuProcess] = Field(default_factory=list)
    is_mig: bool = False


class MemoryBreakdown(BaseModel):
    """Bytes one GPU needs, by what needs them."""

    weights: int
    model_buffers: int
    activation_peak: int
    non_torch: int
    cuda_graphs: int
    cuda_context: int
    nccl_buffers: int  # tensor parallelism only
    kv_cache: int
    layout_model: int = 0  # the layout model on the same GPU (its process's CUDA context, weights, activations)

    @property
    def before_snapshot(self) -> int:
        """What vLLM holds before its start-up check (CUDA context, NCCL): never free when it checks."""
        return self.cuda_context + self.nccl_buffers

    @property
    def without_kv(self) -> int:
        """Everything but the KV cache (what vLLM itself needs before any request)."""
        return (
            self.weights + self.model_buffers + self.activation_peak + self.non_torch + self.cuda_graphs
            + self.before_snapshot
        )

    @property
    def total(self) -> int:
        """Everything the instance holds on the GPU: vLLM's process, and the layout model when it runs there."""
        return self.without_kv + self.kv_cache + self.layout_model


class VramPlan(BaseModel):
    """The budget: the engine memory flags it decides, what a control plane should book, and why."""

    available: bool  # False: no GPU to plan against; the figures say what the instance would need
    reason: str | None = None
    source: Literal["planned", "user", "none"] = "planned"  # who chose the fraction
    gpu: PlannedGpu | None = None  # the tightest card the plan is for
    gpus: list[PlannedGpu] = Field(default_factory=list)
    gpu_memory_utilization: float | None = None
    kv_cache_memory_bytes: int | None = None
    max_num_seqs: int | None = None
    concurrency: int
    requested_concurrency: int
    claim_bytes: int  # what the instance books on each GPU
    needed_bytes: int  # what the estimate says it holds (breakdown total)
    breakdown: MemoryBreakdown
    tokens_per_request: int
    kv_bytes_per_token: int
    kv_cache_tokens: int
    gpustack_parameter: str | None = None  # the backend_parameters item a GPUStack scheduler books from
    gpustack_claim_bytes: int | None = None  # GPUSTACK_MODEL_VRAM_CLAIM for the requested concurrency, on any card
    gpustack_instances_per_gpu: int | None = None  # how many such bookings GPUStack places on this plan's card
    notes: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------------------------- launch plan


class ProxySettings(BaseModel):
    """What the public-facing proxy needs to know to front the engine."""

    model_config = ConfigDict(frozen=True)

    host: str
    port: int
    upstream_url: str
    served_model_name: str
    model_aliases: list[str]
    model_version: str
    layout_dir: Path | None
    layout_model_name: str | None
    layout_device: str
    concurrency: int
    layout_engine: str | None = None  # torch | paddle, decided by the plan (None: no layout model)
    layout_batch_size: int = 4
    data_dir: Path
    max_body_bytes: int
    max_pages: int
    max_page_pixels: int
    allow_url_input: bool
    url_allow_hosts: list[str]
    ready_timeout_s: float
    shutdown_grace_s: float
    # The context vLLM serves (its --max-model-len): block requests ask no more new tokens than it leaves.
    max_model_len: int | None = None
    # Every route but /health and /v1/models asks for it; vLLM on loopback gets it too.
    api_key: SecretStr | None = None
    job_store: str | None = None
    job_retention_s: float = 24 * 3600.0
    max_queued_jobs: int = 100
    max_active_requests: int | None = None
    max_active_pages: int | None = None
    max_held_bytes: int | None = None


class LaunchPlan(BaseModel):
    """Everything the supervisor runs, decided before anything starts."""

    model_config = ConfigDict(frozen=True)

    runtime: str
    model: ModelRepo
    engine: EngineInfo
    vram: VramPlan | None
    vllm_argv: list[str]
    env: dict[str, str]
    proxy: ProxySettings
    gpu_uuids: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    def to_json(self) -> str:
        """The plan as indented JSON for `plan --json`."""
        return json.dumps(self.model_dump(mode="json"), indent=2)


# ------------------------------------------------------------------------------------- catalog


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
    """One model in a control plane's catalog, served by one runtime; neutral to any catalog schema."""

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
    model_version: str  # the model's release: "0.9B", "1.5"
    quantization: str | None = None
    sources: ModelSources
    runtime: str
    backend_parameters: list[str] = Field(default_factory=list)  # engine flags, the same for every control plane
    env: dict[str, str] = Field(default_factory=dict)
    # The GPU budget, in the two forms control planes book: bytes that hold on any card (GPUStack 2.x), and
    # a share of a card of a stated size (GPUStack 0.7).
    vram_claim_bytes: int | None = None
    gpu_memory_utilization: float | None = None
    planned_card_bytes: int | None = None  # the card size gpu_memory_utilization is planned for


# ------------------------------------------------------------------------------------- runtime


@runtime_checkable
class Runtime(Protocol):
    """A launchable runtime: how control planes name and run it, and its own answers for a launch.

    The manager asks the hooks first; a runtime's methods answer whatever no plugin answered, so a
    plugin can override one step for any runtime and a runtime never checks whose request it is.
    """

    name: str
    description: str
    backend: str  # GPUStack 0.7 runs `<bin_dir>/<backend>_<backend_version>`; 2.x the same in an image
    backend_version: str
    executable: str

    def resolve_model(self, request: ServeRequest) -> ModelRepo:
        """Find the model directories inside the requested path."""
        ...

    def detect_engine(self) -> EngineInfo:
        """Read the installed engine."""
        ...

    def check_compatibility(self, model: ModelRepo, engine: EngineInfo) -> Compatibility:
        """Say whether the engine serves the model."""
        ...

    def plan_vram(self, request: ServeRequest, model: ModelRepo, engine: EngineInfo) -> VramPlan | None:
        """Budget GPU memory for the launch; None leaves memory to the engine's defaults."""
        ...

    def build_launch_plan(
        self, request: ServeRequest, model: ModelRepo, engine: EngineInfo, vram: VramPlan | None
    ) -> LaunchPlan:
        """Compose what the supervisor runs."""
        ...

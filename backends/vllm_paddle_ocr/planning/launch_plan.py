"""The launch plan: vLLM's argv and environment plus the proxy's settings, from plain data only."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

from pydantic import BaseModel, ConfigDict, Field

from .engine import EngineInfo
from .memory_needs import processor_max_pixels
from .model_repo import ModelRepo
from ..serving.argv import ServeRequest, split_flags
from .vram import DEFAULT_CONCURRENCY, VramPlan

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
UPSTREAM_HOST = "127.0.0.1"

# The vLLM recipe for PaddleOCR-VL (vLLM recipes, PaddlePaddle/PaddleOCR-VL.md): the image encoder's
# profiling stays small, and caches that never hit for one-off page crops are off.
RECOMMENDED_FLAGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("--max-num-batched-tokens", ("16384",)),
    ("--no-enable-prefix-caching", ()),
    ("--mm-processor-cache-gb", ("0",)),
)
# PaddleX's clients send max_completion_tokens 4096 and max_pixels up to 1605632 (spotting).
DEFAULT_MAX_NEW_TOKENS = 4096
LARGEST_CLIENT_PIXELS = 1_605_632
PROMPT_TEXT_TOKENS = 256
PIXELS_PER_IMAGE_TOKEN = 28 * 28
# Variables that choose the accelerator a child sees; passed on as the control plane set them.
DEVICE_ENV = (
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "ASCEND_RT_VISIBLE_DEVICES",
    "MLU_VISIBLE_DEVICES",
)


class ProxySettings(BaseModel):
    """What the public-facing proxy needs to know to front this vLLM."""

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
    max_body_bytes: int
    max_pages: int
    max_page_pixels: int
    allow_url_input: bool
    url_allow_hosts: list[str]
    ready_timeout_s: float
    shutdown_grace_s: float


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


def served_context_length(vlm_dir: Path) -> int:
    """Context for the largest crop plus PaddleX's default output, rounded up to 1024 tokens."""
    max_pixels = max(_preprocessor_max_pixels(vlm_dir), LARGEST_CLIENT_PIXELS)
    needed = math.ceil(max_pixels / PIXELS_PER_IMAGE_TOKEN) + DEFAULT_MAX_NEW_TOKENS + PROMPT_TEXT_TOKENS
    length = math.ceil(needed / 1024) * 1024
    limit = _max_position_embeddings(vlm_dir)
    return min(length, limit) if limit else length


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _preprocessor_max_pixels(vlm_dir: Path) -> int:
    return processor_max_pixels(_read_json(vlm_dir / "preprocessor_config.json"))


def _max_position_embeddings(vlm_dir: Path) -> int | None:
    config = _read_json(vlm_dir / "config.json")
    text = config.get("text_config") or config
    value = text.get("max_position_embeddings")
    return int(value) if value else None


def build_launch_plan(
    request: ServeRequest,
    model: ModelRepo,
    engine: EngineInfo,
    vram: VramPlan | None,
    *,
    python: str,
    chat_template: Path,
    upstream_port: int,
    environ: Mapping[str, str],
) -> LaunchPlan:
    """Compose vLLM's argv: the user's flags verbatim, ours only where the user set nothing."""
    notes: list[str] = []
    given = {flag.key for flag in request.vllm_flags}
    added: list[str] = []

    def add(flag: str, *values: str) -> None:
        key = flag.lstrip("-").removeprefix("no-")
        if key in given:
            notes.append(f"kept the user's --{key} instead of the recommended {flag} {' '.join(values)}".rstrip())
            return
        if not engine.knows_flag(flag):
            notes.append(f"vLLM {engine.version} has no {flag}; not passed")
            return
        added.extend([flag, *values])

    if model.has_remote_code and "trust-remote-code" not in given:
        added.append("--trust-remote-code")
    if "chat-template" not in given:
        added.extend(["--chat-template", str(chat_template)])
    for flag, values in RECOMMENDED_FLAGS:
        add(flag, *values)
    add("--trust-request-mm-kwargs")
    if "max-model-len" not in given:
        added.extend(["--max-model-len", str(served_context_length(model.vlm_dir))])
    if vram is not None:
        for flag in split_flags(vram.vllm_args())[1]:
            add(flag.name, *flag.values)

    names = list(request.served_model_names) or [model.canonical_name]
    if model.canonical_name not in names:
        names.append(model.canonical_name)
    user_tokens = [token for flag in request.vllm_flags for token in flag.tokens()]
    argv = [
        python, "-m", VLLM_MODULE,
        "--model", str(model.vlm_dir),
        *user_tokens,
        *added,
        "--host", UPSTREAM_HOST,
        "--port", str(upstream_port),
        "--served-model-name", *names,
    ]
    env = {name: environ[name] for name in DEVICE_ENV if name in environ}
    concurrency = vram.concurrency if vram is not None else (request.concurrency or DEFAULT_CONCURRENCY)
    proxy = ProxySettings(
        host=request.host,
        port=request.port,
        upstream_url=f"http://{UPSTREAM_HOST}:{upstream_port}",
        served_model_name=names[0],
        model_aliases=names,
        model_version=model.version,
        layout_dir=model.layout_dir,
        layout_model_name=model.layout_model_name,
        layout_device=request.layout_device,
        concurrency=concurrency,
        max_body_bytes=request.max_body_bytes,
        max_pages=request.max_pages,
        max_page_pixels=request.max_page_pixels,
        allow_url_input=request.allow_url_input,
        url_allow_hosts=request.url_allow_hosts,
        ready_timeout_s=request.ready_timeout_s,
        shutdown_grace_s=request.shutdown_grace_s,
    )
    if model.layout_dir is None:
        notes.append(
            "no layout model found: /layout-parsing works only with useLayoutDetection=false; "
            "add PP-DocLayoutV2/ to the repo or pass --layout-model-dir"
        )
    uuids = [gpu.uuid for gpu in vram.gpus if gpu.uuid] if vram is not None and vram.available else []
    return LaunchPlan(
        runtime=request.runtime,
        model=model,
        engine=engine,
        vram=vram,
        vllm_argv=argv,
        env=env,
        proxy=proxy,
        gpu_uuids=uuids,
        notes=notes,
    )

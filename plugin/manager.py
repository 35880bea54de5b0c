"""The plugin manager and the launch flow: a serve request -> the hooks -> a launch plan."""

from __future__ import annotations

from typing import Any

import pluggy

from . import hookspecs
from .errors import IncompatibleEngine, PluginError
from .hookspecs import hookimpl
from .records import CatalogEntry, Compatibility, EngineInfo, LaunchPlan, ModelRepo, Runtime, ServeRequest, VramPlan

ENTRY_POINT_GROUP = "vllm_paddle_ocr"


class RuntimeAnswers:
    """The last answer to every launch hook: the runtime object's own method."""

    @hookimpl(trylast=True)
    def resolve_model(self, runtime: Runtime, request: ServeRequest) -> ModelRepo:
        return runtime.resolve_model(request)

    @hookimpl(trylast=True)
    def detect_engine(self, runtime: Runtime) -> EngineInfo:
        return runtime.detect_engine()

    @hookimpl(trylast=True)
    def check_compatibility(self, runtime: Runtime, model: ModelRepo, engine: EngineInfo) -> Compatibility:
        return runtime.check_compatibility(model, engine)

    @hookimpl(trylast=True)
    def plan_vram(self, runtime: Runtime, request: ServeRequest, model: ModelRepo, engine: EngineInfo) -> VramPlan | None:
        return runtime.plan_vram(request, model, engine)

    @hookimpl(trylast=True)
    def build_launch_plan(
        self, runtime: Runtime, request: ServeRequest, model: ModelRepo, engine: EngineInfo, vram: VramPlan | None
    ) -> LaunchPlan:
        return runtime.build_launch_plan(request, model, engine, vram)


def get_plugin_manager() -> pluggy.PluginManager:
    """A manager with every plugin of the entry-point group loaded, the built-in runtime included."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(RuntimeAnswers(), name="runtime-answers")
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm


def runtimes(pm: pluggy.PluginManager) -> dict[str, Runtime]:
    """Every registered runtime by name; a second one under a taken name is an error."""
    found: dict[str, Runtime] = {}

    def register(runtime: Runtime) -> None:
        if not isinstance(runtime, Runtime):
            raise PluginError(f"a plugin registered {runtime!r}, which is not a Runtime (see plugin/records.py)")
        if runtime.name in found:
            raise PluginError(f"two plugins register a runtime named {runtime.name!r}; uninstall one")
        found[runtime.name] = runtime

    pm.hook.register_runtimes(register=register)
    return found


def catalog_entries(pm: pluggy.PluginManager) -> list[CatalogEntry]:
    """Every catalog entry plugins register, in registration order."""
    entries: list[CatalogEntry] = []
    pm.hook.register_catalog_entries(register=entries.append)
    return entries


def get_runtime(pm: pluggy.PluginManager, name: str) -> Runtime:
    """The named runtime, or an error listing the ones that exist."""
    known = runtimes(pm)
    if name not in known:
        raise PluginError(f"no runtime named {name!r}; installed runtimes: {', '.join(sorted(known)) or 'none'}")
    return known[name]


def plan_launch(pm: pluggy.PluginManager, request: ServeRequest) -> LaunchPlan:
    """Run the launch flow through the hooks: resolve, read the engine, check, budget, plan."""
    runtime = get_runtime(pm, request.runtime)
    hook = pm.hook
    model = _answer(hook.resolve_model(runtime=runtime, request=request), "resolve_model", runtime)
    engine = _answer(hook.detect_engine(runtime=runtime), "detect_engine", runtime)
    compat = _answer(
        hook.check_compatibility(runtime=runtime, model=model, engine=engine), "check_compatibility", runtime
    )
    if not compat.supported:
        raise IncompatibleEngine(compat.reason)
    vram = hook.plan_vram(runtime=runtime, request=request, model=model, engine=engine)
    plan = hook.build_launch_plan(runtime=runtime, request=request, model=model, engine=engine, vram=vram)
    return _answer(plan, "build_launch_plan", runtime)


def _answer(value: Any, hook_name: str, runtime: Runtime) -> Any:
    if value is None:
        raise PluginError(f"no plugin answered {hook_name} for runtime {runtime.name!r}, and neither did the runtime")
    return value

"""The plugin manager and the launch flow: argv's serve request -> hooks -> a launch plan."""

from __future__ import annotations

from typing import Any

import pluggy

from . import hookspecs
from .models import Runtime

ENTRY_POINT_GROUP = "vllm_paddle_ocr"


class PluginError(RuntimeError):
    """A plugin is missing or answered nothing for a question it must answer."""


def get_plugin_manager() -> pluggy.PluginManager:
    """A manager with every plugin of the entry-point group loaded, the built-in runtime included."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm


def runtimes(pm: pluggy.PluginManager) -> dict[str, Runtime]:
    """Every registered runtime by name; a second one under a taken name is an error."""
    found: dict[str, Runtime] = {}

    def register(runtime: Runtime) -> None:
        if runtime.name in found:
            raise PluginError(f"two plugins register a runtime named {runtime.name!r}; uninstall one")
        found[runtime.name] = runtime

    pm.hook.register_runtimes(register=register)
    return found


def catalog_entries(pm: pluggy.PluginManager) -> list[Any]:
    """Every catalog entry plugins register, in registration order."""
    entries: list[Any] = []
    pm.hook.register_catalog_entries(register=entries.append)
    return entries


def get_runtime(pm: pluggy.PluginManager, name: str) -> Runtime:
    """The named runtime, or an error listing the ones that exist."""
    known = runtimes(pm)
    if name not in known:
        raise PluginError(f"no runtime named {name!r}; installed runtimes: {', '.join(sorted(known)) or 'none'}")
    return known[name]


def plan_launch(pm: pluggy.PluginManager, request: Any) -> Any:
    """Run the launch flow through the hooks: resolve, check, budget, plan."""
    runtime = get_runtime(pm, request.runtime)
    hook = pm.hook
    model = _answer(hook.resolve_model(runtime=runtime, request=request), "resolve_model", runtime)
    from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.engine import detect_engine

    engine = detect_engine()
    compat = _answer(hook.check_compatibility(runtime=runtime, model=model, engine=engine), "check_compatibility", runtime)
    if not compat.supported:
        from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.compatibility import IncompatibleEngine

        raise IncompatibleEngine(compat.reason)
    vram = hook.plan_vram(runtime=runtime, request=request, model=model, engine=engine)
    plan = hook.build_launch_plan(runtime=runtime, request=request, model=model, engine=engine, vram=vram)
    return _answer(plan, "build_launch_plan", runtime)


def _answer(value: Any, hook_name: str, runtime: Runtime) -> Any:
    if value is None:
        raise PluginError(f"no plugin answered {hook_name} for runtime {runtime.name!r}; is its plugin installed?")
    return value

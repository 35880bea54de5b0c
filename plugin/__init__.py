"""The plugin contract of vllm-paddle-ocr: hook markers, the records hooks exchange, errors, the manager."""

from .errors import IncompatibleEngine, PluginError, ServeRequestError, VllmPaddleOcrError
from .hookspecs import hookimpl, hookspec
from .manager import get_plugin_manager, plan_launch
from .records import (
    CatalogEntry,
    Compatibility,
    EngineInfo,
    Flag,
    LaunchPlan,
    ModelRepo,
    ModelSources,
    ProxySettings,
    Runtime,
    ServeRequest,
    VramPlan,
)

__all__ = [
    "CatalogEntry",
    "Compatibility",
    "EngineInfo",
    "Flag",
    "IncompatibleEngine",
    "LaunchPlan",
    "ModelRepo",
    "ModelSources",
    "PluginError",
    "ProxySettings",
    "Runtime",
    "ServeRequest",
    "ServeRequestError",
    "VllmPaddleOcrError",
    "VramPlan",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "plan_launch",
]

"""The control-plane face of vllm-paddle-ocr: hook markers, records and the plugin manager."""

from .hookspecs import hookimpl, hookspec
from .manager import get_plugin_manager, plan_launch
from .models import Runtime

__all__ = ["Runtime", "get_plugin_manager", "hookimpl", "hookspec", "plan_launch"]

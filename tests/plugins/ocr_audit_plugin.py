"""A third-party plugin, installed only through an entry point: adds a runtime and adjusts ours."""

from __future__ import annotations

from vllm_paddle_ocr.backends.vllm_paddle_ocr.runtime import PaddleOcrRuntime
from vllm_paddle_ocr.plugin import Compatibility, hookimpl


class AuditRuntime(PaddleOcrRuntime):
    """PaddleOCR-VL with request logging: our runtime's answers, its own name and compatibility rule."""

    name = "ocr_audit"
    description = "PaddleOCR-VL with request logging, from a third-party package"
    backend_version = "ocr_audit"
    executable = "vllm_ocr_audit"

    def check_compatibility(self, model, engine):
        return Compatibility(supported=True, reason="audited runtime accepts every PaddleOCR-VL repo")

    def build_launch_plan(self, request, model, engine, vram):
        plan = super().build_launch_plan(request, model, engine, vram)
        return plan.model_copy(update={"runtime": self.name, "vllm_argv": ["python3", *plan.vllm_argv[1:]]})


AUDIT = AuditRuntime()


@hookimpl
def register_runtimes(register):
    register(AUDIT)


@hookimpl(wrapper=True, specname="build_launch_plan")
def adjust_launch_plan(runtime, request, model, engine, vram):
    plan = yield
    if runtime.name == AUDIT.name:
        return plan
    return plan.model_copy(
        update={"vllm_argv": [*plan.vllm_argv, "--enable-log-requests"], "notes": [*plan.notes, "audit: request logging on"]}
    )


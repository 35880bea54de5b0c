"""A third-party plugin, installed only through an entry point: adds a runtime and adjusts ours."""

from __future__ import annotations

from vllm_paddle_ocr.plugin import Runtime, hookimpl

AUDIT = Runtime(
    name="ocr_audit",
    description="PaddleOCR-VL with request logging, from a third-party package",
    backend="vllm",
    backend_version="ocr_audit",
    executable="vllm_ocr_audit",
)


@hookimpl
def register_runtimes(register):
    register(AUDIT)


@hookimpl
def resolve_model(runtime, request):
    if runtime.name != AUDIT.name:
        return None
    from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.model_repo import resolve_model_repo

    return resolve_model_repo(request.model_path)


@hookimpl
def check_compatibility(runtime, model, engine):
    if runtime.name != AUDIT.name:
        return None
    from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.compatibility import Compatibility

    return Compatibility(supported=True, reason="audited runtime accepts every PaddleOCR-VL repo")


@hookimpl
def build_launch_plan(runtime, request, model, engine, vram):
    if runtime.name != AUDIT.name:
        return None
    from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.launch_plan import build_launch_plan as build

    plan = build(request, model, engine, vram, python="python3", chat_template=model.vlm_dir / "chat_template.jinja",
                 upstream_port=18000, environ={})
    return plan.model_copy(update={"runtime": AUDIT.name})


@hookimpl(wrapper=True, specname="build_launch_plan")
def adjust_launch_plan(runtime, request, model, engine, vram):
    plan = yield
    if plan is None or runtime.name == AUDIT.name:
        return plan
    return plan.model_copy(
        update={"vllm_argv": [*plan.vllm_argv, "--enable-log-requests"], "notes": [*plan.notes, "audit: request logging on"]}
    )


"""The `vllm_paddle_ocr` executable: serve and plan the way GPUStack runs vLLM, plus the admin commands."""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap

from vllm_paddle_ocr.plugin.errors import VllmPaddleOcrError
from vllm_paddle_ocr.plugin.manager import get_plugin_manager, plan_launch
from vllm_paddle_ocr.plugin.records import LaunchPlan

from ..deploy import gpustack_install, manifests
from ..deploy.gpustack_install import DEFAULT_DATA_DIR
from ..planning.vram import describe_breakdown, summary
from .argv import OWN_OPTIONS, parse_serve_argv

DESCRIPTION = "PaddleOCR-VL on vLLM: a budgeted GPU share, the OpenAI API and PaddleX's /layout-parsing."

SERVE_USAGE = "vllm_paddle_ocr {command} <model_path> [options] [vLLM options]"


def _serve_help(command: str) -> str:
    """Help text in vLLM's shape: usage, positional, our options, then how vLLM's options pass through."""
    what = (
        "Start vLLM on a loopback port and the layout-aware proxy on --host/--port; exit when either dies."
        if command == "serve"
        else "Print the launch plan (vLLM argv, environment, VRAM budget, proxy settings) and exit."
    )
    lines = [
        f"usage: {SERVE_USAGE.format(command=command)}",
        "",
        what,
        "",
        "positional arguments:",
        "  model_path            Model repo root, its PaddleOCR-VL-0.9B/ sub-directory, or a",
        "                        HuggingFace/ModelScope cache entry.",
        "",
        "options:",
        "  -h, --help            Show this help message and exit.",
        "  --host HOST           Public host for the proxy (default 0.0.0.0).",
        "  --port PORT           Public port for the proxy (default 8000).",
        "  --served-model-name NAME [NAME ...]",
        "                        Model names clients send; the version's canonical name is added as an alias.",
    ]
    if command == "plan":
        lines.append("  --json                Print the plan as JSON.")
    lines += ["", "runtime options:"]
    for option in OWN_OPTIONS:
        head = f"  {option.flag}" + ("" if option.convert is None else f" {option.metavar}")
        wrapped = textwrap.wrap(option.help, 76 - 24)
        if len(head) < 22:
            lines.append(head.ljust(24) + wrapped[0])
        else:
            lines += [head, " " * 24 + wrapped[0]]
        lines += [" " * 24 + rest for rest in wrapped[1:]]
    lines += [
        "",
        "vLLM options:",
        "  Every other option is passed to vLLM verbatim (see `python -m vllm.entrypoints.openai.api_server",
        "  --help`). Yours always win: the recommended PaddleOCR-VL flags are added only where you set",
        "  nothing. Both --flag value and --flag=value forms are accepted.",
    ]
    return "\n".join(lines) + "\n"


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm_paddle_ocr", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", metavar="{serve,plan,manifests,gpustack}")
    sub.add_parser("serve", help="Start vLLM and the proxy (GPUStack runs this).", add_help=False)
    sub.add_parser("plan", help="Print the launch plan and VRAM budget without starting anything.", add_help=False)
    manifests = sub.add_parser("manifests", help="Write GPUStack catalogs, backend YAML, Dockerfile, Kubernetes and Compose files.")
    manifests.add_argument("--check", action="store_true", help="Fail when a committed file differs from what would be generated.")
    manifests.add_argument("--output-dir", default="manifests", help="Where to write (default ./manifests).")
    gpustack = sub.add_parser("gpustack", help="Install or remove this runtime in a GPUStack 0.7 worker's bin dir.")
    gpustack_sub = gpustack.add_subparsers(dest="gpustack_command", metavar="{install,uninstall}", required=True)
    for name, text in (("install", "Link <data_dir>/bin/vllm_paddle_ocr to this executable."), ("uninstall", "Remove that link.")):
        cmd = gpustack_sub.add_parser(name, help=text)
        cmd.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help=f"GPUStack data dir (default {DEFAULT_DATA_DIR}).")
        cmd.add_argument("--bin-dir", default=None, help="GPUStack bin dir when set apart from <data-dir>/bin.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: every expected error is one line and an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = argv[0] if argv else ""
    try:
        return _run(argv)
    except VllmPaddleOcrError as exc:
        words = " ".join(argv[:2]) if command == "gpustack" else command
        sys.stderr.write(f"vllm_paddle_ocr {words}: error: {exc}\n")
        return exc.exit_code


def _run(argv: list[str]) -> int:
    if argv and argv[0] in {"serve", "plan"}:
        command, rest = argv[0], argv[1:]
        if "-h" in rest or "--help" in rest:
            sys.stdout.write(_serve_help(command))
            return 0
        as_json = command == "plan" and "--json" in rest
        rest = [token for token in rest if not (command == "plan" and token == "--json")]
        request = parse_serve_argv(rest)
        pm = get_plugin_manager()
        if command == "plan":
            plan = plan_launch(pm, request)
            sys.stdout.write(plan.to_json() + "\n" if as_json else describe_plan(plan))
            return 0
        from .supervisor import serve  # the server's imports (uvicorn, the proxy) only when serving

        return serve(pm, request)
    args = _top_parser().parse_args(argv)
    if args.command == "manifests":
        return manifests.run_manifests_command(output_dir=args.output_dir, check=args.check)
    if args.command == "gpustack":
        return gpustack_install.run_gpustack_command(args.gpustack_command, data_dir=args.data_dir, bin_dir=args.bin_dir)
    _top_parser().print_help()
    return 0


def describe_plan(plan: LaunchPlan) -> str:
    """The plan for a person: what runs, with what memory, and why."""
    vram = plan.vram
    lines = [
        f"runtime:      {plan.runtime}",
        f"model:        {plan.model.vlm_dir} (PaddleOCR-VL {plan.model.version}, {plan.model.kind})",
        f"layout model: {_layout_line(plan)}",
        f"engine:       {plan.engine.distribution or 'vLLM not installed'} {plan.engine.version or ''}".rstrip(),
        f"proxy:        http://{plan.proxy.host}:{plan.proxy.port} -> {plan.proxy.upstream_url}",
        f"served names: {', '.join(plan.proxy.model_aliases)}",
    ]
    if vram is None or not vram.available:
        lines.append(f"VRAM:         {vram.reason if vram is not None else 'no budget planned'}")
    else:
        lines.append(f"VRAM:         {summary(vram)}")
        lines.append(f"VRAM parts:   {describe_breakdown(vram.breakdown)}")
        lines.append(f"GPUStack:     {vram.gpustack_parameter}")
    lines.append("vLLM argv:    " + " ".join(plan.vllm_argv))
    lines += [f"note:         {note}" for note in plan.notes]
    if vram is not None:
        lines += [f"note:         {note}" for note in vram.notes]
    return "\n".join(lines) + "\n"


def _layout_line(plan: LaunchPlan) -> str:
    """The layout model, and how the proxy runs it."""
    proxy = plan.proxy
    if proxy.layout_dir is None:
        return "none"
    if proxy.layout_engine is None:
        return str(proxy.layout_dir)
    return (
        f"{proxy.layout_dir} ({proxy.layout_model_name}, {proxy.layout_engine} engine on {proxy.layout_device}, "
        f"batches of {proxy.layout_batch_size})"
    )


if __name__ == "__main__":
    raise SystemExit(main())

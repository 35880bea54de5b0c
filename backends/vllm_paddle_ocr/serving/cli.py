"""The `vllm_paddle_ocr` executable: serve and plan the way GPUStack runs vLLM, plus the admin commands."""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from pathlib import Path

from vllm_paddle_ocr.plugin.errors import VllmPaddleOcrError
from vllm_paddle_ocr.plugin.manager import get_plugin_manager, plan_launch
from vllm_paddle_ocr.plugin.records import LaunchPlan

from ..client import parse as parse_client
from ..deploy import gpustack_install, manifests
from ..deploy.gpustack_install import DEFAULT_DATA_DIR
from ..planning.vram import VRAM_CLAIM_ENV, describe_breakdown, gpustack_claim_of, gpustack_lines, summary
from .argv import OWN_OPTIONS, parse_serve_argv

DESCRIPTION = "PaddleOCR-VL on vLLM: a budgeted GPU share, the OpenAI API and PaddleX's /layout-parsing."

SERVE_USAGE = "vllm_paddle_ocr {command} <model_path> [options] [vLLM options]"
# `plan`'s own switches: how to print, never part of the serve request.
PLAN_SWITCHES = ("--json", "--gpustack-claim")


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
        "  model_path            Model repo root, its PaddleOCR-VL-0.9B/ sub-directory, a",
        "                        HuggingFace/ModelScope cache entry, or a model id: org/name",
        "                        (Hugging Face) or modelscope:org/name, from the cache first and",
        "                        downloaded unless HF_HUB_OFFLINE=1.",
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
        lines += [
            "  --gpustack-claim      Print only the bytes to book for --concurrency N (GPUStack 2.x's",
            "                        GPUSTACK_MODEL_VRAM_CLAIM); the same on any card.",
        ]
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
        "environment:",
        f"  {VRAM_CLAIM_ENV}=BYTES",
        "                        Bytes GPUStack 2.x booked for this instance (the model's env): vLLM is",
        "                        sized inside them on this card, and a claim too small is refused at start.",
        "",
        "vLLM options:",
        "  Every other option is passed to vLLM verbatim (see `python -m vllm.entrypoints.openai.api_server",
        "  --help`). Yours always win: the recommended PaddleOCR-VL flags are added only where you set",
        "  nothing. Both --flag value and --flag=value forms are accepted.",
    ]
    return "\n".join(lines) + "\n"


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm_paddle_ocr", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", metavar="{serve,plan,parse,manifests,gpustack}")
    sub.add_parser("serve", help="Start vLLM and the proxy (GPUStack runs this).", add_help=False)
    sub.add_parser("plan", help="Print the launch plan and VRAM budget without starting anything.", add_help=False)
    _add_parse_parser(sub)
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


def _add_parse_parser(sub: argparse._SubParsersAction) -> None:
    parse = sub.add_parser(
        "parse",
        help="Turn PDFs and images into Markdown and JSON on a running server.",
        description="Send each document to a running server as a job (/layout-parsing/jobs), following its pages as "
        "they finish; write OUT/<name>/<name>.md with its pictures beside it and the /layout-parsing JSON answer next "
        "to it. Exits non-zero naming every document that failed; Ctrl-C cancels the jobs it started.",
    )
    parse.add_argument("paths", nargs="+", type=Path, metavar="FILE_OR_DIR", help="Files, or directories searched for PDFs and images.")
    parse.add_argument("--server", help=f"The server's URL, e.g. http://127.0.0.1:8000 or GPUStack's http://<host>/model/proxy/<route> (default ${parse_client.SERVER_ENV}).")
    parse.add_argument("--out", type=Path, default=Path("parsed"), help="Where to write (default ./parsed).")
    parse.add_argument("--api-key", help=f"The server's API key (default ${parse_client.API_KEY_ENV}).")
    parse.add_argument("--concurrency", type=int, default=4, help="Documents in flight at once (default 4).")
    parse.add_argument("--page-range", metavar="RANGE", help="Pages of each PDF (frames of each TIFF) to parse, 1-based, e.g. 1-3,7 or 10-; other images are parsed whole.")
    parse.add_argument("--retries", type=int, default=5, help="Tries again after 429/503 (honouring Retry-After) or no answer, per request (default 5).")
    parse.add_argument("--timeout", type=float, default=3600.0, help="Seconds one document may take, queue included; then its job is cancelled (default 3600).")
    parse.add_argument("--no-layout-detection", action="store_true", help="One VLM call per page instead of per block.")
    parse.add_argument("--chart-recognition", action="store_true", help="Turn charts into tables.")
    parse.add_argument("--seal-recognition", action="store_true", help="Read seals.")
    parse.add_argument("--prompt-label", help="The task without layout detection: ocr, formula, table, chart, seal or spotting.")
    parse.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="Any other /layout-parsing field; VALUE is read as JSON when it parses.")
    parse.add_argument("--no-progress", action="store_true", help="No progress bars (they show on a terminal only anyway).")


def _run_parse(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would bury the progress
    options = parse_client.request_options(
        layout_detection=not args.no_layout_detection,
        chart=args.chart_recognition,
        seal=args.seal_recognition,
        prompt_label=args.prompt_label,
        extra=args.option,
    )
    return parse_client.run_parse(
        args.paths,
        server=args.server,
        out=args.out,
        options=options,
        api_key=args.api_key,
        concurrency=args.concurrency,
        page_range=args.page_range,
        retries=args.retries,
        timeout_s=args.timeout,
        show_progress=False if args.no_progress else None,
    )


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
        claim_only = command == "plan" and "--gpustack-claim" in rest
        rest = [token for token in rest if not (command == "plan" and token in PLAN_SWITCHES)]
        request = parse_serve_argv(rest)
        if claim_only and request.layout_device is None:
            # The bytes to book on a GPU host, where the layout model runs on the instance's GPU by default.
            request = request.model_copy(update={"layout_device": "cuda"})
        pm = get_plugin_manager()
        if command == "plan":
            plan = plan_launch(pm, request)
            if claim_only:
                sys.stdout.write(f"{gpustack_claim_of(plan.vram)}\n")
                return 0
            sys.stdout.write(plan.to_json() + "\n" if as_json else describe_plan(plan))
            return 0
        from .supervisor import serve  # the server's imports (uvicorn, the proxy) only when serving

        return serve(pm, request)
    args = _top_parser().parse_args(argv)
    if args.command == "parse":
        return _run_parse(args)
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
    if vram is not None:
        lines += gpustack_lines(vram)
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

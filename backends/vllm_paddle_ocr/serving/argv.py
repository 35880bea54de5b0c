"""GPUStack's argv contract parsed into a serve request: our own flags taken out, vLLM's kept verbatim."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vllm_paddle_ocr.plugin.errors import ServeRequestError
from vllm_paddle_ocr.plugin.records import Flag, ServeRequest

from ..planning.launch_plan import API_KEY_ENV, DATA_DIR_ENV, DEFAULT_DATA_DIR
from ..planning.vram import DEFAULT_MARGIN
from ..sizes import parse_size

_NEGATIVE_NUMBER = re.compile(r"^-\d+(\.\d+)?$")


class ServeArgsError(ServeRequestError):
    """The command line cannot be turned into a serve request."""


def _is_flag(token: str) -> bool:
    return token.startswith("-") and len(token) > 1 and not _NEGATIVE_NUMBER.match(token)


def split_flags(tokens: list[str]) -> tuple[list[str], list[Flag]]:
    """Split argv into leading positionals and flags; a flag takes every following non-flag token."""
    positionals: list[str] = []
    flags: list[Flag] = []
    i = 0
    while i < len(tokens) and not _is_flag(tokens[i]):
        positionals.append(tokens[i])
        i += 1
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token == "--":
            positionals.extend(tokens[i:])
            break
        if "=" in token and token.startswith("--"):
            name, value = token.split("=", 1)
            flags.append(Flag(name, (value,), joined=True))
            continue
        values = []
        while i < len(tokens) and not _is_flag(tokens[i]):
            values.append(tokens[i])
            i += 1
        flags.append(Flag(token, tuple(values)))
    return positionals, flags


def _int(text: str) -> int:
    return int(text)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be above 0")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise ValueError("must be between 0 and 1")
    return value


def _bool(text: str) -> bool:
    if text.lower() in {"1", "true", "yes", "on"}:
        return True
    if text.lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")


@dataclass(frozen=True)
class OwnOption:
    """A flag this package consumes itself, with its help text for `serve --help`."""

    flag: str
    field: str
    convert: Callable[[str], object] | None  # None: a switch with no value
    help: str
    multiple: bool = False
    metavar: str = "VALUE"


OWN_OPTIONS: tuple[OwnOption, ...] = (
    OwnOption("--runtime", "runtime", str, "Runtime registered with the plugin manager (default vllm_paddle_ocr).", metavar="NAME"),
    OwnOption("--layout-model-dir", "layout_model_dir", Path, "Layout model directory (PP-DocLayoutV2/V3) when it is not inside the model repo.", metavar="DIR"),
    OwnOption("--layout-engine", "layout_engine", str, "Layout engine: torch (transformers, in vLLM's torch), paddle (paddlex) or auto (default: torch when it can load the model, else paddle).", metavar="ENGINE"),
    OwnOption("--layout-device", "layout_device", str, "Device for layout detection: cpu, cuda or cuda:N (default: the instance's GPU for the torch engine, else cpu).", metavar="DEVICE"),
    OwnOption("--layout-batch-size", "layout_batch_size", _positive_int, "Pages detected together in one pass, across requests (default 4 on a GPU, 2 for PP-DocLayoutV3 there, 4 on CPU).", metavar="N"),
    OwnOption("--model-version", "model_version", str, "Model version when it cannot be read from the repo: 0.9B, 1.5 or 1.6.", metavar="VERSION"),
    OwnOption("--concurrency", "concurrency", _positive_int, "Target in-flight block requests; sizes the KV cache and the proxy's bound.", metavar="N"),
    OwnOption("--gpu-total", "gpu_total_bytes", parse_size, "Plan for a card of this size (e.g. 80GiB) instead of reading NVML.", metavar="SIZE"),
    OwnOption("--gpu-free", "gpu_free_bytes", parse_size, "Free memory to plan with (default: all of --gpu-total).", metavar="SIZE"),
    OwnOption("--vram-margin", "vram_margin", _fraction, f"Safety margin as a share of the estimated need (default {DEFAULT_MARGIN}).", metavar="FRACTION"),
    OwnOption("--upstream-port", "upstream_port", _int, "Loopback port for vLLM (default: a free port).", metavar="PORT"),
    OwnOption("--data-dir", "data_dir", Path, f"Where the runtime keeps what it writes (default ${DATA_DIR_ENV}, else {DEFAULT_DATA_DIR}).", metavar="DIR"),
    OwnOption("--max-body-size", "max_body_bytes", parse_size, "Largest /layout-parsing request body (default 200MiB).", metavar="SIZE"),
    OwnOption("--max-pages", "max_pages", _positive_int, "Most PDF pages one request may carry; more is a 413, never a silent cut (default 1000).", metavar="N"),
    OwnOption("--max-page-pixels", "max_page_pixels", _positive_int, "Most pixels in one image or rendered page (default 178956970).", metavar="N"),
    OwnOption("--allow-url-input", "allow_url_input", None, "Accept URLs as /layout-parsing input (off by default)."),
    OwnOption("--url-allow-hosts", "url_allow_hosts", str, "Hosts URL inputs may name (with --allow-url-input).", multiple=True, metavar="HOST"),
    OwnOption("--ready-timeout", "ready_timeout_s", float, "Seconds to wait for vLLM to answer its warm-up request (default 1800).", metavar="SECONDS"),
    OwnOption("--shutdown-grace", "shutdown_grace_s", float, "Seconds in-flight requests get to finish on SIGTERM (default 30).", metavar="SECONDS"),
    OwnOption("--gpu-lock-timeout", "gpu_lock_timeout_s", float, "Seconds to wait for another instance starting on the same GPU (default 900).", metavar="SECONDS"),
    OwnOption("--api-key", "api_key", str, f"Key every route but /health and /v1/models asks for as 'Authorization: Bearer KEY' (default ${API_KEY_ENV}, else $VLLM_API_KEY); vLLM on loopback gets it too.", metavar="KEY"),
    OwnOption("--job-store", "job_store", str, "Where /layout-parsing/jobs keeps jobs: sqlite (default, under --data-dir) or a redis:// URL shared by replicas.", metavar="URL"),
    OwnOption("--job-retention", "job_retention_s", _positive_float, "Seconds a finished job's result is kept (default 86400).", metavar="SECONDS"),
    OwnOption("--max-queued-jobs", "max_queued_jobs", _positive_int, "Jobs waiting on this instance; more is a 429 (default 100).", metavar="N"),
    OwnOption("--max-active-requests", "max_active_requests", _positive_int, "Documents parsed at once (requests and jobs); more is a 429 (default from --concurrency).", metavar="N"),
    OwnOption("--max-active-pages", "max_active_pages", _positive_int, "Pages of the documents parsed at once; more is a 429 (default 8 per active request; one document alone always fits).", metavar="N"),
    OwnOption("--max-held-bytes", "max_held_bytes", parse_size, "Request body bytes held at once; more is a 429 (default: a sixteenth of the host's memory, at least --max-body-size).", metavar="SIZE"),
)

_OWN_BY_KEY = {opt.flag.lstrip("-"): opt for opt in OWN_OPTIONS}
# vLLM flags we re-point rather than pass through.
_PROXY_FLAGS = {"host", "port", "served-model-name", "model"}


def parse_serve_argv(argv: list[str]) -> ServeRequest:
    """Turn `<model_path> [flags...]` (after the `serve`/`plan` word) into a ServeRequest."""
    positionals, flags = split_flags(argv)
    fields: dict[str, object] = {}
    vllm_flags: list[Flag] = []
    model_from_flag: str | None = None
    for flag in flags:
        key = flag.name.lstrip("-").replace("_", "-")
        own = _OWN_BY_KEY.get(key)
        if own is not None:
            fields[own.field] = _convert(own, flag)
        elif key == "host":
            fields["host"] = _single(flag)
        elif key == "port":
            fields["port"] = _convert(OwnOption("--port", "port", _int, ""), flag)
        elif key == "served-model-name":
            if not flag.values:
                raise ServeArgsError("--served-model-name needs at least one name")
            fields["served_model_names"] = list(flag.values)
        elif key == "model":
            model_from_flag = _single(flag)
        else:
            vllm_flags.append(flag)
    if len(positionals) > 1:
        raise ServeArgsError(
            f"expected one model path, got {positionals!r}; put flags after the model path"
        )
    model = positionals[0] if positionals else model_from_flag
    if not model:
        raise ServeArgsError("missing the model path: serve <model_path> [flags]")
    return ServeRequest(model_path=Path(model), vllm_flags=vllm_flags, **fields)


def _single(flag: Flag) -> str:
    if len(flag.values) != 1:
        raise ServeArgsError(f"{flag.name} takes exactly one value, got {list(flag.values)!r}")
    return flag.values[0]


def _convert(option: OwnOption, flag: Flag) -> object:
    if option.convert is None:
        if flag.values:
            return _bool(_single(flag)) if flag.joined else _fail_switch(flag)
        return True
    if option.multiple:
        values = [v for value in flag.values for v in value.split(",") if v]
        return values
    text = _single(flag)
    try:
        return option.convert(text)
    except ValueError as exc:
        raise ServeArgsError(f"{flag.name} {text!r}: {exc}") from None


def _fail_switch(flag: Flag) -> bool:
    raise ServeArgsError(f"{flag.name} is a switch and takes no value, got {list(flag.values)!r}")

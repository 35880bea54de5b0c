"""`vllm_paddle_ocr gpustack install|uninstall`: put this runtime where a GPUStack 0.7 worker looks for it.

GPUStack 0.7 starts a model with `backend: vllm` and `backend_version: paddle_ocr` by running
`<bin_dir>/vllm_paddle_ocr` (`vllm_` + version). It checks that path with `Path.exists()`; a dangling
link is deleted and GPUStack then tries `pipx install vllm==paddle_ocr`, which fails. So the link must
resolve to a real executable, and install verifies that it does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from vllm_paddle_ocr.plugin.errors import VllmPaddleOcrError
from vllm_paddle_ocr.plugin.manager import catalog_entries, get_plugin_manager, get_runtime
from vllm_paddle_ocr.plugin.records import CatalogEntry, Runtime

from .catalog import RUNTIME_NAME, budget_note, share_parameters

DEFAULT_DATA_DIR = "/var/lib/gpustack"


class InstallError(VllmPaddleOcrError):
    """The runtime cannot be linked into GPUStack's bin dir; the message says what to do."""


@dataclass(frozen=True)
class InstallResult:
    """What install or uninstall did."""

    link: Path
    target: Path | None
    changed: bool


def gpustack_bin_dir(data_dir: str | Path, bin_dir: str | Path | None = None) -> Path:
    """GPUStack's bin dir: --bin-dir when set apart, else <data_dir>/bin."""
    return Path(bin_dir) if bin_dir else Path(data_dir) / "bin"


def link_name(runtime: Runtime) -> str:
    """The file name GPUStack's worker runs for this runtime: `<backend>_<backend_version>`."""
    return f"{runtime.backend}_{runtime.backend_version}"


def find_executable(name: str, python: str = sys.executable) -> Path:
    """This installation's console script: beside the running interpreter first, then on PATH."""
    candidates = [Path(python).parent / name]
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if _is_runnable(candidate):
            return candidate.absolute()
    looked = ", ".join(str(c) for c in candidates)
    raise InstallError(
        f"cannot find the {name} executable of this installation (looked at {looked}); "
        "reinstall the package with pip so its console script exists"
    )


def _is_runnable(path: Path) -> bool:
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    return resolved.is_file() and os.access(resolved, os.X_OK)


def install(bin_dir: Path, name: str, target: Path) -> InstallResult:
    """Link <bin_dir>/<name> to target; a link already there is replaced, a real file is left alone."""
    target = Path(target).absolute()  # a relative link would resolve against bin_dir, not here
    if not _is_runnable(target):
        raise InstallError(f"{target} is not an executable file; refusing to link GPUStack to it")
    link = bin_dir / name
    if link.is_symlink():
        if os.readlink(link) == str(target):
            return InstallResult(link=link, target=target, changed=False)
    elif link.exists():
        raise InstallError(
            f"{link} exists and is not a link (another vLLM build GPUStack installed?); "
            "move it away, then run install again"
        )
    staging = bin_dir / f".{name}.installing"
    try:
        bin_dir.mkdir(parents=True, exist_ok=True)
        if staging.is_symlink() or staging.exists():
            staging.unlink()
        staging.symlink_to(target)
        if not _is_runnable(staging):
            staging.unlink()
            raise InstallError(f"a link to {target} does not resolve to an executable from {bin_dir}; check {target}")
        os.replace(staging, link)  # atomic: the worker sees the old link or the new one, never none
    except PermissionError as exc:
        raise InstallError(f"cannot write {link}: {exc.strerror}; run as the user GPUStack runs as (often root)") from None
    return InstallResult(link=link, target=target, changed=True)


def uninstall(bin_dir: Path, name: str) -> InstallResult:
    """Remove <bin_dir>/<name> when it is a link; a real file there is not ours and stays."""
    link = bin_dir / name
    if link.is_symlink():
        target = Path(os.readlink(link))
        try:
            link.unlink()
        except PermissionError as exc:
            raise InstallError(f"cannot remove {link}: {exc.strerror}; run as the user GPUStack runs as") from None
        return InstallResult(link=link, target=target, changed=True)
    if link.exists():
        raise InstallError(f"{link} is a file, not the link install makes; remove it by hand if it is yours")
    return InstallResult(link=link, target=None, changed=False)


def check_runs(link: Path, timeout_s: float = 120) -> None:
    """Run `<link> serve --help` the way GPUStack's worker invokes it; raise when it does not answer."""
    try:
        result = subprocess.run([str(link), "serve", "--help"], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"{link} serve --help did not run: {exc}") from None
    if result.returncode != 0 or "usage:" not in result.stdout:
        raise InstallError(f"{link} serve --help failed ({result.returncode}): {result.stderr.strip()[-500:]}")


def model_settings(runtime: Runtime, entries: list[CatalogEntry]) -> str:
    """The model settings to type into GPUStack 0.7's deploy form, per catalog entry."""
    lines = [
        "Deploy a model in GPUStack 0.7 (Models > Deploy Model > Advanced) with:",
        f"  backend:          {runtime.backend}",
        f"  backend_version:  {runtime.backend_version}",
    ]
    for entry in entries:
        if entry.runtime != runtime.name:
            continue
        lines.append(f"  backend_parameters for {entry.name} ({budget_note(entry)}):")
        lines += [f"    {parameter}" for parameter in share_parameters(entry)]
    lines += [
        "The --gpu-memory-utilization=X value is the budget GPUStack's scheduler books on the GPU; plan",
        "it for your card with `vllm_paddle_ocr plan <model_path> --gpu-total <size>`.",
    ]
    return "\n".join(lines) + "\n"


def run_gpustack_command(command: str, data_dir: str | Path = DEFAULT_DATA_DIR, bin_dir: str | Path | None = None) -> int:
    """The CLI's `gpustack install|uninstall`: do it, say what was done, return an exit code."""
    pm = get_plugin_manager()
    runtime = get_runtime(pm, RUNTIME_NAME)
    directory = gpustack_bin_dir(data_dir, bin_dir)
    name = link_name(runtime)
    if command == "install":
        result = install(directory, name, find_executable(runtime.executable))
        check_runs(result.link)
        verb = "installed" if result.changed else "already installed"
        sys.stdout.write(f"{verb}: {result.link} -> {result.target}\n\n")
        sys.stdout.write(model_settings(runtime, catalog_entries(pm)))
        return 0
    if command == "uninstall":
        result = uninstall(directory, name)
        sys.stdout.write(f"removed {result.link}\n" if result.changed else f"nothing to remove at {result.link}\n")
        return 0
    sys.stderr.write(f"vllm_paddle_ocr gpustack: unknown command {command!r}; use install or uninstall\n")
    return 2

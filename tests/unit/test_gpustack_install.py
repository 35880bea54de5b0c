"""`gpustack install|uninstall`: the link GPUStack 0.7's worker runs, checked the way the worker finds it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_paddle_ocr.backends.vllm_paddle_ocr.serving import cli
from vllm_paddle_ocr.backends.vllm_paddle_ocr.deploy.gpustack_install import (
    InstallError,
    find_executable,
    gpustack_bin_dir,
    install,
    uninstall,
)
from vllm_paddle_ocr.backends.vllm_paddle_ocr.runtime import RUNTIME


def _worker_path(bin_dir: Path) -> Path:
    """Where GPUStack 0.7's worker looks for backend_version paddle_ocr: <bin_dir>/vllm_ + version."""
    return bin_dir / ("vllm_" + RUNTIME.backend_version)


def _fake_executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho 'usage: fake serve'\n")
    path.chmod(0o755)
    return path


def test_install_links_the_worker_path_to_a_runnable_executable(tmp_path, capsys):
    data_dir = tmp_path / "gpustack"
    assert cli.main(["gpustack", "install", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    link = _worker_path(data_dir / "bin")
    assert link.is_symlink() and link.exists()
    assert Path(os.readlink(link)) == find_executable(RUNTIME.executable)
    assert "backend:          vllm" in out and "backend_version:  paddle_ocr" in out
    assert "--gpu-memory-utilization=0." in out and "--max-num-batched-tokens=8192" in out
    # What the worker then runs.
    run = subprocess.run([str(link), "serve", "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: vllm_paddle_ocr serve <model_path>")


def test_install_twice_changes_nothing_and_uninstall_removes_only_the_link(tmp_path, capsys):
    data_dir = tmp_path / "gpustack"
    assert cli.main(["gpustack", "install", "--data-dir", str(data_dir)]) == 0
    link = _worker_path(data_dir / "bin")
    before = os.lstat(link)
    assert cli.main(["gpustack", "install", "--data-dir", str(data_dir)]) == 0
    assert "already installed" in capsys.readouterr().out
    assert os.lstat(link).st_ino == before.st_ino
    neighbour = _fake_executable(data_dir / "bin" / "llama-box")
    assert cli.main(["gpustack", "uninstall", "--data-dir", str(data_dir)]) == 0
    assert not os.path.lexists(link) and neighbour.exists()
    assert cli.main(["gpustack", "uninstall", "--data-dir", str(data_dir)]) == 0
    assert "nothing to remove" in capsys.readouterr().out


def test_bin_dir_option_overrides_the_data_dir(tmp_path):
    assert cli.main(["gpustack", "install", "--data-dir", str(tmp_path / "d"), "--bin-dir", str(tmp_path / "b")]) == 0
    assert _worker_path(tmp_path / "b").exists()
    assert not (tmp_path / "d").exists()
    assert gpustack_bin_dir("/var/lib/gpustack") == Path("/var/lib/gpustack/bin")


def test_a_dangling_link_is_replaced(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _worker_path(bin_dir).symlink_to(tmp_path / "old-venv" / "bin" / "vllm_paddle_ocr")
    target = _fake_executable(tmp_path / "venv" / "bin" / "vllm_paddle_ocr")
    result = install(bin_dir, _worker_path(bin_dir).name, target)
    assert result.changed and _worker_path(bin_dir).resolve() == target.resolve()


def test_a_regular_file_at_the_worker_path_is_left_alone(tmp_path, capsys):
    data_dir = tmp_path / "gpustack"
    existing = _fake_executable(_worker_path(data_dir / "bin"))
    assert cli.main(["gpustack", "install", "--data-dir", str(data_dir)]) == 1
    assert "is not a link" in capsys.readouterr().err
    assert cli.main(["gpustack", "uninstall", "--data-dir", str(data_dir)]) == 1
    assert existing.read_text().startswith("#!/bin/sh") and not existing.is_symlink()


def test_a_relative_target_is_linked_by_its_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fake_executable(tmp_path / "venv" / "bin" / "vllm_paddle_ocr")
    bin_dir = tmp_path / "gpustack" / "bin"
    result = install(bin_dir, "vllm_paddle_ocr", Path("venv/bin/vllm_paddle_ocr"))
    link = bin_dir / "vllm_paddle_ocr"
    assert link.exists() and Path(os.readlink(link)).is_absolute()
    assert result.target == tmp_path / "venv" / "bin" / "vllm_paddle_ocr"
    assert not install(bin_dir, "vllm_paddle_ocr", Path("venv/bin/vllm_paddle_ocr")).changed


def test_install_refuses_a_target_that_does_not_run(tmp_path):
    target = tmp_path / "vllm_paddle_ocr"
    target.write_text("not executable")
    with pytest.raises(InstallError, match="not an executable"):
        install(tmp_path / "bin", "vllm_paddle_ocr", target)
    assert not (tmp_path / "bin" / "vllm_paddle_ocr").exists()


def test_find_executable_prefers_this_interpreters_bin_dir_and_says_where_it_looked(tmp_path, monkeypatch):
    assert find_executable(RUNTIME.executable) == Path(sys.executable).parent.absolute() / RUNTIME.executable
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(InstallError, match=str(tmp_path / "python-bin")):
        find_executable(RUNTIME.executable, python=str(tmp_path / "python-bin" / "python"))
    fake = _fake_executable(tmp_path / "python-bin" / RUNTIME.executable)
    assert find_executable(RUNTIME.executable, python=str(tmp_path / "python-bin" / "python")) == fake


def test_uninstall_of_nothing_reports_no_change(tmp_path):
    result = uninstall(tmp_path / "bin", "vllm_paddle_ocr")
    assert not result.changed and result.target is None

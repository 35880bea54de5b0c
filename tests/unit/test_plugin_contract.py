"""The plugin contract: our runtime loads through its entry point, and a third party can add and adjust."""

import sys
from pathlib import Path

import pytest

from tests.fixtures.tiny_vlm import write_fake_vlm_config
from vllm_paddle_ocr.plugin import get_plugin_manager, hookspecs, plan_launch
from vllm_paddle_ocr.plugin.manager import PluginError, runtimes
from vllm_paddle_ocr.backends.vllm_paddle_ocr.serving.argv import parse_serve_argv

PLUGINS_DIR = Path(__file__).resolve().parent.parent / "plugins"


@pytest.fixture
def third_party_installed(tmp_path, monkeypatch):
    """Install tests/plugins/ocr_audit_plugin.py the way pip would: a dist-info with an entry point."""
    site = tmp_path / "site"
    dist = site / "ocr_audit_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ocr-audit-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[vllm_paddle_ocr]\nocr_audit = ocr_audit_plugin\n")
    (site / "ocr_audit_plugin.py").write_text((PLUGINS_DIR / "ocr_audit_plugin.py").read_text())
    monkeypatch.syspath_prepend(str(site))
    yield
    sys.modules.pop("ocr_audit_plugin", None)


@pytest.fixture
def repo(tmp_path):
    write_fake_vlm_config(tmp_path / "repo")
    return tmp_path / "repo"


def test_builtin_runtime_is_loaded_through_the_entry_point():
    pm = get_plugin_manager()
    names = [name for name, _ in pm.list_name_plugin()]
    assert "vllm_paddle_ocr" in names  # the entry point's name, not an internal registration
    runtime = runtimes(pm)["vllm_paddle_ocr"]
    assert (runtime.backend, runtime.backend_version, runtime.executable) == ("vllm", "paddle_ocr", "vllm_paddle_ocr")


def test_every_hook_is_documented_where_declared():
    for name in ("register_runtimes", "register_catalog_entries", "resolve_model", "check_compatibility",
                 "plan_vram", "build_launch_plan"):
        assert getattr(hookspecs, name).__doc__.strip()


def test_third_party_adds_a_runtime_and_adjusts_ours(third_party_installed, repo):
    pm = get_plugin_manager()
    assert set(runtimes(pm)) == {"vllm_paddle_ocr", "ocr_audit"}

    ours = plan_launch(pm, parse_serve_argv([str(repo), "--served-model-name", "ocr"]))
    assert ours.runtime == "vllm_paddle_ocr"
    assert ours.vllm_argv[-4:] != ["--enable-log-requests"]
    assert ours.vllm_argv[-1] == "--enable-log-requests"  # the wrapper adjusted our plan
    assert "audit: request logging on" in ours.notes

    theirs = plan_launch(pm, parse_serve_argv([str(repo), "--runtime", "ocr_audit"]))
    assert theirs.runtime == "ocr_audit"
    assert theirs.vllm_argv[0] == "python3"
    assert "--enable-log-requests" not in theirs.vllm_argv


def test_without_the_third_party_our_plan_is_untouched(repo):
    plan = plan_launch(get_plugin_manager(), parse_serve_argv([str(repo)]))
    assert "--enable-log-requests" not in plan.vllm_argv


def test_unknown_runtime_lists_the_installed_ones(repo):
    with pytest.raises(PluginError, match="no runtime named 'nope'; installed runtimes: vllm_paddle_ocr"):
        plan_launch(get_plugin_manager(), parse_serve_argv([str(repo), "--runtime", "nope"]))

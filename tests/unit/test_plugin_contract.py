"""The plugin contract: our runtime loads through its entry point, and a third party can add and adjust."""

import inspect
import sys
from pathlib import Path

import pytest

from tests.fixtures.tiny_vlm import write_fake_vlm_config
from vllm_paddle_ocr.backends.vllm_paddle_ocr.runtime import PaddleOcrRuntime
from vllm_paddle_ocr.backends.vllm_paddle_ocr.serving.argv import parse_serve_argv
from vllm_paddle_ocr.plugin import get_plugin_manager, hookimpl, hookspecs, plan_launch
from vllm_paddle_ocr.plugin.errors import IncompatibleEngine, PluginError
from vllm_paddle_ocr.plugin.manager import runtimes
from vllm_paddle_ocr.plugin.records import Compatibility, ModelRepo, Runtime

PLUGINS_DIR = Path(__file__).resolve().parent.parent / "plugins"
LAUNCH_HOOKS = ("resolve_model", "detect_engine", "check_compatibility", "plan_vram", "build_launch_plan")


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
    assert isinstance(runtime, Runtime)
    assert (runtime.backend, runtime.backend_version, runtime.executable) == ("vllm", "paddle_ocr", "vllm_paddle_ocr")


def test_every_hook_is_typed_and_documented_where_declared():
    declared = {name for name, value in vars(hookspecs).items() if hasattr(value, "vllm_paddle_ocr_spec")}
    assert declared == {"register_runtimes", "register_catalog_entries", *LAUNCH_HOOKS}
    for name in declared:
        spec = getattr(hookspecs, name)
        assert spec.__doc__ and spec.__doc__.strip(), name
        signature = inspect.signature(spec)
        assert signature.return_annotation is not inspect.Signature.empty, name
        assert all(p.annotation is not inspect.Parameter.empty for p in signature.parameters.values()), name
    # The runtime object answers every launch hook itself, with the hook's parameters but the runtime.
    for name in LAUNCH_HOOKS:
        hook_params = list(inspect.signature(getattr(hookspecs, name)).parameters)[1:]
        assert list(inspect.signature(getattr(Runtime, name)).parameters)[1:] == hook_params, name


def test_third_party_adds_a_runtime_and_adjusts_ours(third_party_installed, repo):
    pm = get_plugin_manager()
    assert set(runtimes(pm)) == {"vllm_paddle_ocr", "ocr_audit"}

    ours = plan_launch(pm, parse_serve_argv([str(repo), "--served-model-name", "ocr"]))
    assert ours.runtime == "vllm_paddle_ocr"
    assert ours.vllm_argv.count("--enable-log-requests") == 1
    assert ours.vllm_argv[-1] == "--enable-log-requests"  # the wrapper adjusted our plan
    assert "audit: request logging on" in ours.notes

    theirs = plan_launch(pm, parse_serve_argv([str(repo), "--runtime", "ocr_audit"]))
    assert theirs.runtime == "ocr_audit"
    assert theirs.vllm_argv[0] == "python3"  # its own method answered build_launch_plan
    assert "--enable-log-requests" not in theirs.vllm_argv


def test_without_the_third_party_our_plan_is_untouched(repo):
    plan = plan_launch(get_plugin_manager(), parse_serve_argv([str(repo)]))
    assert "--enable-log-requests" not in plan.vllm_argv
    assert plan.runtime == "vllm_paddle_ocr" and plan.model.vlm_dir == repo


def test_a_plugin_answers_before_the_runtime_and_none_passes_the_question_on(repo, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    write_fake_vlm_config(elsewhere)
    asked: list[str] = []

    class Redirect:
        @hookimpl
        def resolve_model(self, runtime, request):
            asked.append(runtime.name)
            if request.model_path.name != "alias":
                return None  # not ours: the runtime answers
            return PaddleOcrRuntime().resolve_model(request.model_copy(update={"model_path": elsewhere}))

        @hookimpl
        def check_compatibility(self, runtime, model, engine):
            return Compatibility(supported=False, reason="site policy: no PaddleOCR-VL today")

    pm = get_plugin_manager()
    plugin = pm.register(Redirect())
    with pytest.raises(IncompatibleEngine, match="site policy"):
        plan_launch(pm, parse_serve_argv([str(tmp_path / "alias")]))
    pm.unregister(name=plugin)
    pm.register(type("OnlyRedirect", (), {"resolve_model": Redirect.resolve_model})())
    assert plan_launch(pm, parse_serve_argv([str(repo)])).model.vlm_dir == repo
    assert plan_launch(pm, parse_serve_argv([str(tmp_path / "alias")])).model.vlm_dir == elsewhere
    assert asked == ["vllm_paddle_ocr"] * 3


def test_a_runtime_that_answers_nothing_is_named(repo):
    class Silent(PaddleOcrRuntime):
        name = "silent"

        def resolve_model(self, request) -> ModelRepo:
            return None  # type: ignore[return-value]

    pm = get_plugin_manager()
    pm.register(type("P", (), {"register_runtimes": hookimpl(lambda self, register: register(Silent()))})())
    with pytest.raises(PluginError, match="no plugin answered resolve_model for runtime 'silent'"):
        plan_launch(pm, parse_serve_argv([str(repo), "--runtime", "silent"]))


def test_unknown_runtime_lists_the_installed_ones(repo):
    with pytest.raises(PluginError, match="no runtime named 'nope'; installed runtimes: vllm_paddle_ocr"):
        plan_launch(get_plugin_manager(), parse_serve_argv([str(repo), "--runtime", "nope"]))


def test_something_that_is_not_a_runtime_is_refused_by_name():
    pm = get_plugin_manager()
    pm.register(type("P", (), {"register_runtimes": hookimpl(lambda self, register: register("ocr"))})())
    with pytest.raises(PluginError, match="registered 'ocr', which is not a Runtime"):
        runtimes(pm)

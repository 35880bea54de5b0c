"""GPUStack's argv contract: our flags taken out, vLLM's kept verbatim in both --k v and --k=v forms."""

from pathlib import Path

import pytest

from vllm_paddle_ocr.backends.vllm_paddle_ocr.serving.argv import ServeArgsError, parse_serve_argv, split_flags

GPUSTACK_ARGV = [
    "/var/lib/gpustack/cache/huggingface/PaddlePaddle/PaddleOCR-VL",
    "--max-model-len", "8192",
    "--gpu-memory-utilization=0.3",
    "--trust-remote-code",
    "--dtype", "bfloat16",
    "--host", "0.0.0.0", "--port", "40001", "--served-model-name", "ocr",
]


def test_gpustack_argv_is_split_into_ours_and_vllms():
    request = parse_serve_argv(GPUSTACK_ARGV)
    assert request.model_path == Path(GPUSTACK_ARGV[0])
    assert (request.host, request.port, request.served_model_names) == ("0.0.0.0", 40001, ["ocr"])
    tokens = [t for flag in request.vllm_flags for t in flag.tokens()]
    assert tokens == ["--max-model-len", "8192", "--gpu-memory-utilization=0.3", "--trust-remote-code", "--dtype", "bfloat16"]
    assert request.user_value("gpu-memory-utilization") == "0.3"
    assert request.user_value("max-model-len") == "8192"


def test_own_flags_are_consumed_and_typed():
    request = parse_serve_argv(
        ["/m", "--concurrency=8", "--gpu-total", "80GiB", "--layout-model-dir", "/layout", "--allow-url-input",
         "--url-allow-hosts", "a.example,b.example", "--max-pages", "50", "--enforce-eager"]
    )
    assert request.concurrency == 8
    assert request.gpu_total_bytes == 80 * 1024**3
    assert request.layout_model_dir == Path("/layout")
    assert request.allow_url_input is True
    assert request.url_allow_hosts == ["a.example", "b.example"]
    assert request.max_pages == 50
    assert [f.name for f in request.vllm_flags] == ["--enforce-eager"]


def test_served_model_name_takes_several_names_and_negative_numbers_are_values():
    request = parse_serve_argv(["/m", "--served-model-name", "a", "b", "--seed", "-1"])
    assert request.served_model_names == ["a", "b"]
    assert request.user_value("seed") == "-1"


def test_short_aliases_and_no_prefix_share_a_key():
    _, flags = split_flags(["-tp", "2", "--no-enable-prefix-caching", "--max_model_len=4096"])
    assert [f.key for f in flags] == ["tensor-parallel-size", "enable-prefix-caching", "max-model-len"]
    assert flags[2].tokens() == ["--max_model_len=4096"]


def test_model_can_come_from_the_model_flag():
    assert parse_serve_argv(["--model", "/m", "--port", "9"]).model_path == Path("/m")


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "missing the model path"),
        (["/a", "/b"], "expected one model path"),
        (["/m", "--concurrency", "0"], "--concurrency '0': must be at least 1"),
        (["/m", "--gpu-total", "lots"], "--gpu-total"),
        (["/m", "--port", "x"], "--port 'x'"),
        (["/m", "--allow-url-input", "yes"], "is a switch"),
        (["/m", "--served-model-name"], "at least one name"),
    ],
)
def test_bad_argv_says_what_is_wrong(argv, message):
    with pytest.raises(ServeArgsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_serve_argv(argv)


def test_job_and_admission_options_are_consumed_and_typed():
    request = parse_serve_argv(
        ["/m", "--job-store", "redis://127.0.0.1:6379/0", "--job-retention", "600", "--max-queued-jobs", "7",
         "--max-active-requests=3", "--max-active-pages", "40", "--max-held-bytes", "1GiB", "--api-key", "k"]
    )
    assert request.job_store == "redis://127.0.0.1:6379/0"
    assert (request.job_retention_s, request.max_queued_jobs) == (600.0, 7)
    assert (request.max_active_requests, request.max_active_pages, request.max_held_bytes) == (3, 40, 1024**3)
    assert request.api_key.get_secret_value() == "k"
    assert request.vllm_flags == []


@pytest.mark.parametrize("argv", [["--job-retention", "0"], ["--max-active-requests", "0"], ["--max-held-bytes", "lots"]])
def test_job_and_admission_options_refuse_values_they_cannot_take(argv):
    with pytest.raises(ServeArgsError):
        parse_serve_argv(["/m", *argv])

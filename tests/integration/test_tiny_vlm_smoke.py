"""The tiny PaddleOCR-VL loads with the real transformers and vLLM code paths, prompts included."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.documents import make_page_image
from tests.fixtures.tiny_vlm import (
    IMAGE_TOKEN,
    SPECIAL_TOKENS,
    build_tiny_paddleocr_vl,
    chat_template_text,
    write_tiny_vlm_files,
)

pytestmark = pytest.mark.integration

# Head sizes vLLM's CPU attention backend accepts; any other one fails on the first request.
CPU_ATTENTION_HEAD_SIZES = {32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512}
IMAGE_MARKER = "<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>"


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_vlm_files(tmp_path_factory.mktemp("tiny-vlm"))


@pytest.fixture(scope="module")
def cached_repo(tmp_path_factory: pytest.TempPathFactory, tiny_files: Path) -> Path:
    """The tiny model in a Hugging Face cache snapshot, where every file is a symlink."""
    return build_tiny_paddleocr_vl(
        tmp_path_factory.mktemp("hf-cache"), layout="hf_cache", prebuilt=tiny_files
    )


def _user_turn(text: str = "OCR:") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def test_config_fits_the_cpu_engine(tiny_files: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_files)
    tokenizer = AutoTokenizer.from_pretrained(tiny_files)
    text = config.text_config
    assert config.architectures == ["PaddleOCRVLForConditionalGeneration"]
    assert text.head_dim in CPU_ATTENTION_HEAD_SIZES
    assert sum(text.rope_parameters["mrope_section"]) * 2 == text.head_dim
    assert config.image_token_id == tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert text.vocab_size >= len(tokenizer)


def test_special_tokens_stay_whole(tiny_files: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_files)
    for token in SPECIAL_TOKENS:
        assert tokenizer.tokenize(token) == [token]
    assert tokenizer.image_token == IMAGE_TOKEN
    ids = tokenizer("Table Recognition: 42", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == "Table Recognition: 42"


@pytest.mark.parametrize("version", ["0.9B", "1.5"])
def test_processor_renders_our_template_and_expands_the_image(
    tmp_path: Path, tiny_files: Path, version: str
) -> None:
    from transformers import AutoProcessor

    repo = build_tiny_paddleocr_vl(tmp_path, layout="hf_cache", version=version, prebuilt=tiny_files)
    processor = AutoProcessor.from_pretrained(repo)
    assert processor.chat_template == chat_template_text(version)
    prompt = processor.apply_chat_template(_user_turn(), add_generation_prompt=True, tokenize=False)
    ending = "Assistant: " if version == "0.9B" else "Assistant:\n"
    assert prompt == f"<|begin_of_sentence|>User: {IMAGE_MARKER}OCR:\n{ending}"

    # 224x112 fits between the tiny min and max pixels: an 8x16 patch grid, 2x2 merged = 32 tokens.
    inputs = processor(text=[prompt], images=[make_page_image(224, 112)], return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, 8, 16]]
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == 32


def test_random_weights_generate_tokens(cached_repo: Path) -> None:
    import torch
    from transformers import AutoProcessor, PaddleOCRVLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(cached_repo)
    model = PaddleOCRVLForConditionalGeneration.from_pretrained(cached_repo).eval()
    prompt = processor.apply_chat_template(_user_turn(), add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], images=[make_page_image(224, 112)], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


@pytest.mark.parametrize("version", ["0.9B", "1.5"])
def test_vllm_passes_content_as_parts_to_our_templates(version: str) -> None:
    """vLLM gives a template image parts only when it sees a loop over message content."""
    hf_renderer = pytest.importorskip("vllm.renderers.hf")
    detect = getattr(hf_renderer, "_detect_content_format", None)
    if detect is None:
        pytest.fail("vLLM moved its chat-template content-format detection; update this test")
    assert detect(chat_template_text(version), default="string") == "openai"

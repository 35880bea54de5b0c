"""The generation budget: each block asks for what the request asks, capped to what the served context leaves."""

import base64
import io

from PIL import Image

import pytest
from hypothesis import given, settings as hypothesis_settings
from hypothesis import strategies as st

from tests.unit.test_proxy_app import PNG, error_of, scenario
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.recognition.budget import new_tokens, prompt_tokens, resized
from vllm_paddle_ocr.backends.vllm_paddle_ocr.recipe import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_PIXELS,
    PIXELS_PER_IMAGE_TOKEN,
    PROMPT_TEXT_TOKENS,
)


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    width=st.integers(1, 5000),
    height=st.integers(1, 5000),
    pixels=st.sampled_from([(DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS), (112_896, 1_605_632), (3136, 50_176)]),
)
def test_resize_rule_is_the_models(width, height, pixels):
    """The same rule as vLLM's PaddleOCR-VL processor, checked against vLLM's own function."""
    models = pytest.importorskip("vllm.model_executor.models.paddleocr_vl")
    if max(width, height) / min(width, height) > 150:
        return  # the pipeline pads pictures below 150:1 before they are sent
    h_bar, w_bar = models.smart_resize(height, width, min_pixels=pixels[0], max_pixels=pixels[1])
    assert resized(width, height, *pixels) == (w_bar, h_bar)
    assert prompt_tokens(width, height, *pixels) == w_bar * h_bar // PIXELS_PER_IMAGE_TOKEN + PROMPT_TEXT_TOKENS


def test_new_tokens_are_capped_by_the_context_left():
    assert new_tokens(4096, 1312, None) == 4096
    assert new_tokens(4096, 1312, 16384) == 4096
    assert new_tokens(4096, 1312, 2048) == 736
    assert new_tokens(100, 1312, 2048) == 100
    assert new_tokens(4096, 2048, 2048) is None
    assert new_tokens(4096, 2047, 2048) == 1


def test_a_small_served_context_caps_every_block_request():
    """Each block asks for exactly what 2048 tokens leave after its own picture's tokens (vLLM's count)."""
    models = pytest.importorskip("vllm.model_executor.models.paddleocr_vl")

    async def check(client, fake, state, app):
        answer = await client.post("/layout-parsing", json={"file": PNG, "visualize": False})
        return answer, fake.bodies

    answer, bodies = scenario(check, max_model_len=2048)
    assert answer.status_code == 200, answer.text
    assert len(bodies) > 3
    for body in bodies:
        url = body["messages"][0]["content"][0]["image_url"]["url"]
        width, height = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size
        pixels = body["mm_processor_kwargs"]
        h_bar, w_bar = models.smart_resize(height, width, min_pixels=pixels["min_pixels"], max_pixels=pixels["max_pixels"])
        image_tokens = h_bar * w_bar // PIXELS_PER_IMAGE_TOKEN
        assert body["max_completion_tokens"] == 2048 - image_tokens - PROMPT_TEXT_TOKENS


def test_a_context_the_request_fits_in_leaves_max_new_tokens_as_asked():
    async def check(client, fake, state, app):
        await client.post("/layout-parsing", json={"file": PNG, "visualize": False, "maxNewTokens": 321})
        return fake.bodies

    bodies = scenario(check, max_model_len=16384)
    assert bodies and {body["max_completion_tokens"] for body in bodies} == {321}


def test_a_block_whose_prompt_alone_overflows_the_context_is_a_422_naming_page_block_and_flag():
    async def check(client, fake, state, app):
        answer = await client.post("/layout-parsing", json={"file": PNG, "useLayoutDetection": False, "promptLabel": "ocr"})
        return answer, fake.bodies

    answer, bodies = scenario(check, max_model_len=300)
    message = error_of(answer, 422)
    assert message.startswith("Page 1, block 0 (ocr at [0, 0, 600, 800])"), message
    assert "--max-model-len" in message and "300" in message
    assert bodies == []  # nothing was sent that vLLM would refuse

"""How many new tokens a block may ask for: what the request asks, capped to what the served context leaves.

vLLM refuses a request whose prompt plus `max_completion_tokens` exceeds its --max-model-len. The
prompt of a block is its picture's image tokens (the model's resize rule: sides rounded to 28 pixels,
the area held between min_pixels and max_pixels, one token per 28x28) plus a short text.
"""

from __future__ import annotations

import math

from ...recipe import PIXELS_PER_IMAGE_TOKEN, PROMPT_TEXT_TOKENS

FACTOR = 28  # patch 14 x spatial merge 2: the model resizes pictures to multiples of this


def resized(width: int, height: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) the model's processor resizes a picture to before counting its tokens."""
    if height < FACTOR:
        width, height = round(width * FACTOR / height), FACTOR
    if width < FACTOR:
        width, height = FACTOR, round(height * FACTOR / width)
    w_bar = round(width / FACTOR) * FACTOR
    h_bar = round(height / FACTOR) * FACTOR
    if w_bar * h_bar > max_pixels:
        beta = math.sqrt(width * height / max_pixels)
        w_bar = math.floor(width / beta / FACTOR) * FACTOR
        h_bar = math.floor(height / beta / FACTOR) * FACTOR
    elif w_bar * h_bar < min_pixels:
        beta = math.sqrt(min_pixels / (width * height))
        w_bar = math.ceil(width * beta / FACTOR) * FACTOR
        h_bar = math.ceil(height * beta / FACTOR) * FACTOR
    return w_bar, h_bar


def prompt_tokens(width: int, height: int, min_pixels: int, max_pixels: int) -> int:
    """Tokens of one block's prompt: its picture's image tokens plus the text around them."""
    w_bar, h_bar = resized(width, height, min_pixels, max_pixels)
    return w_bar * h_bar // PIXELS_PER_IMAGE_TOKEN + PROMPT_TEXT_TOKENS


def new_tokens(asked: int, prompt: int, max_model_len: int | None) -> int | None:
    """The request's max new tokens capped to what the context leaves; None when the prompt alone fills it."""
    if max_model_len is None:
        return asked
    room = max_model_len - prompt
    return min(asked, room) if room >= 1 else None

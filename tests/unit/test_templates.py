"""The packaged chat templates render PaddleOCR-VL's exact prompt format."""

from __future__ import annotations

from importlib import resources

import jinja2.ext
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

BOS = "<|begin_of_sentence|>"
IMAGE = "<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>"

# Template file -> the text that opens an assistant turn (and ends a generation prompt).
ASSISTANT = {
    "paddleocr_vl_0.9b.jinja": "Assistant: ",
    "paddleocr_vl_1.5.jinja": "Assistant:\n",
}


def _compile(name: str) -> jinja2.Template:
    """Compile the way transformers does: sandboxed, trim_blocks and lstrip_blocks on."""
    source = resources.files("vllm_paddle_ocr.templates").joinpath(name).read_text(encoding="utf-8")
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    return env.from_string(source)


def _render(name: str, messages: list[dict], add_generation_prompt: bool = True) -> str:
    return _compile(name).render(messages=messages, add_generation_prompt=add_generation_prompt)


def _image_part(kind: str = "image_url") -> dict:
    if kind == "image":
        return {"type": "image"}
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


@pytest.fixture(params=sorted(ASSISTANT))
def template(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param, ASSISTANT[request.param]


def test_one_image_then_task_prompt(template: tuple[str, str]) -> None:
    name, assistant = template
    messages = [{"role": "user", "content": [_image_part(), {"type": "text", "text": "OCR:"}]}]
    assert _render(name, messages) == f"{BOS}User: {IMAGE}OCR:\n{assistant}"


def test_images_come_before_text_whatever_the_part_order(template: tuple[str, str]) -> None:
    name, assistant = template
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "OCR:"}, _image_part("image")]}
    ]
    assert _render(name, messages) == f"{BOS}User: {IMAGE}OCR:\n{assistant}"


def test_text_only_string_content(template: tuple[str, str]) -> None:
    name, assistant = template
    messages = [{"role": "user", "content": "Hello"}]
    assert _render(name, messages) == f"{BOS}User: Hello\n{assistant}"


def test_text_only_list_content_joins_parts(template: tuple[str, str]) -> None:
    name, assistant = template
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Table "}, {"type": "text", "text": "Recognition:"}],
        }
    ]
    assert _render(name, messages) == f"{BOS}User: Table Recognition:\n{assistant}"


def test_system_message_is_its_text_and_a_newline(template: tuple[str, str]) -> None:
    name, assistant = template
    messages = [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": [_image_part(), {"type": "text", "text": "OCR:"}]},
    ]
    assert _render(name, messages) == f"{BOS}Be exact.\nUser: {IMAGE}OCR:\n{assistant}"


def test_system_message_as_parts(template: tuple[str, str]) -> None:
    name, assistant = template
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be exact."}]},
        {"role": "user", "content": "OCR:"},
    ]
    assert _render(name, messages) == f"{BOS}Be exact.\nUser: OCR:\n{assistant}"


def test_multi_turn_assistant_answer_ends_with_eos(template: tuple[str, str]) -> None:
    name, assistant = template
    messages = [
        {"role": "user", "content": [_image_part(), {"type": "text", "text": "OCR:"}]},
        {"role": "assistant", "content": "Invoice 42"},
        {"role": "user", "content": [{"type": "text", "text": "Table Recognition:"}]},
    ]
    assert _render(name, messages) == (
        f"{BOS}User: {IMAGE}OCR:\n{assistant}Invoice 42</s>"
        f"User: Table Recognition:\n{assistant}"
    )


def test_assistant_answer_as_parts(template: tuple[str, str]) -> None:
    name, assistant = template
    messages = [
        {"role": "user", "content": "OCR:"},
        {"role": "assistant", "content": [{"type": "text", "text": "Invoice 42"}]},
    ]
    assert _render(name, messages, add_generation_prompt=False) == (
        f"{BOS}User: OCR:\n{assistant}Invoice 42</s>"
    )


def test_several_images_each_get_a_marker(template: tuple[str, str]) -> None:
    name, assistant = template
    messages = [
        {
            "role": "user",
            "content": [
                _image_part(),
                {"type": "text", "text": "OCR:"},
                _image_part("image"),
                _image_part(),
            ],
        }
    ]
    assert _render(name, messages) == f"{BOS}User: {IMAGE}{IMAGE}{IMAGE}OCR:\n{assistant}"


def test_no_generation_prompt_stops_after_the_user_turn(template: tuple[str, str]) -> None:
    name, _ = template
    messages = [{"role": "user", "content": [_image_part(), {"type": "text", "text": "OCR:"}]}]
    assert _render(name, messages, add_generation_prompt=False) == f"{BOS}User: {IMAGE}OCR:\n"


def test_generation_prompt_defaults_to_off_when_not_passed(template: tuple[str, str]) -> None:
    name, _ = template
    rendered = _compile(name).render(messages=[{"role": "user", "content": "OCR:"}])
    assert rendered == f"{BOS}User: OCR:\n"


def test_the_versions_differ_only_in_the_assistant_prefix() -> None:
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": [_image_part(), {"type": "text", "text": "OCR:"}]},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "Q"},
    ]
    old = _render("paddleocr_vl_0.9b.jinja", messages)
    new = _render("paddleocr_vl_1.5.jinja", messages)
    assert old.endswith("Assistant: ") and new.endswith("Assistant:\n")
    assert old.replace("Assistant: ", "Assistant:\n") == new

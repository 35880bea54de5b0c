"""Malformed bodies on the PaddleX endpoints: each one a 4xx in PaddleX's shape, never a 500 or a hang."""

import json

from hypothesis import HealthCheck, given, settings as hypothesis_settings
from hypothesis import strategies as st

from tests.unit.test_proxy_app import PNG, error_of, scenario
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.endpoints.paddlex import decode_json
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.errors import InputError
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.protocol import MAX_JSON_DEPTH, MAX_LOG_ID_LENGTH

ENDPOINTS = ("/layout-parsing", "/restructure-pages")


def nested(levels: int, inner: str = "1") -> bytes:
    return ("[" * levels + inner + "]" * levels).encode()


def test_deep_nesting_is_a_422_naming_the_limit_on_every_endpoint():
    bodies = {
        "far-past-the-parser": b'{"file": ' + nested(100_000) + b"}",
        "just-past-the-limit": b'{"file": "x", "vlmExtraArgs": {"a": ' + nested(MAX_JSON_DEPTH) + b"}}",
    }

    async def check(client, fake, state, app):
        answers = {}
        for path in ENDPOINTS:
            for name, body in bodies.items():
                answers[path, name] = await client.post(path, content=body, headers={"content-type": "application/json"})
        return answers

    for (path, name), answer in scenario(check).items():
        message = error_of(answer, 422)
        assert f"nested deeper than {MAX_JSON_DEPTH} levels" in message, (path, name, message)


def test_nesting_within_the_limit_is_parsed():
    assert decode_json(b'{"a": ' + nested(MAX_JSON_DEPTH - 2) + b"}")["a"] is not None


def test_an_overlong_log_id_is_a_422_and_never_echoed():
    long_id = "x" * (MAX_LOG_ID_LENGTH + 1)

    async def check(client, fake, state, app):
        parse = await client.post("/layout-parsing", json={"file": PNG, "logId": long_id})
        restructure = await client.post("/restructure-pages", json={"pages": [], "logId": long_id})
        fits = await client.post("/layout-parsing", json={"file": PNG, "logId": "y" * MAX_LOG_ID_LENGTH, "visualize": False})
        return parse, restructure, fits

    parse, restructure, fits = scenario(check)
    for answer in (parse, restructure):
        errors = json.loads(error_of(answer, 422))
        assert errors[0]["loc"] == "body.logId" and str(MAX_LOG_ID_LENGTH) in errors[0]["msg"]
        assert answer.json()["logId"] != long_id
    assert fits.status_code == 200 and fits.json()["logId"] == "y" * MAX_LOG_ID_LENGTH


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    ["file", "fileType", "layoutThreshold", "layoutUnclipRatio", "layoutMergeBboxesMode", "vlmExtraArgs", "pageRange",
     "maxNewTokens", "markdownIgnoreLabels", "promptLabel", "logId", "pages", "visualize", "minPixels"]
)
BODIES = st.one_of(
    st.dictionaries(FIELDS, JSON_VALUES, max_size=5).map(lambda body: json.dumps(body).encode()),
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=64),
)


def test_arbitrary_bodies_never_get_a_5xx():
    @hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=BODIES, path=st.sampled_from(ENDPOINTS))
    def sample(body, path):
        samples.append((path, body))

    samples: list[tuple[str, bytes]] = []
    sample()

    async def check(client, fake, state, app):
        answers = []
        for path, body in samples:
            answer = await client.post(path, content=body, headers={"content-type": "application/json"})
            answers.append((path, body, answer))
        return answers

    for path, body, answer in scenario(check):
        assert answer.status_code < 500, (path, body, answer.text)
        if answer.status_code >= 400:
            error_of(answer, answer.status_code)


def test_decode_json_refuses_non_json_as_input_errors():
    for body in (b"\xff\xfe", b"{", nested(5000)):
        try:
            decode_json(body)
        except InputError as exc:
            assert exc.status_code == 422
        else:
            raise AssertionError(f"{body[:20]!r} was accepted")

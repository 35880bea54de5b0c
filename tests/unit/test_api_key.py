"""--api-key: the proxy asks for it on every route that reaches the model or a user's data, and carries it to vLLM.

Open without a key: the probes (/health, /v1/models) and what holds no user data (the page, its assets, the
API docs), which a browser loads before it can send a header.
"""

from tests.unit.test_proxy_app import PNG, error_of, scenario

KEY = "s3cret"
GOOD = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": "PaddleOCR-VL-0.9B", "messages": [{"role": "user", "content": "hi"}]}


def test_routes_refuse_a_missing_or_wrong_key_and_admit_the_right_one():
    async def check(client, fake, state, app):
        refused = {
            "parse": await client.post("/layout-parsing", json={"file": PNG}),
            "wrong": await client.post("/layout-parsing", json={"file": PNG}, headers={"Authorization": "Bearer nope"}),
            "basic": await client.post("/layout-parsing", json={"file": PNG}, headers={"Authorization": f"Basic {KEY}"}),
            "restructure": await client.post("/restructure-pages", json={"pages": []}),
            "metrics": await client.get("/metrics"),
            "job": await client.get("/layout-parsing/jobs/0123456789abcdef"),
            "unknown": await client.get("/tokenize"),
        }
        chat_refused = await client.post("/v1/chat/completions", json=CHAT)
        admitted = await client.post("/layout-parsing", json={"file": PNG, "visualize": False}, headers=GOOD)
        chat = await client.post("/v1/chat/completions", json=CHAT, headers=GOOD)
        metrics = await client.get("/metrics", headers=GOOD)
        return refused, chat_refused, admitted, chat, metrics, fake

    refused, chat_refused, admitted, chat, metrics, fake = scenario(check, api_key=KEY)
    for name, answer in refused.items():
        assert "API key" in error_of(answer, 401), name
        assert answer.headers["www-authenticate"] == "Bearer"
    assert chat_refused.status_code == 401 and "API key" in chat_refused.json()["error"]["message"]
    assert admitted.status_code == 200, admitted.text
    assert chat.status_code == 200 and metrics.status_code == 200
    # nothing refused reached vLLM; everything admitted reached it with the key
    chats = [seen for seen in fake.headers_seen if "content-length" in seen]
    assert chats and all(seen.get("authorization") == f"Bearer {KEY}" for seen in fake.headers_seen)


def test_the_page_and_the_docs_load_without_a_key():
    async def check(client, fake, state, app):
        paths = ("/", "/ui", "/docs", "/openapi.json", "/ui/assets/page.js")
        return {path: (await client.get(path)).status_code for path in paths}, fake.bodies

    statuses, reached_the_model = scenario(check, api_key=KEY)
    assert statuses == dict.fromkeys(statuses, 200)
    assert reached_the_model == []


def test_probes_answer_without_a_key_and_vllm_still_gets_it():
    async def check(client, fake, state, app):
        health = await client.get("/health")
        models = await client.get("/v1/models")
        return health, models, fake.headers_seen

    health, models, seen = scenario(check, api_key=KEY)
    assert health.status_code == 200 and models.status_code == 200
    models_call = [headers for headers in seen if headers.get("authorization")]
    assert models_call and models_call[-1]["authorization"] == f"Bearer {KEY}"


def test_without_a_key_nothing_is_asked_and_nothing_is_added():
    async def check(client, fake, state, app):
        answer = await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer clients-own"})
        return answer, fake.headers_seen

    answer, seen = scenario(check)
    assert answer.status_code == 200
    assert seen[-1]["authorization"] == "Bearer clients-own"  # passed through untouched


def test_the_guard_opens_only_the_paths_and_prefixes_it_is_given():
    from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.auth import OPEN_PATHS, ApiKeyGuard

    guard = ApiKeyGuard(KEY, open_paths=OPEN_PATHS | {"/"}, open_prefixes=("/ui/assets/",))

    def scope(path, authorization=None):
        headers = [(b"authorization", authorization.encode())] if authorization else []
        return {"type": "http", "path": path, "headers": headers}

    assert guard.allows(scope("/")) and guard.allows(scope("/ui/assets/page.js")) and guard.allows(scope("/health"))
    assert not guard.allows(scope("/ui/assetsX")) and not guard.allows(scope("/layout-parsing"))
    assert guard.allows(scope("/layout-parsing", f"bearer {KEY}"))
    assert not guard.allows(scope("/layout-parsing", f"Bearer {KEY}x"))
    assert ApiKeyGuard(None).allows(scope("/layout-parsing"))

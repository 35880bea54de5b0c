"""The proxy app over real HTTP: passthrough, readiness, PaddleX endpoints and their errors, health, metrics.

vLLM is a small real server on loopback (tests/fixtures/fake_vllm.py) and the layout model a fake
detector returning fixed boxes; both the upstream and the proxy run under uvicorn.
"""

import asyncio
import base64
import io
import json

import httpx

from tests.fixtures.documents import make_page_image, make_pdf, pixel_bomb_png, png_bytes
from tests.fixtures.fake_layout import FakeDetector, load_paddlex_serving_schema, paddlex_result_response
from tests.fixtures.fake_vllm import FakeVllm, prompt_of, serve_on_loopback
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.app import create_app
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.state import UpstreamState
from vllm_paddle_ocr.plugin.records import ProxySettings

PNG = base64.b64encode(png_bytes(make_page_image(600, 800))).decode()


def settings(upstream: str, **overrides) -> ProxySettings:
    values = dict(
        host="127.0.0.1", port=0, upstream_url=upstream, served_model_name="PaddleOCR-VL-0.9B",
        model_aliases=["PaddleOCR-VL-0.9B"], model_version="0.9B", layout_dir="/models/PP-DocLayoutV2",
        layout_model_name="PP-DocLayoutV2", layout_device="cpu", concurrency=4, data_dir="/tmp/data",
        max_body_bytes=20 * 1024**2,
        max_pages=5, max_page_pixels=178_956_970, allow_url_input=False, url_allow_hosts=[],
        ready_timeout_s=10.0, shutdown_grace_s=5.0,
    )  # fmt: skip
    values.update(overrides)
    return ProxySettings(**values)


async def answer_by_prompt(body):
    return "<fcel>A<fcel>B<nl>" if prompt_of(body) == "Table Recognition:" else "Some words"


def scenario(check, *, fake=None, ready=True, detector="fake", **overrides):
    """Run `check(client, fake, state, app)` against a proxy in front of a fake vLLM."""
    fake = fake or FakeVllm(answer=answer_by_prompt)

    async def main():
        async with serve_on_loopback(fake) as upstream:
            state = UpstreamState()
            if ready:
                state.mark_ready()
            app = create_app(
                settings(upstream, **overrides),
                state=state,
                detector=FakeDetector() if detector == "fake" else detector,
            )
            async with serve_on_loopback(app) as proxy:
                async with httpx.AsyncClient(base_url=proxy, timeout=30) as client:
                    return await check(client, fake, state, app)

    return asyncio.run(main())


def error_of(response, status):
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert set(body) == {"logId", "errorCode", "errorMsg"}
    assert body["errorCode"] == status
    return body["errorMsg"]


# ---------------------------------------------------------------- passthrough and readiness


def test_v1_answers_503_until_ready_and_again_when_vllm_failed():
    async def check(client, fake, state, app):
        starting = await client.get("/v1/models")
        state.mark_ready()
        ready = await client.get("/v1/models")
        state.mark_failed("vLLM exited with code 1")
        failed = await client.get("/v1/models")
        return starting, ready, failed

    starting, ready, failed = scenario(check, ready=False)
    assert starting.status_code == 503 and "still starting" in starting.json()["error"]["message"]
    assert ready.status_code == 200 and ready.json()["data"][0]["id"] == "PaddleOCR-VL-0.9B"
    assert failed.status_code == 503 and "vLLM exited with code 1" in failed.json()["error"]["message"]


def test_requests_pass_through_unchanged_both_ways():
    payload = bytes(range(256)) * 50

    async def chunks():
        for k in range(0, len(payload), 1000):
            yield payload[k : k + 1000]

    async def check(client, fake, state, app):
        plain = await client.put("/v1/echo?x=1&y=%20z", content=payload, headers={"x-custom": "kept"})
        streamed = await client.post("/v1/echo", content=chunks())
        missing = await client.get("/v1/nowhere")
        other = await client.get("/tokenize")
        return plain, streamed, missing, other, fake.headers_seen

    plain, streamed, missing, other, seen = scenario(check)
    assert plain.status_code == 200 and plain.content == payload + b"x=1&y=%20z"
    assert plain.headers["x-echo-method"] == "PUT"
    assert plain.headers["content-type"] == "application/octet-stream"
    assert seen[0]["x-custom"] == "kept"
    assert streamed.content == payload
    # vLLM's own 404 body, not the proxy's
    assert missing.status_code == 404 and missing.json() == {"detail": "Not Found"}
    assert other.status_code == 404 and other.json() == {"detail": "Not Found"}


def test_sse_is_streamed_chunk_by_chunk():
    fake = FakeVllm(stream_chunks=4, stream_interval_s=0.3)

    async def check(client, fake, state, app):
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        events = []
        upstream_busy_at_first = None
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    if upstream_busy_at_first is None:
                        upstream_busy_at_first = fake.in_flight
                    events.append(line[6:])
        return response, events, upstream_busy_at_first

    response, events, busy = scenario(check, fake=fake)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert len(events) == 5 and events[-1] == "[DONE]"
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "tok0 "
    assert busy == 1  # the first event arrived while vLLM was still generating


def test_a_client_that_disconnects_cancels_its_upstream_stream():
    fake = FakeVllm(stream_chunks=50, stream_interval_s=0.2)

    async def check(client, fake, state, app):
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            async for _ in response.aiter_lines():
                break
        for _ in range(100):
            if fake.disconnects:
                break
            await asyncio.sleep(0.05)
        return fake.disconnects, state.in_flight

    disconnects, in_flight = scenario(check, fake=fake)
    assert disconnects == 1 and in_flight == 0


def test_an_unreachable_vllm_is_a_502_in_openai_shape():
    async def check(client, fake, state, app):
        dead = create_app(settings("http://127.0.0.1:9"), state=UpstreamState(ready=True))
        async with serve_on_loopback(dead) as proxy:
            return await httpx.AsyncClient(base_url=proxy).get("/v1/models")

    response = scenario(check)
    assert response.status_code == 502
    assert "did not answer" in response.json()["error"]["message"]


# ---------------------------------------------------------------- /layout-parsing


def test_layout_parsing_answer_is_paddlex_schema_with_nulls_left_out():
    schema = load_paddlex_serving_schema()

    async def check(client, fake, state, app):
        image = await client.post(
            "/layout-parsing",
            json={"file": PNG, "fileType": 1, "visualize": False, "returnMarkdownImages": False, "logId": "abc"},
        )
        pdf = await client.post("/layout-parsing", json={"file": base64.b64encode(make_pdf(2)).decode()})
        return image, pdf

    image, pdf = scenario(check)
    assert image.status_code == 200, image.text
    body = image.json()
    response_model = paddlex_result_response(schema.InferResult)
    response_model.model_validate(body)
    assert (body["logId"], body["errorCode"], body["errorMsg"]) == ("abc", 0, "Success")
    page = body["result"]["layoutParsingResults"][0]
    assert set(page) == {"prunedResult", "markdown"} and set(page["markdown"]) == {"text"}
    assert body["result"]["dataInfo"] == {"width": 600, "height": 800, "type": "image"}
    # nulls inside prunedResult stay: PaddleX keeps them
    assert any(b["block_order"] is None for b in page["prunedResult"]["parsing_res_list"])

    assert pdf.status_code == 200, pdf.text
    checked = response_model.model_validate(pdf.json())
    assert checked.result.dataInfo.type == "pdf" and checked.result.dataInfo.numPages == 2
    pages = pdf.json()["result"]["layoutParsingResults"]
    assert len(pages) == 2 and all("inputImage" in p and "layout_det_res" in p["outputImages"] for p in pages)


def test_wrong_method_is_answered_in_paddlex_shape():
    async def check(client, fake, state, app):
        return await client.get("/layout-parsing")

    assert error_of(scenario(check), 405) == "Method Not Allowed"


def test_validation_errors_are_422_with_paddlex_error_list():
    async def check(client, fake, state, app):
        missing = await client.post("/layout-parsing", json={"fileType": 3, "logId": "mine"})
        not_json = await client.post("/layout-parsing", content=b"{nope", headers={"content-type": "application/json"})
        bad_option = await client.post("/layout-parsing", json={"file": PNG, "layoutThreshold": {"x": 0.5}})
        return missing, not_json, bad_option

    missing, not_json, bad_option = scenario(check)
    assert missing.json()["logId"] == "mine"
    errors = json.loads(error_of(missing, 422))
    assert {"type": "missing", "loc": "body.file", "msg": "Field required"} in errors
    assert any(e["loc"] == "body.fileType" for e in errors)
    assert json.loads(error_of(not_json, 422))[0]["type"] == "json_invalid"
    assert json.loads(error_of(bad_option, 422))[0]["loc"] == "body.layoutThreshold"


def test_bad_inputs_are_answered_in_paddlex_shape():
    gif = io.BytesIO()
    make_page_image(120, 120).convert("P").save(gif, format="GIF")

    async def check(client, fake, state, app):
        post = lambda body: client.post("/layout-parsing", json=body)  # noqa: E731
        return [
            await post({"file": base64.b64encode(b"just some text here").decode()}),
            await post({"file": base64.b64encode(gif.getvalue()).decode(), "fileType": 1}),
            await post({"file": "not base64!", "fileType": 1}),
            await post({"file": base64.b64encode(pixel_bomb_png()).decode(), "fileType": 1}),
            await post({"file": "https://example.com/a.pdf"}),
        ]

    unknown, unsupported, garbage, bomb, url = scenario(check)
    assert error_of(unknown, 422) == "File type cannot be determined"
    assert error_of(unsupported, 422) == "Unsupported file type"
    assert error_of(garbage, 422).startswith("Invalid input file")
    assert error_of(bomb, 422) == (
        "Image pixel count 200000000 (width=20000, height=10000) exceeds maximum allowed 178956970."
    )
    assert "URL input is disabled" in error_of(url, 422)


def test_limits_are_413_naming_the_limit():
    async def check(client, fake, state, app):
        too_many = await client.post("/layout-parsing", json={"file": base64.b64encode(make_pdf(3)).decode()})
        too_big = await client.post("/layout-parsing", json={"file": "A" * 2_000_000})
        return too_many, too_big, fake.bodies

    too_many, too_big, sent = scenario(check, max_pages=2, max_body_bytes=1024 * 1024)
    assert "3 pages" in error_of(too_many, 413) and "--max-pages" in error_of(too_many, 413)
    assert "--max-body-size" in error_of(too_big, 413)
    assert sent == []  # nothing reached the model


def test_per_page_pixel_limit_names_the_page():
    async def check(client, fake, state, app):
        return await client.post("/layout-parsing", json={"file": base64.b64encode(make_pdf(2)).decode()})

    message = error_of(scenario(check, max_page_pixels=1000), 422)
    assert message.startswith("Page 1: ")


def test_upstream_failure_is_a_5xx_naming_page_and_block():
    async def table_fails(body):
        return 500 if prompt_of(body) == "Table Recognition:" else "words"

    async def check(client, fake, state, app):
        return await client.post("/layout-parsing", json={"file": PNG, "fileType": 1})

    message = error_of(scenario(check, fake=FakeVllm(answer=table_fails)), 502)
    assert message.startswith("Page 1, block ") and "(table at [" in message


def test_layout_parsing_needs_a_ready_upstream_and_a_layout_model():
    async def check(client, fake, state, app):
        starting = await client.post("/layout-parsing", json={"file": PNG, "fileType": 1})
        state.mark_ready()
        loading = await client.post("/layout-parsing", json={"file": PNG, "fileType": 1})
        whole_page = await client.post(
            "/layout-parsing", json={"file": PNG, "fileType": 1, "useLayoutDetection": False, "promptLabel": "ocr"}
        )
        return starting, loading, whole_page

    starting, loading, whole_page = scenario(check, ready=False, detector=None)
    assert "still starting" in error_of(starting, 503)
    assert "layout model is still loading" in error_of(loading, 503)
    assert whole_page.status_code == 200

    async def no_model(client, fake, state, app):
        return await client.post("/layout-parsing", json={"file": PNG, "fileType": 1})

    assert "no layout model" in error_of(scenario(no_model, detector=None, layout_dir=None), 422)


def test_restructure_pages_merges_a_table_continued_on_the_next_page():
    schema = load_paddlex_serving_schema()
    one_table = ((21, "table", (0.05, 0.10, 0.95, 0.90)),)
    pdf = base64.b64encode(make_pdf(2)).decode()

    async def check(client, fake, state, app):
        parsed = await client.post("/layout-parsing", json={"file": pdf, "visualize": False, "restructurePages": True})
        plain = await client.post("/layout-parsing", json={"file": pdf, "visualize": False})
        pages = [
            {"prunedResult": p["prunedResult"], "markdownImages": p["markdown"].get("images")}
            for p in plain.json()["result"]["layoutParsingResults"]
        ]
        joined = await client.post("/restructure-pages", json={"pages": pages, "concatenatePages": True})
        separate = await client.post("/restructure-pages", json={"pages": pages, "mergeTables": False})
        broken = await client.post("/restructure-pages", json={"pages": [{"prunedResult": {"width": 1}}]})
        invalid = await client.post("/restructure-pages", json={})
        return parsed, joined, separate, broken, invalid

    calls = []

    async def distinct_rows(body):
        calls.append(1)
        return f"<fcel>row{len(calls)}a<fcel>row{len(calls)}b<nl>"

    fake = FakeVllm(answer=distinct_rows)
    parsed, joined, separate, broken, invalid = scenario(check, fake=fake, detector=FakeDetector(one_table))
    assert parsed.status_code == 200, parsed.text[:500]
    paddlex_result_response(schema.InferResult).model_validate(parsed.json())
    first, second = (p["prunedResult"]["parsing_res_list"][0] for p in parsed.json()["result"]["layoutParsingResults"])
    assert first["block_content"].count("<tr>") == 2 and second["block_content"] == ""
    assert (first["global_block_id"], second["global_block_id"], second["global_group_id"]) == (0, 1, 0)

    assert joined.status_code == 200, joined.text[:500]
    paddlex_result_response(schema.RestructurePagesResult).model_validate(joined.json())
    (whole,) = joined.json()["result"]["layoutParsingResults"]
    assert whole["prunedResult"]["page_count"] == 2
    assert len(whole["prunedResult"]["parsing_res_list"]) == 2
    assert whole["markdown"]["text"].count("<table") == 1

    tables = [
        p["prunedResult"]["parsing_res_list"][0]["block_content"]
        for p in separate.json()["result"]["layoutParsingResults"]
    ]
    assert [t.count("<tr>") for t in tables] == [1, 1]
    assert "pages[0].prunedResult is not a PaddleX prunedResult" in error_of(broken, 422)
    assert json.loads(error_of(invalid, 422))[0]["loc"] == "body.pages"


def test_a_client_that_disconnects_frees_its_vlm_slots():
    async def slow(body):
        await asyncio.sleep(2)
        return "late"

    async def check(client, fake, state, app):
        request = asyncio.create_task(client.post("/layout-parsing", json={"file": PNG, "fileType": 1}))
        for _ in range(200):
            if fake.in_flight:
                break
            await asyncio.sleep(0.02)
        request.cancel()
        for _ in range(200):
            health = (await client.get("/health")).json()
            if health["vlmQueueDepth"] == 0 and health["inFlight"] == 0:
                break
            await asyncio.sleep(0.02)
        text = (await client.get("/metrics")).text
        return health["vlmQueueDepth"], health["inFlight"], text

    queued, in_flight, text = scenario(check, fake=FakeVllm(answer=slow))
    assert (queued, in_flight) == (0, 0)
    assert "vllm_paddle_ocr_proxy_vlm_in_flight 0.0" in text  # its block requests were let go
    assert 'vllm_paddle_ocr_proxy_errors_total{kind="disconnected"} 1.0' in text


# ---------------------------------------------------------------- health, metrics, docs, drain


def test_health_reports_proxy_upstream_and_layout_model():
    async def check(client, fake, state, app):
        starting = await client.get("/health")
        state.mark_ready()
        ready = await client.get("/health")
        return starting, ready

    starting, ready = scenario(check, ready=False)
    assert starting.status_code == 503 and starting.json()["upstream"] == "starting"
    body = ready.json()
    assert ready.status_code == 200
    assert (body["errorCode"], body["errorMsg"], body["upstream"], body["layoutDetector"]) == (
        0,
        "Healthy",
        "ready",
        "ready",
    )


def test_metrics_count_proxy_work_and_include_vllm_metrics():
    async def check(client, fake, state, app):
        await client.post("/layout-parsing", json={"file": PNG, "fileType": 1})
        await client.get("/v1/models")
        return (await client.get("/metrics")).text

    text = scenario(check)
    assert 'vllm_paddle_ocr_proxy_requests_total{endpoint="/layout-parsing",status="200"} 1.0' in text
    assert "vllm_paddle_ocr_proxy_pages_total 1.0" in text
    assert 'vllm_paddle_ocr_proxy_blocks_total{label="table"} 1.0' in text
    assert 'vllm_paddle_ocr_proxy_vlm_requests_total{outcome="ok"}' in text
    assert "vllm_paddle_ocr_proxy_vlm_request_seconds_bucket" in text
    assert "vllm_paddle_ocr_proxy_vlm_queue_depth 0.0" in text
    assert 'vllm_paddle_ocr_proxy_passthrough_requests_total{status="200"} 1.0' in text
    assert "vllm:num_requests_running 0.0" in text


def test_openapi_documents_the_paddlex_endpoints():
    async def check(client, fake, state, app):
        return (await client.get("/openapi.json")).json(), await client.get("/docs")

    spec, docs = scenario(check)
    assert spec["paths"]["/layout-parsing"]["post"]["operationId"] == "infer"
    request_ref = spec["paths"]["/layout-parsing"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "$ref"
    ]
    name = request_ref.rsplit("/", 1)[1]
    assert "useLayoutDetection" in spec["components"]["schemas"][name]["properties"]
    assert "/restructure-pages" in spec["paths"]
    assert docs.status_code == 200 and "swagger-ui-bundle.js" in docs.text


def test_draining_refuses_new_work_and_lets_work_in_flight_finish():
    fake = FakeVllm(answer=answer_by_prompt, delay_s=0.3)

    async def check(client, fake, state, app):
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        slow = asyncio.create_task(client.post("/v1/chat/completions", json=body))
        while not fake.in_flight:
            await asyncio.sleep(0.01)
        state.mark_draining()  # what the supervisor does on SIGTERM, before uvicorn's graceful shutdown
        refused = await client.get("/v1/models")
        parse = await client.post("/layout-parsing", json={"file": PNG, "fileType": 1})
        return (await slow).status_code, refused.status_code, parse.status_code, parse.json()["errorMsg"]

    finished, refused, parse, message = scenario(check, fake=fake)
    assert (finished, refused, parse) == (200, 503, 503)
    assert "shutting down" in message


# ---------------------------------------------------------------- HTTP/1.1 framing towards the upstream


RAW_ANSWERS = {
    b"/v1/close-delimited": b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nuntil the end",
    b"/v1/chunked": (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-up: 1\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n"
    ),
    b"/v1/empty": b"HTTP/1.1 204 No Content\r\nx-up: 2\r\n\r\n",
    b"/v1/fragmented": (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"10\r\ndata: first....\n\r\n11\r\ndata: second....\n\r\n0\r\n\r\n"
    ),
    b"/v1/hangs-up": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    b"/v1/hop-by-hop": (
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop\r\nKeep-Alive: timeout=5\r\nDate: yesterday\r\n"
        b"Server: upstream\r\nX-Up: 3\r\nX-Hop: 1\r\nTrailer: x-sum\r\ncontent-length: 2\r\n\r\nok"
    ),
}


async def raw_upstream(handled: list, heads: list | None = None, connections: list | None = None):
    """An HTTP/1.1 server written by hand, for responses a framework would not produce."""

    async def client(reader, writer):
        if connections is not None:
            connections.append(writer.get_extra_info("peername"))
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, path = head.split(b" ")[:2]
                handled.append((method, path))
                if heads is not None:
                    heads.append(head)
                answer = RAW_ANSWERS[path]
                if method == b"HEAD":
                    answer = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n"
                if path == b"/v1/fragmented":  # a byte at a time: framing split at every possible place
                    for k in range(len(answer)):
                        writer.write(answer[k : k + 1])
                        await writer.drain()
                        await asyncio.sleep(0)
                else:
                    writer.write(answer)
                await writer.drain()
                if path in (b"/v1/close-delimited", b"/v1/hangs-up"):
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_upstream_framings_are_relayed_exactly():
    async def main():
        handled = []
        server, port = await raw_upstream(handled)
        app = create_app(settings(f"http://127.0.0.1:{port}"), state=UpstreamState(ready=True))
        async with server, serve_on_loopback(app) as proxy:
            async with httpx.AsyncClient(base_url=proxy) as client:
                results = [
                    await client.get("/v1/close-delimited"),
                    await client.get("/v1/chunked"),
                    await client.get("/v1/empty"),
                    await client.head("/v1/chunked"),
                    await client.get("/v1/fragmented"),
                ]
                # the upstream closes after each of these without saying so: the pool must notice
                results += [await client.get("/v1/hangs-up") for _ in range(4)]
        return results, handled

    results, handled = asyncio.run(main())
    close, chunked, empty, head, fragmented, *hangs = results
    assert fragmented.text == "data: first....\ndata: second....\n"
    assert (close.status_code, close.text) == (200, "until the end")
    assert (chunked.text, chunked.headers["x-up"]) == ("hello world", "1")
    assert (empty.status_code, empty.content, empty.headers["x-up"]) == (204, b"", "2")
    assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", "11")
    assert [r.text for r in hangs] == ["ok"] * 4
    assert handled.count((b"GET", b"/v1/hangs-up")) == 4


def test_hop_by_hop_headers_stay_on_their_hop_and_connections_are_reused():
    async def main():
        handled, heads, connections = [], [], []
        server, port = await raw_upstream(handled, heads, connections)
        app = create_app(settings(f"http://127.0.0.1:{port}"), state=UpstreamState(ready=True))
        async with server, serve_on_loopback(app) as proxy:
            async with httpx.AsyncClient(base_url=proxy) as client:
                sent = {
                    "connection": "keep-alive, x-private", "x-private": "1", "keep-alive": "timeout=9",
                    "te": "trailers", "proxy-authorization": "Basic eDp5", "x-kept": "1",
                }  # fmt: skip
                answers = [await client.get("/v1/hop-by-hop", headers=sent) for _ in range(3)]
                chunked = [await client.get("/v1/chunked") for _ in range(3)]
        return answers, chunked, heads, connections, port

    answers, chunked, heads, connections, port = asyncio.run(main())
    lines = [line.lower() for line in heads[0].split(b"\r\n")[1:] if line]
    names = [line.split(b":")[0] for line in lines]
    assert f"host: 127.0.0.1:{port}".encode() in lines and b"x-kept: 1" in lines
    hop_by_hop = {b"connection", b"x-private", b"keep-alive", b"te", b"proxy-authorization", b"transfer-encoding"}
    assert not hop_by_hop & set(names)
    answer = answers[0]
    assert (answer.status_code, answer.text, answer.headers["x-up"]) == (200, "ok", "3")
    assert not {"keep-alive", "trailer", "x-hop"} & set(answer.headers)
    assert "upstream" not in answer.headers.get_list("server") and "yesterday" not in answer.headers.get_list("date")
    assert [r.text for r in chunked] == ["hello world"] * 3
    assert len(connections) == 1  # six requests, one keep-alive connection to the upstream

"""Jobs, page ranges, the API key and a small served context on the real engines: two `serve` replicas
(vLLM on CPU, paddlex layout) sharing a real Redis, started with --api-key and --max-model-len 2048."""

from __future__ import annotations

import base64
import time

import httpx
import pytest

from tests.conftest import free_port, start_serve
from tests.fixtures.documents import make_page_image, make_pdf, png_bytes
from tests.fixtures.redis_server import redis_server

pytestmark = pytest.mark.integration

KEY = "integration-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
JOBS = "/layout-parsing/jobs"


@pytest.fixture(scope="module")
def replicas(tiny_repo, cpu_env, tmp_path_factory):
    """Replica A and B behind no balancer: each its own data directory and vLLM, one Redis job store.

    Pages are detected one at a time: a job's answer is compared with a synchronous one, and a page
    detected in a batch with others can differ in the last digits, where random-weight scores tie.
    """
    root = tmp_path_factory.mktemp("replicas")
    with redis_server(root / "redis") as url:
        servers = []
        try:
            for name in ("a", "b"):
                upstream = free_port()
                server = start_serve(
                    tiny_repo, cpu_env, root / f"{name}.log", "--api-key", KEY, "--max-model-len", "2048",
                    "--job-store", url, "--data-dir", str(root / name), "--upstream-port", str(upstream),
                    "--layout-batch-size", "1",
                )  # fmt: skip
                server.upstream = f"http://127.0.0.1:{upstream}"
                servers.append(server)
            for server in servers:
                server.wait_ready()
            yield servers
        finally:
            for server in servers:
                server.stop()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def post(server, path: str, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, headers=AUTH, timeout=600, **kwargs)


def get(server, path: str, **kwargs) -> httpx.Response:
    return httpx.get(f"{server.url}{path}", headers=AUTH, timeout=120, **kwargs)


def structure(page: dict) -> dict:
    """A page's result without what the random-weight model wrote: boxes, labels, order, sizes."""
    pruned = dict(page["prunedResult"])
    pruned["parsing_res_list"] = [
        {key: value for key, value in block.items() if key != "block_content"} for block in pruned["parsing_res_list"]
    ]
    return pruned


def final_result(server, job_id: str) -> httpx.Response:
    while True:
        answer = get(server, f"{JOBS}/{job_id}/result?wait=30")
        if answer.status_code != 202:
            return answer


def test_the_api_key_is_asked_by_the_proxy_and_vllm_and_our_own_calls_carry_it(replicas):
    a, _ = replicas
    # probes answer without a key (GPUStack's readiness check reached 200 without one)
    assert httpx.get(f"{a.url}/health").status_code == 200
    assert httpx.get(f"{a.url}/v1/models").status_code == 200
    refused = httpx.post(f"{a.url}/layout-parsing", json={"file": b64(png_bytes(make_page_image(128, 128)))})
    assert refused.status_code == 401 and set(refused.json()) == {"logId", "errorCode", "errorMsg"}
    assert refused.json()["errorCode"] == 401
    chat = {"model": "ocr-test", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 2}
    assert httpx.post(f"{a.url}/v1/chat/completions", json=chat, timeout=60).status_code == 401
    assert httpx.post(f"{a.url}/v1/chat/completions", json=chat, headers=AUTH, timeout=120).status_code == 200
    # vLLM on loopback asks for the same key: only our calls (warm-up, blocks, passthrough) get through
    assert httpx.post(f"{a.upstream}/v1/chat/completions", json=chat, timeout=60).status_code == 401
    assert httpx.get(f"{a.upstream}/v1/models", headers=AUTH).status_code == 200


def test_a_2048_token_context_parses_a_page_with_default_options(replicas):
    a, _ = replicas
    answer = post(a, "/layout-parsing", {"file": b64(png_bytes(make_page_image(640, 800))), "visualize": False})
    assert answer.status_code == 200, answer.text
    blocks = answer.json()["result"]["layoutParsingResults"][0]["prunedResult"]["parsing_res_list"]
    assert blocks and all(isinstance(block["block_content"], str) for block in blocks)


def test_a_six_page_job_shows_progress_and_gives_the_synchronous_answer(replicas):
    a, b = replicas
    pdf = b64(make_pdf(6))
    accepted = post(a, JOBS, {"file": pdf, "visualize": False})
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()["result"]
    assert job["status"] == "queued" and job["pagesTotal"] == 6
    seen = []
    while not seen or seen[-1]["status"] not in ("done", "failed"):
        seen.append(get(a, f"{JOBS}/{job['jobId']}").json()["result"])
        time.sleep(0.1)
    assert seen[-1]["status"] == "done", seen[-1]
    done = [status["pagesDone"] for status in seen]
    assert done == sorted(done) and len({d for d in done if 0 < d < 6}) >= 1, done  # progress moved
    result = final_result(a, job["jobId"])
    sync = post(b, "/layout-parsing", {"file": pdf, "visualize": False})
    assert result.status_code == 200 and sync.status_code == 200, (result.text[:300], sync.text[:300])
    job_result, sync_result = result.json()["result"], sync.json()["result"]
    assert job_result["dataInfo"] == sync_result["dataInfo"]
    assert [structure(p) for p in job_result["layoutParsingResults"]] == [
        structure(p) for p in sync_result["layoutParsingResults"]
    ]


def test_page_range_parses_the_asked_pages_only(replicas):
    a, _ = replicas
    pdf = b64(make_pdf(6))
    job_id = post(a, JOBS, {"file": pdf, "visualize": False, "pageRange": "2,5"}).json()["result"]["jobId"]
    pages = final_result(a, job_id).json()["result"]["layoutParsingResults"]
    assert [page["prunedResult"]["page_index"] for page in pages] == [1, 4]
    sync = post(a, "/layout-parsing", {"file": pdf, "visualize": False, "pageRange": "3"})
    assert sync.status_code == 200
    assert [p["prunedResult"]["page_index"] for p in sync.json()["result"]["layoutParsingResults"]] == [2]
    past = post(a, "/layout-parsing", {"file": pdf, "pageRange": "7"})
    assert past.status_code == 422 and "page 7 but the PDF has 6 pages" in past.json()["errorMsg"]


def vlm_requests(server) -> float:
    """Block requests the proxy sent to vLLM so far (all outcomes)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(get(server, "/metrics").text):
        for sample in family.samples:
            if sample.name == "vllm_paddle_ocr_proxy_vlm_requests_total":
                total += sample.value
    return total


def test_cancel_stops_the_jobs_vlm_requests(replicas):
    a, _ = replicas
    job_id = post(a, JOBS, {"file": b64(make_pdf(12)), "visualize": False}).json()["result"]["jobId"]
    while get(a, f"{JOBS}/{job_id}").json()["result"]["pagesDone"] < 1:
        time.sleep(0.05)
    cancelled = httpx.delete(f"{a.url}{JOBS}/{job_id}", headers=AUTH, timeout=60)
    assert cancelled.status_code == 200 and cancelled.json()["result"]["status"] == "cancelled"
    time.sleep(2)  # requests already sent are aborted, nothing new is sent
    settled = vlm_requests(a)
    time.sleep(3)
    assert vlm_requests(a) == settled
    status = get(a, f"{JOBS}/{job_id}").json()["result"]
    assert status["status"] == "cancelled" and status["pagesDone"] < 12
    assert final_result(a, job_id).status_code == 409


def test_a_second_replica_answers_for_a_job_the_first_took(replicas):
    a, b = replicas
    job_id = post(a, JOBS, {"file": b64(make_pdf(3)), "visualize": False}).json()["result"]["jobId"]
    status = get(b, f"{JOBS}/{job_id}")
    assert status.status_code == 200 and status.json()["result"]["jobId"] == job_id
    from_b = final_result(b, job_id)
    from_a = final_result(a, job_id)
    assert from_b.status_code == 200 and from_b.json() == from_a.json()
    assert len(from_b.json()["result"]["layoutParsingResults"]) == 3

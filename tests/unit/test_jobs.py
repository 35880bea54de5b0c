"""/layout-parsing/jobs over real HTTP, with the real SQLite store and a real Redis for replicas.

vLLM is the small loopback fake (fixed latency), the layout model the fake detector: these tests prove
the flow (queue, progress, results, cancel, restart, retention, replicas), the integration tests the engines.
"""

import asyncio
import base64
import os
import signal
import sqlite3
import time
from urllib.parse import urljoin

import httpx
import pytest
import redis

from tests.fixtures.documents import make_pdf
from tests.fixtures.fake_layout import FakeDetector
from tests.fixtures.fake_vllm import FakeVllm, serve_on_loopback
from tests.fixtures.redis_server import redis_server
from tests.unit.test_proxy_app import answer_by_prompt, error_of, scenario, settings
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.app import create_app
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.jobs import redis_store, sqlite_store
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.jobs.model import Job
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.jobs.runner import LOST, OWNER_GONE, RESTARTED
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.jobs.sqlite_store import SqliteJobStore
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.jobs.store import STORE_RETRY_AFTER_S, JobFiles
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.state import UpstreamState

PDF3 = base64.b64encode(make_pdf(3)).decode()
JOBS = "/layout-parsing/jobs"


def slow(delay_s=0.05):
    return FakeVllm(answer=answer_by_prompt, delay_s=delay_s)


async def submit(client, **body):
    answer = await client.post(JOBS, json={"visualize": False, **body})
    assert answer.status_code == 202, answer.text
    return answer


async def wait_status(client, job_id, wanted, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        status = (await client.get(f"{JOBS}/{job_id}")).json()["result"]
        if status["status"] in wanted or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.05)


def test_a_job_answers_202_shows_progress_and_its_result_equals_the_synchronous_answer(tmp_path):
    async def check(client, fake, state, app):
        accepted = await submit(client, file=PDF3, logId="mine")
        job_id = accepted.json()["result"]["jobId"]
        seen = []
        while not seen or seen[-1]["status"] not in ("done", "failed"):
            seen.append((await client.get(f"{JOBS}/{job_id}")).json()["result"])
            await asyncio.sleep(0.02)
        result = await client.get(f"{JOBS}/{job_id}/result?wait=30")
        sync = await client.post("/layout-parsing", json={"file": PDF3, "visualize": False, "logId": "mine"})
        return accepted, seen, result, sync

    accepted, seen, result, sync = scenario(check, fake=slow(), data_dir=str(tmp_path))
    body = accepted.json()
    assert (body["logId"], body["errorCode"], body["errorMsg"]) == ("mine", 0, "Success")
    # Resolved against the submission's URL, the Location is the job's, whatever prefix is in front.
    assert urljoin(f"http://h/model/proxy/7{JOBS}", accepted.headers["location"]) == f"http://h/model/proxy/7{JOBS}/{body['result']['jobId']}"
    assert body["result"]["status"] == "queued" and body["result"]["pagesTotal"] == 3
    statuses = [s["status"] for s in seen]
    assert statuses[-1] == "done" and "running" in statuses
    done = [s["pagesDone"] for s in seen]
    assert done == sorted(done) and len(set(done)) > 2  # progress moved page by page
    assert seen[-1]["finishedAt"] >= seen[-1]["startedAt"] >= seen[-1]["createdAt"] and seen[-1]["expiresAt"]
    assert result.status_code == 200 and sync.status_code == 200
    assert result.json() == sync.json()


def test_partial_results_come_page_by_page_and_from_skips_pages_already_read(tmp_path):
    async def check(client, fake, state, app):
        job_id = (await submit(client, file=PDF3)).json()["result"]["jobId"]
        first = await client.get(f"{JOBS}/{job_id}/result?wait=30")  # returns when a page is ready
        rest = await client.get(f"{JOBS}/{job_id}/result?wait=30&from=1")
        while rest.status_code == 202:
            rest = await client.get(f"{JOBS}/{job_id}/result?wait=30&from=1")
        whole = await client.get(f"{JOBS}/{job_id}/result")
        return first, rest, whole

    first, rest, whole = scenario(check, fake=slow(0.3), data_dir=str(tmp_path))
    assert first.status_code == 202 and first.headers["retry-after"] == "1"
    partial = first.json()["result"]
    assert partial["job"]["status"] == "running" and 1 <= len(partial["layoutParsingResults"]) < 3
    pages = whole.json()["result"]["layoutParsingResults"]
    assert partial["layoutParsingResults"] == pages[: len(partial["layoutParsingResults"])]
    assert rest.status_code == 200 and rest.json()["result"]["layoutParsingResults"] == pages[1:]


def test_page_range_jobs_count_and_parse_the_asked_pages_only(tmp_path):
    detector = FakeDetector()

    async def check(client, fake, state, app):
        accepted = await submit(client, file=PDF3, pageRange="2-3")
        job_id = accepted.json()["result"]["jobId"]
        await wait_status(client, job_id, {"done"})
        return accepted, await client.get(f"{JOBS}/{job_id}/result")

    accepted, result = scenario(check, fake=slow(0), data_dir=str(tmp_path), detector=detector)
    assert accepted.json()["result"]["pagesTotal"] == 2
    pages = result.json()["result"]["layoutParsingResults"]
    assert [page["prunedResult"]["page_index"] for page in pages] == [1, 2] and detector.calls == 2


def test_cancel_stops_the_jobs_vlm_requests(tmp_path):
    async def check(client, fake, state, app):
        job_id = (await submit(client, file=PDF3)).json()["result"]["jobId"]
        while not fake.bodies:
            await asyncio.sleep(0.02)
        cancelled = await client.delete(f"{JOBS}/{job_id}")
        sent_at_cancel = len(fake.bodies)
        await asyncio.sleep(1.5)  # several block latencies: a running job would have sent more
        return cancelled, sent_at_cancel, len(fake.bodies), fake.in_flight, await client.get(f"{JOBS}/{job_id}/result")

    cancelled, at_cancel, later, in_flight, result = scenario(check, fake=slow(0.3), data_dir=str(tmp_path))
    assert cancelled.status_code == 200 and cancelled.json()["result"]["status"] == "cancelled"
    assert later == at_cancel and in_flight == 0
    assert "cancelled" in error_of(result, 409)


def test_jobs_wait_for_admission_and_a_full_queue_is_a_429(tmp_path):
    async def check(client, fake, state, app):
        first = (await submit(client, file=PDF3)).json()["result"]["jobId"]
        await wait_status(client, first, {"running"})
        second = (await submit(client, file=PDF3)).json()["result"]
        third = await client.post(JOBS, json={"file": PDF3})
        running = await client.get(f"{JOBS}/{first}")
        await client.delete(f"{JOBS}/{first}")
        second_done = await wait_status(client, second["jobId"], {"done"})
        return second, third, running, second_done

    second, third, running, second_done = scenario(
        check, fake=slow(0.2), data_dir=str(tmp_path), max_active_requests=1, max_queued_jobs=1
    )
    assert second["status"] == "queued" and second["queuePosition"] == 0
    assert running.json()["result"]["queuePosition"] is None
    assert "--max-queued-jobs" in error_of(third, 429) and int(third.headers["retry-after"]) > 0
    assert second_done["status"] == "done"


def test_bad_submissions_and_lookups_are_4xx_in_paddlex_shape(tmp_path):
    async def check(client, fake, state, app):
        return [
            await client.post(JOBS, json={"file": "not base64!", "fileType": 0}),
            await client.post(JOBS, json={"file": PDF3, "pageRange": "4"}),
            await client.post(JOBS, json={"file": PDF3, "temperature": "hot"}),
            await client.get(f"{JOBS}/{'0' * 32}"),
            await client.get(f"{JOBS}/../../etc/passwd"),
            await client.delete(f"{JOBS}/nope"),
            await client.get(f"{JOBS}/{'0' * 32}/result?wait=61"),
            await client.get(f"{JOBS}/{'0' * 32}/result?from=-1"),
        ], fake.bodies

    answers, bodies = scenario(check, data_dir=str(tmp_path))
    broken, past, typed, unknown, traversal, unknown_delete, long_wait, negative_from = answers
    assert error_of(broken, 422).startswith("Invalid input file")
    assert "asks for page 4 but the PDF has 3 pages" in error_of(past, 422)
    assert "temperature" in error_of(typed, 422)
    for answer in (unknown, unknown_delete):
        assert "--job-retention" in error_of(answer, 404)
    assert traversal.status_code == 404
    assert "between 0 and 60" in error_of(long_wait, 422)
    assert "`from`" in error_of(negative_from, 422)
    assert bodies == [] and not list((tmp_path / "jobs").glob("*/body.json"))


def test_a_restart_fails_the_jobs_it_was_running_and_runs_those_it_had_queued(tmp_path):
    """A crash leaves a running and a queued job behind; the next process of the same instance sees them."""
    files = JobFiles(tmp_path / "jobs")
    owner = f"{__import__('socket').gethostname()}:0"

    async def leave_behind():
        store = SqliteJobStore(files.root / "jobs.sqlite3", files)
        await store.open()
        now = time.time()
        for job_id, status in (("a" * 32, "running"), ("b" * 32, "queued")):
            await store.add(Job(id=job_id, log_id=job_id, owner=owner, incarnation="old", status=status, created_at=now))
            files.write_body(job_id, ('{"file": "%s", "visualize": false}' % PDF3).encode())
        await store.close()

    asyncio.run(leave_behind())

    async def check(client, fake, state, app):
        running = (await client.get(f"{JOBS}/{'a' * 32}")).json()["result"]
        queued = await wait_status(client, "b" * 32, {"done", "failed"})
        return running, queued

    running, queued = scenario(check, data_dir=str(tmp_path))
    assert running["status"] == "failed" and running["error"] == {"errorCode": 500, "errorMsg": RESTARTED}
    assert queued["status"] == "done" and queued["pagesDone"] == 3
    assert not (files.root / ("a" * 32) / "body.json").exists()


def test_finished_jobs_are_removed_after_the_retention(tmp_path):
    async def check(client, fake, state, app):
        job_id = (await submit(client, file=PDF3)).json()["result"]["jobId"]
        await wait_status(client, job_id, {"done"})
        kept = await client.get(f"{JOBS}/{job_id}/result")
        await asyncio.sleep(0.6)
        await app.job_runner.housekeep()
        return kept, await client.get(f"{JOBS}/{job_id}"), job_id

    kept, gone, job_id = scenario(check, data_dir=str(tmp_path), job_retention_s=0.5)
    assert kept.status_code == 200
    assert error_of(gone, 404)
    assert not (tmp_path / "jobs" / job_id).exists()


def test_deleting_a_finished_job_forgets_it(tmp_path):
    async def check(client, fake, state, app):
        job_id = (await submit(client, file=PDF3)).json()["result"]["jobId"]
        await wait_status(client, job_id, {"done"})
        deleted = await client.delete(f"{JOBS}/{job_id}")
        return deleted, await client.get(f"{JOBS}/{job_id}")

    deleted, after = scenario(check, data_dir=str(tmp_path))
    assert deleted.json()["result"]["status"] == "done"
    assert after.status_code == 404


# ---------------------------------------------------------------- replicas sharing Redis


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


def replicas(check, redis_url, tmp_path, *, fake=None):
    """Two proxies (two owners, two data directories) sharing one Redis and one fake vLLM."""
    fake = fake or slow()

    async def main():
        async with serve_on_loopback(fake) as upstream:
            apps = []
            for number in (1, 2):
                state = UpstreamState(ready=True)
                app = create_app(
                    settings(upstream, port=number, data_dir=str(tmp_path / f"replica{number}"), job_store=redis_url),
                    state=state,
                    detector=FakeDetector(),
                )
                apps.append(app)
            async with serve_on_loopback(apps[0]) as first, serve_on_loopback(apps[1]) as second:
                async with httpx.AsyncClient(base_url=first, timeout=30) as a, httpx.AsyncClient(base_url=second, timeout=30) as b:
                    return await check(a, b, fake, apps)

    return asyncio.run(main())


def test_any_replica_answers_status_and_result_of_a_job_another_took(redis_url, tmp_path):
    async def check(a, b, fake, apps):
        job_id = (await submit(a, file=PDF3)).json()["result"]["jobId"]
        status_from_b = await wait_status(b, job_id, {"running"})
        result_from_b = await b.get(f"{JOBS}/{job_id}/result?wait=30")
        while result_from_b.status_code == 202:
            result_from_b = await b.get(f"{JOBS}/{job_id}/result?wait=30")
        result_from_a = await a.get(f"{JOBS}/{job_id}/result")
        return status_from_b, result_from_b, result_from_a

    status, from_b, from_a = replicas(check, redis_url, tmp_path)
    assert status["status"] == "running" and status["pagesTotal"] == 3
    assert from_b.status_code == 200 and from_b.json() == from_a.json()
    assert len(from_b.json()["result"]["layoutParsingResults"]) == 3
    assert not list((tmp_path / "replica2").glob("jobs/*/body.json"))  # the body stayed with its replica


def test_a_cancel_sent_to_another_replica_stops_the_owners_vlm_requests(redis_url, tmp_path):
    async def check(a, b, fake, apps):
        job_id = (await submit(a, file=PDF3)).json()["result"]["jobId"]
        while not fake.bodies:
            await asyncio.sleep(0.02)
        cancelled = await b.delete(f"{JOBS}/{job_id}")
        await asyncio.sleep(2.0)  # the owner notices within a second
        sent = len(fake.bodies)
        await asyncio.sleep(1.0)
        return cancelled, sent, len(fake.bodies), fake.in_flight, await a.get(f"{JOBS}/{job_id}")

    cancelled, sent, later, in_flight, status = replicas(check, redis_url, tmp_path, fake=slow(0.3))
    assert cancelled.json()["result"]["status"] == "cancelled"
    assert later == sent and in_flight == 0
    assert status.json()["result"]["status"] == "cancelled"


def test_a_job_whose_replica_stopped_renewing_its_lease_is_failed_by_another(redis_url, tmp_path):
    """A replica that died mid-job left it running, and its lease runs out: the next look fails it."""

    async def check(a, b, fake, apps):
        store = apps[1].job_runner.store
        await store.renew("crashed:1", "its-process", 0.2)
        job = Job(id="c" * 32, log_id="x", owner="crashed:1", incarnation="its-process", status="running",
                  created_at=time.time())  # fmt: skip
        await store.add(job)
        while_alive = (await b.get(f"{JOBS}/{job.id}")).json()["result"]
        await asyncio.sleep(0.4)
        return while_alive, (await b.get(f"{JOBS}/{job.id}")).json()["result"]

    while_alive, after = replicas(check, redis_url, tmp_path)
    assert while_alive["status"] == "running"
    assert after["status"] == "failed" and after["error"]["errorMsg"] == OWNER_GONE


def test_a_redis_that_stops_answering_is_a_503_with_retry_after_and_jobs_run_again_once_it_answers(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(redis_store, "COMMAND_TIMEOUT_S", 0.3)
    with redis_server(tmp_path / "redis") as url:
        pid = redis.Redis.from_url(url).info("server")["process_id"]

        async def check(a, b, fake, apps):
            before = (await submit(a, file=PDF3)).json()["result"]["jobId"]
            await wait_status(a, before, {"done"})
            os.kill(pid, signal.SIGSTOP)  # the store hangs: connections open, nothing answered
            try:
                silent = (
                    await a.get(f"{JOBS}/{before}"),
                    await b.get(f"{JOBS}/{before}/result?wait=5"),
                    await a.post(JOBS, json={"file": PDF3, "visualize": False}),
                    await b.delete(f"{JOBS}/{before}"),
                )
                await asyncio.sleep(1.0)  # the workers meet the silent store too
            finally:
                os.kill(pid, signal.SIGCONT)
            after = (await submit(a, file=PDF3)).json()["result"]["jobId"]
            return silent, await wait_status(a, after, {"done", "failed"}), await wait_status(b, before, {"done"})

        silent, after, before = replicas(check, url, tmp_path)
    for answer in silent:
        message = error_of(answer, 503)
        assert message.startswith(f"Service unavailable: the job store at {url} did not answer (TimeoutError")
        assert message.endswith(f"retry in {STORE_RETRY_AFTER_S} s")
        assert answer.headers["retry-after"] == str(STORE_RETRY_AFTER_S)
    assert after["status"] == "done" and after["pagesDone"] == 3
    assert before["status"] == "done"  # nothing was changed while the store was silent
    assert not list((tmp_path / "replica1").glob("jobs/*/body.json"))  # the refused submission left no body


def test_a_sqlite_store_locked_past_its_busy_timeout_is_a_503_and_takes_jobs_once_free(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_S", 0.2)

    async def check(client, fake, state, app):
        first = (await submit(client, file=PDF3)).json()["result"]["jobId"]
        await wait_status(client, first, {"done"})
        other = sqlite3.connect(tmp_path / "jobs" / "jobs.sqlite3", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            locked = await client.post(JOBS, json={"file": PDF3, "visualize": False})
            readable = await client.get(f"{JOBS}/{first}")
        finally:
            other.execute("ROLLBACK")
            other.close()
        second = (await submit(client, file=PDF3)).json()["result"]["jobId"]
        return locked, readable, await wait_status(client, second, {"done", "failed"})

    locked, readable, second = scenario(check, data_dir=str(tmp_path))
    message = error_of(locked, 503)
    assert message == (
        f"Service unavailable: the job store {tmp_path / 'jobs' / 'jobs.sqlite3'} did not answer "
        f"(OperationalError: database is locked); retry in {STORE_RETRY_AFTER_S} s"
    )
    assert locked.headers["retry-after"] == str(STORE_RETRY_AFTER_S)
    assert readable.status_code == 200  # readers are not held up by a writer (WAL)
    assert second["status"] == "done"
    assert len(list((tmp_path / "jobs").glob("*/body.json"))) == 0


def test_a_running_job_whose_end_could_not_be_stored_is_failed_by_housekeeping(tmp_path):
    """The store did not answer when a job ended, so it still reads running though no worker runs it."""

    async def check(client, fake, state, app):
        runner = app.job_runner
        await submit(client, file=PDF3)  # opens the store
        now = time.time()
        for job_id, started in (("d" * 32, now - 2 * runner.lease_s), ("e" * 32, now)):
            await runner.store.add(Job(id=job_id, log_id=job_id, owner=runner.owner, incarnation=runner.incarnation,
                                       status="running", created_at=started, started_at=started))  # fmt: skip
        await runner.housekeep()
        return [(await client.get(f"{JOBS}/{job_id}")).json()["result"] for job_id in ("d" * 32, "e" * 32)]

    lost, recent = scenario(check, data_dir=str(tmp_path))
    assert lost["status"] == "failed" and lost["error"] == {"errorCode": 503, "errorMsg": LOST}
    assert recent["status"] == "running"  # just claimed: its worker may not have registered it yet


def test_job_answers_follow_the_documented_schema(tmp_path):
    from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.protocol import JobStatus, PartialResult, ResultResponse

    async def check(client, fake, state, app):
        accepted = await submit(client, file=PDF3)
        job_id = accepted.json()["result"]["jobId"]
        partial = await client.get(f"{JOBS}/{job_id}/result?wait=30")
        done = await wait_status(client, job_id, {"done"})
        spec = (await client.get("/openapi.json")).json()
        return accepted, partial, done, spec

    accepted, partial, done, spec = scenario(check, fake=slow(0.3), data_dir=str(tmp_path))
    ResultResponse[JobStatus].model_validate(accepted.json())
    assert partial.status_code == 202
    ResultResponse[PartialResult].model_validate(partial.json())
    JobStatus.model_validate(done)
    assert {"post"} <= set(spec["paths"][JOBS]) and {"get", "delete"} <= set(spec["paths"][JOBS + "/{jobId}"])
    assert "202" in spec["paths"][JOBS + "/{jobId}/result"]["get"]["responses"]


def test_a_job_outlives_the_client_that_submitted_it_and_its_long_polls(tmp_path):
    async def check(client, fake, state, app):
        base = str(client.base_url)
        async with httpx.AsyncClient(base_url=base, timeout=30) as gone:
            job_id = (await submit(gone, file=PDF3)).json()["result"]["jobId"]
            with pytest.raises(httpx.TimeoutException):  # held until the job is done: the client leaves first
                await gone.get(f"{JOBS}/{job_id}/result?wait=30&from=3", timeout=0.3)
        return await wait_status(client, job_id, {"done", "failed", "cancelled"})

    final = scenario(check, fake=slow(0.3), data_dir=str(tmp_path))
    assert final["status"] == "done" and final["pagesDone"] == 3

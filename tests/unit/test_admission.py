"""Admission control: documents, pages and body bytes taken on at once are bounded; past a bound, a 429."""

import asyncio
import base64

import pytest

from tests.fixtures.documents import make_pdf
from tests.fixtures.fake_vllm import FakeVllm
from tests.unit.test_proxy_app import PNG, answer_by_prompt, error_of, scenario, settings
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.admission import (
    Admission,
    AdmissionBounds,
    Overloaded,
    admission_bounds,
)

PDF2 = base64.b64encode(make_pdf(2)).decode()


def test_default_bounds_follow_concurrency_and_memory():
    bounds = admission_bounds(settings("http://x", concurrency=32, max_body_bytes=10 * 2**20), memory_bytes=64 * 2**30)
    assert bounds == AdmissionBounds(requests=32, pages=256, bytes=4 * 2**30)
    small = admission_bounds(settings("http://x", concurrency=1, max_body_bytes=200 * 2**20), memory_bytes=2**30)
    assert small.requests == 4 and small.bytes == 200 * 2**20  # one body of the largest size always fits
    chosen = admission_bounds(
        settings("http://x", max_active_requests=3, max_active_pages=7, max_held_bytes=1000), memory_bytes=2**30
    )
    assert chosen == AdmissionBounds(3, 7, 1000)


def test_tickets_hold_and_give_back_and_one_document_alone_always_fits():
    async def main():
        admission = Admission(AdmissionBounds(requests=2, pages=10, bytes=100))
        first = admission.admit()
        first.hold_bytes(500)  # alone: admitted whatever its size
        first.hold_pages(50)
        second = admission.admit()
        with pytest.raises(Overloaded, match="--max-held-bytes"):
            second.hold_bytes(1)
        with pytest.raises(Overloaded, match="--max-active-pages"):
            second.hold_pages(1)
        with pytest.raises(Overloaded, match="--max-active-requests") as refused:
            admission.admit()
        assert refused.value.status_code == 429 and refused.value.retry_after >= 1
        await first.close()
        second.hold_bytes(100)
        second.hold_pages(10)
        await second.close()
        await second.close()  # closing twice gives nothing back twice
        return admission.requests, admission.pages, admission.bytes

    assert asyncio.run(main()) == (0, 0, 0)


def test_waiting_tickets_get_room_when_it_frees():
    async def main():
        admission = Admission(AdmissionBounds(requests=1, pages=4, bytes=100))
        holder = admission.admit()
        holder.hold_pages(3)
        waiter = asyncio.ensure_future(admission.wait())
        await asyncio.sleep(0.05)
        waited_for_request = not waiter.done()
        await holder.close()
        ticket = await asyncio.wait_for(waiter, 5)
        other = Admission(AdmissionBounds(requests=2, pages=4, bytes=100))
        busy = other.admit()
        busy.hold_pages(3)
        second = other.admit()
        pages = asyncio.ensure_future(second.wait_pages(2))
        await asyncio.sleep(0.05)
        waited_for_pages = not pages.done()
        await busy.close()
        await asyncio.wait_for(pages, 5)
        return waited_for_request, waited_for_pages, ticket, other.pages

    waited_for_request, waited_for_pages, ticket, pages = asyncio.run(main())
    assert waited_for_request and waited_for_pages and pages == 2


def slow_fake():
    return FakeVllm(answer=answer_by_prompt, delay_s=0.3)


async def while_one_is_parsing(client, first_body, second_body):
    """The second answer sent while the first request is being parsed, then the first's answer."""
    first = asyncio.ensure_future(client.post("/layout-parsing", json=first_body))
    await asyncio.sleep(0.4)
    second = await client.post("/layout-parsing", json=second_body)
    return await first, second


def test_past_the_request_bound_a_429_in_paddlex_shape_with_retry_after():
    async def check(client, fake, state, app):
        first, second = await while_one_is_parsing(client, {"file": PNG, "visualize": False}, {"file": PNG})
        blocks_of_first = len(fake.bodies)
        again = await client.post("/layout-parsing", json={"file": PNG, "visualize": False})
        return first, second, again, blocks_of_first, len(fake.bodies)

    first, second, again, blocks_of_first, blocks = scenario(check, fake=slow_fake(), max_active_requests=1)
    assert first.status_code == 200
    assert "--max-active-requests" in error_of(second, 429)
    assert int(second.headers["retry-after"]) >= 1
    assert again.status_code == 200  # room again once the first ended
    assert blocks == 2 * blocks_of_first > 0  # the refused request sent nothing to the model


def test_past_the_page_bound_a_429_naming_it():
    async def check(client, fake, state, app):
        return await while_one_is_parsing(client, {"file": PDF2, "visualize": False}, {"file": PNG})

    first, second = scenario(check, fake=slow_fake(), max_active_pages=2)
    assert first.status_code == 200
    assert "--max-active-pages" in error_of(second, 429) and "retry-after" in second.headers


def test_past_the_byte_bound_a_429_before_the_body_is_decoded_declared_or_chunked():
    async def chunked():
        body = ('{"file": "' + PNG + '"}').encode()
        for k in range(0, len(body), 4096):
            yield body[k : k + 4096]

    async def check(client, fake, state, app):
        first, declared = await while_one_is_parsing(client, {"file": PNG, "visualize": False}, {"file": PNG})
        blocks = len(fake.bodies)
        during = asyncio.ensure_future(client.post("/layout-parsing", json={"file": PNG, "visualize": False}))
        await asyncio.sleep(0.4)
        streamed = await client.post("/layout-parsing", content=chunked(), headers={"content-type": "application/json"})
        await during
        return first, declared, streamed, blocks

    first, declared, streamed, blocks = scenario(check, fake=slow_fake(), max_held_bytes=len(PNG) + 1000)
    assert first.status_code == 200
    for refused in (declared, streamed):
        assert "--max-held-bytes" in error_of(refused, 429)


def test_draining_is_a_503_with_retry_after():
    async def check(client, fake, state, app):
        state.mark_draining()
        return await client.post("/layout-parsing", json={"file": PNG})

    answer = scenario(check)
    assert "shutting down" in error_of(answer, 503) and int(answer.headers["retry-after"]) >= 1


def test_the_memory_bound_follows_a_container_limit_below_the_hosts(tmp_path):
    from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.admission import memory_limit

    v2, v1 = tmp_path / "memory.max", tmp_path / "limit_in_bytes"
    v2.write_text("max\n")
    v1.write_text(str(8 * 2**30))
    assert memory_limit(64 * 2**30, (str(v2), str(v1))) == 8 * 2**30
    v2.write_text(str(4 * 2**30))
    assert memory_limit(64 * 2**30, (str(v2), str(v1))) == 4 * 2**30
    assert memory_limit(2 * 2**30, (str(v2), str(v1))) == 2 * 2**30  # the host is smaller still
    assert memory_limit(64 * 2**30, (str(tmp_path / "absent"),)) == 64 * 2**30

"""The shared VLM client: a global bound, slots shared round-robin between requests, clear failures."""

import asyncio
import base64
import io
import json
import socket

import pytest
from PIL import Image

from tests.fixtures.fake_vllm import FakeVllm, prompt_of, serve_on_loopback
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.metrics import ProxyMetrics
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.options import VlmOptions
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.recognition.vlm_client import FairSlots, VlmClient, VlmError, jpeg_data_url


def test_free_slots_go_round_robin_between_waiting_owners():
    async def main():
        slots = FairSlots(1)
        order: list[str] = []

        async def block(owner: str):
            await slots.acquire(owner)
            order.append(owner)
            await asyncio.sleep(0)
            slots.release()

        await slots.acquire("holder")
        tasks = [asyncio.create_task(block("big")) for _ in range(5)]
        await asyncio.sleep(0)
        tasks += [asyncio.create_task(block("small")) for _ in range(2)]
        await asyncio.sleep(0)
        assert slots.waiting == 7
        slots.release()
        await asyncio.gather(*tasks)
        return order, slots

    order, slots = asyncio.run(main())
    assert order == ["big", "small", "big", "small", "big", "big", "big"]
    assert (slots.waiting, slots.in_use) == (0, 0)


def test_a_cancelled_waiter_gives_up_its_place_and_never_leaks_a_slot():
    async def main():
        slots = FairSlots(1)
        await slots.acquire("a")
        waiter = asyncio.create_task(slots.acquire("b"))
        other = asyncio.create_task(slots.acquire("c"))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.sleep(0)
        slots.release()  # goes to "c", not to the cancelled "b"
        await other
        assert slots.in_use == 1
        # handed over at the moment of cancellation: the slot must come back
        late = asyncio.create_task(slots.acquire("d"))
        await asyncio.sleep(0)
        slots.release()
        late.cancel()
        with pytest.raises(asyncio.CancelledError):
            await late
        return slots

    slots = asyncio.run(main())
    assert (slots.in_use, slots.waiting) == (0, 0)


def test_capacity_must_be_positive():
    with pytest.raises(ValueError):
        FairSlots(0)


def crop() -> Image.Image:
    return Image.new("RGB", (64, 32), "white")


def block_body(client: VlmClient, prompt: str) -> dict:
    """One block's chat body as the pipeline builds it: the crop as a JPEG data URL, then the prompt."""
    return VlmOptions().chat_body(model=client.model, image_url=jpeg_data_url(crop()), prompt=prompt, kind="ocr")


def test_requests_carry_paddlex_chat_body_and_stay_under_the_bound():
    fake = FakeVllm(delay_s=0.02)
    metrics = ProxyMetrics()

    async def main():
        async with serve_on_loopback(fake) as base:
            client = VlmClient(base, "PaddleOCR-VL-0.9B", 3, metrics=metrics)
            try:
                return await asyncio.gather(
                    *(
                        client.complete("req", block_body(client, f"OCR: {i}"))
                        for i in range(12)
                    )
                )
            finally:
                await client.aclose()

    texts = asyncio.run(main())
    assert texts == [f"answer to OCR: {i}" for i in range(12)]
    assert fake.max_in_flight <= 3
    body = fake.bodies[0]
    assert body["model"] == "PaddleOCR-VL-0.9B"
    image_part, text_part = body["messages"][0]["content"]
    assert image_part["image_url"]["url"].startswith("data:image/jpeg;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(image_part["image_url"]["url"].split(",", 1)[1])))
    assert (decoded.format, decoded.size) == ("JPEG", (64, 32))
    assert text_part["type"] == "text"
    assert body["mm_processor_kwargs"] == {"min_pixels": 112896, "max_pixels": 1003520}
    assert body["max_completion_tokens"] == 4096 and body["temperature"] == 0
    assert metrics.vlm_requests.labels(outcome="ok")._value.get() == 12


def test_a_small_request_is_not_starved_by_a_large_one():
    fake = FakeVllm(delay_s=0.01)

    async def main():
        async with serve_on_loopback(fake) as base:
            client = VlmClient(base, "m", 2)
            finished: list[str] = []

            async def one(owner: str, i: int):
                await client.complete(owner, block_body(client, f"{owner} {i}"))
                finished.append(owner)

            big = [asyncio.create_task(one("big", i)) for i in range(40)]
            await asyncio.sleep(0.05)
            small = [asyncio.create_task(one("small", i)) for i in range(3)]
            await asyncio.gather(*big, *small)
            await client.aclose()
            return finished

    finished = asyncio.run(main())
    last_small = max(i for i, owner in enumerate(finished) if owner == "small")
    assert last_small < 20, finished  # done long before the big request drains


@pytest.mark.parametrize(
    "upstream, status, phrase",
    [(500, 502, "answered 500"), (400, 422, "refused this block's request")],
    ids=["server-failure-is-bad-gateway", "refused-request-is-the-clients"],
)
def test_upstream_error_status_is_clear(upstream, status, phrase):
    async def refuse(body):
        return upstream

    async def main():
        async with serve_on_loopback(FakeVllm(answer=refuse)) as base:
            client = VlmClient(base, "m", 1)
            try:
                await client.complete("r", block_body(client, "OCR:"))
            finally:
                await client.aclose()

    with pytest.raises(VlmError) as info:
        asyncio.run(main())
    assert info.value.status_code == status
    assert phrase in info.value.message and f"fake failure {upstream}" in info.value.message


def test_connection_errors_are_retried_then_reported():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed

    async def main():
        client = VlmClient(f"http://127.0.0.1:{port}", "m", 1, connect_retries=2)
        try:
            await client.complete("r", {"model": "m", "messages": []})
        finally:
            await client.aclose()

    with pytest.raises(VlmError, match="after 3 attempts"):
        asyncio.run(main())


def test_a_connection_closed_while_the_body_is_written_is_retried():
    """A kept-alive connection the server drops as the body goes out: nothing was processed, so ask again."""
    answer = json.dumps({"choices": [{"message": {"content": "second try"}}]}).encode()
    connections = 0

    async def handle(reader, writer):
        nonlocal connections
        connections += 1
        if connections == 1:
            await reader.readline()
            writer.transport.abort()  # a reset, while the client is still sending its body
            return
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(answer) + answer)
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = VlmClient(f"http://127.0.0.1:{port}", "m", 1, connect_retries=2)
        try:
            body = {"model": "m", "messages": [{"content": "x" * (8 << 20)}]}  # larger than the socket buffers
            return await client.complete("r", body)
        finally:
            await client.aclose()
            server.close()

    assert asyncio.run(main()) == "second try"
    assert connections == 2


def test_a_slow_upstream_times_out_as_gateway_timeout_and_frees_its_slot():
    async def slow(body):
        await asyncio.sleep(3)
        return "late"

    async def main():
        async with serve_on_loopback(FakeVllm(answer=slow)) as base:
            client = VlmClient(base, "m", 1, timeout_s=0.2)
            try:
                with pytest.raises(VlmError) as info:
                    await client.complete("r", {"model": "m", "messages": [{"content": []}]})
                return info.value, client.slots.in_use
            finally:
                await client.aclose()

    error, in_use = asyncio.run(main())
    assert error.status_code == 504 and in_use == 0


def test_jpeg_data_url_converts_to_rgb():
    url = jpeg_data_url(Image.new("RGBA", (10, 10)))
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).mode == "RGB"


def test_prompt_helper_reads_the_text_part():
    assert prompt_of({"messages": [{"content": [{"type": "image_url"}, {"type": "text", "text": "OCR:"}]}]}) == "OCR:"

"""URL inputs: allow-listed names only, internal addresses refused, redirects re-checked, size and time bounded."""

import asyncio
import ipaddress

import pytest

from tests.fixtures.fake_vllm import serve_on_loopback
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.errors import InputError, LimitExceeded
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.url_fetch import (
    UrlFetcher,
    UrlPolicy,
    host_allowed,
    public_address_refusal,
)

LOOPBACK_NET = ipaddress.ip_network("127.0.0.0/8")
PAYLOAD = b"\x89PNG\r\n\x1a\n" + b"x" * 1000


class FileServer:
    """Serves a few paths and remembers the Host header of every request."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        self.encodings: list[str] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        self.hosts.append(headers.get(b"host", b"").decode())
        self.encodings.append(headers.get(b"accept-encoding", b"").decode())
        path = scope["path"]
        port = scope["server"][1]
        if path == "/doc.png":
            await self._answer(send, 200, PAYLOAD)
        elif path == "/to-doc":
            await self._answer(send, 302, b"", [(b"location", f"http://files.test:{port}/doc.png".encode())])
        elif path == "/to-internal":
            await self._answer(send, 302, b"", [(b"location", f"http://internal.test:{port}/doc.png".encode())])
        elif path == "/to-other":
            await self._answer(send, 302, b"", [(b"location", f"http://other.test:{port}/doc.png".encode())])
        elif path == "/loop":
            await self._answer(send, 302, b"", [(b"location", b"/loop")])
        elif path == "/chunked":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for _ in range(20):
                await send({"type": "http.response.body", "body": b"y" * 1000, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/slow":
            await asyncio.sleep(5)
            await self._answer(send, 200, PAYLOAD)
        else:
            await self._answer(send, 404, b"missing")

    @staticmethod
    async def _answer(send, status, body, headers=()):
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), *headers],
            }
        )
        await send({"type": "http.response.body", "body": body})


NAMES = {
    "files.test": ["127.0.0.1"],
    "other.test": ["127.0.0.1"],
    "internal.test": ["10.0.0.5"],
    "mixed.test": ["127.0.0.1", "192.168.1.20"],
    "dual.test": ["127.0.0.2", "127.0.0.1"],  # nothing listens on the first
}


async def fake_resolve(host, port):
    if host not in NAMES:
        raise OSError(f"unknown host {host}")
    return NAMES[host]


def loopback_is_public(address):
    """Test policy: the loopback file server stands in for a public host; everything else as in production."""
    return None if address in LOOPBACK_NET else public_address_refusal(address)


def fetcher(allow=("files.test", "internal.test", "mixed.test", "dual.test"), max_bytes=10_000, timeout_s=5.0):
    policy = UrlPolicy(allow_hosts=allow, max_bytes=max_bytes, timeout_s=timeout_s)
    return UrlFetcher(policy, resolve=fake_resolve, address_refusal=loopback_is_public)


def run_with_server(check):
    async def main():
        server = FileServer()
        async with serve_on_loopback(server) as base:
            port = int(base.rsplit(":", 1)[1])
            return await check(server, port)

    return asyncio.run(main())


def test_allowed_name_is_fetched_from_the_checked_address_with_its_own_host_header():
    async def check(server, port):
        got = await fetcher().fetch(f"http://files.test:{port}/doc.png")
        assert got.data == PAYLOAD
        assert server.hosts == [f"files.test:{port}"]
        assert server.encodings == ["identity"]  # the size counted is the file's own

    run_with_server(check)


def test_the_next_checked_address_is_tried_when_one_refuses_the_connection():
    async def check(server, port):
        assert (await fetcher().fetch(f"http://dual.test:{port}/doc.png")).data == PAYLOAD
        assert server.hosts == [f"dual.test:{port}"]

    run_with_server(check)


def test_redirects_are_followed_only_to_checked_places():
    async def check(server, port):
        assert (await fetcher().fetch(f"http://files.test:{port}/to-doc")).data == PAYLOAD
        with pytest.raises(InputError, match="10.0.0.5, a private address"):
            await fetcher().fetch(f"http://files.test:{port}/to-internal")
        with pytest.raises(InputError, match="'other.test' is not allowed"):
            await fetcher().fetch(f"http://files.test:{port}/to-other")
        with pytest.raises(InputError, match="redirects"):
            await fetcher().fetch(f"http://files.test:{port}/loop")

    run_with_server(check)


def test_every_resolved_address_is_checked():
    async def check(server, port):
        with pytest.raises(InputError, match="192.168.1.20"):
            await fetcher().fetch(f"http://mixed.test:{port}/doc.png")
        assert server.hosts == []  # refused before connecting

    run_with_server(check)


def test_size_limit_applies_to_declared_and_streamed_lengths():
    async def check(server, port):
        with pytest.raises(LimitExceeded, match="1008 bytes"):
            await fetcher(max_bytes=500).fetch(f"http://files.test:{port}/doc.png")
        with pytest.raises(LimitExceeded, match="at least"):
            await fetcher(max_bytes=5000).fetch(f"http://files.test:{port}/chunked")

    run_with_server(check)


def test_time_limit_and_http_errors_are_input_errors():
    async def check(server, port):
        with pytest.raises(InputError, match="longer than 0.3 s"):
            await fetcher(timeout_s=0.3).fetch(f"http://files.test:{port}/slow")
        with pytest.raises(InputError, match="HTTP 404"):
            await fetcher().fetch(f"http://files.test:{port}/nothing")

    run_with_server(check)


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://127.0.0.1/x.png", "loopback"),
        ("http://localhost/x.png", "loopback"),
        ("http://[::1]/x.png", "loopback"),
        ("http://[::ffff:127.0.0.1]/x.png", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://10.1.2.3/x.png", "private"),
        ("http://0.0.0.0/x.png", "unspecified"),
    ],
)
def test_internal_addresses_are_refused_with_the_real_resolver(url, reason):
    policy = UrlPolicy(allow_hosts=("*",), max_bytes=1000, timeout_s=5)
    with pytest.raises(InputError, match=reason):
        asyncio.run(UrlFetcher(policy).fetch(url))


def test_names_outside_the_allow_list_are_refused_before_resolving():
    async def never(host, port):
        raise AssertionError("resolved a name that is not allowed")

    policy = UrlPolicy(allow_hosts=("docs.example.com",), max_bytes=1000)
    with pytest.raises(InputError, match="not allowed"):
        asyncio.run(UrlFetcher(policy, resolve=never).fetch("https://evil.example.com/a.pdf"))
    with pytest.raises(InputError, match="--url-allow-hosts"):
        asyncio.run(UrlFetcher(UrlPolicy(allow_hosts=(), max_bytes=1000), resolve=never).fetch("https://a.b/c.pdf"))
    with pytest.raises(InputError, match="http:// or https://"):
        asyncio.run(UrlFetcher(policy, resolve=never).fetch("file:///etc/passwd"))


def test_allow_list_matching():
    assert host_allowed("Docs.Example.com", ("docs.example.com",))
    assert host_allowed("a.cdn.example.com", ("*.example.com",))
    assert not host_allowed("example.com.evil.net", ("*.example.com", "example.com"))
    assert not host_allowed("badexample.com", ("*.example.com",))
    assert host_allowed("anything.net", ("*",))


def test_public_addresses_pass_the_check():
    assert public_address_refusal(ipaddress.ip_address("93.184.216.34")) is None
    assert public_address_refusal(ipaddress.ip_address("2606:2800:220:1:248:1893:25c8:1946")) is None
    assert public_address_refusal(ipaddress.ip_address("100.64.0.1")) == "a non-public address"
    assert public_address_refusal(ipaddress.ip_address("fe80::1")) == "a link-local address"
    assert public_address_refusal(ipaddress.ip_address("fd00::1")) == "a private address"
    assert public_address_refusal(ipaddress.ip_address("fec0::1")) == "a site-local address"

"""Fetching a URL input without server-side request forgery: allow-listed names, public addresses only."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Awaitable, Callable

import httpx

from .errors import InputError, LimitExceeded

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
AddressCheck = Callable[[IPAddress], "str | None"]

_REDIRECTS = {301, 302, 303, 307, 308}


@dataclass(frozen=True)
class UrlPolicy:
    """Which URLs may be fetched and how much of them."""

    allow_hosts: tuple[str, ...]
    max_bytes: int
    timeout_s: float = 30.0
    max_redirects: int = 3


@dataclass(frozen=True)
class FetchedFile:
    """The downloaded bytes and the URL they finally came from."""

    data: bytes
    url: str
    content_type: str | None


def host_allowed(host: str, allow_hosts: tuple[str, ...]) -> bool:
    """Exact names match themselves; `*.example.com` matches its subdomains; `*` matches any host."""
    host = host.lower().rstrip(".")
    for entry in allow_hosts:
        entry = entry.lower().rstrip(".")
        if entry == "*" or entry == host:
            return True
        if entry.startswith("*.") and host.endswith(entry[1:]):
            return True
    return False


def public_address_refusal(address: IPAddress) -> str | None:
    """Why an address must not be connected to (loopback, private, link-local, ...), or None."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is not None:
            reason = public_address_refusal(embedded)
            if reason is not None:
                return reason
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if address.is_private:
        return "a private address"
    if address.is_multicast or address.is_reserved or not address.is_global:
        return "a non-public address"
    return None


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for a name."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


class UrlFetcher:
    """Downloads one URL input: the name must be allow-listed and every address it resolves to public.

    The connection goes to an address that was checked (the name is kept for the Host header and
    TLS), so a second DNS answer cannot swap in an internal address; redirects are followed by hand,
    each hop checked the same way. The file is asked for uncompressed, so its size is what is counted.
    """

    def __init__(
        self,
        policy: UrlPolicy,
        *,
        resolve: Resolver = system_resolve,
        address_refusal: AddressCheck = public_address_refusal,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.policy = policy
        self._resolve = resolve
        self._refusal = address_refusal
        self._transport = transport

    async def fetch(self, url: str) -> FetchedFile:
        """The URL's content; InputError for refused or failed fetches, LimitExceeded when too big."""
        try:
            return await asyncio.wait_for(self._fetch(url), self.policy.timeout_s)
        except asyncio.TimeoutError:
            raise InputError(
                f"Fetching the input URL took longer than {self.policy.timeout_s:g} s; "
                "send the file as base64 content instead"
            ) from None

    async def _fetch(self, url: str) -> FetchedFile:
        async with httpx.AsyncClient(
            follow_redirects=False, trust_env=False, transport=self._transport, timeout=self.policy.timeout_s
        ) as client:
            current = url
            for _ in range(self.policy.max_redirects + 1):
                target = self._parse(current)
                addresses = await self._checked_addresses(target)
                response = await self._send(client, target, addresses)
                try:
                    if response.status_code in _REDIRECTS and "location" in response.headers:
                        current = str(target.join(response.headers["location"]))
                        continue
                    if response.status_code != 200:
                        raise InputError(
                            f"Fetching the input URL failed: the server answered HTTP {response.status_code}"
                        )
                    data = await self._read_limited(response)
                    return FetchedFile(data, str(target), response.headers.get("content-type"))
                finally:
                    await response.aclose()
        raise InputError(f"Fetching the input URL failed: more than {self.policy.max_redirects} redirects")

    def _parse(self, url: str) -> httpx.URL:
        try:
            target = httpx.URL(url)
        except (httpx.InvalidURL, ValueError) as exc:
            raise InputError(f"The input URL is not valid: {exc}") from None
        if target.scheme not in ("http", "https") or not target.host:
            raise InputError("The input URL must be an http:// or https:// URL with a host name")
        if not host_allowed(target.host, self.policy.allow_hosts):
            if not self.policy.allow_hosts:
                raise InputError(
                    "URL input is enabled but no host is allowed; start the server with "
                    "--url-allow-hosts HOST[,HOST...] or send the file as base64 content"
                )
            raise InputError(
                f"The input URL's host {target.host!r} is not allowed on this server (--url-allow-hosts); "
                "send the file as base64 content instead"
            )
        return target

    async def _checked_addresses(self, target: httpx.URL) -> list[str]:
        port = target.port or (443 if target.scheme == "https" else 80)
        try:
            addresses = await self._resolve(target.host, port)
        except OSError as exc:
            raise InputError(f"The input URL's host {target.host!r} cannot be resolved ({exc})") from None
        if not addresses:
            raise InputError(f"The input URL's host {target.host!r} has no address")
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            reason = self._refusal(address)
            if reason is not None:
                raise InputError(f"The input URL's host {target.host!r} resolves to {address}, {reason}; refused")
        return addresses

    async def _send(self, client: httpx.AsyncClient, target: httpx.URL, addresses: list[str]) -> httpx.Response:
        """The response from the first checked address that takes the connection."""
        headers = {"Host": target.netloc.decode("ascii"), "Accept": "*/*", "Accept-Encoding": "identity"}
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        failure: httpx.HTTPError | None = None
        for address in addresses:
            request = httpx.Request("GET", target.copy_with(host=address), headers=headers, extensions=extensions)
            try:
                return await client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failure = exc
            except httpx.HTTPError as exc:
                failure = exc
                break
        raise InputError(f"Fetching the input URL failed: {type(failure).__name__}: {failure}")

    async def _read_limited(self, response: httpx.Response) -> bytes:
        limit = self.policy.max_bytes
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise LimitExceeded(_too_big(int(declared), limit))
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise LimitExceeded(_too_big(size, limit, at_least=True))
                chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise InputError(f"Fetching the input URL failed while reading: {type(exc).__name__}: {exc}") from None
        return b"".join(chunks)


def _too_big(size: int, limit: int, *, at_least: bool = False) -> str:
    amount = f"at least {size}" if at_least else str(size)
    return f"The input URL's file is {amount} bytes; this server accepts at most {limit} (--max-body-size)"

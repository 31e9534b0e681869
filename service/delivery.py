"""One delivery attempt: a signed POST of the CloudEvent to a subscriber.

``Deliverer.attempt`` never raises for the subscriber's behaviour: every outcome (status code,
timeout, refused connection, blocked address) comes back as an ``Attempt``. The whole attempt,
connect to last byte read, is bounded by ``RELAY_DELIVERY_TIMEOUT``, and at most 1 KiB of the
answer is read, so a slow or huge answer costs nothing more.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import httpx
from httpx_aiohttp.transport import (
    AiohttpResponseStream,
    AiohttpTransport,
    map_aiohttp_exceptions,
)

from service import __version__
from service.signing import sign
from service.store.base import Claim
from service.targets import (
    TargetNotAllowed,
    TargetPolicy,
    guarded_session,
    is_target_blocked,
)

EXCERPT_BYTES = 1024
USER_AGENT = f"callback-relay/{__version__}"
_USER_AGENT = USER_AGENT.encode()


@functools.lru_cache(maxsize=4096)
def storable_text(raw: bytes | str, limit: int = EXCERPT_BYTES) -> str | None:
    """What a subscriber sent, as text any store keeps as it is: ``None`` when empty.

    A subscriber's answer is arbitrary bytes. Bytes that are not UTF-8 and NUL characters
    (PostgreSQL's text cannot hold NUL; SQLite's can) become U+FFFD, so both stores keep the
    very same text and recording an attempt never fails on what the subscriber answered.
    Nothing is decompressed: the excerpt is the first ``limit`` bytes as they came.
    """
    text = raw[:limit].decode("utf-8", "replace") if isinstance(raw, bytes) else raw[:limit]
    return text.replace("\x00", "\ufffd") or None


def _parsed_url(url: str) -> httpx.URL:
    return httpx.URL(url)


class InMemoryBody(httpx.ByteStream):
    """A request body already in memory: ``DeliveryTransport`` hands its bytes to aiohttp."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.data = data


class DeliveryTransport(AiohttpTransport):
    """httpx-aiohttp's transport, trimmed to what a delivery sends.

    A delivery is a request whose body is in memory and whose headers are already encoded,
    sent without a proxy under one timeout. So the headers go to aiohttp as they are, not
    through httpx's ``Headers`` view (which decodes every one of them again), and the
    ``ClientTimeout`` is built once; exception mapping and the response stream are the
    parent's. The answer is an ``httpx.Response`` like any transport's.
    """

    def __init__(self, session: Callable[[], aiohttp.ClientSession], timeout: float) -> None:
        super().__init__(client=session)
        self._timeout = aiohttp.ClientTimeout(
            sock_connect=timeout, sock_read=timeout, connect=timeout
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        stream = request.stream
        body = stream.data if isinstance(stream, InMemoryBody) else request.read()
        with map_aiohttp_exceptions():
            response = await self.client.request(
                request.method,
                str(request.url),
                headers=headers,
                data=body or None,
                allow_redirects=False,
                auto_decompress=False,
                compress=False,
                timeout=self._timeout,
            )
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=AiohttpResponseStream(response),
            request=request,
        )


@dataclass(frozen=True)
class Attempt:
    started_at: float
    latency_ms: float
    status_code: int | None
    error: str | None
    response_excerpt: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Deliverer:
    """Sends signed deliveries through one pooled, address-guarded HTTP client.

    Args:
        policy: which addresses subscribers may resolve to.
        timeout: seconds one attempt may take in all.
        max_connections: open connections in total (per-subscriber concurrency is the
            worker's business).
    """

    def __init__(self, policy: TargetPolicy, timeout: float, max_connections: int = 512) -> None:
        self.policy = policy
        self.timeout = timeout
        # The transport is called directly with httpx Requests: the client's layers (cookies,
        # auth, redirects) are all things a delivery must not do, and they cost a third of
        # the CPU of an attempt. No redirect is followed (a 3xx is a failed attempt) and no
        # cookie a subscriber sets is kept or sent back.
        self.transport = DeliveryTransport(
            lambda: guarded_session(policy, limit=max_connections, limit_per_host=0), timeout
        )

    async def aclose(self) -> None:
        await self.transport.aclose()

    def headers(self, claim: Claim, timestamp: int, body: bytes) -> list[tuple[bytes, bytes]]:
        """The delivery's headers, already encoded (httpx then skips normalizing them)."""
        return [
            (b"content-type", b"application/cloudevents+json"),
            (b"user-agent", _USER_AGENT),
            (b"webhook-id", claim.event_id.encode()),
            (b"webhook-timestamp", str(timestamp).encode()),
            (b"webhook-signature", sign(claim.secrets, claim.event_id, timestamp, body).encode()),
        ]

    async def attempt(self, claim: Claim) -> Attempt:
        started_at = time.time()
        started = time.perf_counter()
        body = claim.body.encode()
        status: int | None = None
        error: str | None = None
        excerpt = bytearray()
        try:
            # The body as a stream: httpx then skips computing Host and Content-Length,
            # which aiohttp sets anyway from the URL and the bytes (DeliveryTransport).
            request = httpx.Request(
                "POST",
                _parsed_url(claim.url),
                stream=InMemoryBody(body),
                headers=self.headers(claim, int(started_at), body),
            )
            # The guarded session checks the address of every connection it opens.
            async with asyncio.timeout(self.timeout):
                response = await self.transport.handle_async_request(request)
                stream = response.stream
                assert isinstance(stream, httpx.AsyncByteStream)  # noqa: S101 - narrows the type: the transport always streams
                try:
                    status = response.status_code
                    async for chunk in stream:
                        excerpt += chunk
                        if len(excerpt) >= EXCERPT_BYTES:
                            break
                finally:
                    await stream.aclose()
        except TimeoutError:
            error = f"timed out after {self.timeout:g} s"
        except (TargetNotAllowed, httpx.InvalidURL) as exc:
            error = storable_text(f"target not allowed: {exc}", 500)
        except httpx.HTTPError as exc:
            if is_target_blocked(exc):
                error = storable_text(f"target not allowed: {exc}", 500)
            elif status is None:
                # The message may quote what the subscriber sent (a malformed status line).
                error = storable_text(f"{type(exc).__name__}: {exc}", 500)
            # An error while reading the body after the status arrived: the status stands.
        return Attempt(
            started_at=started_at,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            status_code=status,
            error=error,
            response_excerpt=storable_text(bytes(excerpt)),
        )

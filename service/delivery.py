"""One delivery attempt: a signed POST of the CloudEvent to a subscriber, through aiohttp.

``Deliverer.attempt`` never raises for the subscriber's behaviour: every outcome (status code,
timeout, refused or reset connection, failed DNS lookup or TLS handshake, blocked address)
comes back as an ``Attempt`` whose ``error`` names what happened (``failure_text``). The whole
attempt, connect to last byte read, is bounded by ``RELAY_DELIVERY_TIMEOUT``, and at most
1 KiB of the answer is read, so a slow or huge answer costs nothing more.

The session is ``service.guarded_session``'s: its resolver drops refused addresses after
every lookup (so DNS rebinding never reaches a private address) and its middleware refuses
IP-literal hosts; both raise ``TargetBlocked``. No redirect is followed (a 3xx is a failed
attempt), no cookie is kept, and the answer is not decompressed.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ssl
import time
from dataclasses import dataclass

import aiohttp

from service import __version__
from service.clock import Clock, system_clock
from service.guarded_session import guarded_session
from service.retry import RETRY_AFTER_STATUSES
from service.signing import sign
from service.store.base import Claim
from service.targets import TargetBlocked, TargetPolicy
from service.tracing import HEADERS_ONLY, Tracer

EXCERPT_BYTES = 1024
USER_AGENT = f"callback-relay/{__version__}"

#: Longest error text kept with an attempt (it may quote what the subscriber sent).
ERROR_CHARS = 500


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


def _reason(exc: BaseException) -> str:
    """The operating system's or the TLS library's words for ``exc``: for a certificate,
    why it was not trusted (``certificate verify failed: self-signed certificate``)."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        reason = str(exc.reason).replace("_", " ").lower()
        why = getattr(exc, "verify_message", None)  # ssl.SSLCertVerificationError's
        return f"{reason}: {why}" if why else reason
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def failure_text(exc: BaseException, timeout: float) -> str:
    """What went wrong with an attempt, named for what it was (kept with the attempt).

    ``timed out after ...``, ``target not allowed: ...``, ``DNS lookup failed: ...``,
    ``connection refused: ...``, ``connection reset: ...``, ``connection closed: ...``,
    ``TLS handshake failed: ...``, ``TLS certificate rejected: ...``, ``connection failed:
    ...`` (unreachable and other socket errors), ``invalid answer: ...`` (not HTTP); anything
    else as its type and message.
    """
    if isinstance(exc, TimeoutError):  # asyncio.timeout, and aiohttp's socket timeouts
        return f"timed out after {timeout:g} s"
    if isinstance(exc, TargetBlocked | aiohttp.InvalidURL):
        return f"target not allowed: {exc}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        where = f"{exc.host}:{exc.port}"
        cause = exc.os_error
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            return f"DNS lookup failed: {exc.host}: {_reason(cause)}"
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            return f"TLS certificate rejected: {where}: {_reason(exc.certificate_error)}"
        if isinstance(exc, aiohttp.ClientSSLError):
            return f"TLS handshake failed: {where}: {_reason(cause)}"
        if cause.errno == errno.ECONNREFUSED:
            return f"connection refused: {where}"
        if cause.errno == errno.ECONNRESET:
            return f"connection reset: {where}"
        return f"connection failed: {where}: {_reason(cause)}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed: the subscriber closed the connection without answering"
    if isinstance(exc, ConnectionResetError) or (
        isinstance(exc, OSError) and exc.errno == errno.ECONNRESET
    ):
        return "connection reset: the subscriber reset the connection"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"invalid answer: {' '.join(str(exc.message).split())}"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class Attempt:
    started_at: float
    latency_ms: float
    status_code: int | None
    error: str | None
    response_excerpt: str | None
    #: The ``Retry-After`` header of a 429 or 503 answer, as sent (``service.retry`` reads it).
    retry_after: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Deliverer:
    """Sends signed deliveries through one pooled, address-guarded aiohttp session.

    Args:
        policy: which addresses subscribers may resolve to.
        timeout: seconds one attempt may take in all.
        max_connections: open connections in total (per-subscriber concurrency is the
            worker's business).
        clock: where an attempt's start time (and so its signature's timestamp) is read.
        tracer: starts each attempt's span, a child of its event's (``service.tracing``); its
            ``traceparent`` and ``tracestate`` go with the request.
    """

    def __init__(
        self,
        policy: TargetPolicy,
        timeout: float,
        max_connections: int = 512,
        *,
        clock: Clock = system_clock,
        tracer: Tracer = HEADERS_ONLY,
    ) -> None:
        self.policy = policy
        self.tracer = tracer
        self.timeout = timeout
        self.max_connections = max_connections
        self.clock = clock
        # Each phase is bounded too, so aiohttp says which one took too long; the attempt as a
        # whole is bounded by asyncio.timeout in ``attempt``.
        self._client_timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout, sock_connect=timeout, sock_read=timeout
        )
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The guarded session, opened on first use (it needs the running event loop)."""
        if self._session is None:
            self._session = guarded_session(
                self.policy, limit=self.max_connections, limit_per_host=0
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def headers(self, claim: Claim, timestamp: int, body: bytes) -> dict[str, str]:
        """The delivery's headers: the subscriber's own (``service.subscriber_options``, which
        keeps them off the names below), then the relay's (Standard Webhooks: id, timestamp,
        signature)."""
        own = {
            "content-type": "application/cloudevents+json",
            "user-agent": USER_AGENT,
            "webhook-id": claim.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(claim.secrets, claim.event_id, timestamp, body),
        }
        if not claim.headers:
            return own
        headers = dict(claim.headers)
        headers.update(own)
        return headers

    async def attempt(self, claim: Claim) -> Attempt:
        started_at = self.clock()
        started = time.perf_counter()
        span = self.tracer.attempt(claim)
        body = claim.body.encode()
        status: int | None = None
        error: str | None = None
        excerpt = bytearray()
        retry_after: str | None = None
        try:
            async with (
                asyncio.timeout(self.timeout),
                self.session.post(
                    claim.url,
                    data=body,
                    headers=self.headers(claim, int(started_at), body) | span.context.headers(),
                    allow_redirects=False,
                    auto_decompress=False,
                    timeout=self._client_timeout,
                ) as response,
            ):
                status = response.status
                if status in RETRY_AFTER_STATUSES:
                    retry_after = response.headers.get("Retry-After")
                while len(excerpt) < EXCERPT_BYTES:
                    chunk = await response.content.readany()
                    if not chunk:
                        break
                    excerpt += chunk
            # Leaving the block releases the connection; one whose answer was not read to
            # its end is closed rather than reused.
        except (TimeoutError, TargetBlocked, aiohttp.InvalidURL) as exc:
            error = storable_text(failure_text(exc, self.timeout), ERROR_CHARS)
        except (aiohttp.ClientError, OSError) as exc:
            if status is None:
                error = storable_text(failure_text(exc, self.timeout), ERROR_CHARS)
            # An error while reading the body after the status arrived: the status stands.
        span.end(status, error)
        return Attempt(
            started_at=started_at,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            status_code=status,
            error=error,
            response_excerpt=storable_text(bytes(excerpt)),
            retry_after=retry_after,
        )

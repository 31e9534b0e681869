"""The aiohttp session delivery uses: it connects only to addresses the target policy allows.

``service.targets`` decides which addresses are allowed; this module enforces that decision at
connection time. Its resolver (``GuardedResolver``) drops refused addresses after each lookup,
so a name re-pointed to a private address after registration (DNS rebinding) is never
connected to; its middleware (``_LiteralGuard``) refuses IP-literal hosts (aiohttp does not
resolve those) and proxies on every request, redirects included. Both raise ``TargetBlocked``,
which aiohttp lets through as it is (it wraps only ``OSError``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import threading
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from service.targets import TargetBlocked, TargetPolicy, literal_ip

#: Seconds a guarded session keeps a (checked) DNS answer.
DNS_CACHE_TTL = 10


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the attempt that asked gave up (timeout): nobody waits any more
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _LookupThreads:
    """What aiohttp's ``ThreadedResolver`` uses of its loop, with each ``getaddrinfo`` run in a
    thread of its own rather than in the loop's shared executor.

    A lookup cannot be cancelled: when a subscriber's DNS does not answer, its thread stays
    blocked until the system resolver gives up (seconds past the delivery timeout). In the
    shared pool (``min(32, CPUs + 4)`` threads) a handful of such names made every other
    subscriber's lookup queue behind them, delaying their deliveries by as long. aiohttp runs
    one lookup per host and port at a time, so the threads are at most the subscribers'
    hosts being looked up at once.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    async def getaddrinfo(
        self,
        host: str,
        port: Any,
        *,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[Any]:
        future: asyncio.Future[list[Any]] = self._loop.create_future()

        def lookup() -> None:
            result: Any = None
            error: BaseException | None = None
            try:
                result = socket.getaddrinfo(host, port, family, type, proto, flags)
            except BaseException as exc:  # handed to the waiting coroutine
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(_settle, future, result, error)

        threading.Thread(target=lookup, name="relay-dns", daemon=True).start()
        return await future

    async def getnameinfo(self, sockaddr: Any, flags: int = 0) -> tuple[str, str]:
        return await self._loop.getnameinfo(sockaddr, flags)


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that returns only the addresses ``policy`` allows.

    Wraps ``inner`` (default: aiohttp's ``ThreadedResolver`` with a thread per lookup, see
    ``_LookupThreads``; it needs a running event loop).
    When every address is refused, ``resolve`` raises ``TargetBlocked``, which leaves the
    request as it is; a failed lookup is an ``OSError``, which aiohttp reports as
    ``ClientConnectorDNSError``.
    """

    def __init__(self, policy: TargetPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        if inner is None:
            lookups = _LookupThreads(asyncio.get_running_loop())
            inner = ThreadedResolver(lookups)  # type: ignore[arg-type]
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The addresses of ``host`` that the policy allows.

        Raises:
            TargetBlocked: none of them is allowed.
            OSError: the lookup failed.
        """
        allowed: list[ResolveResult] = []
        refused: list[str] = []
        for result in await self._inner.resolve(host, port, family):
            try:
                why = self.policy.reason(result["host"])
            except ValueError:
                why = "not an IP address"
            if why is None:
                allowed.append(result)
            else:
                refused.append(f"{result['host']} ({why})")
        if not allowed:
            raise TargetBlocked(
                f"{host} resolves to no allowed address: {', '.join(refused) or 'none'}"
            )
        return allowed

    async def close(self) -> None:
        """Close the wrapped resolver."""
        await self._inner.close()


@functools.lru_cache(maxsize=4096)
def _literal_host_refusal(policy: TargetPolicy, host: str) -> str | None:
    """Why an IP-literal ``host`` is refused under ``policy`` (None: allowed or a DNS name).

    Cached: the middleware asks on every request, and subscribers are few.
    """
    try:
        ip = literal_ip(host)
    except ValueError as exc:
        return str(exc)
    kind = None if ip is None else policy.reason(ip)
    return None if kind is None else f"{ip} is {kind}"


@dataclass(frozen=True)
class _LiteralGuard:
    """aiohttp client middleware refusing IP-literal hosts (which skip the resolver) and
    proxies (which would resolve the target themselves), on every request and redirect."""

    policy: TargetPolicy

    async def __call__(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        why = (
            "a guarded session does not use proxies"
            if request.proxy is not None
            else _literal_host_refusal(self.policy, request.url.raw_host or "")
        )
        if why is not None:
            raise TargetBlocked(why)
        return await handler(request)


def guarded_session(
    policy: TargetPolicy,
    *,
    limit: int = 100,
    limit_per_host: int = 10,
) -> aiohttp.ClientSession:
    """An aiohttp session that connects only to addresses ``policy`` allows.

    Its connector resolves through ``GuardedResolver`` and caches answers for
    ``DNS_CACHE_TTL`` seconds; a middleware refuses IP-literal hosts and proxies on every
    request. Both raise ``TargetBlocked``. Certificates are verified; cookies are not kept.
    ``limit`` caps open connections in total, ``limit_per_host`` per host (0: no cap). Must
    be called inside a running event loop.

    Raises:
        RuntimeError: no event loop is running.
    """
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(policy),
        ttl_dns_cache=DNS_CACHE_TTL,
        limit=limit,
        limit_per_host=limit_per_host,
    )
    return aiohttp.ClientSession(
        connector=connector,
        middlewares=(_LiteralGuard(policy),),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
    )

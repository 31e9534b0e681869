"""Which targets the relay may connect to: address policy, URL checks, and real guarded HTTP."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from ipaddress import ip_address, ip_network
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import given
from hypothesis import strategies as st

from service import targets
from service.errors import InvalidPayload
from service.guarded_session import GuardedResolver, guarded_session
from service.settings import Settings
from service.targets import (
    InvalidTargetUrl,
    TargetBlocked,
    TargetNotAllowed,
    TargetPolicy,
    TargetUnresolvable,
    check_target,
    check_url_syntax,
    guard_request_url,
)
from tests.edge import DnsTable, TinyServer
from tests.edge import fake_dns as edge_dns

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "this network"),
    ("192.0.0.1", "IETF protocol assignment"),
    ("192.0.2.1", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("198.51.100.1", "documentation"),
    ("203.0.113.1", "documentation"),
    ("224.0.0.1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fec0::1", "site-local"),
    ("fc00::1", "unique local"),
    ("fd12:3456::1", "unique local"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("2001:2::1", "benchmarking"),
    ("100::1", "reserved"),
    ("::7f00:1", "reserved"),
    ("::ffff:127.0.0.1", "IPv4-mapped form of 127.0.0.1, a loopback"),
    ("::ffff:169.254.169.254", "IPv4-mapped form of 169.254.169.254, a link-local"),
    ("::ffff:10.0.0.1", "IPv4-mapped form of 10.0.0.1, a private"),
    ("64:ff9b::7f00:1", "NAT64 form of 127.0.0.1, a loopback"),
    ("64:ff9b::a9fe:a9fe", "NAT64 form of 169.254.169.254"),
    ("2002:7f00:1::", "6to4 address embedding 127.0.0.1, a loopback"),
    ("2002:c0a8:101::1", "6to4 address embedding 192.168.1.1, a private"),
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo address embedding 127.0.0.1"),
]

PUBLIC = [
    "93.184.216.34",
    "8.8.8.8",
    "1.1.1.1",
    "2606:2800:220:1:248:1893:25c8:1946",
    "2a00:1450:4001:80b::200e",
    "::ffff:93.184.216.34",
    "64:ff9b::808:808",
    "2002:808:808::1",
]


def url_of(address: str, port: int | None = None) -> str:
    """An http URL whose host is the literal ``address``."""
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}{'' if port is None else f':{port}'}/hook"


@pytest.fixture
def anyio_backend() -> str:
    """Run the async tests of this file on asyncio."""
    return "asyncio"


# --- the address policy ---------------------------------------------------------------------


@pytest.mark.parametrize(("address", "kind"), REFUSED)
def test_default_policy_refuses_private_and_special_addresses(address: str, kind: str) -> None:
    """Every private, local, special or embedded-private address is refused, saying what it is."""
    policy = TargetPolicy()
    reason = policy.reason(ip_address(address))
    assert reason is not None and kind in reason
    assert not policy.address_allowed(address)


@pytest.mark.parametrize("address", PUBLIC)
def test_default_policy_allows_public_addresses(address: str) -> None:
    """Public unicast addresses (and NAT64/6to4/mapped forms of public IPv4) are allowed."""
    policy = TargetPolicy()
    assert policy.reason(ip_address(address)) is None
    assert policy.address_allowed(address)


def test_allowlist_opens_exactly_its_networks() -> None:
    """An allowlisted CIDR is allowed (also IPv4-mapped); its neighbours stay refused."""
    policy = TargetPolicy(allowlist=(ip_network("10.1.0.0/16"), ip_network("fd00:1::/32")))
    assert policy.address_allowed("10.1.0.0")
    assert policy.address_allowed("10.1.255.255")
    assert policy.address_allowed("::ffff:10.1.2.3")
    assert policy.address_allowed("fd00:1::5")
    assert not policy.address_allowed("10.0.255.255")
    assert not policy.address_allowed("10.2.0.0")
    assert not policy.address_allowed("fd00:2::5")
    assert not policy.address_allowed("127.0.0.1")
    assert not policy.address_allowed("169.254.169.254")
    assert policy.address_allowed("93.184.216.34")


@pytest.mark.parametrize(("address", "kind"), REFUSED)
def test_allow_private_opens_every_address(address: str, kind: str) -> None:
    """With allow_private every refused address is allowed."""
    assert TargetPolicy(allow_private=True).reason(address) is None


def test_policy_from_settings() -> None:
    """The policy follows RELAY_ALLOW_PRIVATE_TARGETS and RELAY_TARGET_ALLOWLIST."""
    assert TargetPolicy.from_settings(Settings()) == TargetPolicy()
    settings = Settings.from_env(
        {"RELAY_ALLOW_PRIVATE_TARGETS": "true", "RELAY_TARGET_ALLOWLIST": "10.0.0.0/8, ::1/128"}
    )
    policy = TargetPolicy.from_settings(settings)
    assert policy == TargetPolicy(True, (ip_network("10.0.0.0/8"), ip_network("::1/128")))


@given(st.ip_addresses())
def test_at_least_as_strict_as_the_standard_library(address: Any) -> None:
    """Every address Python calls non-global is refused, except embedded forms of public IPv4."""
    policy = TargetPolicy()
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo or (None,))[-1]
        if embedded is not None:
            if not policy.address_allowed(embedded):
                assert not policy.address_allowed(address)
            return
    if not address.is_global:
        assert not policy.address_allowed(address)


# --- URL syntax -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("ftp://example.com/hook", "target_not_allowed"),
        ("file:///etc/passwd", "target_not_allowed"),
        ("gopher://example.com:70/", "target_not_allowed"),
        ("javascript:alert(1)", "target_not_allowed"),
        ("http://user:secret@example.com/hook", "target_not_allowed"),
        ("https://token@example.com/hook", "target_not_allowed"),
        ("http://example.com\\@127.0.0.1/", "target_not_allowed"),
        ("http:///hook", "invalid_url"),
        ("example.com/hook", "invalid_url"),
        (" http://example.com/", "invalid_url"),
        ("http://example.com/\n", "invalid_url"),
        ("http://exa mple.com/", "invalid_url"),
        ("http://example.com:0/", "invalid_url"),
        ("http://example.com:99999/", "invalid_url"),
        ("http://2130706433/", "invalid_url"),
        ("http://127.1/", "invalid_url"),
        ("http://127.0.0.1./", "invalid_url"),
        ("http://[fe80::1%25eth0]/", "invalid_url"),
        ("http://-bad-.example.com/", "invalid_url"),
        ("https://example.com/" + "a" * 2030, "invalid_url"),
    ],
)
def test_malformed_or_disallowed_urls_are_refused(url: str, code: str) -> None:
    """Other schemes, credentials, missing hosts, odd hosts/ports and long URLs are a 422."""
    with pytest.raises(TargetNotAllowed) as info:
        check_url_syntax(url)
    assert info.value.code == code
    assert info.value.status_code == 422
    assert isinstance(info.value, InvalidPayload)
    assert isinstance(info.value, InvalidTargetUrl) == (code == "invalid_url")


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hooks?x=1#frag",
        "http://EXAMPLE.com:8080/",
        "https://hooks.bücher.example/in",
        "https://under_score.example.com./",
        "http://[2606:2800:220:1:248:1893:25c8:1946]:8443/",
        "http://93.184.216.34/",
        "https://example.com/" + "a" * 2028,
    ],
)
def test_well_formed_urls_pass_the_syntax_check(url: str) -> None:
    """Absolute http(s) URLs with a valid host and port pass."""
    check_url_syntax(url)


# --- registration: check_target -------------------------------------------------------------


@pytest.fixture
def fake_dns() -> Iterator[DnsTable]:
    """Answer getaddrinfo from a table instead of DNS (a missing name does not resolve)."""
    with edge_dns() as table:
        yield table


@pytest.mark.anyio
@pytest.mark.parametrize(("address", "kind"), REFUSED)
async def test_check_target_refuses_private_literals(address: str, kind: str) -> None:
    """A URL whose host is a refused IP literal is refused with target_not_allowed."""
    with pytest.raises(TargetNotAllowed) as info:
        await check_target(url_of(address, 8080), TargetPolicy())
    assert info.value.code == "target_not_allowed"
    assert info.value.status_code == 422
    assert kind in info.value.message
    assert "RELAY_TARGET_ALLOWLIST" in info.value.message


@pytest.mark.anyio
@pytest.mark.parametrize("address", PUBLIC)
async def test_check_target_allows_public_literals(address: str) -> None:
    """A URL whose host is a public IP literal is allowed without any lookup."""
    await check_target(url_of(address), TargetPolicy())


@pytest.mark.anyio
async def test_localhost_is_refused() -> None:
    """localhost resolves to a loopback address, so it is refused at registration."""
    with pytest.raises(TargetNotAllowed) as info:
        await check_target("http://localhost:8080/hook", TargetPolicy())
    assert info.value.code == "target_not_allowed"
    assert "localhost resolves to 127.0.0.1, a loopback address" in info.value.message


@pytest.mark.anyio
async def test_numeric_host_spellings_are_refused() -> None:
    """Hex and shortened IPv4 spellings never get past the check."""
    for url in ("http://0x7f.0.0.1/", "http://0x7f000001/", "http://127.1/", "http://2130706433/"):
        with pytest.raises(TargetNotAllowed):
            await check_target(url, TargetPolicy())


@pytest.mark.anyio
async def test_name_with_any_private_address_is_refused(fake_dns: dict[str, Any]) -> None:
    """A name is refused if any one of its addresses is refused, and allowed if none is."""
    fake_dns["mixed.example"] = ["93.184.216.34", "10.0.0.7"]
    fake_dns["public.example"] = ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]
    fake_dns["metadata.example"] = ["::ffff:169.254.169.254"]
    with pytest.raises(TargetNotAllowed, match=r"mixed\.example resolves to 10\.0\.0\.7, a priv"):
        await check_target("https://mixed.example/hook", TargetPolicy())
    with pytest.raises(TargetNotAllowed, match=r"169\.254\.169\.254, a link-local address"):
        await check_target("https://metadata.example/hook", TargetPolicy())
    await check_target("https://public.example/hook", TargetPolicy())
    allow = TargetPolicy(allowlist=(ip_network("10.0.0.0/24"),))
    await check_target("https://mixed.example/hook", allow)


@pytest.mark.anyio
async def test_unresolvable_name_is_refused(fake_dns: dict[str, Any]) -> None:
    """A name that does not resolve is a 422 target_unresolvable."""
    with pytest.raises(TargetUnresolvable) as info:
        await check_target("https://nowhere.example/hook", TargetPolicy())
    assert info.value.code == "target_unresolvable"
    assert info.value.status_code == 422
    assert "nowhere.example does not resolve" in info.value.message


@pytest.mark.anyio
async def test_slow_lookup_is_refused(
    fake_dns: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lookup that outlasts DNS_TIMEOUT is refused as unresolvable."""
    monkeypatch.setattr(targets, "DNS_TIMEOUT", 0.05)

    def slow() -> list[str]:
        time.sleep(0.3)
        return ["93.184.216.34"]

    fake_dns["slow.example"] = slow
    with pytest.raises(TargetUnresolvable, match=r"took longer than 0\.05 s"):
        await check_target("https://slow.example/hook", TargetPolicy())


@pytest.mark.anyio
async def test_allow_private_skips_lookup(fake_dns: dict[str, Any]) -> None:
    """With allow_private nothing is resolved, so any well-formed target is accepted."""
    policy = TargetPolicy(allow_private=True)
    await check_target("http://localhost:8080/hook", policy)
    await check_target("http://nowhere.example/hook", policy)
    await check_target("http://[::1]/hook", policy)
    with pytest.raises(TargetNotAllowed):
        await check_target("ftp://localhost/", policy)


# --- delivery: resolver and session ---------------------------------------------------------


class FixedResolver(AbstractResolver):
    """A resolver answering every name with fixed addresses."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The fixed addresses."""
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=0,
            )
            for a in self.addresses
        ]

    async def close(self) -> None:
        """Nothing to release."""


@pytest.mark.anyio
async def test_guarded_resolver_drops_refused_addresses() -> None:
    """The resolver keeps only allowed addresses and fails with TargetBlocked if none is left
    (not an OSError: aiohttp would wrap that in a connection error)."""
    mixed = GuardedResolver(TargetPolicy(), FixedResolver("127.0.0.1", "93.184.216.34", "::1"))
    assert [r["host"] for r in await mixed.resolve("a.example", 443)] == ["93.184.216.34"]
    private = GuardedResolver(TargetPolicy(), FixedResolver("127.0.0.1", "fd00::1"))
    with pytest.raises(TargetBlocked, match=r"127\.0\.0\.1 \(a loopback address\)") as info:
        await private.resolve("a.example", 443)
    assert not isinstance(info.value, OSError)
    allow = TargetPolicy(allowlist=(ip_network("fd00::/8"),))
    kept = await GuardedResolver(allow, FixedResolver("127.0.0.1", "fd00::1")).resolve("a", 1)
    assert [r["host"] for r in kept] == ["fd00::1"]
    await private.close()


def test_guard_request_url_checks_literals_only() -> None:
    """guard_request_url refuses refused IP literals and leaves names to the resolver."""
    with pytest.raises(TargetNotAllowed, match=r"127\.0\.0\.1 is a loopback address"):
        guard_request_url("http://127.0.0.1:8080/", TargetPolicy())
    with pytest.raises(TargetNotAllowed):
        guard_request_url(httpx.URL("http://[::ffff:7f00:1]/"), TargetPolicy())
    with pytest.raises(TargetNotAllowed):
        guard_request_url("http://user:pw@93.184.216.34/", TargetPolicy())
    guard_request_url("http://93.184.216.34/", TargetPolicy())
    guard_request_url("http://localhost/", TargetPolicy())
    guard_request_url(
        "http://127.0.0.1:8080/", TargetPolicy(allowlist=(ip_network("127.0.0.1/32"),))
    )


def test_guarded_session_needs_a_running_loop() -> None:
    """guarded_session outside an event loop fails instead of building a broken session."""
    with pytest.raises(RuntimeError):
        guarded_session(TargetPolicy())


@asynccontextmanager
async def guarded_client(policy: TargetPolicy) -> AsyncIterator[aiohttp.ClientSession]:
    """A guarded aiohttp session, as delivery uses it (closed afterwards)."""
    session = guarded_session(policy, limit=10, limit_per_host=2)
    try:
        yield session
    finally:
        await session.close()


async def fetch(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, str]:
    """The status and text of one request (redirects followed, as a browser would)."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with session.request(kwargs.pop("method", "GET"), url, timeout=timeout, **kwargs) as r:
        return r.status, await r.text()


@pytest.mark.anyio
async def test_guarded_session_never_connects_to_a_name_resolving_to_loopback() -> None:
    """Through real HTTP, localhost is refused by the resolver and the server sees nothing."""
    async with TinyServer() as server, guarded_client(TargetPolicy()) as client:
        with pytest.raises(TargetBlocked, match="loopback"):
            await fetch(client, f"http://localhost:{server.port}/")
        assert server.connections == 0


@pytest.mark.anyio
async def test_guarded_session_never_connects_to_a_loopback_literal() -> None:
    """Through real HTTP, an IP-literal loopback host is refused before connecting."""
    async with TinyServer() as server, guarded_client(TargetPolicy()) as client:
        url = f"http://127.0.0.1:{server.port}/"
        with pytest.raises(TargetNotAllowed):
            guard_request_url(url, TargetPolicy())
        with pytest.raises(TargetBlocked, match="loopback"):
            await fetch(client, url)
        assert server.connections == 0


@pytest.mark.anyio
async def test_allowlisted_loopback_is_delivered_to() -> None:
    """With 127.0.0.0/8 allowlisted the same requests reach the server."""
    policy = TargetPolicy(allowlist=(ip_network("127.0.0.0/8"),))
    async with TinyServer() as server, guarded_client(policy) as client:
        guard_request_url(f"http://127.0.0.1:{server.port}/", policy)
        by_name = await fetch(client, f"http://localhost:{server.port}/")
        by_address = await fetch(
            client, f"http://127.0.0.1:{server.port}/", method="POST", json={"a": 1}
        )
        assert by_name == (200, "ok")
        assert by_address == (200, "ok")
        assert server.connections == 2


@pytest.mark.anyio
async def test_redirect_to_a_refused_address_is_not_followed() -> None:
    """A redirect from an allowed target to a refused address fails without connecting."""
    policy = TargetPolicy(allowlist=(ip_network("127.0.0.1/32"),))
    try:
        inner = await TinyServer("127.0.0.2").__aenter__()
    except OSError:
        pytest.skip("127.0.0.2 is not available on this host")
    try:
        location = f"http://127.0.0.2:{inner.port}/admin"
        async with TinyServer(location=location) as outer, guarded_client(policy) as client:
            with pytest.raises(TargetBlocked, match=r"127\.0\.0\.2 is a loopback"):
                await fetch(client, f"http://localhost:{outer.port}/")
            assert outer.connections == 1
            assert inner.connections == 0
    finally:
        await inner.__aexit__()


@pytest.mark.anyio
async def test_ordinary_connection_failure_is_not_reported_as_blocked() -> None:
    """A refused connection to an allowed address is a connection error, not a policy block."""
    policy = TargetPolicy(allowlist=(ip_network("127.0.0.0/8"),))
    async with TinyServer() as server:
        port = server.port
    async with guarded_client(policy) as client:
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await fetch(client, f"http://127.0.0.1:{port}/")
        assert isinstance(info.value.os_error, ConnectionRefusedError)

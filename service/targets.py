"""Which network targets the relay may connect to (subscriber URLs and their addresses).

The relay delivers webhooks to URLs that API clients give it, so it must not become a way
into the network it runs in. The contract:

* A target URL is ``http`` or ``https``, absolute, at most ``MAX_URL_LENGTH`` characters, has a
  host (a DNS name or a canonical IP literal, no IPv6 zone id), a port from 1 to 65535 if one is
  given, and no credentials (``user:password@``).
* An address is *refused* unless it is a public unicast address. Refused are: loopback,
  RFC 1918 private, carrier-grade NAT (100.64/10), link-local (169.254/16, where cloud metadata
  services live; fe80::/10), "this network" and unspecified, multicast, broadcast, reserved
  (240/4; IPv6 outside 2000::/3), IETF protocol assignments (192.0.0/24, 2001::/23),
  benchmarking, documentation, unique local (fc00::/7), site-local (fec0::/10), and IPv6
  forms embedding a refused IPv4 address: IPv4-mapped (::ffff:0:0/96), NAT64
  (64:ff9b::/96), 6to4 (2002::/16) and Teredo (2001::/32). An embedding form whose IPv4
  address is public is judged by that address (NAT64 is how IPv6-only networks reach IPv4).
  See ``IPV4_REFUSED`` and ``IPV6_REFUSED`` for the exact table.
* ``RELAY_ALLOW_PRIVATE_TARGETS=true`` allows every address; ``RELAY_TARGET_ALLOWLIST`` allows
  exactly the addresses inside its CIDRs (an IPv4-mapped address also when its IPv4 address is
  inside). Both are for local setups and tests.
* At registration ``check_target`` refuses a URL whose host is, or resolves to, *any* refused
  address, and a name that does not resolve (unless private targets are allowed, in which case
  nothing is resolved).
* At delivery the connection goes only to addresses that were checked: the session delivery
  uses (``service.guarded_session``) drops refused addresses after each lookup (DNS
  rebinding) and refuses IP-literal hosts and proxies, raising ``TargetBlocked``.
  ``guard_request_url`` makes the same literal check before a request, as a ``TargetNotAllowed``
  the delivery code can treat as permanent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass

import httpx

from service.errors import InvalidPayload
from service.settings import IPNetwork, Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Longest target URL accepted, in characters.
MAX_URL_LENGTH = 2048
#: Seconds ``check_target`` waits for a DNS lookup.
DNS_TIMEOUT = 5.0

ALLOWED_SCHEMES = ("http", "https")
_HINT = "set RELAY_TARGET_ALLOWLIST to allow it"
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$", re.IGNORECASE)


def _v4(cidr: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(cidr)


def _v6(cidr: str) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network(cidr)


#: Refused IPv4 networks and what they are; the first match names the address.
IPV4_REFUSED: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_v4("0.0.0.0/32"), "the unspecified address"),
    (_v4("0.0.0.0/8"), 'a "this network" address'),
    (_v4("10.0.0.0/8"), "a private address"),
    (_v4("100.64.0.0/10"), "a carrier-grade NAT address"),
    (_v4("127.0.0.0/8"), "a loopback address"),
    (_v4("169.254.0.0/16"), "a link-local address"),
    (_v4("172.16.0.0/12"), "a private address"),
    (_v4("192.0.0.0/24"), "an IETF protocol assignment address"),
    (_v4("192.0.2.0/24"), "a documentation address"),
    (_v4("192.88.99.0/24"), "a reserved (former 6to4 relay) address"),
    (_v4("192.168.0.0/16"), "a private address"),
    (_v4("198.18.0.0/15"), "a benchmarking address"),
    (_v4("198.51.100.0/24"), "a documentation address"),
    (_v4("203.0.113.0/24"), "a documentation address"),
    (_v4("224.0.0.0/4"), "a multicast address"),
    (_v4("255.255.255.255/32"), "the broadcast address"),
    (_v4("240.0.0.0/4"), "a reserved address"),
)

#: Refused IPv6 networks, checked after the IPv4-embedding forms; anything outside
#: 2000::/3 (global unicast) is refused as reserved as well.
IPV6_REFUSED: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_v6("::/128"), "the unspecified address"),
    (_v6("::1/128"), "a loopback address"),
    (_v6("fe80::/10"), "a link-local address"),
    (_v6("fec0::/10"), "a site-local address"),
    (_v6("fc00::/7"), "a unique local (private) address"),
    (_v6("ff00::/8"), "a multicast address"),
    (_v6("2001:db8::/32"), "a documentation address"),
    (_v6("3fff::/20"), "a documentation address"),
    (_v6("2001:2::/48"), "a benchmarking address"),
    (_v6("2001::/23"), "an IETF protocol assignment address"),
)

_GLOBAL_UNICAST = _v6("2000::/3")
_NAT64 = _v6("64:ff9b::/96")


class TargetNotAllowed(InvalidPayload):
    """The target URL points somewhere the relay may not connect to.

    The base of every target refusal (HTTP 422): ``target_not_allowed`` (scheme, credentials,
    refused address), and the subclasses ``TargetUnresolvable`` (``target_unresolvable``) and
    ``InvalidTargetUrl`` (``invalid_url``), so one ``except TargetNotAllowed`` catches them all.
    """

    status_code = 422
    code = "target_not_allowed"


class TargetUnresolvable(TargetNotAllowed):
    """The target host name does not resolve, so its addresses cannot be checked."""

    code = "target_unresolvable"


class InvalidTargetUrl(TargetNotAllowed):
    """The target is not a well-formed absolute URL."""

    code = "invalid_url"


class TargetBlocked(Exception):
    """A guarded session refused to connect: the target policy does not allow the address.

    Raised by ``GuardedResolver`` and the session's middleware, out of the request as it is:
    not an ``OSError``, so aiohttp does not wrap it in a connection error.
    """


def _classify(ip: IPAddress) -> str | None:
    """What kind of refused address ``ip`` is, or None if it is public (policy not applied)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return next((kind for net, kind in IPV4_REFUSED if ip in net), None)
    embedded: list[tuple[str, ipaddress.IPv4Address]] = []
    if ip.ipv4_mapped is not None:
        embedded = [("an IPv4-mapped form of", ip.ipv4_mapped)]
    elif ip in _NAT64:
        embedded = [("a NAT64 form of", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))]
    elif ip.sixtofour is not None:
        embedded = [("a 6to4 address embedding", ip.sixtofour)]
    elif ip.teredo is not None:
        server, client = ip.teredo
        embedded = [("a Teredo address embedding", client), ("a Teredo address embedding", server)]
    if embedded:
        for form, v4 in embedded:
            kind = _classify(v4)
            if kind is not None:
                return f"{form} {v4}, {kind}"
        return None
    kind = next((kind for net, kind in IPV6_REFUSED if ip in net), None)
    if kind is None and ip not in _GLOBAL_UNICAST:
        kind = "a reserved address"
    return kind


def _parse_ip(text: str) -> IPAddress:
    """An address from a resolver or URL; IPv6 zone ids are dropped (they never make an address
    public)."""
    return ipaddress.ip_address(text.split("%", 1)[0])


@dataclass(frozen=True)
class TargetPolicy:
    """Which addresses the relay may connect to.

    ``allow_private`` allows every address; ``allowlist`` allows exactly the addresses in its
    networks even though they are refused otherwise. The default policy allows public unicast
    addresses only (see the module docstring).
    """

    allow_private: bool = False
    allowlist: tuple[IPNetwork, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowlist", tuple(self.allowlist))

    @classmethod
    def from_settings(cls, settings: Settings) -> TargetPolicy:
        """The policy of ``RELAY_ALLOW_PRIVATE_TARGETS`` and ``RELAY_TARGET_ALLOWLIST``."""
        return cls(
            allow_private=settings.allow_private_targets, allowlist=settings.target_allowlist
        )

    def _allowlisted(self, ip: IPAddress) -> bool:
        if any(ip in net for net in self.allowlist):
            return True
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        return mapped is not None and any(mapped in net for net in self.allowlist)

    def reason(self, ip: IPAddress | str) -> str | None:
        """Why ``ip`` is refused (e.g. ``"a loopback address"``), or None when it is allowed.

        Raises:
            ValueError: ``ip`` is a string that is not an IP address.
        """
        if isinstance(ip, str):
            ip = _parse_ip(ip)
        if self.allow_private or self._allowlisted(ip):
            return None
        return _classify(ip)

    def address_allowed(self, ip: IPAddress | str) -> bool:
        """Whether the relay may connect to ``ip``."""
        return self.reason(ip) is None


def _looks_numeric(host: str) -> bool:
    """Whether ``host`` is meant as an IP literal (aiohttp's rule: a colon, or digits and dots)."""
    return ":" in host or host.replace(".", "").isdigit()


def literal_ip(host: str) -> IPAddress | None:
    """The address of an IP-literal host, or None for a DNS name.

    Raises:
        ValueError: ``host`` looks like an IP literal but is not a canonical one (``127.1``,
            ``2130706433``, ``fe80::1%eth0``, a trailing dot).
    """
    if not _looks_numeric(host):
        return None
    if "%" in host:
        raise ValueError(f"{host} has an IPv6 zone id")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host} is not a canonical IP address") from None
    return ip


def _split(url: str | httpx.URL) -> tuple[str, int | None]:
    """Check the syntax of ``url``; return its ASCII host and explicit port."""
    text = str(url)
    if len(text) > MAX_URL_LENGTH:
        raise InvalidTargetUrl(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise InvalidTargetUrl(f"the URL is malformed: {exc}") from None
    if not parsed.scheme:
        raise InvalidTargetUrl("the URL must be absolute (http:// or https://)")
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise TargetNotAllowed(
            f"the URL scheme {parsed.scheme!r} is not allowed; use http or https"
        )
    if parsed.userinfo:
        raise TargetNotAllowed("the URL must not contain credentials (user:password@)")
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise InvalidTargetUrl("the URL has no host")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise InvalidTargetUrl(f"the URL port {parsed.port} is not from 1 to 65535")
    try:
        literal = literal_ip(host)
    except ValueError as exc:
        raise InvalidTargetUrl(f"the URL host {exc}") from None
    if literal is None:
        name = host[:-1] if host.endswith(".") else host
        if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
            raise InvalidTargetUrl(f"the URL host {host!r} is not a valid host name")
    return host, parsed.port


def check_url_syntax(url: str) -> None:
    """Check that ``url`` may be a target, without looking at its addresses.

    Raises:
        InvalidTargetUrl: (a ``TargetNotAllowed``, code ``invalid_url``) the URL is malformed:
            longer than ``MAX_URL_LENGTH``, not absolute, no host, a host that is neither a
            valid DNS name nor a canonical IP literal (``127.1`` and ``2130706433`` are refused;
            so are IPv6 zone ids), or a port outside 1-65535.
        TargetNotAllowed: (code ``target_not_allowed``) the scheme is not http or https, or the
            URL contains credentials.
    """
    _split(url)


def _refuse_literal(host: str, policy: TargetPolicy) -> None:
    ip = literal_ip(host)
    if ip is not None and (why := policy.reason(ip)) is not None:
        raise TargetNotAllowed(f"{ip} is {why}; {_HINT}")


def guard_request_url(url: str | httpx.URL, policy: TargetPolicy) -> None:
    """Check ``url`` before a delivery request: its syntax, and its host if that is an IP literal.

    DNS names are not resolved here; the resolver of ``guarded_session`` checks their
    addresses when it connects. Call it before each request; a refusal is permanent.

    Raises:
        TargetNotAllowed: the host is a refused IP literal, or the scheme or credentials are.
        InvalidTargetUrl: (a ``TargetNotAllowed``) the URL is malformed (see
            ``check_url_syntax``).
    """
    host, _port = _split(url)
    _refuse_literal(host, policy)


async def _resolve(host: str, port: int | None) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(DNS_TIMEOUT):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except TimeoutError:
        raise TargetUnresolvable(f"looking up {host} took longer than {DNS_TIMEOUT:g} s") from None
    except (OSError, UnicodeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TargetUnresolvable(f"{host} does not resolve: {detail}") from None
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        ip = _parse_ip(str(sockaddr[0]))
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise TargetUnresolvable(f"{host} does not resolve to any address")
    return addresses


async def check_target(url: str, policy: TargetPolicy) -> None:
    """Check a target URL at registration: syntax, then every address its host stands for.

    An IP-literal host is checked as it is. A DNS name is resolved (``loop.getaddrinfo``, all
    address families, at most ``DNS_TIMEOUT`` seconds) and refused if *any* address it resolves
    to is refused. When the policy allows private targets nothing is resolved.

    Raises:
        InvalidTargetUrl: (a ``TargetNotAllowed``) the URL is malformed (see
            ``check_url_syntax``).
        TargetNotAllowed: the scheme or credentials are not allowed, or the host is or
            resolves to a refused address; the message says which and why.
        TargetUnresolvable: (a ``TargetNotAllowed``, code ``target_unresolvable``) the name
            does not resolve, or the lookup timed out.
    """
    host, port = _split(url)
    if literal_ip(host) is not None:
        _refuse_literal(host, policy)
        return
    if policy.allow_private:
        return
    for ip in await _resolve(host, port):
        why = policy.reason(ip)
        if why is not None:
            raise TargetNotAllowed(f"{host} resolves to {ip}, {why}; {_HINT}")

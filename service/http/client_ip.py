"""The caller's address, believing ``X-Forwarded-For`` only from trusted proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from starlette.requests import Request

from service.settings import IPNetwork


def client_ip(request: Request, trusted_proxies: Sequence[IPNetwork]) -> str | None:
    """The caller's address; ``X-Forwarded-For`` counts only when the peer is a trusted proxy."""
    peer = request.client.host if request.client else None
    return forwarded_client(peer, request.headers.get("x-forwarded-for"), trusted_proxies)


def forwarded_client(
    peer: str | None, forwarded: str | None, trusted_proxies: Sequence[IPNetwork]
) -> str | None:
    """The client behind ``peer``: ``forwarded`` (an ``X-Forwarded-For`` value) is read, from
    the nearest hop back, only while the hops are trusted proxies."""
    if peer is None or not trusted_proxies:
        return peer
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if forwarded is None or not any(address in net for net in trusted_proxies):
        return peer
    # Walk from the nearest hop back; the first address that is not a trusted proxy is the client.
    for hop in reversed([part.strip() for part in forwarded.split(",") if part.strip()]):
        try:
            hop_address = ipaddress.ip_address(hop)
        except ValueError:
            return hop
        if not any(hop_address in net for net in trusted_proxies):
            return hop
    return peer

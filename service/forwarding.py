"""What an event may carry to subscribers: outputs that are plain web links, a bounded payload.

A provider's payload is forwarded, but it comes from outside (a forged callback, a compromised
or buggy API), and subscribers act on it: they fetch output URLs, render them, parse ``raw``
with whatever JSON parser they have. So before an event is built:

- an output must be an absolute ``http``/``https`` URL with a host, at most
  ``MAX_OUTPUT_URL_LENGTH`` characters, whose host is not a private, loopback or link-local
  address literal (``javascript:``, ``file:``, ``data:``, ``gopher:`` and
  ``http://169.254.169.254/`` are dropped), unless ``RELAY_TARGET_ALLOWLIST`` names its
  address; at most ``MAX_OUTPUTS`` are kept, duplicates once;
- ``raw`` is forwarded only when it nests at most ``MAX_RAW_DEPTH`` levels deep (Python's
  standard ``json`` fails near 1,000, other parsers sooner). A deeper callback is refused at
  intake (``service.callback_json``); a deeper status answer, which the relay cannot refuse, is
  left out of the event (``raw: null`` and ``raw_omitted`` says why), kept whole in the store,
  and ``GET /v1/events/{id}/raw`` returns it.

What is dropped is logged and counted (``relay_outputs_dropped_total{reason}``), never silent.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from service.events import Output
from service.settings import IPNetwork

MAX_OUTPUTS = 100
MAX_OUTPUT_URL_LENGTH = 4096
MAX_RAW_DEPTH = 64


def output_problem(url: str, allowlist: Sequence[IPNetwork] = ()) -> str | None:
    """Why ``url`` may not be forwarded as an output (a short reason), or None.

    ``allowlist`` (``RELAY_TARGET_ALLOWLIST``) admits private address literals inside it: a
    local setup whose provider serves files from a private host, and the tests' loopback CDN.
    """
    if len(url) > MAX_OUTPUT_URL_LENGTH:
        return "too_long"
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "malformed"
    if parts.scheme.lower() not in ("http", "https") or not host:
        return "scheme"
    if host[-1].isalpha():
        # A name (its top-level domain is letters), resolved by whoever fetches it, never by
        # the relay; only the names that always mean this machine are refused. Checked first:
        # it is every provider's CDN link, and parsing it as an address costs an exception.
        return "private_address" if host == "localhost" or host.endswith(".localhost") else None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        # Ends in a digit yet is no address: 2130706433 or 0x7f.1, which browsers read as
        # 127.0.0.1.
        return "private_address"
    if address.is_global or any(address in network for network in allowlist):
        return None
    return "private_address"


def forwardable_outputs(
    outputs: Iterable[Output], allowlist: Sequence[IPNetwork] = ()
) -> tuple[tuple[Output, ...], dict[str, int]]:
    """(the outputs to forward, how many were dropped by reason; empty when none was)."""
    kept: dict[str, Output] = {}
    dropped: dict[str, int] = {}
    for output in outputs:
        problem = output_problem(output.url, allowlist)
        if problem is None and output.url not in kept and len(kept) >= MAX_OUTPUTS:
            problem = "over_limit"
        if problem is not None:
            dropped[problem] = dropped.get(problem, 0) + 1
        else:
            kept.setdefault(output.url, output)
    return tuple(kept.values()), dropped


def json_depth(value: Any, limit: int = MAX_RAW_DEPTH) -> int:
    """How deep ``value`` nests (a scalar is 0), counted up to ``limit + 1`` at most.

    Iterative, so that a payload nested a thousand levels deep cannot exhaust the stack.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth) for child in children)
    return deepest


def raw_too_deep(raw: Any, body: bytes | None = None) -> bool:
    """Whether ``raw`` (parsed from ``body`` when given) nests deeper than ``MAX_RAW_DEPTH``.

    A body with fewer brackets than the limit cannot nest deeper than it: that count, done in
    C, spares almost every callback the walk through the parsed payload.
    """
    if body is not None and body.count(b"{") + body.count(b"[") <= MAX_RAW_DEPTH:
        return False
    return json_depth(raw) > MAX_RAW_DEPTH

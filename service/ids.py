"""Identifiers: time-ordered, URL-safe, prefixed by what they name (``evt_``, ``dlv_``...).

An id is ``<prefix>_`` and 26 characters: 16 bytes (6 of Unix milliseconds, big-endian, then
10 random) in RFC 4648 base32 without padding, written in Crockford's lower-case alphabet
(no i, l, o, u), whose characters sort in the order of the values they stand for.

Time order keeps inserts at the right edge of the primary-key index, so writes stay cheap as
tables grow, and sorts ids roughly by creation time.
"""

from __future__ import annotations

import itertools
import os
import time

#: Crockford's base32 alphabet, lower case: each character stands for 5 bits.
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
#: The two characters of every 10-bit value (1,024 entries): ids are spelled two at a time.
_PAIRS = [first + second for first in _ALPHABET for second in _ALPHABET]


def _spell(raw: bytes) -> str:
    """``raw`` in base32 without the ``=`` padding (as RFC 4648 spells it: big-endian, zero
    bits after the last), written in Crockford's alphabet."""
    # (The standard library's base64.b32encode gives the same characters, but is written in
    # Python and cost about 30,000 instructions for 16 bytes, more than the rest of an id.)
    bits = len(raw) * 8
    characters = -(-bits // 5)
    pairs = -(-characters // 2)
    value = int.from_bytes(raw, "big") << (pairs * 10 - bits)
    spelled = "".join(
        [_PAIRS[(value >> shift) & 0x3FF] for shift in range(pairs * 10 - 10, -1, -10)]
    )
    return spelled[:characters]


def new_id(prefix: str) -> str:
    """``<prefix>_`` + 26 characters: 48 bits of milliseconds, then 80 random bits."""
    milliseconds = time.time_ns() // 1_000_000
    return f"{prefix}_{_spell(milliseconds.to_bytes(6, 'big') + os.urandom(10))}"


def _process_prefix() -> str:
    return _spell(os.urandom(10))  # 16 characters, 80 bits


_request_prefix = _process_prefix()
_request_count = itertools.count()


def new_request_id() -> str:
    """``req_`` + 26 characters: 16 random ones (80 bits) drawn once per process, then a
    counter in hex. Unique across processes and restarts like ``new_id``, and cheaper (one is
    made for every request); a process's request ids sort in the order they came."""
    return f"req_{_request_prefix}{next(_request_count):010x}"


def _after_fork() -> None:
    global _request_prefix
    _request_prefix = _process_prefix()  # a forked child must not repeat its parent's ids


os.register_at_fork(after_in_child=_after_fork)

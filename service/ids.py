"""Identifiers: time-ordered, URL-safe, prefixed by what they name (``evt_``, ``dlv_``...).

Time order keeps inserts at the right edge of the primary-key index, so writes stay cheap as
tables grow, and sorts ids roughly by creation time.
"""

from __future__ import annotations

import itertools
import os
import threading
import time

# Crockford's base32, lower case (no i, l, o, u): ids sort in the order they were made.
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
# Every pair of characters, indexed by the 10 bits they spell: 13 lookups make an id, which is
# twice as fast as base64.b32encode (pure Python on 3.11) and spells the same characters.
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)
_SHIFTS = tuple(range(120, -1, -10))

# Random bits come from the OS in blocks of 4,000 bytes (400 ids), not 10 bytes an id: one
# getrandom call per id cost more than the rest of the id under load.
_BLOCK = 4000
_random = b""
_offset = _BLOCK
_random_lock = threading.Lock()


def _random_80_bits() -> int:
    global _random, _offset
    with _random_lock:  # ids are made on several threads (CLI, executors); no block is reused
        if _offset >= _BLOCK:
            _random, _offset = os.urandom(_BLOCK), 0
        start = _offset
        _offset += 10
        return int.from_bytes(_random[start : start + 10], "big")


def _process_prefix() -> str:
    return "".join(_ALPHABET[b % 32] for b in os.urandom(16))


_request_prefix = _process_prefix()
_request_count = itertools.count()


def new_request_id() -> str:
    """``req_`` + 26 chars: 16 random characters (80 bits) drawn once per process, then a
    counter. Unique across processes and restarts like ``new_id``, at a fifth of its cost (one
    is made for every request); a process's request ids sort in the order they came."""
    return f"req_{_request_prefix}{next(_request_count):010x}"


def _after_fork() -> None:
    global _offset, _request_prefix
    _offset = _BLOCK  # a forked child must not spell its parent's next ids
    _request_prefix = _process_prefix()


os.register_at_fork(after_in_child=_after_fork)


def new_id(prefix: str) -> str:
    """``<prefix>_`` + 26 chars: 48 bits of milliseconds, then 80 bits of randomness.

    The 128 bits are spelled big-endian, 5 bits a character, with two zero bits after the
    last (as RFC 4648 base32 of the 16 bytes spells them).
    """
    bits = ((time.time_ns() // 1_000_000) << 82) | (_random_80_bits() << 2)
    return f"{prefix}_{''.join([_PAIRS[(bits >> shift) & 1023] for shift in _SHIFTS])}"

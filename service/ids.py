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
# A random byte's low 5 bits spell one character: random bytes become random characters in one
# C call (bytes.translate), with no big integer to build and cut up. 256 is a multiple of 32,
# so every character is as likely as any other.
_SPELL = bytes.maketrans(bytes(range(256)), bytes(ord(_ALPHABET[b % 32]) for b in range(256)))

# Random bits come from the OS in blocks (240 ids' worth), not a few bytes an id: one getrandom
# call per id cost more than the rest of the id under load.
_PER_ID = 17  # bytes: 2 + 15 * 5 + 3 = 80 bits are used
_BLOCK = 240 * _PER_ID
_random = b""
_offset = _BLOCK
_random_lock = threading.Lock()

# The characters of the current millisecond: (ms, its first 9 characters, its last 3 bits
# shifted into place for the tenth), replaced as one tuple so that threads never mix two.
_millisecond: tuple[int, str, int] = (-1, "", 0)


def _random_bytes() -> bytes:
    global _random, _offset
    with _random_lock:  # ids are made on several threads (CLI, executors); no block is reused
        if _offset >= _BLOCK:
            _random, _offset = os.urandom(_BLOCK), 0
        start = _offset
        _offset += _PER_ID
        return _random[start : start + _PER_ID]


def _spell_millisecond(ms: int) -> tuple[int, str, int]:
    head = "".join(_ALPHABET[(ms >> shift) & 31] for shift in range(43, -1, -5))
    return (ms, head, (ms & 7) << 2)


def _process_prefix() -> str:
    return os.urandom(16).translate(_SPELL).decode()


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
    last (as RFC 4648 base32 of the 16 bytes spells them): 9 characters of milliseconds, one
    of 3 millisecond and 2 random bits, 15 random characters, one of 3 random and 2 zero bits.
    """
    global _millisecond
    ms = time.time_ns() // 1_000_000
    current = _millisecond
    if current[0] != ms:
        current = _millisecond = _spell_millisecond(ms)
    random = _random_bytes()
    middle = random[1:16].translate(_SPELL).decode()
    return (
        f"{prefix}_{current[1]}{_ALPHABET[current[2] | (random[0] & 3)]}"
        f"{middle}{_ALPHABET[(random[16] & 7) << 2]}"
    )

"""Identifiers: time-ordered, URL-safe, prefixed by what they name (``evt_``, ``dlv_``...).

Time order keeps inserts at the right edge of the primary-key index, so writes stay cheap as
tables grow, and sorts ids roughly by creation time.
"""

from __future__ import annotations

import base64
import os
import time

# RFC 4648 base32 re-spelled as Crockford's lower-case alphabet (no i, l, o, u): ids sort in
# the order they were made, and the encoding runs in C.
_CROCKFORD = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789abcdefghjkmnpqrstvwxyz"
)


def new_id(prefix: str) -> str:
    """``<prefix>_`` + 26 chars: 48 bits of milliseconds, then 80 bits of randomness."""
    # 16 bytes encode to 26 base32 chars (plus padding); big-endian time first keeps the order.
    raw = (time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10)
    return f"{prefix}_{base64.b32encode(raw).translate(_CROCKFORD)[:26].decode()}"

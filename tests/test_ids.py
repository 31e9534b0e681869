"""Ids: the spelling (RFC 4648 base32 of 16 bytes in Crockford's alphabet) and the time order."""

from __future__ import annotations

import base64
import time

from service.ids import new_id

_FROM_CROCKFORD = bytes.maketrans(
    b"0123456789abcdefghjkmnpqrstvwxyz", b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
)


def _decode(identifier: str) -> bytes:
    """The 16 bytes an id spells, read back with the standard library's base32 decoder."""
    body = identifier.split("_", 1)[1].encode().translate(_FROM_CROCKFORD)
    return base64.b32decode(body + b"======")


def test_id_spells_its_milliseconds_then_random_bytes() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_id("evt") for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for identifier in ids:
        assert identifier.startswith("evt_") and len(identifier) == 30
        raw = _decode(identifier)
        assert len(raw) == 16
        assert before <= int.from_bytes(raw[:6], "big") <= after
        # Re-encoding the decoded bytes the standard way gives the same characters back.
        again = (
            base64.b32encode(raw)
            .translate(
                bytes.maketrans(
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789abcdefghjkmnpqrstvwxyz"
                )
            )[:26]
            .decode()
        )
        assert identifier == f"evt_{again}"


def test_ids_made_later_sort_later() -> None:
    first = new_id("dlv")
    time.sleep(0.003)
    second = new_id("dlv")
    assert first < second

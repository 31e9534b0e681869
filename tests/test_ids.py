"""Ids: the spelling (RFC 4648 base32 of 16 bytes in Crockford's alphabet) and the time order."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import time

from service.ids import _spell, new_id, new_request_id

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


def test_request_ids_are_unique_across_processes_and_forks() -> None:
    """A request id is a per-process random prefix and a counter: two processes, or a parent
    and the child it forks, never spell the same ids."""
    script = "from service.ids import new_request_id as n; print(' '.join(n() for _ in range(3)))"
    runs = [
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        for _ in range(2)
    ]
    first, second = (run.stdout.split() for run in runs)
    assert len(set(first) | set(second)) == 6
    for identifier in first:
        assert re.fullmatch(r"req_[0-9a-hjkmnp-tv-z]{16}[0-9a-f]{10}", identifier)
    assert first == sorted(first)  # one process's ids sort in the order they were made

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave without running anything else
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    os.close(read)
    parent = new_request_id()
    assert child[:20] != parent[:20]  # the child drew its own prefix


def test_spelling_matches_the_standard_base32_at_every_length() -> None:
    to_crockford = bytes.maketrans(
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789abcdefghjkmnpqrstvwxyz"
    )
    for length in range(0, 21):
        for raw in (bytes(length), b"\xff" * length, os.urandom(length)):
            expected = base64.b32encode(raw).translate(to_crockford).decode().rstrip("=")
            assert _spell(raw) == expected, (length, raw.hex())

"""The raw archive copy for ``bench/archive``: the same bytes into the same store, no relay.

For each of ``--count`` files of ``--size`` bytes on the loopback file server
(``bench/_files.py`` at ``--source``), one aiohttp GET whose response chunks (an async iterator,
``CHUNK_SIZE`` each) go straight into ``obstore.put_async`` on the store ``--store-url``
(``file:///dir`` or ``s3://bucket/prefix``, the URL form the relay's ``RELAY_ARCHIVE_URL``
takes), under ``<--key-prefix>/<n>/0.<ext>``; ``--concurrency`` copies at once (the relay's
``RELAY_ARCHIVE_CONCURRENCY``). A 64 KiB copy first warms the connection and the store, not
timed. Prints one line of JSON: ``bytes``, ``elapsed_s`` (first GET to last put done),
``started`` and ``ended`` (``time.time()``), ``keys``.

Runs on uvloop, as the relay does under uvicorn; only http://127.0.0.1 sources.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import obstore
from obstore.store import from_url

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _files import url

CHUNK_SIZE = 1 << 20


async def copy(session: aiohttp.ClientSession, store: Any, source: str, key: str) -> int:
    """Stream ``source`` into ``key``; the bytes copied."""
    copied = 0

    async with session.get(source) as response:
        response.raise_for_status()

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal copied
            async for chunk in response.content.iter_chunked(CHUNK_SIZE):
                copied += len(chunk)
                yield chunk

        await obstore.put_async(store, key, chunks())
    return copied


async def run(args: argparse.Namespace) -> dict[str, Any]:
    store = from_url(args.store_url)
    ext = args.ext
    name = args.key_prefix.replace("/", "-")
    jobs = [
        (url(args.source, args.size, f"{name}-{n}.{ext}"), f"{args.key_prefix}/{n}/0.{ext}")
        for n in range(args.count)
    ]
    connector = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        warm = f"{args.key_prefix}/w.{ext}"
        await copy(session, store, url(args.source, 65536, f"warm.{ext}"), warm)
        gate = asyncio.Semaphore(args.concurrency)

        async def one(source: str, key: str) -> int:
            async with gate:
                return await copy(session, store, source, key)

        started, t0 = time.time(), time.perf_counter()
        copied = await asyncio.gather(*(one(source, key) for source, key in jobs))
        elapsed = time.perf_counter() - t0
        ended = time.time()
    await obstore.delete_async(store, warm)
    if any(n != args.size for n in copied):
        raise RuntimeError(f"short copies: {sorted(set(copied))} bytes, {args.size} expected")
    return {
        "bytes": sum(copied),
        "elapsed_s": elapsed,
        "started": started,
        "ended": ended,
        "keys": [key for _source, key in jobs],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="raw archive copy: aiohttp into obstore")
    parser.add_argument("--source", required=True, help="the file server, http://127.0.0.1:P")
    parser.add_argument("--store-url", required=True, help="file:///dir or s3://bucket/prefix")
    parser.add_argument("--key-prefix", required=True, help="where the copies go in the store")
    parser.add_argument("--size", type=int, required=True, help="bytes per file")
    parser.add_argument("--count", type=int, required=True, help="files")
    parser.add_argument("--concurrency", type=int, default=4, help="copies at once [4]")
    parser.add_argument("--ext", default="mp4", help="extension of the files [mp4]")
    args = parser.parse_args()
    if not args.source.startswith("http://127.0.0.1:"):
        parser.error("only http://127.0.0.1 sources are allowed")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        result = asyncio.run(run(args))
    else:
        result = uvloop.run(run(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

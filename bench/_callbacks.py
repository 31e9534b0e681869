"""HTTP clients for ``bench/delivery`` and ``bench/e2e``, each run in its own process.

Three modes; each prints one line of JSON (a summary) on stdout:

* ``load``: closed loop, POSTs ``--count`` Evolink callbacks (each its own task id) with
  ``--concurrency`` requests in flight; used to build a delivery backlog. Each callback's
  result is ``<--results-url>/<task id>.mp4`` (a CDN the relay never fetches by default; a
  loopback file server when ``bench/archive`` has the relay archive the outputs).
* ``openloop``: fixed rate, callback ``i`` is due at ``start + i / rate`` whatever happened to
  the earlier ones; for each it writes the wall-clock time (``time.time()``) at which the 2xx
  arrived and the ``event_id`` of the answer to ``--records`` (JSON).
* ``raw``: the raw delivery ceiling: POSTs the bodies listed in ``--bodies`` (JSON lines
  ``{"id", "body"}``, the relay's own CloudEvents) to the sink with the relay's headers
  (signatures computed beforehand) and ``--concurrency`` requests in flight, through one
  aiohttp ``ClientSession``.

All three use uvloop (as the relay under uvicorn does) and only http://127.0.0.1 URLs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

TEMPLATE = (
    '{{"id":"{id}","object":"video.generation.task","created":1756817821,'
    '"model":"seedance-2.0","status":"completed","progress":100,'
    '"results":["{results}/{id}.mp4"],"type":"video",'
    '"task_info":{{"can_cancel":false}}}}'
)
CDN = "https://cdn.example.com/videos"
JSON_HEADERS = {"Content-Type": "application/json"}


def task_id(prefix: str, i: int) -> str:
    return f"task-unified-1756817821-{prefix}-{i}"


def callback_body(prefix: str, i: int, results: str = CDN) -> bytes:
    """The Evolink "completed" callback of task ``task_id(prefix, i)``; its one result is
    ``<results>/<task id>.mp4``."""
    task = task_id(prefix, i)
    return TEMPLATE.format(id=task, results=results).encode()


def _session(limit: int, timeout: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=0),
        timeout=aiohttp.ClientTimeout(total=timeout),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def closed_loop(
    url: str,
    requests: list[tuple[bytes, dict[str, str]]],
    concurrency: int,
    request_timeout: float,
    want: tuple[int, ...],
) -> dict[str, Any]:
    """Send every request with ``concurrency`` in flight; count answers."""
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    event_ids: list[str] = []
    duplicates = 0
    next_index = 0

    async with _session(concurrency, request_timeout) as session:

        async def worker() -> None:
            nonlocal next_index, duplicates
            while next_index < len(requests):  # bounded: each pass takes one request
                body, headers = requests[next_index]
                next_index += 1
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        data = await response.read()
                        statuses[str(response.status)] += 1
                        if response.status == 200 and data:
                            answer = json.loads(data)
                            event_ids.append(answer.get("event_id", ""))
                            duplicates += bool(answer.get("duplicate"))
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    errors[type(exc).__name__] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ok = sum(n for s, n in statuses.items() if int(s) in want)
    return {
        "sent": len(requests),
        "ok": ok,
        "statuses": dict(statuses),
        "errors": dict(errors),
        "duplicates": duplicates,
        "unique_event_ids": len(set(event_ids)),
        "elapsed_s": round(elapsed, 4),
        "per_s": round(ok / elapsed, 1) if elapsed > 0 else 0.0,
    }


async def open_loop(args: argparse.Namespace) -> dict[str, Any]:
    count = max(1, round(args.rate * args.duration))
    interval = 1.0 / args.rate
    acks: list[tuple[str, float, float] | None] = [None] * count
    lags = [0.0] * count
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    duplicates = 0
    pending: set[asyncio.Task[None]] = set()

    async with _session(args.max_connections, args.timeout) as session:
        # Warm the connection pool and both processes' code paths; not recorded.
        warm = [
            asyncio.create_task(_warm_one(session, args.url, f"{args.prefix}w", i))
            for i in range(min(args.max_connections, 32))
        ]
        await asyncio.gather(*warm)

        async def one(i: int, scheduled: float, scheduled_wall: float) -> None:
            nonlocal duplicates
            lags[i] = time.perf_counter() - scheduled
            try:
                async with session.post(
                    args.url, data=callback_body(args.prefix, i), headers=JSON_HEADERS
                ) as response:
                    data = await response.read()
                    acked_at = time.time()
                    statuses[str(response.status)] += 1
                    if 200 <= response.status < 300:
                        answer = json.loads(data)
                        duplicates += bool(answer.get("duplicate"))
                        acks[i] = (answer["event_id"], scheduled_wall, acked_at)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                errors[type(exc).__name__] += 1

        start = time.perf_counter() + 0.02
        start_wall = time.time() + (start - time.perf_counter())
        sent = 0
        while sent < count:  # bounded: one pass over the timetable
            now = time.perf_counter()
            while sent < count and start + sent * interval <= now:
                offset = sent * interval
                task = asyncio.create_task(one(sent, start + offset, start_wall + offset))
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += 1
            if sent < count:
                await asyncio.sleep(max(0.0, start + sent * interval - time.perf_counter()))
        unfinished = 0
        if pending:
            _done, still = await asyncio.wait(set(pending), timeout=args.timeout + 5)
            unfinished = len(still)
            for task in still:
                task.cancel()
        elapsed = time.perf_counter() - start

    records = [a for a in acks if a is not None]
    lag_sorted = sorted(lags[:sent])
    return {
        "scheduled": count,
        "acked": len(records),
        "statuses": dict(statuses),
        "errors": dict(errors),
        "duplicates": duplicates,
        "unfinished": unfinished,
        "elapsed_s": round(elapsed, 3),
        "lag_p99_ms": lag_sorted[min(len(lag_sorted) - 1, int(0.99 * len(lag_sorted)))] * 1000,
        "lag_max_ms": lag_sorted[-1] * 1000,
        "warmup_sent": len(warm),
        "records": records,
    }


async def _warm_one(session: aiohttp.ClientSession, url: str, prefix: str, i: int) -> None:
    async with session.post(url, data=callback_body(prefix, i), headers=JSON_HEADERS) as response:
        await response.read()


def raw_requests(bodies_path: str) -> list[tuple[bytes, dict[str, str]]]:
    """The relay's bodies with the relay's headers, signed here, before any timing."""
    from service.delivery import USER_AGENT
    from service.signing import new_secret, sign

    secret = new_secret()
    timestamp = int(time.time())
    requests = []
    with open(bodies_path) as lines:
        for line in lines:
            item = json.loads(line)
            body = item["body"].encode()
            headers = {
                "content-type": "application/cloudevents+json",
                "user-agent": USER_AGENT,
                "webhook-id": item["id"],
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign([secret], item["id"], timestamp, body),
            }
            requests.append((body, headers))
    return requests


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    if args.mode == "load":
        requests = [
            (callback_body(args.prefix, i, args.results_url), JSON_HEADERS)
            for i in range(args.count)
        ]
        return await closed_loop(args.url, requests, args.concurrency, args.timeout, (200,))
    if args.mode == "raw":
        requests = raw_requests(args.bodies)
        return await closed_loop(
            args.url, requests, args.concurrency, args.timeout, tuple(range(200, 300))
        )
    return await open_loop(args)


def main() -> int:
    parser = argparse.ArgumentParser(description="callback and raw-delivery clients")
    parser.add_argument("mode", choices=("load", "openloop", "raw"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--prefix", default="b", help="makes task ids unique across runs")
    parser.add_argument("--count", type=int, default=1000, help="load: callbacks to send")
    parser.add_argument("--concurrency", type=int, default=64, help="load/raw: in flight")
    parser.add_argument("--bodies", help="raw: JSON lines {id, body}")
    parser.add_argument("--results-url", default=CDN, help=f"load: results' base [{CDN}]")
    parser.add_argument("--rate", type=float, default=500.0, help="openloop: per second")
    parser.add_argument("--duration", type=float, default=10.0, help="openloop: seconds")
    parser.add_argument("--records", help="openloop: where to write [event_id, sent, acked]")
    parser.add_argument("--max-connections", type=int, default=256, help="openloop: pool size")
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    args = parser.parse_args()
    if not args.url.startswith("http://127.0.0.1:"):
        parser.error("only http://127.0.0.1 targets are allowed")
    if args.mode == "raw" and not args.bodies:
        parser.error("raw needs --bodies")
    if args.mode == "openloop" and (not args.records or args.rate <= 0 or args.duration <= 0):
        parser.error("openloop needs --records and a positive --rate and --duration")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        result = asyncio.run(main_async(args))
    else:
        result = uvloop.run(main_async(args))
    if args.mode == "openloop":
        Path(args.records).write_text(json.dumps(result.pop("records")))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Open-loop (fixed-rate) load generator for ``bench/ingest``.

Request ``i`` is due at ``start + i / rate`` whatever happened to the earlier ones: it is sent
as soon as it is due, on its own task, and its latency is measured from the *scheduled* time to
the end of the response. A server that stalls therefore shows the whole stall in the figures
(no coordinated omission); a generator that falls behind shows up as ``lag`` (how late a request
actually started compared with its slot), which should stay far below the latencies reported.

Every request POSTs the Evolink "completed" callback with its own task id. The result is one
line of JSON on stdout.

    python bench/openloop.py --url http://127.0.0.1:P/callbacks/evolink/TOKEN --rate 1000 \
        --duration 10 --warmup 2 --prefix ol1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections import Counter
from typing import Any

import aiohttp

TEMPLATE = (
    '{{"id":"{id}","object":"video.generation.task","created":1756817821,'
    '"model":"seedance-2.0","status":"completed","progress":100,'
    '"results":["https://cdn.example.com/videos/{id}.mp4"],"type":"video",'
    '"task_info":{{"can_cancel":false}}}}'
)
HEADERS = {"Content-Type": "application/json"}


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list (nan when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


async def run_phase(
    session: aiohttp.ClientSession,
    url: str,
    rate: float,
    duration: float,
    prefix: str,
    drain_s: float,
) -> dict[str, Any]:
    count = max(1, round(rate * duration))
    interval = 1.0 / rate
    latencies: list[float | None] = [None] * count
    statuses = [0] * count
    lags = [0.0] * count
    errors: Counter[str] = Counter()
    pending: set[asyncio.Task[None]] = set()

    async def one(i: int, scheduled: float) -> None:
        lags[i] = time.perf_counter() - scheduled
        task_id = f"task-unified-1756817821-{prefix}-{i}"
        body = TEMPLATE.format(id=task_id).encode()
        try:
            async with session.post(url, data=body, headers=HEADERS) as response:
                await response.read()
                statuses[i] = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            errors[type(exc).__name__] += 1
            return
        latencies[i] = time.perf_counter() - scheduled

    start = time.perf_counter() + 0.01
    sent = 0
    while sent < count:  # bounded: one pass over the timetable
        now = time.perf_counter()
        while sent < count and start + sent * interval <= now:
            task = asyncio.create_task(one(sent, start + sent * interval))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
        if sent < count:
            await asyncio.sleep(max(0.0, start + sent * interval - time.perf_counter()))
    unfinished = 0
    if pending:
        _done, still = await asyncio.wait(set(pending), timeout=drain_s)
        unfinished = len(still)
        for task in still:
            task.cancel()
    elapsed = time.perf_counter() - start

    done = sorted(lat for lat in latencies if lat is not None)
    ok = sum(1 for status in statuses if 200 <= status < 300)
    non2xx = Counter(str(status) for status in statuses if status and not 200 <= status < 300)
    lag_sorted = sorted(lags[:sent])
    ms = 1000.0
    return {
        "scheduled": count,
        "rate": rate,
        "completed": len(done),
        "acked": ok,
        "non2xx": dict(non2xx),
        "errors": dict(errors),
        "unfinished": unfinished,
        "elapsed_s": round(elapsed, 3),
        "acked_per_s": round(ok / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": percentile(done, 50) * ms,
        "p90_ms": percentile(done, 90) * ms,
        "p99_ms": percentile(done, 99) * ms,
        "p999_ms": percentile(done, 99.9) * ms,
        "max_ms": (done[-1] if done else math.nan) * ms,
        "lag_p99_ms": percentile(lag_sorted, 99) * ms,
        "lag_max_ms": (lag_sorted[-1] if lag_sorted else math.nan) * ms,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=args.max_connections)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        warm: dict[str, Any] = {"acked": 0, "scheduled": 0}
        if args.warmup > 0:
            warm = await run_phase(
                session, args.url, args.rate, args.warmup, f"{args.prefix}w", args.timeout + 5
            )
        result = await run_phase(
            session, args.url, args.rate, args.duration, args.prefix, args.timeout + 5
        )
        result["warmup_acked"] = warm["acked"]
        result["warmup_scheduled"] = warm["scheduled"]
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description="fixed-rate callback generator")
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--prefix", default="ol", help="makes task ids unique across runs")
    parser.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    parser.add_argument("--max-connections", type=int, default=256)
    args = parser.parse_args()
    if not args.url.startswith("http://127.0.0.1:"):
        parser.error("only http://127.0.0.1 targets are allowed")
    if args.rate <= 0 or args.duration <= 0:
        parser.error("--rate and --duration must be positive")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        result = asyncio.run(main_async(args))
    else:
        result = uvloop.run(main_async(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``GET /healthz`` (the process answers) and ``GET /readyz`` (it can do its job).

Ready means: the store commits a write now, the archive (when ``RELAY_ARCHIVE_URL`` is set)
takes a small object now, and, where this process runs the delivery worker,
the worker is alive and claiming (its ``last_claim_at`` is recent, or it is saturated with
attempts in flight). Otherwise 503 with the reason, so that a load balancer takes the replica
out and a person reading the answer knows why.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from service.archive_store import ArchiveStore
from service.errors import StorageUnavailable
from service.http import JSONResponse

#: A worker that has not claimed for this long (and is not saturated) is stuck. It claims at
#: least every 100 ms when idle and waits 1 s after a store failure.
CLAIM_STALE_SECONDS = 10.0
#: How long /readyz waits for the store (a PostgreSQL pool waits 5 s for a connection).
STORE_PING_SECONDS = 2.0
#: How long /readyz waits for the archive's probe write (``RELAY_ARCHIVE_URL``).
ARCHIVE_PROBE_SECONDS = 3.0


async def healthz(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def worker_problem(worker: Any, now: float) -> str | None:
    """Why the delivery worker is not doing its job, or None if it is."""
    if not getattr(worker, "running", True):
        return "the delivery worker is not running"
    if worker.in_flight >= worker.concurrency:
        return None  # saturated: every slot is busy delivering, which is claiming's purpose
    idle = now - worker.last_claim_at
    if idle > CLAIM_STALE_SECONDS:
        if worker.last_claim_at == 0:
            return "the delivery worker has not claimed yet"
        return f"the delivery worker has not claimed for {idle:.0f} s"
    return None


async def archive_problem(archive: ArchiveStore) -> str | None:
    """Why the archive cannot be written (a probe object written and deleted), or None."""
    try:
        await asyncio.wait_for(asyncio.shield(archive.check_writable()), ARCHIVE_PROBE_SECONDS)
    except TimeoutError:
        return f"no answer within {ARCHIVE_PROBE_SECONDS:g} s"
    except Exception as exc:  # obstore's errors, or the local directory's OSError
        return " ".join(str(exc).split())[:300] or type(exc).__name__
    return None


async def readyz(request: Request) -> Response:
    relay = request.app.state.relay
    worker = getattr(request.app.state, "worker", None)
    checks: dict[str, str] = {}
    problems: list[str] = []
    try:
        # Shielded: a ping that outlives the answer finishes (or fails) on its own, so a slow
        # store is reported in time for a probe and nothing half-done is left in the store.
        await asyncio.wait_for(asyncio.shield(relay.store.ping()), STORE_PING_SECONDS)
        checks["store"] = "ok"
    except StorageUnavailable as exc:
        checks["store"] = exc.message
        problems.append(f"store: {exc.message}")
    except TimeoutError:
        checks["store"] = f"no answer within {STORE_PING_SECONDS:g} s"
        problems.append(f"store: {checks['store']}")
    if relay.archive is not None:
        problem = await archive_problem(relay.archive)
        checks["archive"] = problem or "ok"
        if problem:
            problems.append(f"archive: {problem}")
    if worker is None:
        checks["worker"] = "not run by this process"
    else:
        problem = worker_problem(worker, relay.clock())
        checks["worker"] = problem or "ok"
        if problem:
            problems.append(problem)
    if problems:
        return JSONResponse(
            {
                "error": {"code": "not_ready", "message": "Not ready: " + "; ".join(problems)},
                "checks": checks,
            },
            status_code=503,
        )
    return JSONResponse({"status": "ready", "checks": checks})

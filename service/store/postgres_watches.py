"""PostgreSQL statements for watches; each function runs on one connection of ``PostgresStore``.

Several replicas share the table: ``claim_due_watches`` leases with ``FOR UPDATE SKIP LOCKED``
(no watch is polled by two replicas at once, and no replica waits for another), and the one
active watch per task is kept by the partial unique index ``watches_active_task``, which
``INSERT ... ON CONFLICT`` relies on. The contract is in ``service.store.base.Store``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psycopg import AsyncConnection

from service.errors import StorageUnavailable
from service.store.budget import ApiBudget, BudgetState
from service.store.filters import watch_clauses
from service.store.paging import Page, page_of, paged_query
from service.store.watch_model import (
    DECIDABLE,
    WATCH_COLUMN_COUNT,
    WATCH_COLUMNS,
    Decision,
    HoldLimits,
    HoldRefused,
    PollRecord,
    Watch,
    WatchFilter,
    poll_params,
    watch_from_row,
    watch_values,
)

Conn = AsyncConnection[Any]

#: Advisory lock (two-key form: this, 0) taken by a new hold while it counts the active ones:
#: replicas take turns, so the bounds are exact. Joining an existing watch takes no lock.
LOCK_HOLDS = 0x524C5948

_MARKS = ", ".join(["%s"] * WATCH_COLUMN_COUNT)
_INSERT = (
    f"INSERT INTO watches ({WATCH_COLUMNS}) VALUES ({_MARKS})"
    " ON CONFLICT (provider, task_id) WHERE state = 'active' DO NOTHING"
    f" RETURNING {WATCH_COLUMNS}"
)


async def _one(conn: Conn, sql: str, params: Any) -> Watch | None:
    cursor = await conn.execute(sql, params)
    row = await cursor.fetchone()
    return None if row is None else watch_from_row(row)


async def get_watch(conn: Conn, watch_id: str) -> Watch | None:
    return await _one(conn, f"SELECT {WATCH_COLUMNS} FROM watches WHERE id = %s", (watch_id,))


async def create_watch(conn: Conn, watch: Watch) -> tuple[Watch, bool]:
    # Autocommit statements: the SELECT's snapshot sees the row the INSERT conflicted with.
    for _ in range(3):
        created = await _one(conn, _INSERT, watch_values(watch))
        if created is not None:
            return created, True
        existing = await _one(
            conn,
            f"SELECT {WATCH_COLUMNS} FROM watches"
            " WHERE provider = %s AND task_id = %s AND state = 'active'",
            (watch.provider, watch.task_id),
        )
        if existing is not None:
            return existing, False
        # The active watch ended between the two statements: try again.
    raise StorageUnavailable("Concurrent changes to this task's watch interfered; retry.")


async def _hold_refused(
    conn: Conn, url_id: str | None, limits: HoldLimits | None
) -> HoldRefused | None:
    """Whether a new hold would exceed ``limits``; inside the hold's transaction."""
    if limits is None:
        return None
    await conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (LOCK_HOLDS,))
    held = "SELECT count(*) FROM watches WHERE state = 'active' AND origin = 'callback'"
    if url_id is not None:
        cursor = await conn.execute(f"{held} AND url_id = %s", (url_id,))
        row = await cursor.fetchone()
        if row is not None and row[0] >= limits.per_url:
            return HoldRefused("url")
    cursor = await conn.execute(held)
    row = await cursor.fetchone()
    return HoldRefused("total") if row is not None and row[0] >= limits.total else None


async def hold_for_confirmation(
    conn: Conn, watch: Watch, limits: HoldLimits | None = None
) -> Watch | HoldRefused | None:
    cursor = await conn.execute(
        "SELECT 1 FROM tasks WHERE provider = %s AND task_id = %s",
        (watch.provider, watch.task_id),
    )
    if await cursor.fetchone() is not None:
        return None
    cursor = await conn.execute(
        "SELECT 1 FROM watches WHERE provider = %s AND task_id = %s AND state = 'active'",
        (watch.provider, watch.task_id),
    )
    if await cursor.fetchone() is None:
        refused = await _hold_refused(conn, watch.url_id, limits)
        if refused is not None:
            return refused
    # Joining: the back-off and the not-found count go on; only a watch's first hold (a
    # safety-net watch waiting for poll_after_seconds) makes it due at once.
    return await _one(
        conn,
        f"INSERT INTO watches ({WATCH_COLUMNS}) VALUES ({_MARKS})"
        " ON CONFLICT (provider, task_id) WHERE state = 'active' DO UPDATE SET"
        " next_poll_at = CASE WHEN watches.holds = 0"
        "  THEN LEAST(watches.next_poll_at, excluded.next_poll_at) ELSE watches.next_poll_at END,"
        " held_status = excluded.held_status, held_body = excluded.held_body,"
        " url_id = coalesce(watches.url_id, excluded.url_id), holds = watches.holds + 1,"
        " updated_at = excluded.updated_at,"
        # A callback through another URL than the one the watch has: a conflict to resolve.
        " conflict_url_ids = CASE WHEN watches.url_id IS NULL OR excluded.url_id IS NULL"
        "  OR excluded.url_id = watches.url_id"
        "  OR coalesce(watches.conflict_url_ids, '[]')::jsonb ? excluded.url_id"
        "  THEN watches.conflict_url_ids"
        "  ELSE (coalesce(watches.conflict_url_ids, '[]')::jsonb"
        "   || to_jsonb(excluded.url_id))::text END"
        f" RETURNING {WATCH_COLUMNS}",
        watch_values(watch),
    )


async def resolve_conflict(
    conn: Conn, watch_id: str, url_id: str | None, now: float
) -> Watch | None:
    await conn.execute(
        "UPDATE watches SET url_id = %s, conflict_url_ids = NULL, held_status = NULL,"
        " held_body = NULL, next_poll_at = %s, backoff_step = 0, updated_at = %s"
        " WHERE id = %s AND state = 'active' AND conflict_url_ids IS NOT NULL",
        (url_id, now, now, watch_id),
    )
    return await get_watch(conn, watch_id)


async def list_watches(conn: Conn, filters: WatchFilter, cursor: str | None, limit: int) -> Page:
    sql, params = paged_query(
        f"SELECT seq, {WATCH_COLUMNS} FROM watches",
        watch_clauses(filters, "%s"),
        cursor,
        limit,
        "%s",
    )
    result = await conn.execute(sql, params)
    return page_of(await result.fetchall(), limit, lambda row: watch_from_row(row[1:]))


async def cancel_watch(conn: Conn, watch_id: str, now: float) -> Watch | None:
    await conn.execute(
        "UPDATE watches SET state = 'canceled', lease_until = NULL, updated_at = %s"
        " WHERE id = %s AND state = 'active'",
        (now, watch_id),
    )
    return await get_watch(conn, watch_id)


async def _complete_finished(conn: Conn, now: float) -> None:
    # Due watches whose task already ended (a callback came first) need no poll. Rows another
    # replica is claiming are skipped here; it completes or polls them itself.
    await conn.execute(
        "WITH done AS ("
        "  SELECT w.seq, t.event_id FROM watches w JOIN tasks t"
        "  ON t.provider = w.provider AND t.task_id = w.task_id"
        "  WHERE w.state = 'active' AND w.next_poll_at <= %(now)s"
        "  AND (w.lease_until IS NULL OR w.lease_until <= %(now)s)"
        "  FOR UPDATE OF w SKIP LOCKED"
        ")"
        " UPDATE watches SET state = 'completed', lease_until = NULL, updated_at = %(now)s,"
        " event_id = done.event_id FROM done WHERE watches.seq = done.seq",
        {"now": now},
    )


_LEASED = ", ".join("watches." + c.strip() for c in WATCH_COLUMNS.split(","))


async def claim_due_watches(conn: Conn, now: float, limit: int, lease_until: float) -> list[Watch]:
    await _complete_finished(conn, now)
    cursor = await conn.execute(
        "WITH due AS ("
        "  SELECT seq FROM watches WHERE state = 'active' AND next_poll_at <= %(now)s"
        "  AND (lease_until IS NULL OR lease_until <= %(now)s)"
        # A watch in conflict waits for its operator (resolve_conflict), unpolled.
        "  AND conflict_url_ids IS NULL"
        "  ORDER BY next_poll_at, seq LIMIT %(limit)s"
        "  FOR UPDATE SKIP LOCKED"
        ")"
        " UPDATE watches SET lease_until = %(lease_until)s FROM due"
        f" WHERE watches.seq = due.seq RETURNING watches.next_poll_at, watches.seq, {_LEASED}",
        {"now": now, "limit": limit, "lease_until": lease_until},
    )
    rows = sorted(await cursor.fetchall(), key=lambda row: (row[0], row[1]))
    return [watch_from_row(row[2:]) for row in rows]


async def claim_shares(
    conn: Conn,
    now: float,
    limit: int,
    lease_until: float,
    shares: Mapping[str, int],
    budget: ApiBudget | None = None,
) -> list[Watch]:
    """``claim_due_watches`` with at most ``shares[provider]`` watches of each provider (and at
    most what its ``budget`` has left); runs inside one transaction (rows locked but not picked
    are free again at its commit, and a provider's budget row stays locked until then)."""
    await _complete_finished(conn, now)
    picked: list[tuple[float, int]] = []
    for provider, share in shares.items():
        if share > 0 and budget is not None and provider in budget.rates:
            share = min(share, await _tokens_left(conn, provider, now, budget))
        if share <= 0:
            continue
        cursor = await conn.execute(
            "SELECT next_poll_at, seq FROM watches WHERE state = 'active'"
            " AND provider = %(provider)s AND next_poll_at <= %(now)s"
            " AND (lease_until IS NULL OR lease_until <= %(now)s)"
            " AND conflict_url_ids IS NULL"
            " ORDER BY next_poll_at, seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED",
            {"provider": provider, "now": now, "limit": min(share, limit)},
        )
        picked += await cursor.fetchall()
    chosen = [seq for _, seq in sorted(picked)[:limit]]
    if not chosen:
        return []
    cursor = await conn.execute(
        "UPDATE watches SET lease_until = %s WHERE seq = ANY(%s)"
        f" RETURNING watches.next_poll_at, watches.seq, {_LEASED}",
        (lease_until, chosen),
    )
    rows = sorted(await cursor.fetchall(), key=lambda row: (row[0], row[1]))
    watches = [watch_from_row(row[2:]) for row in rows]
    if budget is not None:
        # A token per leased watch, spent until its request ends (at most its lease).
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO provider_requests (provider, watch_id, at) VALUES (%s, %s, %s)",
                [(w.provider, w.id, lease_until) for w in watches if w.provider in budget.rates],
            )
    return watches


async def _tokens_left(conn: Conn, provider: str, now: float, budget: ApiBudget) -> int:
    """The requests ``provider`` may still make now; locks its budget row until the commit,
    so replicas claiming at once take turns and never spend the same token."""
    await conn.execute(
        "INSERT INTO provider_budget (provider) VALUES (%s) ON CONFLICT DO NOTHING", (provider,)
    )
    await conn.execute("SELECT 1 FROM provider_budget WHERE provider = %s FOR UPDATE", (provider,))
    state = await budget_state(conn, provider, now, budget.window)
    if state.blocked_until > now:
        return 0
    return max(0, budget.rates[provider] - state.used)


async def budget_state(conn: Conn, provider: str, now: float, window: float) -> BudgetState:
    await conn.execute(
        "DELETE FROM provider_requests WHERE provider = %s AND at <= %s", (provider, now - window)
    )
    cursor = await conn.execute(
        "SELECT (SELECT count(*) FROM provider_requests WHERE provider = %(p)s AND at > %(since)s),"
        " (SELECT blocked_until FROM provider_budget WHERE provider = %(p)s)",
        {"p": provider, "since": now - window},
    )
    row = await cursor.fetchone()
    assert row is not None  # noqa: S101 - narrows the type: the statement returns a row
    return BudgetState(int(row[0]), 0.0 if row[1] is None else float(row[1]))


async def block_provider(conn: Conn, provider: str, until: float) -> None:
    await conn.execute(
        "INSERT INTO provider_budget (provider, blocked_until) VALUES (%s, %s)"
        " ON CONFLICT (provider) DO UPDATE"
        " SET blocked_until = GREATEST(provider_budget.blocked_until, excluded.blocked_until)",
        (provider, until),
    )


async def record_poll(conn: Conn, record: PollRecord) -> None:
    # A callback held while the poll ran (holds moved on) keeps its held body (the poll's
    # answer predates it); a watch's first hold keeps its immediate poll as well.
    await conn.execute(
        "UPDATE watches SET state = %(state)s, polls = polls + 1, lease_until = NULL,"
        " next_poll_at = CASE WHEN holds = %(seen)s OR %(seen)s > 0 OR %(state)s <> 'active'"
        "  THEN coalesce(%(next)s::double precision, next_poll_at)"
        "  ELSE LEAST(coalesce(%(next)s::double precision, next_poll_at), next_poll_at) END,"
        " backoff_step = %(step)s,"
        " not_found = %(not_found)s, last_polled_at = %(at)s,"
        " last_status = coalesce(%(status)s::text, last_status), last_error = %(error)s::text,"
        " held_status = CASE WHEN (holds = %(seen)s AND %(judged)s)"
        "  OR (%(state)s <> 'active' AND %(suspect)s::text IS NULL)"
        "  THEN NULL ELSE held_status END,"
        " held_body = CASE WHEN (holds = %(seen)s AND %(judged)s)"
        "  OR (%(state)s <> 'active' AND %(suspect)s::text IS NULL)"
        "  THEN NULL ELSE held_body END,"
        # A finished watch keeps its URL: releasing its suspect callback forwards it with it.
        " url_id = CASE WHEN holds = %(seen)s AND %(forget)s AND %(state)s = 'active' THEN NULL"
        "  ELSE url_id END,"
        " last_answer = coalesce(%(answer)s::text, last_answer),"
        " unknown_status = CASE WHEN %(status)s::text IS NULL THEN unknown_status"
        "  ELSE %(unknown)s::text END,"
        " suspect = coalesce(%(suspect)s::text, suspect),"
        " suspect_status = CASE WHEN %(suspect)s::text IS NULL THEN suspect_status"
        "  ELSE %(claimed)s::text END,"
        " event_id = coalesce(%(event_id)s::text, event_id), updated_at = %(at)s"
        " WHERE id = %(id)s AND state = 'active'",
        poll_params(record),
    )
    # The request ended by now: its token counts from here, not from the lease's end.
    await conn.execute(
        "UPDATE provider_requests SET at = %(at)s WHERE watch_id = %(id)s AND at > %(at)s",
        {"at": record.polled_at, "id": record.watch_id},
    )
    if record.event_id is not None:
        # Canceled while this poll was in flight, after the poll emitted: the watch names the
        # event it emitted (it stays canceled).
        await conn.execute(
            "UPDATE watches SET event_id = coalesce(event_id, %s)"
            " WHERE id = %s AND state = 'canceled'",
            (record.event_id, record.watch_id),
        )


async def decide_suspect(conn: Conn, decision: Decision) -> tuple[Watch | None, bool]:
    cursor = await conn.execute(
        "UPDATE watches SET decision = %s, decided_by = %s, decided_at = %s"
        f" WHERE id = %s AND {DECIDABLE}",
        (decision.decision, decision.decided_by, decision.decided_at, decision.watch_id),
    )
    return await get_watch(conn, decision.watch_id), cursor.rowcount > 0


async def undo_decision(conn: Conn, decision: Decision) -> None:
    await conn.execute(
        "UPDATE watches SET decision = NULL, decided_by = NULL, decided_at = NULL"
        " WHERE id = %s AND decision = %s AND decided_at = %s",
        (decision.watch_id, decision.decision, decision.decided_at),
    )


async def release_watch_leases(conn: Conn, watch_ids: list[str] | None) -> int:
    if watch_ids is None:
        cursor = await conn.execute(
            "UPDATE watches SET lease_until = NULL"
            " WHERE state = 'active' AND lease_until IS NOT NULL"
        )
    else:
        cursor = await conn.execute(
            "UPDATE watches SET lease_until = NULL WHERE id = ANY(%s::text[])", (list(watch_ids),)
        )
    return cursor.rowcount


async def prune_watches(conn: Conn, before: float, limit: int) -> int:
    cursor = await conn.execute(
        "DELETE FROM watches WHERE seq IN (SELECT seq FROM watches"
        " WHERE state <> 'active' AND updated_at < %s"
        # A suspect callback waits for its operator's decision: it is the only copy.
        f" AND NOT ({DECIDABLE}) ORDER BY updated_at LIMIT %s)",
        (before, limit),
    )
    return cursor.rowcount

"""SQLite statements for watches; each function runs inside one transaction of the group commit.

``SQLiteStore`` calls these through ``self._run``; they take the connection first and never
commit. The contract is in ``service.store.base.Store`` (the watch methods).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping

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

_MARKS = ", ".join("?" * WATCH_COLUMN_COUNT)
_INSERT = (
    f"INSERT INTO watches ({WATCH_COLUMNS}) VALUES ({_MARKS})"
    " ON CONFLICT (provider, task_id) WHERE state = 'active' DO NOTHING"
)


def _active(conn: sqlite3.Connection, provider: str, task_id: str) -> Watch | None:
    row = conn.execute(
        f"SELECT {WATCH_COLUMNS} FROM watches"
        " WHERE provider = ? AND task_id = ? AND state = 'active'",
        (provider, task_id),
    ).fetchone()
    return None if row is None else watch_from_row(row)


def get_watch(conn: sqlite3.Connection, watch_id: str) -> Watch | None:
    row = conn.execute(f"SELECT {WATCH_COLUMNS} FROM watches WHERE id = ?", (watch_id,)).fetchone()
    return None if row is None else watch_from_row(row)


def create_watch(conn: sqlite3.Connection, watch: Watch) -> tuple[Watch, bool]:
    if conn.execute(_INSERT, watch_values(watch)).rowcount:
        return watch, True
    existing = _active(conn, watch.provider, watch.task_id)
    assert existing is not None  # noqa: S101 - the conflict was with it, in this transaction
    return existing, False


def _hold_refused(
    conn: sqlite3.Connection, url_id: str | None, limits: HoldLimits | None
) -> HoldRefused | None:
    """Whether a new hold would exceed ``limits`` (exact: SQLite has one writer at a time)."""
    if limits is None:
        return None
    held = "SELECT count(*) FROM watches WHERE state = 'active' AND origin = 'callback'"
    if url_id is not None:
        (count,) = conn.execute(f"{held} AND url_id = ?", (url_id,)).fetchone()
        if count >= limits.per_url:
            return HoldRefused("url")
    (count,) = conn.execute(held).fetchone()
    return HoldRefused("total") if count >= limits.total else None


def hold_for_confirmation(
    conn: sqlite3.Connection, watch: Watch, limits: HoldLimits | None = None
) -> Watch | HoldRefused | None:
    if conn.execute(
        "SELECT 1 FROM tasks WHERE provider = ? AND task_id = ?", (watch.provider, watch.task_id)
    ).fetchone():
        return None
    active = _active(conn, watch.provider, watch.task_id)
    if active is None:
        refused = _hold_refused(conn, watch.url_id, limits)
        if refused is not None:
            return refused
        conn.execute(_INSERT, watch_values(watch))
        return watch
    conflicts = active.conflict_url_ids
    if (
        watch.url_id is not None
        and active.url_id is not None
        and watch.url_id != active.url_id
        and watch.url_id not in conflicts
    ):
        conflicts = (*conflicts, watch.url_id)
    # Joining: the back-off and the not-found count go on; only a watch's first hold (a
    # safety-net watch waiting for poll_after_seconds) makes it due at once.
    conn.execute(
        "UPDATE watches SET next_poll_at = CASE WHEN holds = 0 THEN min(next_poll_at, ?)"
        "  ELSE next_poll_at END, held_status = ?,"
        " held_body = ?, url_id = coalesce(url_id, ?), holds = holds + 1,"
        " conflict_url_ids = ?, updated_at = ? WHERE id = ?",
        (
            watch.next_poll_at,
            watch.held_status,
            watch.held_body,
            watch.url_id,
            json.dumps(list(conflicts)) if conflicts else None,
            watch.updated_at,
            active.id,
        ),
    )
    return get_watch(conn, active.id)


def resolve_conflict(
    conn: sqlite3.Connection, watch_id: str, url_id: str | None, now: float
) -> Watch | None:
    conn.execute(
        "UPDATE watches SET url_id = ?, conflict_url_ids = NULL, held_status = NULL,"
        " held_body = NULL, next_poll_at = ?, backoff_step = 0, updated_at = ?"
        " WHERE id = ? AND state = 'active' AND conflict_url_ids IS NOT NULL",
        (url_id, now, now, watch_id),
    )
    return get_watch(conn, watch_id)


def list_watches(
    conn: sqlite3.Connection, filters: WatchFilter, cursor: str | None, limit: int
) -> Page:
    sql, params = paged_query(
        f"SELECT seq, {WATCH_COLUMNS} FROM watches", watch_clauses(filters, "?"), cursor, limit, "?"
    )
    return page_of(conn.execute(sql, params).fetchall(), limit, lambda row: watch_from_row(row[1:]))


def cancel_watch(conn: sqlite3.Connection, watch_id: str, now: float) -> Watch | None:
    conn.execute(
        "UPDATE watches SET state = 'canceled', lease_until = NULL, updated_at = ?"
        " WHERE id = ? AND state = 'active'",
        (now, watch_id),
    )
    return get_watch(conn, watch_id)


def claim_due_watches(
    conn: sqlite3.Connection,
    now: float,
    limit: int,
    lease_until: float,
    shares: Mapping[str, int] | None = None,
    budget: ApiBudget | None = None,
) -> list[Watch]:
    # Due watches whose task already ended (a callback came first) need no poll.
    conn.execute(
        "UPDATE watches SET state = 'completed', lease_until = NULL, updated_at = ?,"
        " event_id = (SELECT t.event_id FROM tasks t"
        "  WHERE t.provider = watches.provider AND t.task_id = watches.task_id)"
        " WHERE state = 'active' AND next_poll_at <= ?"
        " AND (lease_until IS NULL OR lease_until <= ?)"
        " AND EXISTS (SELECT 1 FROM tasks t"
        "  WHERE t.provider = watches.provider AND t.task_id = watches.task_id)",
        (now, now, now),
    )
    due = (
        f"SELECT next_poll_at, seq, {WATCH_COLUMNS} FROM watches"
        " WHERE state = 'active' AND next_poll_at <= ?"
        " AND (lease_until IS NULL OR lease_until <= ?)"
        # A watch in conflict waits for its operator (resolve_conflict), unpolled.
        " AND conflict_url_ids IS NULL"
    )
    if budget is not None:
        # Each provider at most the requests its budget has left (SQLite: one writer, exact).
        shares = shares if shares is not None else dict.fromkeys(budget.rates, limit)
        shares = {
            provider: min(share, _tokens_left(conn, provider, now, budget))
            for provider, share in shares.items()
        }
    if shares is None:
        found = conn.execute(f"{due} ORDER BY next_poll_at, seq LIMIT ?", (now, now, limit))
        rows = [row[1:] for row in found.fetchall()]
    else:
        # Each provider up to its share, then the earliest due of all up to ``limit``.
        picked = []
        for provider, share in shares.items():
            if share > 0:
                picked += conn.execute(
                    f"{due} AND provider = ? ORDER BY next_poll_at, seq LIMIT ?",
                    (now, now, provider, min(share, limit)),
                ).fetchall()
        rows = [row[1:] for row in sorted(picked, key=lambda row: (row[0], row[1]))[:limit]]
    if rows:
        marks = ",".join("?" * len(rows))
        conn.execute(
            f"UPDATE watches SET lease_until = ? WHERE seq IN ({marks})",
            (lease_until, *(row[0] for row in rows)),
        )
    watches = [watch_from_row(row[1:]) for row in rows]
    if budget is not None:
        # A token per leased watch, spent until its request ends (at most its lease).
        conn.executemany(
            "INSERT INTO provider_requests (provider, watch_id, at) VALUES (?, ?, ?)",
            [(w.provider, w.id, lease_until) for w in watches if w.provider in budget.rates],
        )
    return watches


def _tokens_left(conn: sqlite3.Connection, provider: str, now: float, budget: ApiBudget) -> int:
    rate = budget.rates.get(provider)
    if rate is None:
        return 1 << 30
    state = budget_state(conn, provider, now, budget.window)
    return 0 if state.blocked_until > now else max(0, rate - state.used)


def budget_state(conn: sqlite3.Connection, provider: str, now: float, window: float) -> BudgetState:
    conn.execute(
        "DELETE FROM provider_requests WHERE provider = ? AND at <= ?", (provider, now - window)
    )
    (used,) = conn.execute(
        "SELECT count(*) FROM provider_requests WHERE provider = ? AND at > ?",
        (provider, now - window),
    ).fetchone()
    row = conn.execute(
        "SELECT blocked_until FROM provider_budget WHERE provider = ?", (provider,)
    ).fetchone()
    return BudgetState(used, 0.0 if row is None else row[0])


def block_provider(conn: sqlite3.Connection, provider: str, until: float) -> None:
    conn.execute(
        "INSERT INTO provider_budget (provider, blocked_until) VALUES (?, ?)"
        " ON CONFLICT (provider) DO UPDATE"
        " SET blocked_until = max(blocked_until, excluded.blocked_until)",
        (provider, until),
    )


def record_poll(conn: sqlite3.Connection, record: PollRecord) -> None:
    # A callback held while the poll ran (holds moved on) keeps its held body (the poll's
    # answer predates it); a watch's first hold keeps its immediate poll as well.
    conn.execute(
        "UPDATE watches SET state = :state, polls = polls + 1, lease_until = NULL,"
        " next_poll_at = CASE WHEN holds = :seen OR :seen > 0 OR :state <> 'active'"
        "  THEN coalesce(:next, next_poll_at)"
        "  ELSE min(coalesce(:next, next_poll_at), next_poll_at) END,"
        " backoff_step = :step,"
        " not_found = :not_found, last_polled_at = :at,"
        " last_status = coalesce(:status, last_status), last_error = :error,"
        " held_status = CASE WHEN (holds = :seen AND :judged)"
        "  OR (:state <> 'active' AND :suspect IS NULL) THEN NULL ELSE held_status END,"
        " held_body = CASE WHEN (holds = :seen AND :judged)"
        "  OR (:state <> 'active' AND :suspect IS NULL) THEN NULL ELSE held_body END,"
        # A finished watch keeps its URL: releasing its suspect callback forwards it with it.
        " url_id = CASE WHEN holds = :seen AND :forget AND :state = 'active' THEN NULL"
        "  ELSE url_id END,"
        " last_answer = coalesce(:answer, last_answer),"
        " unknown_status = CASE WHEN :status IS NULL THEN unknown_status ELSE :unknown END,"
        " suspect = coalesce(:suspect, suspect),"
        " suspect_status = CASE WHEN :suspect IS NULL THEN suspect_status ELSE :claimed END,"
        " event_id = coalesce(:event_id, event_id), updated_at = :at"
        " WHERE id = :id AND state = 'active'",
        poll_params(record),
    )
    # The request ended by now: its token counts from here, not from the lease's end.
    conn.execute(
        "UPDATE provider_requests SET at = ? WHERE watch_id = ? AND at > ?",
        (record.polled_at, record.watch_id, record.polled_at),
    )
    if record.event_id is not None:
        # Canceled while this poll was in flight, after the poll emitted: the watch names the
        # event it emitted (it stays canceled).
        conn.execute(
            "UPDATE watches SET event_id = coalesce(event_id, :event_id)"
            " WHERE id = :id AND state = 'canceled'",
            {"event_id": record.event_id, "id": record.watch_id},
        )


def decide_suspect(conn: sqlite3.Connection, decision: Decision) -> tuple[Watch | None, bool]:
    changed = conn.execute(
        "UPDATE watches SET decision = ?, decided_by = ?, decided_at = ?"
        f" WHERE id = ? AND {DECIDABLE}",
        (decision.decision, decision.decided_by, decision.decided_at, decision.watch_id),
    ).rowcount
    return get_watch(conn, decision.watch_id), bool(changed)


def undo_decision(conn: sqlite3.Connection, decision: Decision) -> None:
    conn.execute(
        "UPDATE watches SET decision = NULL, decided_by = NULL, decided_at = NULL"
        " WHERE id = ? AND decision = ? AND decided_at = ?",
        (decision.watch_id, decision.decision, decision.decided_at),
    )


def release_watch_leases(conn: sqlite3.Connection, watch_ids: list[str] | None) -> int:
    if watch_ids is None:
        return conn.execute(
            "UPDATE watches SET lease_until = NULL"
            " WHERE state = 'active' AND lease_until IS NOT NULL"
        ).rowcount
    marks = ",".join("?" * len(watch_ids))
    return conn.execute(
        f"UPDATE watches SET lease_until = NULL WHERE id IN ({marks})", watch_ids
    ).rowcount


def prune_watches(conn: sqlite3.Connection, before: float, limit: int) -> int:
    return conn.execute(
        "DELETE FROM watches WHERE seq IN (SELECT seq FROM watches"
        " WHERE state <> 'active' AND updated_at < ?"
        # A suspect callback waits for its operator's decision: it is the only copy.
        f" AND NOT ({DECIDABLE}) ORDER BY updated_at LIMIT ?)",
        (before, limit),
    ).rowcount

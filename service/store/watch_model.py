"""What the store keeps about watches: tasks the relay polls at their provider's status API.

A watch is ``active`` until its task is terminal (``completed``), its deadline passed
(``expired``), the provider said it has no such task (``rejected``) or an operator cancelled
it (``canceled``). A watch that held a callback its provider's API did not confirm carries
``suspect`` (why) and ``suspect_status`` (what the callback claimed), and keeps the callback
until an operator releases or dismisses it (``decision``). Both stores read and
write the same columns, in ``WATCH_COLUMNS`` order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

WatchState = Literal["active", "completed", "expired", "rejected", "canceled"]
WATCH_STATES: tuple[str, ...] = ("active", "completed", "expired", "rejected", "canceled")
#: ``api``: registered by a client; ``callback``: a terminal callback held for confirmation.
WatchOrigin = Literal["api", "callback"]


@dataclass(frozen=True)
class Watch:
    id: str
    provider: str
    task_id: str
    origin: str
    state: str
    metadata: dict[str, Any]
    created_at: float
    updated_at: float
    deadline_at: float
    next_poll_at: float
    #: The callback URL whose metadata the watch's events carry too (held callbacks).
    url_id: str | None = None
    polls: int = 0
    #: Polls since the back-off last restarted (a held callback restarts it).
    backoff_step: int = 0
    #: Consecutive answers saying the provider has no such task.
    not_found: int = 0
    last_polled_at: float | None = None
    #: The relay status of the last answer the provider gave.
    last_status: str | None = None
    last_error: str | None = None
    #: A terminal callback waiting for the API to confirm it: its status and raw body.
    held_status: str | None = None
    held_body: bytes | None = field(default=None, repr=False)
    #: How many callbacks were held on this watch so far.
    holds: int = 0
    #: The event that ended the watch (terminal, deadline or not-found).
    event_id: str | None = None
    #: Callback URLs other than ``url_id`` through which callbacks for this task were held.
    #: While there are any, the watch is neither polled nor emits: an operator picks whose
    #: the result is (``service.watch_requests.resolve_conflict``).
    conflict_url_ids: tuple[str, ...] = ()
    #: Why a callback held on this watch was not confirmed by the provider's API (one of
    #: ``SUSPECT_REASONS``); None while nothing held was found suspect. Kept once set.
    suspect: str | None = None
    #: The status that suspect callback claimed.
    suspect_status: str | None = None
    #: The start of the provider API's last status answer (``ANSWER_EXCERPT_BYTES``), as text.
    last_answer: str | None = None
    #: The status word of the last answer that the relay does not know (the watch then polls at
    #: its slowest interval and is flagged for an operator); None once a known word is answered.
    unknown_status: str | None = None
    #: An operator's choice about the suspect callback (``DECISIONS``), who made it and when.
    decision: str | None = None
    decided_at: float | None = None
    decided_by: str | None = None

    def log_fields(self) -> dict[str, str]:
        """What names the watch in a log line: its id, provider and task."""
        return {"watch_id": self.id, "provider": self.provider, "task_id": self.task_id}


#: Why a held callback is suspect: the API answered otherwise, does not know the task, the task
#: id cannot form a status URL, or the hold's deadline passed without the API confirming it.
SUSPECT_REASONS = ("contradicted", "task_not_found", "invalid_task_id", "deadline_unconfirmed")
#: What an operator does with a suspect callback: forward it as received, or drop it.
DECISIONS = ("released", "dismissed")
#: How much of a status answer a watch keeps for the operator (``last_answer``).
ANSWER_EXCERPT_BYTES = 4096


@dataclass(frozen=True)
class HoldRefused:
    """``Store.hold_for_confirmation``'s answer when a new hold would exceed a bound: ``scope``
    is ``url`` (the callback URL has ``per_url`` active holds) or ``total`` (the relay has
    ``total`` active holds). Nothing was stored."""

    scope: str


@dataclass(frozen=True)
class HoldLimits:
    """Most active holds (watches a held callback created) per callback URL and in total."""

    per_url: int
    total: int


@dataclass(frozen=True)
class WatchFilter:
    state: str | None = None
    provider: str | None = None
    task_id: str | None = None
    #: True: only watches with a suspect callback.
    suspect: bool = False
    #: True: only active watches holding a callback that awaits confirmation.
    held: bool = False
    #: True: only suspect watches no operator has decided about yet.
    undecided: bool = False
    #: True: only active watches whose provider answers a status word the relay does not know.
    flagged: bool = False
    #: Only watches whose metadata (the watch's, over its callback URL's) holds these entries
    #: (``service.store.metadata_index``).
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class PollRecord:
    """What one poll found, and what happens next."""

    watch_id: str
    polled_at: float
    #: ``active`` (poll again at ``next_poll_at``) or the state the watch ends in.
    state: str
    next_poll_at: float | None
    backoff_step: int
    not_found: int
    last_status: str | None
    last_error: str | None
    #: ``holds`` as the poll saw it: a callback held meanwhile keeps its immediate poll.
    holds_seen: int
    event_id: str | None = None
    #: The provider answered, so the held callback was compared with its answer.
    judged: bool = False
    #: The API contradicted the held callback: its URL (``url_id``) names nobody and is
    #: forgotten, unless another callback was held meanwhile.
    forget_url: bool = False
    #: A held callback found suspect by this poll (a ``SUSPECT_REASONS``), and its status.
    #: A watch that ends suspect keeps its held callback for the operator.
    suspect: str | None = None
    suspect_status: str | None = None
    #: The start of the answer (``ANSWER_EXCERPT_BYTES``); None when the provider gave none.
    answer: str | None = None
    #: The answer's status word the relay does not know; None when it knows it (or no answer).
    unknown_status: str | None = None


#: SQL condition of a watch an operator may release or dismiss: it ended with its suspect
#: callback kept, and nobody decided yet (the UPDATE that records a decision is the arbiter).
DECIDABLE = (
    "suspect IS NOT NULL AND held_body IS NOT NULL AND state <> 'active' AND decision IS NULL"
)


@dataclass(frozen=True)
class Decision:
    """An operator's choice about a suspect callback (``Store.decide_suspect``)."""

    watch_id: str
    decision: str
    decided_by: str
    decided_at: float


WATCH_COLUMNS = (
    "id, provider, task_id, origin, state, metadata, created_at, updated_at, deadline_at,"
    " next_poll_at, url_id, polls, backoff_step, not_found, last_polled_at, last_status,"
    " last_error, held_status, held_body, holds, event_id, conflict_url_ids, suspect,"
    " suspect_status, last_answer, unknown_status, decision, decided_at, decided_by"
)
#: How many columns ``WATCH_COLUMNS`` names (the INSERTs' parameter count).
WATCH_COLUMN_COUNT = WATCH_COLUMNS.count(",") + 1


def watch_from_row(row: tuple[Any, ...]) -> Watch:
    return Watch(
        id=row[0],
        provider=row[1],
        task_id=row[2],
        origin=row[3],
        state=row[4],
        metadata=json.loads(row[5]),
        created_at=row[6],
        updated_at=row[7],
        deadline_at=row[8],
        next_poll_at=row[9],
        url_id=row[10],
        polls=row[11],
        backoff_step=row[12],
        not_found=row[13],
        last_polled_at=row[14],
        last_status=row[15],
        last_error=row[16],
        held_status=row[17],
        held_body=None if row[18] is None else bytes(row[18]),
        holds=row[19],
        event_id=row[20],
        conflict_url_ids=tuple(json.loads(row[21])) if row[21] else (),
        suspect=row[22],
        suspect_status=row[23],
        last_answer=row[24],
        unknown_status=row[25],
        decision=row[26],
        decided_at=row[27],
        decided_by=row[28],
    )


def watch_values(watch: Watch) -> tuple[Any, ...]:
    """``watch`` as the values of ``WATCH_COLUMNS``, in order."""
    return (
        watch.id,
        watch.provider,
        watch.task_id,
        watch.origin,
        watch.state,
        json.dumps(watch.metadata, separators=(",", ":")),
        watch.created_at,
        watch.updated_at,
        watch.deadline_at,
        watch.next_poll_at,
        watch.url_id,
        watch.polls,
        watch.backoff_step,
        watch.not_found,
        watch.last_polled_at,
        watch.last_status,
        watch.last_error,
        watch.held_status,
        watch.held_body,
        watch.holds,
        watch.event_id,
        json.dumps(list(watch.conflict_url_ids)) if watch.conflict_url_ids else None,
        watch.suspect,
        watch.suspect_status,
        watch.last_answer,
        watch.unknown_status,
        watch.decision,
        watch.decided_at,
        watch.decided_by,
    )


def poll_params(record: PollRecord) -> dict[str, object]:
    """The named parameters of both stores' poll-record statements."""
    return {
        "state": record.state,
        "seen": record.holds_seen,
        "judged": record.judged,
        "forget": record.forget_url,
        "next": record.next_poll_at,
        "step": record.backoff_step,
        "not_found": record.not_found,
        "at": record.polled_at,
        "status": record.last_status,
        "error": record.last_error,
        "event_id": record.event_id,
        "suspect": record.suspect,
        "claimed": record.suspect_status,
        "answer": record.answer,
        "unknown": record.unknown_status,
        "id": record.watch_id,
    }

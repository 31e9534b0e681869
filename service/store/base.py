"""The store port: everything the relay keeps, behind one async interface.

Implementations: ``SQLiteStore`` (the embedded default) and ``PostgresStore`` (replicas). Each
method is one transaction; the docstrings are the contract every implementation honours
(``tests/test_store_contract.py``). Times are Unix seconds (float). Storage failures raise
``StorageUnavailable``. The values that cross the port are in ``service.store.records`` (and
re-exported here, where callers have always found them).

Over 400 lines: it is one interface, and most of it is the contract, written once here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

from service.store.budget import ApiBudget, BudgetState
from service.store.idempotency_model import EarlierRequest, IdempotencyClaim, StoredAnswer
from service.store.paging import Page
from service.store.records import (
    ApiKey,
    ArchiveJob,
    ArchiveOutcome,
    AttemptRecord,
    Claim,
    DeliveryFilter,
    DeliveryStatus,
    EventFilter,
    IncomingEvent,
    IngestResult,
    Outcome,
    ReplayResult,
    Subscriber,
)
from service.store.watch_model import (
    Decision,
    HoldLimits,
    HoldRefused,
    PollRecord,
    Watch,
    WatchFilter,
)

__all__ = [
    "AttemptRecord",
    "Claim",
    "DeliveryFilter",
    "DeliveryStatus",
    "EventFilter",
    "IncomingEvent",
    "IngestResult",
    "Outcome",
    "Page",
    "ReplayResult",
    "Store",
    "Subscriber",
]


class Store(ABC):
    """Durable state of the relay. Open with ``await store.open()``; close with ``close()``."""

    #: True when one process owns the store (SQLite): leases left by a crash are freed at start.
    exclusive: bool = False
    #: Called as ``on_migration(version, total, name)`` before each pending schema migration
    #: is applied by ``open()`` (``relay migrate`` shows its progress with it).
    on_migration: Callable[[int, int, str], None] | None = None

    @abstractmethod
    async def open(self) -> None:
        """Connect and apply pending schema migrations."""

    @abstractmethod
    async def close(self) -> None:
        """Finish queued work and disconnect."""

    @abstractmethod
    async def ping(self) -> None:
        """Commit a trivial write; raise ``StorageUnavailable`` if the store cannot."""

    @abstractmethod
    async def get_or_create_meta(self, key: str, value: str) -> str:
        """The value stored under ``key``, storing ``value`` first if there is none."""

    @abstractmethod
    async def get_meta(self, key: str) -> str | None:
        """The value stored under ``key``, or None."""

    @abstractmethod
    async def set_meta(self, key: str, value: str) -> None:
        """Store ``value`` under ``key``, replacing what was there."""

    # -- callback URLs ------------------------------------------------------------------------

    @abstractmethod
    async def create_callback_url(
        self,
        url_id: str,
        provider: str,
        metadata: dict[str, Any],
        created_at: float,
        expires_at: float,
        reusable: bool = False,
    ) -> None:
        """Remember the metadata of a minted callback URL, unbound (``reusable``: for ever)."""

    @abstractmethod
    async def get_callback_metadata(self, url_id: str) -> dict[str, Any] | None:
        """The metadata of a minted callback URL, or None if unknown."""

    @abstractmethod
    async def bind_callback_url(self, url_id: str, task_id: str) -> str | None:
        """Bind a callback URL to the first task a callback through it names.

        Returns the task the URL is bound to: ``task_id`` when this call bound it (or it
        already was), another task's id when an earlier call bound it to that one. None for a
        reusable URL or an unknown one (neither is ever bound). Atomic: of several callers
        racing to bind one URL (replicas included), exactly one binds it and every caller gets
        that caller's task id.
        """

    # -- ops console sessions (service.ops.session) -----------------------------------------

    @abstractmethod
    async def create_ops_session(
        self,
        session_id: str,
        created_at: float,
        expires_at: float,
        *,
        scope: str = "admin",
        key_id: str | None = None,
    ) -> None:
        """Remember a signed-in console session, live until ``expires_at``, signed in with
        ``scope`` by the API key ``key_id`` (None: the admin token). Sessions that expired
        before ``created_at`` are deleted on the way (revoked ones included)."""

    @abstractmethod
    async def ops_session_live(self, session_id: str, now: float) -> str | None:
        """The scope of the session while it exists, is not revoked and has not expired at
        ``now``; None otherwise. Reads what every process committed: a sign-out (or the
        revocation of its key) anywhere counts at once."""

    @abstractmethod
    async def revoke_ops_session(self, session_id: str, now: float) -> None:
        """End a session (sign-out): ``ops_session_live`` is False from now on."""

    # -- scoped API keys (service.api_keys) -------------------------------------------------

    @abstractmethod
    async def create_api_key(self, key: ApiKey) -> None:
        """Keep a new key (its hash, never the key)."""

    @abstractmethod
    async def api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key whose SHA-256 is ``key_hash``, revoked or not; None if there is none."""

    @abstractmethod
    async def list_api_keys(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first (an administrator makes them one by
        one: there are few)."""

    @abstractmethod
    async def revoke_api_key(self, key_id: str, now: float) -> ApiKey | None:
        """Revoke a key at ``now`` (a key revoked already keeps its first ``revoked_at``), and
        end the console sessions signed in with it, in one transaction. None: no such key."""

    @abstractmethod
    async def touch_api_key(self, key_id: str, now: float, every: float) -> None:
        """Set ``last_used_at`` to ``now`` unless it is within ``every`` seconds before
        ``now`` already (replicas touching one key at once write it about once)."""

    # -- watches (service.watch_service): tasks the relay polls at their provider's status API -----

    @abstractmethod
    async def create_watch(self, watch: Watch) -> tuple[Watch, bool]:
        """Store a new active watch: ``(watch, True)``.

        A task has at most one active watch: if it has one, nothing is stored and that one is
        returned, ``(existing, False)``.
        """

    @abstractmethod
    async def hold_for_confirmation(
        self, watch: Watch, limits: HoldLimits | None = None
    ) -> Watch | HoldRefused | None:
        """Hold a terminal callback (``watch.held_status``, ``held_body``) until a poll of the
        provider's API judges it; answers only after the hold is committed.

        - None: the task already has a terminal event; nothing is held (the callback is then
          ingested as usual, as a duplicate or superseded).
        - The task's active watch, if it has one (the callback joins it, whatever the
          limits): its held callback replaced, ``holds`` + 1, its ``url_id`` kept if it had
          one; its back-off and ``not_found`` go on, and its next poll stays when it is,
          unless this is its first hold (a safety-net watch): then it is due at
          ``watch.next_poll_at`` at the latest. A ``watch.url_id`` other than the active
          watch's (both set) is appended, once, to its ``conflict_url_ids``.
        - ``HoldRefused``: a new hold would exceed ``limits`` (active watches of origin
          "callback" with this ``url_id``, or in all); nothing is stored. Counted inside the
          hold's transaction: exact, across PostgreSQL replicas too (they take turns).
        - Otherwise ``watch`` itself (``origin`` "callback"), stored.
        """

    @abstractmethod
    async def resolve_conflict(self, watch_id: str, url_id: str | None, now: float) -> Watch | None:
        """An operator's answer to an attribution conflict: an active watch with
        ``conflict_url_ids`` gets ``url_id`` (None: no callback URL's metadata), no conflict,
        no held callback, and is due at ``now`` with its back-off restarted. Any other watch is
        left as it is. Returns the watch, or None if unknown."""

    @abstractmethod
    async def get_watch(self, watch_id: str) -> Watch | None:
        """The watch, or None."""

    @abstractmethod
    async def decide_suspect(self, decision: Decision) -> tuple[Watch | None, bool]:
        """Record an operator's ``decision`` on a watch's suspect callback, atomically: only a
        watch that ended with its suspect callback kept and no decision yet takes it
        (``watch_model.DECIDABLE``), so of two concurrent decisions exactly one wins. Returns
        the watch as it is now (None if unknown) and whether this decision was recorded."""

    @abstractmethod
    async def undo_decision(self, decision: Decision) -> None:
        """Forget ``decision`` if it is still the watch's (a release that could not forward
        the callback): the suspect callback can be decided again."""

    @abstractmethod
    async def list_watches(self, filters: WatchFilter, cursor: str | None, limit: int) -> Page:
        """Watches, newest first; items are ``Watch``."""

    @abstractmethod
    async def cancel_watch(self, watch_id: str, now: float) -> Watch | None:
        """An active watch becomes ``canceled`` (a poll in flight changes it no more); a
        finished one is left as it is. Returns the watch, or None if unknown."""

    @abstractmethod
    async def claim_due_watches(
        self,
        now: float,
        limit: int,
        lease_seconds: float,
        shares: Mapping[str, int] | None = None,
        budget: ApiBudget | None = None,
    ) -> list[Watch]:
        """Lease up to ``limit`` active watches that are due, earliest due first; with
        ``shares``, only watches of the providers it names, at most that many of each.

        With ``budget`` (``service.store.budget``), a provider it names gets at most the
        requests it has left in the window (none while blocked), and each watch leased spends
        one, atomically with the lease: however many processes claim at once, no window of
        ``budget.window`` seconds sees more than the provider's rate. (Without ``shares``,
        only the providers the budget names are claimed.)

        Due: ``next_poll_at <= now``, no lease (or a lapsed one), and no ``conflict_url_ids``
        (a watch in conflict waits for ``resolve_conflict``). A due watch whose task
        already has a terminal event is not returned: it becomes ``completed`` (with that
        event's id) without a poll. Several processes claiming at once never share a watch.
        """

    @abstractmethod
    async def budget_state(self, provider: str, now: float, window: float) -> BudgetState:
        """How many requests ``provider``'s budget spent in the ``window`` seconds before
        ``now`` (a poll in flight counts), and until when a 429 blocks it."""

    @abstractmethod
    async def block_provider(self, provider: str, until: float) -> None:
        """No claim spends ``provider``'s budget before ``until`` (a later block wins)."""

    @abstractmethod
    async def record_poll(self, record: PollRecord) -> None:
        """Apply a poll's outcome to a watch that is still active and free its lease.

        ``polls`` + 1; ``state``, ``next_poll_at`` (kept when None), ``backoff_step``,
        ``not_found``, ``last_error`` as recorded; ``last_status`` and ``event_id`` when given;
        ``url_id`` cleared when the record says ``forget_url``, the watch stays active and no
        other callback was held while the poll ran. ``last_answer`` set when the record has an
        ``answer``; ``unknown_status`` set to the record's when it has a ``last_status``.
        The held callback is cleared when the watch ends (unless the record names it
        ``suspect``: the operator then sees what was claimed), or when the poll ``judged`` it
        and no other was held while the poll ran. ``suspect`` and ``suspect_status`` are set
        when the record has a ``suspect``, and kept otherwise. A watch's first hold made while
        the poll ran (``holds_seen`` 0, ``holds`` moved on) keeps its immediate poll
        (``next_poll_at`` is the earlier of the two). A watch canceled meanwhile stays
        canceled, and gets the record's ``event_id`` if it has none: an event emitted by a
        poll is always named by its watch.
        """

    @abstractmethod
    async def release_watch_leases(self, watch_ids: list[str] | None = None) -> int:
        """Free watch leases (all when ``watch_ids`` is None): shutdown and crash recovery."""

    @abstractmethod
    async def prune_watches(self, before: float, limit: int) -> int:
        """Delete up to ``limit`` finished watches (any state but active) last changed before
        ``before``, except those whose suspect callback awaits a decision
        (``watch_model.DECIDABLE``); returns how many went."""

    # -- events -------------------------------------------------------------------------------

    @abstractmethod
    async def ingest(self, event: IncomingEvent) -> IngestResult:
        """Store one update atomically, deciding what it is.

        - ``duplicate``: an event with the same ``dedup_key`` exists; nothing is written and the
          existing event's id is returned.
        - ``superseded``: the task already has an emitted terminal event; the update is stored
          for the record but not emitted (no deliveries).
        - ``accepted``: stored and emitted; one pending delivery, due now, is created for every
          enabled subscriber that wants it; a terminal status is remembered for the task.

        The answer comes only after the transaction committed.
        """

    @abstractmethod
    async def get_event(self, event_id: str) -> dict[str, Any] | None:
        """The stored CloudEvent with ``relay: {"state": "emitted" | "superseded"}``, or None."""

    @abstractmethod
    async def get_event_raw(self, event_id: str) -> bytes | None:
        """The body the event was made from, exactly as received (a callback's body, or the
        answer of the poll that saw it), or None when there is no such event."""

    @abstractmethod
    async def list_events(self, filters: EventFilter, cursor: str | None, limit: int) -> Page:
        """Emitted and superseded events, newest first; items are CloudEvent JSON strings,
        each with ``relay.state`` as ``get_event`` gives it. ``filters.metadata``: through the
        index of each event's metadata (``service.store.metadata_index``)."""

    # -- subscribers ----------------------------------------------------------------------------

    @abstractmethod
    async def create_subscriber(self, subscriber: Subscriber) -> None:
        """Store a new subscriber (``secrets[0]`` is its signing secret)."""

    @abstractmethod
    async def get_subscriber(self, subscriber_id: str) -> Subscriber | None:
        """The subscriber, with its current secrets (the previous one only while it is valid)."""

    @abstractmethod
    async def list_subscribers(self, cursor: str | None, limit: int) -> Page:
        """Subscribers, oldest first; items are ``Subscriber``."""

    @abstractmethod
    async def update_subscriber(
        self, subscriber_id: str, changes: dict[str, Any]
    ) -> Subscriber | None:
        """Apply ``changes`` (url, description, providers, event_types, enabled); None: unknown."""

    @abstractmethod
    async def delete_subscriber(self, subscriber_id: str, now: float) -> bool:
        """Remove a subscriber; its pending deliveries become ``canceled`` in the same
        transaction, and none is created for it afterwards, even by an ingest that read the
        subscriber list before the removal (another process's cache). False if unknown."""

    @abstractmethod
    async def rotate_secret(
        self, subscriber_id: str, new_secret: str, previous_valid_until: float
    ) -> Subscriber | None:
        """Make ``new_secret`` current; the old one keeps signing until ``previous_valid_until``."""

    # -- deliveries -----------------------------------------------------------------------------

    @abstractmethod
    async def claim_due(
        self, now: float, limit: int, lease_seconds: float, exclude_subscribers: frozenset[str]
    ) -> list[Claim]:
        """Lease up to ``limit`` deliveries that are due, oldest due first.

        Only pending deliveries of enabled subscribers whose lease is free, and never one with
        an earlier pending delivery of the same task to the same subscriber (per-task order).
        """

    @abstractmethod
    async def record_attempt(self, record: AttemptRecord) -> None:
        """Append the attempt, move a pending delivery to its outcome and free its lease.

        A delivery that stopped being pending meanwhile (canceled: its subscriber was deleted)
        keeps its status; the attempt is still recorded.
        """

    @abstractmethod
    async def release_leases(self, delivery_ids: list[str] | None = None) -> int:
        """Free leases (all of them when ``delivery_ids`` is None): shutdown and crash recovery."""

    @abstractmethod
    async def list_deliveries(
        self, filters: DeliveryFilter, cursor: str | None, limit: int
    ) -> Page:
        """Deliveries, newest first; items are dicts (see ``delivery_json``)."""

    @abstractmethod
    async def get_delivery(self, delivery_id: str) -> dict[str, Any] | None:
        """One delivery with ``attempts`` (oldest first), or None."""

    @abstractmethod
    async def replay(
        self,
        filters: DeliveryFilter,
        delivery_ids: list[str] | None,
        now: float,
        *,
        force: bool = False,
    ) -> ReplayResult:
        """Start a fresh retry cycle, due now, for failed deliveries of enabled subscribers.

        ``delivery_ids`` selects deliveries by id; otherwise ``filters`` (status is forced to
        failed) selects them.

        A replay never sends an older status after a newer one: unless ``force``, a delivery
        is left failed (and reported in ``newer``) when its subscriber has a delivery of a
        later event of the same task (higher event ``seq``) that succeeded or is in flight
        (pending and leased), since the replayed one would reach the subscriber after it. A
        later delivery that is pending but not in flight is no obstacle: the replayed one
        keeps its place in the task's line and goes first. The check and the update are one
        transaction, and no worker can start the later delivery before it commits.
        """

    @abstractmethod
    async def redeliver(
        self, event_id: str, subscriber_ids: list[str], now: float, *, force: bool = False
    ) -> ReplayResult:
        """Create a new pending delivery of an emitted event to each given subscriber that
        exists; ``count`` is how many were created.

        A new delivery joins the end of the subscriber's line for the task, behind every
        delivery made before it. So, unless ``force``, a subscriber that has any delivery of a
        later event of the same task (whatever its status: a failed one may be replayed) gets
        none, and is reported in ``newer``. The check and the insert are one transaction,
        serialized with the task's intake.
        """

    @abstractmethod
    async def prune(self, before: float, limit: int, failed_before: float | None = None) -> int:
        """Delete up to ``limit`` events received before ``before``, with their deliveries and
        attempts, and callback URLs that expired before it; returns how many events went.

        An event is kept while any of its deliveries is pending, or failed (a failure waits
        for its operator) unless it failed before ``failed_before``. Tasks' terminal statuses
        are kept: a late update of a pruned task is still superseded.
        """

    @abstractmethod
    async def delivery_counts(self) -> dict[str, Any]:
        """How many deliveries are pending and failed, and the age of the oldest pending."""

    # -- idempotency keys (``service.idempotency``) ---------------------------------------------

    @abstractmethod
    async def claim_idempotency_key(self, claim: IdempotencyClaim) -> EarlierRequest | None:
        """Claim ``claim.key`` within ``claim.scope`` for one request: None when this call got
        it, otherwise the request that holds it (its answer None while it runs).

        A key is free when no row holds it, when its row expired (``expires_at`` at or before
        ``claim.now``), or when its claim was left without an answer since before
        ``claim.stale_before``; a free key is taken by this claim, whose ``token`` alone may
        then record the answer or give it back. Atomic: of several claims of one key at once
        (replicas included), exactly one gets it.
        """

    @abstractmethod
    async def record_idempotent_answer(
        self, scope: str, key: str, token: str, answer: StoredAnswer
    ) -> bool:
        """Keep ``answer`` for the key, if claim ``token`` still holds it without an answer
        (else False: nothing written)."""

    @abstractmethod
    async def release_idempotency_key(self, scope: str, key: str, token: str) -> None:
        """Give the key back (claim ``token``, no answer yet): the next claim gets it."""

    @abstractmethod
    async def prune_idempotency_keys(self, now: float, limit: int) -> int:
        """Delete up to ``limit`` keys that expired at or before ``now``; returns how many."""

    # -- archive jobs (``service.archive_worker``) ---------------------------------------------

    @abstractmethod
    async def claim_archive_jobs(
        self, now: float, limit: int, lease_seconds: float, *, overdue_at: float | None = None
    ) -> list[ArchiveJob]:
        """Lease up to ``limit`` pending archive jobs that are due, earliest first, each with
        its event's ``body`` and a fresh ``lease_token``. Several processes claiming at once
        never share a job; a job whose lease lapsed (its process died) is claimed again.
        With ``overdue_at``, only jobs whose deadline is at or before it."""

    @abstractmethod
    async def extend_archive_lease(self, event_id: str, lease_token: str, until: float) -> bool:
        """Keep a running job leased until ``until``; False if the run lost its lease."""

    @abstractmethod
    async def record_archive_outcome(self, outcome: ArchiveOutcome) -> bool:
        """Write a run's outcome, if the run still holds the lease (else False, nothing
        written): ``attempts`` + 1, ``progress``, ``last_error``, the lease freed. A finished
        job takes ``outcome.status``, the event its rewritten ``body``, and the event's
        deliveries that waited for the archive become due at ``outcome.at``, all in one
        transaction; an unfinished one is due again at ``outcome.next_attempt_at``."""

    @abstractmethod
    async def get_archive_job(self, event_id: str) -> ArchiveJob | None:
        """The event's archive job, or None."""

    @abstractmethod
    async def list_archive_jobs(self, status: str | None, cursor: str | None, limit: int) -> Page:
        """Archive jobs, newest first (items are ``ArchiveJob``), of ``status`` if given."""

    @abstractmethod
    async def retry_archive_job(
        self, event_id: str, now: float, deadline_at: float
    ) -> ArchiveJob | None:
        """A failed job runs again, due at ``now``, until ``deadline_at`` (its ``progress``
        kept: what it archived stays archived); a job in any other status is left as it is.
        Returns the job as it is now, or None."""

    @abstractmethod
    async def archive_counts(self, now: float) -> dict[str, Any]:
        """``{"pending": n, "failed": n, "oldest_pending_seconds": s | None}``."""

    @abstractmethod
    async def release_archive_leases(self, leases: list[tuple[str, str]] | None = None) -> int:
        """Free these leases, ``(event_id, lease_token)``, where still held by that token
        (shutdown: a lease another process took meanwhile stays), or every lease when None
        (the start of the one process owning the store)."""

    # -- operators (the ops console, ``relay status``): reads that never hold up callbacks ----

    @abstractmethod
    async def activity(self, since: float) -> dict[str, Any]:
        """What happened since ``since``, for an overview.

        - ``events``: ``{type: {"emitted": n, "superseded": n}}``, events received since then
          by CloudEvent type;
        - ``deliveries``: ``{"pending": n, "succeeded": n, "failed": n}``, deliveries whose
          status last changed since then;
        - ``oldest_pending``: the pending delivery created first (``delivery_json``), or None.
        """

    @abstractmethod
    async def delivery_details(
        self, filters: DeliveryFilter, provider: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """At most ``limit`` deliveries matching ``filters`` whose event came from ``provider``
        (any when None), newest first. Each is ``delivery_json`` plus its event's
        ``provider``, ``task_id`` and ``event_type``, and ``attempts`` (oldest first, as in
        ``get_delivery``)."""

    @abstractmethod
    async def waiting_callback_counts(self) -> dict[str, int]:
        """``{"held": n, "suspect": n}``: callbacks awaiting their API's confirmation (active
        watches holding one), and suspect callbacks awaiting an operator's decision
        (``watch_model.DECIDABLE``)."""

    @abstractmethod
    async def active_watch_counts(self) -> dict[str, int]:
        """How many watches are active, by provider (providers with none are absent)."""

    @abstractmethod
    async def consecutive_failures(self) -> dict[str, int]:
        """Every subscriber's failed attempts in a row (0 when none), by subscriber id.

        ``record_attempt`` counts a failure one more, and a success ends the count when its
        record says the subscriber was failing when the delivery was claimed
        (``Claim.subscriber_failing``): a success claimed before the failures began leaves
        it, until the next."""

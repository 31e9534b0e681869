"""The values that cross the store port: what the relay hands a store and what it gets back.

Plain dataclasses, no storage in them; ``service.store.base.Store`` is the port that takes them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

#: A metadata filter: (key, value as text) pairs, all of which must match
#: (``service.store.metadata_index``).
MetadataFilter = tuple[tuple[str, str], ...]

Outcome = Literal["accepted", "duplicate", "superseded"]


@functools.lru_cache(maxsize=1024)
def header_pairs(stored: str | None) -> tuple[tuple[str, str], ...]:
    """A subscriber's headers as the stores keep them (a JSON object, or NULL) as pairs."""
    if not stored:
        return ()
    return tuple((str(name), str(value)) for name, value in json.loads(stored).items())


# Built for every callback, so not frozen (a frozen dataclass costs six times as much to build);
# nothing changes them once built.
@dataclass(slots=True)
class IncomingEvent:
    """A normalized callback about to be stored. ``body`` is the CloudEvent JSON."""

    event_id: str
    provider: str
    task_id: str
    status: str
    progress: int | None
    event_type: str
    terminal: bool
    dedup_key: str
    received_at: float
    url_id: str | None
    body: str
    raw_body: bytes
    #: When archiving its outputs must end (``service.archive_worker``); None: not archived.
    #: An accepted event with one gets its archive job, and its deliveries wait for the job.
    archive_deadline: float | None = None
    #: Its metadata's indexed entries (``metadata_index.indexed``): written to the index and
    #: matched against subscribers' metadata filters. Empty: nothing more to write.
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class IngestResult:
    outcome: Outcome
    event_id: str
    deliveries: int = 0


@dataclass(frozen=True)
class EventFilter:
    provider: str | None = None
    task_id: str | None = None
    status: str | None = None
    since: float | None = None
    metadata: MetadataFilter = ()


@dataclass(frozen=True)
class Subscriber:
    id: str
    url: str
    description: str | None
    providers: tuple[str, ...] | None
    event_types: tuple[str, ...] | None
    enabled: bool
    created_at: float
    updated_at: float
    disabled_reason: str | None = None
    #: Signing secrets (``whsec_...``), newest first; the previous one stays while rotating.
    secrets: tuple[str, ...] = field(default=(), repr=False)
    #: Only events whose metadata holds all these entries (text, as indexed); None: all.
    metadata: MetadataFilter | None = None
    #: Its own request headers (name, value), sent with every delivery; never shown in full.
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: Deliveries a second it takes at most (``service.pacing``); None: no limit.
    max_per_second: float | None = None

    def wants(
        self, provider: str, event_type: str, metadata: Mapping[str, str] | None = None
    ) -> bool:
        """Whether this subscriber's filters select an event (``metadata``: its indexed
        entries, ``metadata_index.indexed``)."""
        if self.providers is not None and provider not in self.providers:
            return False
        if self.metadata is not None:
            if metadata is None:
                return False
            for key, value in self.metadata:
                if metadata.get(key) != value:
                    return False
        if self.event_types is None:
            return True
        for pattern in self.event_types:
            if pattern == event_type or pattern == "*":
                return True
            if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
                return True
        return False


#: ``canceled``: its subscriber was deleted before it succeeded (terminal, like the others).
DeliveryStatus = Literal["pending", "succeeded", "failed", "canceled"]


@dataclass(frozen=True)
class DeliveryFilter:
    status: DeliveryStatus | None = None
    subscriber_id: str | None = None
    event_id: str | None = None
    since: float | None = None
    until: float | None = None
    metadata: MetadataFilter = ()


@dataclass(frozen=True)
class Claim:
    """A delivery leased to this worker, with everything needed to attempt it."""

    delivery_id: str
    event_id: str
    subscriber_id: str
    url: str
    secrets: tuple[str, ...]
    body: str
    cycle_attempts: int
    trigger: str
    #: ``provider/task_id`` of the event (for the log lines of the attempt).
    task_key: str = ""
    #: The subscriber's own request headers (never logged).
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: The subscriber's rate limit (``service.pacing``); None: none.
    max_per_second: float | None = None
    #: Whether the subscriber's last attempt had failed when this was claimed.
    subscriber_failing: bool = False

    @classmethod
    def from_row(cls, row: Any, now: float) -> Claim:
        """A claim from the stores' claim query, whose columns are: delivery id, event id,
        subscriber id, url, secret, previous secret, its expiry, body, cycle attempts,
        attempt count, task key, the subscriber's headers (JSON text) and rate limit, and
        whether it is failing (its failures in a row, or NULL)."""
        return cls(
            delivery_id=row[0],
            event_id=row[1],
            subscriber_id=row[2],
            url=row[3],
            # The previous secret signs beside the new one until its expiry.
            secrets=(row[4], row[5]) if row[5] and row[6] and row[6] > now else (row[4],),
            body=row[7],
            cycle_attempts=row[8],
            # A fresh cycle after earlier attempts can only be an operator's replay.
            trigger="replay" if row[8] == 0 and row[9] > 0 else "scheduled",
            task_key=row[10],
            headers=header_pairs(row[11]),
            max_per_second=row[12],
            subscriber_failing=row[13] is not None,
        )


@dataclass(frozen=True)
class AttemptRecord:
    """What one HTTP attempt did, and what happens next."""

    delivery_id: str
    attempted_at: float
    trigger: str
    latency_ms: float
    status_code: int | None
    error: str | None
    response_excerpt: str | None
    #: ``succeeded``, ``failed``, or ``pending`` (retry at ``next_attempt_at``).
    outcome: DeliveryStatus
    next_attempt_at: float | None = None
    #: Set when the subscriber answered 410 Gone: it is disabled with this reason.
    disable_subscriber: str | None = None
    #: The subscriber was failing when the delivery was claimed: a success ends its failures
    #: in a row (``Store.consecutive_failures``). A success otherwise writes nothing more.
    subscriber_failing: bool = False

    @property
    def counts_for_health(self) -> bool:
        """Whether recording this attempt updates the subscriber's failures in a row."""
        return self.outcome != "succeeded" or self.subscriber_failing


@dataclass(frozen=True)
class ReplayResult:
    """What ``replay`` or ``redeliver`` did.

    ``count``: deliveries replayed (``replay``) or created (``redeliver``). ``newer``: what was
    left alone because the subscriber already has a delivery of a later event of the same task
    (see ``Store.replay``): delivery id (``replay``) or subscriber id (``redeliver``) -> that
    newer delivery's id. Empty when ``force`` was given.
    """

    count: int
    newer: dict[str, str] = field(default_factory=dict)


#: ``pending``: waiting or running; ``archived``: every output kept; ``failed``: the event went
#: out (or will) with some outputs not archived.
ArchiveStatus = Literal["pending", "archived", "failed"]


@dataclass(frozen=True)
class ArchiveJob:
    """An event's archive job (``service.archive_worker``).

    ``progress`` has one entry per output tried so far: archived ones carry ``key``,
    ``content_type``, ``bytes`` and ``sha256``; failed ones ``reason`` and ``error``.
    ``body`` (the event's CloudEvent JSON) and ``lease_token`` are filled in by a claim.
    """

    event_id: str
    provider: str
    task_id: str
    status: ArchiveStatus
    attempts: int
    next_attempt_at: float | None
    deadline_at: float
    progress: list[dict[str, Any]]
    last_error: str | None
    created_at: float
    updated_at: float
    body: str | None = None
    lease_token: str | None = None


@dataclass(frozen=True)
class ArchiveOutcome:
    """What a run of an archive job wrote back: ``finished`` -> ``status`` with the event's
    rewritten ``body`` (its deliveries start); otherwise retried at ``next_attempt_at``."""

    event_id: str
    lease_token: str
    progress: list[dict[str, Any]]
    last_error: str | None
    at: float
    finished: bool
    status: ArchiveStatus = "pending"
    body: str | None = None
    next_attempt_at: float | None = None


@dataclass(frozen=True)
class ApiKey:
    """A scoped API key as the store keeps it (``service.api_keys``): never the key itself,
    only its SHA-256 (``key_hash``, hex), which is how a presented key is found."""

    id: str
    name: str | None
    scope: str
    key_hash: str
    created_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None

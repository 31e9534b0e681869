"""Prometheus metrics: counted on the hot paths, the rest read from the store at scrape time.

Counters and the latency histogram are incremented where things happen. Gauges about the
backlog (pending and failed deliveries, the oldest pending one) are not kept in memory at all:
``GET /metrics`` asks the store (``Store.delivery_counts``) when it is scraped, so every
replica reports the truth.

Several uvicorn workers: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before the
processes start (``prometheus_client`` reads it at import). Each process then writes its
counters to files there and a scrape, answered by any one of them, adds up all of them.

    relay_callbacks_total{provider, outcome}      accepted, duplicate, superseded, or the
                                                  refusal's error code (invalid_token, ...)
    relay_events_total{type, state}               events stored (from callbacks and watches):
                                                  emitted or superseded
    relay_succeeded_without_outputs_total{provider}  succeeded events emitted with no output
                                                  (a result shape the relay does not know)
    relay_unknown_status_total{provider}          updates whose status word the relay does
                                                  not know (kept as running)
    relay_delivery_attempts_total{outcome}        succeeded, retry (another attempt is
                                                  scheduled) or failed (waits for an operator)
    relay_delivery_attempt_duration_seconds       latency of each attempt (histogram)
    relay_subscriber_attempts_total{subscriber}   delivery attempts by subscriber id, and
    relay_subscriber_failures_total{subscriber}   the failed ones (not 2xx); a removed
                                                  subscriber's series go at the next scrape
                                                  (with PROMETHEUS_MULTIPROC_DIR: at restart)
    relay_subscriber_consecutive_failures         at scrape time, from the store: failed
        {subscriber}                              attempts since the subscriber's last
                                                  success, every replica's counted (0: fine)
    relay_outputs_dropped_total{reason}           output URLs left out of events (scheme,
                                                  private_address, too_long, over_limit...)
    relay_attempt_record_errors_total             attempts whose record the store refused
                                                  (not an outage: logged with a traceback)
    relay_deliveries_pending / _failed            at scrape time, from the store
    relay_oldest_pending_delivery_age_seconds     at scrape time (0 when nothing is pending)
    relay_watch_polls_total{provider, outcome}    polls of provider status APIs: ok, retry,
                                                  not_found, invalid (the task id cannot form
                                                  a URL) or error (an unexpected failure)
    relay_suspect_callbacks_total{provider,       held callbacks the provider's API did not
        reason}                                   confirm: contradicted, task_not_found,
                                                  invalid_task_id, deadline_unconfirmed
    relay_held_callbacks_total{provider}          terminal callbacks held for confirmation
    relay_suspect_decisions_total{provider,       suspect callbacks an operator released or
        decision}                                 dismissed
    relay_held_callbacks_refused_total{provider,  callbacks refused because their URL (url,
        scope}                                    429) or the relay (total, 503) holds enough
    relay_watches_active{provider}                at scrape time, from the store
    relay_callbacks_waiting{state}                at scrape time: held (for confirmation),
                                                  suspect (for an operator's decision)
    relay_store_up                                1 when the scrape-time queries answered
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from service.clock import Clock, system_clock
from service.errors import StorageUnavailable
from service.events import EVENT_TYPES
from service.http import require_scope
from service.providers import PROVIDERS

if TYPE_CHECKING:
    from service.relay import Relay

#: Where the relay's own metrics live (the global default registry is left to its users).
REGISTRY = CollectorRegistry(auto_describe=True)

CALLBACKS = Counter(
    "relay_callbacks_total",
    "Provider callbacks received, by provider and outcome (accepted, duplicate, superseded, "
    "or the error code of a refusal).",
    ["provider", "outcome"],
    registry=REGISTRY,
)
EVENTS = Counter(
    "relay_events_total",
    "Events stored, by CloudEvent type and state (emitted, or superseded: never delivered).",
    ["type", "state"],
    registry=REGISTRY,
)
SUCCEEDED_WITHOUT_OUTPUTS = Counter(
    "relay_succeeded_without_outputs_total",
    "Succeeded events emitted without any output, by provider: a result shape the relay does "
    "not read (each is also logged as succeeded_without_outputs).",
    ["provider"],
    registry=REGISTRY,
)
UNKNOWN_STATUSES = Counter(
    "relay_unknown_status_total",
    "Updates (callbacks and polls) whose status word the relay does not know, by provider; "
    "they are kept as running and logged as unknown_status with the word.",
    ["provider"],
    registry=REGISTRY,
)
ATTEMPTS = Counter(
    "relay_delivery_attempts_total",
    "Delivery attempts by outcome: succeeded, retry (another attempt is scheduled) or failed "
    "(no more attempts: it waits for an operator).",
    ["outcome"],
    registry=REGISTRY,
)
SUBSCRIBER_ATTEMPTS = Counter(
    "relay_subscriber_attempts_total",
    "Delivery attempts by subscriber id.",
    ["subscriber"],
    registry=REGISTRY,
)
SUBSCRIBER_FAILURES = Counter(
    "relay_subscriber_failures_total",
    "Failed delivery attempts (no 2xx answer) by subscriber id.",
    ["subscriber"],
    registry=REGISTRY,
)
ATTEMPT_RECORD_ERRORS = Counter(
    "relay_attempt_record_errors_total",
    "Delivery attempts whose record the store refused for a reason other than being "
    "unavailable (a bug or data the store cannot hold); each is logged with its traceback.",
    registry=REGISTRY,
)
OUTPUTS_DROPPED = Counter(
    "relay_outputs_dropped_total",
    "Output URLs left out of events, by reason: scheme (not http/https), private_address, "
    "too_long, malformed, over_limit (service.forwarding).",
    ["reason"],
    registry=REGISTRY,
)
WATCH_POLLS = Counter(
    "relay_watch_polls_total",
    "Polls of provider status APIs (every request the relay sends to a provider's API), by "
    "provider and outcome: ok, retry, rate_limited (a 429: the provider is paused), not_found, "
    "invalid (the task id cannot form a status URL) or error (an unexpected failure of the "
    "poll).",
    ["provider", "outcome"],
    registry=REGISTRY,
)
BUDGET_WAIT_SECONDS = Histogram(
    "relay_watch_budget_wait_seconds",
    "Seconds from when a watch was due to when it was claimed for its poll, by provider: "
    "mostly waiting for the provider's request budget (RELAY_<PROVIDER>_API_RATE) or a 429's "
    "pause; a fraction of a second otherwise.",
    ["provider"],
    buckets=(0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0),
    registry=REGISTRY,
)
SUSPECT_CALLBACKS = Counter(
    "relay_suspect_callbacks_total",
    "Held callbacks the provider's API did not confirm, by provider and reason: contradicted, "
    "task_not_found, invalid_task_id or deadline_unconfirmed (service.watch_service).",
    ["provider", "reason"],
    registry=REGISTRY,
)
HELD_CALLBACKS = Counter(
    "relay_held_callbacks_total",
    "Terminal callbacks held for confirmation by the provider's API, by provider (a repost "
    "joining its hold counts again).",
    ["provider"],
    registry=REGISTRY,
)
SUSPECT_DECISIONS = Counter(
    "relay_suspect_decisions_total",
    "Suspect callbacks an operator decided about, by provider and decision: released "
    "(forwarded as received) or dismissed (service.suspects).",
    ["provider", "decision"],
    registry=REGISTRY,
)
HOLDS_REFUSED = Counter(
    "relay_held_callbacks_refused_total",
    "Callbacks refused rather than held, by provider and scope: url (RELAY_HOLDS_PER_URL, 429) "
    "or total (RELAY_HOLDS_MAX, 503).",
    ["provider", "scope"],
    registry=REGISTRY,
)
ATTEMPT_SECONDS = Histogram(
    "relay_delivery_attempt_duration_seconds",
    "How long one delivery attempt took, connect to the last byte read.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)

ARCHIVED_OUTPUTS = Counter(
    "relay_archive_outputs_total",
    "Outputs the archive worker tried to copy, by outcome: archived, or the failure's reason "
    "(not_found, timeout, connection, http_error, store, too_large, blocked).",
    ["outcome"],
    registry=REGISTRY,
)
ARCHIVED_BYTES = Counter(
    "relay_archive_bytes_total", "Bytes of outputs written to the archive.", registry=REGISTRY
)
ARCHIVE_JOBS = Counter(
    "relay_archive_jobs_total",
    "Archive job runs, by result: archived, failed (the event went out with some outputs "
    "unarchived) or retry.",
    ["result"],
    registry=REGISTRY,
)
ARCHIVE_JOB_SECONDS = Histogram(
    "relay_archive_job_duration_seconds",
    "How long one run of an archive job took (every output of one event).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0),
    registry=REGISTRY,
)

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
if not MULTIPROCESS:
    # CPU, memory and file descriptors of this process (meaningless summed over processes).
    ProcessCollector(registry=REGISTRY)

#: ``outcome`` label of a delivery attempt, from the delivery's status after it.
_ATTEMPT_OUTCOMES = {"succeeded": "succeeded", "pending": "retry", "failed": "failed"}
_STATUS_OUTCOMES = {404: "not_found", 405: "method_not_allowed", 500: "internal_error"}
_KNOWN_TYPES = frozenset(EVENT_TYPES)

_attempt_children = {
    outcome: ATTEMPTS.labels(outcome) for outcome in sorted(set(_ATTEMPT_OUTCOMES.values()))
}


class RecentTally:
    """Counts per minute for the last hour, in this process (the ops console's overview).

    Prometheus answers "how many since the process started"; an operator at the console asks
    "how many in the last hour". Sixty one-minute buckets answer that for a few bytes each.
    """

    def __init__(self, minutes: int = 60, clock: Clock = system_clock) -> None:
        self.minutes = minutes
        self.clock = clock
        self.started_at = clock()
        self._buckets: dict[int, Tally[str]] = {}
        self._lock = threading.Lock()  # (tests run relays on several threads of one process)

    def add(self, key: str, count: int = 1) -> None:
        minute = int(self.clock() // 60)
        with self._lock:
            bucket = self._buckets.get(minute)
            if bucket is None:
                bucket = self._buckets[minute] = Tally()
                for old in [m for m in self._buckets if m <= minute - self.minutes]:
                    del self._buckets[old]
            bucket[key] += count

    def totals(self) -> dict[str, int]:
        """Counts of the last ``minutes`` minutes (the current one included)."""
        minute = int(self.clock() // 60)
        total: Tally[str] = Tally()
        with self._lock:
            for start, bucket in self._buckets.items():
                if start > minute - self.minutes:
                    total.update(bucket)
        return dict(total)


#: Callback outcomes of the last hour in this process (``provider:outcome`` -> count).
RECENT_CALLBACKS = RecentTally()


def recent_callbacks() -> dict[str, int]:
    """``RECENT_CALLBACKS.totals()``: callback outcomes of the last hour in this process."""
    return RECENT_CALLBACKS.totals()


def callback_outcome(status: int, context: Mapping[str, Any]) -> str:
    """The ``outcome`` label of a callback request from the fields of its access line
    (``outcome`` or ``error_code``), else from the HTTP status."""
    outcome = context.get("outcome") or context.get("error_code")
    if isinstance(outcome, str):
        return outcome
    return _STATUS_OUTCOMES.get(status, f"http_{status}")


@functools.cache
def _child(metric: Counter, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once per label set. ``labels()`` checks its
    arguments and takes a lock on every call; the metrics counted for every callback keep their
    children here. Label sets are few: providers, outcomes and event types are closed sets."""
    return metric.labels(*labels)


def count_callback(provider: str, outcome: str) -> None:
    """One callback answered. ``provider`` comes from the URL: unknown names count as
    ``unknown`` so that nobody can create series by posting to made-up paths."""
    if provider not in PROVIDERS:
        provider = "unknown"
    _child(CALLBACKS, provider, outcome).inc()
    RECENT_CALLBACKS.add(f"{provider}:{outcome}")


def count_event(event_type: str, outcome: str) -> None:
    """One update stored (from a callback or a watch's poll): ``accepted`` is emitted,
    ``superseded`` kept but never delivered; a duplicate is no new event."""
    if outcome not in ("accepted", "superseded") or event_type not in _KNOWN_TYPES:
        return
    _child(EVENTS, event_type, "emitted" if outcome == "accepted" else "superseded").inc()


def count_unknown_status(provider: str) -> None:
    """An update (callback or poll) whose status word the relay does not know. Rare, so counted
    directly; ``provider`` is a known provider's name (never raw input)."""
    UNKNOWN_STATUSES.labels(provider).inc()


def count_succeeded_without_outputs(provider: str) -> None:
    """A succeeded event emitted without any output (rare, so counted directly)."""
    SUCCEEDED_WITHOUT_OUTPUTS.labels(provider).inc()


def count_dropped_outputs(dropped: Mapping[str, int]) -> None:
    """Output URLs left out of one event, by reason (bounded: ``service.forwarding``'s)."""
    for reason, count in dropped.items():
        OUTPUTS_DROPPED.labels(reason).inc(count)


def count_attempt(delivery_status: str, latency_ms: float) -> None:
    """One delivery attempt recorded; ``delivery_status`` is the delivery's status after it."""
    _attempt_children[_ATTEMPT_OUTCOMES.get(delivery_status, "failed")].inc()
    ATTEMPT_SECONDS.observe(latency_ms / 1000)


#: Each subscriber's (attempts, failures) children, kept until it is removed (``_forget``).
_subscriber_children: dict[str, tuple[Any, Any]] = {}


def count_subscriber_attempt(subscriber_id: str, succeeded: bool) -> None:
    """One attempt to ``subscriber_id`` recorded. The label is the subscriber's id only, so
    series are as many as subscribers; those of removed ones go at the next scrape."""
    children = _subscriber_children.get(subscriber_id)
    if children is None:
        children = _subscriber_children[subscriber_id] = (
            SUBSCRIBER_ATTEMPTS.labels(subscriber_id),
            SUBSCRIBER_FAILURES.labels(subscriber_id),
        )
    children[0].inc()
    if not succeeded:
        children[1].inc()


def forget_subscribers(keep: Iterable[str]) -> None:
    """Drop the per-subscriber series of subscribers not in ``keep`` (removed ones)."""
    for subscriber_id in _subscriber_children.keys() - set(keep):
        del _subscriber_children[subscriber_id]
        for metric in (SUBSCRIBER_ATTEMPTS, SUBSCRIBER_FAILURES):
            with contextlib.suppress(KeyError):
                metric.remove(subscriber_id)


def count_poll(provider: str, outcome: str) -> None:
    """One poll of a watch carried out (a few a second at most: counted directly)."""
    WATCH_POLLS.labels(provider, outcome).inc()


def observe_budget_wait(provider: str, seconds: float) -> None:
    """A watch claimed ``seconds`` after it was due."""
    BUDGET_WAIT_SECONDS.labels(provider).observe(max(0.0, seconds))


def count_suspect(provider: str, reason: str) -> None:
    """A held callback the provider's API did not confirm."""
    SUSPECT_CALLBACKS.labels(provider, reason).inc()


def count_held(provider: str) -> None:
    """A terminal callback held for confirmation."""
    HELD_CALLBACKS.labels(provider).inc()


def count_decision(provider: str, decision: str) -> None:
    """An operator released or dismissed a suspect callback."""
    SUSPECT_DECISIONS.labels(provider, decision).inc()


def count_archive_run(result: str, seconds: float, outputs: list[dict[str, Any]]) -> None:
    """One archive job run (``service.archive_worker``) with what it did to each output."""
    _child(ARCHIVE_JOBS, result).inc()
    ARCHIVE_JOB_SECONDS.observe(seconds)
    for output in outputs:
        archived = output["state"] == "archived"
        _child(ARCHIVED_OUTPUTS, "archived" if archived else output["reason"]).inc()
        if archived:
            ARCHIVED_BYTES.inc(output["bytes"])


def count_hold_refused(provider: str, scope: str) -> None:
    """A callback refused rather than held (``scope``: url or total)."""
    HOLDS_REFUSED.labels(provider, scope).inc()


# -- scrape time ----------------------------------------------------------------------------


async def watches_active(relay: Relay) -> dict[str, int]:
    """Active provider watches by provider (``Store.active_watch_counts``)."""
    return await relay.store.active_watch_counts()


class _Snapshot(Collector):
    """Gauge families computed just before a scrape."""

    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self) -> Any:
        return iter(self.families)


async def scrape_gauges(relay: Relay) -> list[GaugeMetricFamily]:
    """The backlog gauges, read from the store now; ``relay_store_up`` says if that worked."""
    families = []
    up = 1.0
    try:
        counts = await relay.store.delivery_counts()
        watches = await watches_active(relay)
        waiting = await relay.store.waiting_callback_counts()
        archive = await relay.store.archive_counts(relay.clock())
        failing = await relay.store.consecutive_failures()
    except StorageUnavailable:
        up = 0.0
    else:
        families += [
            GaugeMetricFamily(
                "relay_deliveries_pending",
                "Deliveries waiting for an attempt or retrying.",
                value=counts["pending"],
            ),
            GaugeMetricFamily(
                "relay_deliveries_failed",
                "Deliveries that used up their retries and wait for an operator's replay.",
                value=counts["failed"],
            ),
            GaugeMetricFamily(
                "relay_oldest_pending_delivery_age_seconds",
                "Age of the oldest pending delivery (0 when none is pending).",
                value=counts["oldest_pending_seconds"] or 0.0,
            ),
        ]
        active = GaugeMetricFamily(
            "relay_watches_active",
            "Provider task watches active (polled until the task ends), by provider.",
            labels=["provider"],
        )
        for provider in sorted(PROVIDERS):
            active.add_metric([provider], watches.get(provider, 0))
        families.append(active)
        callbacks = GaugeMetricFamily(
            "relay_callbacks_waiting",
            "Callbacks waiting, by state: held (for their API's confirmation) or suspect (not "
            "confirmed, for an operator to release or dismiss).",
            labels=["state"],
        )
        for state in ("held", "suspect"):
            callbacks.add_metric([state], waiting[state])
        families.append(callbacks)
        families += [
            GaugeMetricFamily(
                "relay_archive_jobs_pending",
                "Archive jobs waiting or running (their events' deliveries wait for them).",
                value=archive["pending"],
            ),
            GaugeMetricFamily(
                "relay_archive_jobs_failed",
                "Archive jobs that ended with outputs not archived (see GET /v1/archive-jobs).",
                value=archive["failed"],
            ),
            GaugeMetricFamily(
                "relay_archive_oldest_pending_age_seconds",
                "Age of the oldest pending archive job (0 when none is pending).",
                value=archive["oldest_pending_seconds"] or 0.0,
            ),
        ]
        streaks = GaugeMetricFamily(
            "relay_subscriber_consecutive_failures",
            "Failed delivery attempts since the subscriber's last successful one, by "
            "subscriber id (0: its last attempt succeeded, or it has had none).",
            labels=["subscriber"],
        )
        for subscriber_id, count in sorted(failing.items()):
            streaks.add_metric([subscriber_id], count)
        families.append(streaks)
        forget_subscribers(failing)
    families.append(
        GaugeMetricFamily(
            "relay_store_up", "1 when the store answered the scrape-time queries.", value=up
        )
    )
    return families


def exposition(gauges: list[GaugeMetricFamily]) -> bytes:
    """The text format: this process's (or every process's) counters, then ``gauges``."""
    if MULTIPROCESS:
        counters = CollectorRegistry()
        MultiProcessCollector(counters)  # type: ignore[no-untyped-call]  # (not annotated)
    else:
        counters = REGISTRY
    snapshot = CollectorRegistry(auto_describe=False)
    snapshot.register(_Snapshot(gauges))
    return generate_latest(counters) + generate_latest(snapshot)


async def metrics_endpoint(request: Request) -> Response:
    """``GET /metrics``: a bearer token of scope ``read`` (or above) is required unless
    ``RELAY_METRICS_PUBLIC=true``."""
    relay: Relay = request.app.state.relay
    if not relay.settings.metrics_public:
        await require_scope(request, "read")
    body = exposition(await scrape_gauges(relay))
    return Response(body, media_type=CONTENT_TYPE_LATEST)

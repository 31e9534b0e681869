"""The relay's core, free of HTTP: secrets, callback URLs and the intake pipeline.

``Relay.start(settings)`` opens the store and fills in generated secrets. The HTTP layer
(``receiver``, ``admin``), the CLI and the watch service all work through one ``Relay``.

The intake pipeline: ``receive`` takes a callback the endpoint authenticated and parsed, and
decides what becomes of it (``service.intake``): held for confirmation with the provider's API
(``service.holds``), or stored by ``accept`` as accepted, a duplicate or superseded. ``accept``
is also where a watch's poll, a released suspect callback and a relay-made failure enter.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from starlette.datastructures import Secret

from service import ids, metrics
from service.archive_store import ArchiveStore
from service.body_budget import BodyBudget
from service.clock import Clock, rfc3339, system_clock
from service.errors import Conflict, InvalidInput
from service.events import Normalized, build_cloudevent, dumps, verbatim_json
from service.forwarding import MAX_RAW_DEPTH, forwardable_outputs, raw_too_deep
from service.holds import confirms, hold_callback
from service.intake import Accepted, Duplicate, Held, Received, Superseded
from service.intake_pace import IntakePace
from service.providers import get_provider
from service.settings import Settings
from service.store import metadata_index, open_store
from service.store.base import IncomingEvent, IngestResult, Store
from service.tokens import DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS, CallbackTokens
from service.tracing import HEADERS_ONLY, TraceContext, Tracer

log = structlog.get_logger("service.relay")

#: How many callback URLs' metadata (and bindings) stay in memory: neither changes once set.
METADATA_CACHE_SIZE = 10_000


class UrlBoundToOtherTask(Conflict):
    """This callback URL was used for another task; a URL serves one task unless minted
    with "reusable": true."""

    code = "url_bound_to_other_task"


@dataclass
class Relay:
    settings: Settings
    store: Store
    tokens: CallbackTokens
    #: The admin token if this start generated it (``relay admin-token`` shows it again).
    generated_admin_token: str | None = None
    #: Called after an accepted event created deliveries (wakes the delivery worker).
    on_deliveries: Callable[[], None] = lambda: None
    #: Called after a watch became due now (wakes the watch worker, ``service.watch_worker``).
    on_watch_due: Callable[[], None] = lambda: None
    #: Called after an accepted event got an archive job (wakes ``service.archive_worker``).
    on_archive: Callable[[], None] = lambda: None
    #: Where outputs are archived (``RELAY_ARCHIVE_URL``), or None: not archived.
    archive: ArchiveStore | None = None
    #: Where the relay reads the time (``service.clock``); unit tests pass a fake one.
    clock: Clock = system_clock
    #: Starts the spans of callbacks, events and attempts (``service.tracing``): ids only,
    #: unless ``relay serve`` or ``relay worker`` configured OpenTelemetry.
    tracer: Tracer = HEADERS_ONLY
    _metadata: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    #: url_id -> the task it is bound to, or None for a reusable (never bound) URL.
    _bindings: OrderedDict[str, str | None] = field(default_factory=OrderedDict)
    #: Bytes of request bodies held at once (``RELAY_BODY_MEMORY``; ``service.body_budget``).
    body_budget: BodyBudget = field(init=False)
    #: Callbacks accepted lately (``service.intake_pace``): archiving slows down while busy.
    intake_pace: IntakePace = field(init=False)

    def __post_init__(self) -> None:
        self.body_budget = BodyBudget(self.settings.body_memory)
        self.intake_pace = IntakePace(self.clock)

    @classmethod
    async def start(
        cls, settings: Settings, store: Store | None = None, clock: Clock = system_clock
    ) -> Relay:
        """Open the store and resolve the secrets that were not configured."""
        store = store or open_store(
            settings.database_url, migrate=settings.migrate_on_start, clock=clock
        )
        await store.open()
        keys = [str(key) for key in settings.secret_keys]
        if not keys:
            keys = [await store.get_or_create_meta("secret_key", secrets.token_urlsafe(32))]
        generated = None
        admin = settings.admin_token
        if admin is None:
            proposal = secrets.token_urlsafe(32)
            value = await store.get_or_create_meta("admin_token", proposal)
            generated = value if value == proposal else None
            admin = Secret(value)
        settings = settings.with_changes(
            secret_keys=tuple(Secret(k) for k in keys), admin_token=admin
        )
        archive = (
            ArchiveStore(settings.archive, settings.public_url, keys)
            if settings.archive is not None
            else None
        )
        return cls(
            settings,
            store,
            CallbackTokens(keys),
            generated_admin_token=generated,
            clock=clock,
            archive=archive,
        )

    async def close(self) -> None:
        await self.store.close()
        await self.tracer.aclose()

    # -- callback URLs --------------------------------------------------------------------------

    async def mint_callback_url(
        self,
        provider: str,
        metadata: dict[str, Any] | None = None,
        ttl_seconds: int | None = None,
        reusable: bool = False,
    ) -> dict[str, Any]:
        """Mint ``<public_url>/callbacks/<provider>/<token>``; its metadata is kept in the store.

        The URL serves the first task a callback through it names (``bind_url``), unless
        ``reusable``: then any task's callbacks may come through it.
        """
        if not get_provider(provider).sends_callbacks:
            raise InvalidInput(
                f"{provider} sends no callbacks; register a watch (POST /v1/watches) instead.",
                code="no_callbacks",
            )
        ttl = DEFAULT_TTL_SECONDS if ttl_seconds is None else ttl_seconds
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= MAX_TTL_SECONDS:
            raise InvalidInput(
                f"ttl_seconds must be an integer from 1 to {MAX_TTL_SECONDS}.", code="invalid_ttl"
            )
        if not isinstance(reusable, bool):
            raise InvalidInput("reusable must be true or false.", code="invalid_reusable")
        metadata = metadata or {}
        if not isinstance(metadata, dict):
            raise InvalidInput("metadata must be a JSON object.", code="invalid_metadata")
        if len(dumps(metadata)) > 16_384:
            raise InvalidInput("metadata must be at most 16 KiB of JSON.", code="invalid_metadata")
        now = self.clock()
        expires_at = int(now) + ttl
        url_id = self.tokens.new_url_id()
        await self.store.create_callback_url(
            url_id, provider, metadata, now, expires_at, reusable=reusable
        )
        token = self.tokens.mint(provider, url_id, expires_at)
        return {
            "url": f"{self.settings.public_url}/callbacks/{provider}/{token}",
            "provider": provider,
            "metadata": metadata,
            "reusable": reusable,
            "expires_at": rfc3339(expires_at),
        }

    async def bind_url(self, url_id: str, task_id: str) -> None:
        """Check that a callback through ``url_id`` may name ``task_id``, binding the URL to it
        on first use; raises ``UrlBoundToOtherTask``.

        Why: a URL's metadata says whose the results are, so a URL handed out for one job must
        not carry another job's results. A binding never changes, so it is remembered here and
        the store is asked once per URL (the store binds atomically, replicas racing included).
        """
        if url_id in self._bindings:
            bound = self._bindings[url_id]
        else:
            bound = await self.store.bind_callback_url(url_id, task_id)
            self._bindings[url_id] = bound
            if len(self._bindings) > METADATA_CACHE_SIZE:
                self._bindings.popitem(last=False)
        if bound is not None and bound != task_id:
            raise UrlBoundToOtherTask()

    async def metadata_for(self, url_id: str) -> dict[str, Any]:
        cached = self._metadata.get(url_id)
        if cached is not None:
            return cached
        metadata = await self.store.get_callback_metadata(url_id) or {}
        self._metadata[url_id] = metadata
        if len(self._metadata) > METADATA_CACHE_SIZE:
            self._metadata.popitem(last=False)
        return metadata

    # -- intake ---------------------------------------------------------------------------------

    async def is_superseded(self, event_id: str) -> bool:
        """Whether a stored event was kept as superseded (never emitted)."""
        event = await self.store.get_event(event_id)
        return event is not None and event.get("relay", {}).get("state") == "superseded"

    async def receive(
        self,
        provider: str,
        normalized: Normalized,
        *,
        payload: Any,
        body: bytes,
        url_id: str | None,
        trace: TraceContext | None = None,
    ) -> Received:
        """Decide what becomes of one authenticated callback (``payload``: ``body`` parsed,
        ``normalized`` by its provider; ``url_id``: the callback URL it came through, None on
        a tokenless route; ``trace``: the callback's span, stored with its event) and make it
        durable.

        Raises ``UrlBoundToOtherTask`` (409), ``TooManyHeldForUrl`` (429), ``HoldsFull``
        (503) or ``StorageUnavailable`` (503); nothing is stored then.
        """
        if normalized.unknown_status:
            log.warning(
                "unknown_status",
                provider=provider,
                task_id=normalized.task_id,
                raw_status=normalized.raw_status,
            )
        confirmed = confirms(self.settings, provider)
        if confirmed and normalized.outputs and not normalized.terminal:
            # Unconfirmed progress is forwarded at once, but what subscribers would fetch is
            # not: only the confirmed terminal event carries outputs (anyone holding a URL
            # could forge a "processing" with links of their choosing).
            normalized = dataclasses.replace(normalized, outputs=())
        if url_id is not None:
            await self.bind_url(url_id, normalized.task_id)
        if confirmed and normalized.terminal:
            held = await hold_callback(
                self.store, self.settings, provider, normalized, body, url_id, self.clock()
            )
            if held is not None:
                if not held.conflict_url_ids:  # (a conflict waits for an operator instead)
                    self.on_watch_due()
                return Held(held.id)
            # None: the task already has its terminal event; ingested as usual below.
        result = await self.accept(
            provider,
            normalized,
            raw=payload,
            raw_body=body,
            url_id=url_id,
            raw_is_body=True,
            trace=trace,
        )
        if result.outcome == "accepted":
            return Accepted(result.event_id)
        if result.outcome == "superseded":
            return Superseded(result.event_id)
        # A retry of an update that was stored as superseded is still one (a rare read).
        return Duplicate(result.event_id, superseded=await self.is_superseded(result.event_id))

    async def accept(
        self,
        provider: str,
        normalized: Normalized,
        *,
        raw: Any,
        raw_body: bytes,
        url_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        raw_is_body: bool = False,
        trace: TraceContext | None = None,
    ) -> IngestResult:
        """Store one normalized update durably (dedup, regression, fan-out in one transaction).

        The event carries the callback URL's metadata, updated with ``metadata`` (a watch's).
        ``raw_is_body``: ``raw_body`` is strict JSON whose parse is ``raw`` (a callback body),
        so ``data.raw`` is spliced from it verbatim. ``trace``: the span the event is created
        in (its callback's); without one (a poll, a relay-made failure) a new trace starts here.
        """
        # A new trace's span ends with the commit; a store that fails leaves it unrecorded
        # (nothing was stored, so nothing is traced).
        span = self.tracer.event(provider, normalized.task_id) if trace is None else None
        if span is not None:
            trace = span.context
        now = self.clock()
        event_id = ids.new_id("evt")
        url_metadata = await self.metadata_for(url_id) if url_id else {}
        metadata = {**url_metadata, **metadata} if metadata else url_metadata
        outputs, dropped = forwardable_outputs(normalized.outputs, self.settings.target_allowlist)
        if dropped:
            log.warning(
                "outputs_dropped",
                provider=provider,
                task_id=normalized.task_id,
                event_id=event_id,
                dropped=dict(dropped),
            )
            metrics.count_dropped_outputs(dropped)
            normalized = dataclasses.replace(normalized, outputs=outputs)
        raw_omitted = None
        if raw_too_deep(raw, raw_body if raw_is_body else None):
            raw_omitted = (
                f"the provider's payload nests deeper than {MAX_RAW_DEPTH} levels:"
                f" GET /v1/events/{event_id}/raw returns it"
            )
            log.warning("raw_omitted", provider=provider, task_id=normalized.task_id)
        cloudevent = build_cloudevent(
            event_id=event_id,
            provider=provider,
            normalized=normalized,
            received_at=now,
            metadata=metadata,
            raw=None if raw_omitted else verbatim_json(raw_body) if raw_is_body else raw,
            raw_omitted=raw_omitted,
            trace=trace,
        )
        archive_deadline = self._archive_deadline(provider, normalized, now)
        result = await self.store.ingest(
            IncomingEvent(
                event_id=event_id,
                provider=provider,
                task_id=normalized.task_id,
                status=normalized.status,
                progress=normalized.progress,
                event_type=normalized.event_type,
                terminal=normalized.terminal,
                dedup_key=normalized.dedup_key(provider),
                received_at=now,
                url_id=url_id,
                body=dumps(cloudevent),
                raw_body=raw_body,
                archive_deadline=archive_deadline,
                metadata=metadata_index.indexed(metadata) if metadata else {},
            )
        )
        if span is not None:
            span.set(event_id=result.event_id, outcome=result.outcome)
            span.end(None)
        metrics.count_event(normalized.event_type, result.outcome)
        self.intake_pace.accepted()
        # Emitted, but an operator should know: the relay did not find the result's files.
        without_outputs = (
            normalized.status == "succeeded"
            and not normalized.outputs
            and result.outcome == "accepted"
        )
        if without_outputs:
            log.warning(
                "succeeded_without_outputs",
                provider=provider,
                task_id=normalized.task_id,
                event_id=result.event_id,
            )
            metrics.count_succeeded_without_outputs(provider)
        if normalized.unknown_status:  # (logged where it was read: receive, the watch service)
            metrics.count_unknown_status(provider)
        if result.deliveries:
            self.on_deliveries()
        if result.outcome == "accepted" and archive_deadline is not None:
            self.on_archive()
        return result

    def _archive_deadline(self, provider: str, normalized: Normalized, now: float) -> float | None:
        """When archiving this update's outputs must end, or None if they are not archived:
        only a succeeded update with outputs, of a provider the archive takes."""
        archive = self.settings.archive
        wanted = (
            archive is not None
            and normalized.status == "succeeded"
            and bool(normalized.outputs)
            and archive.wants(provider)
        )
        return now + archive.deadline if wanted and archive is not None else None

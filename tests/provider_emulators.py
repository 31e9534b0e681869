"""The providers' status APIs, emulated on loopback from their documentation.

One uvicorn server answers all four status endpoints, each in its provider's own shape:

    GET /v1/tasks/{id}               Evolink  (Bearer)     pending, processing, completed, failed
    GET /v2/jobs/{id}                Apiframe (X-API-Key)  QUEUED, PROCESSING, COMPLETED, FAILED
    GET /api/v1/generations/{id}     Rivya    (Bearer)     queued, processing, succeeded, failed
    GET /v1/reve-image/status/{id}   Reve Art (Bearer)     pending, completed (failed: assumed)

A task moves along a timeline (seconds after it was added -> state) as real tasks do; faults
can be queued per task: 429 with ``Retry-After``, 5xx, or hanging past the relay's timeout, or
any answer of one's own (a redirect, a gzip bomb); ``always`` answers every request with one.
Every request is recorded (when, which task, what was answered). Unknown tasks are 404, and
Evolink answers 400 to an id that is not ``task-unified-...``, as its API does. A test may
close the gate (``with emulator.gate_closed(): ...``): requests then arrive but are answered
only once it opens, so what the relay does before an answer does not race the test's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.conftest import ServerThread, bound_socket

#: Every provider's words for the emulator's four states.
WORDS = {
    "evolink": {
        "queued": "pending",
        "running": "processing",
        "succeeded": "completed",
        "failed": "failed",
    },
    "apiframe": {
        "queued": "QUEUED",
        "running": "PROCESSING",
        "succeeded": "COMPLETED",
        "failed": "FAILED",
    },
    "rivya": {
        "queued": "queued",
        "running": "processing",
        "succeeded": "succeeded",
        "failed": "failed",
    },
    # Reve Art documents only "pending" and "completed"; a running task is still "pending".
    "reve-art": {
        "queued": "pending",
        "running": "pending",
        "succeeded": "completed",
        "failed": "failed",
    },
}
PROGRESS = {"queued": 0, "running": 50, "succeeded": 100, "failed": 0}
DEFAULT_TIMELINE = ((0.0, "queued"), (0.3, "running"), (0.8, "succeeded"))


def _iso(moment: float) -> str:
    return (
        datetime.fromtimestamp(moment, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


@dataclass
class Fault:
    """One scripted answer: an HTTP status (with ``Retry-After``) or ``hang`` seconds; with
    ``content`` or ``headers``, exactly that body and those headers."""

    status: int = 503
    retry_after: str | None = None
    hang: float = 0.0
    content: bytes | None = None
    headers: dict[str, str] | None = None


@dataclass
class EmulatedTask:
    provider: str
    task_id: str
    timeline: Sequence[tuple[float, str]]
    created: float
    output_url: str
    error: dict[str, str] | None = None
    faults: list[Fault] = field(default_factory=list)
    #: Raw JSON text spliced into every answer as ``"extra": ...`` (hostile-answer tests).
    extra: str | None = None
    #: The answer to every request once the queued faults are used up.
    always: Fault | None = None
    #: The provider's word for a state, where a test wants another than the documented one.
    words: dict[str, str] = field(default_factory=dict)
    #: Apiframe's ``result`` once succeeded, where a test wants another of its shapes.
    result: Any = None
    #: While unset, the task's requests wait (``add_task(gated=True)``): a test sees the relay
    #: before any poll is answered, then ``ProviderEmulator.open`` starts the timeline.
    gate: threading.Event | None = None

    def word(self, state: str) -> str:
        return self.words.get(state) or WORDS[self.provider][state]

    def state(self, now: float) -> str:
        current = self.timeline[0][1]
        for offset, state in self.timeline:
            if now - self.created >= offset:
                current = state
        return current


@dataclass
class Hit:
    at: float
    provider: str
    task_id: str
    status_code: int
    state: str | None


@dataclass
class ProviderEmulator:
    keys: dict[str, str] = field(
        default_factory=lambda: {
            "evolink": "evk-test",
            "apiframe": "afk_test",
            "rivya": "rvya_sk_test",
            "reve-art": "reve-test",
        }
    )
    tasks: dict[tuple[str, str], EmulatedTask] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    #: Requests as they arrive (provider, task id), before any answer: in flight until a hit.
    arrivals: list[tuple[str, str]] = field(default_factory=list)
    arrival_times: dict[str, list[float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: ServerThread | None = None
    #: An account's rate limit, by provider: (requests, seconds). A request beyond ``requests``
    #: in the last ``seconds`` (a sliding window, the strictest reading) is answered 429 with
    #: Retry-After, and counts too, as a provider counts it.
    rate_limits: dict[str, tuple[int, float]] = field(default_factory=dict)
    #: Set while requests are answered; cleared by ``gate_closed`` to hold every answer back.
    gate: threading.Event = field(default_factory=lambda: _opened(threading.Event()))

    @property
    def url(self) -> str:
        assert self.thread is not None
        return f"http://127.0.0.1:{self.thread.port}"

    def relay_settings(self, **overrides: Any) -> dict[str, Any]:
        """Settings pointing a relay at this emulator, with its API keys, and request budgets
        no test of something else runs into (a 429 without Retry-After pauses 0.01 s)."""
        from starlette.datastructures import Secret

        settings: dict[str, Any] = {"api_rates": dict.fromkeys(self.keys, 6000)}
        for provider, key in self.keys.items():
            prefix = provider.replace("-", "_")
            settings[f"{prefix}_base_url"] = self.url
            settings[f"{prefix}_api_key"] = Secret(key)
        settings.update(overrides)
        return settings

    def add_task(
        self,
        provider: str,
        task_id: str | None = None,
        *,
        timeline: Sequence[tuple[float, str]] = DEFAULT_TIMELINE,
        error: dict[str, str] | None = None,
        faults: Sequence[Fault] = (),
        extra: str | None = None,
        always: Fault | None = None,
        words: dict[str, str] | None = None,
        result: Any = None,
        gated: bool = False,
    ) -> str:
        if task_id is None:
            stamp = f"{time.time_ns() % 10**12:012d}"
            task_id = {
                "evolink": f"task-unified-{int(time.time())}-{stamp[-8:]}",
                "apiframe": f"a1b2c3d4-e5f6-7890-abcd-{stamp}",
                "rivya": f"task_{stamp}",
                "reve-art": f"img_{stamp}",
            }[provider]
        with self.lock:
            self.tasks[(provider, task_id)] = EmulatedTask(
                provider,
                task_id,
                timeline,
                time.time(),
                f"https://cdn.{provider}.example/{task_id}.png",
                error,
                list(faults),
                extra,
                always,
                dict(words or {}),
                result,
                threading.Event() if gated else None,
            )
        return task_id

    def open(self, provider: str, task_id: str) -> None:
        """Let a gated task's requests through; its timeline starts now."""
        with self.lock:
            task = self.tasks[(provider, task_id)]
            task.created = time.time()
        assert task.gate is not None, "the task was not added with gated=True"
        task.gate.set()

    def hits_for(self, task_id: str) -> list[Hit]:
        with self.lock:
            return [hit for hit in self.hits if hit.task_id == task_id]

    @contextlib.contextmanager
    def gate_closed(self) -> Iterator[None]:
        """Hold every answer back until the block ends (opened again even if it fails, so
        that no relay waits for its poll timeout when it stops)."""
        self.gate.clear()
        try:
            yield
        finally:
            self.gate.set()

    async def _through_gate(self) -> None:
        # A threading.Event looked at every 10 ms: the test's thread opens it, and has no
        # handle on this server's loop to set an asyncio.Event through.
        while not self.gate.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    # -- the HTTP side ----------------------------------------------------------------------

    def _authorized(self, provider: str, request: Request) -> bool:
        key = self.keys[provider]
        if provider == "apiframe":
            return request.headers.get("x-api-key") == key
        return request.headers.get("authorization") == f"Bearer {key}"

    async def _answer(self, provider: str, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        with self.lock:
            self.arrivals.append((provider, task_id))
            gated = self.tasks.get((provider, task_id))
        if gated is not None and gated.gate is not None:
            await asyncio.to_thread(gated.gate.wait, 30)
        now = time.time()
        with self.lock:
            limited = self._over_limit(provider, now)
            task = self.tasks.get((provider, task_id))
            fault = task.faults.pop(0) if task is not None and task.faults else None
            if fault is None and task is not None:
                fault = task.always
        await self._through_gate()
        if limited is not None:
            fault = Fault(429, retry_after=limited)
        if not self._authorized(provider, request):
            return self._hit(provider, task_id, JSONResponse({"error": "unauthorized"}, 401))
        if fault is not None:
            if fault.hang:
                await asyncio.sleep(fault.hang)
            if fault.content is not None or fault.headers is not None:
                answer = Response(fault.content or b"", fault.status, fault.headers)
                return self._hit(provider, task_id, answer)
            headers = {"retry-after": fault.retry_after} if fault.retry_after else None
            body = {"error": {"code": "rate_limited" if fault.status == 429 else "unavailable"}}
            return self._hit(provider, task_id, JSONResponse(body, fault.status, headers))
        if provider == "evolink" and not task_id.startswith("task-unified-"):
            body = {"error": "Invalid task ID format, must start with 'task-unified-'"}
            return self._hit(provider, task_id, JSONResponse(body, 400))
        if task is None:
            return self._hit(provider, task_id, JSONResponse({"error": "not found"}, 404))
        state = task.state(now)
        document = RENDER[provider](task, state, now)
        if task.extra is None:
            return self._hit(provider, task_id, JSONResponse(document), state)
        text = json.dumps(document)[:-1] + f', "extra": {task.extra}}}'
        return self._hit(provider, task_id, Response(text, media_type="application/json"), state)

    def _over_limit(self, provider: str, now: float) -> str | None:
        """Retry-After for a request over ``provider``'s rate limit, else None (with the lock
        held; ``arrival_times`` is when each request arrived, answered or not)."""
        times = self.arrival_times.setdefault(provider, [])
        times.append(now)
        if provider not in self.rate_limits:
            return None
        requests, seconds = self.rate_limits[provider]
        recent = [at for at in times if at > now - seconds]
        if len(recent) <= requests:
            return None
        return str(max(1, round(recent[-requests - 1] + seconds - now + 0.5)))

    def window_counts(self, provider: str, seconds: float) -> list[int]:
        """For each request to ``provider``: how many arrived in the ``seconds`` up to it."""
        with self.lock:
            times = sorted(self.arrival_times.get(provider, []))
        return [sum(1 for at in times[: n + 1] if at > t - seconds) for n, t in enumerate(times)]

    def _hit(
        self, provider: str, task_id: str, response: Response, state: str | None = None
    ) -> Response:
        with self.lock:
            self.hits.append(Hit(time.time(), provider, task_id, response.status_code, state))
        return response

    def start(self) -> ProviderEmulator:
        def route(path: str, provider: str) -> Route:
            async def endpoint(request: Request) -> Response:
                return await self._answer(provider, request)

            return Route(path, endpoint, methods=["GET"])

        app = Starlette(
            routes=[
                route("/v1/tasks/{task_id}", "evolink"),
                route("/v2/jobs/{task_id}", "apiframe"),
                route("/api/v1/generations/{task_id}", "rivya"),
                route("/v1/reve-image/status/{task_id}", "reve-art"),
            ]
        )
        self.thread = ServerThread(app, bound_socket()).start()
        return self

    def stop(self) -> None:
        if self.thread is not None:
            self.thread.stop()


def _opened(gate: threading.Event) -> threading.Event:
    gate.set()
    return gate


# -- each provider's documented answer --------------------------------------------------------


def _evolink(task: EmulatedTask, state: str, now: float) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": task.task_id,
        "object": "image.generation.task",
        "created": int(task.created),
        "model": "gemini-3-pro-image-preview",
        "status": task.word(state),
        "progress": PROGRESS[state],
        "task_info": {"can_cancel": state in ("queued", "running"), "estimated_time": 45},
        "type": "image",
    }
    if state == "succeeded":
        document["results"] = [task.output_url]
    if state == "failed":
        document["error"] = task.error or {
            "code": "generation_failed_no_content",
            "message": "The model returned no content.",
        }
    return document


def _apiframe(task: EmulatedTask, state: str, now: float) -> dict[str, Any]:
    done = state in ("succeeded", "failed")
    return {
        "id": task.task_id,
        "status": task.word(state),
        "model": "reve-create",
        "progress": PROGRESS[state],
        "result": (task.result or {"images": [task.output_url]}) if state == "succeeded" else None,
        "error": (task.error or {}).get("message", "Provider returned an error")
        if state == "failed"
        else None,
        "creditCost": 1 if state == "succeeded" else 0,
        "webhookStatus": None,
        "createdAt": _iso(task.created),
        "completedAt": _iso(now) if done else None,
    }


def _rivya(task: EmulatedTask, state: str, now: float) -> dict[str, Any]:
    return {
        "id": task.task_id,
        "status": task.word(state),
        "model": "qwen-image",
        "reserved_credits": 4,
        "final_credits": 4 if state == "succeeded" else 0,
        "created_at": _iso(task.created),
        "updated_at": _iso(now),
        "result": {"primary_url": task.output_url, "urls": [task.output_url]}
        if state == "succeeded"
        else None,
        "error": (task.error or {"code": "generation_failed", "message": "The generation failed."})
        if state == "failed"
        else None,
    }


def _reve_art(task: EmulatedTask, state: str, now: float) -> dict[str, Any]:
    document: dict[str, Any] = {"id": task.task_id, "status": task.word(state)}
    if state == "succeeded":
        document["url"] = task.output_url
        document["metadata"] = {
            "prompt": "a beautiful sunset over mountains",
            "width": 1024,
            "height": 1024,
            "model": "text2image_v1",
            "created_at": _iso(task.created),
        }
    if state == "failed":
        document["error"] = task.error or {"code": "failed", "message": "Generation failed."}
    return document


RENDER: dict[str, Callable[[EmulatedTask, str, float], dict[str, Any]]] = {
    "evolink": _evolink,
    "apiframe": _apiframe,
    "rivya": _rivya,
    "reve-art": _reve_art,
}

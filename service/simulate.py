"""``relay simulate``: send a callback exactly as a provider would, without spending credits.

The body is the provider's documented payload, the headers its documented headers, signed
where the provider signs (Apiframe v2 with ``RELAY_APIFRAME_API_KEY``; Rivya with
``RELAY_RIVYA_WEBHOOK_SECRET``), and a non-2xx answer is retried on the provider's schedule:

    evolink    3 retries after 1 s, 2 s, 4 s (then the result is lost); 10 s per attempt
    apiframe   retries not documented: one attempt (``--retry-delays`` to try others)
    rivya      retries not documented: one attempt; signed like Standard Webhooks

Each attempt and the final outcome are printed. Reve Art sends no callbacks: watch its tasks.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import httpx

from service import __version__
from service.clock import Clock, rfc3339, system_clock
from service.errors import InvalidInput
from service.logs import mask_callback_path
from service.providers import get_provider
from service.providers.apiframe import apiframe_signature
from service.settings import Settings
from service.signing import new_secret, sign

#: The providers' own retry schedules, as far as they are documented.
RETRY_DELAYS: dict[str, tuple[float, ...]] = {
    "evolink": (1.0, 2.0, 4.0),
    "apiframe": (),
    "rivya": (),
}
TIMEOUT_SECONDS = 10.0
STATUSES = ("completed", "succeeded", "failed", "cancelled", "canceled", "processing")
_STATUS_WORDS = {"succeeded": "completed", "canceled": "cancelled"}


@dataclass(frozen=True)
class SimulatedCallback:
    provider: str
    task_id: str
    status: str
    payload: dict[str, Any]
    #: Builds the headers of one attempt (signatures carry the attempt's timestamp).
    headers: Callable[[bytes], dict[str, str]]
    notes: tuple[str, ...] = ()

    @property
    def body(self) -> bytes:
        return json.dumps(self.payload, separators=(",", ":")).encode()


def _iso(now: float) -> str:
    return rfc3339(now)


def default_task_id(provider: str, now: float) -> str:
    """A task id shaped like the provider's own."""
    if provider == "evolink":
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
        suffix = "".join(secrets.choice(alphabet) for _ in range(8))
        return f"task-unified-{int(now)}-{suffix}"
    if provider == "apiframe":
        return str(uuid.uuid4())
    return f"task_{secrets.token_hex(8)}"


def _base_headers(provider: str) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": f"callback-relay-simulator/{__version__} ({provider})",
    }


def _evolink(task_id: str, status: str, now: float) -> dict[str, Any]:
    task: dict[str, Any] = {
        "id": task_id,
        "object": "image.generation.task",
        "created": int(now) - 30,
        "model": "gemini-3-pro-image-preview",
        "type": "image",
        "task_info": {"can_cancel": False},
    }
    if status == "completed":
        task.update(
            status="completed",
            progress=100,
            results=[f"https://media.evolink.ai/simulated/{task_id}.png"],
        )
    elif status == "processing":
        task.update(status="processing", progress=50, task_info={"can_cancel": True})
    else:
        code, message = (
            ("request_cancelled", "The request was cancelled.")
            if status == "cancelled"
            else ("content_policy_violation", "Content policy violation.")
        )
        task.update(status="failed", progress=0, error={"code": code, "message": message})
    return task


def _apiframe(task_id: str, status: str, now: float) -> dict[str, Any]:
    if status == "completed":
        return {
            "event": "completed",
            "jobId": task_id,
            "status": "COMPLETED",
            "progress": 100,
            "result": f"https://cdn.apiframe.ai/results/{task_id[:8]}.png",
            "model": "midjourney",
            "creditCost": 10,
            "completedAt": _iso(now),
        }
    if status == "processing":
        return {
            "event": "progress",
            "jobId": task_id,
            "status": "PROCESSING",
            "progress": 45,
            "model": "midjourney",
        }
    return {
        "event": "failed",
        "jobId": task_id,
        "status": "CANCELLED" if status == "cancelled" else "FAILED",
        "error": "Provider returned an error: content policy violation",
        "model": "midjourney",
    }


def _rivya(task_id: str, status: str, now: float) -> dict[str, Any]:
    if status not in ("completed", "failed"):
        raise InvalidInput(
            "Rivya sends webhooks for generation.succeeded and generation.failed only.",
            code="invalid_status",
        )
    created, updated = _iso(now - 60), _iso(now)
    generation: dict[str, Any] = {
        "id": task_id,
        "status": "succeeded" if status == "completed" else "failed",
        "model": "qwen-image",
        "reserved_credits": 4,
        "final_credits": 4 if status == "completed" else 0,
        "created_at": created,
        "updated_at": updated,
        "result": None,
        "error": None,
    }
    if status == "completed":
        url = f"https://media.rivya.ai/simulated/{task_id}.png"
        generation["result"] = {"primary_url": url, "urls": [url]}
    else:
        generation["error"] = {"code": "generation_failed", "message": "The generation failed."}
    return {"type": f"generation.{generation['status']}", "data": generation}


#: What the providers accept as a callback URL, where they document it.
_HTTPS_ONLY = {"evolink": "Evolink", "rivya": "Rivya"}
MAX_EVOLINK_URL = 2048


def url_notes(provider: str, url: str) -> list[str]:
    """Why the real provider would refuse ``url``, if it would (the simulator sends anyway)."""
    notes: list[str] = []
    name = _HTTPS_ONLY.get(provider)
    if name is None:
        return notes
    parsed = httpx.URL(url)
    if parsed.scheme != "https":
        notes.append(f"{name} only calls https:// URLs; it would refuse this one")
    host = parsed.host
    private = host == "localhost" or host.endswith(".localhost")
    try:
        private = private or not ipaddress.ip_address(host).is_global
    except ValueError:
        pass
    if private:
        notes.append(f"{name} refuses private and loopback addresses; it would refuse {host}")
    if provider == "evolink" and len(url) > MAX_EVOLINK_URL:
        notes.append(f"Evolink refuses callback URLs longer than {MAX_EVOLINK_URL} characters")
    return notes


def build_callback(
    provider: str,
    status: str,
    task_id: str | None,
    settings: Settings,
    clock: Clock = system_clock,
) -> SimulatedCallback:
    """The callback ``provider`` would send for a task in ``status``, dated ``clock()`` (a
    signed one signs each attempt at the time it is sent)."""
    now = clock()
    get_provider(provider)
    if provider not in RETRY_DELAYS:
        raise InvalidInput(
            f"{provider} sends no callbacks; register a watch for its tasks instead"
            f" (relay watch {provider} TASK_ID).",
            code="no_callbacks",
        )
    if status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}.", code="invalid_status")
    status = _STATUS_WORDS.get(status, status)
    task_id = task_id or default_task_id(provider, now)
    notes: list[str] = []
    base = _base_headers(provider)
    if provider == "evolink":
        payload = _evolink(task_id, status, now)

        def headers(body: bytes) -> dict[str, str]:
            return dict(base)  # Evolink signs nothing

    elif provider == "apiframe":
        payload = _apiframe(task_id, status, now)
        key = settings.apiframe_api_key
        if key is None:
            notes.append("RELAY_APIFRAME_API_KEY is not set: sent without X-Webhook-Signature")

        def headers(body: bytes) -> dict[str, str]:
            extra = {"x-webhook-event": payload["event"]}
            if key is not None:
                extra["x-webhook-signature"] = "sha256=" + apiframe_signature(str(key), body)
            return {**base, **extra}

    else:
        payload = _rivya(task_id, status, now)
        secret = settings.rivya_webhook_secret
        signing_secret = str(secret) if secret is not None else new_secret()
        if secret is None:
            notes.append(
                "RELAY_RIVYA_WEBHOOK_SECRET is not set: signed with a throwaway secret"
                " (a relay with a secret refuses it)"
            )
        msg_id = f"msg_{secrets.token_hex(12)}"

        def headers(body: bytes) -> dict[str, str]:
            timestamp = int(clock())
            return {
                **base,
                "webhook-id": msg_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign([signing_secret], msg_id, timestamp, body),
            }

    return SimulatedCallback(provider, task_id, status, payload, headers, tuple(notes))


def send(
    callback: SimulatedCallback,
    url: str,
    retry_delays: Sequence[float],
    *,
    timeout: float = TIMEOUT_SECONDS,
    out: TextIO,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """POST ``callback`` to ``url`` until a 2xx answer or the retries run out; print each."""
    body = callback.body
    shown = mask_callback_path(url)
    print(
        f"simulating {callback.provider}: task {callback.task_id}, status {callback.status}"
        f" -> {shown}",
        file=out,
    )
    for note in (*callback.notes, *url_notes(callback.provider, url)):
        print(f"note: {note}", file=out)
    attempts = 1 + len(retry_delays)
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        for number in range(1, attempts + 1):
            started = time.monotonic()
            try:
                response = client.post(url, content=body, headers=callback.headers(body))
            except httpx.TimeoutException:
                outcome, ok = f"no answer within {timeout:g} s", False
            except httpx.HTTPError as exc:
                outcome, ok = f"{type(exc).__name__}: {exc}".strip(), False
            else:
                ms = (time.monotonic() - started) * 1000
                excerpt = response.text[:200].strip()
                outcome = f"HTTP {response.status_code} in {ms:.0f} ms" + (
                    f": {excerpt}" if excerpt else ""
                )
                ok = 200 <= response.status_code < 300
            if ok:
                print(f"attempt {number}/{attempts}: {outcome}", file=out)
                print(f"delivered on attempt {number} of {attempts}", file=out)
                return True
            if number < attempts:
                delay = retry_delays[number - 1]
                print(f"attempt {number}/{attempts}: {outcome}; retrying in {delay:g} s", file=out)
                sleep(delay)
            else:
                print(f"attempt {number}/{attempts}: {outcome}", file=out)
    print(
        f"gave up after {attempts} attempt{'s' if attempts > 1 else ''}: {callback.provider}"
        " would not send this callback again",
        file=out,
    )
    return False

"""Clients of the providers' status APIs: what a task looks like now, asked over HTTP.

One ``StatusApi`` per provider says where its status endpoint is and how it authenticates:

    evolink    GET {RELAY_EVOLINK_BASE_URL}/v1/tasks/{id}              Authorization: Bearer
    apiframe   GET {RELAY_APIFRAME_BASE_URL}/v2/jobs/{id}              X-API-Key
    rivya      GET {RELAY_RIVYA_BASE_URL}/api/v1/generations/{id}      Authorization: Bearer
    reve-art   GET {RELAY_REVE_ART_BASE_URL}/v1/reve-image/status/{id} Authorization: Bearer

``StatusClients.fetch`` never raises for what the provider or the network does: every outcome
is a ``StatusAnswer`` -- ``ok`` (a JSON answer for the normalizers), ``retry`` (429 with its
``Retry-After``, 5xx, 401/403, timeouts, refused connections, an answer that is not JSON) or
``not_found`` (400, 404, 410, 422: the provider does not know this task).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx
import orjson
from starlette.datastructures import Secret

from service import __version__
from service.settings import Settings

#: Largest status answer read; anything longer is a failed poll.
MAX_ANSWER_BYTES = 1024 * 1024
#: Longest Retry-After honoured: a provider asking for more is asked again after this.
MAX_RETRY_AFTER = 3600.0
NOT_FOUND_CODES = frozenset({400, 404, 410, 422})


@dataclass(frozen=True)
class StatusApi:
    """Where one provider's status endpoint is and how to authenticate to it."""

    provider: str
    base_url: str
    path: str  # with "{id}"
    api_key: Secret | None
    auth: Callable[[str], dict[str, str]]

    def url(self, task_id: str) -> str | None:
        """The task's status URL, the id percent-encoded as one path segment; None for an id
        that cannot be one (empty or only dots: ``..`` would climb out of the path, and the
        relay would send its key to whatever the base URL's parent answers)."""
        if not task_id.strip("."):
            return None
        return self.base_url + self.path.format(id=quote(task_id, safe=""))


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _x_api_key(key: str) -> dict[str, str]:
    return {"x-api-key": key}


def status_apis(settings: Settings) -> dict[str, StatusApi]:
    """Each provider's status API, from ``RELAY_<PROVIDER>_BASE_URL`` and ``_API_KEY``."""
    return {
        api.provider: api
        for api in (
            StatusApi(
                "evolink", settings.evolink_base_url, "/v1/tasks/{id}", settings.evolink_api_key,
                _bearer,
            ),
            StatusApi(
                "apiframe", settings.apiframe_base_url, "/v2/jobs/{id}",
                settings.apiframe_api_key, _x_api_key,
            ),
            StatusApi(
                "rivya", settings.rivya_base_url, "/api/v1/generations/{id}",
                settings.rivya_api_key, _bearer,
            ),
            StatusApi(
                "reve-art", settings.reve_art_base_url, "/v1/reve-image/status/{id}",
                settings.reve_art_api_key, _bearer,
            ),
        )
    }  # fmt: skip


def polling_configured(settings: Settings, provider: str) -> bool:
    """Whether the relay can poll ``provider`` (it has an API key for its status API)."""
    api = status_apis(settings).get(provider)
    return api is not None and api.api_key is not None


@dataclass(frozen=True)
class StatusAnswer:
    outcome: Literal["ok", "retry", "not_found"]
    status_code: int | None = None
    payload: Any = None
    body: bytes = b""
    #: Seconds the provider asked to wait (``Retry-After``), capped at ``MAX_RETRY_AFTER``.
    retry_after: float | None = None
    error: str | None = None
    latency_ms: float = 0.0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if absent/bad."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if moment is None or moment.tzinfo is None:
            return None
        seconds = moment.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class StatusClients:
    """One pooled HTTP client for every provider's status API."""

    def __init__(self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None):
        self.apis = status_apis(settings)
        self.timeout = settings.provider_timeout
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout),
            # Base URLs are the operator's; a provider moving an endpoint (or adding a trailing
            # slash, as Reve Art's examples do) should not stop polling. httpx drops the
            # credentials when a redirect leaves the origin.
            follow_redirects=True,
            max_redirects=3,
            headers={"user-agent": f"callback-relay/{__version__}", "accept": "application/json"},
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, provider: str, task_id: str) -> StatusAnswer:
        """The task as the provider's status API shows it now; never raises for the network."""
        api = self.apis[provider]
        if api.api_key is None:
            return StatusAnswer(
                "retry", error=f"no API key: set RELAY_{_env_name(provider)}_API_KEY"
            )
        url = api.url(task_id)
        if url is None:
            return StatusAnswer("not_found", error="the task id cannot be a path segment")
        started = time.monotonic()
        try:
            # One bound for the whole request: a provider trickling bytes cannot hold a poll.
            async with (
                asyncio.timeout(self.timeout),
                self._client.stream("GET", url, headers=api.auth(str(api.api_key))) as response,
            ):
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        return StatusAnswer(
                            "retry",
                            response.status_code,
                            error=f"answer larger than {MAX_ANSWER_BYTES} bytes",
                            latency_ms=_ms(started),
                        )
        except (httpx.TimeoutException, TimeoutError):
            return StatusAnswer(
                "retry", error=f"timed out after {self.timeout:g} s", latency_ms=_ms(started)
            )
        except httpx.HTTPError as exc:
            return StatusAnswer(
                "retry", error=f"{type(exc).__name__}: {exc}".strip(), latency_ms=_ms(started)
            )
        return _classify(response, bytes(body), _ms(started))


def _classify(response: httpx.Response, body: bytes, latency_ms: float) -> StatusAnswer:
    code = response.status_code
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if 200 <= code < 300:
        try:
            # As strict as a callback's body (orjson: no NaN, valid UTF-8 without lone
            # surrogates, bounded depth), so the answer can be spliced into ``data.raw``.
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return StatusAnswer(
                "retry", code, error="the answer is not JSON", latency_ms=latency_ms
            )
        return StatusAnswer("ok", code, payload, body, latency_ms=latency_ms)
    excerpt = body[:200].decode("utf-8", "replace").strip()
    detail = f"HTTP {code}" + (f": {excerpt}" if excerpt else "")
    if code in NOT_FOUND_CODES:
        return StatusAnswer("not_found", code, error=detail, latency_ms=latency_ms)
    if code in (401, 403):
        detail = f"HTTP {code}: the provider refused the API key"
    return StatusAnswer("retry", code, retry_after=retry_after, error=detail, latency_ms=latency_ms)


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def _env_name(provider: str) -> str:
    return provider.upper().replace("-", "_")

"""Clients of the providers' status APIs: what a task looks like now, asked over HTTP.

One ``StatusApi`` per provider says where its status endpoint is and how it authenticates:

    evolink    GET {RELAY_EVOLINK_BASE_URL}/v1/tasks/{id}              Authorization: Bearer
    apiframe   GET {RELAY_APIFRAME_BASE_URL}/v2/jobs/{id}              X-API-Key
    rivya      GET {RELAY_RIVYA_BASE_URL}/api/v1/generations/{id}      Authorization: Bearer
    reve-art   GET {RELAY_REVE_ART_BASE_URL}/v1/reve-image/status/{id} Authorization: Bearer

``StatusClients.fetch`` never raises for what the provider, the network or the task id does:
every outcome is a ``StatusAnswer`` -- ``ok`` (a JSON answer for the normalizers), ``retry``
(429 with its ``Retry-After``, 5xx, 401/403, a redirect, timeouts, refused connections, an
answer that is not JSON, too large or compressed), ``not_found`` (400, 404, 410,
422: the provider does not know this task) or ``invalid`` (the task id cannot form a status
URL: asking again cannot help).

What a provider's answer can cost is bounded: the whole request by ``RELAY_PROVIDER_TIMEOUT``,
the body by ``MAX_ANSWER_BYTES`` as it is read, and its parsing by orjson's depth limit. The
relay asks for ``Accept-Encoding: identity`` and refuses, unread, an answer in any other
encoding: nothing is ever decompressed, so a small compressed "bomb" cannot expand.

Redirects are never followed: the providers document none, and following one would hand the
API key (``X-API-Key`` is not dropped by httpx across origins) to wherever the redirect points,
possibly a private address. The relay connects only to the configured base URLs, the operator's
choice; a redirect is a failed poll naming where it pointed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import quote, urlsplit

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
    outcome: Literal["ok", "retry", "not_found", "invalid"]
    status_code: int | None = None
    payload: Any = None
    #: The answer's body: the JSON ``payload`` was parsed from, or an error answer's.
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
            # Never: a redirect would carry the API key away (see the module docstring).
            follow_redirects=False,
            # A connection is never reused: bytes a provider sent past a short Content-Length
            # would be read as the answer to the next poll, about another task. (httpx keeps
            # such bytes buffered and cannot tell; a poll is seconds apart per task anyway.)
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={
                "user-agent": f"callback-relay/{__version__}",
                "accept": "application/json",
                # Status answers are a few KB: compression saves nothing worth its risk.
                "accept-encoding": "identity",
            },
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
        try:
            url = api.url(task_id)
            if url is None:
                return StatusAnswer("invalid", error="the task id cannot be a path segment")
            request = self._client.build_request("GET", url, headers=api.auth(str(api.api_key)))
        except (httpx.InvalidURL, ValueError) as exc:  # UnicodeError is a ValueError
            # Too long for a URL (httpx's limit is 64 KiB), a lone surrogate...: for good.
            return StatusAnswer("invalid", error=f"the task id cannot form a status URL: {exc}")
        started = time.monotonic()
        try:
            # One bound for the whole request: a provider trickling bytes cannot hold a poll.
            async with asyncio.timeout(self.timeout):
                response = await self._client.send(request, stream=True)
                try:
                    body, problem = await _read_bounded(response)
                finally:
                    await response.aclose()
        except (httpx.TimeoutException, TimeoutError):
            return StatusAnswer(
                "retry", error=f"timed out after {self.timeout:g} s", latency_ms=_ms(started)
            )
        except httpx.HTTPError as exc:
            return StatusAnswer(
                "retry", error=f"{type(exc).__name__}: {exc}".strip(), latency_ms=_ms(started)
            )
        if problem is not None:
            return StatusAnswer(
                "retry", response.status_code, error=problem, latency_ms=_ms(started)
            )
        return _classify(response, body, _ms(started))


async def _read_bounded(response: httpx.Response) -> tuple[bytes, str | None]:
    """The answer's body and None; or no body and what is wrong with it.

    The relay asks for ``identity``, so an answer in any other encoding is refused unread:
    httpx would expand a whole chunk at once (a 64 KiB chunk of a gzip bomb is about 64 MiB),
    and even inflating only up to the bound cost the event loop about 3 ms a poll, 100 ms for
    the worker's 32 polls at once (measured with the "Provider side" reliability scenario).
    """
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return b"", f"the answer is {encoding[:40]!r}-encoded; the relay asks for identity"
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            return b"", f"answer larger than {MAX_ANSWER_BYTES} bytes"
    return bytes(body), None


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
    if 300 <= code < 400:
        return StatusAnswer("retry", code, error=_redirect_error(response), latency_ms=latency_ms)
    excerpt = body[:200].decode("utf-8", "replace").strip()
    detail = f"HTTP {code}" + (f": {excerpt}" if excerpt else "")
    # The body is kept too: a watch shows the start of it to the operator (``last_answer``).
    if code in NOT_FOUND_CODES:
        return StatusAnswer("not_found", code, body=body, error=detail, latency_ms=latency_ms)
    if code in (401, 403):
        detail = f"HTTP {code}: the provider refused the API key"
    return StatusAnswer(
        "retry", code, body=body, retry_after=retry_after, error=detail, latency_ms=latency_ms
    )


def _redirect_error(response: httpx.Response) -> str:
    """A redirect, described by where it points: scheme and host only (the path, query or
    user info of a location may hold secrets)."""
    try:
        target = urlsplit(response.headers.get("location", ""))
    except ValueError:
        where = "an invalid location"
    else:
        host = target.netloc.rpartition("@")[2]
        where = f"{target.scheme}://{host}" if host else "the same origin"
    return (
        f"HTTP {response.status_code}: the status API redirects to {where[:200]};"
        " redirects are not followed (check the provider's base URL)"
    )


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def _env_name(provider: str) -> str:
    return provider.upper().replace("-", "_")

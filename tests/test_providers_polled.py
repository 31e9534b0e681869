"""Rivya and Reve Art normalizers, Apiframe v2 job objects, Rivya signatures, Retry-After.

The golden payloads are the verbatim examples of the provider pages: Rivya's generation status
page (/work/shared/providers/README.md section 3) and its Qwen Image page (rivya-qwen-image),
Reve Art's API page (reve-art-api.zh.txt), Apiframe's job object (apiframe-reve-create).
"""

from __future__ import annotations

import asyncio
import gzip
import inspect
import json
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.datastructures import Secret

from service.errors import InvalidPayload
from service.provider_api import MAX_ANSWER_BYTES, StatusClients, parse_retry_after, status_apis
from service.providers import PROVIDERS
from service.providers.base import InvalidSignature
from service.providers.rivya import Rivya, RivyaSignature, StaleTimestamp
from service.settings import Settings
from service.signing import new_secret, sign
from tests.test_providers import VALIDATOR, cloudevent, fields

RIVYA_SUCCEEDED = r"""
{"id":"task_public_id","status":"succeeded","model":"z-image","reserved_credits":1,"final_credits":1,"created_at":"2026-05-10T00:00:00.000Z","updated_at":"2026-05-10T00:01:00.000Z","result":{"primary_url":"https://media.example/result.png","urls":["https://media.example/result.png"]},"error":null}
"""
RIVYA_FAILED = r"""
{"id":"task_public_id","status":"failed","model":"z-image","reserved_credits":1,"final_credits":0,"created_at":"2026-05-10T00:00:00.000Z","updated_at":"2026-05-10T00:01:00.000Z","result":null,"error":{"code":"generation_failed","message":"The generation failed."}}
"""  # noqa: E501 (verbatim provider example)
RIVYA_QWEN_QUEUED = r"""
{
  "id": "task_qwen_image_example",
  "status": "queued",
  "model": "qwen-image",
  "reserved_credits": 4,
  "final_credits": 0,
  "created_at": "2026-05-11T00:00:00.000Z",
  "updated_at": "2026-05-11T00:00:00.000Z",
  "result": null,
  "error": null
}
"""
REVE_ART_SYNC = r"""
{
  "id": "img_123",
  "status": "completed",
  "url": "https://cdn.reve-art.com/img_123.png",
  "metadata": {
    "prompt": "your prompt",
    "width": 1024,
    "height": 1024,
    "created_at": "2024-01-01T00:00:00Z"
  }
}
"""
REVE_ART_ASYNC = r"""
{
  "id": "img_123",
  "status": "pending"
}
"""
REVE_ART_STATUS = r"""
{
  "id": "img_123",
  "status": "completed",
  "url": "https://cdn.reve-art.com/img_123.png",
  "metadata": {
    "prompt": "original prompt",
    "width": 1024,
    "height": 1024,
    "model": "text2image_v1",
    "created_at": "2024-01-01T00:00:00Z"
  }
}
"""
APIFRAME_SUBMITTED = r"""
{
  "jobId": "b2c3d4e5-f6a7-8901-bcde-f23456789012",
  "status": "QUEUED"
}
"""

GOLDEN: list[tuple[str, str, str, dict[str, Any]]] = [
    (
        "rivya-succeeded", "rivya", RIVYA_SUCCEEDED,
        {
            "task_id": "task_public_id",
            "status": "succeeded",
            "progress": None,
            "model": "z-image",
            "media_type": "image",
            "outputs": [("https://media.example/result.png", "image")],
            "error": None,
            "raw_status": "succeeded",
            "unknown_status": False,
        },
    ),
    (
        "rivya-failed", "rivya", RIVYA_FAILED,
        {
            "task_id": "task_public_id",
            "status": "failed",
            "progress": None,
            "model": "z-image",
            "media_type": None,
            "outputs": [],
            "error": {"code": "generation_failed", "message": "The generation failed."},
            "raw_status": "failed",
            "unknown_status": False,
        },
    ),
    (
        "rivya-qwen-queued", "rivya", RIVYA_QWEN_QUEUED,
        {
            "task_id": "task_qwen_image_example",
            "status": "queued",
            "progress": None,
            "model": "qwen-image",
            "media_type": None,
            "outputs": [],
            "error": None,
            "raw_status": "queued",
            "unknown_status": False,
        },
    ),
    (
        "reve-art-sync", "reve-art", REVE_ART_SYNC,
        {
            "task_id": "img_123",
            "status": "succeeded",
            "progress": None,
            "model": None,
            "media_type": "image",
            "outputs": [("https://cdn.reve-art.com/img_123.png", "image")],
            "error": None,
            "raw_status": "completed",
            "unknown_status": False,
        },
    ),
    (
        "reve-art-async", "reve-art", REVE_ART_ASYNC,
        {
            "task_id": "img_123",
            "status": "queued",
            "progress": None,
            "model": None,
            "media_type": "image",
            "outputs": [],
            "error": None,
            "raw_status": "pending",
            "unknown_status": False,
        },
    ),
    (
        "reve-art-status", "reve-art", REVE_ART_STATUS,
        {
            "task_id": "img_123",
            "status": "succeeded",
            "progress": None,
            "model": "text2image_v1",
            "media_type": "image",
            "outputs": [("https://cdn.reve-art.com/img_123.png", "image")],
            "error": None,
            "raw_status": "completed",
            "unknown_status": False,
        },
    ),
    (
        "apiframe-v2-submitted", "apiframe", APIFRAME_SUBMITTED,
        {
            "task_id": "b2c3d4e5-f6a7-8901-bcde-f23456789012",
            "status": "queued",
            "progress": None,
            "model": None,
            "media_type": None,
            "outputs": [],
            "error": None,
            "raw_status": "QUEUED",
            "unknown_status": False,
        },
    ),
]  # fmt: skip
GOLDEN_PARAMS = [pytest.param(p, text, want, id=name) for name, p, text, want in GOLDEN]


@pytest.mark.parametrize(("provider", "text", "expected"), GOLDEN_PARAMS)
def test_normalize_golden_payloads(provider: str, text: str, expected: dict[str, Any]) -> None:
    """Each verbatim example normalizes to exactly the expected fields, as a valid event."""
    payload = json.loads(text)
    normalized = PROVIDERS[provider].normalize(payload)
    assert fields(normalized) == expected
    VALIDATOR.validate(cloudevent(provider, normalized, payload))


@pytest.mark.parametrize("envelope_type", ["generation.succeeded", None])
def test_rivya_accepts_the_generation_wrapped_in_an_event(envelope_type: str | None) -> None:
    """``{"type", "data"}`` around the generation object normalizes like the bare object."""
    bare = json.loads(RIVYA_SUCCEEDED)
    wrapped: dict[str, Any] = {"data": bare}
    if envelope_type:
        wrapped["type"] = envelope_type
    assert fields(Rivya().normalize(wrapped)) == fields(Rivya().normalize(bare))


def test_rivya_status_from_the_event_type_when_the_object_has_none() -> None:
    data = {"id": "t", "result": {"urls": ["https://m.example/v.mp4"]}}
    normalized = Rivya().normalize({"type": "generation.succeeded", "data": data})
    assert normalized.status == "succeeded"
    assert [(o.url, o.media_type) for o in normalized.outputs] == [
        ("https://m.example/v.mp4", "video")
    ]


def test_rivya_processing_is_running_and_primary_url_is_a_fallback() -> None:
    assert Rivya().normalize({"id": "t", "status": "processing"}).status == "running"
    only_primary = {"id": "t", "status": "succeeded", "result": {"primary_url": "https://m/x.png"}}
    assert [o.url for o in Rivya().normalize(only_primary).outputs] == ["https://m/x.png"]


def test_apiframe_job_object_from_the_status_api() -> None:
    """``GET /v2/jobs/{id}`` answers ``{id, status, result, ...}``: normalized like a webhook."""
    job = {
        "id": "a1b2c3d4",
        "status": "COMPLETED",
        "model": "reve-create",
        "progress": 100,
        "result": {"images": ["https://cdn.apiframe.ai/r/1.png"]},
        "error": None,
        "creditCost": 1,
        "webhookStatus": "sent",
    }
    normalized = PROVIDERS["apiframe"].normalize(job)
    assert (normalized.task_id, normalized.status, normalized.progress) == (
        "a1b2c3d4",
        "succeeded",
        100,
    )
    assert [o.url for o in normalized.outputs] == ["https://cdn.apiframe.ai/r/1.png"]
    failed = PROVIDERS["apiframe"].normalize({"id": "j", "status": "FAILED", "error": "boom"})
    assert failed.error == {"code": "provider_error", "message": "boom"}


@pytest.mark.parametrize("provider", ["rivya", "reve-art"])
@pytest.mark.parametrize("payload", [{}, {"id": ""}, {"data": {"status": "failed"}}])
def test_normalize_refuses_missing_task_id(provider: str, payload: dict[str, Any]) -> None:
    with pytest.raises(InvalidPayload):
        PROVIDERS[provider].normalize(payload)


# --- Rivya signatures (Standard Webhooks) ------------------------------------------------------

SECRET = new_secret()
BODY = RIVYA_SUCCEEDED.strip().encode()


def rivya_headers(body: bytes = BODY, *, at: float | None = None, secret: str = SECRET) -> dict:
    timestamp = int(time.time() if at is None else at)
    return {
        "webhook-id": "msg_2xYz",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign([secret], "msg_2xYz", timestamp, body),
    }


def test_rivya_signature_accepts_a_genuine_webhook() -> None:
    settings = Settings(rivya_webhook_secret=Secret(SECRET))
    assert Rivya().verify(rivya_headers(), BODY, settings, now=time.time()) is None
    # Several signatures (a rotation): one valid is enough.
    headers = rivya_headers()
    headers["webhook-signature"] = "v1,AAAA " + headers["webhook-signature"]
    assert Rivya().verify(headers, BODY, settings, now=time.time()) is None


@pytest.mark.parametrize(
    ("change", "error"),
    [
        pytest.param({"webhook-signature": "v1,AAAA"}, InvalidSignature, id="wrong"),
        pytest.param({"webhook-signature": ""}, InvalidSignature, id="empty"),
        pytest.param({"webhook-id": "msg_other"}, InvalidSignature, id="other-id"),
        pytest.param({"webhook-timestamp": "soon"}, StaleTimestamp, id="not-a-number"),
        pytest.param({"webhook-timestamp": "1700000000"}, StaleTimestamp, id="stale"),
    ],
)
def test_rivya_signature_refusals(change: dict[str, str], error: type[Exception]) -> None:
    headers = {**rivya_headers(), **change}
    with pytest.raises(error):
        RivyaSignature(SECRET).verify(headers, BODY, time.time())


def test_rivya_timestamp_is_digits_only() -> None:
    """Other spellings of the signed timestamp (leading zero, sign, underscores, spaces) are
    refused, though ``int()`` reads each as the same number the signature covers."""
    verifier = RivyaSignature(SECRET)
    now = time.time()
    genuine = rivya_headers(at=now)
    verifier.verify(genuine, BODY, now)
    stamp = genuine["webhook-timestamp"]
    for spelling in (
        f"0{stamp}",
        f"+{stamp}",
        f"{stamp[:2]}_{stamp[2:]}",
        f" {stamp}",
        f"{stamp} ",
        f"{stamp}\n",
        "".join(chr(ord(c) + 0x660 - 0x30) for c in stamp),  # Arabic-Indic digits
    ):
        with pytest.raises(StaleTimestamp):
            verifier.verify({**genuine, "webhook-timestamp": spelling}, BODY, now)


def test_rivya_signature_refuses_another_body_secret_or_missing_headers() -> None:
    verifier = RivyaSignature(SECRET)
    with pytest.raises(InvalidSignature):
        verifier.verify(rivya_headers(), BODY + b" ", time.time())
    with pytest.raises(InvalidSignature):
        verifier.verify(rivya_headers(secret=new_secret()), BODY, time.time())
    with pytest.raises(InvalidSignature):
        verifier.verify({}, BODY, time.time())


def test_rivya_timestamp_tolerance_is_five_minutes_either_way() -> None:
    verifier = RivyaSignature(SECRET)
    now = time.time()
    for skew in (-299, 299):
        verifier.verify(rivya_headers(at=now + skew), BODY, now)
    for skew in (-301, 301):
        with pytest.raises(StaleTimestamp):
            verifier.verify(rivya_headers(at=now + skew), BODY, now)


def test_rivya_without_a_secret_checks_nothing_and_needs_a_token() -> None:
    assert Rivya().verify({}, BODY, Settings(), now=time.time()) is None
    assert not Rivya().accepts_tokenless(Settings())
    assert Rivya().accepts_tokenless(Settings(rivya_webhook_secret=Secret(SECRET)))
    assert not PROVIDERS["evolink"].accepts_tokenless(Settings())


# --- status API clients ------------------------------------------------------------------------


def test_status_api_urls_and_auth() -> None:
    apis = status_apis(
        Settings(
            evolink_api_key=Secret("ek"),
            apiframe_api_key=Secret("ak"),
            rivya_api_key=Secret("rk"),
            reve_art_api_key=Secret("vk"),
        )
    )
    expected = {
        "evolink": ("https://api.evolink.ai/v1/tasks/t%2F1", {"authorization": "Bearer ek"}),
        "apiframe": ("https://api.apiframe.ai/v2/jobs/t%2F1", {"x-api-key": "ak"}),
        "rivya": ("https://rivya.ai/api/v1/generations/t%2F1", {"authorization": "Bearer rk"}),
        "reve-art": (
            "https://reve-art.com/v1/reve-image/status/t%2F1",
            {"authorization": "Bearer vk"},
        ),
    }
    for name, (url, headers) in expected.items():
        api = apis[name]
        assert api.url("t/1") == url  # a task id never escapes its path segment
        assert api.auth(str(api.api_key)) == headers


def test_status_requests_never_leave_the_task_path() -> None:
    """Every character of an id is encoded into one path segment, and an id of only dots
    (which would climb out of it) is never requested: the relay's key goes nowhere else."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"id": "t", "status": "pending"})

    async def run() -> list[str]:
        clients = _clients(handler)
        outcomes = []
        for task_id in ("..", ".", "...", "", "a/../b", "..%2f", "?x=1#", ".a."):
            answer = await clients.fetch("evolink", task_id)
            outcomes.append(answer.outcome)
        await clients.aclose()
        return outcomes

    outcomes = asyncio.run(run())
    assert outcomes[:4] == ["invalid"] * 4
    assert seen == [
        "https://api.evolink.ai/v1/tasks/a%2F..%2Fb",
        "https://api.evolink.ai/v1/tasks/..%252f",
        "https://api.evolink.ai/v1/tasks/%3Fx%3D1%23",
        "https://api.evolink.ai/v1/tasks/.a.",
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("-3", 0.0),
        ("999999", 3600.0),
        ("", None),
        (None, None),
        ("soon", None),
        ("nan", None),
        ("Sat, 21 Nov 2026 18:00:10 GMT", 10.0),
        ("Sat, 21 Nov 2026 17:59:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    now = 1_795_284_000.0  # Sat, 21 Nov 2026 18:00:00 GMT
    assert parse_retry_after(value, now) == expected


class _Unread(httpx.AsyncByteStream):
    """A body not read yet, as a network transport hands it over (``httpx.Response(content=)``
    reads its body at once, and the raw bytes of a read body cannot be streamed again)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), 65_536):
            yield self.data[start : start + 65_536]


def _clients(handler: Any, **settings: Any) -> StatusClients:
    async def streamed(request: httpx.Request) -> httpx.Response:
        answer = handler(request)
        if inspect.isawaitable(answer):
            answer = await answer
        if isinstance(answer.stream, _Unread):
            return answer
        return httpx.Response(
            answer.status_code, headers=answer.headers, stream=_Unread(answer.content)
        )

    return StatusClients(
        Settings(evolink_api_key=Secret("ek"), provider_timeout=0.5, **settings),
        transport=httpx.MockTransport(streamed),
    )


@pytest.mark.parametrize(
    ("status", "headers", "content", "outcome", "retry_after", "error"),
    [
        (200, {}, b'{"id": "t", "status": "pending"}', "ok", None, None),
        (200, {}, b"<html>maintenance</html>", "retry", None, "the answer is not JSON"),
        (200, {}, b'{"progress": NaN}', "retry", None, "the answer is not JSON"),
        (429, {"retry-after": "7"}, b"{}", "retry", 7.0, "HTTP 429: {}"),
        (503, {}, b"", "retry", None, "HTTP 503"),
        (401, {}, b"{}", "retry", None, "HTTP 401: the provider refused the API key"),
        (404, {}, b'{"error": "not found"}', "not_found", None, 'HTTP 404: {"error": "not found"}'),
        (400, {}, b"bad id", "not_found", None, "HTTP 400: bad id"),
    ],
)
def test_status_answers_are_classified(
    status: int,
    headers: dict[str, str],
    content: bytes,
    outcome: str,
    retry_after: float | None,
    error: str | None,
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, headers=headers, content=content)

    async def fetch() -> Any:
        clients = _clients(handler)
        try:
            return await clients.fetch("evolink", "task-unified-1-x")
        finally:
            await clients.aclose()

    answer = asyncio.run(fetch())
    assert (answer.outcome, answer.status_code, answer.retry_after, answer.error) == (
        outcome,
        status,
        retry_after,
        error,
    )
    assert seen[0].url == "https://api.evolink.ai/v1/tasks/task-unified-1-x"
    assert seen[0].headers["authorization"] == "Bearer ek"
    if outcome == "ok":
        assert answer.payload == {"id": "t", "status": "pending"} and answer.body == content


def test_status_network_failures_are_retries_never_exceptions() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def huge(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"[" + b"0," * (MAX_ANSWER_BYTES // 2) + b"0]")

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(2)
        return httpx.Response(200, content=b"{}")

    async def fetch(handler: Any, provider: str = "evolink") -> Any:
        clients = _clients(handler)
        try:
            return await clients.fetch(provider, "task-unified-1-x")
        finally:
            await clients.aclose()

    refused = asyncio.run(fetch(refuse))
    assert refused.outcome == "retry" and refused.error.startswith("ConnectError")
    too_big = asyncio.run(fetch(huge))
    assert too_big.outcome == "retry" and "larger than" in too_big.error
    started = time.monotonic()
    timed_out = asyncio.run(fetch(slow))
    assert timed_out.outcome == "retry" and timed_out.error == "timed out after 0.5 s"
    assert time.monotonic() - started < 1.5
    unconfigured = asyncio.run(fetch(refuse, "rivya"))
    assert unconfigured.outcome == "retry" and "RELAY_RIVYA_API_KEY" in unconfigured.error


def test_simulator_says_when_the_real_provider_would_refuse_the_url() -> None:
    from service.simulate import url_notes

    assert url_notes("evolink", "https://relay.example.com/callbacks/evolink/t") == []
    assert len(url_notes("evolink", "http://10.0.0.5/callbacks/evolink/t")) == 2
    assert len(url_notes("rivya", "https://localhost/callbacks/rivya")) == 1
    assert len(url_notes("evolink", "https://relay.example.com/" + "x" * 2048)) == 1
    assert url_notes("apiframe", "http://127.0.0.1/hook") == []  # Apiframe documents no rules


# --- what an answer may cost, where a request may go ------------------------------------------


def _fetch_with(handler: Any, provider: str = "evolink", task_id: str = "task-unified-1-x") -> Any:
    async def fetch() -> Any:
        clients = _clients(handler, apiframe_api_key=Secret("afk_secret"))
        try:
            return await clients.fetch(provider, task_id)
        finally:
            await clients.aclose()

    return asyncio.run(fetch())


def _gzip_bomb(expanded: int) -> bytes:
    """``expanded`` bytes of zeros, gzip-compressed (about a thousandth of it)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    return b"".join(packer.compress(block) for _ in range(expanded // len(block))) + (
        packer.flush()
    )


def test_a_gzip_bomb_is_refused_without_expanding_it() -> None:
    """256 MiB of zeros in 256 KB of gzip: a failed poll, never expanded in memory."""
    import tracemalloc

    bomb = _gzip_bomb(256 * 1024 * 1024)
    asked: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers.get("accept-encoding"))
        return httpx.Response(200, headers={"content-encoding": "gzip"}, stream=_Unread(bomb))

    tracemalloc.start()
    try:
        answer = _fetch_with(handler)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # httpx's decoder expanded a whole 64 KiB chunk at once: about 64 MiB for this one.
    assert peak < MAX_ANSWER_BYTES + 2 * len(bomb), peak
    assert answer.outcome == "retry"
    assert answer.error == "the answer is 'gzip'-encoded; the relay asks for identity"
    assert asked == ["identity"]  # the relay asks for an answer it need not decompress


@pytest.mark.parametrize(
    ("encoding", "content", "outcome", "error"),
    [
        ("identity", b'{"id": "t", "status": "pending"}', "ok", None),
        ("gzip", gzip.compress(b'{"id": "t", "status": "pending"}'), "retry", "'gzip'"),
        ("deflate", zlib.compress(b'{"id": "t", "status": "pending"}'), "retry", "'deflate'"),
        ("br", b"\x0b\x02\x80{}\x03", "retry", "'br'"),
        ("gzip, gzip", b"", "retry", "'gzip, gzip'"),
    ],
)
def test_compressed_answers_are_refused_unread(
    encoding: str, content: bytes, outcome: str, error: str | None
) -> None:
    """The relay asks for identity; a provider that compresses anyway gets a failed poll."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-encoding": encoding}, stream=_Unread(content))

    answer = _fetch_with(handler)
    assert answer.outcome == outcome
    if outcome == "ok":
        assert answer.payload == {"id": "t", "status": "pending"} and answer.error is None
    else:
        assert answer.error == f"the answer is {error}-encoded; the relay asks for identity"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "https://collector.example/steal?key=1",
        "/v2/jobs/a1b2c3d4/",  # same origin: the providers document no redirect either
    ],
)
def test_redirects_are_not_followed_and_the_key_stays_home(status: int, location: str) -> None:
    """Apiframe's X-API-Key (also its webhook HMAC key) goes to its configured origin only."""
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.url.host == "api.apiframe.ai" and request.url.path == "/v2/jobs/a1b2c3d4":
            return httpx.Response(status, headers={"location": location}, content=b"secret page")
        return httpx.Response(200, content=b'{"id": "a1b2c3d4", "status": "COMPLETED"}')

    answer = _fetch_with(handler, "apiframe", "a1b2c3d4")
    assert [str(request.url) for request in sent] == ["https://api.apiframe.ai/v2/jobs/a1b2c3d4"]
    assert sent[0].headers["x-api-key"] == "afk_secret"
    assert answer.outcome == "retry" and answer.status_code == status
    where = "the same origin" if location.startswith("/") else location.split("/")[2]
    assert answer.error.startswith(f"HTTP {status}: the status API redirects to ")
    assert where in answer.error
    # Neither the redirect's path and query nor the answer's body reach last_error and the logs.
    assert "secret" not in answer.error and "latest" not in answer.error
    assert "key=1" not in answer.error


@pytest.mark.parametrize("task_id", ["\u20ac" * 7300, "t\ud800"])
def test_a_task_id_that_cannot_form_a_url_is_invalid_without_a_request(task_id: str) -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(503)

    answer = _fetch_with(handler, "evolink", task_id)
    assert answer.outcome == "invalid" and sent == []
    assert answer.error.startswith("the task id cannot form a status URL")


def test_a_lying_content_length_cannot_answer_another_poll() -> None:
    """Bytes past a short Content-Length stay on their connection: the next poll, about
    another task, gets its own answer (the relay never reuses a status connection)."""
    import socket
    import threading

    smuggled = b'{"id": "task-unified-A", "status": "completed"}'
    own = b'{"id": "task-unified-A", "status": "pending"}'
    # Content-Length covers the first answer only; a whole second answer follows it.
    lying = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%sHTTP/1.1 200 OK\r\n" % (
        len(own),
        own,
    ) + b"Content-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled)
    honest = b'{"id": "task-unified-B", "status": "pending"}'
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer(conn: socket.socket) -> None:
        with conn:
            while True:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                if b"task-unified-A" in head.split(b"\r\n", 1)[0]:
                    conn.sendall(lying)
                else:
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(honest), honest)
                    )

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()

    async def both() -> tuple[Any, Any]:
        clients = StatusClients(
            Settings(
                evolink_api_key=Secret("ek"),
                evolink_base_url=f"http://127.0.0.1:{port}",
                provider_timeout=2,
            )
        )
        try:
            first = await clients.fetch("evolink", "task-unified-A")
            second = await clients.fetch("evolink", "task-unified-B")
        finally:
            await clients.aclose()
        return first, second

    try:
        first, second = asyncio.run(both())
    finally:
        server.close()
    assert first.outcome == "ok" and first.payload == json.loads(own)
    # Reusing the connection, the smuggled answer was B's: {"id": "task-unified-A", ...}.
    assert second.outcome == "ok" and second.payload == json.loads(honest)

"""Property tests: normalizers, tokens and signature checks never fail in an unplanned way.

Whatever JSON a provider (or anyone holding a callback URL) posts, a normalizer either returns
an update whose CloudEvent matches the published schema or refuses it with InvalidPayload; token
and signature checks either accept or refuse with their own Unauthorized error.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import Secret

from service.errors import InvalidPayload
from service.events import STATUSES, Normalized, Output, build_cloudevent
from service.ids import new_id
from service.providers import PROVIDERS
from service.providers.apiframe import Apiframe, InvalidSignature
from service.settings import Settings
from service.tokens import CallbackTokens, InvalidToken, TokenExpired
from tests.test_providers import VALIDATOR  # the published schema, date-times checked strictly

#: Examples per property; the reliability suite runs more (``RELAY_PROPERTY_EXAMPLES``).
PROPERTY = settings(
    max_examples=int(os.environ.get("RELAY_PROPERTY_EXAMPLES", "400")), deadline=None
)

# --- strategies ------------------------------------------------------------------------------

JSON_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)

STATUS_WORDS = st.sampled_from(
    [
        "pending",
        "queued",
        "processing",
        "running",
        "completed",
        "succeeded",
        "finished",
        "failed",
        "cancelled",
        "canceled",
        "QUEUED",
        "PROCESSING",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        " Finished ",
        "exploding",
        "",
    ]
)
# Empty strings get a branch of their own: a URL field that is present but empty is the
# classic edge a normalizer forgets.
URLS = st.just("") | st.sampled_from(
    [
        "https://cdn.example/a.png",
        "https://cdn.example/b.mp4",
        "https://cdn.example/c.mp3",
        "https://cdn.example/d?x=.webm",
        "https://cdn.example/e",
        " ",
    ]
)
URL_ITEMS = URLS | st.fixed_dictionaries(
    {}, optional={"url": URLS, "audio_url": URLS, "video_url": URLS}
)
URL_LISTS = st.lists(URL_ITEMS, max_size=4)
IDS = st.sampled_from(["task-1", "  ", "", " j-2 "]) | st.integers() | JSON_SCALARS
PROGRESS = (
    st.integers(-1000, 1000)
    | st.floats()
    | st.sampled_from(["80", "40%", " 12 ", "1e400", "nan", "-inf", "soon", ""])
    | JSON_SCALARS
)
ERRORS = (
    st.fixed_dictionaries(
        {}, optional={"code": JSON_SCALARS | st.just("request_cancelled"), "message": JSON_SCALARS}
    )
    | JSON_SCALARS
)
V2_RESULTS = URLS | st.fixed_dictionaries(
    {},
    optional={
        "images": URL_LISTS,
        "gridUrl": URLS,
        "videoUrl": URLS,
        "videos": URL_LISTS,
        "tracks": URL_LISTS,
    },
)


def _plausible(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field's typical values, or any JSON value at all."""
    return value | JSON_VALUES


VALID_IDS = st.sampled_from(["task-unified-1756817821-4x3rx6ny", " j-2 ", "7"]) | st.integers()
#: Every field either normalizer reads, with its typical values.
TYPICAL: dict[str, st.SearchStrategy[Any]] = {
    "id": IDS,
    "task_id": IDS,
    "taskId": IDS,
    "jobId": IDS,
    "event": st.sampled_from(["completed", "failed", "progress", "Started"]),
    "status": STATUS_WORDS,
    "progress": PROGRESS,
    "percentage": PROGRESS,
    "type": st.sampled_from(["image", "video", "audio", "text", "3d"]),
    "object": st.sampled_from(["video.generation.task", "image", "x.y.z", ""]),
    "model": st.sampled_from(["seedance-2.0", "midjourney", ""]),
    "task_type": st.sampled_from(["imagine", "kling-2.6-video", ""]),
    "results": URL_LISTS,
    "result_data": URL_LISTS,
    "result": V2_RESULTS,
    "image_urls": URL_LISTS,
    "original_image_url": URLS,
    "video_url": URLS,
    "songs": URL_LISTS,
    "error": ERRORS,
    "message": JSON_SCALARS,
}


def _shaped(id_key: str, *keys: str) -> st.SearchStrategy[dict[str, Any]]:
    """Payloads with a usable id under ``id_key`` and some of one provider's fields."""
    return st.fixed_dictionaries({id_key: VALID_IDS}, optional={k: TYPICAL[k] for k in keys})


#: Payloads shaped like each provider's own callbacks (a usable id and that provider's fields).
SHAPED: dict[str, list[st.SearchStrategy[dict[str, Any]]]] = {
    "evolink": [
        _shaped(
            "id", "status", "progress", "type", "object", "model", "results", "result_data", "error"
        ),
    ],
    "apiframe": [
        _shaped("jobId", "event", "status", "progress", "model", "result", "error"),
        _shaped(
            "task_id",
            "taskId",
            "status",
            "percentage",
            "progress",
            "task_type",
            "model",
            "image_urls",
            "original_image_url",
            "video_url",
            "songs",
            "error",
            "message",
        ),
    ],
}


def payloads(provider: str) -> st.SearchStrategy[Any]:
    """Any JSON value, any mix of known keys, or a payload shaped like ``provider``'s."""
    return st.one_of(
        JSON_VALUES,
        # Any of the known keys, each with a typical or an arbitrary value.
        st.fixed_dictionaries({}, optional={k: _plausible(v) for k, v in TYPICAL.items()}),
        *SHAPED.get(provider, []),
    )


def check_normalized(provider: str, normalized: Normalized, raw: Any) -> None:
    """The invariants every accepted update holds, and its CloudEvent matches the schema."""
    assert isinstance(normalized, Normalized)
    assert normalized.status in STATUSES
    assert all(isinstance(output, Output) for output in normalized.outputs)
    if normalized.unknown_status:
        assert normalized.status == "running"
    if normalized.status == "failed":
        assert normalized.error is not None
    if normalized.status not in ("failed", "canceled"):
        assert normalized.error is None
    event = build_cloudevent(
        event_id=new_id("evt"),
        provider=provider,
        normalized=normalized,
        received_at=1_767_225_600.5,
        metadata={},
        raw=raw,
    )
    VALIDATOR.validate(event)


# --- normalizers -----------------------------------------------------------------------------


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
@PROPERTY
@given(data=st.data())
def test_normalize_any_json_is_valid_event_or_invalid_payload(
    provider: str, data: st.DataObject
) -> None:
    """Any JSON value normalizes to a schema-valid CloudEvent or raises InvalidPayload."""
    payload = data.draw(payloads(provider), label="payload")
    try:
        normalized = PROVIDERS[provider].normalize(payload)
    except InvalidPayload:
        return
    check_normalized(provider, normalized, payload)


# --- tokens ----------------------------------------------------------------------------------

TOKENS = CallbackTokens(["new", "old"])
NOW = 1_767_225_600.0
GENUINE = TOKENS.mint("evolink", "url-1", int(NOW) + 60)
TOKEN_TEXT = (
    st.text(max_size=600)
    | st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEF0123456789-_.", max_size=120)
    | st.builds(
        lambda i, c: GENUINE[:i] + c + GENUINE[i + 1 :],
        st.integers(0, len(GENUINE) - 1),
        st.characters(),
    )
)


@PROPERTY
@given(token=TOKEN_TEXT, provider=st.sampled_from(sorted(PROVIDERS)), now=st.floats(0, 2e9))
def test_tokens_verify_arbitrary_text(token: str, provider: str, now: float) -> None:
    """Verifying any text returns a url_id or raises InvalidToken / TokenExpired, nothing else."""
    try:
        url_id = TOKENS.verify(provider, token, now)
    except (InvalidToken, TokenExpired):
        return
    assert isinstance(url_id, str)
    # Only a genuine token (or one differing in base64 padding bits) gets this far.
    assert (provider, url_id) == ("evolink", "url-1")


@PROPERTY
@given(
    url_id=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=40),
    ttl=st.integers(1, 10**9),
    provider=st.sampled_from(sorted(PROVIDERS)),
)
def test_tokens_round_trip_any_url_id(url_id: str, ttl: int, provider: str) -> None:
    """Every minted token verifies to its url_id until, and not from, its expiry."""
    token = TOKENS.mint(provider, url_id, int(NOW) + ttl)
    assert TOKENS.verify(provider, token, NOW) == url_id
    try:
        TOKENS.verify(provider, token, NOW + ttl)
    except TokenExpired:
        pass
    else:
        raise AssertionError("token verified at its expiry")


# --- Apiframe signatures ---------------------------------------------------------------------

SIGNATURE_SETTINGS = st.sampled_from(
    [
        Settings(),
        Settings(apiframe_api_key=Secret("k")),
        Settings(apiframe_webhook_secret=Secret("s3cret")),
        Settings(apiframe_api_key=Secret("k"), apiframe_webhook_secret=Secret("s3cret")),
        Settings(apiframe_api_key=Secret("k"), apiframe_signature="required"),
        Settings(
            apiframe_api_key=Secret("k"),
            apiframe_signature="required",
            apiframe_webhook_secret=Secret("s3cret"),
        ),
    ]
)
HEADER_VALUES = st.text(max_size=80) | st.text(
    alphabet="0123456789abcdefABCDEF", min_size=64, max_size=64
).map(lambda hex_: f"sha256={hex_}")
HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "x-webhook-signature": HEADER_VALUES,
        "x-webhook-secret": HEADER_VALUES | st.just("s3cret"),
        "x-webhook-event": HEADER_VALUES,
    },
)


@PROPERTY
@given(headers=HEADERS, body=st.binary(max_size=200), config=SIGNATURE_SETTINGS)
def test_apiframe_verify_arbitrary_input(
    headers: dict[str, str], body: bytes, config: Settings
) -> None:
    """Any headers and body are accepted (None) or refused with InvalidSignature only."""
    try:
        result = Apiframe().verify(headers, body, config, now=NOW)
    except InvalidSignature:
        return
    assert result is None


@PROPERTY
@given(body=st.binary(max_size=200), prefixed=st.booleans(), api_key=st.text(min_size=1))
def test_apiframe_verify_accepts_every_correct_signature(
    body: bytes, prefixed: bool, api_key: str
) -> None:
    """The documented signature over any body and any API key is always accepted."""
    key = hashlib.sha256(api_key.encode()).digest()
    signature = hmac.new(key, body, hashlib.sha256).hexdigest()
    header = f"sha256={signature}" if prefixed else signature
    config = Settings(apiframe_api_key=Secret(api_key))
    assert Apiframe().verify({"x-webhook-signature": header}, body, config, now=NOW) is None
    # The same signature never vouches for a different body.
    try:
        Apiframe().verify({"x-webhook-signature": header}, body + b"\x00", config, now=NOW)
    except InvalidSignature:
        pass
    else:
        raise AssertionError("signature accepted over a different body")

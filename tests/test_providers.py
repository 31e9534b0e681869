"""Unit tests of the provider normalizers, the Apiframe signature check and callback-URL tokens.

The golden payloads are the examples marked [V] in the provider notes
(/work/shared/providers/README.md, sections 1 and 2), copied verbatim as JSON text.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker
from starlette.datastructures import Headers, Secret

from service.errors import InvalidPayload
from service.events import Normalized, build_cloudevent
from service.ids import new_id
from service.providers import PROVIDERS
from service.providers.apiframe import Apiframe, InvalidSignature
from service.providers.evolink import Evolink
from service.settings import Settings
from service.tokens import CallbackTokens, InvalidToken, TokenExpired

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "service/schemas/generation-event.schema.json"
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")

#: The clock's reading wherever a check takes one (tokens, signatures).
NOW = 1_767_225_600.0


def _format_checker() -> FormatChecker:
    """The draft 2020-12 format checker, with ``date-time`` enforced.

    jsonschema checks ``date-time`` only when the optional ``rfc3339-validator`` package is
    installed; without it the format would pass silently, so a strict check is added here.
    """
    checker = FormatChecker()
    if "date-time" not in checker.checkers:

        @checker.checks("date-time", raises=ValueError)
        def _date_time(value: object) -> bool:
            if not isinstance(value, str):
                return True
            if not RFC3339.match(value):
                return False
            datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
            return True

    return checker


VALIDATOR = Draft202012Validator(
    json.loads(SCHEMA_PATH.read_text()), format_checker=_format_checker()
)


def cloudevent(provider: str, normalized: Normalized, raw: Any) -> dict[str, Any]:
    return build_cloudevent(
        event_id=new_id("evt"),
        provider=provider,
        normalized=normalized,
        received_at=1_767_225_600.123,
        metadata={"order": 42},
        raw=raw,
    )


def fields(normalized: Normalized) -> dict[str, Any]:
    """The normalized fields a subscriber sees, outputs as (url, media_type) pairs."""
    return {
        "task_id": normalized.task_id,
        "status": normalized.status,
        "progress": normalized.progress,
        "model": normalized.model,
        "media_type": normalized.media_type,
        "outputs": [(output.url, output.media_type) for output in normalized.outputs],
        "error": normalized.error,
        "raw_status": normalized.raw_status,
        "unknown_status": normalized.unknown_status,
    }


# --- golden payloads: verbatim [V] examples and everything they must normalize to -------------

EVOLINK_VIDEO_COMPLETED = r"""
{"id":"task-unified-1756817821-4x3rx6ny","object":"video.generation.task","created":1756817821,"model":"seedance-2.0","status":"completed","progress":100,"results":["https://cdn.example.com/videos/task-unified-1756817821-4x3rx6ny.mp4"],"type":"video","task_info":{"can_cancel":false}}
"""
EVOLINK_VIDEO_FAILED = r"""
{"id":"task-unified-1756817821-4x3rx6ny","object":"video.generation.task","created":1756817821,"model":"seedance-2.0","status":"failed","progress":0,"type":"video","task_info":{"can_cancel":false}}
"""
EVOLINK_IMAGE_FAILED_WITH_ERROR = r"""
{"id":"task-unified-1772618027-cmeisy8h","object":"image.generation.task","status":"failed","model":"gemini-3.1-flash-image-preview","progress":0,"error":{"code":"content_policy_violation","message":"Content policy violation.\nYour request was blocked by safety filters..."}}
"""  # noqa: E501 (verbatim provider example)
EVOLINK_AUDIO_COMPLETED = r"""
{"created":1766319090,"id":"task-unified-1766319089-oqs9cue4","model":"suno-v5","object":"audio.generation.task","progress":100,"result_data":[{"result_id":"555f4ea2-cfef-4622-8355-baa5f2ce6a59","duration":91.2,"tags":"R&B","title":"Forget Me Nots","image_url":"https://media.evolink.ai/xxx.jpeg","audio_url":"https://media.evolink.ai/xxx.mp3","stream_audio_url":"https://media.evolink.ai/xxx.mp3"}],"results":["https://media.evolink.ai/xxx.mp3","https://media.evolink.ai/yyy.mp3"],"status":"completed","task_info":{"can_cancel":false},"type":"audio"}
"""  # noqa: E501 (verbatim provider example)
APIFRAME_V2_COMPLETED = r"""
{"event":"completed","jobId":"a1b2c3d4-e5f6-7890-abcd-ef1234567890","status":"COMPLETED","progress":100,"result":"https://cdn.apiframe.ai/results/a1b2c3d4.png","model":"midjourney","creditCost":10,"completedAt":"2026-03-15T10:00:32.000Z"}
"""
APIFRAME_V2_FAILED = r"""
{"event":"failed","jobId":"a1b2c3d4-e5f6-7890-abcd-ef1234567890","status":"FAILED","error":"Provider returned an error: content policy violation","model":"midjourney"}
"""  # noqa: E501 (verbatim provider example)
APIFRAME_V2_PROGRESS = r"""
{"event":"progress","jobId":"a1b2c3d4-e5f6-7890-abcd-ef1234567890","status":"PROCESSING","progress":45,"model":"midjourney"}
"""
APIFRAME_V1_IMAGINE = r"""
{"task_id":"29e983ca-7e86-4017-a9e3-ef6fe9cd5f2a","sref":"1234578888888","task_type":"imagine","original_image_url":"https://.../xxxxxxxx.png","image_urls":["https://.../xxxx1.png","https://.../xxxx2.png","https://.../xxxx3.png","https://.../xxxx4.png"]}
"""
APIFRAME_V1_REROLL_PROCESSING = r"""
{"task_id":"29e983ca-7e86-4017-a9e3-ef6fe9cd5f2a","task_type":"reroll","status":"processing","percentage":"80"}
"""
APIFRAME_V1_KLING_FINISHED = r"""
{"task_id":"29e983ca-7e86-4017-a9e3-ef6fe9cd5f2a","task_type":"kling-2.6-video","video_url":"https://...........xxxx.mp4","status":"finished","percentage":100}
"""

EVOLINK_VIDEO_TASK = "task-unified-1756817821-4x3rx6ny"
APIFRAME_JOB = "a1b2c3d4-e5f6-7890-abcd-ef1234567890"
APIFRAME_TASK = "29e983ca-7e86-4017-a9e3-ef6fe9cd5f2a"

GOLDEN: list[tuple[str, str, str, dict[str, Any]]] = [
    (
        "evolink-video-completed",
        "evolink",
        EVOLINK_VIDEO_COMPLETED,
        {
            "task_id": EVOLINK_VIDEO_TASK,
            "status": "succeeded",
            "progress": 100,
            "model": "seedance-2.0",
            "media_type": "video",
            "outputs": [
                ("https://cdn.example.com/videos/task-unified-1756817821-4x3rx6ny.mp4", "video")
            ],
            "error": None,
            "raw_status": "completed",
            "unknown_status": False,
        },
    ),
    (
        "evolink-video-failed-no-error",
        "evolink",
        EVOLINK_VIDEO_FAILED,
        {
            "task_id": EVOLINK_VIDEO_TASK,
            "status": "failed",
            "progress": 0,
            "model": "seedance-2.0",
            "media_type": "video",
            "outputs": [],
            "error": {
                "code": "provider_error",
                "message": "Evolink reported the task as failed.",
            },
            "raw_status": "failed",
            "unknown_status": False,
        },
    ),
    (
        "evolink-image-failed-with-error",
        "evolink",
        EVOLINK_IMAGE_FAILED_WITH_ERROR,
        {
            "task_id": "task-unified-1772618027-cmeisy8h",
            "status": "failed",
            "progress": 0,
            "model": "gemini-3.1-flash-image-preview",
            "media_type": "image",
            "outputs": [],
            "error": {
                "code": "content_policy_violation",
                "message": (
                    "Content policy violation.\nYour request was blocked by safety filters..."
                ),
            },
            "raw_status": "failed",
            "unknown_status": False,
        },
    ),
    (
        "evolink-audio-completed",
        "evolink",
        EVOLINK_AUDIO_COMPLETED,
        {
            "task_id": "task-unified-1766319089-oqs9cue4",
            "status": "succeeded",
            "progress": 100,
            "model": "suno-v5",
            "media_type": "audio",
            # result_data repeats xxx.mp3 from results: listed once.
            "outputs": [
                ("https://media.evolink.ai/xxx.mp3", "audio"),
                ("https://media.evolink.ai/yyy.mp3", "audio"),
            ],
            "error": None,
            "raw_status": "completed",
            "unknown_status": False,
        },
    ),
    (
        "apiframe-v2-completed",
        "apiframe",
        APIFRAME_V2_COMPLETED,
        {
            "task_id": APIFRAME_JOB,
            "status": "succeeded",
            "progress": 100,
            "model": "midjourney",
            "media_type": "image",
            "outputs": [("https://cdn.apiframe.ai/results/a1b2c3d4.png", "image")],
            "error": None,
            "raw_status": "COMPLETED",
            "unknown_status": False,
        },
    ),
    (
        "apiframe-v2-failed",
        "apiframe",
        APIFRAME_V2_FAILED,
        {
            "task_id": APIFRAME_JOB,
            "status": "failed",
            "progress": None,
            "model": "midjourney",
            "media_type": None,
            "outputs": [],
            "error": {
                "code": "provider_error",
                "message": "Provider returned an error: content policy violation",
            },
            "raw_status": "FAILED",
            "unknown_status": False,
        },
    ),
    (
        "apiframe-v2-progress",
        "apiframe",
        APIFRAME_V2_PROGRESS,
        {
            "task_id": APIFRAME_JOB,
            "status": "running",
            "progress": 45,
            "model": "midjourney",
            "media_type": None,
            "outputs": [],
            "error": None,
            "raw_status": "PROCESSING",
            "unknown_status": False,
        },
    ),
    (
        "apiframe-v1-imagine",
        "apiframe",
        APIFRAME_V1_IMAGINE,
        {
            "task_id": APIFRAME_TASK,
            "status": "succeeded",
            "progress": None,
            "model": "imagine",
            "media_type": "image",
            # The four upscales; original_image_url (the grid) is only a fallback.
            "outputs": [
                ("https://.../xxxx1.png", "image"),
                ("https://.../xxxx2.png", "image"),
                ("https://.../xxxx3.png", "image"),
                ("https://.../xxxx4.png", "image"),
            ],
            "error": None,
            "raw_status": None,
            "unknown_status": False,
        },
    ),
    (
        "apiframe-v1-reroll-processing",
        "apiframe",
        APIFRAME_V1_REROLL_PROCESSING,
        {
            "task_id": APIFRAME_TASK,
            "status": "running",
            "progress": 80,
            "model": "reroll",
            "media_type": None,
            "outputs": [],
            "error": None,
            "raw_status": "processing",
            "unknown_status": False,
        },
    ),
    (
        "apiframe-v1-kling-finished",
        "apiframe",
        APIFRAME_V1_KLING_FINISHED,
        {
            "task_id": APIFRAME_TASK,
            "status": "succeeded",
            "progress": 100,
            "model": "kling-2.6-video",
            "media_type": "video",
            "outputs": [("https://...........xxxx.mp4", "video")],
            "error": None,
            "raw_status": "finished",
            "unknown_status": False,
        },
    ),
]
GOLDEN_PARAMS = [pytest.param(p, text, want, id=name) for name, p, text, want in GOLDEN]


@pytest.mark.parametrize(("provider", "text", "expected"), GOLDEN_PARAMS)
def test_normalize_golden_payloads(provider: str, text: str, expected: dict[str, Any]) -> None:
    """Each verbatim provider example normalizes to exactly the expected fields."""
    assert fields(PROVIDERS[provider].normalize(json.loads(text))) == expected


@pytest.mark.parametrize(("provider", "text", "expected"), GOLDEN_PARAMS)
def test_cloudevent_golden_payloads_validate(
    provider: str, text: str, expected: dict[str, Any]
) -> None:
    """The CloudEvent of each verbatim example validates against the published JSON schema."""
    payload = json.loads(text)
    event = cloudevent(provider, PROVIDERS[provider].normalize(payload), payload)
    VALIDATOR.validate(event)
    assert event["source"] == f"/providers/{provider}"
    assert event["type"] == f"generation.{expected['status']}"
    assert event["subject"] == expected["task_id"]
    assert event["time"] == "2026-01-01T00:00:00.123Z"
    data = event["data"]
    assert data["provider"] == provider
    assert data["raw"] == payload
    assert data["metadata"] == {"order": 42}
    assert data["outputs"] == [{"url": u, "media_type": m} for u, m in expected["outputs"]]
    for key in ("task_id", "status", "progress", "model", "media_type", "error"):
        assert data[key] == expected[key], key


def test_schema_validator_refuses_a_malformed_event() -> None:
    """The schema check used above is not vacuous: bad ids, times and progress are refused."""
    payload = json.loads(EVOLINK_VIDEO_COMPLETED)
    good = cloudevent("evolink", Evolink().normalize(payload), payload)
    for path, value in [
        (("id",), "evt_NOT-VALID"),
        (("time",), "yesterday"),
        (("data", "progress"), 101),
        (("data", "status"), "completed"),
        (("data", "outputs"), [{"url": "", "media_type": None}]),
    ]:
        bad = json.loads(json.dumps(good))
        target = bad
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        assert not VALIDATOR.is_valid(bad), path


# --- statuses --------------------------------------------------------------------------------


def test_evolink_request_cancelled_maps_to_canceled() -> None:
    """Evolink's cancel (failed + error.code request_cancelled) is normalized to canceled."""
    payload = json.loads(EVOLINK_VIDEO_FAILED)
    payload["error"] = {"code": "request_cancelled", "message": "Cancelled by user."}
    normalized = Evolink().normalize(payload)
    assert normalized.status == "canceled"
    assert normalized.event_type == "generation.canceled"
    assert normalized.terminal
    assert normalized.error == {"code": "request_cancelled", "message": "Cancelled by user."}
    VALIDATOR.validate(cloudevent("evolink", normalized, payload))


def test_evolink_other_error_codes_stay_failed() -> None:
    """Only request_cancelled turns a failure into a cancel."""
    payload = json.loads(EVOLINK_VIDEO_FAILED)
    payload["error"] = {"code": "generation_timeout", "message": "Timed out."}
    assert Evolink().normalize(payload).status == "failed"


@pytest.mark.parametrize(
    ("provider", "payload", "status"),
    [
        ("evolink", {"id": "t", "status": "COMPLETED"}, "succeeded"),
        ("evolink", {"id": "t", "status": "Processing"}, "running"),
        ("evolink", {"id": "t", "status": " pending "}, "queued"),
        ("evolink", {"id": "t", "status": "Failed"}, "failed"),
        ("evolink", {"id": "t", "status": "CANCELLED"}, "canceled"),
        ("apiframe", {"jobId": "j", "status": "completed"}, "succeeded"),
        ("apiframe", {"jobId": "j", "status": "Queued"}, "queued"),
        ("apiframe", {"jobId": "j", "status": "cancelled"}, "canceled"),
        ("apiframe", {"jobId": "j", "event": "COMPLETED"}, "succeeded"),
        ("apiframe", {"jobId": "j", "event": "Progress"}, "running"),
        ("apiframe", {"task_id": "t", "status": "FINISHED"}, "succeeded"),
        ("apiframe", {"task_id": "t", "status": "PROCESSING"}, "running"),
        ("apiframe", {"task_id": "t", "status": "Pending"}, "queued"),
        ("apiframe", {"task_id": "t", "status": "FAILED"}, "failed"),
    ],
)
def test_normalize_status_words_are_case_insensitive(
    provider: str, payload: dict[str, Any], status: str
) -> None:
    """Provider status words map regardless of case and surrounding blanks."""
    normalized = PROVIDERS[provider].normalize(payload)
    assert normalized.status == status
    assert normalized.unknown_status is False


@pytest.mark.parametrize(
    ("provider", "payload"),
    [
        ("evolink", {"id": "t", "status": "exploding"}),
        ("evolink", {"id": "t"}),
        ("apiframe", {"jobId": "j", "status": "THROTTLED"}),
        ("apiframe", {"jobId": "j", "event": "started"}),
        ("apiframe", {"task_id": "t", "status": "upscaling"}),
        ("apiframe", {"task_id": "t"}),
    ],
)
def test_normalize_unknown_status_maps_to_running(provider: str, payload: dict[str, Any]) -> None:
    """An unrecognised (or absent) status is kept as running with unknown_status, never refused."""
    normalized = PROVIDERS[provider].normalize(payload)
    assert normalized.status == "running"
    assert normalized.unknown_status is True
    assert normalized.error is None
    raw = payload.get("status")
    assert normalized.raw_status == (raw if isinstance(raw, str) else None)
    VALIDATOR.validate(cloudevent(provider, normalized, payload))


# --- Apiframe shapes -------------------------------------------------------------------------


def test_apiframe_v1_accepts_camel_case_task_id() -> None:
    """A v1 payload naming its id ``taskId`` (as a reroll sample does) is accepted."""
    payload = {
        "taskId": APIFRAME_TASK,
        "task_type": "reroll",
        "status": "processing",
        "percentage": "80",
    }
    normalized = Apiframe().normalize(payload)
    assert fields(normalized) == {
        "task_id": APIFRAME_TASK,
        "status": "running",
        "progress": 80,
        "model": "reroll",
        "media_type": None,
        "outputs": [],
        "error": None,
        "raw_status": "processing",
        "unknown_status": False,
    }


def test_apiframe_v1_prefers_snake_case_task_id() -> None:
    """With both spellings present the documented ``task_id`` wins."""
    payload = {"task_id": "snake", "taskId": "camel", "status": "processing"}
    assert Apiframe().normalize(payload).task_id == "snake"


@pytest.mark.parametrize(
    ("percentage", "progress"),
    [
        ("80", 80),
        (80, 80),
        ("40%", 40),
        (" 12 ", 12),
        (55.9, 55),
        (150, 100),
        (-3, 0),
        ("soon", None),
        (None, None),
        (True, None),
    ],
)
def test_apiframe_v1_percentage_forms(percentage: Any, progress: int | None) -> None:
    """``percentage`` as int, float or numeric string becomes a 0-100 int; anything else None."""
    payload = {"task_id": "t", "status": "processing", "percentage": percentage}
    assert Apiframe().normalize(payload).progress == progress


def test_apiframe_v1_grid_only_result_uses_original_image() -> None:
    """A v1 result with no image_urls falls back to original_image_url."""
    payload = {"task_id": "t", "task_type": "imagine", "original_image_url": "https://x/grid.png"}
    normalized = Apiframe().normalize(payload)
    assert normalized.status == "succeeded"
    assert [(o.url, o.media_type) for o in normalized.outputs] == [("https://x/grid.png", "image")]


def test_apiframe_v1_songs_are_audio_outputs() -> None:
    """v1 music results list their tracks under songs[].audio_url."""
    payload = {"task_id": "t", "songs": [{"audio_url": "https://x/a.mp3"}, {"audio_url": ""}]}
    normalized = Apiframe().normalize(payload)
    assert normalized.status == "succeeded"
    assert normalized.media_type == "audio"
    assert [(o.url, o.media_type) for o in normalized.outputs] == [("https://x/a.mp3", "audio")]


def test_apiframe_v1_failed_carries_message() -> None:
    """A failed v1 payload reports its message as the error."""
    payload = {"task_id": "t", "status": "failed", "message": "Banned prompt"}
    normalized = Apiframe().normalize(payload)
    assert normalized.status == "failed"
    assert normalized.error == {"code": "provider_error", "message": "Banned prompt"}


@pytest.mark.parametrize(
    ("result", "outputs", "media_type"),
    [
        (
            {"images": ["https://c/1.png", "https://c/2.png"], "gridUrl": "https://c/grid.png"},
            [("https://c/1.png", "image"), ("https://c/2.png", "image")],
            "image",
        ),
        (
            {"images": [], "gridUrl": "https://c/grid.png"},
            [("https://c/grid.png", "image")],
            "image",
        ),
        ({"gridUrl": "https://c/grid.png"}, [("https://c/grid.png", "image")], "image"),
        ({"videoUrl": "https://c/v.mp4"}, [("https://c/v.mp4", "video")], "video"),
        (
            {"videos": ["https://c/1.mp4", {"url": "https://c/2.mp4"}]},
            [("https://c/1.mp4", "video"), ("https://c/2.mp4", "video")],
            "video",
        ),
        (
            {
                "tracks": [
                    {"audio_url": "https://c/1.mp3"},
                    {"url": "https://c/2.mp3"},
                    "https://c/3.mp3",
                ]
            },
            [
                ("https://c/1.mp3", "audio"),
                ("https://c/2.mp3", "audio"),
                ("https://c/3.mp3", "audio"),
            ],
            "audio",
        ),
        (
            {"videoUrl": "https://c/v.mp4", "videos": ["https://c/v.mp4", "https://c/w.mp4"]},
            [("https://c/v.mp4", "video"), ("https://c/w.mp4", "video")],
            "video",
        ),
        (
            {"images": ["https://c/1.png"], "videoUrl": "https://c/v.mp4"},
            [("https://c/1.png", "image"), ("https://c/v.mp4", "video")],
            None,
        ),
        ({}, [], None),
        ("https://c/clip.mp4", [("https://c/clip.mp4", "video")], "video"),
        ("https://c/result", [("https://c/result", None)], None),
    ],
)
def test_apiframe_v2_result_object_shapes(
    result: Any, outputs: list[tuple[str, str | None]], media_type: str | None
) -> None:
    """v2 ``result`` as a URL string or a per-modality object yields typed, unique outputs."""
    payload = {"event": "completed", "jobId": "j", "status": "COMPLETED", "result": result}
    normalized = Apiframe().normalize(payload)
    assert [(o.url, o.media_type) for o in normalized.outputs] == outputs
    assert normalized.media_type == media_type
    VALIDATOR.validate(cloudevent("apiframe", normalized, payload))


def test_apiframe_v2_status_from_event_when_status_missing() -> None:
    """A v2 payload with only ``event`` takes its status from the event name."""
    normalized = Apiframe().normalize({"event": "failed", "jobId": "j", "error": "boom"})
    assert normalized.status == "failed"
    assert normalized.raw_status == "FAILED"
    assert normalized.error == {"code": "provider_error", "message": "boom"}


def test_apiframe_v2_error_object() -> None:
    """A v2 error given as an object keeps its code and message."""
    payload = {"jobId": "j", "status": "FAILED", "error": {"code": "nsfw", "message": "Blocked"}}
    assert Apiframe().normalize(payload).error == {"code": "nsfw", "message": "Blocked"}


@pytest.mark.parametrize(
    ("provider", "payload"),
    [
        (
            "evolink",
            {
                "id": "t",
                "status": "processing",
                "results": [""],
                "result_data": [{"audio_url": ""}, {"audio_url": None}],
            },
        ),
        (
            "apiframe",
            {
                "jobId": "j",
                "status": "PROCESSING",
                "result": {"images": [], "gridUrl": "", "videoUrl": ""},
            },
        ),
        ("apiframe", {"jobId": "j", "status": "PROCESSING", "result": ""}),
        (
            "apiframe",
            {
                "task_id": "t",
                "status": "processing",
                "image_urls": [""],
                "original_image_url": "",
                "video_url": "",
                "songs": [{"audio_url": ""}],
            },
        ),
    ],
)
def test_normalize_empty_urls_are_no_outputs(provider: str, payload: dict[str, Any]) -> None:
    """Present-but-empty URL fields yield no outputs (the schema needs a non-empty url)."""
    normalized = PROVIDERS[provider].normalize(payload)
    assert normalized.outputs == ()
    assert normalized.media_type is None
    VALIDATOR.validate(cloudevent(provider, normalized, payload))


def test_apiframe_v1_empty_original_image_is_not_a_result() -> None:
    """A status-less v1 payload whose only URL is empty is not taken for a finished task."""
    normalized = Apiframe().normalize({"task_id": "t", "original_image_url": ""})
    assert normalized.status == "running"
    assert normalized.unknown_status is True
    assert normalized.outputs == ()


# --- refused payloads ------------------------------------------------------------------------


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
@pytest.mark.parametrize("payload", [[], ["id"], "task", 7, 1.5, True, None])
def test_normalize_refuses_non_object(provider: str, payload: Any) -> None:
    """A JSON body that is not an object is InvalidPayload (422)."""
    with pytest.raises(InvalidPayload) as caught:
        PROVIDERS[provider].normalize(payload)
    assert caught.value.code == "invalid_payload"
    assert caught.value.status_code == 422


@pytest.mark.parametrize(
    ("provider", "payload"),
    [
        ("evolink", {}),
        ("evolink", {"status": "completed", "results": ["https://x/a.png"]}),
        ("evolink", {"id": ""}),
        ("evolink", {"id": "   "}),
        ("evolink", {"id": None, "task_id": None}),
        ("evolink", {"id": 1.5}),
        ("evolink", {"id": True}),
        ("evolink", {"id": ["task"]}),
        ("apiframe", {}),
        ("apiframe", {"task_type": "imagine", "image_urls": ["https://x/a.png"]}),
        ("apiframe", {"task_id": "", "taskId": " "}),
        ("apiframe", {"event": "completed", "status": "COMPLETED"}),
        ("apiframe", {"jobId": None, "event": "progress"}),
        ("apiframe", {"jobId": {"id": "j"}}),
    ],
)
def test_normalize_refuses_missing_task_id(provider: str, payload: dict[str, Any]) -> None:
    """An object without a usable task id is InvalidPayload."""
    with pytest.raises(InvalidPayload):
        PROVIDERS[provider].normalize(payload)


def test_normalize_accepts_integer_task_id() -> None:
    """An integer task id is kept as its decimal text."""
    assert Evolink().normalize({"id": 123, "status": "pending"}).task_id == "123"
    assert Apiframe().normalize({"task_id": 9, "status": "pending"}).task_id == "9"


# --- Apiframe signatures ---------------------------------------------------------------------

API_KEY_SETTINGS = Settings(apiframe_api_key=Secret("k"), apiframe_signature="required")
BODY = APIFRAME_V2_COMPLETED.strip().encode()


def sign(body: bytes, api_key: str = "k") -> str:
    """HMAC-SHA256 of the raw body keyed with sha256(api_key).digest(), as the README gives it."""
    key = hashlib.sha256(api_key.encode()).digest()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(f"sha256={sign(BODY)}", id="prefixed"),
        pytest.param(sign(BODY), id="bare-hex"),
        pytest.param(f"  sha256={sign(BODY)} ", id="padded"),
        pytest.param(sign(BODY).upper(), id="upper-case-hex"),
    ],
)
def test_apiframe_verify_accepts_valid_signature(header: str) -> None:
    """A v2 signature over the raw body is accepted with or without the sha256= prefix."""
    assert (
        Apiframe().verify({"x-webhook-signature": header}, BODY, API_KEY_SETTINGS, now=NOW) is None
    )


def test_apiframe_verify_reads_headers_case_insensitively() -> None:
    """Starlette request headers match whatever case the provider sent."""
    headers = Headers(headers={"X-Webhook-Signature": f"sha256={sign(BODY)}"})
    assert Apiframe().verify(headers, BODY, API_KEY_SETTINGS, now=NOW) is None


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        pytest.param({}, BODY, id="missing"),
        pytest.param({"x-webhook-signature": ""}, BODY, id="empty"),
        pytest.param({"x-webhook-signature": "sha256="}, BODY, id="prefix-only"),
        pytest.param({"x-webhook-signature": "sha256=" + "0" * 64}, BODY, id="zeros"),
        pytest.param(
            {"x-webhook-signature": f"sha256={sign(BODY, 'other')}"}, BODY, id="other-key"
        ),
        pytest.param(
            {"x-webhook-signature": f"sha256={sign(BODY)}"}, BODY + b" ", id="different-body"
        ),
        pytest.param({"x-webhook-signature": f"sha256={sign(BODY)[:-2]}"}, BODY, id="truncated"),
        pytest.param({"x-webhook-signature": f"sha1={sign(BODY)}"}, BODY, id="other-prefix"),
        pytest.param({"x-webhook-signature": "sha256=é" + sign(BODY)[1:]}, BODY, id="non-ascii"),
    ],
)
def test_apiframe_verify_refuses_bad_signature(headers: dict[str, str], body: bytes) -> None:
    """Signatures required: missing, wrong or foreign-body ones raise InvalidSignature (401)."""
    with pytest.raises(InvalidSignature) as caught:
        Apiframe().verify(headers, body, API_KEY_SETTINGS, now=NOW)
    assert caught.value.code == "invalid_signature"
    assert caught.value.status_code == 401


def test_apiframe_verify_accepts_anything_when_unconfigured() -> None:
    """With neither an API key nor a webhook secret configured there is nothing to check."""
    assert Apiframe().verify({}, BODY, Settings(), now=NOW) is None
    assert Apiframe().verify({"x-webhook-signature": "junk"}, BODY, Settings(), now=NOW) is None


def test_evolink_verify_accepts_anything() -> None:
    """Evolink signs nothing: its callbacks rely on the URL token alone."""
    assert Evolink().verify({}, b"{}", API_KEY_SETTINGS, now=NOW) is None


SECRET_SETTINGS = Settings(apiframe_webhook_secret=Secret("s3cret"))
BOTH_SETTINGS = Settings(
    apiframe_api_key=Secret("k"),
    apiframe_signature="required",
    apiframe_webhook_secret=Secret("s3cret"),
)
V1_BODY = APIFRAME_V1_KLING_FINISHED.strip().encode()


@pytest.mark.parametrize("settings", [SECRET_SETTINGS, BOTH_SETTINGS], ids=["secret", "both"])
def test_apiframe_verify_accepts_v1_secret(settings: Settings) -> None:
    """A v1 callback echoing the configured x-webhook-secret is accepted."""
    assert Apiframe().verify({"x-webhook-secret": "s3cret"}, V1_BODY, settings, now=NOW) is None


@pytest.mark.parametrize("settings", [SECRET_SETTINGS, BOTH_SETTINGS], ids=["secret", "both"])
@pytest.mark.parametrize("presented", ["", "wrong", "s3cret ", "S3CRET", "s3cre"])
def test_apiframe_verify_refuses_wrong_v1_secret(settings: Settings, presented: str) -> None:
    """A wrong x-webhook-secret is refused, even next to a valid v2 signature."""
    headers = {"x-webhook-secret": presented, "x-webhook-signature": sign(V1_BODY)}
    with pytest.raises(InvalidSignature):
        Apiframe().verify(headers, V1_BODY, settings, now=NOW)


def test_apiframe_verify_refuses_missing_v1_secret() -> None:
    """With only a webhook secret configured, a callback without it is refused."""
    with pytest.raises(InvalidSignature):
        Apiframe().verify({}, V1_BODY, SECRET_SETTINGS, now=NOW)
    with pytest.raises(InvalidSignature):
        Apiframe().verify({"x-webhook-signature": sign(V1_BODY)}, V1_BODY, SECRET_SETTINGS, now=NOW)


def test_apiframe_verify_both_configured_checks_v2_signature() -> None:
    """Signatures required and a v1 secret set: a v2 callback must carry a valid signature."""
    assert (
        Apiframe().verify({"x-webhook-signature": sign(BODY)}, BODY, BOTH_SETTINGS, now=NOW) is None
    )
    with pytest.raises(InvalidSignature):
        Apiframe().verify({}, BODY, BOTH_SETTINGS, now=NOW)
    with pytest.raises(InvalidSignature):
        Apiframe().verify(
            {"x-webhook-signature": sign(BODY, "other")}, BODY, BOTH_SETTINGS, now=NOW
        )


# --- callback-URL tokens ---------------------------------------------------------------------

EXPIRES = int(NOW) + 3600


def test_tokens_round_trip() -> None:
    """A minted token verifies to its url_id on the provider it was minted for."""
    tokens = CallbackTokens(["key"])
    url_id = CallbackTokens.new_url_id()
    token = tokens.mint("evolink", url_id, EXPIRES)
    assert tokens.verify("evolink", token, NOW) == url_id
    # A fresh instance with the same key (a restarted relay) verifies it too.
    assert CallbackTokens(["key"]).verify("evolink", token, NOW) == url_id


def test_tokens_are_url_safe() -> None:
    """Tokens travel in a URL path: only unreserved characters."""
    tokens = CallbackTokens(["key"])
    for _ in range(50):
        token = tokens.mint("apiframe", CallbackTokens.new_url_id(), EXPIRES)
        assert re.fullmatch(r"[A-Za-z0-9._-]+", token), token
        assert len(token) <= 512


def test_tokens_refuse_other_provider() -> None:
    """A token minted for evolink is refused on apiframe."""
    tokens = CallbackTokens(["key"])
    token = tokens.mint("evolink", "u1", EXPIRES)
    with pytest.raises(InvalidToken) as caught:
        tokens.verify("apiframe", token, NOW)
    assert caught.value.code == "invalid_token"
    assert caught.value.status_code == 401


def test_tokens_accept_only_the_canonical_signature() -> None:
    """Other base64 spellings of the same signature bytes (unused bits of the last character
    set, padding added) are refused, and take no place in the verified cache."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    tokens = CallbackTokens(["key"])
    checked = 0
    for n in range(8):
        token = tokens.mint("evolink", f"u{n}", EXPIRES)
        assert tokens.verify("evolink", token, NOW) == f"u{n}"
        head, signature = token[:-1], token[-1]
        # 32 bytes are 43 characters: the last one carries 4 bits and 2 unused ones.
        spellings = {alphabet[alphabet.index(signature) ^ bits] for bits in (1, 2, 3)}
        for variant in [head + other for other in spellings] + [token + "="]:
            with pytest.raises(InvalidToken):
                tokens.verify("evolink", variant, NOW)
            checked += 1
    assert checked == 32
    assert len(tokens._verified) == 8


def test_tokens_refuse_tampering() -> None:
    """Any change to the url_id, the expiry or the signature is InvalidToken."""
    tokens = CallbackTokens(["key"])
    token = tokens.mint("evolink", "u1", EXPIRES)
    url_id, expiry, signature = token.split(".")
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    forged = [
        f"u2.{expiry}.{signature}",
        f"{url_id}.{EXPIRES + 86_400:x}.{signature}",
        f"{url_id}.{expiry}.{signature[:middle]}{flipped}{signature[middle + 1 :]}",
        f"{url_id}.{expiry}.{signature[:-4]}",
        f"{url_id}.{expiry}",
        f"{url_id}.{expiry}.",
        token + "x",
        "",
        "...",
        token + "." * 600,
    ]
    for candidate in forged:
        with pytest.raises(InvalidToken):
            tokens.verify("evolink", candidate, NOW)
    with pytest.raises(InvalidToken):
        CallbackTokens(["other-key"]).verify("evolink", token, NOW)


def test_tokens_expire() -> None:
    """A genuine token is TokenExpired from its expiry second on."""
    tokens = CallbackTokens(["key"])
    token = tokens.mint("evolink", "u1", EXPIRES)
    assert tokens.verify("evolink", token, EXPIRES - 0.001) == "u1"
    for now in (EXPIRES, EXPIRES + 1, EXPIRES + 10**9):
        with pytest.raises(TokenExpired) as caught:
            tokens.verify("evolink", token, now)
        assert caught.value.code == "token_expired"


def test_tokens_check_signature_before_expiry() -> None:
    """A forged token is InvalidToken even when its claimed expiry has passed."""
    tokens = CallbackTokens(["key"])
    _, expiry, signature = tokens.mint("evolink", "u1", EXPIRES).split(".")
    with pytest.raises(InvalidToken):
        tokens.verify("evolink", f"u2.{expiry}.{signature}", EXPIRES + 1)


def test_tokens_key_rotation() -> None:
    """Newest key signs, every listed key verifies, and a retired key's tokens are refused."""
    old_token = CallbackTokens(["old"]).mint("evolink", "before", EXPIRES)
    rotated = CallbackTokens(["new", "old"])
    assert rotated.verify("evolink", old_token, NOW) == "before"

    new_token = rotated.mint("evolink", "after", EXPIRES)
    retired = CallbackTokens(["new"])
    assert retired.verify("evolink", new_token, NOW) == "after"
    with pytest.raises(InvalidToken):
        retired.verify("evolink", old_token, NOW)
    # Signed with "new", not "old": a relay knowing only the old key refuses it.
    with pytest.raises(InvalidToken):
        CallbackTokens(["old"]).verify("evolink", new_token, NOW)


def test_tokens_need_a_key() -> None:
    """CallbackTokens without any key is a configuration error."""
    with pytest.raises(ValueError):
        CallbackTokens([])

"""The provider port: how one provider's callbacks are checked and normalized.

A provider module defines a ``Provider`` subclass with a ``name``, a ``normalize`` that turns a
parsed payload into a ``Normalized`` update, and, where the provider signs its callbacks, a
``verify`` that checks the raw body before anything parses it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.errors import InvalidPayload, Unauthorized
from service.events import MEDIA_TYPES, Normalized, Output
from service.settings import Settings


class InvalidSignature(Unauthorized):
    """The callback's signature is missing or does not match its body."""

    code = "invalid_signature"


@dataclass(frozen=True, slots=True)
class StatusWord:
    """A provider's status word and what it means to the relay."""

    #: The word as the provider sent it, when it sent one as text.
    raw: str | None
    #: The relay's status.
    status: str
    #: True when the relay does not know the word (the status is then ``running``).
    unknown: bool = False


class Provider:
    """One provider's callback rules. Subclasses set ``name`` and implement ``normalize``."""

    name: str = ""
    #: The provider's own status words (lower case) -> the relay's status.
    statuses: Mapping[str, str] = {}
    #: False for providers that never call back: their tasks are only watched (polled).
    sends_callbacks: bool = True

    def accepts_tokenless(self, settings: Settings) -> bool:
        """Whether callbacks may arrive at ``/callbacks/<name>`` without a URL token.

        Only a provider whose own signature then authenticates every callback says yes.
        """
        return False

    def tokenless_refusal(self, settings: Settings) -> str:
        """Why a callback at ``/callbacks/<name>`` without a URL token is refused."""
        return (
            f"Callbacks to /callbacks/{self.name} need the token of a callback URL minted by "
            "this relay (POST /v1/callback-urls)."
        )

    def verify(
        self, headers: Mapping[str, str], body: bytes, settings: Settings, *, now: float
    ) -> None:
        """Check the provider's own signature over the raw ``body`` at ``now`` (Unix seconds,
        from the relay's clock: signatures carry a timestamp); raise ``Unauthorized``.

        The default accepts: the callback URL's token is then the only source check.
        """

    def normalize(self, payload: Any) -> Normalized:
        """Turn one parsed callback body into a ``Normalized`` update.

        Raises:
            InvalidPayload: not an object, or no task id.
        """
        raise NotImplementedError

    def map_status(self, raw: Any) -> StatusWord:
        """What the provider's word means, compared in lower case with ``-`` and spaces read as
        ``_``: the provider's own words first, then the failure and cancel words any provider
        may use (``ENDINGS``). Unknown words (and a missing one) map to running."""
        if not isinstance(raw, str):
            return StatusWord(None, "running", unknown=True)
        word = raw.strip().lower()
        status = self.statuses.get(word)
        if status is None:
            status = ENDINGS.get(word.replace("-", "_").replace(" ", "_"))
        if status is None:
            return StatusWord(raw, "running", unknown=True)
        return StatusWord(raw, status)


#: Words that end a task, from any provider: none of the pages lists a failure word beyond
#: "failed" (Reve Art's lists none at all), and a word the relay does not know keeps a task
#: running (a watch would poll it until its deadline), so the usual ones are all taken.
ENDINGS: Mapping[str, str] = {
    **dict.fromkeys(
        (
            "failed",
            "failure",
            "fail",
            "error",
            "errored",
            "timeout",
            "timed_out",
            "expired",
            "rejected",
            "aborted",
        ),
        "failed",
    ),
    **dict.fromkeys(("cancelled", "canceled", "cancel"), "canceled"),
}


def require_object(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise InvalidPayload("The callback body must be a JSON object.")
    return payload


#: The longest task id the relay takes. The providers' ids are a few dozen characters; the bound
#: keeps every id storable in both stores' indexes and usable as one segment of a status URL.
MAX_TASK_ID_LENGTH = 256


def task_id_problem(task_id: str) -> str | None:
    """Why ``task_id`` (already stripped) cannot be a task id, or None if it can.

    The rule is the same for callbacks and for watches, on both stores: 1 to 256 characters,
    no control characters (PostgreSQL cannot store NUL in text, and none belongs in an id), and
    not only dots (``.`` and ``..`` would vanish from a status URL's path, sending the API key to
    another endpoint of the provider).
    """
    if not task_id:
        return "is empty"
    if len(task_id) > MAX_TASK_ID_LENGTH:
        return f"is longer than {MAX_TASK_ID_LENGTH} characters"
    if _CONTROL.search(task_id):
        return "contains a control character or a lone surrogate"
    if not task_id.strip("."):
        return "is only dots"
    return None


#: Control characters, and lone surrogates (not text: no store or URL can carry them).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def task_id_from(payload: Mapping[str, Any], *keys: str) -> str:
    """The first of ``keys`` that holds a task id (a non-empty string or an integer).

    Raises:
        InvalidPayload: no key holds one (``invalid_payload``), or the id it holds breaks the
            rule of ``task_id_problem`` (``invalid_task_id``).
    """
    for key in keys:
        value = payload.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str) and value.strip():
            task_id = value.strip()
            problem = task_id_problem(task_id)
            if problem is not None:
                raise InvalidPayload(f"The task id in {key!r} {problem}.", code="invalid_task_id")
            return task_id
        if value is not None and not isinstance(value, str):
            # A number with a fraction, a boolean, a list or an object: not an id to guess at.
            raise InvalidPayload(f"The task id in {key!r} must be a string or an integer.")
    raise InvalidPayload(f"The callback body has no task id (looked for {', '.join(keys)}).")


def status_from(payload: Mapping[str, Any], key: str = "status") -> str | None:
    """The provider's status word, or None when there is none (absent or null).

    Raises:
        InvalidPayload: the field holds something other than a string.
    """
    value = payload.get(key)
    if value is None or isinstance(value, str):
        return value
    raise InvalidPayload(f"The status in {key!r} must be a string.")


def progress_from(value: Any) -> int | None:
    """0-100 from an int, a float or a numeric string such as ``"80"`` or ``"80%"``."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        value = value.strip().rstrip("%").strip()
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value):
        return max(0, min(100, int(value)))
    return None


def text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def media_type_from(value: Any) -> str | None:
    return value if value in MEDIA_TYPES else None


_EXTENSIONS = {
    "image": (".png", ".jpg", ".jpeg", ".webp", ".gif", ".avif"),
    "video": (".mp4", ".webm", ".mov", ".m4v"),
    "audio": (".mp3", ".wav", ".m4a", ".ogg", ".flac", ".aac"),
}


def guess_media_type(url: str) -> str | None:
    """The media type a URL's extension names (query string aside), or None."""
    path = url.split("?", 1)[0].lower()
    for media_type, extensions in _EXTENSIONS.items():
        if path.endswith(extensions):
            return media_type
    return None


#: Words in a model or endpoint name that say what it makes, checked in this order (so that
#: "kling-2.6-video" is a video and "qwen-image" an image). Only used for a URL whose extension
#: says nothing.
_NAME_WORDS = (
    ("video", ("video", "kling", "seedance", "veo", "hailuo", "runway")),
    ("audio", ("audio", "music", "song", "suno", "udio")),
    ("image", ("image", "imagine", "midjourney", "reroll", "upscale", "reve", "flux")),
)


def media_type_of_name(name: Any) -> str | None:
    """What a model or endpoint name (``reve-create``, ``kling-2.6-video``) says it makes."""
    if not isinstance(name, str):
        return None
    lowered = name.lower()
    for media_type, words in _NAME_WORDS:
        if any(word in lowered for word in words):
            return media_type
    return None


def output(url: str, said: str | None) -> Output:
    """An output typed by its URL's extension, else by what the provider ``said`` (never
    ``text``: an output is a file)."""
    return Output(url, guess_media_type(url) or (said if said != "text" else None))


#: Fields of a result item that hold its URL, most specific first.
_URL_FIELDS = ("url", "audio_url", "audioUrl", "video_url", "videoUrl", "image_url", "imageUrl")


def urls_to_outputs(urls: Any, said: str | None) -> list[Output]:
    """Outputs from a list whose items are URL strings or objects with a URL field; typed by
    ``output``."""
    outputs: list[Output] = []
    if not isinstance(urls, list):
        return outputs
    for item in urls:
        url = item
        if isinstance(item, dict):
            url = next((item[key] for key in _URL_FIELDS if text_or_none(item.get(key))), None)
        if isinstance(url, str) and url:
            outputs.append(output(url, said))
    return outputs


def media_type_of(outputs: tuple[Output, ...], said: str | None = None) -> str | None:
    """The event's media type: the one all typed outputs share, else what the provider said."""
    media_types = {item.media_type for item in outputs} - {None}
    if len(media_types) == 1:
        return media_types.pop()
    return said if not media_types else None


def unique(outputs: list[Output]) -> tuple[Output, ...]:
    seen: set[str] = set()
    kept = []
    for output in outputs:
        if output.url not in seen:
            seen.add(output.url)
            kept.append(output)
    return tuple(kept)


def error_from(value: Any, status: str, provider: str) -> dict[str, str] | None:
    """``{"code", "message"}`` from an error object or string; failed updates always get one."""
    if isinstance(value, dict):
        code = value.get("code")
        message = value.get("message")
        return {
            "code": str(code) if code not in (None, "") else "provider_error",
            "message": str(message) if message not in (None, "") else str(code or "error"),
        }
    if isinstance(value, str) and value:
        return {"code": "provider_error", "message": value}
    if status == "failed":
        return {"code": "provider_error", "message": f"{provider} reported the task as failed."}
    return None


def task_report(
    provider_label: str,
    *,
    task_id: str,
    word: StatusWord,
    outputs: tuple[Output, ...],
    media_type: str | None,
    progress: Any,
    model: str | None,
    error: Any,
) -> Normalized:
    """The ``Normalized`` of what a provider reported on a task, once its fields are picked:
    ``progress`` read as a percentage, ``error`` kept only when the task failed or was canceled
    (a failure always gets one)."""
    return Normalized(
        task_id=task_id,
        status=word.status,
        progress=progress_from(progress),
        model=model,
        media_type=media_type,
        outputs=outputs,
        error=error_from(error, word.status, provider_label)
        if word.status in ("failed", "canceled")
        else None,
        raw_status=word.raw,
        unknown_status=word.unknown,
    )


def job_update(
    provider_label: str,
    body: dict[str, Any],
    *,
    task_id: str,
    word: StatusWord,
    outputs: tuple[Output, ...],
) -> Normalized:
    """The ``Normalized`` of a job object with ``progress``, ``model`` and ``error`` fields
    (Apiframe v2, Rivya): one media type if all outputs agree, an error only when it failed."""
    return task_report(
        provider_label,
        task_id=task_id,
        word=word,
        outputs=outputs,
        media_type=media_type_of(outputs),
        progress=body.get("progress"),
        model=text_or_none(body.get("model")),
        error=body.get("error"),
    )

"""The provider port: how one provider's callbacks are checked and normalized.

A provider module defines a ``Provider`` subclass with a ``name``, a ``normalize`` that turns a
parsed payload into a ``Normalized`` update, and, where the provider signs its callbacks, a
``verify`` that checks the raw body before anything parses it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from service.errors import InvalidPayload, Unauthorized
from service.events import MEDIA_TYPES, Normalized, Output
from service.settings import Settings


class InvalidSignature(Unauthorized):
    """The callback's signature is missing or does not match its body."""

    code = "invalid_signature"


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

    def verify(self, headers: Mapping[str, str], body: bytes, settings: Settings) -> None:
        """Check the provider's own signature over the raw ``body``; raise ``Unauthorized``.

        The default accepts: the callback URL's token is then the only source check.
        """

    def normalize(self, payload: Any) -> Normalized:
        """Turn one parsed callback body into a ``Normalized`` update.

        Raises:
            InvalidPayload: not an object, or no task id.
        """
        raise NotImplementedError

    def map_status(self, raw: Any) -> tuple[str, bool]:
        """(relay status, unknown?) for the provider's word; unknown words map to running."""
        if isinstance(raw, str) and raw.strip().lower() in self.statuses:
            return self.statuses[raw.strip().lower()], False
        return "running", True


def require_object(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise InvalidPayload("The callback body must be a JSON object.")
    return payload


def task_id_from(payload: Mapping[str, Any], *keys: str) -> str:
    for key in keys:
        value = payload.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
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
    path = url.split("?", 1)[0].lower()
    for media_type, extensions in _EXTENSIONS.items():
        if path.endswith(extensions):
            return media_type
    return None


def urls_to_outputs(urls: Any, media_type: str | None) -> list[Output]:
    """Outputs from a list whose items are URL strings or objects with a ``url``-like field."""
    outputs: list[Output] = []
    if not isinstance(urls, list):
        return outputs
    for item in urls:
        url = item
        if isinstance(item, dict):
            url = item.get("url") or item.get("audio_url") or item.get("video_url")
        if isinstance(url, str) and url:
            outputs.append(Output(url, media_type or guess_media_type(url)))
    return outputs


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


def job_update(
    provider_label: str,
    body: dict[str, Any],
    *,
    task_id: str,
    raw_status: Any,
    status: str,
    unknown: bool,
    outputs: tuple[Output, ...],
) -> Normalized:
    """The ``Normalized`` of a job object with ``progress``, ``model`` and ``error`` fields
    (Apiframe v2, Rivya): one media type if all outputs agree, an error only when it failed."""
    media_types = {output.media_type for output in outputs} - {None}
    return Normalized(
        task_id=task_id,
        status=status,
        progress=progress_from(body.get("progress")),
        model=text_or_none(body.get("model")),
        media_type=media_types.pop() if len(media_types) == 1 else None,
        outputs=outputs,
        error=error_from(body.get("error"), status, provider_label)
        if status in ("failed", "canceled")
        else None,
        raw_status=raw_status if isinstance(raw_status, str) else None,
        unknown_status=unknown,
    )

"""Apiframe: v2 webhooks (HMAC-signed, camelCase) and v1 webhooks (static secret, snake_case).

The v2 job object of ``GET /v2/jobs/{id}`` (polled by watches) normalizes like a v2 webhook.

v2 signs the raw body: ``X-Webhook-Signature: sha256=<hex>`` (or bare hex) is HMAC-SHA256 keyed
with the SHA-256 digest of the API key. v1 echoes the per-job ``webhook_secret`` in
``x-webhook-secret``. Both payload shapes arrive at the same URL and are told apart by field.

Apiframe's own pages document no signature at all (the HMAC scheme comes from docs-v2 and its
SDK), so whether one is demanded is a setting of its own, ``RELAY_APIFRAME_SIGNATURE``, apart
from the API key that watches poll with; see ``Apiframe.verify``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

import orjson

from service.events import Normalized, Output
from service.providers.base import (
    InvalidSignature,
    Provider,
    StatusWord,
    job_update,
    media_type_of,
    media_type_of_name,
    output,
    require_object,
    status_from,
    task_id_from,
    task_report,
    text_or_none,
    unique,
    urls_to_outputs,
)
from service.settings import Settings

__all__ = ["Apiframe", "InvalidSignature", "apiframe_signature"]


def apiframe_signature(api_key: str, body: bytes) -> str:
    """The hex signature Apiframe v2 sends for ``body``."""
    key = hashlib.sha256(api_key.encode()).digest()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


class Apiframe(Provider):
    name = "apiframe"
    statuses = {
        "queued": "queued",
        "pending": "queued",
        "processing": "running",
        "running": "running",
        "completed": "succeeded",
        "finished": "succeeded",
        "succeeded": "succeeded",
        "failed": "failed",
        "cancelled": "canceled",
        "canceled": "canceled",
    }

    def verify(
        self, headers: Mapping[str, str], body: bytes, settings: Settings, *, now: float
    ) -> None:
        """Each credential a callback presents must be right; what a callback must present
        depends on its version (the URL token, checked before, is required of all).

        * ``X-Webhook-Signature`` (v2), when present, must match the body, unless no API key
          is configured (nothing to check with). ``required``: a v2 callback without it is
          refused.
        * ``x-webhook-secret`` (v1), when present and ``RELAY_APIFRAME_WEBHOOK_SECRET`` is set,
          must equal it; a v1 callback without it is then refused. v2 rules never apply to v1.
        """
        api_key, mode = settings.apiframe_api_key, settings.apiframe_signature
        secret = settings.apiframe_webhook_secret
        signature = headers.get("x-webhook-signature")
        presented_secret = headers.get("x-webhook-secret")
        signed = False
        if signature is not None and api_key is not None:
            presented = signature.strip().removeprefix("sha256=").lower()
            expected = apiframe_signature(str(api_key), body)
            if not hmac.compare_digest(presented.encode(), expected.encode()):
                raise InvalidSignature("The X-Webhook-Signature header does not match the body.")
            signed = True
        if secret is not None and presented_secret is not None:
            if not hmac.compare_digest(presented_secret.encode(), str(secret).encode()):
                raise InvalidSignature("The x-webhook-secret header is wrong.")
        needs_signature = mode == "required" and not signed
        needs_secret = secret is not None and presented_secret is None
        if not (needs_signature or needs_secret):
            return
        # Which rules apply depends on the version, told by the body's fields (it is read here
        # only for callbacks that presented too little to pass either way).
        if _is_v1_body(body):
            if needs_secret:
                raise InvalidSignature(
                    "This Apiframe v1 callback has no x-webhook-secret header "
                    "(RELAY_APIFRAME_WEBHOOK_SECRET is set)."
                )
        elif needs_signature:
            raise InvalidSignature(
                "This Apiframe v2 callback has no valid X-Webhook-Signature "
                "(RELAY_APIFRAME_SIGNATURE=required)."
            )

    def normalize(self, payload: Any) -> Normalized:
        body = require_object(payload)
        if _is_v1(body):
            return self._normalize_v1(body)
        return self._normalize_v2(body)

    def _normalize_v2(self, body: dict[str, Any]) -> Normalized:
        task_id = task_id_from(body, "jobId", "id")
        raw_status = status_from(body)
        if raw_status is None and isinstance(body.get("event"), str):
            raw_status = {
                "completed": "COMPLETED",
                "failed": "FAILED",
                "progress": "PROCESSING",
            }.get(body["event"].lower())
        word = self.map_status(raw_status)
        return job_update(
            "Apiframe",
            body,
            task_id=task_id,
            word=word,
            outputs=_v2_outputs(body.get("result"), media_type_of_name(body.get("model"))),
        )

    def _normalize_v1(self, body: dict[str, Any]) -> Normalized:
        task_id = task_id_from(body, "task_id", "taskId")
        outputs = urls_to_outputs(body.get("image_urls"), "image")
        # text_or_none, not isinstance: an empty URL is no output (and no proof of success).
        if not outputs and text_or_none(body.get("original_image_url")):
            outputs = [output(body["original_image_url"], "image")]
        if text_or_none(body.get("video_url")):
            outputs.append(output(body["video_url"], "video"))
        outputs += urls_to_outputs(body.get("songs"), "audio")
        raw_status = status_from(body)
        if raw_status is None and outputs:
            word = StatusWord(None, "succeeded")  # v1 results may carry no status at all
        else:
            word = self.map_status(raw_status)
        model = text_or_none(body.get("model")) or text_or_none(body.get("task_type"))
        kept = unique(outputs)
        return task_report(
            "Apiframe",
            task_id=task_id,
            word=word,
            outputs=kept,
            media_type=media_type_of(kept),
            progress=body.get("percentage", body.get("progress")),
            model=model,
            error=body.get("error") or body.get("message"),
        )


def _is_v1(body: dict[str, Any]) -> bool:
    """v1 payloads name their task task_id (or taskId); v2 webhooks carry jobId and event, and
    v2's ``GET /v2/jobs/{id}`` answers the job with an ``id``."""
    if "jobId" in body or "event" in body:
        return False
    has_v1_id = body.get("task_id") is not None or body.get("taskId") is not None
    return has_v1_id or "id" not in body


def _is_v1_body(body: bytes) -> bool:
    """Whether a raw callback body is a v1 payload (a body that does not parse is not)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(payload, dict) and _is_v1(payload)


def _v2_outputs(result: Any, said: str | None) -> tuple[Output, ...]:
    """Every shape of v2's ``result``: a URL, a list of URLs, ``{"url"}``, or by modality
    ``{"images", "gridUrl"}``, ``{"videoUrl"}``, ``{"videos"}``, ``{"tracks"}``. ``said`` is
    what the job's model says it makes, for URLs without a telling extension."""
    if isinstance(result, str):
        return (output(result, said),) if result else ()
    if isinstance(result, list):
        return unique(urls_to_outputs(result, said))
    if not isinstance(result, dict):
        return ()
    outputs = []
    if text_or_none(result.get("url")):
        outputs.append(output(result["url"], said))
    outputs += urls_to_outputs(result.get("images"), "image")
    # The grid is the four images in one: a result of its own only when they are not listed.
    if not outputs and text_or_none(result.get("gridUrl")):
        outputs.append(output(result["gridUrl"], "image"))
    if text_or_none(result.get("videoUrl")):
        outputs.append(output(result["videoUrl"], "video"))
    outputs += urls_to_outputs(result.get("videos"), "video")
    outputs += urls_to_outputs(result.get("tracks"), "audio")
    return unique(outputs)

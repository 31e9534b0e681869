"""Rivya AI: account-level webhooks signed with a ``whsec_`` secret; generation objects.

Rivya registers one webhook URL per account (``POST /api/v1/webhooks``), so its callbacks may
arrive at ``/callbacks/rivya`` without a URL token when ``RELAY_RIVYA_WEBHOOK_SECRET`` is set:
the signature is then the source check. Rivya's signature header format is not public; the
``whsec_`` prefix of its secrets suggests Standard Webhooks, which ``RivyaSignature`` checks.
If Rivya turns out to differ, that one class is all that changes.

The body is "the same public generation serializer as the status endpoint"
(``GET /api/v1/generations/{id}``), bare or wrapped in an event envelope ``{"type", "data"}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from service.errors import Unauthorized
from service.events import Normalized, Output
from service.providers.base import (
    InvalidSignature,
    Provider,
    job_update,
    media_type_of_name,
    output,
    require_object,
    status_from,
    task_id_from,
    text_or_none,
    unique,
    urls_to_outputs,
)
from service.settings import Settings
from service.signing import matches, secret_key

#: A ``webhook-timestamp`` value: Unix seconds in plain digits, no sign, no leading zero.
_UNIX_SECONDS = re.compile(r"[1-9][0-9]{0,11}")


class StaleTimestamp(Unauthorized):
    """The webhook's timestamp is missing or more than five minutes away from now."""

    code = "stale_timestamp"


class RivyaSignature:
    """Standard Webhooks verification: ``v1,<base64 HMAC-SHA256 of "{id}.{ts}.{body}">``.

    The key is the base64-decoded secret after ``whsec_``; the timestamp (Unix seconds) must be
    within ``tolerance`` seconds of now, either way, so a captured request cannot be replayed
    later. Header names and the tolerance are class attributes, easy to change.
    """

    id_header = "webhook-id"
    timestamp_header = "webhook-timestamp"
    signature_header = "webhook-signature"
    tolerance = 300

    def __init__(self, secret: str) -> None:
        self.key = secret_key(secret)

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        """Raise ``InvalidSignature`` or ``StaleTimestamp`` unless ``body`` is genuine."""
        msg_id = headers.get(self.id_header, "")
        signature = headers.get(self.signature_header, "")
        if not msg_id or not signature:
            raise InvalidSignature(
                f"The {self.id_header} and {self.signature_header} headers are required."
            )
        raw = headers.get(self.timestamp_header, "")
        # Digits only, as the sender wrote them: int() would also take "+", "_", spaces and
        # leading zeros, each another spelling of a timestamp that the signature covers once.
        if not _UNIX_SECONDS.fullmatch(raw):
            raise StaleTimestamp(
                f"The {self.timestamp_header} header is missing or not Unix seconds."
            )
        timestamp = int(raw)
        if abs(now - timestamp) > self.tolerance:
            raise StaleTimestamp()
        if not matches(signature, self.key, msg_id, timestamp, body):
            raise InvalidSignature()


class Rivya(Provider):
    name = "rivya"
    statuses = {
        "queued": "queued",
        "pending": "queued",
        "processing": "running",
        "running": "running",
        "succeeded": "succeeded",
        "completed": "succeeded",
        "failed": "failed",
        "canceled": "canceled",
        "cancelled": "canceled",
    }

    def accepts_tokenless(self, settings: Settings) -> bool:
        return settings.rivya_webhook_secret is not None

    def tokenless_refusal(self, settings: Settings) -> str:
        return (
            "Callbacks to /callbacks/rivya without a token are taken only with "
            "RELAY_RIVYA_WEBHOOK_SECRET set (the whsec_ signing secret Rivya showed when the "
            "webhook was registered), and it is not set on this relay."
        )

    def verify(
        self, headers: Mapping[str, str], body: bytes, settings: Settings, *, now: float
    ) -> None:
        secret = settings.rivya_webhook_secret
        if secret is None:
            return  # a tokenized URL; the token is the source check
        RivyaSignature(str(secret)).verify(headers, body, now)

    def normalize(self, payload: Any) -> Normalized:
        body = require_object(payload)
        event_type = None
        if isinstance(body.get("data"), dict) and "status" not in body:
            # {"type": "generation.succeeded", "data": {...generation...}}
            event_type = text_or_none(body.get("type"))
            body = body["data"]
        task_id = task_id_from(body, "id", "task_id", "taskId")
        raw_status = status_from(body)
        if raw_status is None and event_type is not None:
            raw_status = event_type.removeprefix("generation.")
        word = self.map_status(raw_status)
        return job_update(
            "Rivya",
            body,
            task_id=task_id,
            word=word,
            outputs=_outputs(body.get("result"), media_type_of_name(body.get("model"))),
        )


def _outputs(result: Any, said: str | None) -> tuple[Output, ...]:
    """``result.urls`` (``result.primary_url`` when there is no list)."""
    if not isinstance(result, dict):
        return ()
    outputs = urls_to_outputs(result.get("urls"), said)
    primary = text_or_none(result.get("primary_url"))
    if not outputs and primary:
        outputs.append(output(primary, said))
    return unique(outputs)

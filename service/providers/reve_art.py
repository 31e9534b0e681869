"""Reve Art (reve-art.com): no callbacks at all; tasks are watched through the status API.

``POST /v1/reve-image/generate`` with ``"async": true`` answers ``{"id", "status": "pending"}``;
``GET /v1/reve-image/status/{id}`` (Bearer) answers the image object
``{"id", "status", "url", "metadata": {"prompt", "width", "height", "model", "created_at"}}``.
The documented statuses are ``pending`` and ``completed``; failure words are not documented,
so the usual ones are accepted and anything else maps to ``running`` (and is logged).
"""

from __future__ import annotations

from typing import Any

from service.events import Normalized, Output
from service.providers.base import (
    Provider,
    error_from,
    output,
    progress_from,
    require_object,
    status_from,
    task_id_from,
    text_or_none,
    unique,
    urls_to_outputs,
)


class ReveArt(Provider):
    name = "reve-art"
    sends_callbacks = False
    statuses = {
        "pending": "queued",
        "queued": "queued",
        "processing": "running",
        "running": "running",
        "in_progress": "running",
        "generating": "running",
        "completed": "succeeded",
        "succeeded": "succeeded",
        "success": "succeeded",
        "failed": "failed",
        "error": "failed",
        "canceled": "canceled",
        "cancelled": "canceled",
    }

    def normalize(self, payload: Any) -> Normalized:
        body = require_object(payload)
        task_id = task_id_from(body, "id", "image_id")
        raw_status = status_from(body)
        status, unknown = self.map_status(raw_status)
        outputs: list[Output] = []
        url = text_or_none(body.get("url"))
        if url:
            outputs.append(output(url, "image"))
        outputs += urls_to_outputs(body.get("urls"), "image")
        metadata = body.get("metadata")
        if not isinstance(metadata, dict):
            metadata = {}
        return Normalized(
            task_id=task_id,
            status=status,
            progress=progress_from(body.get("progress")),
            model=text_or_none(metadata.get("model")) or text_or_none(body.get("model")),
            media_type="image",
            outputs=unique(outputs),
            error=error_from(body.get("error") or body.get("message"), status, "Reve Art")
            if status in ("failed", "canceled")
            else None,
            raw_status=raw_status if isinstance(raw_status, str) else None,
            unknown_status=unknown,
        )

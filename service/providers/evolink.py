"""Evolink: unsigned callbacks whose body is the task object of ``GET /v1/tasks/{id}``."""

from __future__ import annotations

from typing import Any

from service.events import Normalized, Output
from service.providers.base import (
    Provider,
    error_from,
    media_type_from,
    progress_from,
    require_object,
    status_from,
    task_id_from,
    text_or_none,
    unique,
    urls_to_outputs,
)


class Evolink(Provider):
    name = "evolink"
    statuses = {
        "pending": "queued",
        "queued": "queued",
        "processing": "running",
        "running": "running",
        "completed": "succeeded",
        "succeeded": "succeeded",
        "failed": "failed",
        # Not in Evolink's enum, but a cancel fires a callback; accept the obvious words.
        "cancelled": "canceled",
        "canceled": "canceled",
    }

    def normalize(self, payload: Any) -> Normalized:
        body = require_object(payload)
        task_id = task_id_from(body, "id", "task_id")
        raw_status = status_from(body)
        status, unknown = self.map_status(raw_status)
        error = body.get("error")
        if (
            status == "failed"
            and isinstance(error, dict)
            and error.get("code") == "request_cancelled"
        ):
            status = "canceled"
        media_type = media_type_from(body.get("type"))
        if media_type is None and isinstance(body.get("object"), str):
            media_type = media_type_from(body["object"].split(".", 1)[0])
        outputs = urls_to_outputs(body.get("results"), media_type)
        # Suno tasks also list their tracks in result_data; keep any URL not already in results.
        # An empty audio_url is no output: every output needs a URL.
        audio = body.get("result_data")
        if isinstance(audio, list):
            outputs += [
                Output(item["audio_url"], "audio")
                for item in audio
                if isinstance(item, dict) and text_or_none(item.get("audio_url"))
            ]
        return Normalized(
            task_id=task_id,
            status=status,
            progress=progress_from(body.get("progress")),
            model=text_or_none(body.get("model")),
            media_type=media_type,
            outputs=unique(outputs),
            error=error_from(error, status, "Evolink")
            if status in ("failed", "canceled")
            else None,
            raw_status=raw_status if isinstance(raw_status, str) else None,
            unknown_status=unknown,
        )

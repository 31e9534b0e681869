"""Evolink: unsigned callbacks whose body is the task object of ``GET /v1/tasks/{id}``."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from service.events import Normalized
from service.providers.base import (
    Provider,
    media_type_from,
    media_type_of,
    output,
    require_object,
    status_from,
    task_id_from,
    task_report,
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
        word = self.map_status(status_from(body))
        error = body.get("error")
        if (
            word.status == "failed"
            and isinstance(error, dict)
            and error.get("code") == "request_cancelled"
        ):
            word = replace(word, status="canceled")
        # What the task makes: its object ("image.generation.task") says it best; its type
        # may say "text" (Suno's lyrics stage) even where the results are files.
        kind = body.get("object")
        said = media_type_from(kind.split(".", 1)[0]) if isinstance(kind, str) else None
        said = said or media_type_from(body.get("type"))
        outputs = urls_to_outputs(body.get("results"), said)
        # Suno tasks also list their tracks in result_data; keep any URL not already in results.
        # An empty audio_url is no output: every output needs a URL.
        audio = body.get("result_data")
        if isinstance(audio, list):
            outputs += [
                output(item["audio_url"], "audio")
                for item in audio
                if isinstance(item, dict) and text_or_none(item.get("audio_url"))
            ]
        kept = unique(outputs)
        return task_report(
            "Evolink",
            task_id=task_id,
            word=word,
            outputs=kept,
            media_type=media_type_of(kept, said),
            progress=body.get("progress"),
            model=text_or_none(body.get("model")),
            error=error,
        )

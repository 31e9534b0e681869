"""One run of an archive job: copy the event's outputs, then decide what becomes of the event.

A run tries every output not archived by an earlier run (their results are the job's
``progress``), then:

- every output archived: the job is ``archived``; the event's outputs now read ``{"url":
  <archived url>, "source_url", "media_type", "content_type", "bytes", "sha256"}``;
- some failed, the failures may pass (``not_found``, ``timeout``, ``connection``, ``http_error``,
  ``store``) and the deadline is not reached: the job runs again after a back-off (5 s,
  doubling, at most 5 minutes), keeping what was archived;
- otherwise (the deadline passed, or only failures another try cannot change: ``too_large``,
  ``blocked``): the job is ``failed``; the event goes out with the archived outputs rewritten
  and the others as the provider sent them, and ``data.archive`` says what failed.

Either way the event's deliveries start when the job finishes (``Store.record_archive_outcome``):
no event waits past its deadline (a run's downloads are cut there, but for the last try), and
no event carries an archived URL whose object was not written completely.

The event body is rewritten from its stored JSON: ``data.raw`` is the same JSON value, encoded
again (the exact bytes stay at ``GET /v1/events/{id}/raw``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from service.archiver import PERMANENT, Archived, ArchiveFailure, OutputPlace
from service.events import dumps
from service.store.records import ArchiveJob, ArchiveOutcome

#: Seconds before a job's second run, doubling after each, at most ``MAX_BACKOFF``.
FIRST_BACKOFF = 5.0
MAX_BACKOFF = 300.0


class OutputCopier(Protocol):
    """What a run needs of ``service.archiver.Archiver`` (a fake in unit tests)."""

    async def archive(self, source_url: str, place: OutputPlace) -> Archived: ...


def backoff(attempts: int) -> float:
    """Seconds before the next run of a job that has run ``attempts`` times (this one too)."""
    return min(MAX_BACKOFF, FIRST_BACKOFF * 2.0 ** max(0, attempts - 1))


def _archived_entry(index: int, archived: Archived) -> dict[str, Any]:
    return {
        "index": index,
        "state": "archived",
        "key": archived.key,
        "content_type": archived.content_type,
        "bytes": archived.bytes,
        "sha256": archived.sha256,
    }


def _failed_entry(index: int, source_url: str, failure: ArchiveFailure) -> dict[str, Any]:
    return {
        "index": index,
        "state": "failed",
        "source_url": source_url,
        "reason": failure.reason,
        "error": failure.message,
    }


def _source(output: dict[str, Any]) -> str:
    """Where an output is fetched from: the provider's URL, which an output archived by an
    earlier run keeps as ``source_url`` (its ``url`` is then the archived copy)."""
    source: str = output.get("source_url") or output["url"]
    return source


async def run_job(
    job: ArchiveJob,
    copier: OutputCopier,
    url_for: Callable[[str], str],
    clock: Callable[[], float],
    last_try: float = 0.0,
) -> ArchiveOutcome:
    """Run ``job`` (a claimed one: it has its event's ``body`` and a ``lease_token``) and say
    what to record; ``url_for`` gives an archived key's URL. Keys are dated by the job's
    ``created_at``, which is when its event was received.

    The downloads end by the job's deadline, or ``last_try`` seconds after the run began if
    that is later (the back-off's last try is due at the deadline itself), and never later
    than ``last_try`` past the deadline (a job claimed late, behind a backlog): a download
    cut there is a ``timeout``."""
    assert job.body is not None and job.lease_token is not None  # noqa: S101 - a claim's
    # Each download has its own timeout, but the outputs go one after another (up to 100):
    # only this bounds them all, so that no event waits for hours.
    ends_at = max(job.deadline_at, min(clock(), job.deadline_at) + last_try)
    event = orjson.loads(job.body)
    outputs: list[dict[str, Any]] = event["data"]["outputs"]
    done = {entry["index"]: entry for entry in job.progress if entry["state"] == "archived"}
    progress: list[dict[str, Any]] = []
    for index, output in enumerate(outputs):
        if index in done:
            progress.append(done[index])
            continue
        place = OutputPlace(job.provider, job.created_at, job.task_id, index)
        source = _source(output)
        try:
            if clock() >= ends_at:
                # An event with many slow outputs must not wait past its deadline for the rest.
                raise ArchiveFailure("timeout", "the archive deadline passed before it was tried")
            async with asyncio.timeout(ends_at - clock()):
                progress.append(_archived_entry(index, await copier.archive(source, place)))
        except ArchiveFailure as failure:
            progress.append(_failed_entry(index, source, failure))
        except TimeoutError:
            late = ArchiveFailure("timeout", "the archive deadline came during the download")
            progress.append(_failed_entry(index, source, late))
    now = clock()
    failed = [entry for entry in progress if entry["state"] == "failed"]
    last_error = "; ".join(f"output {e['index']}: {e['error']}" for e in failed) or None
    retryable = any(entry["reason"] not in PERMANENT for entry in failed)
    if failed and retryable and now < job.deadline_at:
        return ArchiveOutcome(
            event_id=job.event_id,
            lease_token=job.lease_token,
            progress=progress,
            last_error=last_error,
            at=now,
            finished=False,
            next_attempt_at=min(job.deadline_at, now + backoff(job.attempts + 1)),
        )
    for entry in progress:
        if entry["state"] == "archived":
            output = outputs[entry["index"]]
            outputs[entry["index"]] = {
                "url": url_for(entry["key"]),
                "source_url": _source(output),
                "media_type": output.get("media_type"),
                "content_type": entry["content_type"],
                "bytes": entry["bytes"],
                "sha256": entry["sha256"],
            }
    event["data"].pop("archive", None)  # (an earlier run's, when an operator retried)
    if failed:
        event["data"]["archive"] = {
            "state": "failed",
            "failures": [
                {"index": e["index"], "reason": e["reason"], "error": e["error"]} for e in failed
            ],
        }
    return ArchiveOutcome(
        event_id=job.event_id,
        lease_token=job.lease_token,
        progress=progress,
        last_error=last_error,
        at=now,
        finished=True,
        status="failed" if failed else "archived",
        body=dumps(event),
    )

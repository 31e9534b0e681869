"""One run of an archive job (``service.archive_jobs``) and what an output is called
(``service.archive_media``): logic inside one process, with a fake copier and a fake clock."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from typing import Any

import pytest

from service.archive_jobs import FIRST_BACKOFF, MAX_BACKOFF, backoff, run_job
from service.archive_media import content_type, extension, object_key, task_segment
from service.archiver import Archived, ArchiveFailure, OutputPlace
from service.store.records import ArchiveJob
from tests.fakes import FakeClock

pytestmark = pytest.mark.anyio

RAW = {"id": "task-1", "results": ["https://cdn.example/a.png", "https://cdn.example/b.mp4"]}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeCopier:
    """Answers each source URL from a script: an ``Archived`` or the failure to raise."""

    def __init__(self, script: dict[str, Archived | ArchiveFailure]) -> None:
        self.script = script
        self.asked: list[tuple[str, OutputPlace]] = []

    async def archive(self, source_url: str, place: OutputPlace) -> Archived:
        self.asked.append((source_url, place))
        answer = self.script[source_url]
        if isinstance(answer, ArchiveFailure):
            raise answer
        return answer


def stored(key: str, size: int = 3) -> Archived:
    return Archived(key=key, content_type="image/png", bytes=size, sha256="ab" * 32)


def job(clock: FakeClock, *, attempts: int = 0, progress: list[Any] | None = None) -> ArchiveJob:
    outputs = [{"url": url, "media_type": "image"} for url in RAW["results"]]
    body = {"id": "evt_1", "data": {"outputs": outputs, "raw": RAW, "metadata": {"u": 1}}}
    return ArchiveJob(
        event_id="evt_1",
        provider="evolink",
        task_id="task-1",
        status="pending",
        attempts=attempts,
        next_attempt_at=clock(),
        deadline_at=clock.now + 3600,
        progress=progress or [],
        last_error=None,
        created_at=clock.now - 10,
        updated_at=clock.now - 10,
        body=json.dumps(body),
        lease_token="lease-1",
    )


def url_for(key: str) -> str:
    return f"https://relay.example/archive/{key}"


async def test_every_output_archived_rewrites_them_and_finishes() -> None:
    clock = FakeClock()
    copier = FakeCopier({RAW["results"][0]: stored("k/0.png"), RAW["results"][1]: stored("k/1")})
    outcome = await run_job(job(clock), copier, url_for, clock)
    assert (outcome.finished, outcome.status, outcome.last_error) == (True, "archived", None)
    event = json.loads(outcome.body or "")
    assert event["data"]["outputs"][0] == {
        "url": "https://relay.example/archive/k/0.png",
        "source_url": RAW["results"][0],
        "media_type": "image",
        "content_type": "image/png",
        "bytes": 3,
        "sha256": "ab" * 32,
    }
    assert "archive" not in event["data"]
    assert event["data"]["raw"] == RAW and event["data"]["metadata"] == {"u": 1}
    # Keys are dated by the job's creation (the event's reception), one place per output.
    assert [place for _, place in copier.asked] == [
        OutputPlace("evolink", clock.now - 10, "task-1", 0),
        OutputPlace("evolink", clock.now - 10, "task-1", 1),
    ]


async def test_a_failure_that_may_pass_runs_again_later_keeping_what_was_archived() -> None:
    clock = FakeClock()
    missing = ArchiveFailure("not_found", "HTTP 404: the file is not there")
    copier = FakeCopier({RAW["results"][0]: stored("k/0.png"), RAW["results"][1]: missing})
    outcome = await run_job(job(clock), copier, url_for, clock)
    assert (outcome.finished, outcome.body) == (False, None)
    assert outcome.next_attempt_at == clock.now + FIRST_BACKOFF
    assert outcome.last_error == "output 1: HTTP 404: the file is not there"
    assert [entry["state"] for entry in outcome.progress] == ["archived", "failed"]
    # The next run asks only for what is missing.
    copier.script[RAW["results"][1]] = stored("k/1.mp4")
    again = job(clock, attempts=1, progress=outcome.progress)
    copier.asked.clear()
    done = await run_job(again, copier, url_for, clock)
    assert [url for url, _ in copier.asked] == [RAW["results"][1]]
    assert (done.finished, done.status) == (True, "archived")


async def test_past_the_deadline_the_event_goes_out_with_what_was_archived() -> None:
    clock = FakeClock()
    missing = ArchiveFailure("timeout", "the download took longer than 900 s")

    class TimingOut(FakeCopier):
        async def archive(self, source_url: str, place: OutputPlace) -> Archived:
            if source_url == RAW["results"][1]:
                clock.advance(900)  # the download ran into its timeout, past the deadline
            return await super().archive(source_url, place)

    copier = TimingOut({RAW["results"][0]: stored("k/0.png"), RAW["results"][1]: missing})
    late = job(clock)
    clock.advance(3000)
    outcome = await run_job(late, copier, url_for, clock)
    assert (outcome.finished, outcome.status) == (True, "failed")
    data = json.loads(outcome.body or "")["data"]
    assert data["outputs"][0]["url"] == "https://relay.example/archive/k/0.png"
    assert data["outputs"][1] == {"url": RAW["results"][1], "media_type": "image"}
    assert data["archive"] == {
        "state": "failed",
        "failures": [
            {"index": 1, "reason": "timeout", "error": "the download took longer than 900 s"}
        ],
    }


@pytest.mark.parametrize("reason", ["too_large", "blocked"])
async def test_a_failure_no_retry_can_change_ends_the_job_at_once(reason: str) -> None:
    clock = FakeClock()
    refused = ArchiveFailure(reason, "no")
    copier = FakeCopier({RAW["results"][0]: refused, RAW["results"][1]: stored("k/1.mp4")})
    outcome = await run_job(job(clock), copier, url_for, clock)
    assert (outcome.finished, outcome.status) == (True, "failed")


async def test_a_permanent_failure_beside_one_that_may_pass_waits_for_the_other() -> None:
    clock = FakeClock()
    copier = FakeCopier(
        {
            RAW["results"][0]: ArchiveFailure("too_large", "big"),
            RAW["results"][1]: ArchiveFailure("connection", "reset"),
        }
    )
    outcome = await run_job(job(clock), copier, url_for, clock)
    assert not outcome.finished


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff(n) for n in (1, 2, 3)] == [FIRST_BACKOFF, 2 * FIRST_BACKOFF, 4 * FIRST_BACKOFF]
    assert backoff(30) == MAX_BACKOFF


async def test_a_retry_never_runs_past_the_deadline() -> None:
    clock = FakeClock()
    copier = FakeCopier({url: ArchiveFailure("not_found", "HTTP 404") for url in RAW["results"]})
    close = job(clock, attempts=20)
    clock.advance(3600 - 1)
    outcome = await run_job(close, copier, url_for, clock)
    assert outcome.next_attempt_at == close.deadline_at


# -- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "head", "expected"),
    [
        ("image/PNG; charset=binary", b"", "image/png"),
        ("video/mp4", b"\x89PNG\r\n\x1a\n", "video/mp4"),  # the answer's word wins
        (None, b"\x89PNG\r\n\x1a\n....", "image/png"),
        ("application/octet-stream", b"\xff\xd8\xff\xe0", "image/jpeg"),
        ("", b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (None, b"\x00\x00\x00\x18ftypmp42", "video/mp4"),
        (None, b"\x00\x00\x00\x14ftypqt  ", "video/quicktime"),
        (None, b"\x1a\x45\xdf\xa3", "video/webm"),
        (None, b"ID3\x04", "audio/mpeg"),
        (None, b"plain words", "application/octet-stream"),
    ],
)
def test_content_type_from_the_answer_or_sniffed(
    header: str | None, head: bytes, expected: str
) -> None:
    assert content_type(header, head) == expected


def test_extensions() -> None:
    assert [extension(t) for t in ("image/png", "video/mp4", "image/jpeg", "x/unknown")] == [
        "png",
        "mp4",
        "jpg",
        "bin",
    ]


def test_object_keys_are_deterministic_dated_and_safe() -> None:
    at = 1_796_227_864.0  # 2026-12-02 UTC
    key = object_key("evolink", at, "task-unified-1-abc", 2, "png")
    assert key == "evolink/2026/12/02/task-unified-1-abc/2.png"
    assert object_key("evolink", at, "task-unified-1-abc", 2, "png") == key
    hostile = "../../etc/passwd"
    segment = task_segment(hostile)
    assert "/" not in segment and ".." not in segment
    digest = hashlib.sha256(hostile.encode()).hexdigest()[:16]
    assert segment.endswith(digest)
    assert task_segment("a/b") != task_segment("a_b")  # the hash keeps them apart
    assert len(task_segment("x" * 10_000)) < 128


async def test_a_retried_job_fetches_from_the_provider_and_forgets_the_old_failure() -> None:
    """An operator retried a failed job whose first output was archived: the event body has
    that output rewritten and ``data.archive`` set. The run fetches only the missing output,
    from the provider's URL, and the finished event keeps every ``source_url`` and no
    ``data.archive``."""
    clock = FakeClock()
    copier = FakeCopier(
        {RAW["results"][0]: stored("k/0.png"), RAW["results"][1]: ArchiveFailure("blocked", "no")}
    )
    first = await run_job(job(clock), copier, url_for, clock)
    assert first.status == "failed"
    copier.script[RAW["results"][1]] = stored("k/1.mp4")
    retried = ArchiveJob(
        **{**job(clock).__dict__, "body": first.body, "progress": first.progress, "attempts": 1}
    )
    copier.asked.clear()
    done = await run_job(retried, copier, url_for, clock)
    assert [url for url, _ in copier.asked] == [RAW["results"][1]]
    data = json.loads(done.body or "")["data"]
    assert [o["source_url"] for o in data["outputs"]] == RAW["results"]
    assert [o["url"] for o in data["outputs"]] == [url_for("k/0.png"), url_for("k/1.mp4")]
    assert "archive" not in data and done.status == "archived"


async def test_outputs_not_reached_by_the_deadline_are_not_tried() -> None:
    """The first output takes past the deadline: the second is not fetched, and the job ends."""
    clock = FakeClock()

    class SlowCopier(FakeCopier):
        async def archive(self, source_url: str, place: OutputPlace) -> Archived:
            clock.advance(4000)  # this download took longer than the whole deadline
            return await super().archive(source_url, place)

    copier = SlowCopier({RAW["results"][0]: stored("k/0.png"), RAW["results"][1]: stored("k/1")})
    outcome = await run_job(job(clock), copier, url_for, clock)
    assert [url for url, _ in copier.asked] == [RAW["results"][0]]
    assert (outcome.finished, outcome.status) == (True, "failed")
    failure = json.loads(outcome.body or "")["data"]["archive"]["failures"][0]
    assert failure == {
        "index": 1,
        "reason": "timeout",
        "error": "the archive deadline passed before it was tried",
    }


async def test_a_run_ends_its_downloads_at_the_deadline_or_one_last_try_after_it() -> None:
    """Outputs go one after another, each within its own timeout: the run as a whole ends at
    the deadline, or ``last_try`` after it for the try due there (and for a job claimed late)."""

    class Stalling:
        async def archive(self, source_url: str, place: OutputPlace) -> Archived:
            await asyncio.sleep(3600)
            raise AssertionError("never ends by itself")

    for deadline_in, last_try, lasts in [(0.3, 0.0, 0.3), (0.0, 0.3, 0.3), (-60.0, 0.3, 0.0)]:
        clock = FakeClock(time.time())  # the job's times; the run reads the real clock
        due = dataclasses.replace(job(clock), deadline_at=clock.now + deadline_in)
        copier = Stalling()
        began = time.monotonic()
        outcome = await run_job(due, copier, url_for, time.time, last_try)
        assert lasts - 0.05 <= time.monotonic() - began < lasts + 0.25
        assert [e["reason"] for e in outcome.progress] == ["timeout", "timeout"]
        assert (outcome.finished, outcome.status) == (True, "failed")


async def test_a_process_without_an_archive_ends_jobs_left_past_their_deadline(
    tmp_path: Any,
) -> None:
    """Archiving was turned off (or this replica has none) while a job waited: once it is past
    its deadline and the grace, it ends failed and its event's deliveries start."""
    from service.archive_worker import OverdueArchiveJobs
    from service.relay import Relay
    from service.settings import Settings
    from service.store.records import IncomingEvent, Subscriber

    clock = FakeClock()
    relay = await Relay.start(
        Settings(database_url=f"sqlite:///{tmp_path / 'relay.db'}"), clock=clock
    )
    try:
        store = relay.store
        await store.create_subscriber(
            Subscriber(
                "sub_1",
                "https://hooks.example/x",
                None,
                None,
                None,
                True,
                0,
                0,
                secrets=("whsec_c2VjcmV0",),
            )
        )
        outputs = [{"url": url, "media_type": "image"} for url in RAW["results"]]
        body = json.dumps({"id": "evt_1", "data": {"outputs": outputs, "raw": RAW}})
        await store.ingest(
            IncomingEvent(
                "evt_1",
                "evolink",
                "task-1",
                "succeeded",
                100,
                "generation.succeeded",
                True,
                "k1",
                clock.now,
                None,
                body,
                b"{}",
                archive_deadline=clock.now + 60,
            )
        )
        woken: list[bool] = []
        relay.on_deliveries = lambda: woken.append(True)
        overdue = OverdueArchiveJobs(relay)
        clock.advance(60 + overdue.GRACE_SECONDS - 1)
        assert await overdue.end_overdue() == 0  # within the grace: an archive worker may come
        assert await store.claim_due(clock.now, 10, 30, frozenset()) == []
        clock.advance(2)
        assert await overdue.end_overdue() == 1
        job = await store.get_archive_job("evt_1")
        assert job is not None and job.status == "failed"
        (claim,) = await store.claim_due(clock.now, 10, 30, frozenset())
        data = json.loads(claim.body)["data"]
        assert data["outputs"] == outputs
        assert [f["reason"] for f in data["archive"]["failures"]] == ["timeout", "timeout"]
        assert woken == [True]
    finally:
        await relay.close()


def test_only_passive_types_are_stored_as_they_are() -> None:
    from service.archive_media import stored_attributes

    for media in ("image/png", "video/mp4", "audio/mpeg", "application/json"):
        assert stored_attributes(media) == {"Content-Type": media}
    for media in ("image/svg+xml", "text/html", "application/xhtml+xml", "text/javascript"):
        assert stored_attributes(media) == {
            "Content-Type": "application/octet-stream",
            "Content-Disposition": "attachment",
        }


def test_a_content_type_that_is_no_media_type_is_sniffed_instead() -> None:
    assert content_type("x" * 8000, PNG_HEAD) == "image/png"
    assert content_type("image/png\r\nSet-Cookie: a=b", PNG_HEAD) == "image/png"
    assert content_type("text/html; charset=utf-8", b"<html>") == "text/html"


PNG_HEAD = b"\x89PNG\r\n\x1a\n...."

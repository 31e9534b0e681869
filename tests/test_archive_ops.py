"""Archive jobs for operators: the admin API, ``relay archive`` and the console, on real jobs.

A relay archives into a ``file://`` directory; the provider's "CDN" is a real server on
loopback (allowed by ``RELAY_TARGET_ALLOWLIST``, private addresses being refused otherwise)
that answers 404 until the test lets the file be there, or holds its answer until released.
A job failed for real (its deadline passed, or its output is over ``max_bytes``) is what the
operator surfaces list, show and retry.
"""

# ruff: noqa: F811 (the database fixture is imported, used as a parameter)
from __future__ import annotations

import asyncio
import copy
import hashlib
import ipaddress
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.settings import ArchiveSettings
from service.shapes.archive import ArchiveJob, ArchiveJobPage, FailedOutput
from tests.conftest import (
    ADMIN_TOKEN,
    EVOLINK_COMPLETED,
    RelayServer,
    ServerThread,
    bound_socket,
)
from tests.test_attribution import database  # noqa: F401 (fixture)
from tests.test_ops_console import browser, csrf_of, sign_in

#: A PNG's first bytes and some more: what the CDN serves once the file is there.
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


class Cdn:
    """The provider's file server: ``status`` and ``body`` for every GET; while ``hold`` is
    clear, each answer waits for it (``requests`` counts the GETs received)."""

    def __init__(self) -> None:
        self.status = 404
        self.body = b"not here"
        self.hold = threading.Event()
        self.hold.set()
        self.requests = 0
        sock = bound_socket()
        self.thread = ServerThread(Starlette(routes=[Route("/{name}", self._get)]), sock)
        self.base = f"http://127.0.0.1:{self.thread.port}"

    async def _get(self, _request: Request) -> Response:
        self.requests += 1
        await asyncio.to_thread(self.hold.wait, 30)
        return Response(self.body, self.status, media_type="image/png")

    def start(self) -> Cdn:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.hold.set()
        self.thread.stop()


@pytest.fixture
def cdn() -> Iterator[Cdn]:
    server = Cdn().start()
    yield server
    server.stop()


def archiving_relay(
    relay_factory: Callable[..., RelayServer],
    tmp_path: Path,
    database: dict[str, Any],
    **archive: Any,
) -> RelayServer:
    """A relay that archives into ``tmp_path/archive``; loopback is the only private network
    it may reach (the CDN's)."""
    return relay_factory(
        archive=ArchiveSettings(url=f"file://{tmp_path}/archive", **archive),
        allow_private_targets=False,
        target_allowlist=(ipaddress.ip_network("127.0.0.0/8"),),
        **database,
    )


def completed(relay: RelayServer, output_url: str, task_id: str = "task-unified-archive-1") -> str:
    """A succeeded Evolink task with one output at ``output_url``: its event id."""
    payload = copy.deepcopy(EVOLINK_COMPLETED)
    payload.update(id=task_id, results=[output_url])
    answer = relay.post_callback(relay.mint(), payload)
    assert answer.status_code == 200, answer.text
    event_id: str = answer.json()["event_id"]
    return event_id


def job(relay: RelayServer, event_id: str) -> dict[str, Any]:
    answer = relay.client.get(f"/v1/archive-jobs/{event_id}", headers=relay.admin)
    assert answer.status_code == 200, answer.text
    shown: dict[str, Any] = answer.json()
    msgspec.convert(shown, ArchiveJob, strict=True)  # the declared shape, exactly
    return shown


def wait_job(
    relay: RelayServer, event_id: str, status: str, timeout: float = 20.0
) -> dict[str, Any]:
    """The job once it has ``status`` (its runs are the archive worker's, in the relay)."""
    deadline = time.monotonic() + timeout
    while True:
        shown = job(relay, event_id)
        if shown["status"] == status or time.monotonic() > deadline:
            assert shown["status"] == status, shown
            return shown
        time.sleep(0.05)


def _at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def error_of(answer: httpx.Response) -> tuple[int, str]:
    return answer.status_code, answer.json()["error"]["code"]


def test_list_show_and_retry_through_the_admin_api(
    relay_factory: Callable[..., RelayServer],
    database: dict[str, Any],
    tmp_path: Path,
    cdn: Cdn,
) -> None:
    """A job failed by its deadline is listed and shown with its failure; a retry makes it
    pending with a new deadline, and it archives the file now there. Unknown events are 404,
    a job not failed is 409, a status that is none is 400."""
    relay = archiving_relay(relay_factory, tmp_path, database, deadline=0.5)
    client, admin = relay.client, relay.admin
    assert error_of(client.get("/v1/archive-jobs", params={"status": "lost"}, headers=admin)) == (
        400,
        "invalid_query",
    )
    assert "status" in client.get("/v1/archive-jobs?status=lost", headers=admin).text
    assert error_of(client.get("/v1/archive-jobs/evt_none", headers=admin)) == (404, "not_found")
    assert error_of(client.post("/v1/archive-jobs/evt_none/retry", headers=admin)) == (
        404,
        "not_found",
    )

    source = f"{cdn.base}/x.png"
    event_id = completed(relay, source)
    failed = wait_job(relay, event_id, "failed")
    assert failed["attempts"] >= 1
    assert failed["next_attempt_at"] is None
    (output,) = failed["outputs"]
    assert output["state"] == "failed" and output["reason"] == "not_found"
    assert output["source_url"] == source
    assert "HTTP 404" in failed["last_error"]

    def listed(**params: Any) -> list[str]:
        answer = client.get("/v1/archive-jobs", params=params, headers=admin)
        assert answer.status_code == 200, answer.text
        page = msgspec.convert(answer.json(), ArchiveJobPage, strict=True)
        return [item.event_id for item in page.items]

    assert listed(status="failed") == [event_id]
    assert listed() == [event_id]
    assert listed(status="archived") == listed(status="pending") == []

    cdn.status, cdn.body = 200, PNG  # the file is there now
    retried = client.post(f"/v1/archive-jobs/{event_id}/retry", headers=admin)
    assert retried.status_code == 200, retried.text
    shown = msgspec.convert(retried.json(), ArchiveJob, strict=True)
    assert shown.status == "pending"
    # The last run's outputs stay until the next run replaces them (archived ones are kept).
    assert [type(o) for o in shown.outputs] == [FailedOutput] and shown.last_error is None
    assert shown.attempts == failed["attempts"]
    assert shown.next_attempt_at is not None
    assert _at(shown.deadline_at) > _at(failed["deadline_at"])

    archived = wait_job(relay, event_id, "archived")
    assert archived["attempts"] == failed["attempts"] + 1
    (kept,) = archived["outputs"]
    assert kept["sha256"] == hashlib.sha256(PNG).hexdigest() and kept["bytes"] == len(PNG)
    again = client.post(f"/v1/archive-jobs/{event_id}/retry", headers=admin)
    assert error_of(again) == (409, "archive_job_not_failed")
    assert job(relay, event_id)["status"] == "archived"  # left as it was
    event = client.get(f"/v1/events/{event_id}", headers=admin).json()
    (output,) = event["data"]["outputs"]
    assert output["source_url"] == source and output["sha256"] == kept["sha256"]
    assert httpx.get(output["url"]).content == PNG


def _relay_cli(relay: RelayServer, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``relay`` in its own process, on the relay's store, archiving as the relay does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        RELAY_ADMIN_TOKEN=ADMIN_TOKEN,
        RELAY_SECRET_KEY="test-signing-key",
        RELAY_ARCHIVE_URL=f"file://{tmp_path}/archive",
        RELAY_ARCHIVE_DEADLINE="60",
        RELAY_LOG_LEVEL="warning",
    )
    return subprocess.run(
        [sys.executable, "-m", "service", "--database-url", relay.settings.database_url, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_relay_archive_list_and_retry(
    relay_factory: Callable[..., RelayServer],
    database: dict[str, Any],
    tmp_path: Path,
    cdn: Cdn,
) -> None:
    """`relay archive list --failed` shows a job failed for good (its output is over
    max_bytes); `relay archive retry` makes it pending; an unknown event and a job not failed
    are one-line errors with exit status 2."""
    relay = archiving_relay(relay_factory, tmp_path, database, max_bytes=10)
    cdn.status, cdn.body = 200, PNG
    event_id = completed(relay, f"{cdn.base}/big.png", task_id="task-unified-too-large")
    wait_job(relay, event_id, "failed")

    listing = _relay_cli(relay, tmp_path, "archive", "list", "--failed")
    assert listing.returncode == 0, listing.stderr
    heading, row, total = listing.stdout.splitlines()
    assert heading.split() == ["EVENT", "PROVIDER", "TASK", "STATUS", "ATTEMPTS", "LAST", "ERROR"]
    assert row.split()[:5] == [event_id, "evolink", "task-unified-too-large", "failed", "1"]
    assert "over the 10-byte limit" in row
    assert total == "1 failed archive jobs"
    nothing = _relay_cli(relay, tmp_path, "archive", "list", "--status", "archived")
    assert nothing.stdout.splitlines()[-1] == "0 archived archive jobs"

    unknown = _relay_cli(relay, tmp_path, "archive", "retry", "evt_none")
    assert unknown.returncode == 2
    assert unknown.stdout == ""
    assert unknown.stderr.splitlines() == ["relay: not_found: No archive job for evt_none."]

    cdn.hold.clear()  # the retried run waits for the CDN: the job stays pending meanwhile
    retried = _relay_cli(relay, tmp_path, "archive", "retry", event_id)
    assert retried.returncode == 0, retried.stderr
    assert re.fullmatch(rf"{event_id}: pending, runs again now until \S+Z\n", retried.stdout), (
        retried.stdout
    )
    pending = _relay_cli(relay, tmp_path, "archive", "list", "--status", "pending")
    assert event_id in pending.stdout and "1 pending archive jobs" in pending.stdout
    twice = _relay_cli(relay, tmp_path, "archive", "retry", event_id)
    assert twice.returncode == 2
    (line,) = twice.stderr.splitlines()
    assert line.startswith("relay: archive_job_not_failed: ") and "pending" in line
    cdn.hold.set()
    assert wait_job(relay, event_id, "failed")["attempts"] == 2  # the retry ran: still too large


def test_console_shows_archive_details_and_retries_failed_jobs(
    relay_factory: Callable[..., RelayServer], tmp_path: Path, cdn: Cdn
) -> None:
    """The event page shows a failed job and its output's failure, then (after a Retry on the
    archive page, linked from the nav) the archived output: link, source, type, size, hash."""
    relay = archiving_relay(relay_factory, tmp_path, {}, deadline=0.5)
    source = f"{cdn.base}/x.png"
    event_id = completed(relay, source)
    wait_job(relay, event_id, "failed")
    with browser(relay) as client:
        assert sign_in(client).status_code == 303
        page = client.get(f"/ops/events/{event_id}")
        assert page.status_code == 200
        html = page.text
        assert '<a href="/ops/archive"' in html  # in the nav: archiving is on
        job_card = html.split('id="archive-job"')[1].split("</div>")[0]
        assert '<span class="badge failed">failed</span>' in job_card
        assert "HTTP 404: the file is not there" in job_card
        outputs = html.split('id="outputs"')[1].split("</table>")[0]
        assert (
            source in outputs and "not archived" in outputs and "<code>not_found</code>" in outputs
        )
        assert "1 output(s) not archived" in html

        archive = client.get("/ops/archive")
        assert archive.status_code == 200
        failed_table = archive.text.split('id="failed"')[1].split("</table>")[0]
        assert f'action="/ops/archive/{event_id}/retry"' in failed_table
        csrf = csrf_of(archive.text)
        # Without the session's CSRF token nothing is retried.
        forged = client.post(f"/ops/archive/{event_id}/retry", data={"back": "/ops/archive"})
        assert forged.status_code == 403
        assert job(relay, event_id)["status"] == "failed"

        cdn.status, cdn.body = 200, PNG
        cdn.hold.clear()  # the retried run waits for the CDN: pending while the page is seen
        retried = client.post(
            f"/ops/archive/{event_id}/retry", data={"csrf": csrf, "back": "/ops/archive"}
        )
        assert retried.status_code == 303
        assert retried.headers["location"] == "/ops/archive"
        after = client.get("/ops/archive").text
        assert f"Retrying the archive of {event_id}: pending, running again now until" in after
        assert event_id not in after.split('id="failed"')[1].split("</table>")[0]
        assert event_id in after.split('id="pending"')[1].split("</table>")[0]
        # Retrying it again is refused with a notice, not an error page.
        refused = client.post(
            f"/ops/archive/{event_id}/retry", data={"csrf": csrf, "back": "/ops/archive"}
        )
        assert refused.status_code == 303
        assert "is pending, not failed: nothing to retry" in client.get("/ops/archive").text
        cdn.hold.set()
        wait_job(relay, event_id, "archived")

        html = client.get(f"/ops/events/{event_id}").text
        outputs = html.split('id="outputs"')[1].split("</table>")[0]
        event = relay.client.get(f"/v1/events/{event_id}", headers=relay.admin).json()
        (output,) = event["data"]["outputs"]
        digest = hashlib.sha256(PNG).hexdigest()
        assert f'href="{output["url"]}"' in outputs.replace("&amp;", "&")
        assert f'<td class="mono small">{source}</td>' in outputs
        assert "image/png" in outputs
        assert "2.0 KiB" in outputs  # 2056 bytes, for people
        assert f'title="{digest}">{digest[:12]}…</td>' in outputs
        assert "not archived" not in outputs and "output(s) not archived" not in html
        assert '<span class="badge archived">archived</span>' in html


def test_console_without_archiving_has_no_archive_link(relay_server: RelayServer) -> None:
    with browser(relay_server) as client:
        assert sign_in(client).status_code == 303
        overview = client.get("/ops").text
        assert 'href="/ops/deliveries"' in overview
        assert 'href="/ops/archive"' not in overview
        assert client.get("/ops/archive").status_code == 200  # the page itself still answers


def test_sizes_are_shown_for_people() -> None:
    from service.ops.rendering import file_size

    assert [file_size(n) for n in (None, 0, 1023, 1024, 1536 * 1024, 3 * 1024**3, 5 * 1024**4)] == [
        "-",
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 MiB",
        "3.0 GiB",
        "5120.0 GiB",
    ]

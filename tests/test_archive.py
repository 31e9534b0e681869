"""Archived outputs end to end: a real relay (uvicorn on loopback), a provider's CDN emulated on
loopback (``tests.cdn_emulator``), a real subscriber, a local directory or a real S3-compatible
server (moto, ``tests.s3_server``), on SQLite and PostgreSQL.

The relay may reach 127.0.0.0/8 only through ``RELAY_TARGET_ALLOWLIST`` (which also lets output
URLs on it through), never ``RELAY_ALLOW_PRIVATE_TARGETS``: so a redirect to 169.254.169.254 is
refused as it would be in production.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import structlog
from structlog.testing import capture_logs

from service import archive_worker
from service.errors import StorageUnavailable
from service.settings import ArchiveSettings
from tests.cdn_emulator import CdnEmulator
from tests.conftest import EVOLINK_COMPLETED, RelayServer, bound_socket
from tests.relay_process import ADMIN, RelayProcess
from tests.s3_server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, S3Server
from tests.subscriber_server import Receipt, SubscriberServer
from tests.test_store_contract import fresh_schema

SCHEMA = json.loads(
    (Path(__file__).parent.parent / "service/schemas/generation-event.schema.json").read_text()
)
PNG = b"\x89PNG\r\n\x1a\n"
MP4 = b"\x00\x00\x00\x18ftypmp42"
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    if request.param == "sqlite":
        yield {}
        return
    with fresh_schema() as url:
        yield {"database_url": url}


@pytest.fixture(params=["file", "s3"])
def archive_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


def archive_settings(kind: str, tmp_path: Path, s3: S3Server | None, **options: Any) -> Any:
    if kind == "file":
        return ArchiveSettings(url=f"file://{tmp_path / 'archive'}", **options)
    assert s3 is not None
    bucket = f"relay-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(bucket)
    return ArchiveSettings(
        url=f"s3://{bucket}/results",
        options={
            "endpoint": s3.endpoint,
            "region": REGION,
            "access_key_id": ACCESS_KEY_ID,
            "secret_access_key": SECRET_ACCESS_KEY,
        },
        allow_http=True,
        **options,
    )


@pytest.fixture
def start(
    relay_factory: Callable[..., RelayServer], sink: SubscriberServer, tmp_path: Path
) -> Callable[..., RelayServer]:
    """A relay archiving to ``archive`` (settings), subscribed by ``sink``."""

    def run(archive: ArchiveSettings, **overrides: Any) -> RelayServer:
        relay = relay_factory(
            archive=archive,
            allow_private_targets=False,
            target_allowlist=LOOPBACK,
            **overrides,
        )
        relay.add_subscriber(sink.url)
        return relay

    return run


def completed(task_id: str, *urls: str) -> dict[str, Any]:
    return {**copy.deepcopy(EVOLINK_COMPLETED), "id": task_id, "results": list(urls)}


def post(relay: RelayServer, payload: dict[str, Any]) -> str:
    answer = relay.post_callback(relay.mint(), payload)
    assert answer.status_code == 200, answer.text
    event_id: str = answer.json()["event_id"]
    return event_id


def delivered(sink: SubscriberServer, event_id: str, timeout: float = 20.0) -> Receipt:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for receipt in sink.wait_for(0):
            if receipt.event_id == event_id:
                return receipt
        time.sleep(0.02)
    raise AssertionError(f"{event_id} was not delivered within {timeout} s")


def fetch(url: str) -> httpx.Response:
    return httpx.get(url, follow_redirects=True, timeout=10)


def job(relay: RelayServer, event_id: str) -> Any:
    return relay.in_loop(relay.relay.store.get_archive_job(event_id))


# -- the whole way -------------------------------------------------------------------------------


def test_outputs_outlive_the_cdn_and_a_replay_carries_the_same_links(
    start: Callable[..., RelayServer],
    sink: SubscriberServer,
    cdn: CdnEmulator,
    s3_server: S3Server,
    database: dict[str, Any],
    archive_kind: str,
    tmp_path: Path,
) -> None:
    """The provider's files are archived before delivery; the CDN then forgets them, and the
    event's URLs still give the original bytes, now and on a redelivery later."""
    relay = start(archive_settings(archive_kind, tmp_path, s3_server), **database)
    image = cdn.add("/r/image.png", size=300_000, prefix=PNG)
    video = cdn.add("/r/video", size=2_500_000, prefix=MP4, content_type=None)  # sniffed
    event_id = post(relay, completed("task-unified-archive-1", image, video))

    receipt = delivered(sink, event_id)
    jsonschema.validate(json.loads(receipt.body), SCHEMA, format_checker=jsonschema.FormatChecker())
    outputs = receipt.data["outputs"]
    assert [o["source_url"] for o in outputs] == [image, video]
    assert [o["content_type"] for o in outputs] == ["image/png", "video/mp4"]
    assert [o["bytes"] for o in outputs] == [300_000, 2_500_000]
    assert [o["sha256"] for o in outputs] == [
        cdn.expected_sha256("/r/image.png"),
        cdn.expected_sha256("/r/video"),
    ]
    assert all(o["url"].startswith(relay.base_url + "/archive/") for o in outputs)

    cdn.expire("/r/image.png")
    cdn.expire("/r/video")
    assert httpx.get(image).status_code == 404
    for output, path in zip(outputs, ("/r/image.png", "/r/video"), strict=True):
        got = fetch(output["url"])
        assert got.status_code == 200
        assert hashlib.sha256(got.content).hexdigest() == output["sha256"]
        assert got.content == cdn.expected_bytes(path)

    # A redelivery (a subscriber asking again, later) carries the very same links.
    answer = relay.client.post(
        f"/v1/events/{event_id}/redeliver",
        json={"subscriber_id": relay.deliveries()[0]["subscriber_id"]},
        headers=relay.admin,
    )
    assert answer.status_code == 202, answer.text
    deadline = time.time() + 15
    while len([r for r in sink.wait_for(0) if r.event_id == event_id]) < 2:
        assert time.time() < deadline, "the redelivery did not arrive"
        time.sleep(0.02)
    again = [r for r in sink.wait_for(0) if r.event_id == event_id][-1]
    assert again.data["outputs"] == outputs
    assert job(relay, event_id).status == "archived"


def test_the_keys_are_the_documented_ones(
    start: Callable[..., RelayServer],
    sink: SubscriberServer,
    cdn: CdnEmulator,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    archive = archive_settings("s3", tmp_path, s3_server)
    relay = start(archive)
    url = cdn.add("/k/a.png", size=1000, prefix=PNG)
    event_id = post(relay, completed("task-unified-keys", url))
    delivered(sink, event_id)
    bucket = archive.url.removeprefix("s3://").split("/", 1)[0]
    day = time.strftime("%Y/%m/%d", time.gmtime())
    assert s3_server.list_keys(bucket) == [f"results/evolink/{day}/task-unified-keys/0.png"]
    head = s3_server.head(bucket, f"results/evolink/{day}/task-unified-keys/0.png")
    assert head["content_type"] == "image/png" and head["size"] == 1000
    assert head["content_disposition"] is None
    # An SVG could run script on the bucket's origin if opened there: it is kept as a download.
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    drawing = cdn.add("/k/d.svg", svg, content_type="image/svg+xml")
    (output,) = delivered(sink, post(relay, completed("task-unified-svg", drawing))).data["outputs"]
    assert output["content_type"] == "image/svg+xml"
    head = s3_server.head(bucket, f"results/evolink/{day}/task-unified-svg/0.svg")
    assert head["content_type"] == "application/octet-stream"
    assert head["content_disposition"] == "attachment"


def test_a_public_base_url_is_used_as_given(
    start: Callable[..., RelayServer], sink: SubscriberServer, cdn: CdnEmulator, tmp_path: Path
) -> None:
    archive = ArchiveSettings(
        url=f"file://{tmp_path / 'archive'}", public_url="https://files.example.com/gen"
    )
    relay = start(archive)
    event_id = post(relay, completed("task-unified-public", cdn.add("/p.png", size=10)))
    (output,) = delivered(sink, event_id).data["outputs"]
    day = time.strftime("%Y/%m/%d", time.gmtime())
    assert output["url"] == f"https://files.example.com/gen/evolink/{day}/task-unified-public/0.png"


# -- when an output cannot be archived -----------------------------------------------------------


def test_an_output_gone_past_the_deadline_goes_out_with_the_provider_link(
    start: Callable[..., RelayServer],
    sink: SubscriberServer,
    cdn: CdnEmulator,
    database: dict[str, Any],
    tmp_path: Path,
) -> None:
    archive = ArchiveSettings(url=f"file://{tmp_path / 'archive'}", deadline=1.0)
    relay = start(archive, **database)
    kept = cdn.add("/d/kept.png", size=5000, prefix=PNG)
    gone = cdn.add("/d/gone.png", size=10)
    cdn.expire("/d/gone.png")
    event_id = post(relay, completed("task-unified-gone", kept, gone))
    receipt = delivered(sink, event_id)
    jsonschema.validate(json.loads(receipt.body), SCHEMA)
    first, second = receipt.data["outputs"]
    assert first["sha256"] == cdn.expected_sha256("/d/kept.png")
    assert second == {"url": gone, "media_type": "image"}
    assert receipt.data["archive"] == {
        "state": "failed",
        "failures": [
            {"index": 1, "reason": "not_found", "error": "HTTP 404: the file is not there"}
        ],
    }
    assert len(cdn.requests("/d/gone.png")) >= 2  # tried again before the deadline
    assert job(relay, event_id).status == "failed"


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "chunked"])
def test_an_output_over_the_limit_is_not_kept_and_not_retried(
    start: Callable[..., RelayServer],
    sink: SubscriberServer,
    cdn: CdnEmulator,
    tmp_path: Path,
    announced: bool,
) -> None:
    archive = ArchiveSettings(url=f"file://{tmp_path / 'archive'}", max_bytes=100_000)
    relay = start(archive)
    big = cdn.add("/big.png", size=1_000_000, prefix=PNG, content_length=announced)
    event_id = post(relay, completed("task-unified-big", big))
    receipt = delivered(sink, event_id, timeout=10)
    assert receipt.data["outputs"] == [{"url": big, "media_type": "image"}]
    assert receipt.data["archive"]["failures"][0]["reason"] == "too_large"
    assert len(cdn.requests("/big.png")) == 1
    assert not any(p.is_file() for p in (tmp_path / "archive").rglob("*"))  # nothing half-kept


def test_a_redirect_to_the_metadata_address_is_refused(
    start: Callable[..., RelayServer], sink: SubscriberServer, cdn: CdnEmulator, tmp_path: Path
) -> None:
    relay = start(ArchiveSettings(url=f"file://{tmp_path / 'archive'}"))
    trap = cdn.add("/trap.png", redirect_to="http://169.254.169.254/latest/meta-data/")
    event_id = post(relay, completed("task-unified-trap", trap))
    receipt = delivered(sink, event_id, timeout=10)
    (failure,) = receipt.data["archive"]["failures"]
    assert failure["reason"] == "blocked" and "169.254.169.254" in failure["error"]


def test_a_url_the_archiver_cannot_fetch_fails_for_good_and_its_query_is_not_logged(
    start: Callable[..., RelayServer], sink: SubscriberServer, cdn: CdnEmulator, tmp_path: Path
) -> None:
    """An output URL no HTTP client can fetch (a port out of range) and a redirect to another
    scheme: another try cannot change them, and their query strings (a CDN's signature) stay
    out of the log."""
    relay = start(ArchiveSettings(url=f"file://{tmp_path / 'archive'}"))
    elsewhere = cdn.add("/ftp.png", redirect_to="ftp://files.example/0.png?Signature=sekret-one")
    bad_port = "http://127.0.0.1:99999/1.png?Signature=sekret-two"
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        event_id = post(relay, completed("task-unified-unfetchable", elsewhere, bad_port))
        receipt = delivered(sink, event_id, timeout=10)
    failures = receipt.data["archive"]["failures"]
    assert [(f["index"], f["reason"]) for f in failures] == [(0, "blocked"), (1, "blocked")]
    assert job(relay, event_id).attempts == 1
    assert any(entry["event"] == "archive_run" for entry in logs)
    assert "sekret" not in json.dumps(logs, default=str)


def test_a_connection_cut_mid_file_is_retried_and_the_object_is_whole(
    start: Callable[..., RelayServer],
    sink: SubscriberServer,
    cdn: CdnEmulator,
    database: dict[str, Any],
    tmp_path: Path,
) -> None:
    relay = start(ArchiveSettings(url=f"file://{tmp_path / 'archive'}"), **database)
    url = cdn.add("/cut.mp4", size=3_000_000, prefix=MP4, drop_after=1_000_000, drop_times=1)
    event_id = post(relay, completed("task-unified-cut", url))
    deadline = time.time() + 10
    while not (current := job(relay, event_id)).attempts:
        assert time.time() < deadline, "the first run did not end"
        time.sleep(0.02)
    assert current.status == "pending" and current.progress[0]["reason"] == "connection"
    assert not any(p.is_file() for p in (tmp_path / "archive").rglob("*"))  # no partial object
    (output,) = delivered(sink, event_id, timeout=20).data["outputs"]  # after the 5 s back-off
    assert output["sha256"] == cdn.expected_sha256("/cut.mp4")
    assert fetch(output["url"]).content == cdn.expected_bytes("/cut.mp4")


def test_a_download_over_its_time_is_a_timeout(
    start: Callable[..., RelayServer], sink: SubscriberServer, cdn: CdnEmulator, tmp_path: Path
) -> None:
    archive = ArchiveSettings(url=f"file://{tmp_path / 'archive'}", timeout=0.5, deadline=0.5)
    relay = start(archive)
    url = cdn.add("/slow.png", size=640 * 1024, prefix=PNG, duration=3.0)
    event_id = post(relay, completed("task-unified-slow", url))
    receipt = delivered(sink, event_id, timeout=10)
    assert receipt.data["archive"]["failures"][0]["reason"] == "timeout"


def test_outputs_trickling_one_after_another_do_not_hold_the_event_past_its_deadline(
    start: Callable[..., RelayServer],
    sink: SubscriberServer,
    cdn: CdnEmulator,
    database: dict[str, Any],
    tmp_path: Path,
) -> None:
    """A CDN that trickles (never silent long enough to stall) makes each output run to its
    own timeout; outputs go one after another, so without the deadline bounding the run an
    event with 100 of them would wait 100 timeouts. Here: 10 outputs of 1 s each, a 2 s
    deadline."""
    archive = ArchiveSettings(url=f"file://{tmp_path / 'archive'}", timeout=1.0, deadline=2.0)
    relay = start(archive, **database)
    slow = [
        cdn.add(f"/trickle/{n}.png", size=640 * 1024, prefix=PNG, duration=30.0) for n in range(10)
    ]
    began = time.time()
    event_id = post(relay, completed("task-unified-trickle", *slow))
    receipt = delivered(sink, event_id, timeout=20)
    assert time.time() - began < 6  # the deadline and some slack, far from 10 timeouts
    assert receipt.data["outputs"] == [{"url": url, "media_type": "image"} for url in slow]
    failures = receipt.data["archive"]["failures"]
    assert [(f["index"], f["reason"]) for f in failures] == [(n, "timeout") for n in range(10)]
    assert job(relay, event_id).status == "failed"
    assert not any(p.is_file() for p in (tmp_path / "archive").rglob("*"))  # nothing half-kept


def test_a_job_claimed_again_after_its_lease_lapsed_mid_run_is_not_run_twice_at_once(
    start: Callable[..., RelayServer],
    sink: SubscriberServer,
    cdn: CdnEmulator,
    database: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store cannot renew a running job's lease (an outage, here of that run's renewals
    alone, so that nothing else tells the run): the lease lapses, and the same process claims
    the job again while its first run still downloads. That run can no longer record
    anything; it stops as the new one starts, not goes on beside it."""
    monkeypatch.setattr(archive_worker, "LEASE_SECONDS", 2.0)
    monkeypatch.setattr(archive_worker, "RENEW_SECONDS", 0.5)
    relay = start(ArchiveSettings(url=f"file://{tmp_path / 'archive'}"), **database)
    store = relay.relay.store
    renew = store.extend_archive_lease
    first_run: list[str] = []  # the lease token of the run whose renewals are lost

    async def extend(event_id: str, lease_token: str, until: float) -> bool:
        if not first_run:
            first_run.append(lease_token)
        if lease_token == first_run[0]:
            raise StorageUnavailable("the store is away")
        result: bool = await renew(event_id, lease_token, until)
        return result

    monkeypatch.setattr(store, "extend_archive_lease", extend)
    url = cdn.add("/lapse.mp4", size=6 * 64 * 1024, prefix=MP4, duration=6.0)
    event_id = post(relay, completed("task-unified-lapse", url))
    (output,) = delivered(sink, event_id, timeout=20).data["outputs"]
    assert output["sha256"] == cdn.expected_sha256("/lapse.mp4")
    first, second = cdn.requests("/lapse.mp4")
    assert not first.complete  # given up when the job was claimed again
    assert second.complete


# -- serving -------------------------------------------------------------------------------------


def test_the_archive_route_serves_only_what_the_relay_signed(
    start: Callable[..., RelayServer], sink: SubscriberServer, cdn: CdnEmulator, tmp_path: Path
) -> None:
    relay = start(ArchiveSettings(url=f"file://{tmp_path / 'archive'}"))
    event_id = post(relay, completed("task-unified-serve", cdn.add("/s.png", size=4096)))
    (output,) = delivered(sink, event_id).data["outputs"]
    token = output["url"].rsplit("/", 1)[1]
    ranged = httpx.get(output["url"], headers={"range": "bytes=0-9"})
    assert ranged.status_code == 206 and ranged.content == cdn.expected_bytes("/s.png")[:10]
    assert httpx.head(output["url"]).headers["content-length"] == "4096"
    for forged in (token[:-2] + "xx", "ZXZvbGluaw.abc", "Li4vLi4vZXRjL3Bhc3N3ZA"):
        answer = relay.client.get(f"/archive/{forged}")
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "archived_output_not_found"
    # A path that leaves /archive/ matches no route at all.
    assert relay.client.get("/archive/..%2F..%2Fetc%2Fpasswd").status_code == 404
    # Served from the relay's own origin: whatever it is, it never runs script there.
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.cookie)</script></svg>'
    event_id = post(
        relay, completed("task-unified-svg", cdn.add("/x.svg", svg, content_type="image/svg+xml"))
    )
    (drawing,) = delivered(sink, event_id).data["outputs"]
    served = httpx.get(drawing["url"])
    assert served.content == svg and served.headers["content-type"] == "image/svg+xml"
    assert served.headers["content-security-policy"] == "default-src 'none'; sandbox"
    assert served.headers["x-content-type-options"] == "nosniff"
    # A key the relay signed, whose object is gone: 404 too, never a 500.
    for path in (tmp_path / "archive").rglob("*.png"):
        path.unlink()
    assert relay.client.get(output["url"]).status_code == 404


def test_readyz_fails_when_the_archive_cannot_be_written(
    start: Callable[..., RelayServer], tmp_path: Path
) -> None:
    relay = start(ArchiveSettings(url=f"file://{tmp_path / 'archive'}"))
    assert relay.client.get("/readyz").json()["checks"]["archive"] == "ok"
    (tmp_path / "archive").rename(tmp_path / "moved")
    (tmp_path / "archive").write_text("a file where the directory was")
    answer = relay.client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["checks"]["archive"] != "ok"
    assert "archive:" in answer.json()["error"]["message"]


# -- a crash mid-upload --------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_mid_upload_resumes_and_the_object_ends_complete(
    tmp_path: Path, cdn: CdnEmulator, sink: SubscriberServer
) -> None:
    """The relay is SIGKILLed while an output streams into the archive; started again, the job
    runs again and the object ends complete, its checksum the file's."""
    sock = bound_socket()
    port = sock.getsockname()[1]
    sock.close()
    archive_dir = tmp_path / "archive"
    relay = RelayProcess(
        tmp_path,
        port,
        RELAY_ALLOW_PRIVATE_TARGETS="false",
        RELAY_TARGET_ALLOWLIST="127.0.0.0/8",
        RELAY_ARCHIVE_URL=f"file://{archive_dir}",
    )
    try:
        relay.start()
        headers = {"authorization": f"Bearer {ADMIN}"}
        sub = httpx.post(f"{relay.base}/v1/subscribers", json={"url": sink.url}, headers=headers)
        sink.secrets.append(sub.json()["secret"])
        minted = httpx.post(
            f"{relay.base}/v1/callback-urls", json={"provider": "evolink"}, headers=headers
        ).json()["url"]
        # 24 MiB over 3 s: the kill lands with several parts written.
        url = cdn.add("/big.mp4", size=24 * 1024 * 1024, content_type="video/mp4", duration=3.0)
        answer = httpx.post(minted, json=completed("task-unified-kill", url))
        assert answer.status_code == 200
        event_id = answer.json()["event_id"]
        deadline = time.time() + 15
        while not any(r.sent > 4 * 1024 * 1024 for r in cdn.requests("/big.mp4")):
            assert time.time() < deadline, "the download did not start"
            time.sleep(0.02)
        relay.kill()
        assert sink.wait_for(0) == []  # nothing went out before the archive
        cdn.file("/big.mp4").duration = None  # the second run goes at full speed
        relay.start()
        receipt = delivered(sink, event_id, timeout=30)
        (output,) = receipt.data["outputs"]
        assert output["sha256"] == cdn.expected_sha256("/big.mp4")
        assert output["bytes"] == 24 * 1024 * 1024
        # One file: the dead run's staging file is gone too.
        (kept,) = [p for p in archive_dir.rglob("*") if p.is_file()]
        assert kept.name == "0.mp4"
        assert hashlib.sha256(kept.read_bytes()).hexdigest() == output["sha256"]
        assert len(cdn.requests("/big.mp4")) == 2
    finally:
        relay.stop()


def test_metrics_count_what_was_archived_and_what_waits(
    start: Callable[..., RelayServer], sink: SubscriberServer, cdn: CdnEmulator, tmp_path: Path
) -> None:
    def sample(text: str, name: str) -> float:
        lines = [line for line in text.splitlines() if line.startswith(name + " ")]
        return float(lines[0].split()[-1]) if lines else 0.0

    relay = start(ArchiveSettings(url=f"file://{tmp_path / 'archive'}"))
    before = relay.client.get("/metrics", headers=relay.admin).text
    event_id = post(relay, completed("task-unified-metrics", cdn.add("/m.png", size=12_345)))
    delivered(sink, event_id)
    after = relay.client.get("/metrics", headers=relay.admin).text
    archived = 'relay_archive_outputs_total{outcome="archived"}'
    assert sample(after, archived) - sample(before, archived) == 1
    assert (
        sample(after, "relay_archive_bytes_total") - sample(before, "relay_archive_bytes_total")
        == 12_345
    )
    jobs = 'relay_archive_jobs_total{result="archived"}'
    assert sample(after, jobs) - sample(before, jobs) == 1
    assert sample(after, "relay_archive_jobs_pending") == 0
    assert "relay_archive_oldest_pending_age_seconds 0.0" in after

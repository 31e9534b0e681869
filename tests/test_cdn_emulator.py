"""The CDN emulator does what its knobs say, seen by real HTTP clients (httpx and aiohttp)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Iterator

import aiohttp
import httpx
import pytest

from tests.cdn_emulator import CHUNK, CdnEmulator

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """uvicorn logs no error: a connection the emulator cuts is its own doing, not a crash of
    the application (whose connection uvicorn would close too, so a client cannot tell)."""
    yield
    records = [
        *caplog.get_records("setup"),
        *caplog.get_records("call"),
        *caplog.get_records("teardown"),
    ]
    assert [r.getMessage() for r in records if r.levelno >= logging.ERROR] == []


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as http:
        yield http


def read_until_error(client: httpx.Client, url: str) -> tuple[httpx.Response, int, Exception]:
    """Stream ``url``; the response, the bytes received, and the error the body ended with."""
    received = 0
    with client.stream("GET", url) as response:
        try:
            for chunk in response.iter_bytes():
                received += len(chunk)
        except httpx.HTTPError as exc:
            return response, received, exc
    raise AssertionError(f"the body ended cleanly after {received} bytes")


def test_a_body_is_served_as_given(cdn: CdnEmulator, client: httpx.Client) -> None:
    url = cdn.add("/outputs/a.png", PNG_MAGIC + b"pixels")
    assert url == f"{cdn.base}/outputs/a.png"
    response = client.get(url)
    assert response.status_code == 200
    assert response.content == PNG_MAGIC + b"pixels"
    assert response.headers["content-type"] == "image/png"
    assert response.headers["content-length"] == "14"
    assert cdn.expected_bytes("/outputs/a.png") == response.content
    assert cdn.expected_sha256("/outputs/a.png") == hashlib.sha256(response.content).hexdigest()


def test_a_sized_file_is_deterministic_and_streamed(cdn: CdnEmulator, client: httpx.Client) -> None:
    size = 20 * CHUNK + 123  # not a whole number of chunks
    url = cdn.add("/v/big.mp4", size=size, content_type="video/mp4")
    digest = hashlib.sha256()
    received = 0
    with client.stream("GET", url) as response:
        assert response.headers["content-length"] == str(size)
        assert response.headers["content-type"] == "video/mp4"
        for chunk in response.iter_bytes():
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    assert digest.hexdigest() == cdn.expected_sha256("/v/big.mp4")
    assert hashlib.sha256(cdn.expected_bytes("/v/big.mp4")).hexdigest() == digest.hexdigest()
    # The bytes depend on the path only: another emulator serves the same, another path not.
    with CdnEmulator() as other:
        other.add("/v/big.mp4", size=size)
        other.add("/v/other.mp4", size=size)
        assert other.expected_sha256("/v/big.mp4") == digest.hexdigest()
        assert other.expected_sha256("/v/other.mp4") != digest.hexdigest()
    request = cdn.requests("/v/big.mp4")[0]
    assert (request.method, request.status, request.sent, request.complete) == (
        "GET",
        200,
        size,
        True,
    )


def test_no_content_type_leaves_the_client_to_sniff(cdn: CdnEmulator, client: httpx.Client) -> None:
    url = cdn.add("/x", size=3 * CHUNK, content_type=None, prefix=PNG_MAGIC)
    response = client.get(url)
    assert "content-type" not in response.headers
    assert response.content.startswith(PNG_MAGIC)
    assert len(response.content) == 3 * CHUNK
    assert response.content == cdn.expected_bytes("/x")


def test_an_expired_file_is_404_from_then_on(cdn: CdnEmulator, client: httpx.Client) -> None:
    url = cdn.add("/a.png", b"a")
    other = cdn.add("/b.png", b"b")
    assert client.get(url).status_code == 200
    cdn.expire("/a.png")
    cdn.forget("/b.png")
    assert client.get(url).status_code == 404
    assert client.get(url).status_code == 404
    assert client.get(other).status_code == 404
    assert [r.status for r in cdn.requests("/a.png")] == [200, 404, 404]
    assert client.get(f"{cdn.base}/never-added").status_code == 404
    assert [r.status for r in cdn.requests("/never-added")] == [404]


def test_a_dropped_connection_ends_the_body_early_with_an_error(
    cdn: CdnEmulator, client: httpx.Client
) -> None:
    size, cut = 10 * CHUNK, 3 * CHUNK + 17
    url = cdn.add("/v.mp4", size=size, drop_after=cut)
    response, received, error = read_until_error(client, url)
    assert response.headers["content-length"] == str(size)
    assert isinstance(error, httpx.RemoteProtocolError), repr(error)
    assert received == cut
    request = cdn.requests("/v.mp4")[0]
    assert (request.status, request.sent, request.complete) == (200, cut, False)
    # Every answer is cut (drop_times unset), chunked ones too.
    chunked = cdn.add("/c.mp4", size=size, drop_after=cut, content_length=False)
    response, received, error = read_until_error(client, chunked)
    assert "content-length" not in response.headers
    assert isinstance(error, httpx.RemoteProtocolError), repr(error)
    assert received == cut
    _, received, _ = read_until_error(client, url)
    assert received == cut


def test_aiohttp_sees_the_dropped_connection_as_a_payload_error(cdn: CdnEmulator) -> None:
    url = cdn.add("/v.mp4", size=4 * CHUNK, drop_after=CHUNK)

    async def download() -> tuple[int, BaseException | None]:
        received = 0
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            try:
                async for chunk in response.content.iter_chunked(CHUNK):
                    received += len(chunk)
            except aiohttp.ClientError as exc:
                return received, exc
        return received, None

    received, error = asyncio.run(download())
    assert isinstance(error, aiohttp.ClientPayloadError), repr(error)
    assert received == CHUNK


def test_drop_times_cuts_only_the_first_answers(cdn: CdnEmulator, client: httpx.Client) -> None:
    url = cdn.add("/v.mp4", size=4 * CHUNK, drop_after=100, drop_times=1)
    _, received, _ = read_until_error(client, url)
    assert received == 100
    response = client.get(url)
    assert response.content == cdn.expected_bytes("/v.mp4")
    assert [r.complete for r in cdn.requests("/v.mp4")] == [False, True]


def test_a_redirect_names_its_location(cdn: CdnEmulator, client: httpx.Client) -> None:
    metadata = "http://169.254.169.254/latest/meta-data/"
    url = cdn.add("/r.png", redirect_to=metadata)
    response = client.get(url)  # httpx does not follow redirects unless asked
    assert response.status_code == 302
    assert response.headers["location"] == metadata
    # A redirect to another file of the CDN is followed by a client that follows.
    target = cdn.add("/target.png", b"target")
    cdn.add("/hop.png", redirect_to=target)
    assert client.get(cdn.url("/hop.png"), follow_redirects=True).content == b"target"


def test_slow_files_are_paced(cdn: CdnEmulator, client: httpx.Client) -> None:
    slow = cdn.add("/slow.png", size=5 * CHUNK, slow=0.1)  # 4 gaps of 0.1 s
    began = time.monotonic()
    assert len(client.get(slow).content) == 5 * CHUNK
    elapsed = time.monotonic() - began
    assert 0.4 <= elapsed < 1.4, elapsed

    timed = cdn.add("/timed.png", size=9 * CHUNK, duration=0.4)
    began = time.monotonic()
    assert client.get(timed).content == cdn.expected_bytes("/timed.png")
    elapsed = time.monotonic() - began
    assert 0.4 <= elapsed < 1.4, elapsed


def test_without_content_length_the_body_is_chunked(cdn: CdnEmulator, client: httpx.Client) -> None:
    url = cdn.add("/c.png", size=2 * CHUNK + 5, content_length=False)
    response = client.get(url)
    assert "content-length" not in response.headers
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.content == cdn.expected_bytes("/c.png")


def test_fail_first_answers_503_then_the_file(cdn: CdnEmulator, client: httpx.Client) -> None:
    url = cdn.add("/f.png", b"finally", fail_first=2)
    assert [client.get(url).status_code for _ in range(3)] == [503, 503, 200]
    assert [r.status for r in cdn.requests("/f.png")] == [503, 503, 200]


def test_ranges_and_head(cdn: CdnEmulator, client: httpx.Client) -> None:
    size = 3 * CHUNK
    url = cdn.add("/r.mp4", size=size, content_type="video/mp4")
    whole = cdn.expected_bytes("/r.mp4")
    response = client.get(url, headers={"range": f"bytes={CHUNK - 10}-{CHUNK + 9}"})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes {CHUNK - 10}-{CHUNK + 9}/{size}"
    assert response.content == whole[CHUNK - 10 : CHUNK + 10]
    assert client.get(url, headers={"range": "bytes=-7"}).content == whole[-7:]
    assert client.get(url, headers={"range": f"bytes={size - 1}-"}).content == whole[-1:]
    assert client.get(url, headers={"range": f"bytes={size}-"}).status_code == 416
    head = client.head(url)
    assert (head.status_code, head.headers["content-length"], head.content) == (200, str(size), b"")
    assert head.headers["accept-ranges"] == "bytes"
    no_ranges = cdn.add("/n.mp4", size=size, ranges=False)
    response = client.get(no_ranges, headers={"range": "bytes=0-9"})
    assert (response.status_code, len(response.content)) == (200, size)
    assert [r.range for r in cdn.requests("/r.mp4")] == [
        f"bytes={CHUNK - 10}-{CHUNK + 9}",
        "bytes=-7",
        f"bytes={size - 1}-",
        f"bytes={size}-",
        None,
    ]


def test_stopping_cuts_downloads_in_progress(client: httpx.Client) -> None:
    cdn = CdnEmulator().start()
    url = cdn.add("/endless.mp4", size=100 * CHUNK, duration=60)
    first_chunk = threading.Event()
    outcome: list[BaseException | None] = []

    def download() -> None:
        try:
            with client.stream("GET", url) as response:
                for _ in response.iter_bytes():
                    first_chunk.set()
            outcome.append(None)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=download)
    reader.start()
    assert first_chunk.wait(5)
    began = time.monotonic()
    cdn.stop()
    assert time.monotonic() - began < 3
    reader.join(5)
    assert len(outcome) == 1
    assert isinstance(outcome[0], httpx.HTTPError), outcome

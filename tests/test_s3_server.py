"""The whole obstore <-> S3 path the archive relies on, against the moto server on loopback:
multipart uploads from an async iterator, presigned GET URLs, and the environment a relay
subprocess configures its store with."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import obstore
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.s3_server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, S3Server

MIB = 1024 * 1024


def unique_bucket(s3: S3Server) -> str:
    """A bucket of this test's own: moto's state is shared by the whole test process."""
    return s3.create_bucket(f"archive-{uuid.uuid4().hex[:12]}")


def mib(index: int) -> bytes:
    """A MiB of its own for each index, so a part out of order or repeated shows."""
    return hashlib.shake_128(str(index).encode()).digest(MIB)


async def twelve_mib() -> AsyncIterator[bytes]:
    for index in range(12):
        yield mib(index)
        await asyncio.sleep(0)


def test_a_multipart_upload_from_an_async_iterator_round_trips(s3_server: S3Server) -> None:
    bucket = unique_bucket(s3_server)
    store = s3_server.store(bucket, "events/evt_1")
    expected = b"".join(mib(index) for index in range(12))

    async def upload() -> obstore.PutResult:
        return await obstore.put_async(
            store, "out/0.mp4", twelve_mib(), attributes={"Content-Type": "video/mp4"}
        )

    result = asyncio.run(upload())
    # A multipart upload's ETag is the MD5 of its parts' MD5s and "-<parts>": obstore's
    # default 5 MiB parts make 5 + 5 + 2 MiB.
    assert result["e_tag"] is not None and result["e_tag"].endswith('-3"'), result
    key = "events/evt_1/out/0.mp4"
    assert s3_server.list_keys(bucket) == [key]
    assert s3_server.get_object(bucket, key) == expected
    head = s3_server.head(bucket, key)
    assert (head["content_type"], head["size"]) == ("video/mp4", 12 * MIB)


def test_a_presigned_get_url_downloads_the_object_and_is_validly_signed(
    s3_server: S3Server,
) -> None:
    bucket = unique_bucket(s3_server)
    store = s3_server.store(bucket, "archive")
    obstore.put(store, "a.png", b"\x89PNG\r\n\x1a\nsigned")

    async def sign() -> str:
        return await obstore.sign_async(store, "GET", "a.png", timedelta(minutes=10))

    url = asyncio.run(sign())
    assert url.startswith(f"{s3_server.endpoint}/{bucket}/archive/a.png?")
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == b"\x89PNG\r\n\x1a\nsigned"
    # moto serves any request, signed or not: the signature is recomputed with botocore.
    given, computed = query_signature(url, SECRET_ACCESS_KEY)
    assert given == computed
    assert query_signature(url, "another-secret")[1] != given
    params = dict(parse_qsl(urlsplit(url).query))
    assert params["X-Amz-Expires"] == "600"
    assert params["X-Amz-Credential"].startswith(f"{ACCESS_KEY_ID}/")


def query_signature(url: str, secret: str) -> tuple[str, str]:
    """A presigned URL's SigV4 signature, and the one its other parameters call for."""
    parts = urlsplit(url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    named = dict(params)
    unsigned = [(k, v) for k, v in params if k != "X-Amz-Signature"]
    request = AWSRequest(
        method="GET",
        url=urlunsplit(parts._replace(query=urlencode(unsigned))),
        headers={"host": parts.netloc},
    )
    request.context["timestamp"] = named["X-Amz-Date"]
    auth = S3SigV4QueryAuth(
        Credentials(ACCESS_KEY_ID, secret), "s3", REGION, expires=int(named["X-Amz-Expires"])
    )
    canonical = auth.canonical_request(request)
    return named["X-Amz-Signature"], auth.signature(
        auth.string_to_sign(request, canonical), request
    )


# A relay configures its store from RELAY_ARCHIVE_URL and the environment alone.
WRITE_PROBE = """
import os, obstore
from obstore.store import from_url
obstore.put(from_url(os.environ["RELAY_ARCHIVE_URL"]), "probe.txt", b"from the environment")
"""


def run_with(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # Only the variables given: none of the developer's own AWS settings.
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run(
        [sys.executable, "-c", WRITE_PROBE],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_environment_configures_obstore_in_a_subprocess(s3_server: S3Server) -> None:
    bucket = unique_bucket(s3_server)
    env = s3_server.env(bucket, "/relay/run-1/")
    assert env["RELAY_ARCHIVE_URL"] == f"s3://{bucket}/relay/run-1"
    done = run_with(env)
    assert done.returncode == 0, done.stderr
    assert s3_server.get_object(bucket, "relay/run-1/probe.txt") == b"from the environment"
    # AWS_ALLOW_HTTP is the variable obstore reads: without it, the http endpoint is refused.
    refused = run_with({k: v for k, v in env.items() if k != "AWS_ALLOW_HTTP"})
    assert refused.returncode != 0
    assert "BadScheme" in refused.stderr, refused.stderr
